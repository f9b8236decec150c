"""Turn a results table into the Pareto front files every search writes.

``pareto.json`` lists the non-dominated candidates (FLOPs lower, accuracy higher), the
candidates excluded (failed or non-finite) and the hypervolume; ``pareto.png`` shows every
candidate, the front and the default configuration.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stitchnas.core.io import atomic_write_json
from stitchnas.search.pareto import hypervolume_2d, pareto_front

RESULT_COLUMNS = ("candidate", "label", "config", "flops", "params", "val_acc", "status", "error", "seconds")


@dataclass
class FrontSummary:
    front: list[dict[str, Any]]
    excluded: list[dict[str, Any]]
    hypervolume: float
    reference: tuple[float, float]
    extra: dict[str, Any] = field(default_factory=dict)


def _usable(row: dict[str, Any]) -> bool:
    acc, flops = row.get("val_acc"), row.get("flops")
    return (
        row.get("status") == "ok"
        and isinstance(acc, (int, float)) and math.isfinite(acc)
        and isinstance(flops, (int, float)) and math.isfinite(flops)
    )


def hypervolume_reference(flops: Sequence[float]) -> tuple[float, float]:
    """Default reference point: 10% above the largest FLOPs, accuracy 0."""
    return (1.1 * max(flops) if len(flops) else 1.0, 0.0)


def summarize_front(
    rows: Sequence[dict[str, Any]],
    out_dir: str | Path,
    default_candidate: str | None = None,
    title: str = "FLOPs vs accuracy",
    reference: tuple[float, float] | None = None,
    plot: bool = True,
) -> FrontSummary:
    """Compute the front of ``rows`` (from :data:`RESULT_COLUMNS`) and write its files."""
    out_dir = Path(out_dir)
    usable = [r for r in rows if _usable(r)]
    excluded = [
        {"candidate": r.get("candidate"), "label": r.get("label"), "status": r.get("status"),
         "error": r.get("error") or "non-finite accuracy or FLOPs"}
        for r in rows if not _usable(r)
    ]
    flops = np.array([float(r["flops"]) for r in usable], dtype=float)
    acc = np.array([float(r["val_acc"]) for r in usable], dtype=float)
    idx = [int(i) for i in pareto_front(flops, acc)] if len(usable) else []
    idx.sort(key=lambda i: (flops[i], -acc[i]))
    reference = reference or hypervolume_reference(list(flops))
    hv = float(hypervolume_2d(flops[idx], acc[idx], reference)) if idx else 0.0
    front = [dict(usable[i]) for i in idx]
    summary = FrontSummary(front=front, excluded=excluded, hypervolume=hv, reference=reference)
    atomic_write_json(out_dir / "pareto.json", {
        "objectives": {"flops": "minimize", "val_acc": "maximize"},
        "flops_convention": "fvcore (one multiply-add = one FLOP), batch 1",
        "num_candidates": len(rows),
        "front": front,
        "excluded": excluded,
        "hypervolume": hv,
        "hypervolume_reference": list(reference),
    })
    if plot and usable:
        from stitchnas.search.plots import plot_pareto

        labels = [str(r.get("label", r["candidate"])) for r in usable]
        default_idx = next((i for i, r in enumerate(usable) if str(r["candidate"]) == str(default_candidate)), None)
        plot_pareto(out_dir / "pareto.png", flops, acc, np.array(idx, dtype=int), labels=labels,
                    default_idx=default_idx, title=title)
    return summary
