"""Loading checkpoints trained elsewhere (timm, DeiT, ``torch.save`` of a state dict) into this
project's anchors, adapting them the way timm's ``load_pretrained`` does, one pure function per
concern, and reporting every adaptation so that a run can record it.

Written against timm's code (timm is not a dependency; the behaviour below is reproduced, not
imported):

* :func:`unwrap_checkpoint` -- ``timm/models/_helpers.py::load_state_dict``: the first of
  ``state_dict_ema``, ``model_ema`` (both only when not None and ``use_ema``), ``state_dict``,
  ``model`` found in the file's dict is the state dict.
* :func:`clean_state_dict` -- ``_helpers.py::clean_state_dict``: a ``module.`` (DDP) and then an
  ``_orig_mod.`` (``torch.compile``) prefix is removed from every key.
* :func:`adapt_input_conv` -- ``timm/models/_manipulate.py::adapt_input_conv``: to 1 channel,
  the RGB filters are summed; to C != 3 channels, the RGB filters are repeated ``ceil(C / 3)``
  times, the first C kept and scaled by ``3 / C``; computed in float32, cast back.
* :func:`resample_abs_pos_embed` -- ``timm/layers/pos_embed.py::resample_abs_pos_embed``: prefix
  tokens kept, the grid (square unless ``old_size`` is given) resized with
  ``F.interpolate(mode="bicubic", antialias=True, align_corners=False)`` in float32, cast back.
* :func:`checkpoint_filter_fn` -- ``timm/models/vision_transformer.py::checkpoint_filter_fn``
  (``pos_embed`` resized to the model's grid, ``pre_logits`` dropped, a linear patch embedding
  reshaped to a conv kernel) plus ``_builder.py::load_pretrained``'s adaptations: the first conv
  (``patch_embed.proj`` / ``conv1``) adapted to the model's channels and a classifier (``head`` /
  ``fc``) of another class count replaced by the model's freshly initialised one.

timm ResNet checkpoints (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``fc``) load into
:class:`~stitching.cnn.ResNetAnchor`, whose own names are SN-Net's (``stem.conv``, ``stem.bn``,
``blocks.N``): :func:`timm_resnet_to_anchor` renames them (one to one; see
:func:`anchor_to_timm_resnet` for the other way).

Refused, each with one ``ValueError`` line naming the file, the key and both shapes: another
architecture (a shape no adaptation applies to), a patch-size mismatch (timm's
``checkpoint_filter_fn`` would resample the kernel with ``resample_patch_embed``; this project
does not), missing and unexpected keys, a first conv timm cannot convert, a position grid that
is not square, and a distilled DeiT checkpoint (``dist_token``/``head_dist``): timm loads those
only into ``VisionTransformerDistilled`` (its filter would fail to reshape the 2-prefix-token
``pos_embed`` and its strict load rejects ``dist_token``), and these anchors have no
distillation token.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

#: timm's ``IMAGENET_DEFAULT_MEAN`` / ``IMAGENET_DEFAULT_STD`` (``timm/data/constants.py``): the
#: normalisation of DeiT's and timm's ResNet ImageNet weights.
IMAGENET_DEFAULT_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Wrapper keys in timm's order of precedence; the two EMA ones only with ``use_ema``.
WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
#: Key prefixes timm's ``clean_state_dict`` removes, in its order.
CLEANED_PREFIXES = ("module.", "_orig_mod.")

UNKNOWN_SOURCE = "<state dict>"


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class PretrainedCfg:
    """What a preset's pretrained weights expect (the fields of timm's ``pretrained_cfg`` this
    project uses): ``mean``/``std`` of the input normalisation (``None``: the data's own
    statistics, as for the digits presets), the input size ``(C, H, W)``, the class count, and
    the names of the first conv and the classifier (timm's ``first_conv``/``classifier``)."""

    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    input_size: tuple[int, int, int]
    num_classes: int
    first_conv: str
    classifier: str

    def to_json(self) -> dict[str, Any]:
        return {"mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std),
                "input_size": list(self.input_size), "num_classes": self.num_classes,
                "first_conv": self.first_conv, "classifier": self.classifier}


@dataclass(frozen=True)
class AdaptationReport:
    """What loading one checkpoint changed, for the run's provenance.

    Attributes:
        source: The file (or ``"<state dict>"``).
        wrapper: The wrapper key the weights were under (``"state_dict_ema"``, ``"model_ema"``,
            ``"state_dict"``, ``"model"``), ``""`` for a plain state dict.
        prefixes_removed: Key prefixes removed (``"module."``, ``"_orig_mod."``).
        key_format: ``"native"``, or ``"timm_resnet"`` when timm's ResNet names were mapped.
        head: ``(from_classes, to_classes)`` when the classifier was replaced by the model's
            freshly initialised one (0 = no classifier).
        head_reset: The fresh head was asked for (``reset_head``: same class count, other
            classes), not forced by another class count.
        input_chans: ``(from, to)`` channels of the adapted first conv.
        input_conv_method: How: ``"sum"`` (to 1 channel) or ``"repeat"`` (repeat the RGB filters,
            scale by ``3 / C``).
        pos_embed: ``((old_h, old_w), (new_h, new_w))`` grids of a resized ``pos_embed``.
        dropped: Keys timm drops silently (``pre_logits.*``).
    """

    source: str = UNKNOWN_SOURCE
    wrapper: str = ""
    prefixes_removed: tuple[str, ...] = ()
    key_format: str = "native"
    head: tuple[int, int] | None = None
    head_reset: bool = False
    input_chans: tuple[int, int] | None = None
    input_conv_method: str = ""
    pos_embed: tuple[tuple[int, int], tuple[int, int]] | None = None
    dropped: tuple[str, ...] = ()

    @property
    def adapted(self) -> bool:
        """True when a weight was replaced or changed (not just unwrapped or renamed)."""
        return self.head is not None or self.input_chans is not None or self.pos_embed is not None

    def describe(self) -> list[str]:
        """One line per adaptation (empty when the weights loaded unchanged)."""
        lines = []
        if self.head is not None:
            why = ", --reset-head" if self.head_reset else ""
            lines.append(f"head replaced by a fresh one (from {self.head[0]} to {self.head[1]} classes{why})")
        if self.input_chans is not None:
            how = "summed over the RGB filters" if self.input_conv_method == "sum" else \
                f"RGB filters repeated, scaled by 3/{self.input_chans[1]}"
            lines.append(f"input channels adapted (from {self.input_chans[0]} to {self.input_chans[1]}, {how})")
        if self.pos_embed is not None:
            (oh, ow), (nh, nw) = self.pos_embed
            lines.append(f"pos_embed resized (from a {oh}x{ow} to a {nh}x{nw} grid, bicubic, antialias)")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source, "wrapper": self.wrapper, "prefixes_removed": list(self.prefixes_removed),
            "key_format": self.key_format,
            "head": None if self.head is None else {"from_classes": self.head[0], "to_classes": self.head[1],
                                                    **({"reset": True} if self.head_reset else {})},
            "input_chans": None if self.input_chans is None else {
                "from": self.input_chans[0], "to": self.input_chans[1], "method": self.input_conv_method},
            "pos_embed": None if self.pos_embed is None else {
                "from_grid": list(self.pos_embed[0]), "to_grid": list(self.pos_embed[1])},
            "dropped": list(self.dropped),
        }


