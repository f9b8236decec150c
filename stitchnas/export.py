"""Exported models: a versioned JSON record plus a weights file that rebuild a plain module.

A model folder holds ``model.json`` and ``model.pt`` (a state dict, loaded with
``weights_only=True``). The record says which *kind* of model it is; each kind registers a
builder that turns the record into an ``nn.Module`` with no search or switching logic, so a
deployment needs nothing but this package and the two files.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from stitchnas.io import atomic_torch_save, atomic_write_json, file_sha256, read_versioned_json

MODEL_FORMAT = "stitchnas.model"
MODEL_FORMAT_VERSION = 1
RECORD_FILE = "model.json"
WEIGHTS_FILE = "model.pt"

Builder = Callable[[dict[str, Any]], nn.Module]


def _build_pooling(record: dict[str, Any]) -> nn.Module:
    from searchspace.pooling import PoolingConfig, PoolingSpace
    from supernet.networks import ModelSpec, build_model

    space = PoolingSpace.from_json(record["space"])
    config = PoolingConfig.from_json(record["config"])
    spec = ModelSpec(**record["model"]["spec"])
    return build_model(space, config, spec)


def _build_stitch(record: dict[str, Any]) -> nn.Module:
    from stitching.snnet import build_stitched_model

    return build_stitched_model(record["model"])


BUILDERS: dict[str, Builder] = {"pooling": _build_pooling, "stitch": _build_stitch}


@dataclass(frozen=True)
class ExportedModel:
    path: Path
    record: dict[str, Any]


def export_model(
    folder: str | Path,
    model: nn.Module,
    kind: str,
    body: dict[str, Any],
    provenance: dict[str, Any],
) -> ExportedModel:
    """Write ``model``'s weights and a record (``body`` holds kind-specific fields).

    Both files are written atomically; the record carries the weights' SHA-256 so a load can
    tell a truncated or swapped weights file from the one that was exported.
    """
    if kind not in BUILDERS:
        raise ValueError(f"model kind {kind!r}: expected one of {sorted(BUILDERS)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_FILE
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_torch_save(state, weights)
    from stitchnas import __version__

    record = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "kind": kind,
        **body,
        "provenance": {
            **provenance,
            "stitchnas_version": __version__,
            "torch_version": torch.__version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
        "weights": WEIGHTS_FILE,
        "weights_sha256": file_sha256(weights),
    }
    atomic_write_json(folder / RECORD_FILE, record)
    return ExportedModel(folder, record)


def read_model_record(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Read and validate ``model.json`` (``path`` is the folder or the file itself)."""
    path = Path(path)
    record_path = path / RECORD_FILE if path.is_dir() else path
    if not record_path.exists():
        raise ValueError(f"model config {record_path}: file not found (expected a folder with {RECORD_FILE})")
    record = read_versioned_json(record_path, "model config", MODEL_FORMAT, MODEL_FORMAT_VERSION)
    kind = record.get("kind")
    if kind not in BUILDERS:
        raise ValueError(f"model config {record_path}: 'kind' {kind!r} is unknown, expected one of {sorted(BUILDERS)}")
    for key in ("weights", "weights_sha256", "model"):
        if key not in record:
            raise ValueError(f"model config {record_path}: missing field {key!r}")
    return record_path.parent, record


def load_model(path: str | Path, device: str | torch.device = "cpu", return_record: bool = False):
    """Rebuild an exported model in eval mode (optionally with its record)."""
    folder, record = read_model_record(path)
    weights = folder / record["weights"]
    if not weights.exists():
        raise ValueError(f"model weights {weights}: file not found")
    digest = file_sha256(weights)
    if digest != record["weights_sha256"]:
        raise ValueError(f"model weights {weights}: SHA-256 {digest[:12]}... does not match the config's {record['weights_sha256'][:12]}...")
    try:
        model = BUILDERS[record["kind"]](record)
    except (KeyError, TypeError) as err:
        raise ValueError(f"model config {folder / RECORD_FILE}: malformed ({type(err).__name__}: {err})") from err
    state = torch.load(weights, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise ValueError(f"model weights {weights}: do not fit the config ({' '.join(first[:2])})") from err
    model.to(device).eval()
    return (model, record) if return_record else model
