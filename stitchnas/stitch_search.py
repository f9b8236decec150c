"""The SN-Net pipeline, end to end: load anchors, build the Stitchable Neural Network
(Pan et al., CVPR 2023, arXiv 2302.06586), initialise its stitching layers by least squares
on one batch, train it jointly, score every configuration on ``search_val``, compute the
FLOPs-vs-accuracy Pareto front and export its members as standalone models.

``version="v2"`` runs SN-Netv2 (He et al., "Stitched ViTs are Flexible Vision Backbones",
arXiv 2307.00154, ECCV 2024) through the same stages and files: the first and last anchors
given (small -> large), the two-way :class:`~searchspace.stitch_v2.StitchSpaceV2` (FS, SF, FSF,
SFS routes, filterable), resource-constrained sampling (ROS) in training, and low-rank
stitching layers (:class:`~stitching.lowrank.LowRankStitchingLayer`) whose frozen base is
the least-squares map. SN-Netv2 has one layer per stitch boundary and direction, at the one
position the two-segment (FS / SF) route uses, so the least-squares init fits exactly those
positions and the three-segment routes reuse the layers. Exports merge the low-rank update
into plain stitching layers, so ``stitchnas.load_model`` rebuilds them like SN-Net exports.

Files in a run folder (mirroring :mod:`stitchnas.pooling_search`): ``run_config.json``,
``snnet.pt`` (epoch checkpoints; epoch 0 is the least-squares init), ``results.csv`` (one
row per configuration, :data:`~stitchnas.front.RESULT_COLUMNS`), ``pareto.json``,
``pareto.png`` and ``exports/``. Each stage persists before the next starts, so
``resume=True`` continues an interrupted run and ends with the files an uninterrupted run
writes.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import re
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from torch import nn

from searchspace.samplers import ConfigSampler, FlopsGroupedSampler
from searchspace.stitch import Segment, StitchConfig
from searchspace.stitch_v2 import ROUTE_TYPES, StitchSpaceV2
from stitching.anchors_train import AnchorRef, check_anchor_data, load_anchors
from stitching.flops import flops_table
from stitching.lowrank import LowRankStitchingLayer
from stitching.snnet import SNNet, anchor_space, build_anchor, check_compatible, stitched_model_config
from stitching.trainer import SamplingConfig, StitchTrainConfig, train_network
from stitchnas.candidates import (
    CandidateEvaluator, CandidateJob, CandidateTask, EvaluationBackend, clear_results, compact, evaluate_in_process,
)
from stitchnas.data import DataSpec, DataSplits, load_data
from stitchnas.export import export_model
from stitchnas.front import RESULT_COLUMNS, FrontSummary, summarize_front
from stitchnas.io import ResultsTable, file_sha256, load_checkpoint, read_json
from stitchnas.runs import RUN_CONFIG, prepare_run_dir
from supernet.evaluation import accuracy
from supernet.training import TrainHistory, epoch_generator

log = logging.getLogger(__name__)

SNNET_CHECKPOINT = "snnet.pt"
RESULTS_FILE = "results.csv"
_INIT_STREAM = 4  # generator stream choosing the least-squares batch (0-3 are used in training)
VERSIONS: tuple[str, ...] = ("v1", "v2")
#: SN-Netv2's LoRA rank default here (SN-Netv2: 64 on ImageNet, 4 or 16 for segmentation); the
#: digits presets are 32-64 wide
V2_LORA_RANK = 4


@dataclass(frozen=True)
class StitchSearchConfig:
    """One SN-Net run: anchors (small -> large), data, training recipe and space options.

    ``init_samples`` images of ``search_train`` fit the stitching layers (SN-Net: 100);
    ``nearest``, ``kernel_size`` and ``stride`` shape the SN-Net space (SN-Net: True, 2, 1).

    ``version`` selects SN-Net (``"v1"``) or SN-Netv2 (``"v2"``). With ``"v2"`` only the first
    and last anchors are kept (small -> large), ``route_types`` filters the two-way space
    (default: all of ``fs``, ``sf``, ``sfs``, ``fsf``), and the defaults of the two options
    both versions share change: ``sampling`` (v1 uniform, v2 ROS with an automatic gap) and
    ``lora_rank`` (v1 0 = plain stitching layers, v2 :data:`V2_LORA_RANK`). The resolved values
    are what ``to_json`` records.
    """

    anchors: tuple[AnchorRef, ...]
    data: DataSpec = field(default_factory=DataSpec)
    train: StitchTrainConfig = field(default_factory=StitchTrainConfig)
    init_samples: int = 100
    nearest: bool = True
    kernel_size: int = 2
    stride: int = 1
    eval_batch_size: int = 256
    export_front: bool = True
    version: Literal["v1", "v2"] = "v1"
    route_types: tuple[str, ...] | None = None
    sampling: SamplingConfig | None = None
    lora_rank: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "anchors", tuple(self.anchors))
        if len(self.anchors) < 2:
            raise ValueError(f"stitch search 'anchors': expected at least 2 anchors, got {len(self.anchors)}")
        for key in ("init_samples", "eval_batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"stitch search '{key}': expected an int >= 1, got {value!r}")
        if self.version not in VERSIONS:
            raise ValueError(f"stitch search 'version': expected one of {VERSIONS}, got {self.version!r}")
        v2 = self.version == "v2"
        if not v2 and self.route_types is not None:
            raise ValueError(
                f"stitch search 'route_types': route filters are SN-Netv2's, for version 'v2' only, "
                f"got {list(self.route_types)} with version 'v1'"
            )
        if v2:
            if not (self.nearest and self.kernel_size == 2 and self.stride == 1):
                raise ValueError(
                    "stitch search: 'nearest', 'kernel_size' and 'stride' shape SN-Net's space (version 'v1'); "
                    f"version 'v2' takes the defaults, got {self.nearest}/{self.kernel_size}/{self.stride}"
                )
            object.__setattr__(self, "anchors", (self.anchors[0], self.anchors[-1]))
            types = ROUTE_TYPES if self.route_types is None else self.route_types
            types = (types,) if isinstance(types, str) else tuple(types)
            if not types or any(t not in ROUTE_TYPES for t in types) or len(set(types)) != len(types):
                raise ValueError(
                    f"stitch search 'route_types': expected distinct values from {list(ROUTE_TYPES)} "
                    f"(at least one), got {list(types)}"
                )
            object.__setattr__(self, "route_types", tuple(t for t in ROUTE_TYPES if t in types))
        if self.sampling is None:
            object.__setattr__(self, "sampling", SamplingConfig("ros") if v2 else SamplingConfig())
        elif not isinstance(self.sampling, SamplingConfig):
            raise ValueError(f"stitch search 'sampling': expected a SamplingConfig, got {self.sampling!r}")
        if self.lora_rank is None:
            object.__setattr__(self, "lora_rank", V2_LORA_RANK if v2 else 0)
        rank = self.lora_rank
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"stitch search 'lora_rank': expected an int >= 0 (0: plain stitching layers), "
                             f"got {rank!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "stitch_search", "anchors": [a.to_json() for a in self.anchors], "data": asdict(self.data),
            "train": self.train.to_json(), "init_samples": self.init_samples, "nearest": self.nearest,
            "kernel_size": self.kernel_size, "stride": self.stride, "eval_batch_size": self.eval_batch_size,
            "export_front": self.export_front, "version": self.version,
            "route_types": list(self.route_types) if self.route_types is not None else None,
            "sampling": self.sampling.to_json(), "lora_rank": self.lora_rank,
        }

    @classmethod
    def from_json(cls, data: Any) -> "StitchSearchConfig":
        if not isinstance(data, dict) or data.get("kind") != "stitch_search":
            raise ValueError("run config: not an SN-Net run (expected kind 'stitch_search')")
        try:
            # run folders written before SN-Netv2 was wired have no version options: SN-Net defaults
            sampling = data.get("sampling")
            return cls(
                anchors=tuple(AnchorRef.from_json(a) for a in data["anchors"]), data=DataSpec(**data["data"]),
                train=StitchTrainConfig.from_json(data["train"]),
                **{k: data[k] for k in ("init_samples", "nearest", "kernel_size", "stride", "eval_batch_size",
                                        "export_front")},
                version=data.get("version", "v1"),
                route_types=tuple(data["route_types"]) if data.get("route_types") is not None else None,
                sampling=SamplingConfig.from_json(sampling) if sampling is not None else None,
                lora_rank=data.get("lora_rank"),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"run config: malformed SN-Net run ({type(err).__name__}: {err})") from err


@dataclass
class StitchOutcome:
    out_dir: Path
    rows: list[dict[str, Any]]
    summary: FrontSummary
    exports: list[Path] = field(default_factory=list)
    history: TrainHistory | None = None


# --------------------------------------------------------------------------- building
def build_snnet(cfg: StitchSearchConfig, data: DataSplits, weights: bool = True) -> SNNet:
    """The SN-Net (or SN-Netv2) of ``cfg``'s anchors; ``weights=False`` skips the anchor files
    (the caller loads a checkpoint instead). Raises ValueError for unstitchable anchors or data,
    or a low-rank ``lora_rank`` larger than a stitching layer's widths."""
    if weights:
        anchors = load_anchors(cfg.anchors)
    else:
        anchors = [build_anchor(dict(a.config)) for a in cfg.anchors]
    names = [a.name for a in cfg.anchors]
    family = anchors[0].config["family"]
    if cfg.version == "v2":
        check_compatible(anchors, names)
        for name, anchor in zip(names, anchors):
            if len(anchor.stage_depths) != 1:
                raise ValueError(
                    f"stitch search version 'v2': SN-Netv2 stitches single-stage anchors (ViTs); anchor {name} "
                    f"has stage depths {list(anchor.stage_depths)}"
                )
        space: Any = StitchSpaceV2((len(anchors[0].blocks), len(anchors[1].blocks)), names=tuple(names),
                                   route_types=cfg.route_types or ROUTE_TYPES, name=f"snnetv2_{family}")
    else:
        space = anchor_space(anchors, names, nearest=cfg.nearest, kernel_size=cfg.kernel_size, stride=cfg.stride,
                             name=f"snnet_{family}")
    factory = functools.partial(LowRankStitchingLayer, rank=cfg.lora_rank) if cfg.lora_rank else None
    snnet = SNNet(anchors, space, layer_factory=factory)
    check_anchor_data(anchors, names, data)
    return snnet


