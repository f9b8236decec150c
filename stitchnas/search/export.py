"""Exported models: a versioned JSON record plus a weights file that rebuild a plain module.

A model folder holds ``model.json`` and ``model.pt`` (a state dict, loaded with
``weights_only=True``). The record says which *kind* of model it is; each kind registers a
builder that turns the record into an ``nn.Module`` with no search or switching logic, so
:func:`load_model` needs nothing but this package and the two files.

Next to them every export writes portable artifacts (:mod:`stitchnas.search.portable`) that a
deployment host loads without this package: ``model.pt2`` (a ``torch.export`` program with a
dynamic batch dimension) and, on request and with the ``onnx`` extra, ``model.onnx``. Which
ones is ``export_model``'s ``formats`` (default :data:`~stitchnas.search.portable.DEFAULT_FORMATS`,
or what an enclosing :func:`export_formats` set); ``model.json`` records their file names and
SHA-256 under ``"artifacts"`` and the input they take (shape, dtype, normalisation) under
``"input"``. Records written before these fields existed load as before.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, overload

import torch
from torch import nn

from stitchnas.core.checkpoints import load_state_strict
from stitchnas.core.io import atomic_torch_save, atomic_write_json, file_sha256, load_checkpoint, read_versioned_json
from stitchnas.core.records import MODEL_FORMAT, MODEL_FORMAT_VERSION, ModelCard, Provenance, from_json
from stitchnas.core.version import __version__
from stitchnas.search.portable import (
    DEFAULT_FORMATS,
    FORMATS,
    ONNX_FILE,
    PT2_FILE,
    InputSpec,
    build_portable,
    parse_formats,
    write_portable,
)

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

_FORMATS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("stitchnas_export_formats",
                                                                          default=DEFAULT_FORMATS)


@contextlib.contextmanager
def export_formats(formats: str | Sequence[str] | None) -> Iterator[tuple[str, ...]]:
    """Within the block, :func:`export_model` calls that do not name ``formats`` write these
    (a comma-separated string or a sequence of :data:`~stitchnas.search.portable.FORMATS`;
    ``None`` keeps the current ones). Yields the parsed formats (``"pt"`` always included).

    Raises:
        ValueError: An unknown format, or ``onnx`` without the onnx extra (one line).
    """
    parsed = _FORMATS.get() if formats is None else parse_formats(formats, "formats")
    token = _FORMATS.set(parsed)
    try:
        yield parsed
    finally:
        _FORMATS.reset(token)


def _model_name(kind: str, body: dict[str, Any], folder: Path) -> str:
    label = body.get("label") or ("[" + ",".join(str(n) for n in body["notation"]) + "]"
                                  if isinstance(body.get("notation"), list) else "")
    return f"{kind} model {label} ({folder})".replace("  ", " ")


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
    *,
    inputs: InputSpec | None = None,
    formats: str | Sequence[str] | None = None,
) -> ExportedModel:
    """Write ``model``'s weights, its portable artifacts and a record (``body`` holds
    kind-specific fields).

    ``provenance`` is a :class:`~stitchnas.core.records.Provenance` or a dict of its fields; the
    export adds ``stitchnas_version``, ``torch_version`` and ``created``. The record is checked
    against :class:`~stitchnas.core.records.ModelCard` before anything is written. Every file
    is written atomically, ``model.json`` last; the record carries the weights' SHA-256 so a
    load can tell a truncated or swapped weights file from the one that was exported.

    Args:
        inputs: What the model takes (:class:`~stitchnas.search.portable.InputSpec`: ``(C, H, W)``
            float32 images and their normalisation), recorded as ``"input"``. Needed by every
            format but ``"pt"``.
        formats: Some of :data:`~stitchnas.search.portable.FORMATS` (a list or a comma-separated
            string); ``"pt"`` is always written. Default: those of an enclosing
            :func:`export_formats`, else ``pt`` and ``pt2``. The portable artifacts are traced
            from the module :func:`load_model` rebuilds from the record and these weights, and
            checked against it (logits within 1e-4 at two batch sizes). Artifacts of another
            format left in ``folder`` by an earlier export are removed.

    Raises:
        ValueError: A bad body or provenance, an unknown kind or format, ``onnx`` without the
            onnx extra, or portable formats without ``inputs`` (one line, nothing written).
        PortableExportError: A ValueError: the model cannot be written in a requested format
            (one line naming the model and the format; ``model.json`` is not written then).
    """
    if kind not in BUILDERS:
        raise ValueError(f"model kind {kind!r}: expected one of {sorted(BUILDERS)}")
    wanted = _FORMATS.get() if formats is None else parse_formats(formats, "formats")
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
    if inputs is not None:
        record["input"] = inputs.to_json()
    card = from_json(ModelCard, record, f"model config {record_path}")  # a bad body fails before any write
    portable = [f for f in wanted if f != "pt"]
    if portable and inputs is None:
        raise ValueError(f"export_model: formats {portable} need 'inputs' (the input shape and normalisation, an "
                         "InputSpec); pass formats=['pt'] for the weights alone")
    weights = folder / WEIGHTS_FILE
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    built = {}
    if portable and inputs is not None:
        # Traced from the module load_model rebuilds, so the artifacts are that module exactly;
        # built and checked before any file is written, so a failure leaves the folder as it was.
        try:
            module = BUILDERS[kind](record)
        except (KeyError, TypeError) as err:
            raise ValueError(f"model config {record_path}: malformed ({type(err).__name__}: {err})") from err
        load_state_strict(module, state, f"model weights {weights}")
        built = build_portable(module, inputs, portable, _model_name(kind, body, folder))
    folder.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state, weights)
    record["weights_sha256"] = file_sha256(weights)
    artifacts = write_portable(folder, built)
    if artifacts:
        record["artifacts"] = artifacts
    atomic_write_json(record_path, record)
    for fmt, file in (("pt2", PT2_FILE), ("onnx", ONNX_FILE)):
        if fmt not in artifacts:  # an earlier export's artifact would no longer match model.pt
            (folder / file).unlink(missing_ok=True)
    return ExportedModel(folder, record, replace(card, weights_sha256=record["weights_sha256"],
                                                 artifacts=artifacts or None))


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
    "BUILDERS", "DEFAULT_FORMATS", "FORMATS", "MODEL_FORMAT", "MODEL_FORMAT_VERSION", "ONNX_FILE", "PT2_FILE",
    "RECORD_FILE", "WEIGHTS_FILE", "ExportedModel", "InputSpec", "export_formats", "export_model", "load_model",
    "read_model_card", "read_model_record",
]
