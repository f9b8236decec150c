"""Candidate evaluation and search on Ray Tune, with Optuna's samplers through ``OptunaSearch``.

:meth:`RayTuneStage.evaluate` is an evaluation backend of the search pipeline
(:func:`stitchnas.search.pipeline.run_search`, ``backend=``) for every method. The driver keeps the one
source of truth, the run's ``results.csv``; Tune only schedules trials:

* The trained supernet weights and the two search splits go into Ray's object store once,
  through ``tune.with_parameters``; every trial reads them from there (never re-pickled per
  trial), and a reused actor (``reuse_actors=True``) keeps the rebuilt supernet cached.
* ``exhaustive`` and ``random`` put several candidates in one trial (``candidates_per_trial``)
  so Tune's per-trial overhead is shared, and so is the work of the prefixes they share where
  the method's scorer can (:class:`~stitchnas.search.candidates.PrefixScorer`); a trial reports
  all its rows at once.
* ``nsga2`` and ``tpe`` run Optuna's NSGA-II / TPE samplers through Tune's ``OptunaSearch``
  (accuracy maximised, analytic FLOPs minimised), one candidate per trial, over the task's
  encoding (pooling: the downsampling positions; stitches: the FLOPs rank). Invalid
  suggestions and already-evaluated candidates are told to Optuna as failed trials and asked
  again without starting a Tune trial, so the budget counts distinct evaluations only.

A trial that raises is retried by Tune (``FailureConfig(max_failures)``), from its last
checkpoint so the candidates it finished are not evaluated again. When a candidate fails on
every attempt it gets a ``failed`` row with the error, the rest of its batch is queued again,
and the search goes on. Resuming starts a new Tune experiment over what the results table
does not yet hold (the Optuna study is warm-started from the table); Tune's own
``Tuner.restore`` is not used, because the restored searcher would be a stale pickled copy
that has not seen the rows written since its last snapshot.

Ray is imported lazily: importing this module costs nothing on machines that never use it.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stitchnas.backends.cluster import check_resources, cluster_nodes, init_ray, ray_session, set_env_defaults
from stitchnas.backends.tune_search import (
    OPTUNA_ALGORITHMS,
    TRIAL_NODE_COLUMNS,
    TRIAL_NODES_FILE,
    Ledger,
    make_optuna_searcher,
    make_queue_searcher,
    make_sampler,
)
from stitchnas.core import threads
from stitchnas.core.io import ResultsTable, atomic_write_json, read_json
from stitchnas.search.candidates import (
    SEARCH_STATE_FILE,
    SEARCH_SUMMARY_FILE,
    CandidateEvaluator,
    CandidateJob,
    LookupEvaluator,
    Scorer,
    score_together,
    split_score,
)

__all__ = [
    "FailureHooks", "Ledger", "RayTuneStage", "SearchInterrupted", "TuneOptions", "TuneSummary", "check_resources",
    "cluster_nodes", "init_ray", "make_sampler", "ray_session",
]

log = logging.getLogger(__name__)

SEARCH_ALGORITHMS: tuple[str, ...] = ("exhaustive", "random", "nsga2", "tpe")
TUNE_DIR = "tune"


# --------------------------------------------------------------------------- options
@dataclass(frozen=True)
class FailureHooks:
    """TEST HOOK ONLY: makes chosen candidates raise inside their trial.

    Attributes:
        fail_candidates: Candidate indices that raise on every attempt.
        flaky_candidates: Candidate indices that raise on their first attempt only.
        delay_s: Seconds to sleep before each candidate (lets a test kill a run mid-way).
    """

    fail_candidates: tuple[int, ...] = ()
    flaky_candidates: tuple[int, ...] = ()
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "fail_candidates", tuple(int(c) for c in self.fail_candidates))
        object.__setattr__(self, "flaky_candidates", tuple(int(c) for c in self.flaky_candidates))
        if self.delay_s < 0:
            raise ValueError(f"failure hooks 'delay_s': expected >= 0, got {self.delay_s}")


@dataclass(frozen=True)
class TuneOptions:
    """How the Ray Tune stage searches and what each trial may use.

    Attributes:
        search: ``exhaustive`` (every candidate of the run), ``random`` (a seeded subset of
            ``budget`` candidates), ``nsga2`` or ``tpe`` (Optuna, ``budget`` evaluations).
        budget: Number of evaluations (failed ones included); required except for exhaustive.
        candidates_per_trial: Candidates one trial evaluates (exhaustive / random).
        cpus_per_trial: CPUs reserved per trial (also the trial's torch threads).
        gpus_per_trial: GPUs per trial, fractional allowed (scheduling only, not a memory cap).
        address: ``None`` starts a local Ray on 127.0.0.1; ``"auto"`` or ``host:port`` joins a
            running cluster.
        num_cpus: CPUs of the local Ray started when ``address`` is None (None: all cores).
        max_failures: Retries of a crashing trial before its candidate is recorded as failed.
        seed: Sampler seed (None: the training seed).
        population_size: NSGA-II population (None: ``budget // 5`` clamped to 4..50).
        hooks: Test hook only (see :class:`FailureHooks`).
    """

    search: str = "exhaustive"
    budget: int | None = None
    candidates_per_trial: int = 8
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    address: str | None = None
    num_cpus: int | None = None
    max_failures: int = 1
    seed: int | None = None
    population_size: int | None = None
    hooks: FailureHooks = field(default_factory=FailureHooks)

    def __post_init__(self) -> None:
        if self.search not in SEARCH_ALGORITHMS:
            raise ValueError(f"search algorithm {self.search!r}: unknown, expected one of {SEARCH_ALGORITHMS}")
        if self.budget is not None and (isinstance(self.budget, bool) or self.budget < 1):
            raise ValueError(f"budget: expected a number of evaluations >= 1, got {self.budget}")
        if self.budget is None and self.search != "exhaustive":
            raise ValueError(f"budget: --search {self.search} needs a budget (number of evaluations)")
        if self.candidates_per_trial < 1:
            raise ValueError(f"candidates_per_trial: expected >= 1, got {self.candidates_per_trial}")
        if not self.cpus_per_trial > 0:
            raise ValueError(f"cpus_per_trial: expected > 0, got {self.cpus_per_trial}")
        if self.gpus_per_trial < 0:
            raise ValueError(f"gpus_per_trial: expected >= 0, got {self.gpus_per_trial}")
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise ValueError(f"gpus_per_trial: above 1 it must be whole, got {self.gpus_per_trial}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"num_cpus: expected >= 1 or None, got {self.num_cpus}")
        if self.max_failures < 0:
            raise ValueError(f"max_failures: expected >= 0, got {self.max_failures}")
        if self.population_size is not None and self.population_size < 2:
            raise ValueError(f"population_size: expected >= 2 or None, got {self.population_size}")


def concurrency(opts: TuneOptions, nodes: Sequence[dict[str, float]]) -> int:
    """How many trials the cluster can run at once."""
    per_node = []
    for n in nodes:
        slots = int(float(n.get("CPU", 0)) // opts.cpus_per_trial)
        if opts.gpus_per_trial > 0:
            slots = min(slots, int(round(float(n.get("GPU", 0)) / opts.gpus_per_trial, 6)))
        per_node.append(slots)
    return max(1, sum(per_node))


# --------------------------------------------------------------------------- the trial
@dataclass(frozen=True)
class TrialShared:
    """What every trial reads from the object store (once per trial, never re-pickled)."""

    evaluator: CandidateEvaluator
    device: str


# A reused actor runs many trials of one search: keep its prepared scorer (the rebuilt model)
# instead of rebuilding it per trial. One entry: a new search's key replaces the old one.
_PREPARED: dict[str, Scorer] = {}


def _prepared_scorer(shared: TrialShared) -> Scorer:
    key = shared.evaluator.key
    if key not in _PREPARED:
        _PREPARED.clear()
        _PREPARED[key] = shared.evaluator.prepare(shared.device)
    return _PREPARED[key]


def _read_trial_state() -> dict[str, Any]:
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return {"rows": [], "failures": {}}
    with checkpoint.as_directory() as folder:
        return json.loads((Path(folder) / "state.json").read_text())


def evaluate_trial(config: dict[str, Any], shared: TrialShared) -> None:
    """Tune trainable: score ``config["candidates"]`` and report their rows in one result.

    On an exception the trial reports the rows it finished plus the failing candidate and its
    error, with a checkpoint of that state, then re-raises: Tune retries the trial from the
    checkpoint, so finished candidates are not scored again. Each row names the Ray node that
    scored it (``node_id``, ``node_ip``; the driver keeps them in ``trial_nodes.csv``).
    """
    import ray
    from ray import tune

    node = {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address()}
    threads.apply(threads.choose_threads())  # the CPUs Ray gave this trial (--cpus-per-trial)
    score = _prepared_scorer(shared)
    hooks = config.get("hooks", {})
    state = _read_trial_state()
    done = {int(r["candidate"]) for r in state["rows"]}
    rows = list(state["rows"])
    # the trial's candidates in one pass where the scorer shares their prefixes; one that it
    # leaves out (or every one, if the pass fails) is scored alone below, which reports its error
    todo = [index for index in config["candidates"] if index not in done]
    start = time.perf_counter()
    try:
        together = score_together(score, todo)
    except Exception as err:  # noqa: BLE001 - each candidate is scored alone below and raises its own
        log.warning("trial: shared-prefix scoring failed (%s: %s); scoring one by one", type(err).__name__, err)
        together = {}
    each = (time.perf_counter() - start) / len(todo) if together else 0.0
    for index in todo:
        start = time.perf_counter() - (each if index in together else 0.0)
        try:
            if hooks.get("delay_s"):
                time.sleep(hooks["delay_s"])
            if index in hooks.get("fail_candidates", ()):
                raise RuntimeError(f"forced failure of candidate {index} (test hook)")
            if index in hooks.get("flaky_candidates", ()) and not state["failures"].get(str(index)):
                raise RuntimeError(f"forced first-attempt failure of candidate {index} (test hook)")
            acc, extra = split_score(together[index] if index in together else score(index))
        except Exception as err:  # any error is this candidate's; Tune decides on a retry
            state["rows"] = rows
            state["failures"][str(index)] = state["failures"].get(str(index), 0) + 1
            message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".strip()
            with tempfile.TemporaryDirectory() as folder:
                (Path(folder) / "state.json").write_text(json.dumps(state))
                tune.report({"rows": rows, "failed": {"candidate": index, "error": message,
                                                      "seconds": time.perf_counter() - start}},
                            checkpoint=tune.Checkpoint.from_directory(folder))
            raise
        row = {"candidate": index, "val_acc": acc, "seconds": time.perf_counter() - start, **node}
        rows.append({**row, "extra": extra} if extra is not None else row)
    tune.report({"rows": rows})


def _trial_dirname(trial: Any) -> str:
    return str(trial.trial_id)


def make_callback(ledger: Ledger) -> Any:
    from ray.tune import Callback

    class LedgerCallback(Callback):
        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            ledger.trial_started()

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            ledger.record(trial.trial_id, result)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            ledger.trial_errored(trial.trial_id, trial.num_failures, trial.get_error())

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            ledger.trial_finished(trial.trial_id)

    return LedgerCallback()


# --------------------------------------------------------------------------- the stage
def _check_search_state(out_dir: Path, opts: TuneOptions, seed: int) -> None:
    """A resumed run must search the way it started (its rows would mix otherwise)."""
    state = {"search": opts.search, "budget": opts.budget, "seed": seed}
    path = out_dir / SEARCH_STATE_FILE
    if path.exists():
        previous = read_json(path, "search state")
        if previous != state:
            changed = sorted(k for k in state if previous.get(k) != state[k])
            raise ValueError(f"search state {path}: --resume needs the original search options; differing: {changed}")
        return
    atomic_write_json(path, state)


def _candidates(job: CandidateJob, opts: TuneOptions, seed: int) -> list[int]:
    if opts.search == "exhaustive":
        if opts.budget is not None and len(job.candidates) > opts.budget:
            raise ValueError(f"budget: --search exhaustive has {len(job.candidates)} candidates, more than --budget "
                             f"{opts.budget}; raise the budget or use --search random, nsga2 or tpe")
        return list(job.candidates)
    if opts.search == "random":
        assert opts.budget is not None  # TuneOptions requires a budget except for exhaustive
        if job.subset_size is None:
            return job.task.sample(opts.budget, seed)
        if job.subset_size != opts.budget:
            raise ValueError(f"--candidates {job.subset_size}: --search random draws --budget {opts.budget} "
                             "candidates; give one or the other")
        return list(job.candidates)
    if job.subset_size is not None:
        raise ValueError(f"--candidates: only for --search exhaustive or random; --search {opts.search} takes --budget")
    return []


@dataclass
class TuneSummary:
    """What one Tune session did (also written to ``tune_summary.json``).

    ``wall_s`` is the whole ``Tuner.fit``; ``startup_s`` the part before the first trial
    started (experiment set-up, actor start-up); ``span_s`` first trial start to last trial end.
    """

    search: str
    budget: int | None
    trials: int
    evaluated: list[int]
    failed: list[int]
    previously_done: int
    wall_s: float
    startup_s: float = 0.0
    span_s: float = 0.0
    concurrency: int = 1
    invalid_suggestions: int = 0
    duplicate_suggestions: int = 0


class SearchInterrupted(KeyboardInterrupt):
    """Tune ended before the search did: it handles Ctrl-C (SIGINT) itself and returns from
    ``Tuner.fit`` with the trials it finished, so an incomplete ledger after ``fit`` means the
    run was interrupted. Raised as a KeyboardInterrupt so that every caller treats it exactly
    like Ctrl-C in the in-process backend: no front, no exports, ``--resume`` continues."""


def _check_complete(ledger: Ledger, opts: TuneOptions, budget: int | None, candidates: list[int],
                    space_size: int) -> None:
    done = set(ledger.rows)
    if opts.search in OPTUNA_ALGORITHMS:
        wanted = min(int(budget or 0), space_size)
        missing = max(0, wanted - len(done))
    else:
        wanted, missing = len(candidates), sum(1 for c in candidates if c not in done)
    if missing:
        raise SearchInterrupted(f"ray tune stopped with {wanted - missing} of {wanted} evaluations done")


class RayTuneStage:
    """The evaluation backend on Ray Tune: ``evaluate(job)`` scores any search's candidates.

    Args:
        options: Search algorithm, budget, batching and resources.
        lookup: Tabular mode for benchmarks: trials read each candidate's accuracy from this
            ``{candidate index: accuracy}`` table (e.g. an earlier exhaustive run) instead of
            evaluating it, so samplers can be compared through Tune at the cost of a lookup.
    """

    def __init__(self, options: TuneOptions, lookup: dict[int, float] | None = None) -> None:
        self.options = options
        self.lookup = lookup
        self.summary: TuneSummary | None = None

    def _shared(self, job: CandidateJob, opts: TuneOptions) -> TrialShared:
        evaluator = (job.task.evaluator() if self.lookup is None
                     else LookupEvaluator(uuid.uuid4().hex, dict(self.lookup)))
        return TrialShared(evaluator, device="cuda" if opts.gpus_per_trial > 0 else "cpu")

    def preflight(self) -> None:
        """Fail fast, before any training, if the connected cluster cannot host one trial."""
        check_resources(self.options.cpus_per_trial, self.options.gpus_per_trial, cluster_nodes())

    def evaluate(self, job: CandidateJob) -> None:
        """Score ``job``'s candidates (or the searched ones) as Ray Tune trials into its table."""
        opts = self.options
        seed = job.seed if opts.seed is None else opts.seed
        candidates = _candidates(job, opts, seed)
        budget = opts.budget
        if opts.search in OPTUNA_ALGORITHMS and budget is not None and budget > len(job.task):
            log.warning("budget %d exceeds the %d candidates; evaluating at most all of them", budget, len(job.task))
            budget = len(job.task)
        _check_search_state(job.out_dir, opts, seed)
        with ray_session(opts.address, opts.num_cpus):
            nodes = cluster_nodes()
            check_resources(opts.cpus_per_trial, opts.gpus_per_trial, nodes)
            self.summary = self._run(job, opts, seed, budget, candidates, concurrency(opts, nodes))
        atomic_write_json(job.out_dir / SEARCH_SUMMARY_FILE, asdict(self.summary))

    def _run(self, job: CandidateJob, opts: TuneOptions, seed: int, budget: int | None,
             candidates: list[int], slots: int) -> TuneSummary:
        import optuna

        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not one INFO line per ask/tell
        try:
            return self._run_tuner(job, opts, seed, budget, candidates, slots)
        finally:
            optuna.logging.set_verbosity(verbosity)

    def _run_tuner(self, job: CandidateJob, opts: TuneOptions, seed: int, budget: int | None,
                   candidates: list[int], slots: int) -> TuneSummary:
        from ray import tune
        from tqdm.auto import tqdm

        set_env_defaults()
        hooks = asdict(opts.hooks)
        total = len(candidates) if opts.search not in OPTUNA_ALGORITHMS else int(budget or 0)
        bar = tqdm(total=total, desc="candidates (ray)", unit="cand", disable=not job.progress, leave=False)
        nodes_path = job.out_dir / TRIAL_NODES_FILE
        if not job.table.rows():  # a fresh (or re-started) table: no stale node records
            nodes_path.unlink(missing_ok=True)
        ledger = Ledger(job.task, job.table, budget, bar, nodes=ResultsTable(nodes_path, TRIAL_NODE_COLUMNS))
        previously_done = len(ledger.rows)
        bar.update(min(total, len([c for c in candidates if ledger.known(c)]) if candidates else previously_done))
        if opts.search in OPTUNA_ALGORITHMS:
            searcher = make_optuna_searcher(ledger, opts.search, seed, opts.population_size, hooks)
        else:
            searcher = make_queue_searcher(ledger, candidates, opts.candidates_per_trial, slots, hooks)
        trainable = tune.with_resources(
            tune.with_parameters(evaluate_trial, shared=self._shared(job, opts)),
            {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial},
        )
        storage = (job.out_dir / TUNE_DIR).resolve()
        storage.mkdir(exist_ok=True)
        name = f"session-{sum(1 for p in storage.iterdir() if p.is_dir()) + 1:03d}"
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1, reuse_actors=True,
                                        max_concurrent_trials=slots, trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=opts.max_failures),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                      callbacks=[make_callback(ledger)]),
        )
        start = time.perf_counter()
        quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # no per-trial result files by design; not an error here
        try:
            tuner.fit()
        finally:
            quiet.setLevel(level)
            bar.close()
        wall = time.perf_counter() - start
        log.info("ray tune: %d trials, %d candidates scored, %d failed in %.1fs",
                 ledger.trials, len(ledger.evaluated), len(ledger.failed), wall)
        _check_complete(ledger, opts, budget, candidates, len(job.task))
        first = ledger.first_start if ledger.first_start is not None else start + wall
        last = ledger.last_finish if ledger.last_finish is not None else first
        return TuneSummary(
            search=opts.search, budget=budget, trials=ledger.trials, evaluated=ledger.evaluated,
            failed=ledger.failed, previously_done=previously_done, wall_s=round(wall, 3),
            startup_s=round(first - start, 3), span_s=round(max(0.0, last - first), 3), concurrency=slots,
            invalid_suggestions=getattr(searcher, "invalid", 0),
            duplicate_suggestions=getattr(searcher, "duplicates", 0),
        )
