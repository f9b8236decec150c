"""One search pipeline for every method: pooling (SPOS), BMS, SN-Net, SN-Netv2, Learngene Pool.

A run is always the same sequence of persisted stages, each finished before the next starts::

    claim the run folder (run_config.json) -> train (epoch checkpoints) -> score the candidates
    (results.csv, one row each, any backend) -> cost (FLOPs, parameters, or latency measured once
    per candidate into latency.csv) -> Pareto front (pareto.json, pareto.png) -> exports/

so ``resume=True`` continues an interrupted run where it stopped and ends with the files an
uninterrupted run writes. A method says only what differs, through :class:`SearchMethod`
(build the network, train it, describe its candidates as a
:class:`~stitchnas.search.candidates.CandidateTask`, export one); the evaluation backend is any
:data:`~stitchnas.search.candidates.EvaluationBackend` (in process by default, or
:meth:`stitchnas.backends.tune.RayTuneStage.evaluate`).

:func:`run_search` runs a method, :func:`evaluate_run` re-scores a finished run (its last
checkpoint, or the network before training), :func:`export_from_run` exports any candidate of
a finished run.
"""

from __future__ import annotations

import logging
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from torch import nn

from stitchnas.core.io import ResultsTable
from stitchnas.core.records import RESULT_COLUMNS, Provenance, ResultRow
from stitchnas.core.runs import RUN_CONFIG, prepare_run_dir, run_options
from stitchnas.data import DataSplits
from stitchnas.search.candidates import (
    CandidateJob,
    CandidateTask,
    EvaluationBackend,
    check_results,
    clear_results,
    evaluate_in_process,
)
from stitchnas.search.cost import CostConfig, annotate_export, export_cost, front_cost, space_reference
from stitchnas.search.front import FrontSummary, summarize_front
from stitchnas.search.rank_rule import RankRule

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

RESULTS_FILE = "results.csv"
EXPORTS_DIR = "exports"  # the final front's models, and nothing else
SELECTED_DIR = "selected"  # models exported on request (export_from_run)
#: Hypervolume reference points: 1.1 x the largest *evaluated* FLOPs, or 1.1 x the largest
#: FLOPs of the whole *space* (fronts of different searches on one space are comparable).
HV_REFERENCES: tuple[str, ...] = ("evaluated", "space")


@dataclass
class TrainContext:
    """Where and how a method trains its network (see :meth:`SearchMethod.train`).

    Attributes:
        data: The run's splits (train on ``search_train``; ``search_val`` ranks candidates).
        checkpoint: The epoch-checkpoint file (:mod:`stitchnas.core.checkpoints`).
        out_dir: The run folder.
        resume: Continue from ``checkpoint`` when it exists.
        progress: Show progress bars.
        on_step: Called with the global step after every optimisation step.
    """

    data: DataSplits
    checkpoint: Path
    out_dir: Path
    resume: bool = False
    progress: bool = True
    on_step: Callable[[int], None] | None = None


class SearchConfig(Protocol):
    """What the pipeline reads from any method's config."""

    @property
    def hv_reference(self) -> str: ...

    @property
    def export_front(self) -> bool: ...

    @property
    def cost(self) -> CostConfig: ...


class Recipe(Protocol):
    """What the pipeline reads from any training recipe (TrainConfig, StitchTrainConfig)."""

    @property
    def seed(self) -> int: ...

    @property
    def device(self) -> str: ...


