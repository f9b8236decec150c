"""The pooling-placement search (SPOS, one weight-sharing supernet) as a pipeline method.

Javan et al., "Balanced Mixture of SuperNets for Learning the CNN Pooling Architecture"
(arXiv 2306.11982): train one supernet by sampling a placement uniformly per step (single-path
one-shot), score every placement on ``search_val`` with BatchNorm handled per configuration,
and export the Pareto-optimal placements as standalone networks with the supernet's weights.
With ``score_snapshots`` K > 1 a placement's score is its mean accuracy over the supernet at K
epochs near the end of training (:func:`supernet.training.snapshot_epochs`; the earlier ones kept
as ``supernet_e{epoch}.pt``): score averaging over checkpoints, which ranked better than the final
supernet alone on both of BENCHMARKS.md's "Search quality" benchmarks. The mixture (BMS)
variant is :mod:`stitchnas.methods.bms`. The stages and files are the pipeline's
(:mod:`stitchnas.search.pipeline`); the checkpoint is ``supernet.pt``.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from searchspace.pooling import PoolingConfig, PoolingSpace
from stitchnas.core import records
from stitchnas.core.checkpoints import load_checkpoint_weights
from stitchnas.core.evaluation import accuracy
from stitchnas.core.io import file_sha256, save_checkpoint
from stitchnas.core.prefix import DEFAULT_PREFIX_BUDGET
from stitchnas.core.records import OWN_JSON, Provenance, data_fields
from stitchnas.core.runs import prepare_run_dir
from stitchnas.data import DataSpec, DataSplits, load_data
from stitchnas.search.candidates import (
    CandidateEvaluator,
    CandidateTask,
    PrefixScorer,
    Score,
    Scorer,
    ShippedSplit,
    ship_split,
    unship_split,
)
from stitchnas.search.cost import COST_ABSENT, CostConfig
from stitchnas.search.export import InputSpec, export_model
from stitchnas.search.pipeline import HV_REFERENCES, SearchMethod, TrainContext
from stitchnas.search.rank_rule import RankRule
from supernet.bms import MixtureConfig, MixtureOfSuperNets, train_mixture
from supernet.evaluation import EvalConfig, evaluate_path, prepare_path
from supernet.flops import pooling_flops, pooling_params
from supernet.networks import ModelSpec, PoolingSuperNet, build_supernet
from supernet.shared_prefix import score_placements
from supernet.training import TrainConfig, snapshot_epochs, train

log = logging.getLogger(__name__)

SUPERNET_CHECKPOINT = "supernet.pt"
RESULTS_FILE = "results.csv"
#: The front's score of a new pooling search (issue 15, BENCHMARKS.md "Search quality").
DEFAULT_RANK = RankRule("score")


@dataclass(frozen=True)
class PoolingSearchConfig:
    """A pooling search's ``run_config.json`` (``"kind": "pooling_search"``), decoded strictly;
    ``max_candidates``, ``export_front``, ``mixture`` and ``hv_reference`` may be absent (older runs);
    ``cost`` (the front's cost axis, :mod:`stitchnas.search.cost`) is absent for FLOPs; ``rank``
    (the front's score, :mod:`stitchnas.search.rank_rule`) is absent when it is the supernet score;
    ``score_snapshots`` (supernet snapshots whose scores are averaged, SPOS only) is absent when 1."""

    space: PoolingSpace = field(metadata=OWN_JSON)
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    max_candidates: int | None = None  # None: every configuration (exhaustive)
    export_front: bool = True
    mixture: MixtureConfig | None = None  # None: one supernet (SPOS); else BMS / GM mixture
    hv_reference: str = "evaluated"  # see stitchnas.search.pipeline.HV_REFERENCES
    cost: CostConfig = field(default_factory=CostConfig)  # the front's cost axis (default FLOPs)
    rank: RankRule = field(default_factory=lambda: DEFAULT_RANK)  # the front's score
    score_snapshots: int = 1  # supernet snapshots a placement's score averages (1: the final supernet)

    json_kind: ClassVar[str] = "pooling_search"
    json_keep_none: ClassVar[bool] = True
    # runs written before "rank" existed ranked by the supernet score
    json_absent: ClassVar[dict[str, Any]] = {**COST_ABSENT, "rank": RankRule("score"), "score_snapshots": 1}

    def __post_init__(self) -> None:
        if self.hv_reference not in HV_REFERENCES:
            raise ValueError(f"search 'hv_reference': expected one of {HV_REFERENCES}, got {self.hv_reference!r}")
        self.cost.check(self.hv_reference)
        if self.max_candidates is not None and self.max_candidates < 1:
            raise ValueError(f"search 'max_candidates': expected >= 1 or None, got {self.max_candidates}")
        if self.mixture is not None:
            self.mixture.check_space(self.space)
        snapshot_epochs(self.train.epochs, self.score_snapshots)  # raises when they do not fit
        if self.score_snapshots > 1 and self.mixture is not None:
            raise ValueError("search 'score_snapshots': averaging over snapshots is for one supernet (SPOS); "
                             "a mixture scores its final assignment")

    def snapshot_epochs(self) -> tuple[int, ...]:
        """The epochs whose supernets a placement's score averages (the last: ``train.epochs``)."""
        return snapshot_epochs(self.train.epochs, self.score_snapshots)

    def to_json(self) -> dict[str, Any]:
        return records.to_json(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "run config") -> PoolingSearchConfig:
        return records.from_json(cls, data, where)


class SupernetTrainer(Protocol):
    """Trains the supernet of a pooling search in place; the default is :func:`train_supernet`,
    Ray Train's data-parallel trainer (:class:`stitchnas.backends.ray_train.RayTrainTrainer`)
    plugs in here. It leaves its checkpoint at ``ctx.checkpoint`` in
    :func:`supernet.training.train`'s format, so resuming and exporting work whichever wrote it."""

    def __call__(self, ctx: SupernetTraining) -> None: ...


@dataclass
class SupernetTraining:
    """Everything a :class:`SupernetTrainer` needs."""

    supernet: PoolingSuperNet | MixtureOfSuperNets
    data: DataSplits
    cfg: PoolingSearchConfig
    checkpoint: Path
    out_dir: Path
    resume: bool = False
    progress: bool = True
    on_step: Callable[[int], None] | None = None


def train_supernet(ctx: SupernetTraining) -> None:
    """SPOS training in this process (see :func:`supernet.training.train`), or the mixture's
    trainer (:func:`supernet.bms.train_mixture`) when the search has one."""
    if isinstance(ctx.supernet, MixtureOfSuperNets):
        train_mixture(ctx.supernet, ctx.data.search_train, ctx.data.search_val, ctx.cfg.train,
                      checkpoint_path=ctx.checkpoint, resume=ctx.resume, progress=ctx.progress, on_step=ctx.on_step)
        return
    train(ctx.supernet, ctx.data.search_train, ctx.cfg.train, choose_path=ctx.supernet.sample_active,
          checkpoint_path=ctx.checkpoint, resume=ctx.resume, desc="supernet", progress=ctx.progress,
          on_step=ctx.on_step)


def snapshot_path(run_dir: str | Path, epoch: int) -> Path:
    """Where a search keeps its supernet of the end of ``epoch`` (``score_snapshots`` > 1; the
    last epoch's is the run's checkpoint, ``supernet.pt``)."""
    return Path(run_dir) / f"supernet_e{epoch:04d}.pt"


def keep_snapshots(supernet: PoolingSuperNet, cfg: PoolingSearchConfig, data: DataSplits, run_dir: Path,
                   then: Callable[[int], None] | None = None) -> Callable[[int], None]:
    """An ``on_step`` hook that saves the supernet at the end of every snapshot epoch but the
    last (:meth:`PoolingSearchConfig.snapshot_epochs`) to :func:`snapshot_path`, then calls
    ``then``. It runs before the epoch's checkpoint is written, so a resumed run has every
    snapshot of the epochs it does not redo."""
    from stitchnas.core.training import batches_for

    per_epoch = batches_for(data.search_train, torch.device("cpu")).num_batches(cfg.train.batch_size, drop_last=True)
    wanted = set(cfg.snapshot_epochs()[:-1])

    def on_step(step: int) -> None:
        epoch, rest = divmod(step, per_epoch)
        if rest == 0 and epoch in wanted:
            state = {k: v.detach().cpu() for k, v in supernet.state_dict().items()}  # written at once: no copy
            save_checkpoint(snapshot_path(run_dir, epoch), {"model": state, "epoch": epoch})
        if then is not None:
            then(step)

    return on_step


def load_snapshots(run_dir: str | Path, cfg: PoolingSearchConfig, spec: ModelSpec) -> list[dict[str, torch.Tensor]]:
    """The kept supernets' state dicts, in epoch order, without the last (the run's checkpoint).

    Raises:
        ValueError: One line naming a snapshot file that is missing, unreadable or not this
            search's supernet (:func:`~stitchnas.core.checkpoints.load_checkpoint_weights`)."""
    states = []
    for epoch in cfg.snapshot_epochs()[:-1]:
        supernet = build_supernet(cfg.space, spec)
        load_checkpoint_weights(supernet, snapshot_path(run_dir, epoch), "a supernet snapshot")
        states.append(supernet.state_dict())
    return states


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
        "params": pooling_params(space, data.in_chans, data.num_classes, config),
    }


# --------------------------------------------------------------------------- backends' view
class PoolingTask(CandidateTask):
    """The pooling placements of a search as evaluation backends see them (see
    :mod:`stitchnas.search.candidates`). ``supernet`` and ``eval_cfg`` are needed to score, not to
    describe. The Optuna encoding is the k downsampling positions, one integer each over the
    allowed layers; a configuration is their sorted set, repeated positions an invalid
    suggestion (on the 455-configuration ResNet-50 space this gave TPE and NSGA-II a higher
    hypervolume after 50 evaluations than the FLOPs-rank encoding of other tasks)."""

    def __init__(self, space: PoolingSpace, data: DataSplits, supernet: PoolingSuperNet | None = None,
                 eval_cfg: EvalConfig | None = None, snapshots: Sequence[dict[str, torch.Tensor]] = ()) -> None:
        self.space, self.data, self.supernet, self.eval_cfg = space, data, supernet, eval_cfg
        self.snapshots = list(snapshots)  # earlier supernets whose scores a placement's score averages

    def __len__(self) -> int:
        return len(self.space)

    def describe(self, index: int) -> str:
        return self.space.describe(self.space.config(index))

    def row(self, index: int) -> dict[str, Any]:
        return candidate_row(self.space, self.space.config(index), self.data)

    def flops(self, index: int) -> int:
        return pooling_flops(self.space, self.space.config(index), self.data.input_size, self.data.in_chans,
                             self.data.num_classes)

    def standalone(self, index: int) -> nn.Module:
        """The placement's standalone network (:func:`supernet.networks.build_model`), freshly initialised."""
        from supernet.networks import build_model

        return build_model(self.space, self.space.config(index), ModelSpec(self.data.in_chans, self.data.num_classes))

    def default_index(self) -> int:
        return self.space.index(self.space.default_config())

    def sample(self, size: int, seed: int) -> list[int]:
        return [self.space.index(c) for c in select_candidates(self.space, size, seed)]

    def evaluator(self) -> CandidateEvaluator:
        if self.supernet is None or self.eval_cfg is None:
            raise ValueError("pooling task: scoring needs the trained supernet and an evaluation config")
        return PoolingEvaluator(
            key=uuid.uuid4().hex, space=self.space.to_json(),
            spec=(self.data.in_chans, self.data.num_classes), eval_cfg=self.eval_cfg.to_json(),
            weights={k: v.detach().cpu().clone() for k, v in self.supernet.state_dict().items()},
            calib=ship_split(self.data.search_train), val=ship_split(self.data.search_val),
            snapshot_weights=tuple(self.snapshots),
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
    BatchNorm handled per configuration as ``eval_cfg`` says. Several placements are scored
    with each shared prefix computed once per batch (:func:`supernet.shared_prefix.score_placements`),
    keeping at most ``prefix_budget`` bytes of activations per pass. With ``snapshot_weights``
    (earlier supernets of the same run) a placement's score is its mean accuracy over those and
    the final supernet, in epoch order."""

    key: str
    space: dict[str, Any]
    spec: tuple[int, int]  # (in_chans, num_classes)
    eval_cfg: dict[str, Any]
    weights: dict[str, torch.Tensor]
    calib: ShippedSplit  # tensors, or a split streamed from disk
    val: ShippedSplit
    prefix_budget: int = DEFAULT_PREFIX_BUDGET
    snapshot_weights: tuple[dict[str, torch.Tensor], ...] = ()

    def prepare(self, device: str) -> Scorer:
        space = PoolingSpace.from_json(self.space)
        supernets = []
        for weights in (*self.snapshot_weights, self.weights):
            supernet = build_supernet(space, ModelSpec(*self.spec))
            supernet.load_state_dict(weights)
            supernets.append(supernet)
        eval_cfg = EvalConfig.from_json({**self.eval_cfg, "device": device}, "pooling evaluator")
        calib, val = unship_split(self.calib), unship_split(self.val)

        def one(index: int) -> float:
            accs = [evaluate_path(s, space.config(index), calib, val, eval_cfg) for s in supernets]
            return sum(accs) / len(accs)

        if eval_cfg.finetune is not None:  # every placement trains its own network: one at a time
            return one

        def many(indices: Sequence[int]) -> dict[int, float | Score]:
            per_supernet = []
            for supernet in supernets:
                accs, report = score_placements(supernet, [space.config(i) for i in indices], calib, val, eval_cfg,
                                                self.prefix_budget)
                log.info("%s", report.describe())
                per_supernet.append(accs)
            # a placement with a non-finite logit on any snapshot is left to one(), which reports it
            return {i: sum(a) / len(a) for i, *a in zip(indices, *per_supernet) if None not in a}

        return PrefixScorer(one, many)


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
    supernet: PoolingSuperNet | MixtureOfSuperNets,
    space: PoolingSpace,
    config: PoolingConfig,
    data: DataSplits,
    cfg: PoolingSearchConfig,
    provenance: Provenance,
    search_val_acc: float | None = None,
) -> Path:
    """Export one configuration's standalone network with supernet weights.

    BatchNorm statistics are always re-estimated for the exported path (deployment runs in
    eval mode, whatever mode the search scored with). The recorded accuracies are measured on
    the exported module itself, so ``load_model`` reproduces them exactly. When the search
    scored with ``bn_mode="recalibrate"``, its score *was* this module's ``search_val``
    accuracy (the same re-calibration and forward pass, :func:`supernet.evaluation.evaluate_path`),
    so ``val_acc`` is taken from ``search_val_acc`` instead of being measured twice (unless the
    search fine-tuned each placement, ``cfg.eval.finetune``: the exported network is then trained
    the same way and measured).
    """
    model = prepare_path(supernet, config, data.search_train, replace(cfg.eval, bn_mode="recalibrate"))
    metrics: dict[str, Any] = {"search_val_acc": search_val_acc}
    # The score is this network's search_val accuracy only with plain re-calibrated scoring: a mean
    # over snapshots is no network's, and a Ray trial with other threads fine-tunes to other last bits.
    score_is_this_network = cfg.eval.bn_mode == "recalibrate" and cfg.eval.finetune is None and cfg.score_snapshots == 1
    if score_is_this_network and search_val_acc is not None:
        metrics["val_acc"] = search_val_acc
    return _export_pooling_model(folder, model, space, config, data, cfg.eval, provenance, metrics)


def _export_pooling_model(folder: Path, model: nn.Module, space: PoolingSpace, config: PoolingConfig,
                          data: DataSplits, eval_cfg: EvalConfig, provenance: Provenance,
                          extra_metrics: dict[str, Any], val_is_held_out: bool = True) -> Path:
    metrics = {k: v for k, v in extra_metrics.items() if v is not None}
    # A model trained on the full training split has seen search_val: no validation figure then.
    if val_is_held_out and "val_acc" not in metrics:
        metrics["val_acc"] = accuracy(model, data.search_val, eval_cfg.batch_size, eval_cfg.device)
    metrics["test_acc"] = accuracy(model, data.test, eval_cfg.batch_size, eval_cfg.device)
    body = {
        "space": space.to_json(),
        "config": config.to_json(),
        "notation": list(space.notation(config)),
        "model": {"spec": {"in_chans": data.in_chans, "num_classes": data.num_classes}, "input_size": data.input_size},
        "flops": pooling_flops(space, config, data.input_size, data.in_chans, data.num_classes),
        "params": pooling_params(space, data.in_chans, data.num_classes, config),
        "metrics": metrics,
    }
    export_model(folder, model, "pooling", body, provenance, inputs=InputSpec.from_data(data))
    return folder


def export_dir_name(space: PoolingSpace, config: PoolingConfig) -> str:
    return f"{space.index(config):04d}_" + "-".join(str(c) for c in space.notation(config))


class PoolingMethod(SearchMethod):
    """The pooling search as a :class:`~stitchnas.search.pipeline.SearchMethod` (SPOS, or a
    supernet mixture when ``cfg.mixture`` is set: see :mod:`stitchnas.methods.bms`)."""

    cfg: PoolingSearchConfig
    checkpoint_file = SUPERNET_CHECKPOINT

    def __init__(self, cfg: PoolingSearchConfig, trainer: SupernetTrainer = train_supernet) -> None:
        if cfg.mixture is not None and type(self) is PoolingMethod:
            raise ValueError("pooling search: the config has a 'mixture'; use stitchnas.methods.bms.MixtureMethod")
        if cfg.score_snapshots > 1 and trainer is not train_supernet:
            raise ValueError("search 'score_snapshots': the snapshots are kept by the in-process trainer; "
                             "train without Ray Train workers, or score the final supernet alone")
        self.cfg, self.trainer = cfg, trainer
        self.run_dir: Path | None = None  # where the snapshots are, once trained or loaded

    @classmethod
    def from_run_config(cls, raw: Any, where: str = "run config") -> PoolingMethod:
        return cls(PoolingSearchConfig.from_json(raw, where))

    def run_config(self) -> dict[str, Any]:
        return self.cfg.to_json()

    @property
    def rank(self) -> RankRule:
        return self.cfg.rank

    @property
    def recipe(self) -> TrainConfig:
        return self.cfg.train

    @property
    def subset_size(self) -> int | None:
        return self.cfg.max_candidates

    def load_data(self) -> DataSplits:
        data = load_data(self.cfg.data)
        self.cfg.space.check_input_size(data.input_size)
        return data

    def build(self, data: DataSplits) -> nn.Module:
        torch.manual_seed(self.cfg.train.seed)
        return build_search_model(self.cfg, ModelSpec(data.in_chans, data.num_classes))

    def train(self, network: nn.Module, ctx: TrainContext) -> None:
        assert isinstance(network, (PoolingSuperNet, MixtureOfSuperNets))
        on_step = ctx.on_step
        if self.cfg.score_snapshots > 1:
            assert isinstance(network, PoolingSuperNet)  # the config refuses snapshots of a mixture
            on_step = keep_snapshots(network, self.cfg, ctx.data, ctx.out_dir, ctx.on_step)
        self.run_dir = ctx.out_dir
        self.trainer(SupernetTraining(network, ctx.data, self.cfg, ctx.checkpoint, ctx.out_dir, ctx.resume,
                                      ctx.progress, on_step))

    def load_trained(self, run_dir: Path, data: DataSplits) -> nn.Module:
        network = build_search_model(self.cfg, ModelSpec(data.in_chans, data.num_classes))
        load_checkpoint_weights(network, Path(run_dir) / SUPERNET_CHECKPOINT, "a supernet")
        self.run_dir = Path(run_dir)
        return network.eval()

    def task(self, network: nn.Module, data: DataSplits) -> CandidateTask:
        assert isinstance(network, PoolingSuperNet)
        snapshots: list[dict[str, torch.Tensor]] = []
        if self.cfg.score_snapshots > 1:
            if self.run_dir is None:
                raise ValueError("pooling search: scoring with 'score_snapshots' needs the trained run's folder")
            snapshots = load_snapshots(self.run_dir, self.cfg, ModelSpec(data.in_chans, data.num_classes))
        return PoolingTask(self.cfg.space, data, network, self.cfg.eval, snapshots)

    def candidates(self, task: CandidateTask) -> list[int]:
        return [self.cfg.space.index(c) for c in select_candidates(self.cfg.space, self.cfg.max_candidates,
                                                                     self.cfg.train.seed)]

    def title(self, network: nn.Module, data: DataSplits, what: str) -> str:
        return f"{self.cfg.space.name} pooling placements on {data.name}"

    def trained_label(self) -> str:
        return f"{self.cfg.train.epochs} epochs"

    def provenance(self, run_dir: Path) -> Provenance:
        return Provenance(source="supernet", run_dir=str(Path(run_dir).resolve()),
                          checkpoint_sha256=file_sha256(Path(run_dir) / SUPERNET_CHECKPOINT),
                          **data_fields(self.cfg.data))

    def export_dir_name(self, network: nn.Module, index: int) -> str:
        return export_dir_name(self.cfg.space, self.cfg.space.config(index))

    def export(self, folder: Path, network: nn.Module, index: int, data: DataSplits, provenance: Provenance,
               search_val_acc: float | None = None) -> Path:
        assert isinstance(network, (PoolingSuperNet, MixtureOfSuperNets))
        return export_pooling_candidate(folder, network, self.cfg.space, self.cfg.space.config(index), data,
                                        self.cfg, provenance, search_val_acc)

    def parse_candidate(self, network: nn.Module, text: int | str) -> int:
        return self.cfg.space.index(self.cfg.space.parse_config(str(text)))


def train_standalone(
    space: PoolingSpace,
    config: PoolingConfig,
    data_spec: DataSpec,
    train_cfg: TrainConfig,
    out_dir: str | Path,
    eval_cfg: EvalConfig | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Train one configuration from scratch and export it (ground truth and deployment)."""
    from supernet.networks import build_model

    run_config = {"kind": "pooling_train", "space": space.to_json(), "config": config.to_json(),
                  "data": data_spec.to_json(), "train": train_cfg.to_json()}
    out = prepare_run_dir(out_dir, run_config, resume)
    data = load_data(data_spec)
    space.check_input_size(data.input_size)
    torch.manual_seed(train_cfg.seed)
    model = build_model(space, config, ModelSpec(data.in_chans, data.num_classes))
    ckpt = out / "model_checkpoint.pt"
    train(model, data.train, train_cfg, checkpoint_path=ckpt, resume=resume,
          desc=f"train {space.describe(config)}", progress=progress)
    provenance = Provenance(source="standalone", run_dir=str(out.resolve()), checkpoint_sha256=file_sha256(ckpt),
                            **data_fields(data_spec))
    folder = out / "model"
    _export_pooling_model(folder, model, space, config, data, eval_cfg or EvalConfig(), provenance, {},
                          val_is_held_out=False)
    log.info("trained model exported to %s", folder)
    return folder

