"""Training loops for standalone networks and the one-shot supernet.

Every random choice of epoch ``e`` (batch order, sampled paths) is drawn from generators seeded
with ``(seed, e)``, and checkpoints are written at epoch boundaries. An interrupted run that
resumes from its last checkpoint therefore replays exactly what an uninterrupted run does.
"""

from __future__ import annotations

import logging
import math
import random
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from stitchnas.checkpoints import EpochCheckpoint

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    """One training recipe (SGD + momentum, per-step cosine decay from ``lr`` to ``lr_min``)."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "cpu"
    amp: bool = True  # bf16 autocast, used only on CUDA

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"train config '{name}': expected >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.lr_min < 0 or self.lr_min > self.lr:
            raise ValueError(f"train config 'lr'/'lr_min': expected 0 <= lr_min <= lr, lr > 0, got {self.lr}/{self.lr_min}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; an explicit 'cuda' without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available on this machine (use 'cpu' or 'auto')")
    return device


def autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def epoch_rng(seed: int, epoch: int, stream: int = 0) -> random.Random:
    """The Python generator for one epoch's path sampling (independent of resume points)."""
    return random.Random((seed * 1_000_003 + epoch) * 7 + stream)


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 7 + stream)


class TensorBatches:
    """Mini-batches of an in-memory ``TensorDataset`` held on the training device.

    Indexing whole tensors is much cheaper than a ``DataLoader`` collating single samples.
    """

    def __init__(self, dataset: torch.utils.data.TensorDataset, device: torch.device) -> None:
        self.x, self.y = (t.to(device) for t in dataset.tensors)

    def __len__(self) -> int:
        return len(self.y)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        n = len(self)
        return n // batch_size if drop_last and n >= batch_size else math.ceil(n / batch_size)

    def iterate(
        self, batch_size: int, generator: torch.Generator | None = None, drop_last: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self)
        order = torch.randperm(n, generator=generator).to(self.x.device) if generator is not None else None
        for b in range(self.num_batches(batch_size, drop_last)):
            idx = slice(b * batch_size, (b + 1) * batch_size)
            if order is None:
                yield self.x[idx], self.y[idx]
            else:
                sel = order[idx]
                yield self.x[sel], self.y[sel]


def cosine_lr(cfg: TrainConfig, step: int, total_steps: int) -> float:
    progress = min(1.0, step / max(1, total_steps))
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * progress))


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def sgd_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    lr: float,
    amp: bool = False,
) -> tuple[float, int]:
    """One optimisation step; returns (loss, number of correct predictions)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    model.train()
    with autocast(x.device, amp):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), int((logits.argmax(1) == y).sum())


@dataclass
class TrainHistory:
    epochs: list[dict[str, float]] = field(default_factory=list)


PathChooser = Callable[[random.Random], Any]


def supernet_checkpoint(path: str | Path | None, cfg: TrainConfig, what: str = "supernet") -> EpochCheckpoint:
    """The checkpoint format of :func:`train` (also what Ray Train's trainer writes)."""
    return EpochCheckpoint(Path(path) if path is not None else None,
                           {"version": CHECKPOINT_VERSION, "train_config": cfg.to_json()}, what)


def train(
    model: nn.Module,
    train_data: torch.utils.data.TensorDataset,
    cfg: TrainConfig,
    choose_path: PathChooser | None = None,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    desc: str = "train",
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainHistory:
    """Train ``model`` for ``cfg.epochs``; with ``choose_path`` (a supernet), a path is drawn
    before every step from the epoch's generator (SPOS: only that path runs and is updated).

    ``on_step(global_step)`` is called after every step (progress hooks; tests use it to
    interrupt a run at a precise point, as a user's Ctrl-C would).
    """
    device = resolve_device(cfg.device)
    model.to(device)
    optimizer = build_optimizer(model.parameters(), cfg)
    batches = TensorBatches(train_data, device)
    steps_per_epoch = batches.num_batches(cfg.batch_size, drop_last=True)
    total_steps = cfg.epochs * steps_per_epoch
    checkpoint = supernet_checkpoint(checkpoint_path, cfg, desc)
    history = TrainHistory()
    start_epoch, history.epochs = checkpoint.restore(model, optimizer, resume)
    bar = tqdm(range(start_epoch, cfg.epochs), desc=desc, unit="epoch", disable=not progress,
               initial=start_epoch, total=cfg.epochs, leave=False)
    for epoch in bar:
        rng, gen = epoch_rng(cfg.seed, epoch), epoch_generator(cfg.seed, epoch)
        loss_sum, correct, seen = 0.0, 0, 0
        for i, (x, y) in enumerate(batches.iterate(cfg.batch_size, gen, drop_last=True)):
            if choose_path is not None:
                choose_path(rng)
            lr = cosine_lr(cfg, epoch * steps_per_epoch + i, total_steps)
            loss, hits = sgd_step(model, x, y, optimizer, lr, cfg.amp)
            loss_sum, correct, seen = loss_sum + loss * len(y), correct + hits, seen + len(y)
            if on_step is not None:
                on_step(epoch * steps_per_epoch + i + 1)
        record = {"epoch": epoch + 1, "loss": loss_sum / max(1, seen), "train_acc": 100.0 * correct / max(1, seen)}
        history.epochs.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['train_acc']:.1f}")
        checkpoint.save(epoch + 1, model, optimizer, history.epochs)
    return history
