"""Candidate evaluation with each shared prefix computed once per batch (issue 14, part 2): the
trie executor, and pooling / SN-Net / SN-Netv2 scores bit-identical to per-candidate scoring."""

from __future__ import annotations

import functools
import math
import random

import pytest
import torch

from searchspace.pooling import create_space
from searchspace.stitch_v2 import StitchSpaceV2
from stitching.cnn import create_resnet
from stitching.lowrank import LowRankStitchingLayer
from stitching.shared_prefix import score_routes
from stitching.snnet import SNNet
from stitching.vit import create_vit
from stitchnas.core.evaluation import NonFiniteOutput, accuracy
from stitchnas.core.io import ResultsTable
from stitchnas.core.prefix import PrefixStats, PrefixTrie
from stitchnas.data import DataSpec, load_data
from stitchnas.methods.pooling import PoolingTask
from stitchnas.methods.snnet import StitchTask
from stitchnas.search.candidates import PrefixScorer, score_candidates
from supernet.evaluation import EvalConfig, evaluate_path, prepare_path
from supernet.networks import ModelSpec, build_supernet
from supernet.shared_prefix import score_placements
from supernet.training import TrainConfig, train


# --------------------------------------------------------------------------- the trie executor
def _paths(seed: int, count: int, depth: int) -> dict[int, list[int]]:
    rng = random.Random(seed)
    return {i: [rng.randrange(3) for _ in range(rng.randint(1, depth))] for i in range(count)}


def _apply(node, x, replay):
    return torch.sin(x * (node.step + 1) + node.depth)


@pytest.mark.parametrize("budget", [0, 3 * 4 * 8, 1 << 30])
def test_trie_gives_each_candidate_its_own_path_within_the_budget(budget):
    paths = _paths(0, 40, 6)
    trie = PrefixTrie(paths)
    x = torch.randn(4, 8)
    got: dict[int, torch.Tensor] = {}
    stats = trie.run(x, _apply, lambda c, y: got.__setitem__(c, y), stats=PrefixStats(budget=budget))
    for c, steps in paths.items():
        y = x
        for depth, step in enumerate(steps, start=1):
            y = torch.sin(y * (step + 1) + depth)
        assert torch.equal(got[c], y)
    assert stats.peak_bytes <= budget
    assert trie.num_steps * 4 <= stats.steps_run() <= trie.path_steps * 4
    if budget == 1 << 30:
        assert stats.steps_run() == trie.num_steps * 4 and stats.recomputed == 0


def test_trie_prunes_and_flags_recomputations():
    trie = PrefixTrie({0: ["a", "b", "head"], 1: ["a", "c", "head"], 2: ["d", "head"]})
    assert trie.num_steps == 7 and trie.path_steps == 8
    seen = []
    trie.run(torch.zeros(2), lambda node, x, replay: seen.append((node.step, replay)) or x + 1,
             prune=lambda node: node.step == "head", stats=PrefixStats(budget=0))
    assert ("head", False) not in seen
    assert seen.count(("a", True)) == 1 and seen.count(("a", False)) == 1  # "c" recomputes "a" (budget 0)
    with pytest.raises(ValueError, match="empty path"):
        PrefixTrie({0: []})


# --------------------------------------------------------------------------- pooling placements
@pytest.fixture(scope="module")
def pooling():
    """A ResNet-20 supernet (width 1/4) trained for one epoch on 8x8 digits, and the data."""
    data = load_data(DataSpec(name="digits", input_size=8, seed=0, max_train_samples=300))
    space = create_space("resnet20", width_scale=0.25)
    torch.manual_seed(0)
    supernet = build_supernet(space, ModelSpec(data.in_chans, data.num_classes))
    train(supernet, data.search_train, TrainConfig(epochs=1, batch_size=32, lr=0.05, seed=0),
          choose_path=supernet.sample_active, progress=False)
    return space, supernet.eval(), data


@pytest.mark.parametrize("bn_mode", ["recalibrate", "batch"])
def test_every_resnet20_placement_scores_bit_identically(pooling, bn_mode):
    space, supernet, data = pooling
    cfg = EvalConfig(bn_mode=bn_mode, calib_batches=3, calib_batch_size=32, batch_size=64)
    configs = space.configurations()
    assert len(configs) == 36
    alone = [evaluate_path(supernet, c, data.search_train, data.search_val, cfg) for c in configs]
    states: dict[int, dict[str, torch.Tensor]] = {}
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    shared, report = score_placements(supernet, configs, data.search_train, data.search_val, cfg, states_out=states)
    assert shared == alone  # exact: the same floats
    assert report.steps_shared < report.steps_alone and report.candidates == 36
    assert all(torch.equal(v, supernet.state_dict()[k]) for k, v in before.items())  # supernet untouched
    if bn_mode == "recalibrate":
        for i in (0, 17, 35):  # the re-calibrated buffers too, every one of the exported network's
            model = prepare_path(supernet, configs[i], data.search_train, cfg)
            buffers = {k: v for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}
            assert buffers.keys() == states[i].keys()
            assert all(torch.equal(buffers[k], states[i][k]) for k in buffers)


