"""Typed records of the engine and the one strict JSON codec they share.

Every file the engine writes that a person or another program reads back (a results row, an
exported model's ``model.json``, an ``anchors.json`` manifest) is a frozen dataclass here, turned
into JSON by :func:`to_json` and back by :func:`from_json`. Decoding is strict: an unknown field,
a missing required field or a value of the wrong type raises one ``ValueError`` line naming the
file (``where``) and the field, e.g. ``model.json: field 'provenance.seed': expected an integer,
got 'x'``.

Supported field types: ``bool``, ``int``, ``float`` (ints accepted), ``str``, ``None`` unions
(``X | None``), unions (the first option that decodes; records are tried those sharing the most
keys with the object first, and the first one's error names the nested field), ``Literal[...]``
(the value must be one of the options), ``tuple[X, ...]`` / ``list[X]``, fixed-length
``tuple[X, Y]``, ``dict[str, X]`` / ``Mapping[str, X]`` (bare ``dict``: any values), ``Any``
(any JSON value) and nested record dataclasses. An optional field (default ``None``) that is
``None`` is left out of the JSON, so a file only carries the fields its writer has; decoding
restores them to ``None``. A field absent from the JSON takes its default (files
written before a field existed still decode); a field without a default is required.

Four class- and field-level switches, for configs whose files predate this codec or a field:

* ``json_kind: ClassVar[str]``: :func:`to_json` writes ``"kind": json_kind``; :func:`from_json`
  requires exactly that ``"kind"`` and strips it before decoding the fields. Such a record is a
  run config: its file may also hold :data:`RUN_FACTS` (e.g. ``"threads"``, written beside the
  options by :func:`stitchnas.core.runs.prepare_run_dir`), which decoding skips.
* ``json_keep_none: ClassVar[bool] = True``: fields holding ``None`` are written (as ``null``),
  as ``dataclasses.asdict`` did.
* ``field(metadata=OWN_JSON)``: the field's type codes itself (``value.to_json()`` and
  ``Type.from_json(data)``, e.g. the search spaces of :mod:`searchspace`, which import nothing of
  the engine); its ``ValueError`` becomes one line naming ``where`` and the field.
* ``json_absent: ClassVar[Mapping[str, Any]]``: for a field added after files were written whose
  old behaviour is not its new default (e.g. ``augment``: old runs trained without augmentation,
  new ones augment by default), the value a file without the field means. :func:`from_json`
  decodes a missing field to it, and :func:`to_json` leaves the field out while it holds it, so a
  config of the old behaviour writes exactly the old JSON (run configs and checkpoint recipes,
  compared on resume, stay equal to those of runs written before the field existed).

Decoding calls the class's constructor, so ``__post_init__`` validation runs and its ``ValueError``
(or ``TypeError``) becomes one line naming ``where`` too.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union

R = TypeVar("R")

#: Keys a run config file (a record with ``json_kind``) holds beside its options: facts about the
#: run that are no option of it (see :func:`stitchnas.core.runs.prepare_run_dir`).
RUN_FACTS = ("threads",)

__all__ = [
    "ANCHORS_FORMAT",
    "ANCHORS_FORMAT_VERSION",
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "OWN_JSON",
    "RESULT_COLUMNS",
    "RUN_FACTS",
    "AnchorDigest",
    "AnchorEntry",
    "AnchorManifest",
    "ModelCard",
    "Provenance",
    "ResultRow",
    "check_finite",
    "data_fields",
    "from_json",
    "to_json",
]


# --------------------------------------------------------------------------- codec
#: Field metadata of a field whose type has its own ``to_json()`` / ``from_json(data)``.
OWN_JSON: Mapping[str, Any] = types.MappingProxyType({"json": "own"})


def _own(f: dataclasses.Field) -> bool:
    return f.metadata.get("json") == "own"


def to_json(record: Any) -> Any:
    """A record dataclass (or a value inside one) as plain JSON values; tuples become lists.

    Optional fields (default ``None``) holding ``None`` are left out unless the class sets
    ``json_keep_none``, and so are fields at their ``json_absent`` value; a class's ``json_kind``
    is written as ``"kind"`` (see the module docstring).
    """
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        cls = type(record)
        keep_none = getattr(cls, "json_keep_none", False)
        absent: Mapping[str, Any] = getattr(cls, "json_absent", {})
        out: dict[str, Any] = {} if (kind := getattr(cls, "json_kind", None)) is None else {"kind": kind}
        for f in dataclasses.fields(record):
            value = getattr(record, f.name)
            if value is None and f.default is None and not keep_none:
                continue
            if f.name in absent and value == absent[f.name]:
                continue
            out[f.name] = value.to_json() if _own(f) and value is not None else to_json(value)
        return out
    if isinstance(record, (list, tuple)):
        return [to_json(v) for v in record]
    if isinstance(record, Mapping):
        return {str(k): to_json(v) for k, v in record.items()}
    return record


def check_finite(record: Any, what: str) -> None:
    """Raise one ValueError line naming the first float field of the dataclass ``record`` that
    is NaN or infinite (configs call this first in ``__post_init__``: ``lr=nan`` would pass
    every ``<``/``>`` check and only show up as a diverged run)."""
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{what} {f.name!r}: expected a finite number, got {value!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _decode(tp: Any, value: Any, path: str, where: str) -> Any:
    def fail(expected: str) -> ValueError:
        return ValueError(f"{where}: field {path!r}: expected {expected}, got {value!r:.80}")

    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        options = typing.get_args(tp)
        if not any(value == o and type(value) is type(o) for o in options):
            raise fail(f"one of {list(options)}")
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        others = [o for o in options if o is not type(None)]
        if isinstance(value, dict) and all(isinstance(o, type) and dataclasses.is_dataclass(o) for o in others):
            # records, those sharing the most keys with the object first: the first that decodes it, else its error
            keys = set(value) - {"kind"}
            ranked = sorted(others, key=lambda o: -len(keys & {f.name for f in dataclasses.fields(o)}))
            errors = []
            for option in ranked:
                try:
                    return _decode(option, value, path, where)
                except ValueError as err:
                    errors.append(err)
            raise errors[0]
        if len(others) == 1:  # X | None: X's own error, with its nested path
            return _decode(others[0], value, path, where)
        for option in others:
            try:
                return _decode(option, value, path, where)
            except ValueError:
                continue
        raise fail(" or ".join(_type_name(o) for o in options))
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise fail("a list")
        args = typing.get_args(tp)
        if origin is tuple and args[1:] != (Ellipsis,):  # tuple[X, Y]: one item of each type
            if len(value) != len(args):
                raise fail(f"a list of {len(args)}")
            return tuple(_decode(a, v, f"{path}[{i}]", where) for i, (a, v) in enumerate(zip(args, value)))
        items = [_decode(args[0], v, f"{path}[{i}]", where) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp in (dict, Mapping) or origin in (dict, Mapping):
        if not isinstance(value, dict):
            raise fail("an object")
        _, item = typing.get_args(tp) or (str, Any)
        return {str(k): _decode(item, v, f"{path}.{k}", where) for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_json(tp, value, where, _prefix=f"{path}.")
    if tp is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    raise TypeError(f"record codec: unsupported field type {tp!r} at {path!r}")  # a bug, not bad input


def _decode_own(tp: Any, value: Any, path: str, where: str) -> Any:
    """A field of a type that decodes itself (``OWN_JSON``), ``X`` or ``X | None``."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        (tp,) = [o for o in typing.get_args(tp) if o is not type(None)]
    try:
        return tp.from_json(value)
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(f"{where}: field {path!r}: {err}") from None


