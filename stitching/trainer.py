"""Joint training of a Stitchable Neural Network (Pan et al., CVPR 2023, arXiv 2302.06586),
and the same loop for training one anchor on its own.

SN-Net draws one configuration per training step and updates only the active path; anchors
are trained too, at a lower learning rate than the stitching layers (its Swin recipe: anchors
x0.1). Optionally the loss is distilled from a frozen teacher (here the largest anchor as
loaded, before joint training), with a temperature-scaled KL term on the logits.

Which configuration a step trains is pluggable (:class:`SamplingConfig`): SN-Net draws
uniformly; SN-Netv2 (He et al., arXiv 2307.00154) uses resource-constrained sampling, ROS
(:class:`~searchspace.samplers.FlopsGroupedSampler` over every configuration's analytic FLOPs):
a FLOPs group first, then a member of it.

Determinism follows :mod:`supernet.training`: batch order, configuration draws and any other
randomness of epoch ``e`` come from generators seeded with ``(seed, e)``, and checkpoints are
written at epoch boundaries, so a resumed run replays the uninterrupted one exactly. The ids a
sampler drew are kept in the history (``configs`` per epoch), so they survive a resume too.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from searchspace.samplers import ConfigSampler, FlopsGroupedSampler, UniformSampler
from stitchnas.core import records
from stitchnas.core.checkpoints import EpochCheckpoint
from stitchnas.core.records import check_finite
from stitchnas.core.training import (
    AUGMENT_ABSENT,
    AUGMENT_STREAM,
    Augment,
    Epoch,
    FitOptions,
    ImageSplit,
    TrainHistory,
    autocast,
    batches_for,
    check_augment,
    cosine_lr,
    epoch_rng,
    fit,
    resolve_device,
)

log = logging.getLogger(__name__)

CHECKPOINT_KIND = "stitch_train"
CHECKPOINT_VERSION = 1
OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")
SAMPLERS: tuple[str, ...] = ("uniform", "ros")
ROS_WEIGHTINGS: tuple[str, ...] = ("uniform", "linear")
#: With no explicit gap, ROS uses the FLOPs range divided by this. A route's FLOPs are set mostly
#: by how many blocks of the small anchor it runs (0..12 for SN-Netv2's depths), so the
#: configurations sit in 13 tight clusters about range / 12 apart; half that spacing puts each
#: cluster in its own group: for DeiT-S / a 24-block L (4.61-61.60 GFLOPs) it gives SN-Netv2's
#: 13 groups [1, 12 x 11, 1], as its 1 GFLOP gap does. A gap of the full spacing would cut
#: clusters apart at float-rounding whims.
AUTO_GAP_STEPS = 24

_TORCH_STREAM = 2  # generator stream for torch's global RNG (drop path); 0/1 are used elsewhere


@dataclass(frozen=True)
class StitchTrainConfig:
    """One recipe for joint SN-Net training (or standalone anchor training).

    ``lr`` is the stitching layers' peak learning rate; anchors get ``lr * anchor_lr_scale``.
    The schedule is a linear warm-up over ``warmup_epochs`` then per-step cosine decay to
    ``lr_min`` (scaled the same way for anchors). ``epochs=0`` means no training: the
    network stays as initialised (for SN-Net: right after the least-squares init).
    AdamW is the default: on CPU with a few epochs it trains small ViTs far better than SGD.
    ``augment``: the training batches' augmentation (:func:`~stitchnas.core.training.augment_batch`).
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    lr_min: float = 1e-5
    anchor_lr_scale: float = 0.1
    warmup_epochs: int = 0
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = 0.9
    weight_decay: float = 0.05
    distill_weight: float = 0.0
    distill_temperature: float = 1.0
    seed: int = 0
    device: str = "cpu"
    amp: bool = True  # bf16 autocast, used only on CUDA
    augment: Augment = "auto"

    # files without "augment" were written by runs that did not augment: they decode as "none"
    json_absent: ClassVar[Mapping[str, Any]] = AUGMENT_ABSENT

    def __post_init__(self) -> None:
        check_finite(self, "stitch train config")
        check_augment(self.augment, "stitch train config")
        for name in ("epochs", "warmup_epochs", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"stitch train config '{name}': expected an int >= 0, got {value!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"stitch train config 'batch_size': expected an int >= 1, got {self.batch_size!r}")
        if not (self.lr > 0 and 0 <= self.lr_min <= self.lr):
            raise ValueError(
                f"stitch train config 'lr'/'lr_min': expected 0 <= lr_min <= lr and lr > 0, got {self.lr}/{self.lr_min}"
            )
        if self.anchor_lr_scale < 0:
            raise ValueError(f"stitch train config 'anchor_lr_scale': expected >= 0, got {self.anchor_lr_scale}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"stitch train config 'optimizer': expected one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError(
                f"stitch train config 'weight_decay'/'momentum': expected >= 0 and in [0, 1), "
                f"got {self.weight_decay}/{self.momentum}"
            )
        if not 0 <= self.distill_weight <= 1:
            raise ValueError(f"stitch train config 'distill_weight': expected 0..1, got {self.distill_weight}")
        if self.distill_temperature <= 0:
            raise ValueError(
                f"stitch train config 'distill_temperature': expected > 0, got {self.distill_temperature}"
            )

    def to_json(self) -> dict[str, Any]:
        return records.to_json(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "stitch train config") -> StitchTrainConfig:
        return records.from_json(cls, data, where)


@dataclass(frozen=True)
class SamplingConfig:
    """How joint training picks the configuration of each step.

    Args:
        kind: ``"uniform"`` (SN-Net: every configuration equally likely) or ``"ros"``
            (SN-Netv2's resource-constrained sampling: group configurations by FLOPs, draw a
            group, then a member; see :class:`~searchspace.samplers.FlopsGroupedSampler`).
        flops_gap_mflops: ROS grouping gap in MFLOPs (> 0). ``None``: the FLOPs range divided
            by :data:`AUTO_GAP_STEPS`.
        weighting: how ROS draws groups, ``"uniform"`` or ``"linear"`` (SN-Netv2's
            ``--flops_sampling_k``: heavier groups more often).
        k: the linear weighting's ``flops_sampling_k`` (> 0).

    ``flops_gap_mflops`` and ``weighting`` belong to ROS; with ``kind="uniform"`` they must
    keep their defaults, so a run config never records an option that did nothing.
    """

    kind: Literal["uniform", "ros"] = "uniform"
    flops_gap_mflops: float | None = None
    weighting: Literal["uniform", "linear"] = "uniform"
    k: float = 1.0

    json_keep_none: ClassVar[bool] = True  # "flops_gap_mflops": null, as run configs always had it

    def __post_init__(self) -> None:
        if self.kind not in SAMPLERS:
            raise ValueError(f"sampling 'kind': expected one of {SAMPLERS}, got {self.kind!r}")
        gap = self.flops_gap_mflops
        if gap is not None and (isinstance(gap, bool) or not isinstance(gap, (int, float))
                                or not 0 < gap < math.inf):
            raise ValueError(f"sampling 'flops_gap_mflops': expected a finite number of MFLOPs > 0, got {gap!r}")
        if self.weighting not in ROS_WEIGHTINGS:
            raise ValueError(f"sampling 'weighting': expected one of {ROS_WEIGHTINGS}, got {self.weighting!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, (int, float)) or not 0 < self.k < math.inf:
            raise ValueError(f"sampling 'k': expected a finite number > 0, got {self.k!r}")
        if self.kind == "uniform" and (gap is not None or self.weighting != "uniform"):
            raise ValueError(
                f"sampling: a FLOPs gap ({gap!r}) and group weighting ({self.weighting!r}) apply to "
                "ROS sampling only (kind 'ros')"
            )

    def gap_flops(self, flops: Sequence[float]) -> float:
        """The grouping gap in FLOPs for configurations costing ``flops``."""
        if self.flops_gap_mflops is not None:
            return float(self.flops_gap_mflops) * 1e6
        spread = max(flops) - min(flops) if len(flops) else 0
        return spread / AUTO_GAP_STEPS if spread > 0 else 1.0

    def build(self, flops: Sequence[float]) -> ConfigSampler:
        """The sampler over configurations ``0..len(flops) - 1`` costing ``flops`` (FLOPs)."""
        if self.kind == "uniform":
            return UniformSampler(len(flops))
        return FlopsGroupedSampler(tuple(flops), self.gap_flops(flops), self.weighting, self.k)

    def to_json(self) -> dict[str, Any]:
        return records.to_json(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "sampling config") -> SamplingConfig:
        return records.from_json(cls, data, where)


def learning_rate(cfg: StitchTrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Peak-``lr`` schedule at ``step``: linear warm-up, then cosine decay to ``lr_min``."""
    warmup = min(cfg.warmup_epochs * steps_per_epoch, total_steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    # cosine_lr reads only lr / lr_min, which this config has too
    return cosine_lr(cfg, step - warmup, total_steps - warmup)  # type: ignore[arg-type]


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch
    (Hinton et al., arXiv 1503.02531; ``T^2`` keeps gradient sizes independent of ``T``)."""
    t = temperature
    return F.kl_div(
        F.log_softmax(logits.float() / t, dim=1), F.log_softmax(teacher_logits.float() / t, dim=1),
        reduction="batchmean", log_target=True,
    ) * (t * t)


def param_groups(model: nn.Module, cfg: StitchTrainConfig) -> list[dict[str, Any]]:
    """Optimizer groups: an SN-Net's anchors (``lr_scale = anchor_lr_scale``) apart from its
    stitching layers and freshly initialised heads (``lr_scale = 1``); any other model is one group."""
    make_groups: Any = getattr(model, "param_groups", None)  # duck-typed: SNNet.param_groups
    if make_groups is not None and hasattr(model, "stitch_layers"):
        groups = make_groups(anchor_lr=cfg.lr * cfg.anchor_lr_scale, stitch_lr=cfg.lr)
        for group in groups:
            group["lr_scale"] = cfg.anchor_lr_scale if group["name"] == "anchors" else 1.0
        return groups
    return [{"params": list(model.parameters()), "lr": cfg.lr, "lr_scale": 1.0, "name": "model"}]


def build_optimizer(groups: list[dict[str, Any]], cfg: StitchTrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def train_network(
    model: nn.Module,
    train_data: ImageSplit,
    cfg: StitchTrainConfig,
    choose: Callable[[random.Random], Any] | None = None,
    sampler: ConfigSampler | None = None,
    teacher: nn.Module | None = None,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    desc: str = "train",
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainHistory:
    """Train ``model`` for ``cfg.epochs`` epochs.

    Args:
        model: an :class:`~stitching.snnet.SNNet` (anchors and stitching layers get their own
            learning rates) or any classifier.
        choose: called with the epoch's generator before every step; for an SN-Net,
            ``snnet.sample_active`` (one uniformly drawn configuration per step).
        sampler: instead of ``choose``, for an SN-Net: before every step
            ``model.set_active(sampler.sample(rng))``; the drawn ids are recorded per epoch
            (``history.epochs[e]["configs"]``). A :class:`UniformSampler` draws exactly what
            ``snnet.sample_active`` draws.
        teacher: frozen model to distil from when ``cfg.distill_weight > 0``.
        checkpoint_path: written at every epoch boundary (and once before the first epoch).
        resume: continue from ``checkpoint_path`` if it exists (same recipe required).
        on_step: called with the global step after every step (tests interrupt runs with it).

    The epochs run in :func:`stitchnas.core.training.fit`.

    Returns:
        Per-epoch loss, training accuracy and the learning rate of every group.

    Raises:
        TrainingDiverged: A step's loss is not finite (the last finite checkpoint is kept).
        ValueError: ``choose`` and ``sampler`` both given, a ``sampler`` for a model without
            ``set_active``, or a checkpoint of a different recipe (when resuming).
    """
    if choose is not None and sampler is not None:
        raise ValueError("train_network: pass either 'choose' or 'sampler', not both")
    set_active: Any = getattr(model, "set_active", None)  # duck-typed: e.g. SNNet.set_active
    if sampler is not None and not callable(set_active):
        raise ValueError(f"train_network 'sampler': the model ({type(model).__name__}) has no set_active")
    device = resolve_device(cfg.device)
    model.to(device)
    teacher = teacher if cfg.distill_weight > 0 else None
    if teacher is not None:
        teacher.to(device).eval()
        teacher.requires_grad_(False)
    optimizer = build_optimizer(param_groups(model, cfg), cfg)
    batches = batches_for(train_data, device)
    steps_per_epoch = batches.num_batches(cfg.batch_size, drop_last=True)
    total_steps = cfg.epochs * steps_per_epoch
    checkpoint = EpochCheckpoint(Path(checkpoint_path) if checkpoint_path is not None else None,
                                 {"kind": CHECKPOINT_KIND, "version": CHECKPOINT_VERSION,
                                  "train_config": cfg.to_json()},
                                 desc)

    def run_epoch(epoch: Epoch) -> dict[str, Any]:
        rng = epoch.rng()
        loss_sum, correct, seen = 0.0, 0, 0
        drawn: list[int] = []
        batch_iter = batches.iterate(cfg.batch_size, epoch.generator(), drop_last=True,
                                     augment=cfg.augment, aug_generator=epoch.generator(AUGMENT_STREAM))
        for i, (x, y) in enumerate(batch_iter):
            if choose is not None:
                choose(rng)
            elif sampler is not None:
                drawn.append(sampler.sample(rng))
                set_active(drawn[-1])
            lr = learning_rate(cfg, epoch.index * steps_per_epoch + i, total_steps, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            loss, hits = _step(model, x, y, optimizer, cfg, teacher, device)
            loss_sum, correct, seen = loss_sum + loss * len(y), correct + hits, seen + len(y)
            epoch.step(loss)
        record: dict[str, Any] = {"epoch": epoch.index + 1, "loss": loss_sum / max(1, seen),
                                  "train_acc": 100.0 * correct / max(1, seen)}
        record.update({f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)})
        if sampler is not None:
            record["configs"] = drawn
        return record

    # the starting point (SN-Net: the least-squares init) is checkpointed too (save_start);
    # drop path draws from torch's global RNG, seeded per epoch (torch_stream)
    options = FitOptions(cfg.epochs, steps_per_epoch, cfg.seed, desc=desc, progress=progress, resume=resume,
                         save_start=True, torch_stream=_TORCH_STREAM, device=device)
    return fit(run_epoch, model, optimizer, checkpoint, options, on_step)


def _step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
    cfg: StitchTrainConfig, teacher: nn.Module | None, device: torch.device,
) -> tuple[float, int]:
    model.train()
    with autocast(device, cfg.amp):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if teacher is not None:
            with torch.no_grad():
                target = teacher(x)
            loss = (1 - cfg.distill_weight) * loss + cfg.distill_weight * distillation_loss(
                logits, target, cfg.distill_temperature)
    optimizer.zero_grad(set_to_none=True)  # parameters off the active path keep grad None: untouched
    loss.backward()
    optimizer.step()
    return float(loss.detach()), int((logits.argmax(1) == y).sum())


def sampled_configs(num_configs: int, cfg: StitchTrainConfig, steps_per_epoch: int,
                    epochs: Sequence[int] | None = None, sampler: ConfigSampler | None = None) -> list[int]:
    """The configuration ids :func:`train_network` draws (one per step from the epoch
    generator) with ``sampler``, or by default with ``SNNet.sample_active`` (uniform), without
    training anything."""
    sampler = sampler if sampler is not None else UniformSampler(num_configs)
    ids: list[int] = []
    for epoch in epochs if epochs is not None else range(cfg.epochs):
        rng = epoch_rng(cfg.seed, epoch)
        ids.extend(sampler.sample(rng) for _ in range(steps_per_epoch))
    return ids


__all__ = [
    "AUTO_GAP_STEPS", "OPTIMIZERS", "ROS_WEIGHTINGS", "SAMPLERS", "SamplingConfig", "StitchTrainConfig",
    "build_optimizer", "distillation_loss", "learning_rate", "param_groups", "sampled_configs", "train_network",
]