class SearchMethod(ABC):
    """What one search method tells the pipeline. Implementations: :mod:`stitchnas.methods`.

    A method is built from its config object; :meth:`run_config` is the JSON written to
    ``run_config.json`` and must hold every option that changes results (``--resume`` refuses
    a different one), and ``from_run_config`` (a classmethod) rebuilds the method from it.
    """

    #: File name of the epoch checkpoint in the run folder.
    checkpoint_file: ClassVar[str]
    #: What a candidate is called in logs ("candidates", "configurations", "descendants").
    noun: ClassVar[str] = "candidates"

    # ------------------------------------------------------------------ identity
    @abstractmethod
    def run_config(self) -> dict[str, Any]:
        """The run's options as JSON (with a ``"kind"`` naming the method)."""

    #: The method's config; every search config has ``hv_reference`` and ``export_front``.
    cfg: SearchConfig

    @property
    @abstractmethod
    def recipe(self) -> Recipe:
        """The training recipe (its ``seed`` and ``device`` are the run's)."""

    @property
    def hv_reference(self) -> str:
        """``"evaluated"`` or ``"space"`` (see :data:`HV_REFERENCES`)."""
        return self.cfg.hv_reference

    @property
    def seed(self) -> int:
        return self.recipe.seed

    @property
    def device(self) -> str:
        return self.recipe.device

    @property
    def export_front(self) -> bool:
        return self.cfg.export_front

    @property
    def cost(self) -> CostConfig:
        """The front's cost axis (:mod:`stitchnas.search.cost`; FLOPs by default)."""
        return self.cfg.cost

    @property
    def rank(self) -> RankRule:
        """The front's ranking score (:mod:`stitchnas.search.rank_rule`): the validation
        accuracy unless the method offers a blend."""
        return RankRule()

    # ------------------------------------------------------------------ stages
    @abstractmethod
    def load_data(self) -> DataSplits:
        """The run's data splits (the same tensors on every call)."""

    @abstractmethod
    def build(self, data: DataSplits) -> nn.Module:
        """The network before training, initialised as training starts from it. Bad input
        (anchors that do not fit the data, ...) raises ValueError here, before the run folder
        is claimed."""

    @abstractmethod
    def train(self, network: nn.Module, ctx: TrainContext) -> Any:
        """Train ``network`` in place (resumable through ``ctx.checkpoint``); returns the history."""

    @abstractmethod
    def load_trained(self, run_dir: Path, data: DataSplits) -> nn.Module:
        """The network with the weights of the run's last checkpoint (eval mode)."""

    @abstractmethod
    def task(self, network: nn.Module, data: DataSplits) -> CandidateTask:
        """The candidates of ``network`` as evaluation backends see them."""

    def candidates(self, task: CandidateTask) -> list[int]:
        """Which candidates a run scores (default: all of them)."""
        return list(range(len(task)))

    @property
    def subset_size(self) -> int | None:
        """Set when :meth:`candidates` is a seeded subset the user asked for."""
        return None

    def open_run(self, network: nn.Module, task: CandidateTask, out_dir: Path) -> None:
        """Hook before scoring: write method-specific files, restore state kept in the run
        folder (the mixture's assignment files and chosen supernets). Does nothing by default."""

    @abstractmethod
    def title(self, network: nn.Module, data: DataSplits, what: str) -> str:
        """The title of ``pareto.png``; ``what`` says which weights were scored."""

    def trained_label(self) -> str:
        """``what`` for a freshly trained run, e.g. ``"40 epochs"``."""
        return "trained"

    # ------------------------------------------------------------------ export
    @abstractmethod
    def provenance(self, run_dir: Path) -> Provenance:
        """Where exports of this run come from (data, checkpoint hash, anchors, ...)."""

    @abstractmethod
    def export_dir_name(self, network: nn.Module, index: int) -> str:
        """The folder name of candidate ``index`` under ``exports/``."""

    @abstractmethod
    def export(self, folder: Path, network: nn.Module, index: int, data: DataSplits, provenance: Provenance,
               search_val_acc: float | None = None) -> Path:
        """Export candidate ``index`` as a standalone model into ``folder`` (``model.json`` +
        ``model.pt``); accuracies recorded there are measured on the exported module."""

    def parse_candidate(self, network: nn.Module, text: int | str) -> int:
        """A candidate index from what a user typed (an index by default)."""
        try:
            index = int(text)
        except (TypeError, ValueError):
            raise ValueError(f"candidate {text!r}: expected an index (column 'candidate' of results.csv)") from None
        size = len(self.task(network, self.load_data()))
        if not 0 <= index < size:
            raise ValueError(f"candidate {index}: expected an index in 0..{size - 1}")
        return index