def from_json(cls: type[R], data: Any, where: str, _prefix: str = "") -> R:
    """Decode ``data`` into the record dataclass ``cls``, strictly.

    Args:
        cls: A dataclass of this module's kind (fields of the supported types).
        data: A parsed JSON object.
        where: Names the source in errors (a file path, ``"run config"``, ...).

    Raises:
        ValueError: One line naming ``where`` and the first unknown, missing or mistyped field.
    """
    if not isinstance(data, dict):  # bad input, not a bug: ValueError like every other decoding error
        raise ValueError(f"{where}: {_prefix.rstrip('.') or 'record'}: expected an object, got {data!r:.80}")  # noqa: TRY004
    kind = getattr(cls, "json_kind", None)
    if kind is not None:
        if data.get("kind") != kind:
            raise ValueError(f"{where}: field {_prefix + 'kind'!r}: expected {kind!r}, got {data.get('kind')!r:.80}")
        data = {k: v for k, v in data.items() if k != "kind" and (_prefix or k not in RUN_FACTS)}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown field {_prefix + unknown[0]!r} (expected some of {sorted(fields)})")
    absent: Mapping[str, Any] = getattr(cls, "json_absent", {})
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if name in absent:
                kwargs[name] = absent[name]
                continue
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"{where}: missing field {_prefix + name!r}")
            continue
        if _own(f):
            kwargs[name] = _decode_own(hints[name], data[name], _prefix + name, where)
        else:
            kwargs[name] = _decode(hints[name], data[name], _prefix + name, where)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {_prefix.rstrip('.') or cls.__name__}: {err}") from None


# --------------------------------------------------------------------------- records
#: Columns of every run's ``results.csv``, in order (the fields of :class:`ResultRow`).
RESULT_COLUMNS: tuple[str, ...] = (
    "candidate", "label", "config", "flops", "params", "val_acc", "status", "error", "seconds",
)


