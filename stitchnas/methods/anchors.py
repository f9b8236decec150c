"""``stitchnas anchors train``: train an anchor family offline on the embedded data and write it
as timm-format state dicts plus an ``anchors.json`` manifest (see :mod:`stitching.anchors` for
the manifest format and for finding anchors on disk again).

SN-Net stitches pretrained anchors (DeiT-Ti/S/B). To run everything without downloads, each
anchor of a family (small -> large) is trained here on its own, on ``search_train`` only:
``search_val`` ranks the stitched configurations later and must stay unseen.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from stitching.anchors import MANIFEST_FILE, AnchorRef, create_anchor, read_anchor_folder, read_anchor_manifest
from stitching.flops import anchor_flops
from stitching.trainer import StitchTrainConfig, train_network
from stitchnas.core.evaluation import accuracy
from stitchnas.core.io import atomic_torch_save, atomic_write_json, file_sha256
from stitchnas.core.records import AnchorEntry, AnchorManifest, from_json, to_json
from stitchnas.core.runs import prepare_run_dir
from stitchnas.data import DataSpec, DataSplits, load_data

log = logging.getLogger(__name__)

FAMILIES: dict[str, tuple[str, ...]] = {
    "vit_digits": ("vit_digits_tiny", "vit_digits_small", "vit_digits_base"),
    "resnet_digits": ("resnet_digits_tiny", "resnet_digits_small", "resnet_digits_base"),
}
# Anchors train from scratch: a short warm-up keeps AdamW from blowing up the small ViTs.
DEFAULT_ANCHOR_TRAIN = StitchTrainConfig(epochs=30, lr=2e-3, warmup_epochs=2)



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

    json_kind: ClassVar[str] = "anchors"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"anchor family {self.family!r}: unknown, expected one of {sorted(FAMILIES)}")
        if self.train.epochs < 1:
            raise ValueError(f"anchor training 'epochs': expected >= 1, got {self.train.epochs}")
        object.__setattr__(self, "overrides", dict(self.overrides))

    def to_json(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "run config") -> AnchorTrainConfig:
        return from_json(cls, data, where)


def data_overrides(data: DataSplits) -> dict[str, Any]:
    return {"img_size": data.input_size, "in_chans": data.in_chans, "num_classes": data.num_classes}


def _unchanged(entry: AnchorEntry, weights: Path) -> bool:
    """Whether ``weights`` is still the file ``entry`` recorded (True when it recorded no SHA-256,
    as a hand-written manifest may: nothing to check against)."""
    return not entry.sha256 or file_sha256(weights) == entry.sha256.lower()


def _warn_if_near_chance(name: str, val_acc: float | None, num_classes: int) -> None:
    """An anchor under twice the chance accuracy did not learn the task: stitching it gives no
    useful models, so say so where the run reports it (the files are still written)."""
    chance = 100.0 / num_classes
    if val_acc is not None and val_acc < 2 * chance:
        log.warning("anchor %s: search_val accuracy %.2f%% is near chance (%.1f%% for %d classes): it did not "
                    "learn the task; retrain it with more --epochs, a lower --lr, or --augment none on small data",
                    name, val_acc, chance, num_classes)


def train_anchors(
    cfg: AnchorTrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> list[AnchorRef]:
    """Train every anchor of ``cfg.family`` into ``out_dir`` (see the module docstring).

    The manifest is rewritten after each anchor, so with ``resume=True`` finished anchors are
    skipped and an interrupted one continues from its last epoch checkpoint. A finished anchor
    whose ``.pth`` no longer has the SHA-256 the manifest recorded is retrained (with a warning;
    the changed file is kept as ``NAME.pth.changed``).
    """
    data = load_data(cfg.data)
    presets = FAMILIES[cfg.family]
    for preset in presets:  # bad overrides fail here, before the folder is claimed
        create_anchor(preset, **{**data_overrides(data), **cfg.overrides})
    out = prepare_run_dir(out_dir, cfg.to_json(), resume)
    log.info("data: %s", data.describe())
    manifest_path = out / MANIFEST_FILE
    manifest = read_anchor_manifest(manifest_path) if manifest_path.exists() else AnchorManifest(
        family=cfg.family, data=cfg.data.to_json(), train=cfg.train.to_json(), overrides=dict(cfg.overrides),
        anchors=(),
    )
    done = {entry.name: entry for entry in manifest.anchors}
    entries: list[AnchorEntry] = []
    for i, preset in enumerate(presets):
        weights = out / f"{preset}.pth"
        if preset in done and weights.exists():
            if _unchanged(done[preset], weights):
                log.info("anchor %s: already trained (%s), skipped", preset, weights)
                entries.append(done[preset])
                continue
            # Not the file anchors.json vouches for (truncated, overwritten): keeping it would
            # hand a broken or foreign anchor to every stitch run. Training is deterministic, so
            # retraining restores the recorded anchor; the changed file is kept aside, not lost.
            aside = weights.with_name(f"{weights.name}.changed")
            weights.replace(aside)
            log.warning("anchor %s: %s changed since it was trained (SHA-256 differs from %s): retraining it; "
                        "the changed file is kept as %s", preset, weights, MANIFEST_FILE, aside)
        torch.manual_seed(cfg.train.seed * 1000 + i)  # init independent of which anchors were skipped
        model = create_anchor(preset, **{**data_overrides(data), **cfg.overrides})
        ckpt = out / f"{preset}.train.pt"
        start = time.perf_counter()
        train_network(model, data.search_train, cfg.train, checkpoint_path=ckpt, resume=resume,
                      desc=f"anchor {preset}", progress=progress, on_step=on_step)
        seconds = time.perf_counter() - start
        atomic_torch_save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, weights)
        entry = AnchorEntry(
            name=preset, preset=preset, config=dict(model.config), file=weights.name,
            sha256=file_sha256(weights), flops=anchor_flops(model).total,
            params=sum(p.numel() for p in model.parameters()),
            val_acc=accuracy(model, data.search_val, device=cfg.train.device),
            test_acc=accuracy(model, data.test, device=cfg.train.device),
            train_seconds=round(seconds, 2),
        )
        entries.append(entry)
        manifest = replace(manifest, anchors=(*entries, *(done[p] for p in presets[i + 1:] if p in done)))
        atomic_write_json(manifest_path, to_json(manifest))
        ckpt.unlink(missing_ok=True)  # the .pth holds the result; the epoch checkpoint is spent
        log.info("anchor %s: val %.2f%%, test %.2f%% -> %s", preset, entry.val_acc, entry.test_acc, weights)
        _warn_if_near_chance(preset, entry.val_acc, data.num_classes)
    manifest = replace(manifest, anchors=tuple(entries))
    atomic_write_json(manifest_path, to_json(manifest))
    log.info("anchors manifest: %s", manifest_path.resolve())
    return read_anchor_folder(out)


__all__ = ["AnchorTrainConfig", "DEFAULT_ANCHOR_TRAIN", "FAMILIES", "data_overrides", "train_anchors"]
