"""Top-1 accuracy of a classifier on an in-memory split, with BatchNorm in eval mode or with
per-batch statistics; shared by every method's scoring and export."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from stitchnas.core.training import ImageSplit, autocast, batches_for, resolve_device


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class NonFiniteOutput(FloatingPointError):
    """A network produced NaN or infinite logits: it has no accuracy (argmax of NaN logits
    would report the share of one class as if it were a result)."""


@torch.no_grad()
def accuracy(model: nn.Module, data: ImageSplit, batch_size: int = 256,
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
    batches = batches_for(data, device)
    correct = bad = 0
    with batch_statistics(model) if batch_stats else nullcontext():
        for x, y in batches.iterate(batch_size):
            with autocast(device, amp):
                logits = model(x)
            ok, nonfinite = count_correct(logits, y)
            bad += int(nonfinite)
            correct += int(ok)
    return accuracy_percent(correct, bad, len(batches))


class AccuracyTally:
    """Top-1 hits and non-finite rows of ``n`` candidates scored on the same batches, kept as
    device tensors (no host sync per batch); what :func:`accuracy` counts, for many networks.

    Set :attr:`labels` to the current batch's ``(N,)`` labels, :meth:`add` each candidate's
    ``(N, num_classes)`` logits, then :meth:`percents` once at the end.
    """

    def __init__(self, n: int, device: torch.device) -> None:
        self.correct = [torch.zeros((), dtype=torch.long, device=device) for _ in range(n)]
        self.bad = [torch.zeros((), dtype=torch.long, device=device) for _ in range(n)]
        self.labels = torch.zeros(0, dtype=torch.long)

    def add(self, i: int, logits: torch.Tensor) -> None:
        ok, nonfinite = count_correct(logits, self.labels)
        self.correct[i] += ok
        self.bad[i] += nonfinite

    def percents(self, total: int) -> list[float | None]:
        """Accuracy in percent of each candidate over ``total`` images; None where a logit was
        NaN or infinite (:func:`accuracy` raises :class:`NonFiniteOutput` there)."""
        return [None if int(b) else accuracy_percent(int(c), 0, total) for c, b in zip(self.correct, self.bad)]


def count_correct(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 hits and rows with a NaN or infinite logit in one batch, as 0-dim int64 tensors
    (on the logits' device: no host sync).

    Args:
        logits: ``(N, num_classes)``.
        labels: ``(N,)`` int64.
    """
    return (logits.argmax(1) == labels).sum(), (~torch.isfinite(logits)).any(dim=1).sum()


def accuracy_percent(correct: int, bad: int, total: int) -> float:
    """``100 * correct / total`` (percent; 0 for an empty split).

    Raises:
        NonFiniteOutput: One line, when ``bad`` (rows with a non-finite logit) is not 0.
    """
    if bad:
        raise NonFiniteOutput(f"non-finite logits (NaN or inf) on {bad} of {total} images: "
                              "the network has no accuracy")
    return 100.0 * correct / max(1, total)


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


