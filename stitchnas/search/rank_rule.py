"""How a search ranks its scored candidates before the front picks one per budget.

``score`` ranks by the supernet's validation accuracy alone. ``blend`` ranks by
``weight * rank(proxy) + (1 - weight) * rank(score)`` where the proxy is the no-training
FLOPs-and-parameters rank (:func:`stitchnas.studies.ranking.cost_proxy`, :func:`~stitchnas.studies.ranking.blend`):
on both ranking benchmarks of BENCHMARKS.md (issue 15) it picks better models per budget than
the supernet score alone and than the proxy alone, because the supernet's errors and the
proxy's errors are only weakly related. The front is then the cost-vs-rank-score front, whose
member at a budget is the blend's pick among the candidates within it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RANK_RULES: tuple[str, ...] = ("score", "blend")


@dataclass(frozen=True)
class RankRule:
    """The front's ranking score (``run_config.json`` key ``"rank"``).

    Attributes:
        by: ``"score"`` (supernet validation accuracy) or ``"blend"`` (its rank blend with the
            FLOPs-and-parameters proxy).
        weight: ``blend``: the proxy's weight in [0, 1].
    """

    by: str = "score"
    weight: float = 0.5

    def __post_init__(self) -> None:
        if self.by not in RANK_RULES:
            raise ValueError(f"rank 'by': expected one of {RANK_RULES}, got {self.by!r}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not 0 <= self.weight <= 1:
            raise ValueError(f"rank 'weight': expected a number in [0, 1], got {self.weight!r}")

    @property
    def column(self) -> str:
        """The row key the front maximises."""
        return "val_acc" if self.by == "score" else "rank_score"

    @property
    def label(self) -> str:
        """Axis label of the front's y axis."""
        if self.by == "score":
            return "accuracy"
        return f"rank score: {1 - self.weight:g} x rank(val acc) + {self.weight:g} x rank(FLOPs, params), 0-1"

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"by": self.by, "column": self.column}
        if self.by == "blend":
            out.update(weight=self.weight, proxy="mean rank of FLOPs and parameters (higher ranks higher)")
        return out

    def export_record(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """What an exported front member's ``model.json`` records as ``"rank"``: the rule and
        the member's ``rank_score`` for a blend; None for ``score`` (the accuracy says it)."""
        if self.by == "score":
            return None
        return {"by": self.by, "weight": self.weight, "rank_score": row["rank_score"]}

    def annotate(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """``rows`` with a ``rank_score`` in [0, 1] (``blend``; 1 = ranked first) computed over
        the rows with a finite accuracy, FLOPs and parameter count; others get NaN. ``score``
        returns the rows unchanged."""
        rows = [dict(r) for r in rows]
        if self.by == "score":
            return rows
        from stitchnas.studies.ranking import blend, cost_proxy

        def finite(r: dict[str, Any]) -> bool:
            return r.get("status") == "ok" and all(
                isinstance(r.get(k), (int, float)) and math.isfinite(r[k]) for k in ("val_acc", "flops", "params"))

        usable = [r for r in rows if finite(r)]
        for r in rows:
            r["rank_score"] = math.nan
        if usable:
            proxy = cost_proxy([r["flops"] for r in usable], [r["params"] for r in usable])
            ranks = blend([r["val_acc"] for r in usable], proxy, self.weight)
            span = max(len(usable) - 1, 1)
            for r, value in zip(usable, (np.asarray(ranks) - 1.0) / span):
                r["rank_score"] = float(value)
        return rows


__all__ = ["RANK_RULES", "RankRule"]
