"""Anchors on disk: presets by name, references to weight files, and the ``anchors.json``
manifest that ``stitchnas anchors train`` writes (:mod:`stitchnas.methods.anchors`)::

    {"format": "stitchnas.anchors", "format_version": 1, "family": "vit_digits",
     "data": {...DataSpec...}, "train": {...}, "overrides": {...},
     "anchors": [{"name": "vit_digits_tiny", "preset": "vit_digits_tiny",
                  "config": {...constructor arguments, with "family"...},
                  "file": "vit_digits_tiny.pth", "sha256": "...", "val_acc": 91.2,
                  "test_acc": 90.8, "flops": 1234567, "params": 23456}, ...]}

The manifest is :class:`stitchnas.core.records.AnchorManifest`, decoded strictly. A hand-written
manifest works too (only ``format``, ``format_version`` and each anchor's ``name``, ``config``
and ``file`` are required), and local timm checkpoints can be given as ``preset=path`` pairs
instead.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stitching.checkpoint import (
    AdaptationReport,
    PretrainedCfg,
    clean_state_dict,
    load_checkpoint,
    read_checkpoint,
    unwrap_checkpoint,
)
from stitching.cnn import RESNET_PRESETS, RESNET_PRETRAINED_CFGS, TIMM_RESNET_PRESETS, create_resnet
from stitching.flops import anchor_flops
from stitching.snnet import AnchorModel, StitchAnchor, build_anchor
from stitching.vit import VIT_PRESETS, VIT_PRETRAINED_CFGS, create_vit
from stitchnas.core.io import file_sha256, read_versioned_json
from stitchnas.core.records import ANCHORS_FORMAT, ANCHORS_FORMAT_VERSION, AnchorManifest, from_json, to_json

log = logging.getLogger(__name__)

MANIFEST_FILE = "anchors.json"
MANIFEST_FORMAT = ANCHORS_FORMAT
MANIFEST_VERSION = ANCHORS_FORMAT_VERSION


def create_anchor(preset: str, **overrides: Any) -> AnchorModel:
    """A ViT or ResNet preset by name; an unknown name lists every known one."""
    try:
        if preset in VIT_PRESETS:
            return create_vit(preset, **overrides)
        if preset in RESNET_PRESETS or preset in TIMM_RESNET_PRESETS:
            return create_resnet(preset, **overrides)
    except TypeError as err:  # an override the preset's constructor does not take
        raise ValueError(f"anchor preset {preset!r}: bad overrides {sorted(overrides)} ({err})") from None
    known = sorted(VIT_PRESETS) + sorted(RESNET_PRESETS) + sorted(TIMM_RESNET_PRESETS)
    raise ValueError(f"anchor preset {preset!r}: unknown, expected one of {known}")


def pretrained_cfg(preset: str) -> PretrainedCfg:
    """The preset's pretrained weights' settings (normalisation ``mean``/``std``, None for the
    data's own statistics; input size; classes), as timm's ``pretrained_cfg``."""
    cfgs = {**VIT_PRETRAINED_CFGS, **RESNET_PRETRAINED_CFGS}
    if preset not in cfgs:
        raise ValueError(f"anchor preset {preset!r}: unknown, expected one of {sorted(cfgs)}")
    return cfgs[preset]


@dataclass(frozen=True)
class AnchorRef:
    """An anchor on disk: its name, constructor config (with ``family``) and weights file."""

    name: str
    config: Mapping[str, Any]
    path: str
    sha256: str = ""

    def to_json(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "anchor reference") -> AnchorRef:
        return from_json(cls, data, where)


# --------------------------------------------------------------------------- finding anchors
def read_anchor_manifest(path: str | Path) -> AnchorManifest:
    """An ``anchors.json`` file decoded strictly (any number of anchors, e.g. mid-training).

    Raises:
        ValueError: One line naming the file and the first missing, unknown or mistyped field
            (``anchors manifest X: missing field 'anchors[1].file'``).
    """
    path = Path(path)
    data = read_versioned_json(path, "anchors manifest", MANIFEST_FORMAT, MANIFEST_VERSION)
    return from_json(AnchorManifest, data, f"anchors manifest {path}")


def read_anchor_folder(folder: str | Path) -> list[AnchorRef]:
    """The anchors listed in ``folder/anchors.json``, in manifest order (small -> large).

    An anchor whose manifest entry records a ``sha256`` must still have that file: a weights
    file replaced, truncated or retrained since is refused (one line naming the anchor and the
    file); a missing file is reported when it is loaded.
    """
    folder = Path(folder)
    path = folder / MANIFEST_FILE if folder.is_dir() or not folder.suffix else folder
    if not path.exists():
        raise ValueError(f"anchors manifest {path}: file not found (train anchors with 'stitchnas anchors train')")
    manifest = read_anchor_manifest(path)
    if len(manifest.anchors) < 2:
        raise ValueError(f"anchors manifest {path}: field 'anchors': expected at least 2 anchors to stitch, "
                         f"got {len(manifest.anchors)}")
    refs = []
    for entry in manifest.anchors:
        weights = (path.parent / entry.file).resolve()
        sha = _sha_if_exists(weights)
        if entry.sha256 and sha and sha != entry.sha256.lower():
            raise ValueError(f"anchor {entry.name} file {weights}: changed since it was trained "
                             f"(SHA-256 differs from {path.name})")
        refs.append(AnchorRef(entry.name, dict(entry.config), str(weights), sha))
    return refs


def anchor_refs_from_files(
    items: Sequence[tuple[str, str]],
    input_size: int | None = None,
    in_chans: int | None = None,
    num_classes: int | None = None,
) -> list[AnchorRef]:
    """Anchors given as ``(preset, checkpoint path)`` pairs (e.g. local timm DeiT files),
    ordered small -> large by FLOPs. ``input_size``, ``in_chans`` and ``num_classes`` rebuild the
    presets for the data; the checkpoints are adapted on load as timm does (position embeddings
    resized, the first conv adapted to the channels, a classifier of another class count
    replaced by a fresh one; see :mod:`stitching.checkpoint`). A ViT checkpoint with another
    number of blocks than its preset (``stitchnas anchors train --depth``) rebuilds the preset
    at the checkpoint's depth (logged; the config records it)."""
    if len(items) < 2:
        raise ValueError(f"--anchor: expected at least 2 anchors to stitch, got {len(items)}")
    refs, seen = [], set()
    for preset, path in items:
        wanted = {"img_size": input_size, "in_chans": in_chans, "num_classes": num_classes}
        overrides = {k: v for k, v in wanted.items() if v is not None}
        config = create_anchor(preset, **overrides).config
        depth = checkpoint_vit_depth(path) if config.get("family") == "vit" else None
        if depth is not None and depth != config["depth"]:
            log.info("anchor %s: checkpoint %s has %d blocks, preset %d; building the preset with depth %d",
                     preset, path, depth, config["depth"], depth)
            config = create_anchor(preset, **overrides, depth=depth).config
        name = preset if preset not in seen else f"{preset}:{Path(path).stem}"
        seen.add(preset)
        refs.append(AnchorRef(name, config, str(Path(path).resolve()), _sha_if_exists(Path(path))))
    return sorted(refs, key=lambda r: anchor_flops(dict(r.config)).total)


def checkpoint_vit_depth(path: str | Path) -> int | None:
    """The number of ViT blocks in a checkpoint (its ``blocks.N.`` keys, after unwrapping and
    removing ``module.``-style prefixes); None when the file is missing or has no such keys
    (loading reports it). Raises ValueError (one line naming the file) unless the block indices
    are ``0..N-1``."""
    path = Path(path)
    if not path.is_file():
        return None
    state, _ = unwrap_checkpoint(read_checkpoint(path))
    found = sorted({int(m.group(1)) for k in clean_state_dict(state) if (m := re.match(r"blocks\.(\d+)\.", k))})
    if not found:
        return None
    if found != list(range(len(found))):
        missing = sorted(set(range(found[-1] + 1)) - set(found))
        raise ValueError(f"checkpoint {path}: its 'blocks.N.' keys are not contiguous (blocks {missing} missing of "
                         f"0..{found[-1]}); cannot infer the ViT depth")
    return len(found)


def _sha_if_exists(path: Path) -> str:
    return file_sha256(path) if path.is_file() else ""  # a missing file is reported on load


def load_anchors(refs: Sequence[AnchorRef]) -> list[AnchorModel]:
    """Build every anchor from its config and load its weights strictly (a wrong file fails
    with one line naming it, the first wrong key and both shapes)."""
    return load_anchors_with_reports(refs)[0]


def load_anchors_with_reports(
    refs: Sequence[AnchorRef], reset_head: bool = False
) -> tuple[list[AnchorModel], list[AdaptationReport]]:
    """:func:`load_anchors` plus, per anchor, what loading adapted (new head, adapted input
    channels, resized ``pos_embed``), for the run's provenance (``report.to_json()``).
    ``reset_head``: every anchor gets a fresh head, also of the checkpoint's class count."""
    anchors, reports = [], []
    for ref in refs:
        model = build_anchor(dict(ref.config))
        reports.append(load_checkpoint(model, ref.path, reset_head=reset_head))
        anchors.append(model.eval())
    return anchors, reports


def check_anchor_data(anchors: Sequence[StitchAnchor], names: Sequence[str], data: Any) -> None:
    """Raise ValueError unless every anchor takes the data's images and predicts its classes.

    ``data`` is any object with ``name``, ``in_chans``, ``input_size`` and ``num_classes``
    (:class:`stitchnas.data.DataSplits`)."""
    want = (data.in_chans, data.input_size, data.num_classes)
    for i, (anchor, name) in enumerate(zip(anchors, names)):
        c = anchor.config
        got = (c["in_chans"], c["img_size"], c["num_classes"])
        if got != want:
            raise ValueError(
                f"anchor {i} ({name}): expects {got[0]}x{got[1]}x{got[1]} inputs and {got[2]} classes, "
                f"data {data.name!r} has {want[0]}x{want[1]}x{want[1]} and {want[2]} (check --input-size)"
            )


__all__ = [
    "AnchorRef", "MANIFEST_FILE", "MANIFEST_FORMAT", "MANIFEST_VERSION", "anchor_refs_from_files",
    "check_anchor_data", "checkpoint_vit_depth", "create_anchor", "load_anchors", "load_anchors_with_reports",
    "pretrained_cfg", "read_anchor_folder", "read_anchor_manifest",
]
