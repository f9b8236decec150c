"""Data-parallel supernet training on Ray Train (stitchnas/backends/ray_train.py)."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from searchspace.pooling import resnet20_space
from stitchnas.data import DataSpec, load_data
from stitchnas.backends.ray_train import (
    DistributedOptions, GlobalBatchNorm2d, RayTrainTrainer, check_batch, check_cluster, convert_global_batchnorm,
)
from stitchnas.core.io import atomic_torch_save, load_checkpoint
from stitchnas.methods.pooling import PoolingSearchConfig, SupernetTraining
from supernet.networks import ModelSpec, build_supernet
from supernet.training import CHECKPOINT_VERSION, TrainConfig, train

SPACE = resnet20_space()
DATA_SPEC = DataSpec(name="digits", input_size=8, seed=0, max_train_samples=128)
TRAIN = TrainConfig(epochs=1, batch_size=16, lr=0.05, seed=0, device="cpu")  # 64 images: 4 steps


def fresh_supernet(data) -> nn.Module:
    torch.manual_seed(TRAIN.seed)  # what PoolingMethod.build does before building it
    return build_supernet(SPACE, ModelSpec(data.in_chans, data.num_classes))


def context(tmp_path, data, resume: bool = False) -> SupernetTraining:
    cfg = PoolingSearchConfig(space=SPACE, data=DATA_SPEC, train=TRAIN)
    return SupernetTraining(fresh_supernet(data), data, cfg, tmp_path / "supernet.pt", tmp_path, resume=resume)


def test_global_batchnorm_is_batchnorm_without_a_process_group():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    convert_global_batchnorm(model)
    assert isinstance(model[1], GlobalBatchNorm2d) and isinstance(model[2][0], GlobalBatchNorm2d)
    assert list(model.state_dict()) == list(state)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    plain.load_state_dict(state)
    x = torch.randn(5, 3, 6, 6)
    assert torch.equal(model(x), plain(x))
    assert torch.equal(model[1].running_var, plain[1].running_var)


def test_bad_worker_settings_raise_one_line_value_errors():
    with pytest.raises(ValueError, match=r"^--batch-size 16: must be divisible by --num-workers 3"):
        check_batch(TRAIN, 3)
    with pytest.raises(ValueError, match=r"^--num-workers 3: needs 3 CPUs but the Ray cluster has 2$"):
        check_cluster(DistributedOptions(num_workers=3), [{"CPU": 2.0}])
    with pytest.raises(ValueError, match=r"^--num-workers 2: one GPU per worker but the Ray cluster has 0$"):
        check_cluster(DistributedOptions(num_workers=2, use_gpu=True), [{"CPU": 8.0}])
    with pytest.raises(ValueError, match=r"^num_workers: expected >= 1, got 0$"):
        DistributedOptions(num_workers=0)


def test_finished_checkpoint_is_loaded_without_starting_ray(tmp_path):
    data = load_data(DATA_SPEC)
    ctx = context(tmp_path, data, resume=True)
    trained = fresh_supernet(data)
    with torch.no_grad():
        next(trained.parameters()).add_(1.0)
    atomic_torch_save({"version": CHECKPOINT_VERSION, "epoch": TRAIN.epochs, "model": trained.state_dict(),
                       "optimizer": None, "history": [], "train_config": TRAIN.to_json()}, ctx.checkpoint)
    RayTrainTrainer(DistributedOptions(num_workers=2, address="127.0.0.1:1"))(ctx)  # never connects
    for a, b in zip(ctx.supernet.state_dict().values(), trained.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.ray
def test_two_workers_match_one_process_on_the_same_global_batch(tmp_path):
    pytest.importorskip("ray")
    import ray

    from stitchnas.backends.tune import init_ray

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    data = load_data(DATA_SPEC)
    reference = fresh_supernet(data)
    history = train(reference, data.search_train, TRAIN, choose_path=reference.sample_active, progress=False)
    ctx = context(tmp_path, data)
    init_ray(None, num_cpus=2)
    try:
        RayTrainTrainer(DistributedOptions(num_workers=2))(ctx)
    finally:
        ray.shutdown()
    got, want, initial = ctx.supernet.state_dict(), reference.state_dict(), fresh_supernet(data).state_dict()
    assert list(got) == list(want)
    moved = 0
    for name in want:
        if want[name].is_floating_point():
            torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)
            moved += int(not torch.equal(want[name], initial[name]))
        else:
            assert torch.equal(got[name], want[name]), name  # num_batches_tracked
    assert moved > 0  # the steps changed the weights; the comparison is not vacuous
    state = load_checkpoint(ctx.checkpoint)  # the run's checkpoint, in the one-process format
    assert state["epoch"] == 1 and state["train_config"] == TRAIN.to_json()
    assert state["history"][0]["loss"] == pytest.approx(history.epochs[0]["loss"], rel=1e-5)
    assert state["history"][0]["train_acc"] == pytest.approx(history.epochs[0]["train_acc"])
