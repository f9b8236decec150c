"""Portable artifacts of an export: a ``torch.export`` program and, optionally, an ONNX file.

An export folder (:mod:`stitchnas.search.export`) always holds ``model.json`` and ``model.pt``,
which only :func:`stitchnas.load_model` turns back into a module. Next to them this module
writes what a deployment host loads without this package:

* ``model.pt2`` (format ``"pt2"``): the module traced by :func:`torch.export.export` with a
  dynamic batch dimension and saved by :func:`torch.export.save`; ``torch.export.load(path)
  .module()`` is a callable taking float32 NCHW images and returning logits.
* ``model.onnx`` (format ``"onnx"``, needs the ``onnx`` extra: ``pip install 'stitchnas[onnx]'``):
  the same program converted by :func:`torch.onnx.export` (dynamo exporter), input ``"input"``
  ``(batch, C, H, W)`` float32, output ``"logits"`` ``(batch, num_classes)``, batch dynamic.

Each artifact is checked before it is kept: the traced program (the ONNX file, reloaded from
its bytes through onnxruntime) must give logits equal to the module's within :data:`TOLERANCE`
(absolute, the logits' own units) at batch sizes :data:`CHECK_BATCHES`; otherwise
:class:`PortableExportError` says which model and format failed, in one line. Files are written
atomically (:func:`stitchnas.core.io.atomic_write_bytes`).

The input a model expects is an :class:`InputSpec` (shape, dtype and the normalisation the data
pipeline applied), recorded in ``model.json`` under ``"input"``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stitchnas.core.io import atomic_write_bytes, file_sha256

PT2_FILE = "model.pt2"
ONNX_FILE = "model.onnx"
#: Every format an export can write; ``"pt"`` (``model.pt``, for ``load_model``) is always written.
FORMATS: tuple[str, ...] = ("pt", "pt2", "onnx")
#: What every export writes unless told otherwise.
DEFAULT_FORMATS: tuple[str, ...] = ("pt", "pt2")
#: Largest absolute difference allowed between an artifact's logits and the module's.
TOLERANCE = 1e-4
#: Batch sizes at which every artifact is compared with the module (two: the batch is dynamic).
CHECK_BATCHES: tuple[int, ...] = (1, 3)
#: What the ``onnx`` format imports, all installed by the ``onnx`` extra.
ONNX_MODULES: tuple[str, ...] = ("onnx", "onnxruntime", "onnxscript")
ONNX_INSTALL = "pip install 'stitchnas[onnx]'"
ONNX_INPUT, ONNX_OUTPUT = "input", "logits"

__all__ = [
    "CHECK_BATCHES", "DEFAULT_FORMATS", "FORMATS", "ONNX_FILE", "ONNX_INSTALL", "PT2_FILE", "TOLERANCE", "InputSpec",
    "Artifact", "PortableExportError", "build_portable", "missing_onnx_modules", "parse_formats", "write_portable",
]


class PortableExportError(ValueError):
    """A model that cannot be written in a requested portable format (one line naming it)."""


@dataclass(frozen=True)
class InputSpec:
    """The input an exported model takes, as a deployer must prepare it.

    Attributes:
        channels, height, width: One image's shape ``(C, H, W)``; the batch dimension is
            dynamic (any size >= 1).
        mean, std: Per-channel normalisation, one value per channel in the data's channel
            order, in pixel units scaled to [0, 1] (8-bit values / 255): the model takes
            ``(pixel - mean[c]) / std[c]``.
        dtype: The tensor dtype (``"float32"``).
    """

    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for key in ("channels", "height", "width"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"input spec '{key}': expected an integer >= 1, got {value!r}")
        mean, std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        if len(mean) != self.channels or len(std) != self.channels:
            raise ValueError(f"input spec 'mean'/'std': expected {self.channels} values each (one per channel), "
                             f"got {len(mean)} and {len(std)}")
        if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
            raise ValueError(f"input spec 'mean'/'std': expected finite values and std > 0, got {mean}/{std}")
        if self.dtype != "float32":
            raise ValueError(f"input spec 'dtype': expected 'float32', got {self.dtype!r}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @classmethod
    def from_data(cls, data: Any) -> InputSpec:
        """The input of models trained on ``data`` (a :class:`~stitchnas.data.DataSplits`):
        ``in_chans x input_size x input_size`` images normalised with the splits' ``mean``/``std``."""
        return cls(int(data.in_chans), int(data.input_size), int(data.input_size), tuple(data.mean),
                   tuple(data.std))

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return (self.channels, self.height, self.width)

    def to_json(self) -> dict[str, Any]:
        """``model.json``'s ``"input"``: shape ``[C, H, W]`` (batch dynamic), dtype, layout and
        the normalisation, with the preprocessing spelled out for a deployer."""
        return {
            "shape": list(self.shape),
            "batch": "dynamic",
            "layout": "NCHW",
            "dtype": self.dtype,
            "normalization": {
                "mean": list(self.mean),
                "std": list(self.std),
                "pixel_range": [0.0, 1.0],
                "preprocess": (f"resize to {self.height}x{self.width}, scale pixels to [0, 1] (8-bit values / 255), "
                               "then x[:, c] = (x[:, c] - mean[c]) / std[c] for every channel c, in the channel "
                               "order of the training data (RGB for colour images)"),
            },
        }

    @classmethod
    def from_json(cls, raw: Any, where: str = "input") -> InputSpec:
        """Inverse of :meth:`to_json`. Raises ValueError naming ``where`` and the field."""
        try:
            norm = raw["normalization"]
            channels, height, width = raw["shape"]
            return cls(channels, height, width, tuple(norm["mean"]), tuple(norm["std"]), raw.get("dtype", "float32"))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: expected {{'shape': [C, H, W], 'normalization': {{'mean': [...], "
                             f"'std': [...]}}}}, got {raw!r} ({err})") from None

    def example(self, batch: int, seed: int = 0) -> torch.Tensor:
        """A reproducible ``(batch, C, H, W)`` float32 input, distributed like normalised images."""
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(batch, *self.shape, generator=generator, dtype=torch.float32)


def missing_onnx_modules() -> list[str]:
    """The modules of the ``onnx`` extra (:data:`ONNX_MODULES`) that cannot be imported."""
    missing = []
    for name in ONNX_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def parse_formats(value: str | Sequence[str], option: str = "--format") -> tuple[str, ...]:
    """The formats of a comma-separated list (or a sequence), in :data:`FORMATS` order, with
    ``"pt"`` always included (``model.pt`` is what ``load_model`` reads).

    Raises:
        ValueError: One line naming ``option``: an empty list, an unknown format, or ``onnx``
            without the ``onnx`` extra installed (with the ``pip install`` that fixes it).
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(item).strip().lower() for item in items]
    if not names or any(not name for name in names):
        raise ValueError(f"{option} {value!r}: expected a comma-separated list of {', '.join(FORMATS)}")
    unknown = [name for name in names if name not in FORMATS]
    if unknown:
        raise ValueError(f"{option} {value!r}: unknown format {unknown[0]!r}, expected a comma-separated list of "
                         f"{', '.join(FORMATS)}")
    if "onnx" in names:
        missing = missing_onnx_modules()
        if missing:
            raise ValueError(f"{option} onnx: needs the onnx extra ({', '.join(missing)} not installed); install it "
                             f"with: {ONNX_INSTALL}")
    return tuple(f for f in FORMATS if f == "pt" or f in names)


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _max_difference(got: Any, want: torch.Tensor) -> float:
    got = torch.as_tensor(got)
    if tuple(got.shape) != tuple(want.shape):
        return math.inf
    return float((got.double() - want.double()).abs().max()) if want.numel() else 0.0


def _check(run: Any, module: nn.Module, inputs: InputSpec, what: str, name: str) -> None:
    """Compare ``run(x)`` with ``module(x)`` at every batch size of :data:`CHECK_BATCHES`."""
    for batch in CHECK_BATCHES:
        x = inputs.example(batch, seed=batch)
        with torch.no_grad():
            want = module(x)
            try:
                got = run(x)
            except Exception as err:  # any failure to run the artifact means it is unusable
                raise PortableExportError(f"{name}: the {what} fails at batch size {batch} "
                                          f"({_one_line(err)})") from None
        diff = _max_difference(got, want)
        if not diff <= TOLERANCE:
            raise PortableExportError(f"{name}: the {what}'s logits differ from the module's by {diff:.3g} at batch "
                                      f"size {batch} (allowed {TOLERANCE:g})")


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """Hide the exporters' chatter: warnings about optional packages (torchvision), deprecations
    and the ONNX optimiser's INFO lines (the command line logs at INFO)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnx_ir", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _trace(module: nn.Module, inputs: InputSpec, name: str) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet_exporters():
            return torch.export.export(module, (inputs.example(2),), dynamic_shapes=({0: batch},))
    except Exception as err:  # torch.export raises many kinds (UserError, guard failures, ...)
        raise PortableExportError(f"{name}: torch.export cannot trace it with a dynamic batch "
                                  f"({_one_line(err)})") from None


@dataclass(frozen=True)
class Artifact:
    """One portable artifact, built and checked, not yet written: ``data`` goes to ``file``
    (a name in the export folder); ``meta`` is recorded in ``model.json`` with the file's
    name and SHA-256."""

    file: str
    data: bytes
    meta: dict[str, Any]


def _pt2(program: torch.export.ExportedProgram, module: nn.Module, inputs: InputSpec, name: str) -> Artifact:
    # The traced program is checked in memory: tracing (a batch size baked into a reshape, a
    # branch taken at trace time) is what can go wrong per model. Reloading the saved bytes
    # would double the cost of an export (torch.export.load re-derives every node's metadata);
    # the round trip is tested for every model family (tests/test_portable_export.py).
    _check(program.module(), module, inputs, "torch.export program", name)
    buffer = io.BytesIO()
    try:
        torch.export.save(program, buffer)
    except Exception as err:
        raise PortableExportError(f"{name}: the torch.export program cannot be saved ({_one_line(err)})") from None
    return Artifact(PT2_FILE, buffer.getvalue(), {})


def _onnx(program: torch.export.ExportedProgram, module: nn.Module, inputs: InputSpec, name: str) -> Artifact:
    missing = missing_onnx_modules()
    if missing:
        raise ValueError(f"format 'onnx': needs the onnx extra ({', '.join(missing)} not installed); install it "
                         f"with: {ONNX_INSTALL}")
    import onnxruntime

    try:
        with _quiet_exporters():
            onnx_program = torch.onnx.export(program, (inputs.example(2),), dynamo=True, verbose=False,
                                             input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT])
        assert onnx_program is not None
        proto = onnx_program.model_proto
        data = proto.SerializeToString()
    except Exception as err:
        raise PortableExportError(f"{name}: torch.onnx.export cannot convert it ({_one_line(err)})") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.log_severity_level = 3  # errors only
    try:
        session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise PortableExportError(f"{name}: onnxruntime cannot load the ONNX model ({_one_line(err)})") from None
    _check(lambda x: session.run([ONNX_OUTPUT], {ONNX_INPUT: x.numpy()})[0], module, inputs, "ONNX model", name)
    opset = next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return Artifact(ONNX_FILE, data, {"opset": opset, "input": ONNX_INPUT, "output": ONNX_OUTPUT})


def build_portable(module: nn.Module, inputs: InputSpec, formats: Sequence[str], name: str) -> dict[str, Artifact]:
    """``module``'s portable artifacts for ``formats``, built and checked in memory.

    Args:
        module: The exported module (float32); it is moved to the CPU and put in eval mode.
        inputs: What it takes (:class:`InputSpec`).
        formats: Any of :data:`FORMATS` (``"pt"``, the caller's state dict, is ignored here).
        name: How error messages name the model (e.g. ``"pooling model [4,3,3] (exports/0012_4-3-3)"``).

    Returns:
        ``{"pt2": Artifact, "onnx": Artifact}`` for the portable formats asked for.

    Raises:
        PortableExportError: A format the model cannot be written in, or an artifact whose
            logits differ from the module's (one line naming ``name`` and the format).
        ValueError: An unknown format, or ``onnx`` without the onnx extra installed.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"export formats: unknown format {unknown[0]!r}, expected some of {list(FORMATS)}")
    if "onnx" in formats:
        parse_formats("onnx", "format")  # the one-line error naming the extra when it is missing
    wanted = [f for f in ("pt2", "onnx") if f in formats]
    if not wanted:
        return {}
    module = module.cpu().float().eval()
    program = _trace(module, inputs, name)
    built = {"pt2": _pt2} if "pt2" in wanted else {}
    if "onnx" in wanted:
        built["onnx"] = _onnx
    return {fmt: make(program, module, inputs, name) for fmt, make in built.items()}


def write_portable(folder: str | Path, artifacts: dict[str, Artifact]) -> dict[str, dict[str, Any]]:
    """Write built artifacts into ``folder`` (atomically, one file each); returns what
    ``model.json`` records under ``"artifacts"``: ``{format: {"file", "sha256", ...meta}}``."""
    folder = Path(folder)
    records: dict[str, dict[str, Any]] = {}
    for fmt, artifact in artifacts.items():
        path = folder / artifact.file
        atomic_write_bytes(path, artifact.data)
        records[fmt] = {"file": artifact.file, "sha256": file_sha256(path), **artifact.meta}
    return records