# --------------------------------------------------------------------------- timm's helpers
def unwrap_checkpoint(checkpoint: Mapping[str, Any], use_ema: bool = True) -> tuple[dict[str, Any], str]:
    """The state dict inside a checkpoint dict and the wrapper key it was under (``""``: none).

    timm's ``load_state_dict`` precedence: ``state_dict_ema`` then ``model_ema`` (when
    ``use_ema`` and the value is not None), then ``state_dict``, then ``model``. A wrapper key
    whose value is not a dict (e.g. a parameter that happens to be named ``model``) is not one.
    """
    for key in WRAPPER_KEYS:
        if key.endswith("_ema") and not use_ema:
            continue
        value = checkpoint.get(key)
        if isinstance(value, Mapping):
            return dict(value), key
    return dict(checkpoint), ""


def clean_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """timm's ``clean_state_dict``: remove a leading ``module.`` then ``_orig_mod.`` from keys."""
    cleaned = {}
    for key, value in state_dict.items():
        for prefix in CLEANED_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key] = value
    return cleaned


def _prefixes_in(state_dict: Mapping[str, Any]) -> tuple[str, ...]:
    """The prefixes :func:`clean_state_dict` removes from at least one key, in its order."""
    found = set()
    for key in state_dict:
        for prefix in CLEANED_PREFIXES:
            if key.startswith(prefix):
                found.add(prefix)
                key = key[len(prefix):]
    return tuple(p for p in CLEANED_PREFIXES if p in found)


