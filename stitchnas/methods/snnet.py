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

The stages and files are the pipeline's (:mod:`stitchnas.search.pipeline`); the checkpoint is
``snnet.pt`` (epoch checkpoints; epoch 0 is the least-squares init).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import torch
from torch import nn

from searchspace.samplers import ConfigSampler, FlopsGroupedSampler
from searchspace.stitch import Segment, StitchConfig
from searchspace.stitch_v2 import ROUTE_TYPES, RouteType, StitchSpaceV2
from stitching.anchors import AnchorRef, check_anchor_data, load_anchors_with_reports
from stitching.flops import flops_table
from stitching.lowrank import LowRankStitchingLayer
from stitching.shared_prefix import score_routes
from stitching.snnet import SNNet, anchor_space, build_anchor, check_compatible, stitched_model_config
from stitching.trainer import SamplingConfig, StitchTrainConfig, train_network
from stitchnas.core import records
from stitchnas.core.checkpoints import load_checkpoint_weights
from stitchnas.core.evaluation import accuracy
from stitchnas.core.io import file_sha256
from stitchnas.core.prefix import DEFAULT_PREFIX_BUDGET
from stitchnas.core.records import AnchorDigest, Provenance, data_fields
from stitchnas.core.training import TrainHistory, epoch_generator, split_images
from stitchnas.data import DataSpec, DataSplits, load_data
from stitchnas.search.candidates import (
    CandidateEvaluator,
    CandidateTask,
    PrefixScorer,
    Score,
    ShippedSplit,
    ship_split,
    unship_split,
)
from stitchnas.search.cost import COST_ABSENT, CostConfig
from stitchnas.search.export import InputSpec, export_model
from stitchnas.search.pipeline import HV_REFERENCES, SearchConfig, SearchMethod, TrainContext

log = logging.getLogger(__name__)

