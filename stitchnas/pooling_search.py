"""The pooling-placement search, end to end: train a supernet, score every candidate on the
search-validation split, compute the FLOPs-vs-accuracy Pareto front and export its members.

Each stage persists its output before the next starts (supernet checkpoint per epoch, one
results row per candidate), so ``resume=True`` continues an interrupted run where it stopped
and ends with the same files an uninterrupted run writes.
"""

from __future__ import annotations

import logging
import random
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from searchspace.pooling import PoolingConfig, PoolingSpace
from stitchnas.candidates import CandidateEvaluator, CandidateTask, compact, pending, score_candidates
from stitchnas.data import DataSpec, DataSplits, load_data
from stitchnas.export import export_model
from stitchnas.flops import pooling_flops, pooling_params
from stitchnas.front import RESULT_COLUMNS, FrontSummary, summarize_front
from stitchnas.io import ResultsTable, file_sha256
from stitchnas.runs import prepare_run_dir
from supernet.evaluation import EvalConfig, accuracy, evaluate_path, prepare_path
from supernet.bms import MixtureConfig, MixtureOfSuperNets, train_mixture
from supernet.networks import ModelSpec, PoolingSuperNet, build_supernet
from supernet.training import TrainConfig, train

log = logging.getLogger(__name__)

SUPERNET_CHECKPOINT = "supernet.pt"
RESULTS_FILE = "results.csv"


@dataclass(frozen=True)
class PoolingSearchConfig:
    space: PoolingSpace
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    max_candidates: int | None = None  # None: every configuration (exhaustive)
    export_front: bool = True
    mixture: MixtureConfig | None = None  # None: one supernet (SPOS); else BMS / GM mixture

    def __post_init__(self) -> None:
        if self.max_candidates is not None and self.max_candidates < 1:
            raise ValueError(f"search 'max_candidates': expected >= 1 or None, got {self.max_candidates}")
        if self.mixture is not None:
            self.mixture.check_space(self.space)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "pooling_search",
            "space": self.space.to_json(),
            "data": asdict(self.data),
            "train": self.train.to_json(),
            "eval": self.eval.to_json(),
            "max_candidates": self.max_candidates,
            "export_front": self.export_front,
            "mixture": self.mixture.to_json() if self.mixture is not None else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PoolingSearchConfig":
        if not isinstance(data, dict) or data.get("kind") != "pooling_search":
            raise ValueError("run config: not a pooling search run (expected kind 'pooling_search')")
        return cls(
            space=PoolingSpace.from_json(data["space"]), data=DataSpec(**data["data"]),
            train=TrainConfig(**data["train"]), eval=EvalConfig(**data["eval"]),
            max_candidates=data.get("max_candidates"), export_front=data.get("export_front", True),
            mixture=MixtureConfig(**data["mixture"]) if data.get("mixture") else None,
        )


@dataclass
class EvaluationContext:
    """Everything a candidate-evaluation stage needs; it appends one row per candidate to
    ``table`` (see :data:`stitchnas.front.RESULT_COLUMNS`) and may skip rows already there."""

    space: PoolingSpace
    supernet: PoolingSuperNet
    data: DataSplits
    cfg: "PoolingSearchConfig"
    table: ResultsTable
    candidates: list[PoolingConfig]
    out_dir: Path
    progress: bool = True


EvaluationStage = Callable[[EvaluationContext], None]


def in_process_stage(ctx: EvaluationContext) -> None:
    """The default stage: score every candidate in this process, one after another."""

    def score(config: PoolingConfig) -> float:
        return evaluate_path(ctx.supernet, config, ctx.data.search_train, ctx.data.search_val, ctx.cfg.eval)

    evaluate_candidates(ctx.table, ctx.candidates, ctx.space, ctx.data, score, ctx.progress)


@dataclass
class TrainingContext:
    """Everything a supernet-training step needs. It leaves the trained weights in ``supernet``
    and its per-epoch checkpoint at ``checkpoint``, in :func:`supernet.training.train`'s format
    (so resuming and ``stitchnas export`` work whichever trainer wrote it)."""

    supernet: PoolingSuperNet
    data: DataSplits
    cfg: "PoolingSearchConfig"
    checkpoint: Path
    out_dir: Path
    resume: bool = False
    progress: bool = True
    on_step: Callable[[int], None] | None = None


SupernetTrainer = Callable[[TrainingContext], None]


def in_process_trainer(ctx: TrainingContext) -> None:
    """The default trainer: SPOS training in this process (see :func:`supernet.training.train`),
    or the mixture's trainer when the search has one."""
    if isinstance(ctx.supernet, MixtureOfSuperNets):
        train_mixture(ctx.supernet, ctx.data.search_train, ctx.data.search_val, ctx.cfg.train,
                      checkpoint_path=ctx.checkpoint, resume=ctx.resume, progress=ctx.progress, on_step=ctx.on_step)
        return
    train(ctx.supernet, ctx.data.search_train, ctx.cfg.train, choose_path=ctx.supernet.sample_active,
          checkpoint_path=ctx.checkpoint, resume=ctx.resume, desc="supernet", progress=ctx.progress,
          on_step=ctx.on_step)