def training_sampler(cfg: StitchSearchConfig, snnet: SNNet) -> ConfigSampler:
    """The configuration sampler joint training uses: ``cfg.sampling`` over the analytic
    FLOPs of every configuration (uniform for SN-Net, ROS for SN-Netv2 by default)."""
    assert cfg.sampling is not None  # resolved in __post_init__
    return cfg.sampling.build(flops_table(snnet))


def init_batch(data: DataSplits, num_samples: int, seed: int) -> torch.Tensor:
    """The seeded batch of ``search_train`` images the least-squares init uses."""
    x = data.search_train.tensors[0]
    order = torch.randperm(len(x), generator=epoch_generator(seed, 0, _INIT_STREAM))
    return x[order[:num_samples]]


def initialised_snnet(cfg: StitchSearchConfig, data: DataSplits) -> SNNet:
    """Anchors from their files plus least-squares stitching layers (before any training)."""
    torch.manual_seed(cfg.train.seed)
    snnet = build_snnet(cfg, data)
    snnet.init_stitching_layers(init_batch(data, cfg.init_samples, cfg.train.seed))
    return snnet.eval()


def largest_anchor(snnet: SNNet) -> int:
    """Configuration id of the anchor with the most FLOPs (the 'default' on the plot)."""
    flops = flops_table(snnet)
    return max(range(snnet.space.num_anchors), key=lambda a: flops[a])


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """``load_state_dict`` with one line naming the first missing, extra or mis-shaped key."""
    expected = module.state_dict()
    for key, value in expected.items():
        got = state.get(key)
        if not isinstance(got, torch.Tensor):
            raise ValueError(f"{where}: missing key {key!r} (model expects shape {tuple(value.shape)})")
        if got.shape != value.shape:
            raise ValueError(f"{where}: key {key!r} has shape {tuple(got.shape)}, model expects {tuple(value.shape)}")
    extra = [k for k in state if k not in expected]
    if extra:
        raise ValueError(f"{where}: unexpected key {extra[0]!r} (model has no such key)")
    module.load_state_dict(state)


