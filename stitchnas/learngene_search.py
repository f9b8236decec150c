"""The Learngene Pool pipeline ("Building Variable-sized Models via Learngene Pool", AAAI
2024, arXiv 2312.05743) in two resumable run folders, like ``anchors train`` then
``stitch train``, so one distillation serves several pools (e.g. the init ablation):

1. **Distillation run** (:func:`run_distill`): a trained teacher (an anchor file) distilled
   into auxiliary students. Files: ``run_config.json``, ``distill.pt`` (epoch checkpoints,
   removed when done), ``learngene.pt`` (students + transformation matrices, a plain state
   dict) and ``learngene.json`` (teacher, student configs, matched blocks, accuracies, FLOPs,
   parameters, the weights' SHA-256).
2. **Pool run** (:func:`run_learngene_pool`): descendants stitched from the students, stitching
   layers initialised from the matrices (or by least squares), fine-tuned with soft
   distillation from the teacher, every descendant scored on ``search_val``. Files as an
   SN-Net run: ``run_config.json``, ``pool.pt`` (epoch checkpoints; epoch 0 is the init),
   ``results.csv``, ``pareto.json``, ``pareto.png`` and ``exports/`` (kind ``"stitch"``, so
   ``stitchnas.load_model`` rebuilds a descendant alone).

The pool run uses the distillation run's data settings, so ``search_val`` stays unseen by
both stages, and records the SHA-256 of ``learngene.pt``: resuming against changed students
fails.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import nn

from stitching.anchors_train import AnchorRef, check_anchor_data, load_anchors
from stitching.flops import anchor_flops
from stitching.learngene import LearngeneDistiller, build_pool, init_stitches_from_matrices
from stitching.learngene_train import DEFAULT_FINETUNE, DistillConfig, build_distiller, distill_students, finetune_pool
from stitching.snnet import SNNet
from stitching.trainer import StitchTrainConfig
from stitchnas.candidates import EvaluationBackend, clear_results, evaluate_in_process
from stitchnas.data import DataSpec, DataSplits, load_data
from stitchnas.front import RESULT_COLUMNS, FrontSummary, summarize_front
from stitchnas.io import ResultsTable, atomic_torch_save, atomic_write_json, file_sha256, load_checkpoint, read_json
from stitchnas.runs import RUN_CONFIG, prepare_run_dir
from stitchnas.stitch_search import (
    StitchOutcome, data_provenance, evaluation_job, export_dir_name, export_stitch_config, init_batch, largest_anchor,
    load_state_strict,
)
from supernet.evaluation import accuracy
from supernet.training import TrainHistory

log = logging.getLogger(__name__)

DISTILL_CHECKPOINT = "distill.pt"
LEARNGENE_WEIGHTS = "learngene.pt"
LEARNGENE_MANIFEST = "learngene.json"
LEARNGENE_FORMAT = "stitchnas.learngene"
LEARNGENE_VERSION = 1
POOL_CHECKPOINT = "pool.pt"
RESULTS_FILE = "results.csv"
INITS: tuple[str, ...] = ("matrices", "least_squares")


# --------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class LearngeneDistillRunConfig:
    """Stage 1: the teacher (a trained ViT anchor on disk), the data and the distillation."""

    teacher: AnchorRef
    distill: DistillConfig
    data: DataSpec = field(default_factory=DataSpec)
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        bs = self.eval_batch_size
        if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
            raise ValueError(f"learngene distill run 'eval_batch_size': expected an int >= 1, got {bs!r}")
        self.distill.check(dict(self.teacher.config))  # students and matched blocks fit the teacher

    def to_json(self) -> dict[str, Any]:
        return {"kind": "learngene_distill", "teacher": self.teacher.to_json(), "data": asdict(self.data),
                "distill": self.distill.to_json(), "eval_batch_size": self.eval_batch_size}

    @classmethod
    def from_json(cls, data: Any) -> "LearngeneDistillRunConfig":
        if not isinstance(data, dict) or data.get("kind") != "learngene_distill":
            raise ValueError("run config: not a learngene distillation run (expected kind 'learngene_distill')")
        try:
            return cls(teacher=AnchorRef.from_json(data["teacher"]), distill=DistillConfig.from_json(data["distill"]),
                       data=DataSpec(**data["data"]), eval_batch_size=data["eval_batch_size"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"run config: malformed learngene distillation run ({type(err).__name__}: {err})") from err


@dataclass(frozen=True)
class LearngenePoolConfig:
    """Stage 2: which distillation run and students, the stitch init, the fine-tuning recipe.

    ``students`` names the pool's instances (default: the narrowest and the widest student,
    as the official code). ``init`` is ``"matrices"`` (Learngene Pool) or ``"least_squares"``
    (SN-Net's, on ``init_samples`` images of ``search_train``).
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "distill_run", str(Path(self.distill_run).resolve()))
        object.__setattr__(self, "students", tuple(self.students))
        if self.init not in INITS:
            raise ValueError(f"learngene pool 'init': expected one of {list(INITS)}, got {self.init!r}")
        for key in ("init_samples", "eval_batch_size", "kernel_size", "stride"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"learngene pool '{key}': expected an int >= 1, got {value!r}")

    def to_json(self) -> dict[str, Any]:
        return {"kind": "learngene_pool", "distill_run": self.distill_run, "students": list(self.students),
                "init": self.init, "init_samples": self.init_samples, "finetune": self.finetune.to_json(),
                "kernel_size": self.kernel_size, "stride": self.stride, "eval_batch_size": self.eval_batch_size,
                "export_front": self.export_front}

    @classmethod
    def from_json(cls, data: Any) -> "LearngenePoolConfig":
        if not isinstance(data, dict) or data.get("kind") != "learngene_pool":
            raise ValueError("run config: not a learngene pool run (expected kind 'learngene_pool')")
        try:
            return cls(distill_run=data["distill_run"], students=tuple(data["students"]), init=data["init"],
                       finetune=StitchTrainConfig.from_json(data["finetune"]),
                       **{k: data[k] for k in ("init_samples", "kernel_size", "stride", "eval_batch_size",
                                               "export_front")})
        except (KeyError, TypeError) as err:
            raise ValueError(f"run config: malformed learngene pool run ({type(err).__name__}: {err})") from err