HV_REFERENCES: tuple[str, ...] = ("evaluated", "space")


def space_reference(space: PoolingSpace, input_size: int, in_chans: int, num_classes: int) -> tuple[float, float]:
    """A hypervolume reference fixed by the space: 1.1 x the largest FLOPs of any configuration,
    accuracy 0. Fronts of different searches on one space are comparable against it."""
    flops = [pooling_flops(space, c, input_size, in_chans, num_classes) for c in space]
    return (1.1 * max(flops), 0.0)


@dataclass
class SearchOutcome:
    out_dir: Path
    rows: list[dict[str, Any]]
    summary: FrontSummary
    exports: list[Path]


def build_search_model(cfg: PoolingSearchConfig, spec: ModelSpec) -> PoolingSuperNet | MixtureOfSuperNets:
    """One supernet, or a mixture of them when the search asks for one."""
    if cfg.mixture is None:
        return build_supernet(cfg.space, spec)
    return MixtureOfSuperNets(cfg.space, spec, cfg.mixture)


def select_candidates(space: PoolingSpace, max_candidates: int | None, seed: int) -> list[PoolingConfig]:
    """Every configuration, or a seeded uniform subset (always including the default)."""
    configs = space.configurations()
    if max_candidates is None or max_candidates >= len(configs):
        return configs
    rng = random.Random(seed)
    default = space.default_config()
    chosen = {default} | set(rng.sample(configs, max_candidates - 1))
    while len(chosen) < max_candidates:
        chosen.add(rng.choice(configs))
    return sorted(chosen, key=space.index)


def candidate_row(space: PoolingSpace, config: PoolingConfig, data: DataSplits) -> dict[str, Any]:
    """The FLOPs / params / identity columns of a results row (no accuracy yet)."""
    return {
        "candidate": str(space.index(config)),
        "label": space.describe(config),
        "config": ",".join(str(p) for p in config.positions),
        "flops": pooling_flops(space, config, data.input_size, data.in_chans, data.num_classes),
        "params": pooling_params(space, data.in_chans, data.num_classes),
    }


def evaluate_candidates(
    rows_table: ResultsTable,
    candidates: Sequence[PoolingConfig],
    space: PoolingSpace,
    data: DataSplits,
    score: Callable[[PoolingConfig], float],
    progress: bool = True,
) -> None:
    """Score each candidate not yet in the table; a failing candidate is recorded, not fatal."""
    todo = pending(rows_table, [space.index(c) for c in candidates])
    score_candidates(rows_table, PoolingTask(space, data), todo, lambda index: score(space.config(index)), progress)


# --------------------------------------------------------------------------- backends' view
class PoolingTask(CandidateTask):
    """The pooling placements of a search as evaluation backends see them (see
    :mod:`stitchnas.candidates`). ``supernet`` and ``eval_cfg`` are needed to score, not to
    describe. The Optuna encoding is the k downsampling positions, one integer each over the
    allowed layers; a configuration is their sorted set, repeated positions an invalid
    suggestion (on the 455-configuration ResNet-50 space this gave TPE and NSGA-II a higher
    hypervolume after 50 evaluations than the FLOPs-rank encoding of other tasks)."""

    def __init__(self, space: PoolingSpace, data: DataSplits, supernet: PoolingSuperNet | None = None,
                 eval_cfg: EvalConfig | None = None) -> None:
        self.space, self.data, self.supernet, self.eval_cfg = space, data, supernet, eval_cfg

    @classmethod
    def from_context(cls, ctx: EvaluationContext) -> "PoolingTask":
        return cls(ctx.space, ctx.data, ctx.supernet, ctx.cfg.eval)

    def __len__(self) -> int:
        return len(self.space)

    def describe(self, index: int) -> str:
        return self.space.describe(self.space.config(index))

    def row(self, index: int) -> dict[str, Any]:
        return candidate_row(self.space, self.space.config(index), self.data)

    def flops(self, index: int) -> int:
        return pooling_flops(self.space, self.space.config(index), self.data.input_size, self.data.in_chans,
                             self.data.num_classes)

    def default_index(self) -> int:
        return self.space.index(self.space.default_config())

    def sample(self, size: int, seed: int) -> list[int]:
        return [self.space.index(c) for c in select_candidates(self.space, size, seed)]

    def evaluator(self) -> "PoolingEvaluator":
        if self.supernet is None or self.eval_cfg is None:
            raise ValueError("pooling task: scoring needs the trained supernet and an evaluation config")
        return PoolingEvaluator(
            key=uuid.uuid4().hex, space=self.space.to_json(),
            spec=(self.data.in_chans, self.data.num_classes), eval_cfg=self.eval_cfg.to_json(),
            weights={k: v.detach().cpu().clone() for k, v in self.supernet.state_dict().items()},
            calib=tuple(compact(t) for t in self.data.search_train.tensors),
            val=tuple(compact(t) for t in self.data.search_val.tensors),
        )

    def distributions(self) -> dict[str, Any]:
        return optuna_distributions(self.space)

    def decode(self, params: dict[str, Any]) -> int | None:
        config = decode_positions(self.space, params)
        return None if config is None else self.space.index(config)

    def encode(self, index: int) -> dict[str, Any]:
        return encode_positions(self.space.config(index))


