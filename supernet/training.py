"""Training loops for standalone networks and the one-shot supernet.

The recipe (:class:`TrainConfig`, :func:`cosine_lr`, :func:`build_optimizer`, :func:`sgd_step`)
is the ground floor's (:mod:`stitchnas.core.training`), re-exported here.

Every random choice of epoch ``e`` (batch order, sampled paths, augmentation) is drawn from
generators seeded with ``(seed, e)``, and checkpoints are written at epoch boundaries. An interrupted run that
resumes from its last checkpoint therefore replays exactly what an uninterrupted run does.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

# The SGD recipe lives in the ground floor (Ray Train's workers use it too); re-exported here.
from stitchnas.core.training import (
    AUGMENT_STREAM,
    TRAIN_CHECKPOINT_VERSION,
    Epoch,
    FitOptions,
    ImageSplit,
    TrainConfig,
    TrainHistory,
    batches_for,
    build_optimizer,
    cosine_lr,
    fit,
    resolve_device,
    sgd_step,
    train_checkpoint,
)

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = TRAIN_CHECKPOINT_VERSION

PathChooser = Callable[[random.Random], Any]

#: The checkpoint format of :func:`train` (also what Ray Train's trainer writes).
supernet_checkpoint = train_checkpoint


def train(
    model: nn.Module,
    train_data: ImageSplit,
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

    The epochs run in :func:`stitchnas.core.training.fit`: a checkpoint after every epoch at
    ``checkpoint_path`` (:func:`supernet_checkpoint`'s format), resumed from with ``resume``.
    ``on_step(global_step)`` is called after every step (progress hooks; tests use it to
    interrupt a run at a precise point, as a user's Ctrl-C would).

    Raises:
        TrainingDiverged: A step's loss is not finite (the last finite checkpoint is kept).
        ValueError: ``checkpoint_path`` holds a checkpoint of a different recipe (when resuming).
    """
    device = resolve_device(cfg.device)
    model.to(device)
    optimizer = build_optimizer(model.parameters(), cfg)
    batches = batches_for(train_data, device)
    steps_per_epoch = batches.num_batches(cfg.batch_size, drop_last=True)
    total_steps = cfg.epochs * steps_per_epoch

    def run_epoch(epoch: Epoch) -> dict[str, Any]:
        rng, gen = epoch.rng(), epoch.generator()
        loss_sum, correct, seen = 0.0, 0, 0
        batch_iter = batches.iterate(cfg.batch_size, gen, drop_last=True, augment=cfg.augment,
                                     aug_generator=epoch.generator(AUGMENT_STREAM))
        for i, (x, y) in enumerate(batch_iter):
            if choose_path is not None:
                choose_path(rng)
            lr = cosine_lr(cfg, epoch.index * steps_per_epoch + i, total_steps)
            loss, hits = sgd_step(model, x, y, optimizer, lr, cfg.amp)
            loss_sum, correct, seen = loss_sum + loss * len(y), correct + hits, seen + len(y)
            epoch.step(loss)
        return {"epoch": epoch.index + 1, "loss": loss_sum / max(1, seen), "train_acc": 100.0 * correct / max(1, seen)}

    options = FitOptions(cfg.epochs, steps_per_epoch, cfg.seed, desc=desc, progress=progress, resume=resume)
    return fit(run_epoch, model, optimizer, supernet_checkpoint(checkpoint_path, cfg, desc), options, on_step)


def snapshot_epochs(epochs: int, count: int, name: str = "score_snapshots") -> tuple[int, ...]:
    """The epochs (1-based, ascending, the last one ``epochs``) at whose end a supernet is kept
    for score averaging over checkpoints: ``count`` of them, ``max(1, epochs // 12)`` apart, so
    within the last quarter of training from 4 snapshots on (120 epochs, 4: 90, 100, 110, 120;
    BENCHMARKS.md "Search quality").

    Raises:
        ValueError: One line starting with ``name`` (the option or field that set ``count``):
            ``count`` below 1, or more snapshots than the spacing fits in ``epochs``.
    """
    if count < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {count}")
    step = max(1, epochs // 12)
    first = epochs - (count - 1) * step
    if first < 1:
        raise ValueError(f"{name}: {count} snapshots {step} epoch(s) apart do not fit in {epochs} epochs "
                         f"(at most {(epochs - 1) // step + 1})")
    return tuple(range(first, epochs + 1, step))


__all__ = [
    "CHECKPOINT_VERSION", "PathChooser", "TrainConfig", "build_optimizer", "cosine_lr", "sgd_step",
    "snapshot_epochs", "supernet_checkpoint", "train",
]
