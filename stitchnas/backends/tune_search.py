"""Search algorithms behind the Ray Tune stage (:mod:`stitchnas.backends.tune`): the driver-side ledger
of results, the fixed-queue searcher (exhaustive / random) and Optuna's NSGA-II / TPE through
Tune's ``OptunaSearch``.

The Optuna space is the task's own encoding (:meth:`stitchnas.search.candidates.CandidateTask.distributions`:
downsampling positions for pooling, the FLOPs rank for stitches). A suggestion that names no
candidate is invalid, an already evaluated or in-flight candidate a duplicate: both are told to Optuna as
failed trials (which its samplers ignore) and asked again without starting a Tune trial, so the budget counts distinct
evaluations. If the sampler keeps repeating itself, a random unevaluated candidate is enqueued.

Ray and Optuna are imported inside the functions only.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stitchnas.core.io import ResultsTable
from stitchnas.search.candidates import CandidateTask

log = logging.getLogger(__name__)

OPTUNA_ALGORITHMS: tuple[str, ...] = ("nsga2", "tpe")
MAX_ASKS_PER_TRIAL = 64
#: Where each candidate scored through Tune ran: ``trial_nodes.csv`` in the run folder.
TRIAL_NODES_FILE = "trial_nodes.csv"
TRIAL_NODE_COLUMNS = ("candidate", "trial", "node_id", "node_ip")


# --------------------------------------------------------------------------- Optuna samplers
def make_sampler(algorithm: str, budget: int, seed: int, population_size: int | None = None) -> Any:
    """Optuna's NSGA-II (small population, so a 50-evaluation budget sees several generations)
    or multi-objective TPE."""
    import optuna

    if algorithm == "nsga2":
        size = population_size or max(4, min(50, budget // 5))
        return optuna.samplers.NSGAIISampler(population_size=size, seed=seed)
    if algorithm == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, min(10, budget // 5)),
                                          multivariate=True, constant_liar=True)
    raise ValueError(f"search algorithm {algorithm!r}: not an Optuna sampler, expected one of {OPTUNA_ALGORITHMS}")


# --------------------------------------------------------------------------- driver bookkeeping
class Ledger:
    """Driver-side state shared by the searcher and the callback: the results table (the source
    of truth), the queue of candidates still to score and the trials in flight."""

    def __init__(self, task: CandidateTask, table: ResultsTable, budget: int | None, progress: Any = None,
                 nodes: ResultsTable | None = None) -> None:
        self.task = task
        self.table = table
        self.nodes = nodes  # candidate -> the trial and Ray node that scored it (TRIAL_NODE_COLUMNS)
        self.budget = budget
        self.rows: dict[int, dict[str, Any]] = {int(r["candidate"]): r for r in self.table.rows()}
        self.queue: deque[int] = deque()
        self.inflight: dict[str, list[int]] = {}
        self.failing: dict[str, dict[str, Any]] = {}
        self.evaluated: list[int] = []
        self.failed: list[int] = []
        self.trials = 0
        self.progress = progress
        self.first_start: float | None = None  # perf_counter of the first trial start
        self.last_finish: float | None = None  # ... and of the last trial end

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles searchers and callbacks into its experiment state; the ledger lives on
        # the driver only (a resumed run rebuilds it from the results table), so keep it small.
        return {"snapshot": self.snapshot()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON view of the bookkeeping (searcher checkpoints, debugging)."""
        return {"done": sorted(self.rows), "queue": list(self.queue), "inflight": dict(self.inflight),
                "evaluated": list(self.evaluated), "failed": list(self.failed), "trials": self.trials}

    def known(self, index: int) -> bool:
        return index in self.rows

    def inflight_candidates(self) -> set[int]:
        return {c for batch in self.inflight.values() for c in batch}

    def remaining_budget(self) -> int:
        assert self.budget is not None
        return self.budget - len(self.rows) - len(self.inflight_candidates())

    def start(self, trial_id: str, batch: list[int]) -> None:
        self.inflight[trial_id] = list(batch)
        self.trials += 1

    def _append(self, index: int, val_acc: float, status: str, error: str, seconds: float) -> None:
        row = self.task.row(index)
        row.update(val_acc=val_acc, status=status, error=error, seconds=round(float(seconds), 4))
        self.table.append(row)
        self.rows[index] = self.table.rows()[-1]
        (self.evaluated if status == "ok" else self.failed).append(index)
        if self.progress is not None:
            self.progress.update(1)

    def record(self, trial_id: str, result: dict[str, Any]) -> None:
        """Rows of one reported result; repeated rows (a retried trial) are ignored."""
        for r in result.get("rows") or ():
            index = int(r["candidate"])
            if index not in self.rows:
                if r.get("extra") is not None:
                    self.task.on_scored(index, r["extra"])
                self._append(index, float(r["val_acc"]), "ok", "", float(r["seconds"]))
                if self.nodes is not None:
                    self.nodes.append({"candidate": index, "trial": trial_id, "node_id": r.get("node_id"),
                                       "node_ip": r.get("node_ip")})
        if result.get("failed"):
            self.failing[trial_id] = dict(result["failed"])

    def trial_errored(self, trial_id: str, attempts: int, error_text: str | None) -> None:
        """The trial failed on every attempt: its failing candidate gets a failed row and the
        rest of its batch is queued again."""
        self.last_finish = time.perf_counter()
        batch = self.inflight.pop(trial_id, [])
        failing = self.failing.pop(trial_id, None)
        todo = [c for c in batch if c not in self.rows]
        if not todo:
            return
        culprit = int(failing["candidate"]) if failing else todo[0]
        message = failing["error"] if failing else _last_line(error_text) or "trial crashed"
        seconds = float(failing.get("seconds", 0.0)) if failing else 0.0
        self._append(culprit, float("nan"), "failed", f"{message} (failed {attempts} attempts)", seconds)
        log.warning("candidate %s failed %d times: %s", self.task.describe(culprit), attempts, message)
        self.queue.extendleft(reversed([c for c in todo if c != culprit]))

    def trial_started(self) -> None:
        if self.first_start is None:
            self.first_start = time.perf_counter()

    def trial_finished(self, trial_id: str) -> None:
        self.last_finish = time.perf_counter()
        batch = self.inflight.pop(trial_id, [])
        self.failing.pop(trial_id, None)
        lost = [c for c in batch if c not in self.rows]
        self.queue.extendleft(reversed(lost))