@dataclass(frozen=True)
class PoolingEvaluator(CandidateEvaluator):
    """Plain data that rebuilds the trained supernet and scores a placement on it, with
    BatchNorm handled per configuration as ``eval_cfg`` says."""

    key: str
    space: dict[str, Any]
    spec: tuple[int, int]  # (in_chans, num_classes)
    eval_cfg: dict[str, Any]
    weights: dict[str, torch.Tensor]
    calib: tuple[torch.Tensor, ...]
    val: tuple[torch.Tensor, ...]

    def prepare(self, device: str) -> Callable[[int], float]:
        space = PoolingSpace.from_json(self.space)
        supernet = build_supernet(space, ModelSpec(*self.spec))
        supernet.load_state_dict(self.weights)
        eval_cfg = EvalConfig(**{**self.eval_cfg, "device": device})
        calib = torch.utils.data.TensorDataset(*self.calib)
        val = torch.utils.data.TensorDataset(*self.val)
        return lambda index: evaluate_path(supernet, space.config(index), calib, val, eval_cfg)


def optuna_distributions(space: PoolingSpace) -> dict[str, Any]:
    """One integer per downsampling, each over every allowed layer."""
    from optuna.distributions import IntDistribution

    low, high = space.first_position, space.num_layers - 1
    return {f"p{i}": IntDistribution(low, high) for i in range(space.num_downsamples)}


def decode_positions(space: PoolingSpace, params: dict[str, Any]) -> PoolingConfig | None:
    """The configuration whose positions are the sorted parameters; None if two coincide."""
    positions = sorted(int(params[f"p{i}"]) for i in range(space.num_downsamples))
    if len(set(positions)) != len(positions):
        return None
    config = PoolingConfig(tuple(positions))
    space.validate(config)
    return config


def encode_positions(config: PoolingConfig) -> dict[str, int]:
    return {f"p{i}": int(p) for i, p in enumerate(config.positions)}


def export_pooling_candidate(
    folder: Path,
    supernet: PoolingSuperNet,
    space: PoolingSpace,
    config: PoolingConfig,
    data: DataSplits,
    cfg: PoolingSearchConfig,
    provenance: dict[str, Any],
    search_val_acc: float | None = None,
) -> Path:
    """Export one configuration's standalone network with supernet weights.

    BatchNorm statistics are always re-estimated for the exported path (deployment runs in
    eval mode, whatever mode the search scored with). The recorded accuracies are measured on
    the exported module itself, so ``load_model`` reproduces them exactly.
    """
    model = prepare_path(supernet, config, data.search_train, replace(cfg.eval, bn_mode="recalibrate"))
    return _export_pooling_model(folder, model, space, config, data, cfg.eval, provenance,
                                 {"search_val_acc": search_val_acc})


def _export_pooling_model(folder: Path, model: nn.Module, space: PoolingSpace, config: PoolingConfig,
                          data: DataSplits, eval_cfg: EvalConfig, provenance: dict[str, Any],
                          extra_metrics: dict[str, Any], val_is_held_out: bool = True) -> Path:
    metrics = {k: v for k, v in extra_metrics.items() if v is not None}
    # A model trained on the full training split has seen search_val: no validation figure then.
    if val_is_held_out:
        metrics["val_acc"] = accuracy(model, data.search_val, eval_cfg.batch_size, eval_cfg.device)
    metrics["test_acc"] = accuracy(model, data.test, eval_cfg.batch_size, eval_cfg.device)
    body = {
        "space": space.to_json(),
        "config": config.to_json(),
        "notation": list(space.notation(config)),
        "model": {"spec": {"in_chans": data.in_chans, "num_classes": data.num_classes}, "input_size": data.input_size},
        "flops": pooling_flops(space, config, data.input_size, data.in_chans, data.num_classes),
        "params": pooling_params(space, data.in_chans, data.num_classes),
        "metrics": metrics,
    }
    export_model(folder, model, "pooling", body, provenance)
    return folder


