import json
import math
import random
from collections import Counter

import pytest

from searchspace.pooling import PoolingConfig, PoolingSpace, create_space, resnet18_space, resnet20_space, resnet50_space


def test_resnet20_space_has_36_configurations_and_index_is_a_bijection():
    space = resnet20_space()
    configs = space.configurations()
    assert len(space) == len(configs) == 36 == math.comb(9, 2)
    assert len(set(configs)) == 36
    for i, config in enumerate(configs):
        assert space.index(config) == i
        assert space.config(i) == config
    assert configs == sorted(configs)  # lexicographic order of positions


def test_notation_matches_the_bms_paper():
    space = resnet20_space()
    # BMS numbers its 36 ResNet-20 configurations 1..36 from [1,1,8] to [8,1,1]; default [4,3,3].
    assert space.describe(space.config(0)) == "[1,1,8]"
    assert space.describe(space.config(1)) == "[1,2,7]"
    assert space.describe(space.config(8)) == "[2,1,7]"
    assert space.describe(space.config(35)) == "[8,1,1]"
    assert space.notation(space.default_config()) == (4, 3, 3)
    assert space.default_config().positions == (4, 7)
    for config in space:
        counts = space.notation(config)
        assert sum(counts) == 10 and min(counts) >= 1
        assert space.from_notation(counts) == config
    # Motivation figure of the paper: early pooling [1,1,8] and late pooling [6,2,2].
    assert space.from_notation([6, 2, 2]).positions == (6, 8)


def test_larger_spaces_are_expressible():
    r18 = resnet18_space()
    assert (r18.num_layers, r18.num_downsamples, len(r18)) == (9, 3, 56)
    r50 = resnet50_space()
    assert len(r50) == 455 == math.comb(15, 3)
    assert r50.notation(r50.default_config()) == (4, 4, 6, 3)  # stem + [3,4,6,3] blocks
    assert all(r50.index(c) == i for i, c in enumerate(r50))
    custom = PoolingSpace(name="tiny", widths=(8, 8, 16, 16, 32), num_downsamples=3, downsample="conv")
    assert len(custom) == math.comb(4, 3)


def test_uniform_sampling_hits_every_configuration_evenly():
    space = resnet20_space()
    rng = random.Random(0)
    counts = Counter(space.sample(rng) for _ in range(36_000))
    assert set(counts) == set(space)
    expected = 1000
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 80  # 35 degrees of freedom: p ~ 1e-5 at 80
    again = [space.sample(random.Random(7)) for _ in range(3)]
    assert again[0] == again[1] == again[2]


def test_json_round_trip_keeps_space_and_config():
    space = resnet20_space("conv")
    restored = PoolingSpace.from_json(json.loads(json.dumps(space.to_json())))
    assert restored == space and restored.default == space.default
    config = space.config(17)
    assert PoolingConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


def test_parse_config_accepts_index_notation_and_positions():
    space = resnet20_space()
    assert space.parse_config("23") == space.default_config()
    assert space.parse_config("[4,3,3]") == space.default_config()
    assert space.parse_config("p:4,7") == space.default_config()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(widths=(16, 16, 32), num_downsamples=3), "do not fit in 2 positions"),
        (dict(widths=(16,), num_downsamples=0), "need a stem"),
        (dict(widths=(16, 16, 32), num_downsamples=1, downsample="bilinear"), "'downsample'"),
        (dict(widths=(16, 0, 32), num_downsamples=1), "'widths'"),
    ],
)
def test_bad_spaces_are_rejected_with_the_field_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PoolingSpace(name="bad", **kwargs)


@pytest.mark.parametrize(
    "config, message",
    [
        (PoolingConfig((4,)), "expected 2 positions"),
        (PoolingConfig((7, 4)), "strictly increasing"),
        (PoolingConfig((0, 4)), "outside 1..9"),
        (PoolingConfig((4, 10)), "outside 1..9"),
    ],
)
def test_invalid_configurations_are_rejected(config, message):
    with pytest.raises(ValueError, match=message):
        resnet20_space().validate(config)


def test_bad_indices_notation_and_names():
    space = resnet20_space()
    with pytest.raises(ValueError, match=r"0\.\.35"):
        space.config(36)
    with pytest.raises(ValueError, match="3 positive layer counts summing to 10"):
        space.from_notation([5, 5, 1])
    with pytest.raises(ValueError, match="expected an index"):
        space.parse_config("four")
    with pytest.raises(ValueError, match="unknown, expected one of"):
        create_space("resnet1000")


def test_input_too_small_for_the_downsamplings():
    space = resnet20_space()
    space.check_input_size(4)
    with pytest.raises(ValueError, match="too small for 2 downsamplings: expected at least 4"):
        space.check_input_size(3)


def test_malformed_space_json():
    with pytest.raises(ValueError, match="unknown fields"):
        PoolingSpace.from_json({**resnet20_space().to_json(), "bogus": 1})
    with pytest.raises(ValueError, match="'format_version'"):
        PoolingSpace.from_json({**resnet20_space().to_json(), "format_version": 99})
    with pytest.raises(ValueError, match="'positions'"):
        PoolingConfig.from_json({"positions": "4,7"})


def test_searchspace_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, searchspace.pooling, searchspace; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
