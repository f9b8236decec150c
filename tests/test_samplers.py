from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from searchspace.samplers import ConfigSampler, FlopsGroupedSampler, UniformSampler, group_by_flops
from searchspace.stitch_v2 import StitchSpaceV2


def _check_gap_rule(flops, gap, groups):
    assert sorted(i for g in groups for i in g) == list(range(len(flops)))
    firsts = [flops[g[0]] for g in groups]
    for group in groups:
        assert flops[group[0]] == min(flops[i] for i in group)
        assert all(0 <= flops[i] - flops[group[0]] <= gap for i in group)
    for prev, nxt in zip(firsts, firsts[1:]):
        assert nxt - prev > gap
    # groups are contiguous in FLOPs order: nothing left behind below a later group's first
    for g, group in enumerate(groups[1:], start=1):
        assert max(flops[i] for i in groups[g - 1]) <= flops[group[0]]


def test_group_by_flops_hand_example():
    flops = [0.0, 0.5, 1.0, 1.01, 2.5, 2.0, 5.0]
    # 1.0 is within 1 of the first member 0.0; 1.01 is not and opens a group; 2.5 is 1.49 above 1.01
    assert group_by_flops(flops, 1.0) == ((0, 1, 2), (3, 5), (4,), (6,))
    assert group_by_flops(flops, 10.0) == ((0, 1, 2, 3, 5, 4, 6),)
    assert group_by_flops([3.0, 1.0, 3.0, 1.0], 0.5) == ((1, 3), (0, 2))  # ties keep id order


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("gap", [0.3, 1.0, 4.0])
def test_groups_satisfy_gap_rule(seed, gap):
    rng = random.Random(seed)
    flops = [rng.uniform(0, 20) for _ in range(60)] + [rng.choice([2.0, 5.0]) for _ in range(10)]
    sampler = FlopsGroupedSampler(flops, gap)
    _check_gap_rule(flops, gap, sampler.groups())
    assert sampler.num_configs == 70


def test_deit3_small_large_gives_13_groups():
    flops_mod = pytest.importorskip("stitching.flops")
    small = dict(family="vit", img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=384,
                 depth=12, num_heads=6, mlp_ratio=4.0)
    large = dict(small, embed_dim=1024, depth=24, num_heads=16)
    space = StitchSpaceV2((12, 24))
    gflops = [flops_mod.route_flops([small, large], c) / 1e9 for c in space]
    assert round(min(gflops), 2) == 4.61 and round(max(gflops), 2) == 61.60  # SN-Netv2's 4.61-61.60
    sampler = FlopsGroupedSampler(gflops, gap=1.0)
    assert [len(g) for g in sampler.groups()] == [1] + [12] * 11 + [1]
    assert sampler.groups()[0] == (0,) and sampler.groups()[-1] == (1,)
    probs = sampler.probabilities()
    assert probs[0] == probs[1] == pytest.approx(1 / 13)
    assert probs[2] == pytest.approx(1 / 13 / 12)


def test_probabilities_exact():
    flops = [0, 1, 10, 11, 12, 20, 30, 31]  # gap 5 -> groups {0,1}, {2,3,4}, {5}, {6,7}
    uni = FlopsGroupedSampler(flops, 5)
    assert uni.groups() == ((0, 1), (2, 3, 4), (5,), (6, 7))
    assert uni.group_probabilities() == (0.25,) * 4
    assert uni.probabilities() == pytest.approx([1 / 8, 1 / 8, 1 / 12, 1 / 12, 1 / 12, 1 / 4, 1 / 8, 1 / 8])
    # linear, k = 2, G = 4: w_g = g / 2 + 1 / 4 = [1/4, 3/4, 5/4, 7/4], sum 4
    lin = FlopsGroupedSampler(flops, 5, weighting="linear", k=2)
    assert lin.group_probabilities() == pytest.approx([1 / 16, 3 / 16, 5 / 16, 7 / 16])
    assert lin.probabilities() == pytest.approx([1 / 32, 1 / 32, 1 / 16, 1 / 16, 1 / 16, 5 / 16, 7 / 32, 7 / 32])
    assert math.fsum(lin.probabilities()) == pytest.approx(1.0)
    # a large k flattens the linear weighting toward uniform
    flat = FlopsGroupedSampler(flops, 5, weighting="linear", k=1e9)
    assert flat.group_probabilities() == pytest.approx(uni.group_probabilities())
    assert UniformSampler(4).probabilities() == (0.25,) * 4


def _chi_square_pvalue(sampler: ConfigSampler, draws: int, seed: int) -> tuple[float, Counter]:
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(seed)
    counts = Counter(sampler.sample(rng) for _ in range(draws))
    probs = sampler.probabilities()
    assert set(counts) <= {i for i, p in enumerate(probs) if p > 0}
    chi2 = sum((counts.get(i, 0) - draws * p) ** 2 / (draws * p) for i, p in enumerate(probs) if p > 0)
    return float(stats.chi2.sf(chi2, df=sum(p > 0 for p in probs) - 1)), counts


@pytest.mark.parametrize(
    "sampler",
    [
        UniformSampler(40),
        FlopsGroupedSampler([0, 1, 10, 11, 12, 20, 30, 31, 31.5, 50], 5),
        FlopsGroupedSampler([0, 1, 10, 11, 12, 20, 30, 31, 31.5, 50], 5, weighting="linear", k=1),
        FlopsGroupedSampler([0, 1, 10, 11, 12, 20, 30, 31, 31.5, 50], 5, weighting="linear", k=0.25),
    ],
    ids=["uniform", "grouped-uniform", "grouped-linear-k1", "grouped-linear-k0.25"],
)
def test_sampling_frequencies_match_probabilities(sampler):
    draws = 60_000
    pvalue, counts = _chi_square_pvalue(sampler, draws, seed=1)
    assert pvalue > 1e-3
    for i, p in enumerate(sampler.probabilities()):  # and every id within 5 binomial sigmas
        assert abs(counts.get(i, 0) - draws * p) <= 5 * math.sqrt(draws * p * (1 - p)) + 1


def test_sampling_is_reproducible_with_the_callers_rng():
    sampler = FlopsGroupedSampler([float(i % 7) for i in range(30)], 1.5, weighting="linear")
    a = [sampler.sample(random.Random(3)) for _ in range(5)]
    assert len(set(a)) == 1
    r1, r2 = random.Random(11), random.Random(11)
    assert [sampler.sample(r1) for _ in range(50)] == [sampler.sample(r2) for _ in range(50)]


@pytest.mark.parametrize("gap", [0, -1.0, float("nan"), float("inf"), "1", True])
def test_bad_gap(gap):
    with pytest.raises(ValueError, match="'gap'"):
        FlopsGroupedSampler([1.0, 2.0], gap)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(flops=[]), "'flops'"),
        (dict(flops=[1.0, -2.0]), r"'flops\[1\]'"),
        (dict(flops=[1.0, float("nan")]), r"'flops\[1\]'"),
        (dict(flops=[1.0], weighting="quadratic"), "'weighting'"),
        (dict(flops=[1.0], weighting="linear", k=0), "'k'"),
    ],
)
def test_bad_sampler_arguments(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        FlopsGroupedSampler(gap=1.0, **kwargs)


@pytest.mark.parametrize("n", [0, -3, 2.0, True])
def test_bad_uniform_size(n):
    with pytest.raises(ValueError, match="'num_configs'"):
        UniformSampler(n)