def data_provenance(spec: DataSpec) -> dict[str, Any]:
    return {"dataset": spec.name, "data_dir": spec.data_dir, "input_size": spec.input_size, "seed": spec.seed}


def export_dir_name(space: PoolingSpace, config: PoolingConfig) -> str:
    return f"{space.index(config):04d}_" + "-".join(str(c) for c in space.notation(config))


def run_pooling_search(
    cfg: PoolingSearchConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    stage: EvaluationStage = in_process_stage,
    trainer: SupernetTrainer = in_process_trainer,
    hv_reference: str = "evaluated",
) -> SearchOutcome:
    """Run (or resume) a one-shot pooling search and write its files into ``out_dir``.

    ``stage`` evaluates the candidates (in process by default; the Ray Tune path plugs in here).
    ``trainer`` trains the supernet (in process by default; Ray Train's data-parallel trainer
    plugs in here). ``hv_reference`` is the hypervolume reference point: ``"evaluated"`` (1.1 x
    the largest evaluated FLOPs, accuracy 0) or ``"space"`` (see :func:`space_reference`).
    """
    if hv_reference not in HV_REFERENCES:
        raise ValueError(f"hv_reference: expected one of {HV_REFERENCES}, got {hv_reference!r}")
    out = prepare_run_dir(out_dir, cfg.to_json(), resume)
    data = load_data(cfg.data)
    cfg.space.check_input_size(data.input_size)
    log.info("data: %s", data.describe())
    torch.manual_seed(cfg.train.seed)
    supernet = build_search_model(cfg, ModelSpec(data.in_chans, data.num_classes))
    if cfg.mixture is not None and stage is in_process_stage:
        from stitchnas.bms_search import mixture_stage

        stage = mixture_stage
    ckpt = out / SUPERNET_CHECKPOINT
    trainer(TrainingContext(supernet, data, cfg, ckpt, out, resume, progress, on_step))
    log.info("supernet checkpoint: %s", ckpt)

    table = ResultsTable(out / RESULTS_FILE, RESULT_COLUMNS)
    candidates = select_candidates(cfg.space, cfg.max_candidates, cfg.train.seed)
    stage(EvaluationContext(cfg.space, supernet, data, cfg, table, candidates, out, progress))
    log.info("results: %s", out / RESULTS_FILE)

    rows = table.rows()
    default = str(cfg.space.index(cfg.space.default_config()))
    reference = (space_reference(cfg.space, data.input_size, data.in_chans, data.num_classes)
                 if hv_reference == "space" else None)
    summary = summarize_front(rows, out, default_candidate=default, reference=reference,
                              title=f"{cfg.space.name} pooling placements on {data.name}")
    exports: list[Path] = []
    if cfg.export_front:
        provenance = {**data_provenance(cfg.data), "source": "supernet", "run_dir": str(out.resolve()),
                      "checkpoint_sha256": file_sha256(ckpt)}
        for row in summary.front:
            config = cfg.space.config(int(row["candidate"]))
            folder = out / "exports" / export_dir_name(cfg.space, config)
            exports.append(export_pooling_candidate(folder, supernet, cfg.space, config, data, cfg,
                                                    provenance, search_val_acc=row["val_acc"]))
        log.info("exported %d Pareto-optimal models to %s", len(exports), out / "exports")
    log.info("Pareto front: %s (%d of %d candidates)", out / "pareto.json", len(summary.front), len(rows))
    return SearchOutcome(out, rows, summary, exports)


def train_standalone(
    space: PoolingSpace,
    config: PoolingConfig,
    data_spec: DataSpec,
    train_cfg: TrainConfig,
    out_dir: str | Path,
    eval_cfg: EvalConfig = EvalConfig(),
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Train one configuration from scratch and export it (ground truth and deployment)."""
    from supernet.networks import build_model

    run_config = {"kind": "pooling_train", "space": space.to_json(), "config": config.to_json(),
                  "data": asdict(data_spec), "train": train_cfg.to_json()}
    out = prepare_run_dir(out_dir, run_config, resume)
    data = load_data(data_spec)
    space.check_input_size(data.input_size)
    torch.manual_seed(train_cfg.seed)
    model = build_model(space, config, ModelSpec(data.in_chans, data.num_classes))
    ckpt = out / "model_checkpoint.pt"
    train(model, data.train, train_cfg, checkpoint_path=ckpt, resume=resume,
          desc=f"train {space.describe(config)}", progress=progress)
    provenance = {**data_provenance(data_spec), "source": "standalone", "run_dir": str(out.resolve()),
                  "checkpoint_sha256": file_sha256(ckpt)}
    folder = out / "model"
    _export_pooling_model(folder, model, space, config, data, eval_cfg, provenance, {}, val_is_held_out=False)
    log.info("trained model exported to %s", folder)
    return folder

