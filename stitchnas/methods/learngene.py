"""The Learngene Pool pipeline ("Building Variable-sized Models via Learngene Pool", AAAI
2024, arXiv 2312.05743) in two resumable run folders, like ``anchors train`` then
``stitch train``, so one distillation serves several pools (e.g. the init ablation):

1. **Distillation run** (:func:`run_distill`): a trained teacher (an anchor file: a ViT, or a
   ResNet such as a timm ``resnet18/34/50`` checkpoint adapted to the data) distilled into
   auxiliary students. Files: ``run_config.json``, ``distill.pt`` (epoch checkpoints,
   removed when done), ``learngene.pt`` (students + transformation matrices, a plain state
   dict) and ``learngene.json`` (teacher, student configs, matched blocks, accuracies, FLOPs,
   parameters, the weights' SHA-256).
2. **Pool run** (:func:`run_learngene_pool`): descendants stitched from the students, stitching
   layers initialised from the matrices (or by least squares), fine-tuned with soft
   distillation from the teacher, every descendant scored on ``search_val``. Files as an
   every search pipeline run (:mod:`stitchnas.search.pipeline`), the checkpoint ``pool.pt``
   (epoch 0 is the init); exports are of kind ``"stitch"``, so ``stitchnas.load_model``
   rebuilds a descendant alone.

The pool run uses the distillation run's data settings, so ``search_val`` stays unseen by
both stages, and records the SHA-256 of ``learngene.pt``: resuming against changed students
fails.
"""

from __future__ import annotations

import copy
import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from stitching.anchors import AnchorRef, check_anchor_data, load_anchors
from stitching.flops import anchor_flops
from stitching.learngene import LearngeneDistiller, build_pool, check_teacher_kind, init_stitches_from_matrices
from stitching.learngene_train import DEFAULT_FINETUNE, DistillConfig, build_distiller, distill_students, finetune_pool
from stitching.snnet import AnchorModel, SNNet
from stitching.trainer import StitchTrainConfig
from stitchnas.core import records
from stitchnas.core.checkpoints import load_checkpoint_weights, load_state_strict
from stitchnas.core.evaluation import accuracy
from stitchnas.core.io import (
    atomic_torch_save,
    atomic_write_json,
    file_sha256,
    load_checkpoint,
    read_json,
    read_versioned_json,
)
from stitchnas.core.records import AnchorDigest, Provenance, data_fields
from stitchnas.core.runs import RUN_CONFIG, prepare_run_dir
from stitchnas.core.training import TrainHistory
from stitchnas.data import DataSpec, DataSplits, load_data
from stitchnas.methods.snnet import StitchedNetworkMethod, init_batch
from stitchnas.search.cost import COST_ABSENT, CostConfig
from stitchnas.search.pipeline import HV_REFERENCES, TrainContext

log = logging.getLogger(__name__)

DISTILL_CHECKPOINT = "distill.pt"
LEARNGENE_WEIGHTS = "learngene.pt"
LEARNGENE_MANIFEST = "learngene.json"
LEARNGENE_FORMAT = "stitchnas.learngene"
LEARNGENE_VERSION = 1
POOL_CHECKPOINT = "pool.pt"
INITS: tuple[str, ...] = ("matrices", "least_squares")


# --------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class LearngeneDistillRunConfig:
    """Stage 1: the teacher (a trained ViT or ResNet anchor on disk), the data and the distillation.

    Raises:
        ValueError: A teacher of another kind (one line naming its file and kind), or students
            and matched blocks that do not fit it.
    """

    teacher: AnchorRef
    distill: DistillConfig
    data: DataSpec = field(default_factory=DataSpec)
    eval_batch_size: int = 256

    json_kind: ClassVar[str] = "learngene_distill"

    def __post_init__(self) -> None:
        bs = self.eval_batch_size
        if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
            raise ValueError(f"learngene distill run 'eval_batch_size': expected an int >= 1, got {bs!r}")
        check_teacher_kind(dict(self.teacher.config), self.teacher.path)  # a ViT or a ResNet anchor
        self.distill.check(dict(self.teacher.config))  # students and matched blocks fit the teacher

    def to_json(self) -> dict[str, Any]:
        return records.to_json(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "run config") -> LearngeneDistillRunConfig:
        return records.from_json(cls, data, where)


