"""Training for the Learngene Pool (:mod:`stitching.learngene`): distilling the teacher into
the auxiliary students, and fine-tuning the pool of descendants.

Distillation trains every student in one loop that shares the teacher's forward pass. The
students' losses are summed, but no parameter is shared between students and AdamW updates
each parameter from its own gradient, so this equals separate runs over the same batches
(the official code trains one student per run). Transformation matrices train with the
students at the same learning rate, without weight decay (decay would only shrink them).

Pool fine-tuning is SN-Net's joint training (:func:`stitching.trainer.train_network`) with
one uniformly drawn descendant per step and soft distillation from the frozen teacher
(official: DeiT's ``soft`` loss, one learning rate for instances and stitching layers).

Determinism and resume follow :mod:`stitching.trainer`: epoch ``e`` draws its batch order,
augmentation and drop-path noise from generators seeded with ``(seed, e)``, and checkpoints are written at
epoch boundaries, so a resumed run replays the uninterrupted one exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stitching.learngene import AnyStudentSpec, LearngeneDistiller, Matches, student_config, student_matches
from stitching.snnet import AnchorModel, SNNet, StitchAnchor
from stitching.trainer import StitchTrainConfig, build_optimizer, learning_rate, train_network
from stitchnas.core import records
from stitchnas.core.checkpoints import EpochCheckpoint
from stitchnas.core.records import check_finite
from stitchnas.core.training import (
    AUGMENT_STREAM,
    Epoch,
    FitOptions,
    ImageSplit,
    TrainHistory,
    autocast,
    batches_for,
    fit,
    resolve_device,
)

log = logging.getLogger(__name__)

CHECKPOINT_KIND = "learngene_distill"
CHECKPOINT_VERSION = 1
_TORCH_STREAM = 2  # same stream as stitching.trainer for torch's global RNG (drop path)

# Students train from scratch (with a warm-up, like the anchors). Fine-tuning starts from them
# at a ~7x lower rate (official: 5e-4 distillation, 5e-5 fine-tuning); on digits 1e-3 erased
# several points of the students' accuracy within 3 epochs, 3e-4 kept them.
DEFAULT_DISTILL_TRAIN = StitchTrainConfig(epochs=30, lr=2e-3, warmup_epochs=2)
DEFAULT_FINETUNE = StitchTrainConfig(epochs=10, lr=3e-4, anchor_lr_scale=1.0, distill_weight=0.5,
                                     distill_temperature=1.0)


@dataclass(frozen=True)
class DistillConfig:
    """What the distillation stage does: which students, which blocks the MSE term matches,
    the loss weights (``alpha`` on the hard-label CE, official 0.1) and the recipe.

    ``train_matrices=False`` keeps the transformation matrices at their init (orthogonal, or
    identity for a student as wide as the teacher), which is what the official code ends
    up doing (its optimizer never sees them).

    A ResNet teacher takes :class:`~stitching.learngene_cnn.ResNetStudentSpec` students and
    ``matches="stages"`` (the last block of every stage) or ``"end"``; the default
    ``"front_end"`` is the ViT rule and is refused for it (:func:`~stitching.learngene.stage_matched_blocks`).
    """

    students: tuple[AnyStudentSpec, ...]
    matches: Matches = "front_end"
    alpha: float = 0.1
    temperature: float = 1.0
    train: StitchTrainConfig = field(default_factory=lambda: DEFAULT_DISTILL_TRAIN)
    train_matrices: bool = True

    def __post_init__(self) -> None:
        check_finite(self, "learngene distill config")
        object.__setattr__(self, "students", tuple(self.students))
        if not self.students:
            raise ValueError("learngene distillation 'students': expected at least one auxiliary student, got none")
        names = [s.name for s in self.students]
        if len(set(names)) != len(names):
            raise ValueError(f"learngene distillation 'students': expected distinct names, got {names}")
        if not isinstance(self.matches, str):
            object.__setattr__(self, "matches", tuple(tuple(p) for p in self.matches))
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"learngene distillation 'alpha': expected 0..1, got {self.alpha}")
        if not self.temperature > 0:
            raise ValueError(f"learngene distillation 'temperature': expected > 0, got {self.temperature}")

    def check(self, teacher_config: dict[str, Any]) -> None:
        """Raise ValueError unless every student and matched pair fits ``teacher_config``
        (without building any model)."""
        for spec in self.students:
            student_config(teacher_config, spec)
            student_matches(self.matches, teacher_config, spec)

    def to_json(self) -> dict[str, Any]:
        return records.to_json(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "learngene distillation config") -> DistillConfig:
        return records.from_json(cls, data, where)


def build_distiller(teacher_config: dict[str, Any], cfg: DistillConfig) -> LearngeneDistiller:
    return LearngeneDistiller(teacher_config, cfg.students, cfg.matches, cfg.alpha, cfg.temperature)


def distill_param_groups(distiller: LearngeneDistiller, weight_decay: float,
                         train_matrices: bool = True) -> list[dict[str, Any]]:
    groups = [{"params": list(distiller.students.parameters()), "weight_decay": weight_decay, "lr_scale": 1.0,
               "name": "students"}]
    if train_matrices:
        groups.append({"params": list(distiller.matrices.parameters()), "weight_decay": 0.0, "lr_scale": 1.0,
                       "name": "matrices"})
    return groups


@torch.no_grad()
def teacher_outputs(teacher: StitchAnchor, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The teacher's block features (embedding first) and logits for one batch."""
    feats = teacher.block_features(x)
    return feats, teacher.forward_norm_head(feats[-1])