@dataclass
class SearchResult:
    """What a search (or a re-evaluation) returns.

    Attributes:
        out_dir: The folder its files are in.
        rows: Every ``results.csv`` row, as parsed dicts (columns :data:`RESULT_COLUMNS`).
        summary: The Pareto front, excluded candidates and hypervolume (``pareto.json``).
        exports: Folders of the exported Pareto-optimal models.
        history: The training history (None when nothing was trained in this call).
    """

    out_dir: Path
    rows: list[dict[str, Any]]
    summary: FrontSummary
    exports: list[Path] = field(default_factory=list)
    history: Any = None
    method: SearchMethod | None = field(default=None, repr=False)
    run_dir: Path | None = field(default=None, repr=False)

    @property
    def front(self) -> list[ResultRow]:
        """The Pareto-optimal candidates (cost lower, accuracy higher; the cost is FLOPs unless
        the config's ``cost`` says otherwise), cheapest first."""
        return [ResultRow.from_row(r) for r in self.summary.front]

    @property
    def results(self) -> pd.DataFrame:
        """Every candidate's row as a ``pandas.DataFrame`` (columns :data:`RESULT_COLUMNS`)."""
        import pandas as pd

        return pd.DataFrame([ResultRow.from_row(r).__dict__ for r in self.rows], columns=list(RESULT_COLUMNS))

    def export(self, candidate: int | str | ResultRow, out_dir: str | Path | None = None) -> Path:
        """Export any candidate of the run as a standalone model (default folder:
        ``RUN/selected/<name>``). Accepts an index, the method's notation or a front row."""
        if self.method is None:
            raise ValueError("this result has no method to export with")
        key = candidate.candidate if isinstance(candidate, ResultRow) else candidate
        return export_from_run(self.method, self.run_dir or self.out_dir, key, out_dir)


# --------------------------------------------------------------------------- the pipeline
def _claim(method: SearchMethod, out_dir: str | Path, resume: bool) -> Path:
    """``prepare_run_dir`` that also resumes folders written before an option got its own
    key: their config is read through the method (defaults filled in) before comparing."""
    from stitchnas.core.io import read_json

    current = method.run_config()
    path = Path(out_dir) / RUN_CONFIG
    if resume and path.exists():
        previous = read_json(path, "run config")
        if not isinstance(previous, dict):
            raise ValueError(f"run config {path}: expected a JSON object, got {type(previous).__name__}")
        try:
            rebuilt = type(method).from_run_config(previous, f"run config {path}")  # type: ignore[attr-defined]
            normalised = rebuilt.run_config()
        except ValueError:
            normalised = None
        if normalised == current and run_options(previous) != current:
            log.info("run config %s: written by an older version; resuming with today's defaults", path)
            return prepare_run_dir(out_dir, previous, resume)
    return prepare_run_dir(out_dir, current, resume)


def _reference(method: SearchMethod, task: CandidateTask) -> tuple[float, float] | None:
    if method.hv_reference == "space":
        return space_reference(method.cost.axis, task)
    return None


def _score(method: SearchMethod, network: nn.Module, data: DataSplits, out: Path, backend: EvaluationBackend,
           progress: bool, what: str,
           write_json: bool = True) -> tuple[list[dict[str, Any]], FrontSummary, CandidateTask]:
    task = method.task(network, data)
    method.open_run(network, task, out)
    table = ResultsTable(out / RESULTS_FILE, RESULT_COLUMNS)
    check_results(table, len(task))  # a resumed table must belong to this run
    backend(CandidateJob(task, table, method.candidates(task), out, seed=method.seed,
                         subset_size=method.subset_size, progress=progress, device=method.device))
    log.info("results: %s", out / RESULTS_FILE)
    rows = table.rows()
    cost = front_cost(method.cost, task, rows, out, method.device, progress)  # latency: measured once, cached
    summary = summarize_front(rows, out, default_candidate=str(task.default_index()),
                              reference=_reference(method, task), title=method.title(network, data, what), cost=cost,
                              rank=method.rank, write_json=write_json)
    return rows, summary, task


