"""Exported models: a versioned JSON record plus a weights file that rebuild a plain module.

A model folder holds ``model.json`` and ``model.pt`` (a state dict, loaded with
``weights_only=True``). The record says which *kind* of model it is; each kind registers a
builder that turns the record into an ``nn.Module`` with no search or switching logic, so a
deployment needs nothing but this package and the two files.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, overload

import torch
from torch import nn

from stitchnas.core.checkpoints import load_state_strict
from stitchnas.core.io import atomic_torch_save, atomic_write_json, file_sha256, load_checkpoint, read_versioned_json
from stitchnas.core.records import MODEL_FORMAT, MODEL_FORMAT_VERSION, ModelCard, Provenance, from_json
from stitchnas.core.version import __version__

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
    """An exported model's folder, its ``model.json`` as written and that record decoded."""

    path: Path
    record: dict[str, Any]
    card: ModelCard


def export_model(
    folder: str | Path,
    model: nn.Module,
    kind: str,
    body: dict[str, Any],
    provenance: Provenance | dict[str, Any],
) -> ExportedModel:
    """Write ``model``'s weights and a record (``body`` holds kind-specific fields).

    ``provenance`` is a :class:`~stitchnas.core.records.Provenance` or a dict of its fields; the
    export adds ``stitchnas_version``, ``torch_version`` and ``created``. The record is checked
    against :class:`~stitchnas.core.records.ModelCard` before anything is written. Both files
    are written atomically; the record carries the weights' SHA-256 so a load can tell a
    truncated or swapped weights file from the one that was exported.
    """
    if kind not in BUILDERS:
        raise ValueError(f"model kind {kind!r}: expected one of {sorted(BUILDERS)}")
    folder = Path(folder)
    record_path = folder / RECORD_FILE
    prov = provenance.to_json() if isinstance(provenance, Provenance) else dict(provenance)
    prov.update(stitchnas_version=__version__, torch_version=torch.__version__,
                created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    record = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "kind": kind,
        **body,
        "provenance": prov,
        "weights": WEIGHTS_FILE,
        "weights_sha256": "",  # filled in once the weights are written
    }
    card = from_json(ModelCard, record, f"model config {record_path}")  # a bad body fails before any write
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_FILE
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_torch_save(state, weights)
    record["weights_sha256"] = file_sha256(weights)
    atomic_write_json(record_path, record)
    return ExportedModel(folder, record, replace(card, weights_sha256=record["weights_sha256"]))


def _read(path: str | Path) -> tuple[Path, dict[str, Any], ModelCard]:
    path = Path(path)
    record_path = path / RECORD_FILE if path.is_dir() else path
    if not record_path.exists():
        raise ValueError(f"model config {record_path}: file not found (expected a folder with {RECORD_FILE})")
    record = read_versioned_json(record_path, "model config", MODEL_FORMAT, MODEL_FORMAT_VERSION)
    card = from_json(ModelCard, record, f"model config {record_path}")
    if card.kind not in BUILDERS:
        raise ValueError(
            f"model config {record_path}: field 'kind': {card.kind!r} is unknown, expected one of {sorted(BUILDERS)}"
        )
    return record_path, record, card


def read_model_card(path: str | Path) -> ModelCard:
    """``model.json`` decoded strictly (``path`` is the folder or the file itself).

    Raises:
        ValueError: One line naming the file and the first missing, unknown or mistyped field.
    """
    return _read(path)[2]


def read_model_record(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The model folder and ``model.json`` as a dict, checked like :func:`read_model_card`."""
    record_path, record, _ = _read(path)
    return record_path.parent, record


@overload
def load_model(path: str | Path, device: str | torch.device = ..., return_record: Literal[False] = ...) -> nn.Module:
    ...


@overload
def load_model(
    path: str | Path, device: str | torch.device = ..., *, return_record: Literal[True]
) -> tuple[nn.Module, dict[str, Any]]:
    ...


@overload
def load_model(
    path: str | Path, device: str | torch.device = ..., return_record: bool = ...
) -> nn.Module | tuple[nn.Module, dict[str, Any]]:
    ...


def load_model(
    path: str | Path, device: str | torch.device = "cpu", return_record: bool = False
) -> nn.Module | tuple[nn.Module, dict[str, Any]]:
    """Rebuild an exported model in eval mode (optionally with its record, as a dict).

    Every problem with the folder (a bad ``model.json``, a missing, swapped or mismatched
    weights file) raises one ``ValueError`` line naming the file (and field).
    """
    record_path, record, card = _read(path)
    weights = record_path.parent / card.weights
    if weights.is_dir():
        raise ValueError(f"model config {record_path}: field 'weights': {card.weights!r} is a folder, "
                         "expected the weights file")
    if not weights.exists():
        raise ValueError(f"model weights {weights}: file not found (field 'weights' of {record_path})")
    digest = file_sha256(weights)
    if digest != card.weights_sha256:
        raise ValueError(f"model weights {weights}: SHA-256 {digest[:12]}... does not match the config's "
                         f"{card.weights_sha256[:12]}... (field 'weights_sha256' of {record_path})")
    try:
        model = BUILDERS[card.kind](record)
    except (KeyError, TypeError) as err:
        raise ValueError(f"model config {record_path}: malformed ({type(err).__name__}: {err})") from err
    state = load_checkpoint(weights)  # weights_only=True; one line for a corrupt or refused file
    load_state_strict(model, state, f"model weights {weights}")
    model.to(device).eval()
    return (model, record) if return_record else model


__all__ = [
    "BUILDERS", "MODEL_FORMAT", "MODEL_FORMAT_VERSION", "RECORD_FILE", "WEIGHTS_FILE", "ExportedModel",
    "export_model", "load_model", "read_model_card", "read_model_record",
]