@dataclass
class DistillOutcome:
    out_dir: Path
    manifest: dict[str, Any]
    history: TrainHistory | None = None


#: A pool run ends with what an SN-Net run ends with (folder, rows, front, exports, history).
PoolOutcome = StitchOutcome


# --------------------------------------------------------------------------- stage 1
def load_teacher(ref: AnchorRef, data: DataSplits) -> nn.Module:
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
        manifest = read_json(manifest_path, "learngene manifest")
        if manifest.get("sha256") == file_sha256(weights):
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


def read_distill_run(folder: str | Path) -> tuple[LearngeneDistillRunConfig, dict[str, Any], LearngeneDistiller]:
    """A finished distillation run: its config, manifest and distiller (students + matrices)."""
    folder = Path(folder)
    cfg = LearngeneDistillRunConfig.from_json(read_json(folder / RUN_CONFIG, "run config"))
    manifest = read_json(folder / LEARNGENE_MANIFEST, "learngene manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != LEARNGENE_FORMAT:
        raise ValueError(f"learngene manifest {folder / LEARNGENE_MANIFEST}: 'format' must be {LEARNGENE_FORMAT!r}")
    if manifest.get("format_version") != LEARNGENE_VERSION:
        raise ValueError(f"learngene manifest {folder / LEARNGENE_MANIFEST}: 'format_version' "
                         f"{manifest.get('format_version')!r} is not supported (expected {LEARNGENE_VERSION})")
    weights = folder / LEARNGENE_WEIGHTS
    if file_sha256(weights) != manifest.get("sha256"):
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
        order = sorted(range(len(distiller.specs)), key=lambda i: (distiller.specs[i].embed_dim, i))
        idx = [order[0], order[-1]] if len(order) > 1 else order
    return sorted(idx, key=lambda i: (distiller.specs[i].embed_dim, distiller.specs[i].depth))


def build_learngene_pool(cfg: LearngenePoolConfig, distiller: LearngeneDistiller, data: DataSplits) -> SNNet:
    """The pool of copies of the chosen students, stitching layers initialised per ``cfg.init``."""
    idx = pool_indices(distiller, cfg.students)
    students = [copy.deepcopy(distiller.students[i]) for i in idx]
    pool = build_pool(students, [distiller.specs[i].name for i in idx], cfg.kernel_size, cfg.stride)
    if cfg.init == "matrices":
        init_stitches_from_matrices(pool, [distiller.matrices[i] for i in idx])
    else:
        pool.init_stitching_layers(init_batch(data, cfg.init_samples, cfg.finetune.seed))
    return pool.eval()


def initialised_pool(cfg: LearngenePoolConfig) -> tuple[LearngeneDistillRunConfig, dict[str, Any], DataSplits, SNNet]:
    dcfg, manifest, distiller = read_distill_run(cfg.distill_run)
    data = load_data(dcfg.data)
    torch.manual_seed(cfg.finetune.seed)
    return dcfg, manifest, data, build_learngene_pool(cfg, distiller, data)


def _pool_run_json(cfg: LearngenePoolConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    return {**cfg.to_json(), "learngene_sha256": manifest["sha256"]}


def _summarize(pool: SNNet, rows: list[dict[str, Any]], out: Path, data: DataSplits, what: str) -> FrontSummary:
    return summarize_front(rows, out, default_candidate=str(largest_anchor(pool)),
                           title=f"Learngene Pool ({len(pool.space)} descendants, {what}) on {data.name}")


def _provenance(dcfg: LearngeneDistillRunConfig, cfg: LearngenePoolConfig, manifest: dict[str, Any],
                run: Path) -> dict[str, Any]:
    return {**data_provenance(dcfg.data), "source": "learngene_pool", "run_dir": str(run.resolve()),
            "checkpoint_sha256": file_sha256(run / POOL_CHECKPOINT), "distill_run": cfg.distill_run,
            "learngene_sha256": manifest["sha256"], "stitch_init": cfg.init,
            "teacher": {"name": dcfg.teacher.name, "sha256": dcfg.teacher.sha256}}


def run_learngene_pool(
    cfg: LearngenePoolConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
    on_step: Callable[[int], None] | None = None, stage: EvaluationBackend = evaluate_in_process,
) -> PoolOutcome:
    """Build, initialise, fine-tune and score the pool (``stage``: in process by default, or
    :meth:`stitchnas.tune.RayTuneStage.evaluate`), then write its front and exports."""
    dcfg, manifest, data, pool = initialised_pool(cfg)  # bad input fails before the folder is claimed
    out = prepare_run_dir(out_dir, _pool_run_json(cfg, manifest), resume)
    log.info("data: %s", data.describe())
    log.info("learngene pool: %s, %d descendants, %d stitching layers (%s init)", ", ".join(pool.space.names),
             len(pool.space), len(pool.stitch_layers), cfg.init)
    teacher = load_teacher(dcfg.teacher, data) if cfg.finetune.distill_weight > 0 else None
    ckpt = out / POOL_CHECKPOINT
    history = finetune_pool(pool, teacher, data.search_train, cfg.finetune, checkpoint_path=ckpt, resume=resume,
                            progress=progress, on_step=on_step)
    pool.eval()
    table = ResultsTable(out / RESULTS_FILE, RESULT_COLUMNS)
    stage(evaluation_job(pool, table, data, out, cfg.eval_batch_size, cfg.finetune.device, cfg.finetune.seed,
                         progress))
    rows = table.rows()
    summary = _summarize(pool, rows, out, data, f"{cfg.init} init, {cfg.finetune.epochs} epochs")
    exports: list[Path] = []
    if cfg.export_front:
        provenance = _provenance(dcfg, cfg, manifest, out)
        for row in summary.front:
            config = pool.space.config(int(row["candidate"]))
            folder = out / "exports" / export_dir_name(config)
            exports.append(export_stitch_config(folder, pool, config, data, cfg.eval_batch_size,
                                                cfg.finetune.device, provenance, search_val_acc=row["val_acc"]))
        log.info("exported %d Pareto-optimal descendants to %s", len(exports), out / "exports")
    log.info("Pareto front: %s (%d of %d descendants)", out / "pareto.json", len(summary.front), len(rows))
    return PoolOutcome(out, rows, summary, exports, history)


def load_pool_run(run_dir: str | Path) -> tuple[LearngenePoolConfig, LearngeneDistillRunConfig, dict[str, Any],
                                                 DataSplits, SNNet]:
    """A pool run's configs, learngene manifest, data and pool with its last checkpoint."""
    run = Path(run_dir)
    raw = read_json(run / RUN_CONFIG, "run config")
    cfg = LearngenePoolConfig.from_json({k: v for k, v in raw.items() if k != "learngene_sha256"}
                                        if isinstance(raw, dict) else raw)
    dcfg, manifest, distiller = read_distill_run(cfg.distill_run)
    if raw.get("learngene_sha256") != manifest["sha256"]:
        raise ValueError(f"distillation run {cfg.distill_run}: {LEARNGENE_WEIGHTS} changed since pool run {run}")
    data = load_data(dcfg.data)
    idx = pool_indices(distiller, cfg.students)
    pool = build_pool([copy.deepcopy(distiller.students[i]) for i in idx], [distiller.specs[i].name for i in idx],
                      cfg.kernel_size, cfg.stride)
    ckpt = run / POOL_CHECKPOINT
    state = load_checkpoint(ckpt)
    if not isinstance(state.get("model"), dict):
        raise ValueError(f"checkpoint {ckpt}: not a pool checkpoint (no 'model' state dict)")
    load_state_strict(pool, state["model"], f"checkpoint {ckpt}")
    return cfg, dcfg, manifest, data, pool.eval()


def evaluate_pool_run(
    run_dir: str | Path, no_train: bool = False, out_dir: str | Path | None = None, progress: bool = True,
    stage: EvaluationBackend = evaluate_in_process,
) -> PoolOutcome:
    """Re-score every descendant into ``out_dir`` (default ``RUN/evaluate/checkpoint``, or with
    ``no_train`` ``RUN/evaluate/init``: right after the stitch init, before fine-tuning)."""
    run = Path(run_dir)
    if no_train:
        raw = read_json(run / RUN_CONFIG, "run config")
        cfg = LearngenePoolConfig.from_json({k: v for k, v in raw.items() if k != "learngene_sha256"}
                                            if isinstance(raw, dict) else raw)
        _, _, data, pool = initialised_pool(cfg)
    else:
        cfg, _, _, data, pool = load_pool_run(run)
    what = f"{cfg.init} init" if no_train else "checkpoint"
    out = Path(out_dir) if out_dir is not None else run / "evaluate" / ("init" if no_train else "checkpoint")
    out.mkdir(parents=True, exist_ok=True)
    clear_results(out, RESULTS_FILE)
    table = ResultsTable(out / RESULTS_FILE, RESULT_COLUMNS)
    stage(evaluation_job(pool, table, data, out, cfg.eval_batch_size, cfg.finetune.device, cfg.finetune.seed,
                         progress))
    rows = table.rows()
    return PoolOutcome(out, rows, _summarize(pool, rows, out, data, what))


def export_from_pool_run(run_dir: str | Path, config_id: int, out_dir: str | Path) -> Path:
    """Export descendant ``config_id`` of a pool run with its last checkpoint's weights."""
    run = Path(run_dir)
    cfg, dcfg, manifest, data, pool = load_pool_run(run)
    pool.space.validate(config_id)
    recorded = None
    if (run / RESULTS_FILE).exists():
        rows = ResultsTable(run / RESULTS_FILE, RESULT_COLUMNS).rows()
        recorded = next((r["val_acc"] for r in rows if str(r["candidate"]) == str(config_id)), None)
    return export_stitch_config(out_dir, pool, config_id, data, cfg.eval_batch_size, cfg.finetune.device,
                                _provenance(dcfg, cfg, manifest, run), search_val_acc=recorded)


__all__ = [
    "DISTILL_CHECKPOINT", "INITS", "LEARNGENE_MANIFEST", "LEARNGENE_WEIGHTS", "LearngeneDistillRunConfig",
    "LearngenePoolConfig", "POOL_CHECKPOINT", "PoolOutcome", "DistillOutcome", "build_learngene_pool",
    "evaluate_pool_run", "export_from_pool_run", "initialised_pool", "load_pool_run", "pool_indices",
    "read_distill_run", "run_distill", "run_learngene_pool",
]
