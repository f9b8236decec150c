"""The CUDA path: run by ``scripts/gpu_check.sh`` (``pytest -m gpu``) on a machine with a GPU.

Deselected by default (``pyproject.toml``'s ``-m 'not gpu'``); selected on a machine without
CUDA they fail instead of skipping, so a GPU check can never pass by doing nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import stitchnas
from searchspace.pooling import create_space
from stitchnas.core.evaluation import accuracy
from stitchnas.core.training import TensorBatches, augment_batch, resolve_device
from stitchnas.data import DataSpec, load_data
from supernet.networks import ModelSpec, build_supernet
from supernet.training import TrainConfig, train

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA device (torch.cuda.is_available() is False)")
    return resolve_device("cuda")


def test_augmentation_runs_on_cuda_like_on_the_cpu(cuda):
    x = torch.randn(32, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    for kind in ("crop_flip", "rrc_flip"):
        on_cpu = augment_batch(x, kind, torch.Generator().manual_seed(2))
        on_gpu = augment_batch(x.to(cuda), kind, torch.Generator().manual_seed(2))
        assert on_gpu.device.type == "cuda"
        assert torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-5), kind


def test_training_batches_live_on_the_device(cuda):
    data = load_data(DataSpec(input_size=16, max_train_samples=256))
    batches = TensorBatches(data.search_train, cuda)
    x, y = next(batches.iterate(32, torch.Generator().manual_seed(0), augment="auto",
                                aug_generator=torch.Generator().manual_seed(1)))
    assert x.device.type == "cuda" and y.device.type == "cuda" and x.shape == (32, 1, 16, 16)


def test_supernet_trains_with_bf16_autocast_and_scores_like_fp32(cuda):
    data = load_data(DataSpec(input_size=16, max_train_samples=600))
    space = create_space("resnet20", width_scale=0.5)
    supernet = build_supernet(space, ModelSpec(data.in_chans, data.num_classes))
    history = train(supernet, data.search_train, TrainConfig(epochs=3, batch_size=64, device="cuda", amp=True),
                    choose_path=supernet.sample_active, progress=False)
    assert all(p.device.type == "cuda" for p in supernet.parameters())
    assert history.epochs[-1]["train_acc"] > 50  # learnt something in bf16
    supernet.set_active(space.default_config())
    bf16 = accuracy(supernet, data.search_val, 256, cuda, amp=True)
    fp32 = accuracy(supernet, data.search_val, 256, cuda, amp=False)
    cpu = accuracy(supernet.to("cpu"), data.search_val, 256, "cpu")
    assert fp32 == pytest.approx(cpu, abs=0.5)  # TF32/cuDNN kernels: a few images may flip
    assert bf16 == pytest.approx(fp32, abs=2.0)


def test_default_search_runs_on_the_gpu_and_exports_load_on_the_cpu(cuda, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([Path(sys.executable).with_name("stitchnas"), "search", "pooling", "--device", "cuda",
                           "--epochs", "3", "--out", str(out), "--no-progress"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((out / "run_config.json").read_text())
    assert config["train"]["device"] == "cuda"
    exports = sorted((out / "exports").iterdir())
    assert exports
    model, record = stitchnas.load_model(exports[0], device="cpu", return_record=True)
    data = load_data(DataSpec.from_json(config["data"]))
    # measured in bf16 on the GPU, reloaded in fp32 on the CPU: close, not equal
    assert accuracy(model, data.test) == pytest.approx(record["metrics"]["test_acc"], abs=2.0)