def distill_students(
    distiller: LearngeneDistiller,
    teacher: AnchorModel,
    train_data: ImageSplit,
    cfg: DistillConfig,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainHistory:
    """Distil the frozen ``teacher`` into every student of ``distiller`` for ``cfg.train.epochs``.

    The epochs run in :func:`stitchnas.core.training.fit`: a checkpoint before the first epoch
    and after every epoch at ``checkpoint_path``, resumed with ``resume``; ``on_step(global_step)``
    after every step.

    Returns:
        The per-epoch mean of every loss part (summed over students) and the learning rate.

    Raises:
        TrainingDiverged: A step's summed loss is not finite (the last finite checkpoint is kept).
        ValueError: ``distiller`` was not built from ``cfg``, or a checkpoint of a different
            recipe (when resuming).
    """
    tc = cfg.train
    device = resolve_device(tc.device)
    distiller.to(device)
    teacher.to(device).eval()
    teacher.requires_grad_(False)
    wanted = tuple(student_matches(cfg.matches, distiller.teacher_config, s) for s in cfg.students)
    if distiller.specs != cfg.students or distiller.matches != wanted or \
            (distiller.alpha, distiller.temperature) != (cfg.alpha, cfg.temperature):
        raise ValueError("distill_students: the distiller was not built from this config (use build_distiller)")
    distiller.matrices.requires_grad_(cfg.train_matrices)
    optimizer = build_optimizer(distill_param_groups(distiller, tc.weight_decay, cfg.train_matrices), tc)
    batches = batches_for(train_data, device)
    steps_per_epoch = batches.num_batches(tc.batch_size, drop_last=True)
    total_steps = tc.epochs * steps_per_epoch
    checkpoint = EpochCheckpoint(Path(checkpoint_path) if checkpoint_path is not None else None,
                                 {"kind": CHECKPOINT_KIND, "version": CHECKPOINT_VERSION,
                                  "distill_config": cfg.to_json()}, "learngene distillation")

    def run_epoch(epoch: Epoch) -> dict[str, Any]:
        sums = {k: 0.0 for k in ("loss", "ce", "soft", "mse")}
        seen = 0
        batch_iter = batches.iterate(tc.batch_size, epoch.generator(), drop_last=True, augment=tc.augment,
                                     aug_generator=epoch.generator(AUGMENT_STREAM))
        for i, (x, y) in enumerate(batch_iter):  # the teacher sees the same augmented batch
            lr = learning_rate(tc, epoch.index * steps_per_epoch + i, total_steps, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            distiller.train()
            with autocast(device, tc.amp):
                feats, t_logits = teacher_outputs(teacher, x)
                losses = distiller(x, y, feats, t_logits)
            total = sum(part.total for part in losses)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            seen += len(y)
            parts = {key: float(sum(getattr(p, field_name).detach() for p in losses))
                     for key, field_name in (("loss", "total"), ("ce", "ce"), ("soft", "soft"), ("mse", "mse"))}
            for key, value in parts.items():
                sums[key] += value * len(y)
            epoch.step(parts["loss"])
        return {"epoch": epoch.index + 1, **{k: v / max(1, seen) for k, v in sums.items()},
                "lr": optimizer.param_groups[0]["lr"]}

    options = FitOptions(tc.epochs, steps_per_epoch, tc.seed, desc="distill", progress=progress, resume=resume,
                         save_start=True, torch_stream=_TORCH_STREAM, device=device)
    history = fit(run_epoch, distiller, optimizer, checkpoint, options, on_step)
    distiller.eval()
    return history


def finetune_pool(
    pool: SNNet,
    teacher: nn.Module | None,
    train_data: ImageSplit,
    cfg: StitchTrainConfig = DEFAULT_FINETUNE,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainHistory:
    """Fine-tune the pool: a uniformly drawn descendant per step, CE plus (weight
    ``cfg.distill_weight``) temperature-scaled KL to the frozen teacher's logits."""
    if cfg.distill_weight > 0 and teacher is None:
        raise ValueError("pool fine-tuning 'distill_weight': > 0 needs the teacher, got none")
    return train_network(pool, train_data, cfg, choose=pool.sample_active, teacher=teacher,
                         checkpoint_path=checkpoint_path, resume=resume, desc="learngene pool",
                         progress=progress, on_step=on_step)


__all__ = [
    "DEFAULT_DISTILL_TRAIN", "DEFAULT_FINETUNE", "DistillConfig", "build_distiller", "distill_param_groups",
    "distill_students", "finetune_pool", "teacher_outputs",
]
