"""The equal-FLOPs pooling space (issue 15): channels follow the resolution stage, so every
placement costs the same FLOPs while parameters differ; the supernet shares weights by channel
slicing, exports and shared-prefix scores stay exact."""

from __future__ import annotations

import pytest
import torch

from searchspace.pooling import PoolingSpace, create_space, resnet20_equal_flops_space, resnet20_space
from stitchnas.core.flops import fvcore_flops
from stitchnas.data import DataSpec, load_data
from supernet.evaluation import EvalConfig, evaluate_path, prepare_path
from supernet.flops import pooling_flops, pooling_params
from supernet.networks import ModelSpec, build_model, build_supernet, count_params
from supernet.shared_prefix import score_placements
from supernet.slimmable import sliced_state_dict
from supernet.training import TrainConfig, train

from helpers import perturb_batchnorm


def test_every_placement_costs_the_same_flops_within_2_percent_and_params_differ():
    space = resnet20_equal_flops_space(width_scale=0.5)
    assert len(space) == 36 and space.stage_widths == (8, 16, 32)
    flops, params = [], []
    for config in space:
        model = build_model(space, config, ModelSpec(1, 10))
        analytic = pooling_flops(space, config, 24, 1, 10)
        assert analytic == fvcore_flops(model, torch.zeros(1, 1, 24, 24)), space.describe(config)
        assert pooling_params(space, 1, 10, config) == count_params(model)
        flops.append(analytic)
        params.append(count_params(model))
    mean = sum(flops) / len(flops)
    assert max(abs(f - mean) / mean for f in flops) < 0.02
    assert max(params) / min(params) > 5  # where capacity sits is what differs
    # by hand: [1,1,8] puts 8 layers at 32 channels, [8,1,1] 8 layers at 8
    assert space.layer_widths(space.from_notation([1, 1, 8])) == (8, 16, 32, 32, 32, 32, 32, 32, 32, 32)
    assert space.layer_widths(space.from_notation([8, 1, 1])) == (8,) * 8 + (16, 32)
    with pytest.raises(ValueError, match="pass a config"):
        pooling_params(space, 1, 10)
    fixed = resnet20_space(width_scale=0.5)  # the other benchmark: compute decides there
    fixed_flops = [pooling_flops(fixed, c, 24, 1, 10) for c in fixed]
    assert max(fixed_flops) / min(fixed_flops) > 3


def test_space_json_round_trip_and_bad_stage_widths_are_named():
    space = create_space("resnet20_equal_flops", width_scale=0.25)
    assert PoolingSpace.from_json(space.to_json()) == space
    assert space.max_layer_widths() == tuple(max(space.layer_widths(c)[i] for c in space) for i in range(10))
    assert PoolingSpace.from_json(resnet20_space().to_json()).stage_widths is None  # old files load
    with pytest.raises(ValueError, match="'stage_widths': expected 3 positive ints"):
        space.with_options(stage_widths=(4, 8))
    with pytest.raises(ValueError, match="'widths': with stage_widths"):
        space.with_options(widths=(4,) * 10)
    with pytest.raises(ValueError, match="block 'basic'"):
        space.with_options(block="bottleneck")


@pytest.mark.parametrize("downsample", ["maxpool", "conv"])
def test_sliced_supernet_equals_its_exported_network_on_every_placement(downsample):
    space = resnet20_equal_flops_space(downsample=downsample, width_scale=0.25)
    torch.manual_seed(0)
    supernet = build_supernet(space, ModelSpec(1, 10))
    perturb_batchnorm(supernet)
    x = torch.randn(3, 1, 12, 12)
    for config in space:
        supernet.eval().set_active(config)
        model = supernet.export_active().eval()
        assert count_params(model) == pooling_params(space, 1, 10, config)
        assert torch.equal(supernet(x), model(x)), space.describe(config)
    # training mode: the sliced running statistics move exactly as the standalone network's
    config = space.from_notation([2, 5, 3])
    supernet.train().set_active(config)
    model = supernet.export_active().train()
    supernet(x), model(x)
    sliced = sliced_state_dict(supernet.state_dict(), model)
    assert all(torch.equal(sliced[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("bn_mode", ["recalibrate", "batch"])
def test_shared_prefix_scores_equal_per_placement_scores_on_the_equal_flops_space(bn_mode):
    data = load_data(DataSpec(name="digits", input_size=8, seed=0, max_train_samples=200))
    space = create_space("resnet20_equal_flops", width_scale=0.25)
    torch.manual_seed(0)
    supernet = build_supernet(space, ModelSpec(data.in_chans, data.num_classes))
    train(supernet, data.search_train, TrainConfig(epochs=1, batch_size=32, lr=0.05, seed=0),
          choose_path=supernet.sample_active, progress=False)
    cfg = EvalConfig(bn_mode=bn_mode, calib_batches=2, calib_batch_size=32, batch_size=64)
    configs = space.configurations()
    alone = [evaluate_path(supernet, c, data.search_train, data.search_val, cfg) for c in configs]
    states: dict[int, dict[str, torch.Tensor]] = {}
    shared, report = score_placements(supernet, configs, data.search_train, data.search_val, cfg, states_out=states)
    assert shared == alone and report.steps_shared < report.steps_alone
    assert len(set(alone)) > 3  # the placements really differ
    if bn_mode == "recalibrate":
        for i in (0, 20, 35):
            model = prepare_path(supernet, configs[i], data.search_train, cfg)
            buffers = {k: v for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}
            assert buffers.keys() == states[i].keys()
            assert all(torch.equal(buffers[k], states[i][k]) for k in buffers)


def test_gm_gradient_similarity_runs_on_the_sliced_supernet():
    from supernet.bms import gradient_similarity
    from stitchnas.core.training import batches_for

    space = create_space("resnet20_equal_flops", width_scale=0.25)
    torch.manual_seed(0)
    supernet = build_supernet(space, ModelSpec(1, 10))
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,)))
    sim = gradient_similarity(supernet, space, batches_for(data, torch.device("cpu")), 32, 1, 0)
    assert sim.shape == (36, 36) and torch.isfinite(torch.from_numpy(sim)).all()
    assert abs(sim.diagonal() - 1).max() < 1e-9  # each configuration with itself