def _last_line(text: str | None) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def make_queue_searcher(ledger: Ledger, candidates: Sequence[int], per_trial: int, slots: int,
                        hooks: dict[str, Any]) -> Any:
    """Exhaustive / random: hand out fixed candidates in batches of at most ``per_trial``,
    smaller near the end so the last trials finish together."""
    from ray.tune.search import Searcher

    class QueueSearcher(Searcher):
        def __init__(self) -> None:
            super().__init__()
            ledger.queue.extend(c for c in candidates if not ledger.known(c))

        # Ray annotates Optional[Dict] but documents returning Searcher.FINISHED (a str) too
        def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
            if not ledger.queue:
                return None if ledger.inflight else Searcher.FINISHED
            size = min(per_trial, max(1, math.ceil(len(ledger.queue) / slots)))
            batch = [ledger.queue.popleft() for _ in range(min(size, len(ledger.queue)))]
            ledger.start(trial_id, batch)
            return {"candidates": batch, "hooks": hooks}

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            pass  # the ledger callback records rows and failures

        def save(self, checkpoint_path: str) -> None:
            Path(checkpoint_path).write_text(json.dumps(ledger.snapshot()))

    return QueueSearcher()


def make_optuna_searcher(ledger: Ledger, algorithm: str, seed: int, population_size: int | None,
                         hooks: dict[str, Any]) -> Any:
    """NSGA-II / TPE through Tune's ``OptunaSearch``, one candidate per trial, warm-started
    from the rows already in the results table."""
    import optuna
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    task = ledger.task
    assert ledger.budget is not None
    dists = task.distributions()
    sampler = make_sampler(algorithm, ledger.budget, seed, population_size)
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, sampler=sampler, study_name="stitchnas",
                                directions=["maximize", "minimize"])
    generation_key = f"{type(sampler).__name__}:generation"  # NSGA-II's own bookkeeping key
    ok_seen = 0
    for index, row in ledger.rows.items():
        params = task.encode(index)
        if row.get("status") == "ok":
            attrs = {generation_key: ok_seen // sampler.population_size} if algorithm == "nsga2" else {}
            ok_seen += 1
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, system_attrs=attrs,
                                                      values=[float(row["val_acc"]), float(row["flops"])]))
        else:
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                      state=optuna.trial.TrialState.FAIL))
    rng = random.Random(seed)

    class OptunaCandidateSearcher(Searcher):
        def __init__(self) -> None:
            super().__init__()
            self.inner = OptunaSearch(space=dists, metric=["val_acc", "flops"], mode=["max", "min"],
                                      sampler=sampler, storage=storage, study_name="stitchnas")
            self.live: dict[str, tuple[str, int]] = {}
            self.invalid = 0
            self.duplicates = 0

        def _ask(self, trial_id: str) -> int:
            busy = ledger.inflight_candidates()
            for attempt in range(MAX_ASKS_PER_TRIAL + 1):
                inner_id = f"{trial_id}-{attempt}"
                if attempt == MAX_ASKS_PER_TRIAL:  # the sampler keeps repeating itself
                    left = [c for c in range(len(task)) if not ledger.known(c) and c not in busy]
                    study.enqueue_trial(task.encode(rng.choice(left)))
                params = self.inner.suggest(inner_id)
                assert params is not None  # OptunaSearch over a fixed space always suggests
                index = task.decode(params)
                if index is not None and not ledger.known(index) and index not in busy:
                    self.live[trial_id] = (inner_id, index)
                    return index
                if index is None:
                    self.invalid += 1
                else:
                    self.duplicates += 1
                self.inner.on_trial_complete(inner_id, None, error=True)
            raise AssertionError("unreachable: the enqueued candidate is always new")

        # Ray annotates Optional[Dict] but documents returning Searcher.FINISHED (a str) too
        def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
            if ledger.remaining_budget() <= 0 or len(ledger.rows) + len(ledger.inflight_candidates()) >= len(task):
                return None if ledger.inflight else Searcher.FINISHED
            index = self._ask(trial_id)
            ledger.start(trial_id, [index])
            return {"candidates": [index], "hooks": hooks}

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            inner_id, index = self.live.pop(trial_id)
            row = ledger.rows.get(index)
            if error or row is None or row.get("status") != "ok":
                self.inner.on_trial_complete(inner_id, None, error=True)
            else:
                self.inner.on_trial_complete(inner_id, {"val_acc": float(row["val_acc"]),
                                                        "flops": float(row["flops"])})

        def save(self, checkpoint_path: str) -> None:
            Path(checkpoint_path).write_text(json.dumps(ledger.snapshot()))

    return OptunaCandidateSearcher()


