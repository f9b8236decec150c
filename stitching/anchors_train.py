"""Anchor families for stitching: train one offline, and find anchors on disk again.

SN-Net stitches pretrained anchors (DeiT-Ti/S/B). To run everything without downloads, a
*family* of three presets (small -> large) is trained here on the embedded data, each anchor
on its own, and saved as a timm-format state dict (``<name>.pth``) next to a manifest,
``anchors.json``::

    {"format": "stitchnas.anchors", "format_version": 1, "family": "vit_digits",
     "data": {...DataSpec...}, "train": {...}, "overrides": {...},
     "anchors": [{"name": "vit_digits_tiny", "preset": "vit_digits_tiny",
                  "config": {...constructor arguments, with "family"...},
                  "file": "vit_digits_tiny.pth", "sha256": "...", "val_acc": 91.2,
                  "test_acc": 90.8, "flops": 1234567, "params": 23456}, ...]}

Later commands read anchors from such a folder (a hand-written manifest works too: only
``name``, ``config`` and ``file`` are required), or from local timm checkpoints given as
``preset=path`` pairs. Anchors train on ``search_train`` only: ``search_val`` ranks the
stitched configurations later and must stay unseen.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from stitching.cnn import RESNET_PRESETS, create_resnet
from stitching.flops import anchor_flops
from stitching.snnet import build_anchor
from stitching.trainer import StitchTrainConfig, train_network
from stitching.vit import VIT_PRESETS, create_vit, load_checkpoint
from stitchnas.data import DataSpec, DataSplits, load_data
from stitchnas.io import atomic_torch_save, atomic_write_json, file_sha256, read_json, read_versioned_json
from stitchnas.runs import prepare_run_dir
from supernet.evaluation import accuracy

log = logging.getLogger(__name__)

MANIFEST_FILE = "anchors.json"
MANIFEST_FORMAT = "stitchnas.anchors"
MANIFEST_VERSION = 1

FAMILIES: dict[str, tuple[str, ...]] = {
    "vit_digits": ("vit_digits_tiny", "vit_digits_small", "vit_digits_base"),
    "resnet_digits": ("resnet_digits_tiny", "resnet_digits_small", "resnet_digits_base"),
}
# Anchors train from scratch: a short warm-up keeps AdamW from blowing up the small ViTs.
DEFAULT_ANCHOR_TRAIN = StitchTrainConfig(epochs=30, lr=2e-3, warmup_epochs=2)


def create_anchor(preset: str, **overrides: Any) -> nn.Module:
    """A ViT or ResNet preset by name; an unknown name lists every known one."""
    try:
        if preset in VIT_PRESETS:
            return create_vit(preset, **overrides)
        if preset in RESNET_PRESETS:
            return create_resnet(preset, **overrides)
    except TypeError as err:  # an override the preset's constructor does not take
        raise ValueError(f"anchor preset {preset!r}: bad overrides {sorted(overrides)} ({err})") from None
    known = sorted(VIT_PRESETS) + sorted(RESNET_PRESETS)
    raise ValueError(f"anchor preset {preset!r}: unknown, expected one of {known}")


@dataclass(frozen=True)
class AnchorRef:
    """An anchor on disk: its name, constructor config (with ``family``) and weights file."""

    name: str
    config: Mapping[str, Any]
    path: str
    sha256: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "config": dict(self.config), "path": self.path, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: Any) -> "AnchorRef":
        if not isinstance(data, dict) or not {"name", "config", "path"} <= set(data):
            raise ValueError(f"anchor reference: expected an object with name, config and path, got {data!r}")
        return cls(str(data["name"]), dict(data["config"]), str(data["path"]), str(data.get("sha256", "")))


@dataclass(frozen=True)
class AnchorTrainConfig:
    """What ``stitchnas anchors train`` does: train every preset of ``family`` on ``data``.

    ``overrides`` change the presets (e.g. ``{"depth": 4}`` for quick tests); input size,
    channels and classes always come from the data.
    """

    family: str = "vit_digits"
    data: DataSpec = field(default_factory=DataSpec)
    train: StitchTrainConfig = DEFAULT_ANCHOR_TRAIN
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"anchor family {self.family!r}: unknown, expected one of {sorted(FAMILIES)}")
        if self.train.epochs < 1:
            raise ValueError(f"anchor training 'epochs': expected >= 1, got {self.train.epochs}")
        object.__setattr__(self, "overrides", dict(self.overrides))

    def to_json(self) -> dict[str, Any]:
        return {"kind": "anchors", "family": self.family, "data": asdict(self.data),
                "train": self.train.to_json(), "overrides": dict(self.overrides)}


def data_overrides(data: DataSplits) -> dict[str, Any]:
    return {"img_size": data.input_size, "in_chans": data.in_chans, "num_classes": data.num_classes}


def train_anchors(
    cfg: AnchorTrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> list[AnchorRef]:
    """Train every anchor of ``cfg.family`` into ``out_dir`` (see the module docstring).

    The manifest is rewritten after each anchor, so with ``resume=True`` finished anchors are
    skipped and an interrupted one continues from its last epoch checkpoint.
    """
    data = load_data(cfg.data)
    presets = FAMILIES[cfg.family]
    for preset in presets:  # bad overrides fail here, before the folder is claimed
        create_anchor(preset, **{**data_overrides(data), **cfg.overrides})
    out = prepare_run_dir(out_dir, cfg.to_json(), resume)
    log.info("data: %s", data.describe())
    manifest_path = out / MANIFEST_FILE
    manifest = read_json(manifest_path, "anchors manifest") if manifest_path.exists() else {
        "format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "family": cfg.family,
        "data": asdict(cfg.data), "train": cfg.train.to_json(), "overrides": dict(cfg.overrides), "anchors": [],
    }
    done = {entry["name"]: entry for entry in manifest["anchors"]}
    entries = []
    for i, preset in enumerate(presets):
        weights = out / f"{preset}.pth"
        if preset in done and weights.exists():
            log.info("anchor %s: already trained (%s), skipped", preset, weights)
            entries.append(done[preset])
            continue
        torch.manual_seed(cfg.train.seed * 1000 + i)  # init independent of which anchors were skipped
        model = create_anchor(preset, **{**data_overrides(data), **cfg.overrides})
        ckpt = out / f"{preset}.train.pt"
        start = time.perf_counter()
        train_network(model, data.search_train, cfg.train, checkpoint_path=ckpt, resume=resume,
                      desc=f"anchor {preset}", progress=progress, on_step=on_step)
        seconds = time.perf_counter() - start
        atomic_torch_save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, weights)
        entry = {
            "name": preset, "preset": preset, "config": model.config, "file": weights.name,
            "sha256": file_sha256(weights), "flops": anchor_flops(model).total,
            "params": sum(p.numel() for p in model.parameters()),
            "val_acc": accuracy(model, data.search_val, device=cfg.train.device),
            "test_acc": accuracy(model, data.test, device=cfg.train.device),
            "train_seconds": round(seconds, 2),
        }
        entries.append(entry)
        manifest["anchors"] = entries + [done[p] for p in presets[i + 1:] if p in done]
        atomic_write_json(manifest_path, manifest)
        ckpt.unlink(missing_ok=True)  # the .pth holds the result; the epoch checkpoint is spent
        log.info("anchor %s: val %.2f%%, test %.2f%% -> %s", preset, entry["val_acc"], entry["test_acc"], weights)
    manifest["anchors"] = entries
    atomic_write_json(manifest_path, manifest)
    log.info("anchors manifest: %s", manifest_path.resolve())
    return read_anchor_folder(out)


# --------------------------------------------------------------------------- finding anchors
def read_anchor_folder(folder: str | Path) -> list[AnchorRef]:
    """The anchors listed in ``folder/anchors.json``, in manifest order (small -> large)."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE if folder.is_dir() or not folder.suffix else folder
    if not path.exists():
        raise ValueError(f"anchors manifest {path}: file not found (train anchors with 'stitchnas anchors train')")
    manifest = read_versioned_json(path, "anchors manifest", MANIFEST_FORMAT, MANIFEST_VERSION)
    entries = manifest.get("anchors")
    if not isinstance(entries, list) or len(entries) < 2:
        raise ValueError(f"anchors manifest {path}: 'anchors' must list at least 2 anchors, got {entries!r}")
    refs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict) or "file" not in entry:
            raise ValueError(f"anchors manifest {path}: anchors[{i}] needs 'name', 'config' and 'file'")
        weights = (path.parent / entry["file"]).resolve()
        name = str(entry.get("name", entry.get("preset", f"anchor{i}")))
        refs.append(AnchorRef(name, dict(entry["config"]), str(weights), _sha_if_exists(weights)))
    return refs


