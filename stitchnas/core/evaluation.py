"""Top-1 accuracy of a classifier on an in-memory split, with BatchNorm in eval mode or with
per-batch statistics; shared by every method's scoring and export."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from stitchnas.core.training import TensorBatches, autocast, resolve_device


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class NonFiniteOutput(FloatingPointError):
    """A network produced NaN or infinite logits: it has no accuracy (argmax of NaN logits
    would report the share of one class as if it were a result)."""


@torch.no_grad()
def accuracy(model: nn.Module, data: torch.utils.data.TensorDataset, batch_size: int = 256,
             device: str | torch.device = "cpu", amp: bool = True, batch_stats: bool = False) -> float:
    """Top-1 accuracy in percent, in eval mode (BatchNorm with per-batch statistics if
    ``batch_stats``).

    Args:
        model: A classifier, ``(N, C, H, W) -> (N, num_classes)`` logits.
        data: Images ``(N, C, H, W)`` float and labels ``(N,)`` int64.

    Raises:
        NonFiniteOutput: One line, when any logit is NaN or infinite.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    model.to(device).eval()
    batches = TensorBatches(data, device)
    correct = bad = 0
    with batch_statistics(model) if batch_stats else nullcontext():
        for x, y in batches.iterate(batch_size):
            with autocast(device, amp):
                logits = model(x)
            bad += int((~torch.isfinite(logits)).any(dim=1).sum())
            correct += int((logits.argmax(1) == y).sum())
    if bad:
        raise NonFiniteOutput(f"non-finite logits (NaN or inf) on {bad} of {len(batches)} images: "
                              "the network has no accuracy")
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


