from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from fractions import Fraction

import pytest

from searchspace.stitch import Segment, StitchConfig
from searchspace.stitch_v2 import (
    ROUTE_TYPES,
    StitchSpaceV2,
    boundary_splits,
    check_covering,
    count_configs,
)


def snnetv2_enumeration(d0: int, d1: int) -> list[tuple[tuple[Segment, ...], tuple[int, ...]]]:
    """Test oracle: SN-Netv2's ``get_stitch_configs_bidirection`` rules as stitching.md states
    them, for d1 in {d0, 2 * d0} only (its hard-coded assumptions), written independently:
    FS small 0..i then large from (i + 1) * d1 / d0; SF large 0..i (odd i when d1 = 2 d0) then
    small from floor(i * d0 / d1) + 1; three-segment routes chain them so the middle segment
    keeps a block; the FS entry with no large block (front == d0 - 1) is not a configuration."""
    ratio = d1 // d0
    fs = [(i, (i + 1) * ratio, i) for i in range(d0)]  # (exit block, entry block, layer)
    sf = [(i, i * d0 // d1 + 1, i // ratio) for i in range(d1 - 1) if ratio == 1 or i % 2 == 1]
    out = [((Segment(0, 0, d0 - 1),), ()), ((Segment(1, 0, d1 - 1),), ())]
    out += [((Segment(0, 0, j), Segment(1, k, d1 - 1)), (w,)) for j, k, w in fs if j != d0 - 1]
    out += [((Segment(1, 0, j), Segment(0, k, d0 - 1)), (w,)) for j, k, w in sf]
    out += [
        ((Segment(1, 0, j1), Segment(0, k1, j2), Segment(1, k2, d1 - 1)), (w1, w2))
        for (j1, k1, w1), (j2, k2, w2) in itertools.product(sf, fs)
        if w2 != d0 - 1 and j2 >= k1
    ]
    out += [
        ((Segment(0, 0, j1), Segment(1, k1, j2), Segment(0, k2, d0 - 1)), (w1, w2))
        for (j1, k1, w1), (j2, k2, w2) in itertools.product(fs, sf)
        if j2 >= k1
    ]
    return out


# --------------------------------------------------------------------------- counts
def test_deit3_small_large_gives_134():
    space = StitchSpaceV2((12, 24))
    assert len(space) == 134
    assert [len(space.ids(t)) for t in ("anchor", "fs", "sf", "sfs", "fsf")] == [2, 11, 11, 55, 55]
    assert count_configs(12, 24) == 134
    assert [c.id for c in space] == list(range(134))


@pytest.mark.parametrize("depths", [(12, 24), (12, 12), (6, 12), (4, 8)])
def test_matches_snnetv2_enumeration_in_order(depths):
    space = StitchSpaceV2(depths)
    assert [(c.route, c.windows) for c in space] == snnetv2_enumeration(*depths)


def test_snnetv2_id_mapping_for_12_24():
    space = StitchSpaceV2((12, 24))
    assert space.describe(12) == "anchor0[0-10] -> anchor1[22-23]"  # SN-Netv2 id 12
    assert space.describe(13) == "anchor1[0-1] -> anchor0[1-11]"  # SN-Netv2 id 14
    assert space.route_type(24) == "sfs" and space.route_type(79) == "fsf"  # SN-Netv2 ids 25, 80
    assert space.describe(133) == "anchor0[0-9] -> anchor1[20-21] -> anchor0[11-11]"


@pytest.mark.parametrize(
    "depths, expected",
    [
        ((6, 12), (32, [2, 5, 5, 10, 10])),  # b = 5: 2 + 5 + 5 + 10 + 10
        ((12, 18), (134, [2, 11, 11, 55, 55])),  # only the shallower depth counts
        ((24, 12), (134, [2, 11, 11, 55, 55])),  # anchor 0 may be the deeper one
        ((3, 7), (8, [2, 2, 2, 1, 1])),
        ((1, 5), (2, [2, 0, 0, 0, 0])),
    ],
)
def test_other_depth_pairs(depths, expected):
    space = StitchSpaceV2(depths)
    assert (len(space), [len(space.ids(t)) for t in ("anchor",) + ROUTE_TYPES]) == expected


@pytest.mark.parametrize("d0, d1", list(itertools.product(range(1, 9), repeat=2)))
def test_closed_form_count(d0, d1):
    b = min(d0, d1) - 1
    assert len(StitchSpaceV2((d0, d1))) == count_configs(d0, d1) == 2 + b * (b + 1)


def test_nearest_index_splits_for_12_18():
    # deep block i -> shallow block floor(i * 12 / 18); boundary s sits after shallow block s and
    # after deep block ceil((s + 1) * 18 / 12) - 1
    assert [s1 for _, s1 in boundary_splits(12, 18)] == [2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17]
    assert [s1 for _, s1 in boundary_splits(12, 24)] == [2 * (s + 1) for s in range(11)]
    assert boundary_splits(18, 12) == tuple((b, a) for a, b in boundary_splits(12, 18))
    mapping = [i * 12 // 18 for i in range(18)]
    for s, (s0, s1) in enumerate(boundary_splits(12, 18)):
        assert s0 == s + 1 and mapping[s1 - 1] == s and mapping[s1] == s + 1


# --------------------------------------------------------------------------- coverage
@pytest.mark.parametrize("depths", [(12, 24), (12, 18), (6, 12), (24, 12), (5, 5), (3, 7)])
def test_every_route_covers_the_network(depths):
    space = StitchSpaceV2(depths)
    for config in space:
        check_covering(config.route, depths)
        assert config.route[0].first == 0 and config.route[-1].last == depths[config.route[-1].anchor] - 1
        assert all(seg.first <= seg.last for seg in config.route)
        assert all(a.anchor != b.anchor for a, b in zip(config.route, config.route[1:]))
    assert len({c.route for c in space}) == len(space)


@pytest.mark.parametrize("depths", [(12, 24), (6, 12), (12, 12), (4, 12)])
def test_exact_ratio_routes_cover_depth_fraction_one(depths):
    for config in StitchSpaceV2(depths):
        assert sum(Fraction(s.last - s.first + 1, depths[s.anchor]) for s in config.route) == 1


@pytest.mark.parametrize(
    "route, fragment",
    [
        ([(0, 0, 3), (1, 9, 23)], "gap"),
        ([(0, 0, 3), (1, 7, 23)], "overlap"),
        ([(1, 0, 2), (0, 1, 11)], "overlap"),  # large block 2 ends mid small block 1
        ([(1, 0, 2), (0, 2, 11)], "gap"),
        ([(0, 1, 3), (1, 8, 23)], "does not start at block 0"),
        ([(0, 0, 3), (1, 8, 22)], "does not end at the last block"),
        ([(0, 0, 10)], "does not end at the last block"),
        ([(0, 0, 3), (0, 4, 11)], "stays on anchor 0"),
        ([(0, 0, 3), (1, 8, 24)], "not a block range"),
        ([(2, 0, 3)], "anchor 2 unknown"),
        ([], "at least one segment"),
        ([(0, 0)], "int segments"),
        ([(0, "0", 11)], "int segments"),
    ],
)
def test_non_covering_routes_are_named(route, fragment):
    space = StitchSpaceV2((12, 24))
    with pytest.raises(ValueError, match=fragment) as info:
        space.find(route)
    if route and all(isinstance(v, int) for seg in route for v in seg):
        assert str([tuple(s) for s in route]) in str(info.value)
    assert "stitch_v2 route" in str(info.value)


def test_validate_rejects_non_covering_config_naming_the_route():
    space = StitchSpaceV2((12, 24))
    bad = StitchConfig(5, ((0, 0, 3), (1, 9, 23)), (3,))
    with pytest.raises(ValueError, match=r"\[\(0, 0, 3\), \(1, 9, 23\)\].*gap"):
        space.validate(bad)
    with pytest.raises(ValueError, match="gap"):
        space.index(bad)


def test_validate_and_find():
    space = StitchSpaceV2((12, 24))
    config = space.find([(1, 0, 5), (0, 3, 7), (1, 16, 23)])
    assert space.route_type(config) == "sfs" and config.windows == (2, 7)
    assert space.index(config) == config.id and space.config(config.id) == config
    with pytest.raises(ValueError, match="'windows': expected \\[2, 7\\]"):
        space.validate(StitchConfig(config.id, config.route, (2, 6)))
    with pytest.raises(ValueError, match="belongs to id"):
        space.validate(StitchConfig(config.id + 1, config.route, config.windows))
    with pytest.raises(ValueError, match="unknown, expected an int in 0..133"):
        space.config(134)
    with pytest.raises(ValueError, match="covers the network but is not in space"):  # two FS stitches
        space.find([(0, 0, 1), (1, 4, 5), (0, 3, 4), (1, 10, 23)])


# --------------------------------------------------------------------------- filters
def test_route_type_filters():
    full = StitchSpaceV2((12, 24))
    assert len(StitchSpaceV2((12, 24), route_types=("fs",))) == 13
    assert len(StitchSpaceV2((12, 24), route_types=("sf", "fs"))) == 24
    assert len(StitchSpaceV2((12, 24), route_types=("fsf", "sfs"))) == 112
    assert len(StitchSpaceV2((12, 24), route_types=())) == 2
    assert count_configs(12, 24, ("fs", "fsf")) == 68 == len(StitchSpaceV2((12, 24), route_types=("fsf", "fs")))
    only_sfs = StitchSpaceV2((12, 24), route_types=("sfs",))
    assert only_sfs.route_types == ("sfs",)
    assert [c.route for c in only_sfs][2:] == [full.config(i).route for i in full.ids("sfs")]
    assert only_sfs.ids("fs") == [] and only_sfs.ids("anchor") == [0, 1]
    # routes of an excluded type are named as such
    with pytest.raises(ValueError, match="not in space"):
        only_sfs.find(full.config(2).route)
    # order ignored, ids renumbered contiguously
    assert StitchSpaceV2((6, 12), route_types=("sf", "fs")) == StitchSpaceV2((6, 12), route_types=("fs", "sf"))
    for bad in [("fs", "ls"), ("fs", "fs"), ("anchor",)]:
        with pytest.raises(ValueError, match="route_types"):
            StitchSpaceV2((12, 24), route_types=bad)
    with pytest.raises(ValueError, match="route_types"):
        count_configs(12, 24, ("sl",))


def test_stitching_layers_are_shared_per_boundary_and_direction():
    space = StitchSpaceV2((12, 24))
    layers = space.stitching_layers()
    assert len(layers) == 22
    by_key = {spec.key: spec for spec in layers}
    assert sorted(by_key) == sorted([f"0_1_{s}" for s in range(11)] + [f"1_0_{s}" for s in range(11)])
    for s in range(11):
        assert by_key[f"0_1_{s}"].positions == ((s, 2 * (s + 1)),)
        assert by_key[f"1_0_{s}"].positions == ((2 * s + 1, s + 1),)
    for config in space:
        for a, b, j, k, w in config.junctions():
            assert (j, k) in by_key[f"{a}_{b}_{w}"].positions
    fs_only = StitchSpaceV2((12, 24), route_types=("fs",)).stitching_layers()
    assert len(fs_only) == 11 and all((l.in_anchor, l.out_anchor) == (0, 1) for l in fs_only)
    # three-segment routes reuse both directions; keys do not depend on the filter
    fsf = {l.key for l in StitchSpaceV2((12, 24), route_types=("fsf",)).stitching_layers()}
    assert fsf == set(by_key) - {"0_1_10", "1_0_0"}  # FSF needs s1 < s2: FS at 0..9, SF at 1..10
    assert {l.key for l in StitchSpaceV2((12, 24), route_types=("fsf", "sfs")).stitching_layers()} == set(by_key)


# --------------------------------------------------------------------------- JSON, sampling, misc
def test_json_round_trip():
    space = StitchSpaceV2((12, 18), names=("deit3_s", "deit3_b"), route_types=("sf", "fsf"), name="sb")
    data = json.loads(space.dumps())
    assert data["kind"] == "stitch_v2" and data["format_version"] == 1
    assert data["route_types"] == ["sf", "fsf"]
    back = StitchSpaceV2.from_json(data)
    assert back == space and list(back) == list(space)
    assert StitchSpaceV2.from_json(StitchSpaceV2((6, 12)).to_json()) == StitchSpaceV2((6, 12))
    for config in space:
        assert StitchConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    with pytest.raises(ValueError, match="'kind': expected 'stitch_v2'"):
        StitchSpaceV2.from_json(dict(data, kind="stitch"))
    with pytest.raises(ValueError, match="'format_version': expected 1"):
        StitchSpaceV2.from_json(dict(data, format_version=2))
    with pytest.raises(ValueError, match="unknown fields"):
        StitchSpaceV2.from_json(dict(data, kernel_size=2))
    with pytest.raises(ValueError, match="'depths'"):
        StitchSpaceV2.from_json({k: v for k, v in data.items() if k != "depths"})


@pytest.mark.parametrize("depths", [(12,), (12, 24, 24), (0, 12), (12, 2.5), (True, 12)])
def test_bad_depths(depths):
    with pytest.raises(ValueError, match="'depths'"):
        StitchSpaceV2(depths)


def test_bad_names():
    with pytest.raises(ValueError, match="'names'"):
        StitchSpaceV2((12, 24), names=("a", "a"))


def test_sample_is_seeded_and_uniform_over_ids():
    space = StitchSpaceV2((6, 12))
    draws = [space.sample(random.Random(7)).id for _ in range(3)]
    assert len(set(draws)) == 1
    rng = random.Random(0)
    seen = {space.sample(rng).id for _ in range(2000)}
    assert seen == set(range(len(space)))


def test_describe_and_snnet_interface():
    space = StitchSpaceV2((12, 24), names=("deit3_s", "deit3_l"))
    assert space.describe(2) == "deit3_s[0-0] -> deit3_l[2-23]"
    assert space.num_anchors == 2 and space.stages_of(1) == (24,) and space.anchor_config(1).route == ((1, 0, 23),)


def test_searchspace_modules_do_not_import_torch():
    code = "import sys, searchspace.stitch_v2, searchspace.samplers; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
