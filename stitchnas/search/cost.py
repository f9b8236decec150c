"""The cost axis of a search's Pareto front: FLOPs (the default), parameters or measured latency.

The one home of "what a candidate costs". A front is "cost lower, accuracy higher"; the cost is

* ``flops``: analytic FLOPs, fvcore's convention (one multiply-add = one FLOP), batch 1: the
  ``flops`` column of ``results.csv``;
* ``params``: parameters of the standalone (exported) model: the ``params`` column;
* ``latency``: wall time of one forward pass of the candidate's standalone module (a plain
  ``nn.Module``, eval mode, ``torch.inference_mode``, float32) on a batch of
  ``latency_batch`` random images, on the run's device with the torch threads in force:
  ``latency_warmup`` passes discarded, then the median of ``latency_repeats`` timed passes, in
  milliseconds, with the quartiles, minimum and maximum as its spread. CUDA is synchronised
  around every timed pass.

Latency is measured once per configuration and measuring setting and cached in the run folder
(``latency.csv``, one row per measurement, rewritten atomically after each): a resume re-measures
nothing. The axis and the latency options are options of the run (``run_config.json`` key
``"cost"``, absent for FLOPs), so ``--resume`` with another axis or latency option is refused; the
threads, device and machine are facts of the process (as the thread count is, see
:mod:`stitchnas.core.runs`): a resume under other ones measures the candidates again under the
new setting (logged), so one front never mixes two settings.

:func:`front_cost` gives a front its :class:`FrontCost` (the column it ranks and what to write
about the axis), :func:`space_reference` the hypervolume reference over a whole space and
:func:`annotate_export` writes the axis into an exported model's ``model.json``.
"""

from __future__ import annotations

import logging
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from stitchnas.core import records
from stitchnas.core.io import ResultsTable

if TYPE_CHECKING:
    from torch import nn

    from stitchnas.search.candidates import CandidateTask

log = logging.getLogger(__name__)

#: The cost axes a front can use.
COST_AXES: tuple[str, ...] = ("flops", "params", "latency")
#: The latency cache in a run folder.
LATENCY_FILE = "latency.csv"
#: Its columns: the candidate, the median and spread in ms, the measuring setting, the outcome.
LATENCY_COLUMNS: tuple[str, ...] = (
    "candidate", "label", "latency_ms", "q1_ms", "q3_ms", "min_ms", "max_ms",
    "batch", "warmup", "repeats", "device", "machine", "threads", "dtype", "status", "error",
)
#: The columns that say how a latency was measured: a cached row counts only under the same setting.
SETTING_COLUMNS: tuple[str, ...] = ("batch", "warmup", "repeats", "device", "machine", "threads", "dtype")
#: Columns a latency front adds to every row (``pareto.json``): the median and its spread, in ms.
LATENCY_ROW_COLUMNS: tuple[str, ...] = ("latency_ms", "latency_q1_ms", "latency_q3_ms", "latency_min_ms",
                                        "latency_max_ms")
FLOPS_CONVENTION = "fvcore (one multiply-add = one FLOP), batch 1"


@dataclass(frozen=True)
class CostConfig:
    """Which cost the Pareto front minimises (``run_config.json`` key ``"cost"``).

    Attributes:
        axis: ``"flops"`` (default), ``"params"`` or ``"latency"``.
        latency_batch: Images per timed forward pass (latency only), >= 1.
        latency_warmup: Untimed passes first, discarded (latency only), >= 0.
        latency_repeats: Timed passes; their median is the latency (latency only), >= 1.

    Raises:
        ValueError: One line naming the field: an unknown axis, a count out of range, or a
            latency option given with another axis.
    """

    axis: Literal["flops", "params", "latency"] = "flops"
    latency_batch: int = 1
    latency_warmup: int = 10
    latency_repeats: int = 30

    #: (smallest value, default) of each latency option
    _LATENCY_OPTIONS: ClassVar[dict[str, tuple[int, int]]] = {
        "latency_batch": (1, 1), "latency_warmup": (0, 10), "latency_repeats": (1, 30)}

    def __post_init__(self) -> None:
        if self.axis not in COST_AXES:
            raise ValueError(f"cost 'axis': expected one of {list(COST_AXES)}, got {self.axis!r}")
        for key, (low, default) in self._LATENCY_OPTIONS.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"cost {key!r}: expected an integer >= {low}, got {value!r}")
            if self.axis != "latency" and value != default:
                raise ValueError(f"cost {key!r}: applies to axis 'latency' only, got axis {self.axis!r}")

    def check(self, hv_reference: str, what: str = "search") -> None:
        """Refuse ``hv_reference="space"`` with latency: the reference would need every
        configuration of the space measured, not only those the search evaluates.

        Raises:
            ValueError: One line naming both options.
        """
        if self.axis == "latency" and hv_reference == "space":
            raise ValueError(f"{what} 'hv_reference': 'space' needs the cost of every configuration without "
                             "measuring it; with cost 'latency' use 'evaluated' (or cost 'flops' / 'params')")

    def to_json(self) -> dict[str, Any]:
        return records.to_json(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "cost") -> CostConfig:
        return records.from_json(cls, data, where)