@pytest.mark.parametrize("budget", [0, 20_000])
def test_conv_downsampling_and_a_small_budget_score_identically(budget):
    space = create_space("resnet18", width_scale=0.125)  # stride-2 convolutions, bottleneck-free
    torch.manual_seed(1)
    supernet = build_supernet(space, ModelSpec(1, 10))
    for m in supernet.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)  # no zero-initialised branches
    g = torch.Generator().manual_seed(0)
    calib = torch.utils.data.TensorDataset(torch.randn(80, 1, 16, 16, generator=g), torch.randint(0, 10, (80,)))
    val = torch.utils.data.TensorDataset(torch.randn(50, 1, 16, 16, generator=g), torch.randint(0, 10, (50,)))
    cfg = EvalConfig(calib_batches=2, calib_batch_size=16, batch_size=32)
    configs = space.configurations()[::5]
    shared, report = score_placements(supernet, configs, calib, val, cfg, budget=budget)
    assert shared == [evaluate_path(supernet, c, calib, val, cfg) for c in configs]
    assert report.val.peak_bytes <= budget and report.val.recomputed > 0


def test_pooling_task_scores_rows_in_order_and_reports_failures_as_alone(pooling, tmp_path):
    space, supernet, data = pooling
    task = PoolingTask(space, data, supernet, EvalConfig(calib_batches=2, batch_size=64))
    scorer = task.evaluator().prepare("cpu")
    assert isinstance(scorer, PrefixScorer)
    order = [30, 2, 11, 5]
    table = ResultsTable(tmp_path / "results.csv", list(task.row(0)) + ["val_acc", "status", "error", "seconds"])
    score_candidates(table, task, order, scorer, progress=False, chunk=3)
    rows = table.rows()
    assert [int(r["candidate"]) for r in rows] == order  # the order asked, whatever order scored
    assert [r["val_acc"] for r in rows] == [scorer(i) for i in order]

    supernet_nan = build_supernet(space, ModelSpec(data.in_chans, data.num_classes))
    supernet_nan.load_state_dict(supernet.state_dict())
    with torch.no_grad():
        supernet_nan.fc.weight[0, 0] = math.nan
    bad = PoolingTask(space, data, supernet_nan, EvalConfig(calib_batches=2, batch_size=64)).evaluator().prepare("cpu")
    assert bad.score_many([0, 1]) == {}  # left to the per-candidate path, which raises
    table = ResultsTable(tmp_path / "bad.csv", list(task.row(0)) + ["val_acc", "status", "error", "seconds"])
    score_candidates(table, task, [0, 1], bad, progress=False)
    with pytest.raises(NonFiniteOutput) as err:
        bad(0)
    assert [r["status"] for r in table.rows()] == ["failed", "failed"]
    assert table.rows()[0]["error"] == f"NonFiniteOutput: {err.value}"


def test_a_failing_shared_pass_falls_back_to_one_at_a_time(pooling, tmp_path):
    space, supernet, data = pooling
    task = PoolingTask(space, data, supernet, EvalConfig(calib_batches=2, batch_size=64))

    def many(indices):
        raise RuntimeError("out of memory")

    scorer = PrefixScorer(lambda i: float(i), many)
    table = ResultsTable(tmp_path / "r.csv", list(task.row(0)) + ["val_acc", "status", "error", "seconds"])
    score_candidates(table, task, [4, 3], scorer, progress=False)
    assert [r["val_acc"] for r in table.rows()] == [4.0, 3.0]


# --------------------------------------------------------------------------- SN-Net and SN-Netv2
def _alone(net: SNNet, ids, val, batch_size):
    out = []
    for i in ids:
        net.set_active(i)
        out.append(accuracy(net, val, batch_size, "cpu"))
    return out


@pytest.fixture(scope="module")
def val_digits():
    g = torch.Generator().manual_seed(3)
    return torch.utils.data.TensorDataset(torch.randn(70, 1, 16, 16, generator=g), torch.randint(0, 10, (70,)))


def test_every_snnet_configuration_scores_bit_identically(val_digits):
    torch.manual_seed(0)
    anchors = [create_vit(n) for n in ("vit_digits_tiny", "vit_digits_small", "vit_digits_base")]
    net = SNNet.from_anchors(anchors, names=["tiny", "small", "base"])
    net.init_stitching_layers(torch.randn(32, 1, 16, 16))
    ids = list(range(len(net.space)))
    assert len(ids) == 71
    shared, report = score_routes(net.eval(), ids, val_digits, 32)
    assert shared == _alone(net, ids, val_digits, 32)
    assert report.steps_shared < report.steps_alone