def load_run(run_dir: str | Path) -> tuple[StitchSearchConfig, DataSplits, SNNet, dict[str, Any]]:
    """A run's config, data and SN-Net with the weights of its last checkpoint."""
    run = Path(run_dir)
    cfg = StitchSearchConfig.from_json(read_json(run / RUN_CONFIG, "run config"))
    data = load_data(cfg.data)
    snnet = build_snnet(cfg, data, weights=False)
    ckpt = run / SNNET_CHECKPOINT
    state = load_checkpoint(ckpt)
    if not isinstance(state.get("model"), dict):
        raise ValueError(f"checkpoint {ckpt}: not an SN-Net checkpoint (no 'model' state dict)")
    load_state_strict(snnet, state["model"], f"checkpoint {ckpt}")
    return cfg, data, snnet.eval(), state


# --------------------------------------------------------------------------- evaluation
def config_row(snnet: SNNet, config: StitchConfig, flops: Sequence[int]) -> dict[str, Any]:
    """The identity, FLOPs and parameter columns of a results row (no accuracy yet)."""
    route = {"route": [list(s) for s in config.route], "windows": list(config.windows)}
    return {"candidate": str(config.id), "label": snnet.space.describe(config),
            "config": json.dumps(route, separators=(",", ":")), "flops": int(flops[config.id]),
            "params": snnet.num_params(config)}