#: A search config's ``json_absent`` entry: a run config without ``"cost"`` ranks by FLOPs (every
#: run before the option, and the default, which is left out so default runs write what they did).
COST_ABSENT: dict[str, Any] = {"cost": CostConfig()}


# --------------------------------------------------------------------------- measuring
@dataclass(frozen=True)
class LatencyStats:
    """One candidate's latency in milliseconds: the median of the timed passes and their spread
    (first and third quartile, minimum, maximum) over ``repeats`` passes."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    max_ms: float
    repeats: int

    @classmethod
    def of(cls, times_ms: Sequence[float]) -> LatencyStats:
        """The statistics of ``times_ms`` (at least one; quartiles inclusive, as numpy's default).

        Raises:
            ValueError: ``times_ms`` is empty.
        """
        if not times_ms:
            raise ValueError("latency: no timed passes")
        ordered = sorted(float(t) for t in times_ms)
        if len(ordered) == 1:
            q1 = median = q3 = ordered[0]
        else:
            q1, median, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        return cls(median, q1, q3, ordered[0], ordered[-1], len(ordered))


def measure_latency(model: nn.Module, input_shape: Sequence[int], batch: int = 1, device: str = "cpu",
                    warmup: int = 10, repeats: int = 30, clock: Callable[[], float] | None = None) -> LatencyStats:
    """Time ``model``'s forward pass on one batch of random images.

    The model is moved to ``device`` and put in eval mode; every pass runs under
    ``torch.inference_mode``. ``warmup`` passes are discarded, then ``repeats`` passes are timed
    one by one with ``clock`` (seconds; default ``time.perf_counter``), CUDA synchronised before
    each reading. The threads are torch's as they are (the caller records them).

    Args:
        model: A classifier ``(N, C, H, W) -> (N, classes)``; moved and set to eval mode in place.
        input_shape: ``(C, H, W)`` of one image.
        batch: ``N``, images per pass.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        warmup: Untimed passes.
        repeats: Timed passes (>= 1).
        clock: A monotonic clock in seconds (tests inject a deterministic one).

    Returns:
        :class:`LatencyStats` in milliseconds.

    Raises:
        ValueError: ``batch`` or ``repeats`` < 1, ``warmup`` < 0.
        RuntimeError: The forward pass failed (e.g. out of memory).
    """
    import torch

    if batch < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"latency: expected batch >= 1, repeats >= 1, warmup >= 0; got {batch}, {repeats}, {warmup}")
    clock = clock or time.perf_counter
    target = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *input_shape), generator=generator).to(target)
    model = model.to(target).eval()

    def sync() -> None:
        if target.type == "cuda":
            torch.cuda.synchronize(target)

    times: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        sync()
        for _ in range(repeats):
            start = clock()
            model(x)
            sync()
            times.append((clock() - start) * 1e3)
    return LatencyStats.of(times)


def machine_name(device: str) -> str:
    """What the latency was measured on: the GPU's name for a CUDA device, else the CPU model
    (``/proc/cpuinfo``'s ``model name``; ``platform.processor()`` or the architecture elsewhere)."""
    import torch

    target = torch.device(device)
    if target.type == "cuda":
        return str(torch.cuda.get_device_name(target))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.partition(":")[2].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def latency_setting(cfg: CostConfig, device: str) -> dict[str, Any]:
    """The measuring setting of ``cfg`` in this process (the :data:`SETTING_COLUMNS`)."""
    from stitchnas.core import threads

    return {"batch": cfg.latency_batch, "warmup": cfg.latency_warmup, "repeats": cfg.latency_repeats,
            "device": str(device), "machine": machine_name(device), "threads": threads.current().num_threads,
            "dtype": "float32"}


# --------------------------------------------------------------------------- the cache
class LatencyCache:
    """``latency.csv`` in a run folder: one row per measured candidate and setting, appended and
    rewritten atomically (:class:`~stitchnas.core.io.ResultsTable`). Rows of another setting
    stay (a later resume under that setting reuses them) and are never used for this one.

    Raises:
        ValueError: One line for a file whose header is not :data:`LATENCY_COLUMNS`.
    """

    def __init__(self, path: Path, setting: dict[str, Any]) -> None:
        self.table = ResultsTable(path, LATENCY_COLUMNS)
        self.setting = setting
        self.rows: dict[str, dict[str, Any]] = {}
        others = 0
        for row in self.table.rows():
            if all(str(row.get(k)) == str(v) for k, v in setting.items()):
                self.rows[str(row["candidate"])] = row
            else:
                others += 1
        if others:
            log.info("latency: %d cached measurement(s) in %s were taken under another setting (threads, device or "
                     "machine); measuring again under %s", others, path, self.describe())

    def describe(self) -> str:
        s = self.setting
        return f"batch {s['batch']}, {s['device']} ({s['machine']}), {s['threads']} thread(s)"

    def add(self, index: int, label: str, stats: LatencyStats | None, error: str = "") -> dict[str, Any]:
        nan = math.nan
        row = {"candidate": str(index), "label": label,
               "latency_ms": stats.median_ms if stats else nan, "q1_ms": stats.q1_ms if stats else nan,
               "q3_ms": stats.q3_ms if stats else nan, "min_ms": stats.min_ms if stats else nan,
               "max_ms": stats.max_ms if stats else nan, **self.setting,
               "status": "ok" if stats else "failed", "error": error}
        self.table.append(row)
        self.rows[str(index)] = self.table.rows()[-1]
        return self.rows[str(index)]


#: Errors measuring one candidate may raise without stopping the search (its latency is then
#: missing and the front excludes it, naming the error).
LATENCY_ERRORS: tuple[type[Exception], ...] = (RuntimeError, ValueError, NotImplementedError)


def measure_candidate(task: CandidateTask, index: int, cfg: CostConfig, device: str) -> LatencyStats:
    """The latency of candidate ``index``: its standalone module (built with torch's RNG state
    restored afterwards, so a resume that measures less draws the same numbers elsewhere)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        model = task.standalone(index)
    return measure_latency(model, task.input_shape(), cfg.latency_batch, device, cfg.latency_warmup,
                           cfg.latency_repeats)


def measured_latencies(cfg: CostConfig, task: CandidateTask, indices: Sequence[int], out_dir: Path, device: str,
                       progress: bool = True) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The cached or measured latency row of every candidate in ``indices`` and the setting.

    Candidates without a row under this setting are measured now (in ``indices``' order) and
    appended to ``out_dir/latency.csv`` one by one, so an interruption loses at most one."""
    from tqdm.auto import tqdm

    from stitchnas.core.training import resolve_device

    device = str(resolve_device(device))
    setting = latency_setting(cfg, device)
    cache = LatencyCache(Path(out_dir) / LATENCY_FILE, setting)
    todo = [i for i in dict.fromkeys(indices) if str(i) not in cache.rows]
    if len(todo) < len(indices):
        log.info("latency: %d of %d candidates already measured (%s)", len(indices) - len(todo), len(indices),
                 cache.describe())
    if todo:
        log.info("latency: measuring %d candidates (%s, %d warm-up + %d timed passes each)", len(todo),
                 cache.describe(), cfg.latency_warmup, cfg.latency_repeats)
    for index in tqdm(todo, desc="latency", unit="cand", disable=not progress, leave=False):
        label = task.describe(index)
        try:
            cache.add(index, label, measure_candidate(task, index, cfg, device))
        except LATENCY_ERRORS as err:
            message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            log.warning("latency of candidate %s failed: %s", label, message)
            cache.add(index, label, None, message)
    return {str(i): cache.rows[str(i)] for i in indices}, setting


# --------------------------------------------------------------------------- the front's cost
@dataclass(frozen=True)
class FrontCost:
    """The cost axis of one front: which row column it ranks, how to show it, what to record.

    Attributes:
        axis: One of :data:`COST_AXES`.
        column: The row key ranked (``flops``, ``params`` or ``latency_ms``).
        unit: The column's unit (``FLOPs``, ``parameters``, ``ms``).
        plot_label: The x-axis label of ``pareto.png``.
        plot_scale: Plot units per unit (1e-6 for MFLOPs).
        info: JSON describing the axis (``pareto.json`` and ``model.json`` key ``"cost"``).
        columns: Columns added to a candidate's row (latency: the median and spread in ms).
        errors: Why a candidate has no cost (latency measurement failed), by candidate.
    """

    axis: str
    column: str
    unit: str
    plot_label: str
    plot_scale: float
    info: dict[str, Any]
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def rows(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """``rows`` with this axis' columns added (copies)."""
        return [{**r, **self.columns.get(str(r.get("candidate")), {})} for r in rows]

    def record(self, row: dict[str, Any]) -> dict[str, Any]:
        """What an export of ``row`` (a row with this axis' columns) records as ``"cost"``."""
        return export_cost(self.info, self.column, row)


def export_cost(info: dict[str, Any], column: str, row: dict[str, Any]) -> dict[str, Any]:
    """``model.json``'s ``"cost"`` for the candidate of ``row``: the axis description ``info``
    (:attr:`FrontCost.info`, ``pareto.json``'s ``"cost"``) and the candidate's ``value`` on it
    in the axis' unit (latency: also ``q1_ms``, ``q3_ms``, ``min_ms``, ``max_ms``)."""
    out = {**info, "value": row.get(column)}
    if column == "latency_ms":
        out.update({k.removeprefix("latency_"): row.get(k) for k in LATENCY_ROW_COLUMNS[1:]})
    return out


FLOPS_COST = FrontCost("flops", "flops", "FLOPs", "MFLOPs", 1e-6,
                       {"axis": "flops", "unit": "FLOPs", "convention": FLOPS_CONVENTION})


def params_cost() -> FrontCost:
    return FrontCost("params", "params", "parameters", "parameters (millions)", 1e-6,
                     {"axis": "params", "unit": "parameters", "counted": "parameters of the standalone model"})


def front_cost(cfg: CostConfig, task: CandidateTask, rows: Sequence[dict[str, Any]], out_dir: Path, device: str,
               progress: bool = True) -> FrontCost:
    """The cost axis ``cfg`` asks for over ``rows`` (a run's ``results.csv`` rows).

    FLOPs and parameters are the rows' own columns. Latency is measured for every ``ok`` row
    not yet in the run's cache (:func:`measured_latencies`); a failed measurement leaves the
    candidate without a cost (the front excludes it and says why)."""
    if cfg.axis == "flops":
        return FLOPS_COST
    if cfg.axis == "params":
        return params_cost()
    indices = sorted({int(r["candidate"]) for r in rows if r.get("status") == "ok"})
    cached, setting = measured_latencies(cfg, task, indices, Path(out_dir), device, progress)
    columns: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    for key, row in cached.items():
        columns[key] = {"latency_ms": row["latency_ms"], "latency_q1_ms": row["q1_ms"],
                        "latency_q3_ms": row["q3_ms"], "latency_min_ms": row["min_ms"],
                        "latency_max_ms": row["max_ms"]}
        if row.get("status") != "ok":
            errors[key] = f"latency: {row.get('error') or 'not measured'}"
    threads = setting["threads"]
    label = (f"latency (ms; batch {setting['batch']}, {setting['device']}, {threads} thread"
             f"{'s' if threads != 1 else ''}, median of {setting['repeats']})")
    info = {"axis": "latency", "unit": "ms", "statistic": "median", "spread": "quartiles q1, q3; min, max",
            "mode": "eval, torch.inference_mode", **setting, "file": LATENCY_FILE}
    return FrontCost("latency", "latency_ms", "ms", label, 1.0, info, columns, errors)


def candidate_cost(axis: str, task: CandidateTask, index: int) -> float:
    """FLOPs or parameters of candidate ``index`` without measuring anything.

    Raises:
        ValueError: ``axis`` is latency (it must be measured).
    """
    if axis == "flops":
        return float(task.flops(index))
    if axis == "params":
        return float(task.row(index)["params"])
    raise ValueError(f"cost {axis!r}: not known without measuring")


def space_reference(axis: str, task: CandidateTask) -> tuple[float, float]:
    """The hypervolume reference over the whole space: 1.1 x the largest cost of any
    configuration, accuracy 0 (FLOPs or parameters; latency is refused by :meth:`CostConfig.check`)."""
    return (1.1 * max(candidate_cost(axis, task, i) for i in range(len(task))), 0.0)


def annotate_export(folder: str | Path, cost: dict[str, Any], rank: dict[str, Any] | None = None) -> None:
    """Record ``cost`` (a :meth:`FrontCost.record`) as ``"cost"`` in the ``model.json`` of an
    exported model, and ``rank`` (how a blend-ranked front chose it) as ``"rank"``, checked
    against :class:`~stitchnas.core.records.ModelCard` and rewritten atomically; the weights
    are untouched."""
    from stitchnas.core.io import atomic_write_json
    from stitchnas.core.records import ModelCard
    from stitchnas.search.export import RECORD_FILE, read_model_record

    model_dir, record = read_model_record(folder)
    record = {**record, "cost": cost, **({"rank": rank} if rank is not None else {})}
    records.from_json(ModelCard, record, f"model config {model_dir / RECORD_FILE}")
    atomic_write_json(model_dir / RECORD_FILE, record)


__all__ = [
    "COST_ABSENT", "COST_AXES", "FLOPS_COST", "LATENCY_COLUMNS", "LATENCY_FILE", "CostConfig", "FrontCost",
    "LatencyCache", "LatencyStats", "annotate_export", "candidate_cost", "export_cost", "front_cost", "machine_name",
    "measure_candidate", "measure_latency", "measured_latencies", "space_reference",
]
