import pytest
import torch

from searchspace.pooling import PoolingSpace, resnet18_space, resnet20_space, resnet50_space
from stitchnas.core.flops import fvcore_flops
from supernet.flops import pooling_flops, pooling_params
from supernet.networks import ModelSpec, build_model, count_params


def test_analytic_flops_equal_fvcore_on_all_36_resnet20_configurations():
    space = resnet20_space()
    seen = set()
    for config in space:
        model = build_model(space, config, ModelSpec(1, 10))
        analytic = pooling_flops(space, config, 16, 1, 10)
        assert analytic == fvcore_flops(model, torch.zeros(1, 1, 16, 16)), space.describe(config)
        assert pooling_params(space, 1, 10) == count_params(model)
        seen.add(analytic)
    assert len(seen) > 20  # placements really change the cost


@pytest.mark.parametrize(
    "space, size, chans",
    [(resnet20_space("conv"), 15, 3), (resnet20_space("avgpool"), 13, 3), (resnet18_space(), 17, 1), (resnet50_space(), 16, 3)],
)
def test_analytic_flops_equal_fvcore_for_other_ops_blocks_and_odd_sizes(space, size, chans):
    step = max(1, len(space) // 9)
    for config in list(space)[::step]:
        model = build_model(space, config, ModelSpec(chans, 100))
        assert pooling_flops(space, config, size, chans, 100) == fvcore_flops(model, torch.zeros(1, chans, size, size))


def test_flops_of_a_known_configuration_by_hand():
    # A 2-layer net: stem 1->4 at 8x8, maxpool, basic block 4->8 at 4x4 with projection.
    space = PoolingSpace(name="hand", widths=(4, 8), num_downsamples=1)
    config = space.config(0)
    stem = 4 * 64 * 1 * 9 + 2 * 4 * 64
    block = (8 * 16 * 4 * 9 + 2 * 8 * 16) + (8 * 16 * 8 * 9 + 2 * 8 * 16) + (8 * 16 * 4 + 2 * 8 * 16)
    head = 8 * 16 + 8 * 10
    assert pooling_flops(space, config, 8, 1, 10) == stem + block + head


def test_more_downsamplings_than_the_input_allows():
    space = resnet20_space()
    with pytest.raises(ValueError, match="input_size 3 is too small"):
        pooling_flops(space, space.default_config(), 3, 1, 10)