def test_every_snnetv2_route_scores_bit_identically(val_digits):
    torch.manual_seed(0)
    anchors = [create_vit("vit_digits_tiny", depth=6), create_vit("vit_digits_base", depth=6)]
    space = StitchSpaceV2((6, 6), names=("tiny", "base"))
    net = SNNet(anchors, space, layer_factory=functools.partial(LowRankStitchingLayer, rank=4))
    net.init_stitching_layers(torch.randn(32, 1, 16, 16))
    for layer in net.stitch_layers.values():
        torch.nn.init.normal_(layer.lora_b, std=0.1)  # a non-zero low-rank update
    ids = list(range(len(space)))
    task = StitchTask(net, _splits(val_digits), batch_size=32)
    scorer = task.evaluator().prepare("cpu")
    assert scorer.score_many(ids) == {i: acc for i, acc in zip(ids, _alone(net.eval(), ids, val_digits, 32))}


def test_resnet_anchor_stitches_score_bit_identically(val_digits):
    torch.manual_seed(0)
    anchors = [create_resnet(n, img_size=16) for n in ("resnet_digits_tiny", "resnet_digits_small")]
    net = SNNet.from_anchors(anchors).eval()
    ids = list(range(len(net.space)))
    shared, _ = score_routes(net, ids, val_digits, 32, budget=0)
    assert shared == _alone(net, ids, val_digits, 32)


class _splits:
    """The one split a StitchTask's evaluator reads."""

    def __init__(self, val: torch.utils.data.TensorDataset) -> None:
        self.search_val = val


def test_trie_frees_what_it_does_not_keep():
    import weakref

    trie = PrefixTrie({0: list(range(12)), 1: list(range(6)) + [99] * 6})
    made: list[weakref.ref] = []
    alive_at_leaf: list[int] = []

    def apply(node, x, replay):
        y = x + 1
        made.append(weakref.ref(y))
        if node.depth == 12:
            alive_at_leaf.append(sum(r() is not None for r in made))
        return y

    trie.run(torch.zeros(1000), apply, stats=PrefixStats(budget=0))
    trie.run(torch.zeros(1000), apply, stats=PrefixStats(budget=1 << 20))
    # budget 0: the leaf's input and output only; with a budget, also the kept branching node
    assert alive_at_leaf[0] <= 2 and alive_at_leaf[2] <= 3, alive_at_leaf


@pytest.mark.parametrize("all_pairs", [True, False])
def test_mixture_scores_every_pair_bit_identically(pooling, all_pairs):
    from dataclasses import replace

    from stitchnas.methods.bms import MixtureTask
    from supernet.bms import MixtureConfig, MixtureOfSuperNets

    space, supernet, data = pooling
    torch.manual_seed(2)
    mixture = MixtureOfSuperNets(space, ModelSpec(data.in_chans, data.num_classes), MixtureConfig(num_supernets=2))
    mixture.supernet(0).load_state_dict(supernet.state_dict())  # one trained, one as initialised
    with torch.no_grad():
        mixture.scores.copy_(torch.rand_like(mixture.scores))  # configurations spread over both
    evaluator = replace(MixtureTask(space, data, mixture, EvalConfig(calib_batches=2, batch_size=64)).evaluator(),
                        all_pairs=all_pairs)
    ids = [0, 3, 9, 20, 35]
    assert len({mixture.member_of(space.config(i)) for i in ids}) == 2
    many = evaluator.prepare("cpu").score_many(ids)
    one = evaluator.prepare("cpu")
    assert many == {i: one(i) for i in ids}


def test_progress_advances_by_the_shared_pass_and_per_candidate_otherwise(pooling, tmp_path, monkeypatch):
    """A shared pass scores its chunk at once: the bar advances by the chunk (per-row steps a few
    microseconds apart showed '1/36, ETA 4:19' in a log file), and one step per candidate when
    the pass falls back to scoring one at a time."""
    import stitchnas.search.candidates as candidates

    steps: list[int] = []

    class Bar:
        def __init__(self, *args, **kwargs):
            pass

        def update(self, n=1):
            steps.append(n)

        def close(self):
            pass

    monkeypatch.setattr(candidates, "tqdm", Bar)
    space, supernet, data = pooling
    task = PoolingTask(space, data, supernet, EvalConfig(calib_batches=2, batch_size=64))
    columns = list(task.row(0)) + ["val_acc", "status", "error", "seconds"]
    scorer = task.evaluator().prepare("cpu")
    score_candidates(ResultsTable(tmp_path / "a.csv", columns), task, [30, 2, 11, 5, 7], scorer, chunk=3)
    assert steps == [3, 2]
    steps.clear()
    supernet_nan = build_supernet(space, ModelSpec(data.in_chans, data.num_classes))
    supernet_nan.load_state_dict(supernet.state_dict())
    with torch.no_grad():
        supernet_nan.fc.weight[0, 0] = math.nan
    bad = PoolingTask(space, data, supernet_nan, EvalConfig(calib_batches=2, batch_size=64)).evaluator().prepare("cpu")
    score_candidates(ResultsTable(tmp_path / "b.csv", columns), task, [0, 1], bad)
    assert steps == [1, 1]