@dataclass(frozen=True)
class LearngenePoolConfig:
    """Stage 2: which distillation run and students, the stitch init, the fine-tuning recipe.

    ``students`` names the pool's instances (default: the narrowest and the widest student,
    as the official code). ``init`` is ``"matrices"`` (Learngene Pool) or ``"least_squares"``
    (SN-Net's, on ``init_samples`` images of ``search_train``). With ResNet students,
    ``"matrices"`` leaves the layers no matched pair defines (a stage without one; a
    bottleneck student's block 0 entered at its stem width) to the least-squares init
    (:mod:`stitching.learngene_cnn`). ``cost`` is the front's cost axis
    (:mod:`stitchnas.search.cost`; default FLOPs, absent from the JSON then).
    """

    distill_run: str
    students: tuple[str, ...] = ()
    init: Literal["matrices", "least_squares"] = "matrices"
    init_samples: int = 100
    finetune: StitchTrainConfig = DEFAULT_FINETUNE
    kernel_size: int = 2
    stride: int = 1
    eval_batch_size: int = 256
    export_front: bool = True
    hv_reference: str = "evaluated"  # see stitchnas.search.pipeline.HV_REFERENCES
    cost: CostConfig = field(default_factory=CostConfig)

    json_kind: ClassVar[str] = "learngene_pool"
    json_absent: ClassVar[dict[str, Any]] = COST_ABSENT

    def __post_init__(self) -> None:
        if self.hv_reference not in HV_REFERENCES:
            raise ValueError(f"learngene pool 'hv_reference': expected one of {HV_REFERENCES}, "
                             f"got {self.hv_reference!r}")
        self.cost.check(self.hv_reference, "learngene pool")
        object.__setattr__(self, "distill_run", str(Path(self.distill_run).resolve()))
        object.__setattr__(self, "students", tuple(self.students))
        if self.init not in INITS:
            raise ValueError(f"learngene pool 'init': expected one of {list(INITS)}, got {self.init!r}")
        for key in ("init_samples", "eval_batch_size", "kernel_size", "stride"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"learngene pool '{key}': expected an int >= 1, got {value!r}")

    def to_json(self) -> dict[str, Any]:
        return records.to_json(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "run config") -> LearngenePoolConfig:
        """Strict decoding; ``hv_reference`` is absent in runs written before it was recorded."""
        return records.from_json(cls, data, where)


@dataclass
class DistillOutcome:
    out_dir: Path
    manifest: dict[str, Any]
    history: TrainHistory | None = None