class StitchTask(CandidateTask):
    """The configurations of an SN-Net, SN-Netv2 or Learngene pool as evaluation backends see
    them (see :mod:`stitchnas.candidates`): a configuration's id is its index, its score the
    top-1 accuracy of the active path on ``search_val``."""

    def __init__(self, snnet: SNNet, data: DataSplits, batch_size: int = 256) -> None:
        self.snnet, self.data, self.batch_size = snnet, data, batch_size
        self.flops_by_id = flops_table(snnet)

    def __len__(self) -> int:
        return len(self.snnet.space)

    def describe(self, index: int) -> str:
        return self.snnet.space.describe(self.snnet.space.config(index))

    def row(self, index: int) -> dict[str, Any]:
        return config_row(self.snnet, self.snnet.space.config(index), self.flops_by_id)

    def flops(self, index: int) -> int:
        return int(self.flops_by_id[index])

    def default_index(self) -> int:
        """The largest anchor (ids ``0..A-1`` are the anchors; a stitch may cost more)."""
        return max(range(self.snnet.space.num_anchors), key=self.flops)

    def evaluator(self) -> "StitchEvaluator":
        return StitchEvaluator(key=uuid.uuid4().hex, network=self.snnet, batch_size=self.batch_size,
                               val=tuple(compact(t) for t in self.data.search_val.tensors))