@dataclass(frozen=True)
class ResultRow:
    """One scored candidate: a row of ``results.csv``.

    Attributes:
        candidate: The candidate's index in its space, as text (``"23"``).
        label: A short human label (``[4,3,3]``, ``a0.0-7_a1.7-11``).
        config: The configuration in the space's own notation (positions, route JSON).
        flops: Analytic FLOPs, fvcore's convention (one multiply-add = one FLOP), batch 1.
        params: Parameters of the standalone model.
        val_acc: Top-1 accuracy in percent on ``search_val``; NaN when ``status`` is not ok.
        status: ``"ok"`` or ``"failed"``.
        error: Why a failed candidate failed (empty when ok).
        seconds: Wall time of scoring it.
    """

    candidate: str
    label: str
    config: str
    flops: int
    params: int
    val_acc: float
    status: str = "ok"
    error: str = ""
    seconds: float = 0.0

    @property
    def usable(self) -> bool:
        """Scored, with finite accuracy and FLOPs: may stand on a Pareto front."""
        return self.status == "ok" and math.isfinite(self.val_acc) and math.isfinite(self.flops)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ResultRow:
        """From a :class:`~stitchnas.core.io.ResultsTable` row (cells already parsed)."""
        def number(key: str, kind: type) -> Any:
            value = row.get(key)
            if value is None or value == "":
                return kind("nan") if kind is float else 0
            return kind(value)

        return cls(candidate=str(row["candidate"]), label=str(row.get("label", "")),
                   config=str(row.get("config", "")), flops=number("flops", int), params=number("params", int),
                   val_acc=number("val_acc", float), status=str(row.get("status", "")),
                   error=str(row.get("error") or ""), seconds=number("seconds", float))


@dataclass(frozen=True)
class AnchorDigest:
    """Which anchor file a model came from: its name and the file's SHA-256."""

    name: str
    sha256: str = ""