# --------------------------------------------------------------------------- stage 1
def load_teacher(ref: AnchorRef, data: DataSplits) -> AnchorModel:
    """The frozen teacher in eval mode. A checkpoint of another class count gets a fresh head
    (:mod:`stitching.checkpoint`); it is drawn from a generator seeded by the file's SHA-256,
    leaving torch's global RNG as it was, so the distillation and the pool (and every resume)
    see the same teacher."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(ref.sha256.encode()))
        teacher = load_anchors([ref])[0]
    check_anchor_data([teacher], [ref.name], data)
    return teacher.eval()


def run_distill(
    cfg: LearngeneDistillRunConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> DistillOutcome:
    """Distil the teacher into the students (or, resumed, finish doing so) in ``out_dir``."""
    data = load_data(cfg.data)
    teacher = load_teacher(cfg.teacher, data)  # a bad teacher fails before the folder is claimed
    out = prepare_run_dir(out_dir, cfg.to_json(), resume)
    weights, manifest_path = out / LEARNGENE_WEIGHTS, out / LEARNGENE_MANIFEST
    if manifest_path.exists() and weights.exists():
        manifest = read_learngene_manifest(manifest_path)
        if manifest["sha256"] == file_sha256(weights):
            log.info("distillation already finished in %s", out)
            return DistillOutcome(out, manifest)
    torch.manual_seed(cfg.distill.train.seed)
    distiller = build_distiller(teacher.config, cfg.distill)
    ckpt = out / DISTILL_CHECKPOINT
    start = time.perf_counter()
    history = distill_students(distiller, teacher, data.search_train, cfg.distill, checkpoint_path=ckpt,
                               resume=resume, progress=progress, on_step=on_step)
    seconds = time.perf_counter() - start
    atomic_torch_save({k: v.detach().cpu().contiguous() for k, v in distiller.state_dict().items()}, weights)
    device, bs = cfg.distill.train.device, cfg.eval_batch_size
    students = []
    for spec, student, pairs in zip(distiller.specs, distiller.students, distiller.matches):
        students.append({
            **spec.to_json(), "config": student.config, "matches": [list(p) for p in pairs],
            "flops": anchor_flops(student).total, "params": sum(p.numel() for p in student.parameters()),
            "val_acc": accuracy(student, data.search_val, bs, device),
            "test_acc": accuracy(student, data.test, bs, device),
        })
    manifest = {
        "format": LEARNGENE_FORMAT, "format_version": LEARNGENE_VERSION, "file": LEARNGENE_WEIGHTS,
        "sha256": file_sha256(weights), "teacher": {
            **cfg.teacher.to_json(), "flops": anchor_flops(teacher).total,
            "params": sum(p.numel() for p in teacher.parameters()),
            "val_acc": accuracy(teacher, data.search_val, bs, device),
            "test_acc": accuracy(teacher, data.test, bs, device),
        },
        "students": students, "alpha": cfg.distill.alpha, "temperature": cfg.distill.temperature,
        "train_seconds": round(seconds, 2), "history": history.epochs,
    }
    atomic_write_json(manifest_path, manifest)
    ckpt.unlink(missing_ok=True)  # learngene.pt holds the result; the epoch checkpoint is spent
    log.info("students distilled: %s", ", ".join(f"{s['name']} val {s['val_acc']:.2f}%" for s in students))
    return DistillOutcome(out, manifest, history)


def read_learngene_manifest(path: str | Path) -> dict[str, Any]:
    """A ``learngene.json``, checked the same way wherever it is read (resuming a distillation
    run, a pool reading the students): a JSON object of ``format`` :data:`LEARNGENE_FORMAT`,
    ``format_version`` :data:`LEARNGENE_VERSION` and a string ``sha256`` (of ``learngene.pt``).

    Raises:
        ValueError: One line naming the file and the field.
    """
    manifest = read_versioned_json(path, "learngene manifest", LEARNGENE_FORMAT, LEARNGENE_VERSION)
    if not isinstance(manifest.get("sha256"), str):
        raise ValueError(f"learngene manifest {path}: field 'sha256': expected the SHA-256 of {LEARNGENE_WEIGHTS} "
                         f"as a string, got {manifest.get('sha256')!r:.80}")
    return manifest


def read_distill_run(folder: str | Path) -> tuple[LearngeneDistillRunConfig, dict[str, Any], LearngeneDistiller]:
    """A finished distillation run: its config, manifest and distiller (students + matrices)."""
    folder = Path(folder)
    cfg = LearngeneDistillRunConfig.from_json(read_json(folder / RUN_CONFIG, "run config"),
                                              f"run config {folder / RUN_CONFIG}")
    manifest = read_learngene_manifest(folder / LEARNGENE_MANIFEST)
    weights = folder / LEARNGENE_WEIGHTS
    if file_sha256(weights) != manifest["sha256"]:
        raise ValueError(f"learngene weights {weights}: SHA-256 does not match {LEARNGENE_MANIFEST}")
    distiller = build_distiller(dict(cfg.teacher.config), cfg.distill)
    load_state_strict(distiller, load_checkpoint(weights), f"learngene weights {weights}")
    return cfg, manifest, distiller.eval()


# --------------------------------------------------------------------------- stage 2
def pool_indices(distiller: LearngeneDistiller, names: tuple[str, ...]) -> list[int]:
    """Students of the pool, narrow -> wide: ``names``, or the narrowest and widest."""
    if names:
        idx = [distiller.index(n) for n in names]
        if len(set(idx)) != len(idx):
            raise ValueError(f"learngene pool 'students': expected distinct names, got {list(names)}")
    else:
        order = sorted(range(len(distiller.specs)), key=lambda i: (distiller.specs[i].width, i))
        idx = [order[0], order[-1]] if len(order) > 1 else order
    return sorted(idx, key=lambda i: (distiller.specs[i].width, distiller.specs[i].depth))


def build_learngene_pool(cfg: LearngenePoolConfig, distiller: LearngeneDistiller, data: DataSplits) -> SNNet:
    """The pool of copies of the chosen students, stitching layers initialised per ``cfg.init``."""
    idx = pool_indices(distiller, cfg.students)
    students = [copy.deepcopy(distiller.student(i)) for i in idx]
    pool = build_pool(students, [distiller.specs[i].name for i in idx], cfg.kernel_size, cfg.stride)
    if cfg.init == "matrices":
        left = init_stitches_from_matrices(pool, [distiller.student_matrices(i) for i in idx])
        if left:  # ResNet students only: layers no matched pair defines (stitching.learngene_cnn)
            log.info("learngene pool: %d stitching layers without matrices take the least-squares init: %s",
                     len(left), ", ".join(left))
            pool.init_stitching_layers(init_batch(data, cfg.init_samples, cfg.finetune.seed), only=left)
    else:
        pool.init_stitching_layers(init_batch(data, cfg.init_samples, cfg.finetune.seed))
    return pool.eval()


class LearngenePoolMethod(StitchedNetworkMethod):
    """Stage 2 of Learngene Pool as a :class:`~stitchnas.search.pipeline.SearchMethod`: the
    pool of descendants, its stitch init, fine-tuning from the teacher, every descendant scored.

    ``run_config.json`` also records the SHA-256 of the distillation run's ``learngene.pt``:
    resuming, re-evaluating or exporting against changed students fails."""

    cfg: LearngenePoolConfig
    checkpoint_file = POOL_CHECKPOINT
    noun = "descendants"

    def __init__(self, cfg: LearngenePoolConfig, expected_sha256: str | None = None) -> None:
        self.cfg, self.expected_sha256 = cfg, expected_sha256
        self._distill: tuple[LearngeneDistillRunConfig, dict[str, Any], LearngeneDistiller] | None = None
        self._data: DataSplits | None = None

    @classmethod
    def from_run_config(cls, raw: Any, where: str = "run config") -> LearngenePoolMethod:
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected an object, got {type(raw).__name__}")
        cfg = LearngenePoolConfig.from_json({k: v for k, v in raw.items() if k != "learngene_sha256"}, where)
        return cls(cfg, expected_sha256=raw.get("learngene_sha256"))

    @property
    def distill_run(self) -> tuple[LearngeneDistillRunConfig, dict[str, Any], LearngeneDistiller]:
        """The distillation run's config, manifest and distiller (read once)."""
        if self._distill is None:
            self._distill = read_distill_run(self.cfg.distill_run)
            sha = self._distill[1]["sha256"]
            if self.expected_sha256 is not None and self.expected_sha256 != sha:
                raise ValueError(f"distillation run {self.cfg.distill_run}: {LEARNGENE_WEIGHTS} changed since "
                                 "the pool run (SHA-256 differs)")
        return self._distill

    def run_config(self) -> dict[str, Any]:
        return {**self.cfg.to_json(), "learngene_sha256": self.distill_run[1]["sha256"]}

    @property
    def recipe(self) -> StitchTrainConfig:
        return self.cfg.finetune

    def load_data(self) -> DataSplits:
        if self._data is None:
            self._data = load_data(self.distill_run[0].data)  # the distillation's split: search_val stays unseen
        return self._data

    def build(self, data: DataSplits) -> nn.Module:
        torch.manual_seed(self.cfg.finetune.seed)
        pool = build_learngene_pool(self.cfg, self.distill_run[2], data)
        log.info("learngene pool: %s, %d descendants, %d stitching layers (%s init)", ", ".join(pool.space.names),
                 len(pool.space), len(pool.stitch_layers), self.cfg.init)
        return pool

    def train(self, network: nn.Module, ctx: TrainContext) -> TrainHistory:
        assert isinstance(network, SNNet)
        teacher = load_teacher(self.distill_run[0].teacher, ctx.data) if self.cfg.finetune.distill_weight > 0 else None
        return finetune_pool(network, teacher, ctx.data.search_train, self.cfg.finetune, checkpoint_path=ctx.checkpoint,
                             resume=ctx.resume, progress=ctx.progress, on_step=ctx.on_step)

    def load_trained(self, run_dir: Path, data: DataSplits) -> nn.Module:
        distiller = self.distill_run[2]
        idx = pool_indices(distiller, self.cfg.students)
        pool = build_pool([copy.deepcopy(distiller.student(i)) for i in idx], [distiller.specs[i].name for i in idx],
                          self.cfg.kernel_size, self.cfg.stride)
        load_checkpoint_weights(pool, Path(run_dir) / POOL_CHECKPOINT, "a pool")
        return pool.eval()

    def title(self, network: nn.Module, data: DataSplits, what: str) -> str:
        assert isinstance(network, SNNet)
        return f"Learngene Pool ({len(network.space)} descendants, {what}) on {data.name}"

    def trained_label(self) -> str:
        return f"{self.cfg.init} init, {self.cfg.finetune.epochs} epochs"

    def provenance(self, run_dir: Path) -> Provenance:
        run = Path(run_dir)
        dcfg, manifest, _ = self.distill_run
        return Provenance(source="learngene_pool", run_dir=str(run.resolve()),
                          checkpoint_sha256=file_sha256(run / POOL_CHECKPOINT), distill_run=self.cfg.distill_run,
                          learngene_sha256=manifest["sha256"], stitch_init=self.cfg.init,
                          teacher=AnchorDigest(dcfg.teacher.name, dcfg.teacher.sha256), **data_fields(dcfg.data))

    def parse_candidate(self, network: nn.Module, text: int | str) -> int:
        assert isinstance(network, SNNet)
        try:
            index = int(text)
        except (TypeError, ValueError):
            raise ValueError(f"--config {text!r}: expected a descendant id (see results.csv)") from None
        network.space.validate(index)
        return index


__all__ = [
    "DISTILL_CHECKPOINT", "INITS", "LEARNGENE_MANIFEST", "LEARNGENE_WEIGHTS", "DistillOutcome",
    "LearngeneDistillRunConfig", "LearngenePoolConfig", "LearngenePoolMethod", "POOL_CHECKPOINT",
    "build_learngene_pool", "pool_indices", "read_distill_run", "read_learngene_manifest", "run_distill",
]