SNNET_CHECKPOINT = "snnet.pt"
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
    and last anchors are stitched (small -> large), ``route_types`` filters the two-way space
    (default: all of ``fs``, ``sf``, ``sfs``, ``fsf``), and the defaults of the two options
    both versions share differ: ``sampling`` (v1 uniform, v2 ROS with an automatic gap) and
    ``lora_rank`` (v1 0 = plain stitching layers, v2 :data:`V2_LORA_RANK`). The fields keep what
    was given (``None``: the version's default); the ``stitched_anchors``,
    ``effective_route_types``, ``effective_sampling`` and ``effective_lora_rank`` properties
    resolve them, and ``to_json`` records the resolved values.

    ``reset_head`` gives every anchor a freshly initialised head even when its checkpoint's class
    count matches the data's (same count, other classes); fresh heads train at the stitching
    layers' learning rate, not the anchors'.

    ``cost`` is the front's cost axis (:mod:`stitchnas.search.cost`; default FLOPs, absent from
    the JSON then).
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
    hv_reference: str = "evaluated"  # see stitchnas.search.pipeline.HV_REFERENCES
    reset_head: bool = False
    cost: CostConfig = field(default_factory=CostConfig)

    json_kind: ClassVar[str] = "stitch_search"
    json_keep_none: ClassVar[bool] = True  # v1 writes "route_types": null
    json_absent: ClassVar[dict[str, Any]] = COST_ABSENT

    def __post_init__(self) -> None:
        if self.hv_reference not in HV_REFERENCES:
            raise ValueError(f"stitch search 'hv_reference': expected one of {HV_REFERENCES}, "
                             f"got {self.hv_reference!r}")
        self.cost.check(self.hv_reference, "stitch search")
        object.__setattr__(self, "anchors", tuple(self.anchors))  # a list given is frozen, not changed
        if len(self.anchors) < 2:
            raise ValueError(f"stitch search 'anchors': expected at least 2 anchors, got {len(self.anchors)}")
        for key in ("init_samples", "eval_batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"stitch search '{key}': expected an int >= 1, got {value!r}")
        if self.version not in VERSIONS:
            raise ValueError(f"stitch search 'version': expected one of {VERSIONS}, got {self.version!r}")
        if self.version == "v1" and self.route_types is not None:
            raise ValueError(
                f"stitch search 'route_types': route filters are SN-Netv2's, for version 'v2' only, "
                f"got {list(self.route_types)} with version 'v1'"
            )
        if self.version == "v2":
            if not (self.nearest and self.kernel_size == 2 and self.stride == 1):
                raise ValueError(
                    "stitch search: 'nearest', 'kernel_size' and 'stride' shape SN-Net's space (version 'v1'); "
                    f"version 'v2' takes the defaults, got {self.nearest}/{self.kernel_size}/{self.stride}"
                )
            types = self.route_types if self.route_types is not None else ROUTE_TYPES
            types = (types,) if isinstance(types, str) else tuple(types)
            if not types or any(t not in ROUTE_TYPES for t in types) or len(set(types)) != len(types):
                raise ValueError(
                    f"stitch search 'route_types': expected distinct values from {list(ROUTE_TYPES)} "
                    f"(at least one), got {list(types)}"
                )
        if self.sampling is not None and not isinstance(self.sampling, SamplingConfig):
            raise ValueError(f"stitch search 'sampling': expected a SamplingConfig, got {self.sampling!r}")
        if not isinstance(self.reset_head, bool):
            raise ValueError(f"stitch search 'reset_head': expected a bool, got {self.reset_head!r}")
        rank = self.lora_rank
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
            raise ValueError(f"stitch search 'lora_rank': expected an int >= 0 (0: plain stitching layers), "
                             f"got {rank!r}")

    @property
    def stitched_anchors(self) -> tuple[AnchorRef, ...]:
        """The anchors stitched: all of them (v1), or the first and last (v2)."""
        return (self.anchors[0], self.anchors[-1]) if self.version == "v2" else self.anchors

    @property
    def effective_route_types(self) -> tuple[RouteType, ...] | None:
        """v2: the route types kept, in :data:`ROUTE_TYPES` order; v1: None."""
        if self.version != "v2":
            return None
        types = self.route_types if self.route_types is not None else ROUTE_TYPES
        types = (types,) if isinstance(types, str) else tuple(types)
        return tuple(t for t in ROUTE_TYPES if t in types)

    @property
    def effective_sampling(self) -> SamplingConfig:
        """``sampling``, or the version's default (v1 uniform, v2 ROS)."""
        if self.sampling is not None:
            return self.sampling
        return SamplingConfig("ros") if self.version == "v2" else SamplingConfig()

    @property
    def effective_lora_rank(self) -> int:
        """``lora_rank``, or the version's default (v1 0, v2 :data:`V2_LORA_RANK`)."""
        if self.lora_rank is not None:
            return self.lora_rank
        return V2_LORA_RANK if self.version == "v2" else 0

    def resolved(self) -> StitchSearchConfig:
        """This config with the version's defaults filled in and only the anchors stitched."""
        return replace(self, anchors=self.stitched_anchors, route_types=self.effective_route_types,
                       sampling=self.effective_sampling, lora_rank=self.effective_lora_rank)

    def to_json(self) -> dict[str, Any]:
        """The :meth:`resolved` config (``run_config.json``)."""
        return records.to_json(self.resolved())

    @classmethod
    def from_json(cls, data: Any, where: str = "run config") -> StitchSearchConfig:
        """Strict decoding; run folders written before SN-Netv2 was wired have no ``version``,
        ``route_types``, ``sampling`` or ``lora_rank`` (SN-Net's defaults), nor ``hv_reference``
        or ``reset_head`` (False)."""
        return records.from_json(cls, data, where)


# --------------------------------------------------------------------------- building
def build_snnet(cfg: StitchSearchConfig, data: DataSplits, weights: bool = True) -> SNNet:
    """The SN-Net (or SN-Netv2) of ``cfg``'s anchors; ``weights=False`` skips the anchor files
    (the caller loads a checkpoint instead). Raises ValueError for unstitchable anchors or data,
    or a low-rank ``lora_rank`` larger than a stitching layer's widths."""
    if weights:
        anchors, reports = load_anchors_with_reports(cfg.stitched_anchors, reset_head=cfg.reset_head)
        for ref, report in zip(cfg.stitched_anchors, reports):
            for line in report.describe():
                log.info("anchor %s: %s", ref.name, line)
        new_heads = tuple(report.head is not None for report in reports)
    else:
        anchors = [build_anchor(dict(a.config)) for a in cfg.stitched_anchors]
        new_heads = (False,) * len(anchors)  # not trained further (the caller loads a checkpoint)
    names = [a.name for a in cfg.stitched_anchors]
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
                                   route_types=cfg.effective_route_types or ROUTE_TYPES, name=f"snnetv2_{family}")
    else:
        space = anchor_space(anchors, names, nearest=cfg.nearest, kernel_size=cfg.kernel_size, stride=cfg.stride,
                             name=f"snnet_{family}")
    rank = cfg.effective_lora_rank
    factory = functools.partial(LowRankStitchingLayer, rank=rank) if rank else None
    snnet = SNNet(anchors, space, layer_factory=factory)
    snnet.new_heads = new_heads
    if any(new_heads):
        log.info("fresh heads of %s train at the stitching layers' learning rate (not the anchors')",
                 [n for n, new in zip(names, new_heads) if new])
    check_anchor_data(anchors, names, data)
    return snnet


