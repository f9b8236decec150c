"""Top-1 accuracy of a classifier on an in-memory split, with BatchNorm in eval mode or with
per-batch statistics; shared by every method's scoring and export."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch
from torch import nn

from stitchnas.core.training import TensorBatches, autocast, resolve_device


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def accuracy(model: nn.Module, data: torch.utils.data.TensorDataset, batch_size: int = 256,
             device: str | torch.device = "cpu", amp: bool = True, batch_stats: bool = False) -> float:
    """Top-1 accuracy in percent, in eval mode (BatchNorm with per-batch statistics if
    ``batch_stats``)."""
    device = resolve_device(device) if isinstance(device, str) else device
    model.to(device).eval()
    batches = TensorBatches(data, device)
    correct = 0
    with batch_statistics(model) if batch_stats else nullcontext():
        for x, y in batches.iterate(batch_size):
            with autocast(device, amp):
                correct += int((model(x).argmax(1) == y).sum())
    return 100.0 * correct / max(1, len(batches))


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Evaluate with per-batch BatchNorm statistics without touching the running ones."""
    bns = _batchnorms(model)
    saved = [(bn.training, bn.momentum) for bn in bns]
    try:
        for bn in bns:
            bn.train()
            bn.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
        yield
    finally:
        for bn, (training, momentum) in zip(bns, saved):
            bn.train(training)
            bn.momentum = momentum


