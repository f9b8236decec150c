"""What an evaluation backend needs to know about one search, whatever is being searched.

Every search in stitchnas ends the same way: a fixed set of candidates, indexed ``0..N-1``, is
scored on ``search_val`` and written one row per candidate to the run's ``results.csv``. A
:class:`CandidateTask` describes that set for a backend (pooling placements of a supernet,
SN-Net / SN-Netv2 stitches, Learngene descendants): the identity, FLOPs and parameter columns of
a row, a seeded subset, the Optuna encoding of a candidate, and a picklable
:class:`CandidateEvaluator` that rebuilds the scorer wherever it runs (this process or a Ray
worker). :class:`CandidateJob` is one evaluation request: a task, the table to fill and which
candidates to score. :func:`evaluate_in_process` is the plain backend; the Ray Tune backend is
:meth:`stitchnas.backends.tune.RayTuneStage.evaluate`.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from tqdm.auto import tqdm

from stitchnas.core.io import ResultsTable

if TYPE_CHECKING:
    import torch
    from torch import nn

    from stitchnas.core.training import ImageDataset, ImageSplit, StreamSource

log = logging.getLogger(__name__)

#: Errors a candidate may raise without stopping the search: it gets a ``failed`` row.
CANDIDATE_ERRORS: tuple[type[Exception], ...] = (RuntimeError, ValueError, FloatingPointError)

#: Files an evaluation backend keeps in a run folder besides ``results.csv`` (the search it ran
#: and its summary); a re-evaluation from a clean table removes them with it.
SEARCH_STATE_FILE = "search.json"
SEARCH_SUMMARY_FILE = "tune_summary.json"



@dataclass(frozen=True)
class Score:
    """A candidate's score with method-specific extras the driver records (plain JSON values,
    e.g. a mixture's accuracy on every supernet); a scorer may return a bare float instead."""

    val_acc: float
    extra: dict[str, Any]


Scorer = Callable[[int], "float | Score"]

#: Candidates :func:`score_candidates` hands to a :class:`PrefixScorer` at once: rows are written
#: (and a resume picks up) after each group, in the candidates' order.
SHARED_CHUNK = 128


class PrefixScorer:
    """A scorer that can also score several candidates in one pass, computing each prefix they
    share once per batch (see :mod:`stitchnas.core.prefix`), with the same scores as one at a time.

    Args:
        one: ``index -> score``, one candidate alone (also what reports a candidate's error).
        many: ``indices -> {index: score}`` for the candidates it could score; a candidate it
            leaves out (e.g. non-finite logits) is scored alone by the caller, which reports its error.
    """

    def __init__(self, one: Callable[[int], float | Score],
                 many: Callable[[Sequence[int]], dict[int, float | Score]]) -> None:
        self.one, self.many = one, many

    def __call__(self, index: int) -> float | Score:
        return self.one(index)

    def score_many(self, indices: Sequence[int]) -> dict[int, float | Score]:
        return self.many(indices)


def score_together(score: Scorer, indices: Sequence[int]) -> dict[int, float | Score]:
    """The scores of ``indices`` that ``score`` computes in one shared pass (a :class:`PrefixScorer`);
    ``{}`` for a plain scorer, fewer than two candidates, or a shared pass that raised one of
    :data:`CANDIDATE_ERRORS` (logged): each missing candidate is then scored alone."""
    if not isinstance(score, PrefixScorer) or len(set(indices)) < 2:
        return {}
    try:
        return score.score_many(indices)
    except CANDIDATE_ERRORS as err:
        log.warning("shared-prefix scoring of %d candidates failed (%s: %s); scoring them one by one",
                    len(indices), type(err).__name__, err)
        return {}


def split_score(result: float | Score) -> tuple[float, dict[str, Any] | None]:
    """``(val_acc, extra or None)`` of what a scorer returned."""
    if isinstance(result, Score):
        return float(result.val_acc), result.extra
    return float(result), None


class CandidateEvaluator(ABC):
    """Scores candidates by index. It is pickled once per search into Ray's object store, so it
    holds plain data (tensors, configs, a CPU module) and builds the scorer in :meth:`prepare`.

    ``key`` is unique per search: a Ray worker that already prepared this evaluator (a reused
    actor) keeps the prepared scorer instead of rebuilding the model for every trial.
    """

    key: str

    @abstractmethod
    def prepare(self, device: str) -> Scorer:
        """Build the model on ``device`` and return ``index -> accuracy in percent`` (a
        :class:`PrefixScorer` where several candidates can share their prefixes' work)."""


@dataclass(frozen=True)
class LookupEvaluator(CandidateEvaluator):
    """Tabular mode for benchmarks: accuracies come from a ``{index: accuracy}`` table (e.g. an
    earlier exhaustive run), so samplers can be compared at the cost of a lookup."""

    key: str
    table: dict[int, float]

    def prepare(self, device: str) -> Scorer:
        return lambda index: float(self.table[index])


