import random

import pytest
import torch

from searchspace.pooling import resnet20_space, resnet50_space
from stitchnas.core.evaluation import batch_statistics
from supernet.evaluation import EvalConfig, recalibrate_batchnorm
from supernet.networks import ModelSpec, build_model, build_supernet, count_params
from supernet.training import TrainConfig, cosine_lr, sgd_step, build_optimizer


@pytest.mark.parametrize("downsample", ["maxpool", "avgpool", "conv"])
def test_every_supernet_path_equals_its_standalone_model(downsample):
    torch.manual_seed(0)
    space = resnet20_space(downsample)
    supernet = build_supernet(space, ModelSpec(1, 10)).eval()
    x = torch.randn(3, 1, 16, 16)
    for config in space:
        supernet.set_active(config)
        model = supernet.export_active().eval()
        assert type(model).__name__ == "PoolingNet"
        assert model.state_dict().keys() == supernet.state_dict().keys()
        torch.testing.assert_close(model(x), supernet(x), rtol=0, atol=0)


def test_standalone_model_has_only_the_chosen_path_and_timm_style_api():
    space = resnet20_space()
    model = build_model(space, space.default_config(), ModelSpec(3, 7))
    pools = [i for i, layer in enumerate(model.layers, start=1) if isinstance(layer.pool, torch.nn.MaxPool2d)]
    assert pools == [4, 7]
    feats = model.forward_features(torch.zeros(2, 3, 16, 16))
    assert feats.shape == (2, 64, 4, 4)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 64)
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 7)
    assert not any("Switchable" in type(m).__name__ for m in model.modules())
    assert "layers.3.block.downsample.0.weight" in model.state_dict()  # 16 -> 32 projection


def test_training_step_moves_only_the_sampled_path():
    space = resnet50_space()  # stride-2 convs: a 3x3 weight is shared, a path never skips a block
    supernet = build_supernet(space, ModelSpec(1, 10))
    config = supernet.sample_active(random.Random(0))
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    opt = build_optimizer(supernet.parameters(), TrainConfig())
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
    sgd_step(supernet, x, y, opt, lr=0.1)
    changed = [k for k, v in supernet.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and supernet.active == config


def test_cosine_schedule_endpoints():
    cfg = TrainConfig(lr=0.1, lr_min=0.001)
    assert cosine_lr(cfg, 0, 100) == pytest.approx(0.1)
    assert cosine_lr(cfg, 50, 100) == pytest.approx(0.0505)
    assert cosine_lr(cfg, 100, 100) == pytest.approx(0.001)


def test_recalibration_and_batch_statistics_leave_the_supernet_untouched():
    torch.manual_seed(0)
    space = resnet20_space()
    supernet = build_supernet(space, ModelSpec(1, 10))
    x = torch.randn(64, 1, 16, 16) * 3 + 1
    data = torch.utils.data.TensorDataset(x, torch.randint(0, 10, (64,)))
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    model = supernet.export_active()
    recalibrate_batchnorm(model, data, num_batches=2, batch_size=32)
    stem_bn = model.stem.bn
    # The running mean after recalibration is the exact average of the two batch means.
    with torch.no_grad():
        stem_out = [torch.nn.functional.conv2d(x[i:i + 32], model.stem.conv.weight, padding=1).mean((0, 2, 3)) for i in (0, 32)]
    torch.testing.assert_close(stem_bn.running_mean, (stem_out[0] + stem_out[1]) / 2, rtol=1e-4, atol=1e-5)
    model.eval()
    with batch_statistics(model):
        assert all(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        model(x)
    torch.testing.assert_close(stem_bn.running_mean, (stem_out[0] + stem_out[1]) / 2, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in supernet.state_dict().items())
    # Batch statistics really are used: a shifted batch is normalised by its own statistics.
    model.eval()
    shifted = x[:8] + 5.0
    with torch.no_grad():
        eval_out = model(shifted)
        with batch_statistics(model):
            batch_out = model(shifted)
    assert not torch.allclose(eval_out, batch_out)


def test_eval_config_rejects_unknown_bn_mode():
    with pytest.raises(ValueError, match="'bn_mode'"):
        EvalConfig(bn_mode="running")


def test_bottleneck_space_builds_and_counts_params():
    space = resnet50_space()
    model = build_model(space, space.default_config(), ModelSpec(1, 10))
    assert model(torch.zeros(1, 1, 16, 16)).shape == (1, 10)
    assert count_params(model) == count_params(build_supernet(space, ModelSpec(1, 10)))
