"""Turn a results table into the Pareto front files every search writes.

``pareto.json`` lists the non-dominated candidates (cost lower, accuracy higher; the cost is
FLOPs unless the search chose another axis, :mod:`stitchnas.search.cost`), the candidates
excluded (failed or non-finite) and the hypervolume, and says which cost axis it used
(``"cost"``); ``pareto.png`` shows every candidate, the front and the default configuration
against that axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stitchnas.core.io import atomic_write_json
from stitchnas.search.cost import FLOPS_CONVENTION, FLOPS_COST, FrontCost
from stitchnas.search.pareto import hypervolume_2d, pareto_front
from stitchnas.search.rank_rule import RankRule

RESULT_COLUMNS = ("candidate", "label", "config", "flops", "params", "val_acc", "status", "error", "seconds")


@dataclass
class FrontSummary:
    """A computed front.

    Attributes:
        front: The front's rows, cheapest first (with the cost axis' columns, e.g. ``latency_ms``).
        excluded: Candidates left out, with the reason.
        hypervolume: Area dominated by the front up to ``reference`` (cost units x accuracy %).
        reference: ``(cost, accuracy)`` reference point of the hypervolume.
        cost: The cost axis (``pareto.json`` key ``"cost"``: ``axis``, ``unit``, ...).
        cost_column: The row key the front ranks (``flops``, ``params`` or ``latency_ms``).
        rank: The score the front maximises (``pareto.json`` key ``"rank"``: ``by``, ``column``,
            and for a blend its ``weight``; :mod:`stitchnas.search.rank_rule`).
        num_candidates: The rows the front was computed from.
    """

    front: list[dict[str, Any]]
    excluded: list[dict[str, Any]]
    hypervolume: float
    reference: tuple[float, float]
    extra: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=lambda: dict(FLOPS_COST.info))
    cost_column: str = "flops"
    rank: dict[str, Any] = field(default_factory=lambda: RankRule().info())
    num_candidates: int = 0

    def write_json(self, out_dir: str | Path) -> Path:
        """Writes ``OUT/pareto.json`` atomically; returns its path."""
        path = Path(out_dir) / "pareto.json"
        atomic_write_json(path, {
            "objectives": {self.cost_column: "minimize", self.rank["column"]: "maximize"},
            "cost": self.cost,
            "rank": self.rank,
            "flops_convention": FLOPS_CONVENTION,
            "num_candidates": self.num_candidates,
            "front": self.front,
            "excluded": self.excluded,
            "hypervolume": self.hypervolume,
            "hypervolume_reference": list(self.reference),
        })
        return path


def _usable(row: dict[str, Any], column: str = "flops", score: str = "val_acc") -> bool:
    acc, cost = row.get(score), row.get(column)
    return (
        row.get("status") == "ok"
        and isinstance(acc, (int, float)) and math.isfinite(acc)
        and isinstance(cost, (int, float)) and math.isfinite(cost)
    )


def hypervolume_reference(flops: Sequence[float]) -> tuple[float, float]:
    """Default reference point: 10% above the largest cost (FLOPs by default), accuracy 0."""
    return (1.1 * max(flops) if len(flops) else 1.0, 0.0)


def summarize_front(
    rows: Sequence[dict[str, Any]],
    out_dir: str | Path,
    default_candidate: str | None = None,
    title: str = "FLOPs vs accuracy",
    reference: tuple[float, float] | None = None,
    plot: bool = True,
    cost: FrontCost | None = None,
    rank: RankRule | None = None,
    write_json: bool = True,
) -> FrontSummary:
    """Compute the front of ``rows`` (from :data:`RESULT_COLUMNS`) and write its files.

    ``cost`` is the axis minimised (default FLOPs, :data:`~stitchnas.search.cost.FLOPS_COST`);
    its columns are added to the rows first (latency: ``latency_ms`` and its spread), and a row
    without a finite cost is excluded with the reason. ``rank`` is the score maximised (default
    the validation accuracy; ``blend`` adds a ``rank_score`` column,
    :mod:`stitchnas.search.rank_rule`). With ``write_json`` False the caller writes
    ``pareto.json`` (:meth:`FrontSummary.write_json`) once the run is complete."""
    out_dir = Path(out_dir)
    cost = cost or FLOPS_COST
    rank = rank or RankRule()
    column, score = cost.column, rank.column
    rows = rank.annotate(cost.rows(rows))
    usable = [r for r in rows if _usable(r, column, score)]
    excluded = [
        {"candidate": r.get("candidate"), "label": r.get("label"), "status": r.get("status"),
         "error": r.get("error") or cost.errors.get(str(r.get("candidate"))) or f"non-finite accuracy or {column}"}
        for r in rows if not _usable(r, column, score)
    ]
    values = np.array([float(r[column]) for r in usable], dtype=float)
    acc = np.array([float(r[score]) for r in usable], dtype=float)
    idx = [int(i) for i in pareto_front(values, acc)] if len(usable) else []
    idx.sort(key=lambda i: (values[i], -acc[i]))
    reference = reference or hypervolume_reference(list(values))
    hv = float(hypervolume_2d(values[idx], acc[idx], reference)) if idx else 0.0
    front = [dict(usable[i]) for i in idx]
    summary = FrontSummary(front=front, excluded=excluded, hypervolume=hv, reference=reference,
                           cost=dict(cost.info), cost_column=column, rank=rank.info(), num_candidates=len(rows))
    if write_json:
        summary.write_json(out_dir)
    if plot and usable:
        from stitchnas.search.plots import plot_pareto

        labels = [str(r.get("label", r["candidate"])) for r in usable]
        default_idx = next((i for i, r in enumerate(usable) if str(r["candidate"]) == str(default_candidate)), None)
        if cost.axis != "flops":
            title = f"{title}: {cost.axis} vs accuracy"
        plot_pareto(out_dir / "pareto.png", values, acc, np.array(idx, dtype=int), labels=labels,
                    default_idx=default_idx, title=title, xlabel=cost.plot_label, x_scale=cost.plot_scale,
                    ylabel=rank.label)
    return summary