@dataclass(frozen=True)
class StitchEvaluator(CandidateEvaluator):
    """The stitched network itself (pickled whole for Ray workers) and the ``search_val`` tensors."""

    key: str
    network: SNNet
    val: tuple[torch.Tensor, ...]
    batch_size: int

    def __getstate__(self) -> dict[str, Any]:
        # Shipped to a Ray worker: always a CPU copy (the worker may have no GPU); in process the
        # live network is used as is.
        network = self.network
        if any(p.device.type != "cpu" for p in network.parameters()):
            network = copy.deepcopy(network).cpu()
        return {**self.__dict__, "network": network}

    def prepare(self, device: str) -> Callable[[int], float]:
        network = self.network.eval()
        val = torch.utils.data.TensorDataset(*self.val)

        def score(index: int) -> float:
            network.set_active(index)
            return accuracy(network, val, self.batch_size, device)

        return score


def evaluation_job(snnet: SNNet, table: ResultsTable, data: DataSplits, out_dir: Path, batch_size: int,
                   device: str, seed: int, progress: bool = True) -> CandidateJob:
    """A job scoring every configuration of ``snnet`` into ``table`` (any backend)."""
    return CandidateJob(StitchTask(snnet, data, batch_size), table, list(range(len(snnet.space))), out_dir,
                        seed=seed, progress=progress, device=device)


def _summarize(snnet: SNNet, rows: list[dict[str, Any]], out: Path, data: DataSplits, what: str) -> FrontSummary:
    family = snnet.anchors[0].config["family"]
    method = "SN-Netv2" if isinstance(snnet.space, StitchSpaceV2) else "SN-Net"
    return summarize_front(rows, out, default_candidate=str(largest_anchor(snnet)),
                           title=f"{method} ({family}, {len(snnet.space)} configurations, {what}) on {data.name}")


# --------------------------------------------------------------------------- export
def data_provenance(spec: DataSpec) -> dict[str, Any]:
    return {"dataset": spec.name, "data_dir": spec.data_dir, "input_size": spec.input_size, "seed": spec.seed,
            "max_train_samples": spec.max_train_samples, "max_test_samples": spec.max_test_samples}


def export_dir_name(config: StitchConfig) -> str:
    """E.g. ``024_a0.0-7_a1.7-11`` (id, then anchor.first-last per segment)."""
    return f"{config.id:03d}_" + route_text(config.route)


def route_text(route: Sequence[Segment]) -> str:
    """``a0.0-7_a1.7-11``: ``a<anchor>.<first>-<last>`` per segment (the inverse of :func:`parse_route`)."""
    return "_".join(f"a{s.anchor}.{s.first}-{s.last}" for s in route)


_SEGMENT = r"a(\d+)\.(\d+)-(\d+)"


def parse_route(text: str) -> tuple[Segment, ...] | None:
    """Segments of a route written as :func:`route_text` does (``_`` or ``,`` between segments),
    or ``None`` when ``text`` is not written that way."""
    text = text.strip()
    if not re.fullmatch(rf"{_SEGMENT}([_,]{_SEGMENT})*", text):
        return None
    return tuple(Segment(*(int(v) for v in m)) for m in re.findall(_SEGMENT, text))


def find_config(snnet: SNNet, config: int | str) -> StitchConfig:
    """A configuration of ``snnet`` from its id or its route text (see :func:`route_text`).

    An SN-Netv2 route that does not run through the network once (a gap, an overlap, not
    starting at block 0, ...) is named with what is wrong with it. Raises ValueError."""
    if isinstance(config, str) and config.strip().isdigit():
        config = int(config)
    if not isinstance(config, str):
        return snnet.space.config(config)
    route = parse_route(config)
    if route is None:
        raise ValueError(
            f"stitch config {config!r}: expected a configuration id or a route such as 'a0.0-3_a1.4-11' "
            "(a<anchor>.<first>-<last> per segment)"
        )
    if isinstance(snnet.space, StitchSpaceV2):
        return snnet.space.find(route)
    found = [c for c in snnet.space if c.route == route]
    if not found:
        raise ValueError(f"stitch route {config!r}: not a configuration of space {snnet.space.name!r}")
    return found[0]