def anchor_adaptations(refs: Sequence[AnchorRef], reset_head: bool = False) -> tuple[str, ...] | None:
    """What loading each anchor's checkpoint adapts to the data (a new head, adapted input
    channels, resized position embeddings), one line each, for an export's provenance; None
    when every checkpoint loads unchanged (or a file is gone since the run)."""
    from stitching.anchors import build_anchor
    from stitching.checkpoint import load_checkpoint

    lines: list[str] = []
    for ref in refs:
        if not Path(ref.path).is_file():
            return None
        report = load_checkpoint(build_anchor(dict(ref.config)), ref.path, reset_head=reset_head)
        lines += [f"{ref.name}: {line}" for line in report.describe()]
    return tuple(lines) or None


def training_sampler(cfg: StitchSearchConfig, snnet: SNNet) -> ConfigSampler:
    """The configuration sampler joint training uses: ``cfg.effective_sampling`` over the analytic
    FLOPs of every configuration (uniform for SN-Net, ROS for SN-Netv2 by default)."""
    return cfg.effective_sampling.build(flops_table(snnet))


def init_batch(data: DataSplits, num_samples: int, seed: int) -> torch.Tensor:
    """The seeded batch of ``search_train`` images the least-squares init uses."""
    order = torch.randperm(len(data.search_train), generator=epoch_generator(seed, 0, _INIT_STREAM))
    return split_images(data.search_train, order[:num_samples])


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


# --------------------------------------------------------------------------- evaluation
def config_row(snnet: SNNet, config: StitchConfig, flops: Sequence[int]) -> dict[str, Any]:
    """The identity, FLOPs and parameter columns of a results row (no accuracy yet)."""
    route = {"route": [list(s) for s in config.route], "windows": list(config.windows)}
    return {"candidate": str(config.id), "label": snnet.space.describe(config),
            "config": json.dumps(route, separators=(",", ":")), "flops": int(flops[config.id]),
            "params": snnet.num_params(config)}