def adapt_input_conv(in_chans: int, conv_weight: torch.Tensor) -> torch.Tensor:
    """timm's ``adapt_input_conv``: a first-conv kernel ``(O, I, kh, kw)`` for ``in_chans`` inputs.

    * ``in_chans == 1``: the sum over the input filters (for ``I > 3``, a space-to-depth stem,
      the sum over each group of 3);
    * ``in_chans != 3``: only from ``I == 3``: the RGB filters repeated ``ceil(in_chans / 3)``
      times, the first ``in_chans`` kept, times ``3 / in_chans``;
    * ``in_chans == 3``: unchanged.

    Computed in float32 and cast back to the kernel's dtype. Raises NotImplementedError where
    timm does (a non-4D weight, ``I != 3`` to more than one channel).
    """
    dtype = conv_weight.dtype
    weight = conv_weight.float()
    if weight.ndim != 4:
        raise NotImplementedError(f"adapt_input_conv: expected a 4-D conv kernel, got {weight.ndim}-D")
    out_ch, in_ch, kh, kw = weight.shape
    if in_chans == 1:
        if in_ch > 3:
            if in_ch % 3:
                raise NotImplementedError(f"adapt_input_conv: {in_ch} input channels is not a multiple of 3")
            weight = weight.reshape(out_ch, in_ch // 3, 3, kh, kw).sum(dim=2)
        else:
            weight = weight.sum(dim=1, keepdim=True)
    elif in_chans != 3:
        if in_ch != 3:
            raise NotImplementedError(f"adapt_input_conv: cannot convert {in_ch} to {in_chans} input channels")
        repeat = int(math.ceil(in_chans / 3))
        weight = weight.repeat(1, repeat, 1, 1)[:, :in_chans, :, :]
        weight = weight * (3 / float(in_chans))
    return weight.to(dtype)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def resample_abs_pos_embed(
    posemb: torch.Tensor,
    new_size: int | Sequence[int],
    old_size: int | Sequence[int] | None = None,
    num_prefix_tokens: int = 1,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> torch.Tensor:
    """timm's ``resample_abs_pos_embed``: resize a ``(1, prefix + H*W, D)`` position embedding.

    The ``num_prefix_tokens`` leading tokens (class, distillation) are kept; the grid, square
    when ``old_size`` is not given, is interpolated to ``new_size`` ``(H, W)`` in float32
    (``F.interpolate(mode=interpolation, antialias=antialias, align_corners=False)``) and cast
    back. Returned unchanged when the token count already matches a square ``new_size`` (timm's
    shortcut, which looks at neither ``old_size`` nor the grid). Raises ValueError when the
    token count is not ``prefix + old_h * old_w``.
    """
    new_h, new_w = _pair(new_size)
    num_pos = posemb.shape[1]
    if new_h * new_w + num_prefix_tokens == num_pos and new_h == new_w:
        return posemb
    num_grid = num_pos - num_prefix_tokens
    if old_size is None:
        side = math.isqrt(max(num_grid, 0))
        old_h, old_w = side, side
    else:
        old_h, old_w = _pair(old_size)
    if num_grid < 1 or old_h * old_w != num_grid:
        shape = "square grid" if old_size is None else f"{old_h}x{old_w} grid"
        raise ValueError(f"pos_embed: {num_grid} patch positions after {num_prefix_tokens} prefix token(s) "
                         f"are not a {shape}")
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    dtype = grid.dtype
    grid = grid.float().reshape(1, old_h, old_w, -1).permute(0, 3, 1, 2)
    align = False if interpolation in ("linear", "bilinear", "bicubic", "trilinear") else None
    grid = F.interpolate(grid, size=(new_h, new_w), mode=interpolation, antialias=antialias, align_corners=align)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(dtype)
    return torch.cat([prefix, grid], dim=1) if num_prefix_tokens else grid


# --------------------------------------------------------------------------- timm ResNet names
_TIMM_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")
_ANCHOR_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_TIMM_STEM = {"conv1.": "stem.conv.", "bn1.": "stem.bn."}


def is_timm_resnet_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """True for timm/torchvision ResNet names (``conv1.weight``, ``layer1.0...``)."""
    return "conv1.weight" in state_dict or any(_TIMM_BLOCK.match(k) for k in state_dict)


def timm_resnet_to_anchor(
    state_dict: Mapping[str, Any], stage_depths: Sequence[int]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Rename timm ResNet keys to :class:`~stitching.cnn.ResNetAnchor`'s and return the renamed
    dict plus ``{anchor key: timm key}`` (for messages).

    ``conv1``/``bn1`` -> ``stem.conv``/``stem.bn``; ``layer{s}.{i}.*`` -> ``blocks.{n}.*`` where
    ``n`` counts the blocks of the earlier stages; ``fc`` stays. A key outside ``stage_depths``
    (e.g. ``layer4`` for a 3-stage anchor) keeps its name, so it is reported as unexpected.
    """
    offsets = [sum(stage_depths[:s]) for s in range(len(stage_depths))]
    out: dict[str, Any] = {}
    names: dict[str, str] = {}
    for key, value in state_dict.items():
        new = key
        m = _TIMM_BLOCK.match(key)
        if m:
            stage, index = int(m.group(1)) - 1, int(m.group(2))
            if 0 <= stage < len(stage_depths) and index < stage_depths[stage]:
                new = f"blocks.{offsets[stage] + index}.{m.group(3)}"
        else:
            for old_prefix, new_prefix in _TIMM_STEM.items():
                if key.startswith(old_prefix):
                    new = new_prefix + key[len(old_prefix):]
        out[new] = value
        names[new] = key
    return out, names


def anchor_to_timm_resnet(state_dict: Mapping[str, Any], stage_depths: Sequence[int]) -> dict[str, Any]:
    """The inverse of :func:`timm_resnet_to_anchor`: an anchor's state dict under timm's names."""
    stage_of = [(s, i) for s, n in enumerate(stage_depths) for i in range(n)]
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        new = key
        m = _ANCHOR_BLOCK.match(key)
        if m and int(m.group(1)) < len(stage_of):
            stage, index = stage_of[int(m.group(1))]
            new = f"layer{stage + 1}.{index}.{m.group(2)}"
        else:
            for timm_prefix, anchor_prefix in _TIMM_STEM.items():
                if key.startswith(anchor_prefix):
                    new = timm_prefix + key[len(anchor_prefix):]
        out[new] = value
    return out


# --------------------------------------------------------------------------- adaptation
def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _adapt_first_conv(
    state: dict[str, Any], key: str, expected: torch.Tensor, source: str, name: str, *, patch: bool
) -> tuple[tuple[int, int] | None, str]:
    """Adapt ``state[key]`` (a first conv) to ``expected``'s input channels, timm's way.

    Changes nothing when the output channels differ (another architecture, refused later).
    ``patch``: a kernel-size difference is a patch-size mismatch (refused here).
    """
    weight = state.get(key)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4 or weight.shape[0] != expected.shape[0]:
        return None, ""
    if weight.shape[-2:] != expected.shape[-2:]:
        if patch:
            raise ValueError(
                f"checkpoint {source}: key {name!r} has shape {_shape(weight)} ({weight.shape[-2]}x{weight.shape[-1]} "
                f"patches), model expects {_shape(expected)} ({expected.shape[-2]}x{expected.shape[-1]} patches): "
                "patch size mismatch (build the preset with the checkpoint's patch_size)"
            )
        return None, ""
    have, want = int(weight.shape[1]), int(expected.shape[1])
    if have == want:
        return None, ""
    try:
        state[key] = adapt_input_conv(want, weight)
    except NotImplementedError:
        raise ValueError(
            f"checkpoint {source}: key {name!r} has shape {_shape(weight)}, model expects {_shape(expected)}: "
            f"cannot adapt {have} input channels to {want} (timm's adapt_input_conv converts 3 to any, any to 1)"
        ) from None
    method = "sum" if want == 1 else "repeat"
    log.info("checkpoint %s: input conv %r adapted from %d to %d channel(s) (%s): %s -> %s", source, name, have,
             want, "summed over the filters" if method == "sum" else f"RGB filters repeated, scaled by 3/{want}",
             _shape(weight), _shape(state[key]))
    return (have, want), method


def _adapt_head(
    state: dict[str, Any], prefix: str, model_state: Mapping[str, torch.Tensor], num_features: int, source: str,
    name: str, force: bool = False,
) -> tuple[int, int] | None:
    """Replace a classifier of another class count by the model's fresh one (timm's
    ``load_pretrained`` pops it and loads non-strictly; the model keeps its initialisation);
    ``force``: of the same class count too (same count, other classes)."""
    wkey, bkey = f"{prefix}.weight", f"{prefix}.bias"
    weight = state.get(wkey)
    model_weight = model_state.get(wkey)
    target = 0 if model_weight is None else int(model_weight.shape[0])
    if weight is None and bkey not in state:
        if model_weight is None:
            return None
        old = 0  # a checkpoint saved without a classifier (num_classes=0)
        old_shape = "none"
    elif isinstance(weight, torch.Tensor) and weight.ndim == 2 and weight.shape[1] == num_features:
        old = int(weight.shape[0])
        if old == target and not (force and model_weight is not None):
            return None
        old_shape = _shape(weight)
    else:
        return None  # not a classifier of this width: the strict check names it
    for key in (wkey, bkey):
        state.pop(key, None)
        if key in model_state:
            state[key] = model_state[key].detach().clone()
    log.info("checkpoint %s: classifier %r replaced by the model's freshly initialised one: %s (%d classes) -> %s "
             "(%d classes)%s", source, name, old_shape, old,
             _shape(model_weight) if model_weight is not None else "none", target,
             " (reset_head: a fresh head asked for)" if force else "")
    return old, target


def _adapt_vit(
    state: dict[str, Any], model: Any, report: AdaptationReport
) -> tuple[dict[str, Any], AdaptationReport]:
    source = report.source
    if "dist_token" in state:
        raise ValueError(
            f"checkpoint {source}: key 'dist_token' with shape {_shape(state['dist_token'])}: a distilled DeiT "
            "checkpoint (dist_token, head_dist); this ViT has no distillation token and timm loads such weights only "
            "into VisionTransformerDistilled (use the non-distilled deit_* weights)"
        )
    expected = model.state_dict()
    dropped = tuple(k for k in state if "pre_logits" in k)  # timm: representation layer, unused
    for key in dropped:
        del state[key]
    key = "patch_embed.proj.weight"
    weight = state.get(key)
    want = expected[key]
    out_ch, _, kh, kw = want.shape
    if isinstance(weight, torch.Tensor) and weight.ndim < 4 and weight.numel() % (out_ch * kh * kw) == 0:
        state[key] = weight.reshape(out_ch, -1, kh, kw)  # timm: a linear patchify -> the conv kernel
    input_chans, method = _adapt_first_conv(state, key, want, source, key, patch=True)
    pos_grid = None
    pos, target = state.get("pos_embed"), expected["pos_embed"]
    if isinstance(pos, torch.Tensor) and pos.ndim == 3 and pos.shape[0] == 1 and pos.shape[2] == target.shape[2] \
            and pos.shape[1] != target.shape[1]:
        grid = model.patch_embed.grid_size
        num_grid = pos.shape[1] - 1
        side = math.isqrt(max(num_grid, 0))
        if num_grid < 1 or side * side != num_grid:
            raise ValueError(
                f"checkpoint {source}: key 'pos_embed' has shape {_shape(pos)}, model expects {_shape(target)}: "
                f"its {num_grid} patch positions (after the class token) are not a square grid"
            )
        state["pos_embed"] = resample_abs_pos_embed(pos, (grid, grid), num_prefix_tokens=1)
        pos_grid = ((side, side), (grid, grid))
        log.info("checkpoint %s: pos_embed resized from a %dx%d to a %dx%d grid (bicubic, antialias): %s -> %s",
                 source, side, side, grid, grid, _shape(pos), _shape(state["pos_embed"]))
    head = _adapt_head(state, "head", expected, model.embed_dim, source, "head", report.head_reset)
    return state, dataclasses.replace(report, head=head, input_chans=input_chans, input_conv_method=method,
                                      pos_embed=pos_grid, dropped=dropped)


def _adapt_resnet(
    state: dict[str, Any], model: Any, report: AdaptationReport
) -> tuple[dict[str, Any], AdaptationReport, dict[str, str]]:
    names: dict[str, str] = {}
    expected = model.state_dict()
    if is_timm_resnet_state_dict(state):
        state, names = timm_resnet_to_anchor(state, model.stage_depths)
        # messages name keys as the file does, missing ones included
        names = {**dict(zip(expected, anchor_to_timm_resnet(expected, model.stage_depths))), **names}
        report = dataclasses.replace(report, key_format="timm_resnet")
    for key, value in expected.items():  # BatchNorm fills a missing counter the same way
        if key.endswith(".num_batches_tracked") and key not in state \
                and key.replace(".num_batches_tracked", ".running_mean") in state:
            state[key] = value.clone()
    key = "stem.conv.weight"
    input_chans, method = _adapt_first_conv(state, key, expected[key], report.source, names.get(key, key),
                                            patch=False)
    width = expected["fc.weight"].shape[1] if "fc.weight" in expected else model.feature_dims[-1]
    head = _adapt_head(state, "fc", expected, int(width), report.source, "fc", report.head_reset)
    return state, dataclasses.replace(report, head=head, input_chans=input_chans, input_conv_method=method), names


def adapt_checkpoint(
    checkpoint: Mapping[str, Any], model: nn.Module, source: str = UNKNOWN_SOURCE, use_ema: bool = True,
    reset_head: bool = False,
) -> tuple[dict[str, Any], AdaptationReport, dict[str, str]]:
    """Unwrap, clean and adapt a checkpoint dict for ``model``; pure (``checkpoint`` is not changed).

    ``reset_head`` replaces the classifier by the model's fresh one even when the class counts
    match (e.g. digits 0-4 -> 5-9); the report's ``head_reset`` records it.

    Returns the state dict to load, the report and ``{model key: checkpoint key}`` for keys that
    were renamed (timm ResNet names), so messages can name the file's key.
    """
    # By the model's family, not isinstance: this module sits below the model modules (they
    # import its helpers), so importing them here would close an import cycle.
    family = getattr(model, "config", {}).get("family") if isinstance(getattr(model, "config", None), dict) else None
    state, wrapper = unwrap_checkpoint(checkpoint, use_ema)
    report = AdaptationReport(source=source, wrapper=wrapper, prefixes_removed=_prefixes_in(state),
                              head_reset=reset_head)
    state = clean_state_dict(state)
    if family == "vit":
        state, report = _adapt_vit(state, model, report)
        return state, report, {}
    if family == "resnet":
        return _adapt_resnet(state, model, report)
    return state, report, {}


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, Any]:
    """timm-style filter: ``state_dict`` (any wrapper) mapped onto ``model`` (see the module
    docstring); pure, returns a new dict (tensors that need no change are the same objects)."""
    return adapt_checkpoint(state_dict, model)[0]


def check_state_dict(
    state: Mapping[str, Any], model: nn.Module, source: str = UNKNOWN_SOURCE, names: Mapping[str, str] | None = None
) -> None:
    """Raise one ValueError line unless ``state`` has exactly ``model``'s keys and shapes: the
    first missing key (in the model's order), wrong shape, or unexpected key, named as in the file."""
    names = names or {}
    expected = model.state_dict()
    for key, value in expected.items():
        name = names.get(key, key)
        if key not in state:
            raise ValueError(f"checkpoint {source}: missing key {name!r} (model expects shape {_shape(value)})")
        got = state[key]
        if not isinstance(got, torch.Tensor) or got.shape != value.shape:
            raise ValueError(f"checkpoint {source}: key {name!r} has shape {_shape(got)}, model expects "
                             f"{_shape(value)} (another architecture?)")
    extra = [k for k in state if k not in expected]
    if extra:
        raise ValueError(f"checkpoint {source}: unexpected key {names.get(extra[0], extra[0])!r} with shape "
                         f"{_shape(state[extra[0]])} (model has no such key)")


def check_finite_state(state: Mapping[str, Any], source: str = UNKNOWN_SOURCE,
                       names: Mapping[str, str] | None = None) -> None:
    """Raise one ValueError line naming the file and the first key whose floating-point tensor
    holds NaN or infinite values: such weights (e.g. saved from a diverged run) would only fail
    later, deep inside a least-squares init or as a NaN loss."""
    names = names or {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise ValueError(f"checkpoint {source}: key {names.get(key, key)!r} holds {bad} non-finite "
                                 f"value(s) (NaN or inf) of {value.numel()}: the weights are broken "
                                 "(saved from a diverged run?)")


# --------------------------------------------------------------------------- files
def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The dict in a local ``.safetensors`` or ``torch.save`` file (read weights-only; timm
    training checkpoints' ``args`` Namespace is allowed). One ValueError line naming the file
    when it is missing, unreadable or not a dict."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path}: file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path))
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or pickled-object file: one line naming it
        kind = "safetensors" if path.suffix == ".safetensors" else "weights-only torch"
        raise ValueError(f"checkpoint {path}: not a readable {kind} file ({type(err).__name__})") from err
    if not isinstance(data, dict):
        raise ValueError(f"checkpoint {path}: expected a state dict, got {type(data).__name__}")
    return data


def load_checkpoint(
    model: nn.Module,
    path: str | Path,
    filter_fn: Callable[[dict[str, Any], nn.Module], Mapping[str, Any]] | None = None,
    use_ema: bool = True,
    reset_head: bool = False,
) -> AdaptationReport:
    """Load a local checkpoint into ``model`` strictly after timm's adaptations; return what was
    adapted (also logged, one INFO line each).

    ``filter_fn(state_dict, model) -> state_dict`` replaces the default adaptation (the file's
    dict is passed as read; the report then lists nothing). Raises ValueError (one line naming
    the file, the first wrong key and both shapes) when the weights do not fit, and (naming the
    key) when a tensor holds NaN or infinite values. ``reset_head``: see :func:`adapt_checkpoint`.
    """
    path = Path(path)
    raw = read_checkpoint(path)
    names: dict[str, str] = {}
    if filter_fn is not None:
        state, report = dict(filter_fn(raw, model)), AdaptationReport(source=str(path))
    else:
        state, report, names = adapt_checkpoint(raw, model, str(path), use_ema, reset_head)
    check_state_dict(state, model, str(path), names)
    check_finite_state(state, str(path), names)
    model.load_state_dict(state)
    return report


__all__ = [
    "IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD", "AdaptationReport", "PretrainedCfg", "adapt_checkpoint",
    "adapt_input_conv", "anchor_to_timm_resnet", "check_finite_state", "check_state_dict", "checkpoint_filter_fn",
    "clean_state_dict", "is_timm_resnet_state_dict", "load_checkpoint", "read_checkpoint", "resample_abs_pos_embed",
    "timm_resnet_to_anchor", "unwrap_checkpoint",
]
