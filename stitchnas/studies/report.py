"""Rank a search run against a ground-truth table (``stitchnas rank``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from searchspace.pooling import PoolingSpace
from stitchnas.core.io import ResultsTable, atomic_write_json
from stitchnas.search.candidates import check_results
from stitchnas.search.front import RESULT_COLUMNS
from stitchnas.studies.ranking import compare
from stitchnas.studies.truth import load_truth


def search_estimates(run_dir: str | Path) -> tuple[PoolingSpace, dict[str, float]]:
    """The space of a pooling search run (SPOS or BMS) and its validation accuracy per
    evaluated candidate.

    Raises:
        ValueError: One line when the folder is not a pooling search run or its results table
            cannot belong to it (see :func:`~stitchnas.search.candidates.check_results`).
    """
    from stitchnas.methods import method_from_run
    from stitchnas.methods.pooling import PoolingMethod

    run = Path(run_dir)
    method = method_from_run(run)
    if not isinstance(method, PoolingMethod):
        raise ValueError(f"run {run}: not a pooling search run (ranking against ground truth needs one)")
    results = run / "results.csv"
    if not results.exists():
        raise ValueError(f"run {run}: results.csv not found (the search has not evaluated candidates yet)")
    table = ResultsTable(results, RESULT_COLUMNS)
    check_results(table, len(method.cfg.space))
    est = {str(r["candidate"]): float(r["val_acc"]) for r in table.rows() if r["status"] == "ok"}
    return method.cfg.space, est


def rank_run(run_dir: str | Path, truth_dir: str | Path | Sequence[str | Path],
             ks: tuple[int, ...] = (1, 3, 5), partial: bool = False) -> dict[str, Any]:
    """Kendall tau, Spearman rho, top-k overlap and regret of a run's ranking; also written to
    ``ranking.json`` in the run folder.

    ``partial`` ranks on the configurations the ground truth covers (a subset study); regret is
    then relative to the best of that subset. Otherwise a truth missing a configuration is an
    error."""
    space, est = search_estimates(run_dir)
    truth = load_truth(truth_dir, space, complete=not partial)
    if partial:
        est = {k: v for k, v in est.items() if k in truth}
    missing = sorted(set(est) - set(truth), key=int)
    if missing:
        raise ValueError(f"ground truth {truth_dir}: no rows for evaluated candidates {missing[:5]}")
    report = compare(est, {k: truth[k] for k in est}, ks=ks).as_dict()
    for key in ("best_estimated", "best_true"):
        report[key + "_label"] = space.describe(space.config(int(report[key])))
    report["truth_of_selected"] = truth[str(report["best_estimated"])]
    report["truth_best"] = max(truth[k] for k in est) if partial else max(truth.values())
    atomic_write_json(Path(run_dir) / "ranking.json", report)
    return report