class StitchTask(CandidateTask):
    """The configurations of an SN-Net, SN-Netv2 or Learngene pool as evaluation backends see
    them (see :mod:`stitchnas.search.candidates`): a configuration's id is its index, its score the
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

    def standalone(self, index: int) -> nn.Module:
        """The configuration's standalone module as exported (plain stitching layers), freshly
        initialised (:meth:`~stitching.snnet.SNNet.export_active` without the weights)."""
        self.snnet.set_active(index)
        return self.snnet.export_active(preserve_weight=False)

    def default_index(self) -> int:
        """The largest anchor (ids ``0..A-1`` are the anchors; a stitch may cost more)."""
        return max(range(self.snnet.space.num_anchors), key=self.flops)

    def evaluator(self) -> StitchEvaluator:
        return StitchEvaluator(key=uuid.uuid4().hex, network=self.snnet, batch_size=self.batch_size,
                               val=ship_split(self.data.search_val))


@dataclass(frozen=True)
class StitchEvaluator(CandidateEvaluator):
    """The stitched network itself (pickled whole for Ray workers) and the ``search_val`` tensors.
    Several configurations are scored with each shared prefix computed once per batch
    (:func:`stitching.shared_prefix.score_routes`), keeping at most ``prefix_budget`` bytes of
    activations."""

    key: str
    network: SNNet
    val: ShippedSplit  # tensors, or a split streamed from disk
    batch_size: int
    prefix_budget: int = DEFAULT_PREFIX_BUDGET

    def __getstate__(self) -> dict[str, Any]:
        # Shipped to a Ray worker: always a CPU copy (the worker may have no GPU); in process the
        # live network is used as is.
        network = self.network
        if any(p.device.type != "cpu" for p in network.parameters()):
            network = copy.deepcopy(network).cpu()
        return {**self.__dict__, "network": network}

    def prepare(self, device: str) -> PrefixScorer:
        network = self.network.eval()
        val = unship_split(self.val)

        def score(index: int) -> float:
            network.set_active(index)
            return accuracy(network, val, self.batch_size, device)

        def many(indices: Sequence[int]) -> dict[int, float | Score]:
            accs, report = score_routes(network, indices, val, self.batch_size, device, self.prefix_budget)
            log.info("%s", report.describe())
            return {i: acc for i, acc in zip(indices, accs) if acc is not None}

        return PrefixScorer(score, many)


# --------------------------------------------------------------------------- export
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
    device: str, provenance: Provenance, search_val_acc: float | None = None,
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
    export_model(folder, model.cpu(), "stitch", body, provenance, inputs=InputSpec.from_data(data))
    return folder


class StitchedConfig(SearchConfig, Protocol):
    """What :class:`StitchedNetworkMethod` reads from its config beyond any search config's."""

    @property
    def eval_batch_size(self) -> int: ...


class StitchedNetworkMethod(SearchMethod):
    """What the methods over a stitched network (:class:`~stitching.snnet.SNNet`: SN-Net,
    SN-Netv2, a Learngene pool) share: their candidates are the network's configurations,
    scored and exported the same way."""

    cfg: StitchedConfig

    def task(self, network: nn.Module, data: DataSplits) -> CandidateTask:
        assert isinstance(network, SNNet)
        return StitchTask(network, data, self.cfg.eval_batch_size)

    def export_dir_name(self, network: nn.Module, index: int) -> str:
        assert isinstance(network, SNNet)
        return export_dir_name(network.space.config(index))

    def export(self, folder: Path, network: nn.Module, index: int, data: DataSplits, provenance: Provenance,
               search_val_acc: float | None = None) -> Path:
        assert isinstance(network, SNNet)
        return export_stitch_config(folder, network, index, data, self.cfg.eval_batch_size, self.recipe.device,
                                    provenance, search_val_acc)