def export_stitch_config(
    folder: str | Path, snnet: SNNet, config: StitchConfig | int, data: DataSplits, eval_batch_size: int,
    device: str, provenance: dict[str, Any], search_val_acc: float | None = None,
) -> Path:
    """Export one configuration as a standalone model holding only the blocks it uses.

    The recorded accuracies are measured on the exported module itself, so
    ``stitchnas.load_model`` reproduces them exactly.
    """
    config = snnet.set_active(config)
    model = snnet.export_active().eval()
    metrics = {"val_acc": accuracy(model, data.search_val, eval_batch_size, device),
               "test_acc": accuracy(model, data.test, eval_batch_size, device)}
    if search_val_acc is not None:
        metrics["search_val_acc"] = search_val_acc
    body = {
        "model": stitched_model_config(snnet, config),
        "space": snnet.space.to_json(),
        "config": config.to_json(),
        "label": snnet.space.describe(config),
        "flops": int(flops_table(snnet)[config.id]),
        "params": snnet.num_params(config),
        "metrics": metrics,
    }
    folder = Path(folder)
    export_model(folder, model.cpu(), "stitch", body, provenance)
    return folder


def _provenance(cfg: StitchSearchConfig, run: Path, ckpt: Path) -> dict[str, Any]:
    anchors = [{"name": a.name, "sha256": a.sha256} for a in cfg.anchors]
    return {**data_provenance(cfg.data), "source": "snnetv2" if cfg.version == "v2" else "snnet",
            "run_dir": str(run.resolve()), "checkpoint_sha256": file_sha256(ckpt), "anchors": anchors}


# --------------------------------------------------------------------------- pipelines
def run_stitch_search(
    cfg: StitchSearchConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    stage: EvaluationBackend = evaluate_in_process,
) -> StitchOutcome:
    """Run (or resume) SN-Net training and evaluation and write its files into ``out_dir``.

    ``stage`` scores the configurations (in process by default; pass
    :meth:`stitchnas.tune.RayTuneStage.evaluate` for Ray Tune)."""
    data = load_data(cfg.data)
    snnet = initialised_snnet(cfg, data)  # bad anchors fail here, before the run folder exists
    out = prepare_run_dir(out_dir, cfg.to_json(), resume)
    log.info("data: %s", data.describe())
    layers = f"low-rank r={cfg.lora_rank}" if cfg.lora_rank else "plain"
    log.info("SN-Net%s: %d anchors, %d configurations, %d %s stitching layers (least-squares init on %d images)",
             "v2" if cfg.version == "v2" else "", snnet.space.num_anchors, len(snnet.space), len(snnet.stitch_layers),
             layers, cfg.init_samples)
    sampler = training_sampler(cfg, snnet)
    if isinstance(sampler, FlopsGroupedSampler):
        log.info("ROS sampling: %d FLOPs groups (gap %.4g MFLOPs, %s weighting), sizes %s", len(sampler.groups()),
                 sampler.gap / 1e6, sampler.weighting, [len(g) for g in sampler.groups()])
    teacher = None
    if cfg.train.distill_weight > 0:
        # a frozen copy of the largest anchor as loaded, rebuilt the same way on resume
        teacher = copy.deepcopy(snnet.anchors[largest_anchor(snnet)]).eval()
    ckpt = out / SNNET_CHECKPOINT
    history = train_network(snnet, data.search_train, cfg.train, sampler=sampler, teacher=teacher,
                            checkpoint_path=ckpt, resume=resume, desc="snnet", progress=progress, on_step=on_step)
    snnet.eval()
    log.info("SN-Net checkpoint: %s", ckpt)

    table = ResultsTable(out / RESULTS_FILE, RESULT_COLUMNS)
    stage(evaluation_job(snnet, table, data, out, cfg.eval_batch_size, cfg.train.device, cfg.train.seed, progress))
    log.info("results: %s", out / RESULTS_FILE)
    rows = table.rows()
    summary = _summarize(snnet, rows, out, data, f"{cfg.train.epochs} epochs")
    exports: list[Path] = []
    if cfg.export_front:
        provenance = _provenance(cfg, out, ckpt)
        for row in summary.front:
            config = snnet.space.config(int(row["candidate"]))
            folder = out / "exports" / export_dir_name(config)
            exports.append(export_stitch_config(folder, snnet, config, data, cfg.eval_batch_size, cfg.train.device,
                                                provenance, search_val_acc=row["val_acc"]))
        log.info("exported %d Pareto-optimal models to %s", len(exports), out / "exports")
    log.info("Pareto front: %s (%d of %d configurations)", out / "pareto.json", len(summary.front), len(rows))
    return StitchOutcome(out, rows, summary, exports, history)


