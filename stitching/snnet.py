"""Stitchable Neural Networks (Pan et al., CVPR 2023, arXiv 2302.06586; ziplab/SN-Net).

:class:`SNNet` holds a family of anchors plus one stitching layer per (anchor pair, window)
(split by widths where a window's positions need different ones, see :class:`SNNet`) and
runs one configuration of a :class:`~searchspace.stitch.StitchSpace` at a time, with the
project's supernet interface (``set_active`` / ``sample_active`` / ``export_active`` /
``active_config``). Unlike SN-Net, which draws a configuration inside ``forward`` with the
global numpy generator, the caller picks it (``sample_active(rng)``), so a run is
reproducible; and a configuration exports to a standalone :class:`StitchedModel` holding only
the blocks it uses, rebuildable from a JSON-able config plus a state dict.

Anchors must provide ``embed``, ``blocks``, ``forward_blocks``, ``forward_norm_head``,
``block_features``, ``feature_dims``, ``stage_depths``, ``stitch_signature``, ``config``,
``export_embed``, ``export_tail`` and ``stitch_layer_kind`` (see ``stitching/vit.py`` and
``stitching/cnn.py``).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, Protocol, cast

import torch
from torch import nn

from searchspace.stitch import StitchConfig, StitchSpace
from searchspace.stitch_v2 import StitchSpaceV2
from stitching.cnn import RESNET_FAMILY, ResNetAnchor
from stitching.layers import LayerKind, StitchingLayer, augmented_pinv, least_squares_fit
from stitching.vit import VIT_FAMILY, VisionTransformer

STITCHED_FORMAT_VERSION = 1
_ANCHOR_API = ("embed", "blocks", "forward_blocks", "forward_norm_head", "block_features", "feature_dims",
               "stage_depths", "stitch_signature", "config", "export_embed", "export_tail", "stitch_layer_kind")


class StitchTail(Protocol):
    """What an anchor's ``export_tail()`` returns: an ``nn.Module`` with the final norm and head."""

    def forward_norm(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...


class StitchAnchor(Protocol):
    """The anchor API SN-Net uses (``_ANCHOR_API``; see the module docstring). Anchors are
    ``nn.Module`` objects; :func:`check_compatible` checks they have all of it."""

    @property
    def blocks(self) -> nn.ModuleList: ...

    @property
    def config(self) -> dict[str, Any]: ...

    @property
    def stage_depths(self) -> tuple[int, ...]: ...

    @property
    def feature_dims(self) -> tuple[int, ...]: ...

    @property
    def stitch_layer_kind(self) -> LayerKind: ...

    def stitch_signature(self) -> dict[str, Any]: ...

    def embed(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_blocks(self, x: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor: ...

    def forward_norm_head(self, x: torch.Tensor) -> torch.Tensor: ...

    def block_features(self, x: torch.Tensor) -> list[torch.Tensor]: ...

    def export_embed(self) -> nn.Module: ...

    def export_tail(self) -> StitchTail: ...


AnchorModel = VisionTransformer | ResNetAnchor
"""The anchors this project builds (:data:`ANCHOR_BUILDERS`); both are :class:`StitchAnchor`."""


def _build_vit(config: dict[str, Any]) -> VisionTransformer:
    return VisionTransformer(**{k: v for k, v in config.items() if k != "family"})


def _build_resnet(config: dict[str, Any]) -> ResNetAnchor:
    return ResNetAnchor(**{k: v for k, v in config.items() if k != "family"})


ANCHOR_BUILDERS: dict[str, Callable[[dict[str, Any]], AnchorModel]] = {
    VIT_FAMILY: _build_vit,
    RESNET_FAMILY: _build_resnet,
}


def build_anchor(config: dict[str, Any]) -> AnchorModel:
    """Rebuild an anchor from its ``config`` dict (dispatching on ``family``)."""
    family = config.get("family") if isinstance(config, dict) else None
    if family not in ANCHOR_BUILDERS:
        raise ValueError(f"anchor config 'family': expected one of {sorted(ANCHOR_BUILDERS)}, got {family!r}")
    try:
        return ANCHOR_BUILDERS[family](config)
    except TypeError as err:
        raise ValueError(f"anchor config: bad fields for family {family!r} ({err})") from err


def check_compatible(anchors: Sequence[nn.Module], names: Sequence[str] | None = None) -> list[StitchAnchor]:
    """Raise ValueError unless every anchor is stitchable and matches anchor 0's family,
    input, resolution schedule and classes; return the anchors, typed by that API."""
    names = list(names) if names is not None else [f"anchor{i}" for i in range(len(anchors))]
    if len(anchors) < 1:
        raise ValueError("snnet 'anchors': expected at least one anchor, got none")
    for i, anchor in enumerate(anchors):
        missing = [attr for attr in _ANCHOR_API if not hasattr(anchor, attr)]
        if missing:
            raise ValueError(f"anchor {i} ({names[i]}, {type(anchor).__name__}): not stitchable, missing {missing}")
    stitchable = [cast(StitchAnchor, a) for a in anchors]  # each has the whole API (checked just above)
    ref = stitchable[0].stitch_signature()
    for i, other in enumerate(stitchable[1:], start=1):
        sig = other.stitch_signature()
        for key in ["family"] + [k for k in ref if k != "family"]:
            if sig.get(key) != ref[key]:
                raise ValueError(
                    f"anchor {i} ({names[i]}): {key} {sig.get(key)!r} does not match "
                    f"anchor 0 ({names[0]})'s {ref[key]!r}"
                )
    return stitchable


def anchor_space(
    anchors: Sequence[nn.Module], names: Sequence[str] | None = None, nearest: bool = True,
    kernel_size: int = 2, stride: int = 1, name: str = "snnet",
) -> StitchSpace:
    """The stitch space of ``anchors`` (ordered small -> large); checks they can be stitched."""
    stitchable = check_compatible(anchors, names)
    stages = tuple(tuple(a.stage_depths) for a in stitchable)
    return StitchSpace(
        depths=tuple(len(a.blocks) for a in stitchable), names=tuple(names or ()),
        stage_depths=stages if any(len(s) > 1 for s in stages) else None,
        nearest=nearest, kernel_size=kernel_size, stride=stride, name=name,
    )


class SNNet(nn.Module):
    """Anchors + stitching layers; ``forward`` runs the active configuration only.

    ``space`` is an SN-Net :class:`StitchSpace` or an SN-Netv2 :class:`StitchSpaceV2`.
    ``layer_factory(in_dim, out_dim, kind)`` builds each stitching layer (default
    :class:`StitchingLayer`; e.g. ``functools.partial(LowRankStitchingLayer, rank=8)``).

    The positions of one window share its layer (key ``"a_b_w"``) when they need the same
    widths. A bottleneck ResNet's stem is 4x narrower than its stage-0 blocks (resnet50: 64 vs
    256), so entering its block 0 and its block 1 from one window needs two widths: positions
    whose ``(in, out)`` widths differ from the window's first position's get one layer per width
    pair, keyed ``"a_b_w_INxOUT"``. Windows of equal widths (every other anchor pair) are as before.
    """

    def __init__(
        self, anchors: Sequence[nn.Module], space: StitchSpace | StitchSpaceV2,
        layer_factory: Callable[[int, int, LayerKind], StitchingLayer] | None = None,
    ) -> None:
        super().__init__()
        stitchable = check_compatible(anchors, space.names if len(space.names) == len(anchors) else None)
        if len(anchors) != space.num_anchors:
            raise ValueError(f"snnet 'space': has {space.num_anchors} anchors, got {len(anchors)} models")
        for i, anchor in enumerate(stitchable):
            if tuple(anchor.stage_depths) != space.stages_of(i):
                raise ValueError(
                    f"snnet 'space': anchor {i} ({space.names[i]}) has stage depths {list(anchor.stage_depths)}, "
                    f"space expects {list(space.stages_of(i))}"
                )
        self.space = space
        self.anchors = nn.ModuleList(anchors)
        self.stitch_layers = nn.ModuleDict()
        self._specs = {spec.key: spec for spec in space.stitching_layers()}
        make_layer = layer_factory if layer_factory is not None else StitchingLayer
        # (window key, j, k) -> key of the layer that position uses; windows split by widths
        self._position_keys: dict[tuple[str, int, int], str] = {}
        self._split_windows: dict[str, list[tuple[int, int]]] = {}
        for key, spec in self._specs.items():
            front, end = stitchable[spec.in_anchor].feature_dims, stitchable[spec.out_anchor].feature_dims
            first = (front[spec.positions[0][0] + 1], end[spec.positions[0][1]])
            for j, k in spec.positions:
                dims = (front[j + 1], end[k])
                layer_key = key if dims == first else f"{key}_{dims[0]}x{dims[1]}"
                self._position_keys[(key, j, k)] = layer_key
                if layer_key not in self.stitch_layers:
                    self.stitch_layers[layer_key] = make_layer(
                        dims[0], dims[1], stitchable[spec.in_anchor].stitch_layer_kind
                    )
                    if layer_key != key:
                        self._split_windows.setdefault(key, [first]).append(dims)
        self._active = space.config(0)
        #: per anchor: its head was freshly initialised on load (another class count, or
        #: ``reset_head``); such a head trains at the stitching layers' rate (:meth:`param_groups`)
        self.new_heads: tuple[bool, ...] = (False,) * len(anchors)

    @classmethod
    def from_anchors(
        cls, anchors: Sequence[nn.Module], names: Sequence[str] | None = None, **space_kwargs: Any
    ) -> SNNet:
        return cls(anchors, anchor_space(anchors, names, **space_kwargs))

    def anchor(self, index: int) -> StitchAnchor:
        """Anchor ``index`` (``self.anchors[index]``), typed by its stitching API."""
        return cast(StitchAnchor, self.anchors[index])  # __init__ checked every anchor has the API

    # ----------------------------------------------------------------- active configuration
    @property
    def active(self) -> StitchConfig:
        return self._active

    def set_active(self, config: StitchConfig | int) -> StitchConfig:
        """Make ``config`` (or the config with that id) the path ``forward`` runs."""
        if config is None:
            raise ValueError(f"set_active: expected a StitchConfig or an id in 0..{len(self.space) - 1}, got None")
        self._active = self.resolve(config)
        return self._active

    def sample_active(self, rng: random.Random) -> StitchConfig:
        """Activate a uniformly drawn configuration (one draw per training step, SN-Net style)."""
        return self.set_active(self.space.sample(rng))

    def active_config(self) -> dict[str, Any]:
        return self._active.to_json()

    def stitching_layer(
        self, in_anchor: int, out_anchor: int, window: int, position: tuple[int, int] | None = None
    ) -> StitchingLayer:
        """The layer of window ``window`` of ``in_anchor -> out_anchor``; ``position`` ``(j, k)``
        picks among the layers of a window split by widths (see :class:`SNNet`), and is needed there."""
        key = f"{in_anchor}_{out_anchor}_{window}"
        if position is not None:
            layer_key = self._position_keys.get((key, *position))
            if layer_key is None:
                raise ValueError(f"snnet: position {tuple(position)} is not in stitching window {key}")
            key = layer_key
        elif key in self._split_windows:
            raise ValueError(
                f"snnet: stitching window {key} has one layer per width pair {self._split_windows[key]}; "
                "pass the position (j, k)"
            )
        layer = self.stitch_layers[key]
        return cast(StitchingLayer, layer)  # every entry was built by a StitchingLayer factory in __init__

    # ----------------------------------------------------------------- forward
    def forward_route(self, x: torch.Tensor, config: StitchConfig) -> torch.Tensor:
        """Logits of ``config``'s path: first anchor's embedding, blocks and stitching layers
        along the route, last anchor's norm + head."""
        route = config.route
        x = self.anchor(route[0].anchor).embed(x)
        for i, seg in enumerate(route):
            if i > 0:
                prev = route[i - 1]
                x = self.stitching_layer(prev.anchor, seg.anchor, config.windows[i - 1], (prev.last, seg.first))(x)
            x = self.anchor(seg.anchor).forward_blocks(x, seg.first, seg.last + 1)
        return self.anchor(route[-1].anchor).forward_norm_head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_route(x, self._active)

    # ----------------------------------------------------------------- least-squares init
    @torch.no_grad()
    def init_stitching_layers(self, x: torch.Tensor, only: Collection[str] | None = None) -> None:
        """Least-squares init of every stitching layer from one batch (SN-Net's
        ``initialize_stitching_weights``), averaged over the positions sharing a layer.

        Anchors run in eval mode here (no drop path, BatchNorm running statistics), so the
        fit matches what the stitched path sees at inference. ``only`` limits the fit to
        those keys of ``stitch_layers`` (the rest stay as they are).
        """
        if only is not None:
            unknown = sorted(set(only) - set(self.stitch_layers.keys()))
            if unknown:
                raise ValueError(f"init_stitching_layers 'only': unknown stitching layers {unknown}")
        specs = [s for s in self._specs.values()
                 if only is None or any(self._position_keys[(s.key, j, k)] in only for j, k in s.positions)]
        used = sorted({s.in_anchor for s in specs} | {s.out_anchor for s in specs})
        modes = [a.training for a in self.anchors]
        try:
            self.anchors.eval()
            feats = {a: self.anchor(a).block_features(x) for a in used}
        finally:
            for anchor, mode in zip(self.anchors, modes):
                anchor.train(mode)
        # one pseudo-inverse per front activation, shared by every target that uses it
        targets: dict[tuple[int, int], list[tuple[str, int, int]]] = {}
        for spec in specs:
            for j, k in spec.positions:
                layer_key = self._position_keys[(spec.key, j, k)]
                if only is None or layer_key in only:
                    targets.setdefault((spec.in_anchor, j), []).append((layer_key, spec.out_anchor, k))
        sums: dict[str, list[torch.Tensor]] = {}
        counts: dict[str, int] = {}
        for (a, j), wanted in targets.items():
            front = feats[a][j + 1]
            pinv = augmented_pinv(front)
            for key, end, k in wanted:
                w, b = least_squares_fit(front, feats[end][k], pinv=pinv)
                if key in sums:
                    sums[key][0] += w
                    sums[key][1] += b
                else:
                    sums[key] = [w, b]
                counts[key] = counts.get(key, 0) + 1
        for key, (w, b) in sums.items():
            layer = cast(StitchingLayer, self.stitch_layers[key])  # built by a StitchingLayer factory in __init__
            layer.set_weight_bias(w / counts[key], b / counts[key])

    # ----------------------------------------------------------------- parameters
    def anchor_parameters(self) -> list[nn.Parameter]:
        return list(self.anchors.parameters())

    def stitch_parameters(self) -> list[nn.Parameter]:
        return list(self.stitch_layers.parameters())

    def new_head_parameters(self) -> list[nn.Parameter]:
        """The parameters of the freshly initialised heads (anchors flagged in :attr:`new_heads`)."""
        if len(self.new_heads) != len(self.anchors):
            raise ValueError(f"snnet 'new_heads': expected one flag per anchor ({len(self.anchors)}), "
                             f"got {list(self.new_heads)}")
        params: list[nn.Parameter] = []
        for anchor, new in zip(self.anchors, self.new_heads):
            if new:
                head = anchor.head if hasattr(anchor, "head") else getattr(anchor, "fc", None)  # ViT / ResNet
                if not isinstance(head, nn.Module):
                    raise ValueError(f"snnet 'new_heads': anchor {type(anchor).__name__} has no 'head' or 'fc'")
                params += list(head.parameters())
        return params

    def param_groups(self, anchor_lr: float, stitch_lr: float) -> list[dict[str, Any]]:
        """Optimizer groups: anchors at ``anchor_lr`` (SN-Net: lower), stitching layers at ``stitch_lr``.

        Freshly initialised heads (:attr:`new_heads`) are new layers, not pretrained weights: they
        leave the anchors' group for a third group ``"new_heads"`` at ``stitch_lr`` (only when
        there is one, so runs without a new head keep the two groups).
        """
        fresh = self.new_head_parameters()
        skip = {id(p) for p in fresh}
        groups = [
            {"params": [p for p in self.anchor_parameters() if id(p) not in skip], "lr": anchor_lr, "name": "anchors"},
            {"params": self.stitch_parameters(), "lr": stitch_lr, "name": "stitch_layers"},
        ]
        if fresh:
            groups.append({"params": fresh, "lr": stitch_lr, "name": "new_heads"})
        return groups

    def num_params(self, config: StitchConfig | int | None = None) -> int:
        """Parameters on a configuration's path (default: the active one), as exported: a
        low-rank stitching layer counts as the plain layer it merges into (its ``transform``)."""
        config = self.resolve(config)
        total = sum(p.numel() for p in self.anchor(config.route[0].anchor).export_embed().parameters())
        total += sum(p.numel() for p in self.anchor(config.route[-1].anchor).export_tail().parameters())
        for seg in config.route:
            blocks = self.anchor(seg.anchor).blocks[seg.first:seg.last + 1]
            total += sum(p.numel() for blk in blocks for p in blk.parameters())
        for a, b, j, k, w in config.junctions():
            total += sum(p.numel() for p in self.stitching_layer(a, b, w, (j, k)).transform.parameters())
        return total

    def resolve(self, config: StitchConfig | int | None) -> StitchConfig:
        """A validated config from a config, an id, or ``None`` (the active one)."""
        if config is None:
            return self._active
        if isinstance(config, StitchConfig):
            self.space.validate(config)
            return config
        return self.space.config(config)

    # ----------------------------------------------------------------- export
    def export_active(self, preserve_weight: bool = True) -> StitchedModel:
        """A standalone module for the active path (weights copied unless ``preserve_weight``
        is False, which gives a freshly initialised model of the same shape)."""
        cfg = stitched_model_config(self)
        if not preserve_weight:
            return build_stitched_model(cfg)
        anchors = {seg.anchor: self.anchor(seg.anchor) for seg in self._active.route}
        stitches = [_plain_copy(self.stitching_layer(a, b, w, (j, k))) for a, b, j, k, w in self._active.junctions()]
        model = _assemble(cfg, anchors, stitches, copy_blocks=True)
        return model.train(self.training)


def _plain_copy(layer: StitchingLayer) -> StitchingLayer:
    """A standalone copy of a stitching layer; a low-rank layer becomes a plain one with the
    update merged (its ``to_plain``), so exports rebuild with :func:`build_stitched_model`."""
    to_plain = getattr(layer, "to_plain", None)
    return to_plain() if callable(to_plain) else copy.deepcopy(layer)


def stitched_model_config(snnet: SNNet, config: StitchConfig | int | None = None) -> dict[str, Any]:
    """JSON-able description of one configuration's standalone model (no weights)."""
    config = snnet.resolve(config)
    space = snnet.space
    family = snnet.anchor(0).stitch_signature()["family"]
    segments = [
        {"anchor": s.anchor, "name": space.names[s.anchor], "first": s.first, "last": s.last,
         "model": snnet.anchor(s.anchor).config}
        for s in config.route
    ]
    stitches = []
    for a, b, j, k, w in config.junctions():
        layer = snnet.stitching_layer(a, b, w, (j, k))
        stitches.append({"in_anchor": a, "out_anchor": b, "window": w, "in_dim": layer.in_dim,
                         "out_dim": layer.out_dim, "kind": layer.kind})
    return {
        "kind": "stitch", "format_version": STITCHED_FORMAT_VERSION, "family": family,
        "space": space.name, "config_id": config.id, "description": space.describe(config),
        "segments": segments, "stitches": stitches,
    }


def _field(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data or not isinstance(data[key], kind) or isinstance(data[key], bool) and kind is int:
        expected = getattr(kind, "__name__", kind)
        raise ValueError(f"stitched model config {where}'{key}': expected {expected}, got {data.get(key)!r}")
    return data[key]


def build_stitched_model(config: dict[str, Any]) -> StitchedModel:
    """Rebuild (freshly initialised) the model described by :func:`stitched_model_config`;
    load its state dict to get the exported weights back."""
    if not isinstance(config, dict):
        raise ValueError(f"stitched model config: expected a JSON object, got {type(config).__name__}")
    if config.get("kind") != "stitch":
        raise ValueError(f"stitched model config 'kind': expected 'stitch', got {config.get('kind')!r}")
    if config.get("format_version") != STITCHED_FORMAT_VERSION:
        raise ValueError(
            f"stitched model config 'format_version': expected {STITCHED_FORMAT_VERSION}, "
            f"got {config.get('format_version')!r}"
        )
    segments = _field(config, "segments", list, "")
    stitches = _field(config, "stitches", list, "")
    if not segments or len(stitches) != len(segments) - 1:
        raise ValueError(
            f"stitched model config 'stitches': expected {max(len(segments) - 1, 0)} (one per junction), "
            f"got {len(stitches)}"
        )
    anchors: dict[int, AnchorModel] = {}
    for i, seg in enumerate(segments):
        if not isinstance(seg, dict):
            raise ValueError(f"stitched model config 'segments[{i}]': expected an object, got {seg!r}")
        idx = _field(seg, "anchor", int, f"segments[{i}].")
        if idx not in anchors:
            anchors[idx] = build_anchor(_field(seg, "model", dict, f"segments[{i}]."))
    layers = []
    for i, st in enumerate(stitches):
        if not isinstance(st, dict):
            raise ValueError(f"stitched model config 'stitches[{i}]': expected an object, got {st!r}")
        where = f"stitches[{i}]."
        layers.append(StitchingLayer(
            _field(st, "in_dim", int, where), _field(st, "out_dim", int, where), _field(st, "kind", str, where)
        ))
    return _assemble(config, anchors, layers, copy_blocks=False)


def _assemble(
    config: dict[str, Any], anchors: Mapping[int, StitchAnchor], stitches: list[StitchingLayer], copy_blocks: bool
) -> StitchedModel:
    take = copy.deepcopy if copy_blocks else (lambda m: m)
    segs = config["segments"]
    blocks = []
    for i, seg in enumerate(segs):
        anchor = anchors[seg["anchor"]]
        first, last = _field(seg, "first", int, f"segments[{i}]."), _field(seg, "last", int, f"segments[{i}].")
        if not 0 <= first <= last < len(anchor.blocks):
            raise ValueError(
                f"stitched model config 'segments[{i}]': blocks {first}..{last} "
                f"outside 0..{len(anchor.blocks) - 1}"
            )
        blocks.append([take(b) for b in anchor.blocks[first:last + 1]])
    embed = anchors[segs[0]["anchor"]].export_embed()
    tail = anchors[segs[-1]["anchor"]].export_tail()
    return StitchedModel(embed, blocks, stitches, tail, config)


class StitchedModel(nn.Module):
    """One stitched path as a plain module: embedding, block segments joined by stitching
    layers, and the last anchor's norm + head. No switching logic, no unused anchors."""

    def __init__(
        self, embed: nn.Module, segments: Sequence[Sequence[nn.Module]], stitch_layers: Sequence[StitchingLayer],
        tail: StitchTail, config: dict[str, Any],
    ) -> None:
        super().__init__()
        if len(stitch_layers) != len(segments) - 1:
            raise ValueError(
                f"stitched model: {len(segments)} segments need {len(segments) - 1} stitching layers, "
                f"got {len(stitch_layers)}"
            )
        self.embed = embed
        self.segments = nn.ModuleList(nn.ModuleList(seg) for seg in segments)
        self.stitch_layers = nn.ModuleList(stitch_layers)
        self.tail = tail
        self._config = copy.deepcopy(config)

    @property
    def config(self) -> dict[str, Any]:
        """The JSON-able config :func:`build_stitched_model` rebuilds this model from."""
        return copy.deepcopy(self._config)

    def forward_intermediates(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Final features plus every block output along the path (before any stitching layer)."""
        x = self.embed(x)
        inter = []
        for i, seg in enumerate(self.segments):
            if i > 0:
                x = self.stitch_layers[i - 1](x)
            for blk in cast(nn.ModuleList, seg):  # __init__ builds every segment as a ModuleList
                x = blk(x)
                inter.append(x)
        return self.tail.forward_norm(x), inter

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for i, seg in enumerate(self.segments):
            if i > 0:
                x = self.stitch_layers[i - 1](x)
            for blk in cast(nn.ModuleList, seg):  # __init__ builds every segment as a ModuleList
                x = blk(x)
        return self.tail.forward_norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.tail.forward_head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


__all__ = [
    "SNNet", "StitchedModel", "anchor_space", "build_anchor", "build_stitched_model",
    "check_compatible", "stitched_model_config",
]
