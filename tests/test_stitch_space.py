from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from searchspace.stitch import (
    Segment,
    StitchConfig,
    StitchSpace,
    paired_stitching,
    staged_stitching,
    unpaired_stitching,
)

DEIT = StitchSpace((12, 12, 12), ("deit_tiny", "deit_small", "deit_base"))


def test_paired_stitching_matches_snnet_for_depth_12():
    pair = paired_stitching(12, 12)
    assert len(pair.positions) == 34
    assert pair.num_windows == 11
    assert pair.positions[:7] == ((0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 1), (2, 2))
    assert pair.windows[:7] == (0, 0, 0, 0, 1, 1, 1)
    assert pair.positions[-3:] == ((10, 11), (11, 10), (11, 11))
    assert pair.windows[-3:] == (10, 10, 10)
    assert all(abs(j - k) <= 1 for j, k in pair.positions)
    # k = j + 1 (12 blocks), j (13) or j - 1 (14): 11 + 12 + 11 positions
    assert sorted(k - j for j, k in pair.positions).count(1) == 11
    assert sorted(k - j for j, k in pair.positions).count(0) == 12
    assert sorted(k - j for j, k in pair.positions).count(-1) == 11


def test_paired_stitching_wider_window():
    pair = paired_stitching(12, 12, kernel_size=3)
    # first window gives 3 x 3, each later one 5 new positions, the last two nothing new
    assert len(pair.positions) == 9 + 9 * 5
    assert pair.num_windows == 10
    assert all(abs(j - k) <= 2 for j, k in pair.positions)


def test_unpaired_stitching_maps_shallow_blocks_by_nearest_interpolation():
    pair = unpaired_stitching(6, 18)
    # shallow block j's output stands for deep block 3j + 2; entries 3j+1..3j+3 are in reach
    assert pair.positions[:6] == ((0, 1), (0, 2), (0, 3), (1, 4), (1, 5), (1, 6))
    assert len(pair.positions) == 17
    assert {j for j, _ in pair.positions} == set(range(6))
    assert pair.num_windows == 11
    assert sorted(set(pair.windows)) == list(range(11))
    back = unpaired_stitching(18, 6)
    assert len(back.positions) == 17
    assert back.positions[:5] == ((0, 0), (1, 0), (2, 1), (3, 1), (4, 1))
    # paired_stitching dispatches unequal depths to the unpaired rule
    assert paired_stitching(6, 18) == pair
    # equal depths: the unpaired rule is the paired rule
    assert unpaired_stitching(12, 12) == paired_stitching(12, 12)


def test_staged_stitching_never_enters_a_downsampling_block():
    pair = staged_stitching((2, 2, 2), (2, 2, 2))
    assert pair.positions == ((0, 0), (0, 1), (1, 0), (1, 1), (2, 3), (3, 3), (4, 5), (5, 5))
    assert pair.windows == (0, 0, 0, 0, 1, 1, 2, 2)
    assert pair.num_windows == 3


def test_deit_space_has_71_configs_in_snnet_order():
    assert len(DEIT) == 71
    assert [c.route for c in list(DEIT)[:3]] == [((0, 0, 11),), ((1, 0, 11),), ((2, 0, 11),)]
    assert DEIT.config(3).route == ((0, 0, 0), (1, 0, 11))
    assert DEIT.config(24).route == ((0, 0, 7), (1, 7, 11))  # SN-Net README id 24
    assert DEIT.config(24).windows == (6,)
    assert DEIT.config(37).route == ((1, 0, 0), (2, 0, 11))
    assert DEIT.config(70).route == ((1, 0, 11), (2, 11, 11))
    assert DEIT.describe(24) == "deit_tiny[0-7] -> deit_small[7-11]"
    assert sum(1 for c in DEIT if c.anchors == (0, 1)) == 34
    assert sum(1 for c in DEIT if c.anchors == (1, 2)) == 34
    assert all(isinstance(seg, Segment) for seg in DEIT.config(5).route)
    assert [DEIT.index(c) for c in DEIT] == list(range(71))