def evaluate_run(
    run_dir: str | Path, no_train: bool = False, out_dir: str | Path | None = None, progress: bool = True,
    stage: EvaluationBackend = evaluate_in_process,
) -> StitchOutcome:
    """Re-score every configuration of a run into ``out_dir`` (default
    ``RUN/evaluate/checkpoint`` or, with ``no_train``, ``RUN/evaluate/init``).

    Without ``no_train`` the weights come from the run's last checkpoint; with it, from the
    anchor files plus the least-squares init, i.e. the network before any joint training.
    """
    run = Path(run_dir)
    if no_train:
        cfg = StitchSearchConfig.from_json(read_json(run / RUN_CONFIG, "run config"))
        for ref in cfg.anchors:
            if ref.sha256 and Path(ref.path).is_file() and file_sha256(Path(ref.path)) != ref.sha256:
                raise ValueError(f"anchor {ref.name} file {ref.path}: changed since the run (SHA-256 differs)")
        data = load_data(cfg.data)
        snnet = initialised_snnet(cfg, data)
    else:
        cfg, data, snnet, _ = load_run(run)
    what = "least-squares init" if no_train else "checkpoint"
    out = Path(out_dir) if out_dir is not None else run / "evaluate" / ("init" if no_train else "checkpoint")
    out.mkdir(parents=True, exist_ok=True)
    clear_results(out, RESULTS_FILE)
    table = ResultsTable(out / RESULTS_FILE, RESULT_COLUMNS)
    stage(evaluation_job(snnet, table, data, out, cfg.eval_batch_size, cfg.train.device, cfg.train.seed, progress))
    rows = table.rows()
    summary = _summarize(snnet, rows, out, data, what)
    log.info("evaluated %d configurations (%s): %s", len(rows), what, out.resolve())
    return StitchOutcome(out, rows, summary)


def export_from_run(run_dir: str | Path, config_id: int | str, out_dir: str | Path) -> Path:
    """Export one configuration of a run (its id, or its route as :func:`route_text` writes it)
    with the weights of its last checkpoint."""
    run = Path(run_dir)
    cfg, data, snnet, _ = load_run(run)
    config_id = find_config(snnet, config_id).id
    recorded = None
    if (run / RESULTS_FILE).exists():
        rows = ResultsTable(run / RESULTS_FILE, RESULT_COLUMNS).rows()
        recorded = next((r["val_acc"] for r in rows if str(r["candidate"]) == str(config_id)), None)
    return export_stitch_config(out_dir, snnet, config_id, data, cfg.eval_batch_size,
                                cfg.train.device, _provenance(cfg, run, run / SNNET_CHECKPOINT),
                                search_val_acc=recorded)


__all__ = [
    "RESULTS_FILE", "SNNET_CHECKPOINT", "V2_LORA_RANK", "VERSIONS", "StitchEvaluator", "StitchOutcome",
    "StitchSearchConfig", "StitchTask", "build_snnet", "config_row", "evaluate_run", "evaluation_job",
    "export_from_run", "export_stitch_config", "find_config", "init_batch", "initialised_snnet", "largest_anchor",
    "load_run", "load_state_strict", "parse_route", "route_text", "run_stitch_search", "training_sampler",
]