class CandidateTask(ABC):
    """One search's candidate set, indexed ``0..len-1``, as backends see it.

    The default Optuna encoding is one integer, the candidate's rank by FLOPs: samplers then
    see neighbours of similar cost, an ordinal structure a bare index lacks. Tasks with a
    natural structure (pooling positions) override the three encoding methods.
    """

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def describe(self, index: int) -> str:
        """A short human label of candidate ``index`` (logs, the ``label`` column)."""

    @abstractmethod
    def row(self, index: int) -> dict[str, Any]:
        """The ``candidate``, ``label``, ``config``, ``flops`` and ``params`` columns."""

    @abstractmethod
    def evaluator(self) -> CandidateEvaluator:
        """A picklable evaluator of this task's candidates."""

    @abstractmethod
    def flops(self, index: int) -> int:
        """Analytic FLOPs of candidate ``index`` (fvcore's convention)."""

    def default_index(self) -> int:
        """The candidate a seeded subset always contains (the preset / largest model)."""
        return max(range(len(self)), key=self.flops)

    # ---------------------------------------------------------------- measured cost
    def standalone(self, index: int) -> nn.Module:
        """The plain module candidate ``index`` exports to, freshly initialised (the export's
        architecture; latency does not depend on the weights), on the CPU, for measuring its
        latency (:mod:`stitchnas.search.cost`).

        Raises:
            NotImplementedError: The task cannot build its candidates alone.
        """
        raise NotImplementedError(f"{type(self).__name__}: candidates cannot be built alone to measure latency")

    def input_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one input image (default: the task's ``data`` splits).

        Raises:
            NotImplementedError: The task has no ``data``.
        """
        data = getattr(self, "data", None)
        if data is None:
            raise NotImplementedError(f"{type(self).__name__}: no input shape (the task holds no data)")
        return (int(data.in_chans), int(data.input_size), int(data.input_size))

    def sample(self, size: int, seed: int) -> list[int]:
        """A seeded subset of ``size`` candidates, always with :meth:`default_index`, sorted."""
        if size >= len(self):
            return list(range(len(self)))
        rng = random.Random(seed)
        default = self.default_index()
        others = [i for i in range(len(self)) if i != default]
        return sorted([default, *rng.sample(others, size - 1)])

    # ---------------------------------------------------------------- Optuna encoding
    @functools.cached_property
    def flops_order(self) -> list[int]:
        """Candidate indices from the cheapest to the dearest (ties by index)."""
        return sorted(range(len(self)), key=lambda i: (self.flops(i), i))

    def distributions(self) -> dict[str, Any]:
        from optuna.distributions import IntDistribution

        return {"flops_rank": IntDistribution(0, len(self) - 1)}

    def decode(self, params: dict[str, Any]) -> int | None:
        """The candidate an Optuna suggestion names; None for an invalid suggestion."""
        return self.flops_order[int(params["flops_rank"])]

    def encode(self, index: int) -> dict[str, Any]:
        return {"flops_rank": self.flops_order.index(index)}

    # ---------------------------------------------------------------- driver hook
    def on_scored(self, index: int, extra: dict[str, Any]) -> None:
        """Called in the driver process (whatever the backend) with the extras of a
        :class:`Score`, before the candidate's row is written. Does nothing by default."""


@dataclass
class CandidateJob:
    """One evaluation request: score ``candidates`` of ``task`` into ``table``.

    Attributes:
        task: The candidate set.
        table: The run's results table (rows already there are not scored again).
        candidates: Indices to score in process or by ``exhaustive`` search.
        out_dir: The run folder (backends keep their own state there).
        seed: The run's seed (seeded subsets, samplers).
        subset_size: Set when ``candidates`` is a seeded subset the user asked for (so a
            backend's ``random`` search can check it agrees with its budget).
        progress: Show progress bars.
        device: Where :func:`evaluate_in_process` scores (a Ray backend picks its own).
    """

    task: CandidateTask
    table: ResultsTable
    candidates: list[int]
    out_dir: Path
    seed: int = 0
    subset_size: int | None = None
    progress: bool = True
    device: str = "cpu"


EvaluationBackend = Callable[[CandidateJob], None]


def clear_results(out_dir: Path, results_file: str) -> None:
    """Start a re-evaluation from a clean table (and no record of an earlier search)."""
    for name in (results_file, SEARCH_STATE_FILE, SEARCH_SUMMARY_FILE):
        (out_dir / name).unlink(missing_ok=True)


def evaluate_in_process(job: CandidateJob) -> None:
    """Score every candidate of ``job`` not yet in its table in this process (shared prefixes
    once per batch where the scorer can, :func:`score_candidates`), writing rows in ``job``'s
    order; a failing candidate gets a ``failed`` row and the search goes on."""
    todo = pending(job.table, job.candidates)
    if todo:  # a finished (resumed) job builds no model
        score_candidates(job.table, job.task, todo, job.task.evaluator().prepare(job.device), job.progress)


def check_results(table: ResultsTable, num_candidates: int) -> None:
    """Refuse a results table that cannot belong to a run of ``num_candidates`` candidates,
    before anything reads or adds to it: a candidate that is not an index, one that appears
    twice, an unknown status, FLOPs or parameters that are not counts, or an ``ok`` row
    without a finite accuracy.

    Raises:
        ValueError: One line naming the file and the line.
    """
    seen: dict[str, int] = {}
    for line, row in enumerate(table.rows(), start=2):
        key = str(row.get("candidate"))
        where = f"results table {table.path}: line {line}"
        if not key.isdigit() or int(key) >= num_candidates:
            raise ValueError(f"{where}: candidate {key!r} is not a candidate of this run "
                             f"(expected an index in 0..{num_candidates - 1}); start a new run folder")
        if key in seen:
            raise ValueError(f"{where}: candidate {key} is already on line {seen[key]}")
        seen[key] = line
        for column in ("flops", "params"):
            value = row.get(column)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{where}: column {column!r} is {value!r}, expected a count >= 0")
        status, acc = row.get("status"), row.get("val_acc")
        if status not in ("ok", "failed"):
            raise ValueError(f"{where}: status {status!r}, expected 'ok' or 'failed'")
        if status == "ok" and not (isinstance(acc, (int, float)) and math.isfinite(acc)):
            raise ValueError(f"{where}: candidate {key} is 'ok' without a finite val_acc (got {acc!r})")


def pending(table: ResultsTable, candidates: Sequence[int]) -> list[int]:
    """The candidates without a row in ``table`` yet (logs how many are done)."""
    done = table.done_keys("candidate")
    todo = [i for i in candidates if str(i) not in done]
    if len(todo) < len(candidates):
        log.info("%d of %d candidates already evaluated", len(candidates) - len(todo), len(candidates))
    return todo


def score_candidates(table: ResultsTable, task: CandidateTask, candidates: Sequence[int], score: Scorer,
                     progress: bool = True, chunk: int = SHARED_CHUNK) -> None:
    """Score each candidate and append its row, in ``candidates`` order; one that raises a
    :data:`CANDIDATE_ERRORS` error gets a ``failed`` row with the error, and the rest go on.

    A :class:`PrefixScorer` scores ``chunk`` candidates at a time in one shared pass; their rows
    follow together, each with the pass's time split evenly in ``seconds``."""
    bar = tqdm(total=len(candidates), desc="candidates", unit="cand", disable=not progress, leave=False)
    for first in range(0, len(candidates), max(1, chunk)):
        part = candidates[first:first + max(1, chunk)]
        start = time.perf_counter()
        shared = score_together(score, part)
        each = (time.perf_counter() - start) / len(part) if shared else 0.0
        for index in part:
            _score_row(table, task, index, score, shared, each)
            if not shared:
                bar.update()
        if shared:  # one step for the pass: per-row steps microseconds apart show a bogus rate
            bar.update(len(part))
    bar.close()


def _score_row(table: ResultsTable, task: CandidateTask, index: int, score: Scorer,
               shared: dict[int, float | Score], shared_seconds: float) -> None:
    row = task.row(index)
    start = time.perf_counter()
    if index in shared:
        start -= shared_seconds
    try:
        val_acc, extra = split_score(shared[index] if index in shared else score(index))
        if extra is not None:
            task.on_scored(index, extra)
        row.update(val_acc=val_acc, status="ok", error="")
    except CANDIDATE_ERRORS as err:
        row.update(val_acc=float("nan"), status="failed", error=f"{type(err).__name__}: {err}")
        log.warning("candidate %s failed: %s", row["label"], row["error"])
    row["seconds"] = round(time.perf_counter() - start, 4)
    table.append(row)


def compact(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` itself if it owns its whole storage, else a copy: pickling a view (a slice
    of a larger data set) would ship the whole storage to every Ray worker."""
    if tensor.untyped_storage().nbytes() > tensor.numel() * tensor.element_size():
        return tensor.detach().clone()
    return tensor.detach()


#: A data split as a candidate evaluator carries it (:func:`ship_split`).
ShippedSplit: TypeAlias = "ImageDataset | StreamSource"


def ship_split(split: ImageSplit) -> ShippedSplit:
    """What a candidate evaluator carries of a data split (pickled to Ray trials): its tensors
    (:func:`compact`) with whether a mirror image keeps its label (fine-tuned scoring augments
    as training does), or a split streamed from disk itself (file paths, not images; the trials
    must see the same files)."""
    from stitchnas.core.training import ImageDataset

    tensors = getattr(split, "tensors", None)
    if tensors is not None:
        return ImageDataset(*(compact(t) for t in tensors), mirror_invariant=getattr(split, "mirror_invariant", True))
    return split  # type: ignore[return-value]  # not a TensorDataset: a StreamSource


def unship_split(shipped: ShippedSplit) -> ImageSplit:
    """The split :func:`ship_split` packed, as loops take it."""
    return shipped


__all__: Sequence[str] = [
    "CANDIDATE_ERRORS", "CandidateEvaluator", "CandidateJob", "CandidateTask", "EvaluationBackend",
    "LookupEvaluator", "SEARCH_STATE_FILE", "SEARCH_SUMMARY_FILE", "Score", "Scorer", "check_results", "clear_results",
    "compact", "ShippedSplit", "ship_split", "unship_split",
    "evaluate_in_process", "pending", "score_candidates", "split_score",
]