def run_search(
    method: SearchMethod,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    backend: EvaluationBackend = evaluate_in_process,
) -> SearchResult:
    """Run (or resume) ``method`` and write its files into ``out_dir``.

    Raises:
        ValueError: Bad options or input files (one line), before anything is written where
            possible; a folder that holds another run without ``resume``.
    """
    data = method.load_data()
    network = method.build(data)  # bad input fails here, before the folder is claimed
    out = _claim(method, out_dir, resume)
    log.info("data: %s", data.describe())
    ckpt = out / method.checkpoint_file
    history = method.train(network, TrainContext(data, ckpt, out, resume, progress, on_step))
    network.eval()
    log.info("checkpoint: %s", ckpt)
    # pareto.json is written last: it marks a finished run (an interrupt during the exports leaves none)
    rows, summary, _ = _score(method, network, data, out, backend, progress, method.trained_label(), write_json=False)
    exports: list[Path] = []
    if method.export_front:
        _remove_stale_exports(out / EXPORTS_DIR, {method.export_dir_name(network, int(r["candidate"]))
                                                  for r in summary.front})
        provenance = method.provenance(out)
        for row in summary.front:
            index = int(row["candidate"])
            folder = out / EXPORTS_DIR / method.export_dir_name(network, index)
            exports.append(method.export(folder, network, index, data, provenance, search_val_acc=row["val_acc"]))
            annotate_export(folder, export_cost(summary.cost, summary.cost_column, row), method.rank.export_record(row))
        log.info("exported %d Pareto-optimal models to %s", len(exports), out / EXPORTS_DIR)
    summary.write_json(out)
    log.info("Pareto front: %s (%d of %d %s)", out / "pareto.json", len(summary.front), len(rows), method.noun)
    return SearchResult(out, rows, summary, exports, history, method=method, run_dir=out)


def _remove_stale_exports(folder: Path, keep: set[str]) -> None:
    """``exports/`` holds exactly the final front: a model an earlier (partial or older) front
    exported and the final front dominates is removed."""
    if not folder.is_dir():
        return
    for stale in sorted(p for p in folder.iterdir() if p.name not in keep):
        shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink()
        log.info("removed %s: not on the final Pareto front", stale)


def evaluate_run(
    method: SearchMethod,
    run_dir: str | Path,
    no_train: bool = False,
    out_dir: str | Path | None = None,
    progress: bool = True,
    backend: EvaluationBackend = evaluate_in_process,
) -> SearchResult:
    """Re-score every candidate of a finished run into ``out_dir`` (default
    ``RUN/evaluate/checkpoint``, or with ``no_train`` ``RUN/evaluate/init``: the network as
    :meth:`SearchMethod.build` makes it, before any training)."""
    run = Path(run_dir)
    data = method.load_data()
    network = method.build(data).eval() if no_train else method.load_trained(run, data)
    what = "before training" if no_train else "checkpoint"
    out = Path(out_dir) if out_dir is not None else run / "evaluate" / ("init" if no_train else "checkpoint")
    out.mkdir(parents=True, exist_ok=True)
    clear_results(out, RESULTS_FILE)
    rows, summary, _ = _score(method, network, data, out, backend, progress, what)
    log.info("evaluated %d %s (%s): %s", len(rows), method.noun, what, out.resolve())
    return SearchResult(out, rows, summary, method=method, run_dir=run)


def export_from_run(method: SearchMethod, run_dir: str | Path, candidate: int | str,
                    out_dir: str | Path | None = None) -> Path:
    """Export one candidate of a finished run with the weights of its last checkpoint (default
    folder ``RUN/selected/<name>``); its recorded search accuracy comes from ``results.csv``."""
    run = Path(run_dir)
    data = method.load_data()
    network = method.load_trained(run, data)
    index = method.parse_candidate(network, candidate)
    task = method.task(network, data)
    recorded = None
    if (run / RESULTS_FILE).exists():
        table = ResultsTable(run / RESULTS_FILE, RESULT_COLUMNS)
        check_results(table, len(task))
        recorded = next((r["val_acc"] for r in table.rows() if str(r["candidate"]) == str(index)), None)
    folder = Path(out_dir) if out_dir is not None else run / SELECTED_DIR / method.export_dir_name(network, index)
    folder = method.export(folder, network, index, data, method.provenance(run), search_val_acc=recorded)
    row = task.row(index)
    cost = front_cost(method.cost, task, [{**row, "status": "ok"}], run, method.device, progress=False)
    annotate_export(folder, cost.record(cost.rows([row])[0]))
    return folder


def rows_by_candidate(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(r["candidate"]): r for r in rows}


__all__ = [
    "EXPORTS_DIR", "HV_REFERENCES", "RESULTS_FILE", "SELECTED_DIR", "SearchMethod", "SearchResult", "TrainContext",
    "evaluate_run", "export_from_run", "run_search",
]