def test_counts_follow_the_anchors():
    assert len(StitchSpace((12, 12))) == 2 + 34
    assert len(StitchSpace((12, 12, 12, 12))) == 4 + 3 * 34
    assert len(StitchSpace((4, 4, 4))) == 3 + 2 * 10
    assert len(StitchSpace((6, 18))) == 2 + 17
    # SN-Net without nearest stitching: all pairs plus three-anchor chains
    assert len(StitchSpace((12, 12, 12), nearest=False)) == 732


def test_three_anchor_chains_keep_the_middle_segment():
    space = StitchSpace((3, 3, 3), nearest=False)
    chains = [c for c in space if len(c.route) == 3]
    assert chains
    assert all(c.route[1].first <= c.route[1].last for c in chains)
    assert all(len(c.windows) == 2 for c in chains)


def test_stitching_layers_are_shared_per_window():
    layers = DEIT.stitching_layers()
    assert len(layers) == 22
    assert {(s.in_anchor, s.out_anchor) for s in layers} == {(0, 1), (1, 2)}
    first = next(s for s in layers if s.key == "0_1_0")
    assert first.positions == ((0, 0), (0, 1), (1, 0), (1, 1))
    assert first.pair == (0, 1)
    assert all(len(s.positions) == 3 for s in layers if s.window > 0)


def test_unknown_id_names_id_and_range():
    with pytest.raises(ValueError, match=r"id 71.*0\.\.70"):
        DEIT.config(71)
    with pytest.raises(ValueError, match=r"id -1"):
        DEIT.validate(-1)
    with pytest.raises(ValueError, match="True"):
        DEIT.config(True)
    foreign = StitchConfig(3, ((0, 0, 5), (2, 6, 11)), (5,))
    with pytest.raises(ValueError, match="not in space"):
        DEIT.validate(foreign)
    with pytest.raises(ValueError, match="'id'"):
        DEIT.validate(StitchConfig(4, DEIT.config(3).route, DEIT.config(3).windows))


def test_config_validation():
    with pytest.raises(ValueError, match="windows"):
        StitchConfig(0, ((0, 0, 3), (1, 4, 11)), ())
    with pytest.raises(ValueError, match="empty"):
        StitchConfig(0, ((0, 5, 3),))
    with pytest.raises(ValueError, match="route"):
        StitchConfig.from_json({"id": 1, "route": [[0, 0]]})


def test_space_validation():
    with pytest.raises(ValueError, match="depths"):
        StitchSpace((12, 0))
    with pytest.raises(ValueError, match="names"):
        StitchSpace((12, 12), ("a",))
    with pytest.raises(ValueError, match="stage_depths"):
        StitchSpace((6, 6), stage_depths=((2, 2, 2), (3, 2)))
    with pytest.raises(ValueError, match="kernel_size"):
        StitchSpace((6, 6), kernel_size=0)


def test_json_round_trip():
    for space in (DEIT, StitchSpace((6, 6), stage_depths=((2, 2, 2), (2, 2, 2)), nearest=False, name="rn")):
        data = json.loads(json.dumps(space.to_json()))
        assert data["kind"] == "stitch" and data["format_version"] == 1
        back = StitchSpace.from_json(data)
        assert back == space
        assert [c.route for c in back] == [c.route for c in space]
    config = DEIT.config(24)
    assert StitchConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    with pytest.raises(ValueError, match="'kind'"):
        StitchSpace.from_json({**DEIT.to_json(), "kind": "pooling"})
    with pytest.raises(ValueError, match="format_version"):
        StitchSpace.from_json({**DEIT.to_json(), "format_version": 99})
    with pytest.raises(ValueError, match="unknown fields"):
        StitchSpace.from_json({**DEIT.to_json(), "extra": 1})


def test_sample_is_seeded_and_uniform_over_ids():
    a = [DEIT.sample(random.Random(7)).id for _ in range(3)]
    assert len(set(a)) == 1
    rng1, rng2 = random.Random(3), random.Random(3)
    s1 = [DEIT.sample(rng1).id for _ in range(2000)]
    s2 = [DEIT.sample(rng2).id for _ in range(2000)]
    assert s1 == s2
    assert set(s1) == set(range(71))


def test_searchspace_does_not_import_torch():
    code = "import sys, searchspace.stitch; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