class SNNetMethod(StitchedNetworkMethod):
    """SN-Net / SN-Netv2 as a :class:`~stitchnas.search.pipeline.SearchMethod`: anchors from
    their files, least-squares stitching layers, joint training, every configuration scored."""

    cfg: StitchSearchConfig
    checkpoint_file = SNNET_CHECKPOINT
    noun = "configurations"

    def __init__(self, cfg: StitchSearchConfig) -> None:
        self.cfg = cfg
        self._data: DataSplits | None = None

    @classmethod
    def from_run_config(cls, raw: Any, where: str = "run config") -> SNNetMethod:
        return cls(StitchSearchConfig.from_json(raw, where))

    def run_config(self) -> dict[str, Any]:
        return self.cfg.to_json()

    @property
    def recipe(self) -> StitchTrainConfig:
        return self.cfg.train

    def load_data(self) -> DataSplits:
        if self._data is None:
            self._data = load_data(self.cfg.data)
        return self._data

    def build(self, data: DataSplits) -> nn.Module:
        for ref in self.cfg.stitched_anchors:  # a re-evaluation must see the anchors the run saw
            if ref.sha256 and Path(ref.path).is_file() and file_sha256(Path(ref.path)) != ref.sha256:
                raise ValueError(f"anchor {ref.name} file {ref.path}: changed since the run (SHA-256 differs)")
        snnet = initialised_snnet(self.cfg, data)
        rank = self.cfg.effective_lora_rank
        layers = f"low-rank r={rank}" if rank else "plain"
        log.info("SN-Net%s: %d anchors, %d configurations, %d %s stitching layers (least-squares init on %d images)",
                 "v2" if self.cfg.version == "v2" else "", snnet.space.num_anchors, len(snnet.space),
                 len(snnet.stitch_layers), layers, self.cfg.init_samples)
        return snnet

    def train(self, network: nn.Module, ctx: TrainContext) -> TrainHistory:
        assert isinstance(network, SNNet)
        sampler = training_sampler(self.cfg, network)
        if isinstance(sampler, FlopsGroupedSampler):
            log.info("ROS sampling: %d FLOPs groups (gap %.4g MFLOPs, %s weighting), sizes %s", len(sampler.groups()),
                     sampler.gap / 1e6, sampler.weighting, [len(g) for g in sampler.groups()])
        teacher = None
        if self.cfg.train.distill_weight > 0:
            # a frozen copy of the largest anchor as loaded, rebuilt the same way on resume
            teacher = copy.deepcopy(network.anchors[largest_anchor(network)]).eval()
        return train_network(network, ctx.data.search_train, self.cfg.train, sampler=sampler, teacher=teacher,
                             checkpoint_path=ctx.checkpoint, resume=ctx.resume, desc="snnet", progress=ctx.progress,
                             on_step=ctx.on_step)

    def load_trained(self, run_dir: Path, data: DataSplits) -> nn.Module:
        snnet = build_snnet(self.cfg, data, weights=False)
        load_checkpoint_weights(snnet, Path(run_dir) / SNNET_CHECKPOINT, "an SN-Net")
        return snnet.eval()

    def title(self, network: nn.Module, data: DataSplits, what: str) -> str:
        assert isinstance(network, SNNet)
        family = network.anchor(0).config["family"]
        method = "SN-Netv2" if isinstance(network.space, StitchSpaceV2) else "SN-Net"
        return f"{method} ({family}, {len(network.space)} configurations, {what}) on {data.name}"

    def trained_label(self) -> str:
        return f"{self.cfg.train.epochs} epochs"

    def provenance(self, run_dir: Path) -> Provenance:
        run = Path(run_dir)
        return Provenance(source="snnetv2" if self.cfg.version == "v2" else "snnet", run_dir=str(run.resolve()),
                          checkpoint_sha256=file_sha256(run / SNNET_CHECKPOINT),
                          anchors=tuple(AnchorDigest(a.name, a.sha256) for a in self.cfg.stitched_anchors),
                          anchor_adaptations=anchor_adaptations(self.cfg.stitched_anchors, self.cfg.reset_head),
                          **data_fields(self.cfg.data))

    def parse_candidate(self, network: nn.Module, text: int | str) -> int:
        assert isinstance(network, SNNet)
        return find_config(network, text).id


__all__ = [
    "SNNET_CHECKPOINT", "SNNetMethod", "StitchedNetworkMethod", "V2_LORA_RANK", "VERSIONS", "StitchEvaluator",
    "StitchSearchConfig",
    "StitchTask", "build_snnet", "config_row", "export_stitch_config", "find_config", "init_batch",
    "initialised_snnet", "largest_anchor", "parse_route", "route_text", "training_sampler",
]