def anchor_refs_from_files(items: Sequence[tuple[str, str]], input_size: int | None = None) -> list[AnchorRef]:
    """Anchors given as ``(preset, checkpoint path)`` pairs (e.g. local timm DeiT files),
    ordered small -> large by FLOPs. ``input_size`` rebuilds the presets at the data's
    resolution (position embeddings are resized on load, as timm does)."""
    if len(items) < 2:
        raise ValueError(f"--anchor: expected at least 2 anchors to stitch, got {len(items)}")
    refs, seen = [], set()
    for preset, path in items:
        overrides = {"img_size": input_size} if input_size is not None else {}
        config = create_anchor(preset, **overrides).config
        name = preset if preset not in seen else f"{preset}:{Path(path).stem}"
        seen.add(preset)
        refs.append(AnchorRef(name, config, str(Path(path).resolve()), _sha_if_exists(Path(path))))
    return sorted(refs, key=lambda r: anchor_flops(dict(r.config)).total)


def _sha_if_exists(path: Path) -> str:
    return file_sha256(path) if path.is_file() else ""  # a missing file is reported on load


def load_anchors(refs: Sequence[AnchorRef]) -> list[nn.Module]:
    """Build every anchor from its config and load its weights strictly (a wrong file fails
    with one line naming it, the first wrong key and both shapes)."""
    anchors = []
    for ref in refs:
        model = build_anchor(dict(ref.config))
        load_checkpoint(model, ref.path)
        anchors.append(model.eval())
    return anchors


def check_anchor_data(anchors: Sequence[nn.Module], names: Sequence[str], data: DataSplits) -> None:
    """Raise ValueError unless every anchor takes the data's images and predicts its classes."""
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
    "AnchorRef", "AnchorTrainConfig", "DEFAULT_ANCHOR_TRAIN", "FAMILIES", "MANIFEST_FILE", "anchor_refs_from_files",
    "check_anchor_data", "create_anchor", "load_anchors", "read_anchor_folder", "train_anchors",
]