@dataclass(frozen=True)
class Provenance:
    """Where an exported model came from, recorded in its ``model.json``.

    One record for every method (the data fields are :class:`~stitchnas.data.DataSpec`'s);
    fields a method does not have stay at their defaults.

    Attributes:
        source: ``supernet`` (SPOS / BMS), ``standalone``, ``snnet``, ``snnetv2`` or
            ``learngene_pool``.
        run_dir: Absolute path of the run folder.
        checkpoint_sha256: SHA-256 of the checkpoint the weights came from.
        dataset, data_dir, input_size, seed, max_train_samples, max_test_samples: The data.
        anchors: The anchors stitched (SN-Net, SN-Netv2).
        anchor_adaptations: What loading the anchors' checkpoints adapted to the data (a new
            head, adapted input channels, resized position embeddings), one line each.
        teacher: The distilled teacher (Learngene).
        distill_run, learngene_sha256, stitch_init: The Learngene distillation run, the SHA-256
            of its ``learngene.pt`` and how stitching layers were initialised.
        stitchnas_version, torch_version, created: Filled in by the export itself (``created``
            is an ISO-8601 UTC time).
    """

    source: str
    run_dir: str
    checkpoint_sha256: str
    dataset: str
    data_dir: str | None = None
    input_size: int = 0
    seed: int = 0
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    anchors: tuple[AnchorDigest, ...] | None = None
    anchor_adaptations: tuple[str, ...] | None = None
    teacher: AnchorDigest | None = None
    distill_run: str | None = None
    learngene_sha256: str | None = None
    stitch_init: str | None = None
    stitchnas_version: str | None = None
    torch_version: str | None = None
    created: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON without the method-specific fields a method does not have (``None``); the data
        fields are always written (``data_dir: null`` for embedded data, as before records)."""
        return {**{k: getattr(self, k) for k in _DATA_FIELDS}, **to_json(self)}


_DATA_FIELDS = ("dataset", "data_dir", "input_size", "seed", "max_train_samples", "max_test_samples")


def data_fields(spec: Any) -> dict[str, Any]:
    """The data fields of :class:`Provenance` from a :class:`~stitchnas.data.DataSpec`."""
    return {"dataset": spec.name, "data_dir": spec.data_dir, "input_size": spec.input_size, "seed": spec.seed,
            "max_train_samples": spec.max_train_samples, "max_test_samples": spec.max_test_samples}


#: ``model.json``'s format name and version (:mod:`stitchnas.search.export`).
MODEL_FORMAT = "stitchnas.model"
MODEL_FORMAT_VERSION = 1
#: ``anchors.json``'s format name and version (:mod:`stitching.anchors`).
ANCHORS_FORMAT = "stitchnas.anchors"
ANCHORS_FORMAT_VERSION = 1


def _check_format(record: Any, fmt: str, version: int) -> None:
    if record.format != fmt:
        raise ValueError(f"field 'format': expected {fmt!r}, got {record.format!r}")
    if record.format_version != version:
        raise ValueError(f"field 'format_version': expected {version}, got {record.format_version!r}")


@dataclass(frozen=True, kw_only=True)
class ModelCard:
    """An exported model's ``model.json`` (:func:`stitchnas.search.export.export_model`).

    Attributes:
        format, format_version: ``"stitchnas.model"``, version 1.
        kind: Which builder rebuilds the module: ``"pooling"`` or ``"stitch"``.
        model: What the builder needs beyond ``space`` and ``config`` (pooling: ``spec`` and
            ``input_size``; stitch: the stitched model's whole description).
        space: The search space (its own ``to_json``).
        config: The configuration in that space (its own ``to_json``).
        flops: Analytic FLOPs (fvcore convention, batch 1).
        params: Parameters of the exported module.
        metrics: Accuracies in percent measured on the exported module (``val_acc``,
            ``test_acc``, ``search_val_acc``, ...).
        provenance: Where the model came from.
        weights: The state dict's file name, next to ``model.json``.
        weights_sha256: That file's SHA-256, checked on load.
        notation: Layers per resolution (pooling only).
        label: A short human label (stitch only).
        input: What the model takes (:meth:`stitchnas.search.portable.InputSpec.to_json`):
            ``shape`` ``[C, H, W]`` (batch dynamic), ``dtype``, ``layout`` and the
            ``normalization`` (per-channel ``mean``/``std`` in [0, 1] pixel units). Absent in
            exports written before portable artifacts.
        artifacts: The portable files next to ``model.json``, by format: ``"pt2"`` (a
            ``torch.export`` program) and ``"onnx"``, each ``{"file", "sha256", ...}``. Absent
            when none was written.
        cost: The cost axis of the front the model was exported from and the model's value on
            it (:func:`stitchnas.search.cost.export_cost`: ``axis``, ``unit``, ``value``; latency
            also its spread and how it was measured). Absent in exports written before the axis
            was recorded.
        rank: How the front that chose the model ranked (:mod:`stitchnas.search.rank_rule`:
            ``by``, ``weight`` and the model's ``rank_score``). Only for fronts ranked by a blend.
    """

    format: str = MODEL_FORMAT
    format_version: int = MODEL_FORMAT_VERSION
    kind: str
    model: dict[str, Any]
    space: dict[str, Any]
    config: dict[str, Any]
    flops: int
    params: int
    metrics: dict[str, float]
    provenance: Provenance
    weights: str
    weights_sha256: str
    notation: tuple[int, ...] | None = None
    label: str | None = None
    input: dict[str, Any] | None = None
    artifacts: dict[str, dict[str, Any]] | None = None
    cost: dict[str, Any] | None = None
    rank: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _check_format(self, MODEL_FORMAT, MODEL_FORMAT_VERSION)
        if not self.weights:
            raise ValueError("field 'weights': expected a file name, got ''")


@dataclass(frozen=True)
class AnchorEntry:
    """One anchor of an ``anchors.json``: ``name``, ``config`` and ``file`` are required (a
    hand-written manifest needs no more); ``stitchnas anchors train`` records the rest.

    Attributes:
        name: The anchor's name (the preset's when trained here).
        config: Its constructor arguments, with ``family``.
        file: Its timm-format state dict, relative to the manifest's folder (or absolute).
        preset: The preset it was built from.
        sha256: The weights file's SHA-256 when it was written.
        flops, params: Analytic FLOPs and parameters of the anchor.
        val_acc, test_acc: Accuracies in percent on ``search_val`` and ``test``.
        train_seconds: Wall time of training it.
    """

    name: str
    config: dict[str, Any]
    file: str
    preset: str | None = None
    sha256: str | None = None
    flops: int | None = None
    params: int | None = None
    val_acc: float | None = None
    test_acc: float | None = None
    train_seconds: float | None = None


@dataclass(frozen=True, kw_only=True)
class AnchorManifest:
    """An ``anchors.json`` (:mod:`stitching.anchors`): the anchors, small -> large.

    ``family``, ``data`` (a :class:`~stitchnas.data.DataSpec` as JSON), ``train`` (a
    :class:`~stitching.trainer.StitchTrainConfig` as JSON) and ``overrides`` say how
    ``stitchnas anchors train`` made them; a hand-written manifest may leave them out.
    ``bench`` holds the settings of ``scripts/bench_stitch_v2.py``, which writes its own.
    """

    format: str = ANCHORS_FORMAT
    format_version: int = ANCHORS_FORMAT_VERSION
    family: str | None = None
    data: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    overrides: dict[str, Any] | None = None
    bench: dict[str, Any] | None = None
    anchors: tuple[AnchorEntry, ...]

    def __post_init__(self) -> None:
        _check_format(self, ANCHORS_FORMAT, ANCHORS_FORMAT_VERSION)
