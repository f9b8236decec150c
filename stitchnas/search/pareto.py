"""Pareto fronts and 2-D hypervolume over candidate arrays (numpy only).

Follows optuna's ``optuna/study/_multi_objective.py``: every objective is flipped to "lower is
better", rows are deduplicated and sorted with ``np.unique(axis=0)`` (so a later row can never
dominate an earlier one), 2-D fronts use a running minimum, n-D fronts peel off the
lexicographically first remaining point. Results are index arrays into the inputs.

Domination: ``a`` dominates ``b`` if ``a`` is no worse in every objective and strictly better in
at least one. Identical points never dominate each other, so duplicates share the front.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "ParetoResult",
    "compute_pareto",
    "hypervolume_2d",
    "non_dominated",
    "pareto_front",
]

_DIRECTIONS = ("minimize", "maximize")


def _as_float_array(values: Sequence[Any] | np.ndarray, name: str) -> np.ndarray:
    """1-D float array; ``None`` (a failed candidate) becomes NaN."""
    items = np.asarray(values, dtype=object)
    if items.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {items.shape}")
    try:
        return np.array([math.nan if v is None else float(v) for v in items], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold numbers or None, got {list(items)[:5]}...") from None


def _lower_is_better(points: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    if points.ndim != 2:
        raise ValueError(f"points must be 2-D (n_points, n_objectives), got shape {points.shape}")
    if points.shape[1] == 0:
        raise ValueError("points need at least one objective column")
    if len(directions) != points.shape[1]:
        raise ValueError(f"directions has {len(directions)} entries for "
                         f"{points.shape[1]} objectives")
    bad = [d for d in directions if d not in _DIRECTIONS]
    if bad:
        raise ValueError(f"directions must be 'minimize' or 'maximize', got {bad}")
    if np.isnan(points).any():
        raise ValueError("points contain NaN; drop failed candidates first (see compute_pareto)")
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    return points * signs


def _front_2d(unique_rows: np.ndarray) -> np.ndarray:
    # Rows are sorted by objective 0, then 1. A row is dominated exactly when some earlier
    # row has a smaller-or-equal objective 1, i.e. when it does not set a new running minimum.
    second = unique_rows[:, 1]
    on_front = np.ones(len(second), dtype=bool)
    on_front[1:] = second[1:] < np.minimum.accumulate(second)[:-1]
    return on_front


def _front_nd(unique_rows: np.ndarray) -> np.ndarray:
    on_front = np.zeros(len(unique_rows), dtype=bool)
    remaining = np.arange(len(unique_rows))
    while remaining.size:
        # The lexicographically first remaining row is dominated by nothing left; drop
        # every row it dominates (rows are unique, so "all >=" means dominated).
        head = remaining[0]
        on_front[head] = True
        dominated = np.all(unique_rows[remaining] >= unique_rows[head], axis=1)
        remaining = remaining[~dominated]
    return on_front


def non_dominated(points: np.ndarray | Sequence[Sequence[float]],
                  directions: Sequence[str]) -> np.ndarray:
    """Indices of the non-dominated rows of ``points``, in increasing index order.

    Args:
        points: ``(n_points, n_objectives)`` values; ±inf allowed, NaN not.
        directions: ``"minimize"`` or ``"maximize"`` per objective.

    Returns:
        Sorted ``int64`` indices. Duplicated rows are all kept if they are not dominated.

    Raises:
        ValueError: On a shape/direction mismatch, an unknown direction or NaN.
    """
    values = np.asarray(points, dtype=np.float64)
    if values.ndim == 2 and values.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    loss = _lower_is_better(values, directions)
    unique_rows, inverse = np.unique(loss, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    if loss.shape[1] == 1:
        on_front = unique_rows[:, 0] == unique_rows[0, 0]
    elif loss.shape[1] == 2:
        on_front = _front_2d(unique_rows)
    else:
        on_front = _front_nd(unique_rows)
    return np.flatnonzero(on_front[inverse]).astype(np.int64)


@dataclass(frozen=True, eq=False)
class ParetoResult:
    """A FLOPs-vs-accuracy front.

    Attributes:
        indices: Front members, by increasing FLOPs (ties by index).
        excluded: ``{index: reason}`` for candidates left out (missing, NaN or inf values).
        num_candidates: Number of candidates given.
    """

    indices: np.ndarray
    excluded: dict[int, str] = field(default_factory=dict)
    num_candidates: int = 0

    @property
    def is_pareto(self) -> np.ndarray:
        """Boolean mask over all candidates (the ``is_pareto`` column of a results table)."""
        mask = np.zeros(self.num_candidates, dtype=bool)
        mask[self.indices] = True
        return mask


def _exclusion_reason(flops: float, acc: float, raw_flops: Any, raw_acc: Any) -> str | None:
    reasons = []
    for name, value, raw in (("flops", flops, raw_flops), ("accuracy", acc, raw_acc)):
        if raw is None:
            reasons.append(f"{name} is missing (failed candidate)")
        elif math.isnan(value):
            reasons.append(f"{name} is NaN")
        elif math.isinf(value):
            reasons.append(f"{name} is {value}")
    return "; ".join(reasons) or None


def compute_pareto(flops: Sequence[Any] | np.ndarray,
                   accuracy: Sequence[Any] | np.ndarray) -> ParetoResult:
    """The front of "fewest FLOPs, highest accuracy", and which candidates were left out.

    Candidates with a missing (``None``), NaN or infinite FLOPs or accuracy are excluded and
    reported with the reason, never silently placed on (or off) the front.

    Args:
        flops: FLOPs per candidate (lower is better).
        accuracy: Accuracy per candidate (higher is better), any units.

    Raises:
        ValueError: If the two sequences differ in length or hold non-numbers.
    """
    f = _as_float_array(flops, "flops")
    a = _as_float_array(accuracy, "accuracy")
    if len(f) != len(a):
        raise ValueError(f"flops and accuracy differ in length: {len(f)} != {len(a)}")
    raw_f = np.asarray(flops, dtype=object).reshape(-1)
    raw_a = np.asarray(accuracy, dtype=object).reshape(-1)
    excluded: dict[int, str] = {}
    for i in np.flatnonzero(~(np.isfinite(f) & np.isfinite(a))):
        reason = _exclusion_reason(f[i], a[i], raw_f[i], raw_a[i])
        excluded[int(i)] = reason or "not finite"
    valid = np.flatnonzero(np.isfinite(f) & np.isfinite(a))
    front = valid[non_dominated(np.stack([f[valid], a[valid]], axis=1).reshape(-1, 2),
                                ("minimize", "maximize"))]
    front = front[np.lexsort((front, f[front]))]
    return ParetoResult(indices=front.astype(np.int64), excluded=excluded, num_candidates=len(f))


def pareto_front(flops: Sequence[Any] | np.ndarray,
                 accuracy: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Indices of the FLOPs-vs-accuracy front, by increasing FLOPs; see :func:`compute_pareto`."""
    return compute_pareto(flops, accuracy).indices


def hypervolume_2d(flops: Sequence[Any] | np.ndarray, accuracy: Sequence[Any] | np.ndarray,
                   reference: tuple[float, float]) -> float:
    """Area dominated by the candidates and bounded by ``reference = (ref_flops, ref_acc)``.

    Minimising FLOPs and maximising accuracy: each candidate with ``flops < ref_flops`` and
    ``accuracy > ref_acc`` dominates the rectangle ``[flops, ref_flops] x [ref_acc, accuracy]``;
    the result is the area of their union. Candidates no better than the reference, and
    missing/NaN/inf ones, add nothing.

    Raises:
        ValueError: If ``reference`` is not two finite numbers, or the inputs are malformed.
    """
    try:
        ref_f, ref_a = (float(v) for v in reference)
    except (TypeError, ValueError):
        raise ValueError(f"reference must be (ref_flops, ref_acc), got {reference!r}") from None
    if not (math.isfinite(ref_f) and math.isfinite(ref_a)):
        raise ValueError(f"reference must be finite, got {reference!r}")
    result = compute_pareto(flops, accuracy)
    f = _as_float_array(flops, "flops")[result.indices]
    a = _as_float_array(accuracy, "accuracy")[result.indices]
    inside = (f < ref_f) & (a > ref_a)
    f, a = f[inside], a[inside]
    if f.size == 0:
        return 0.0
    # Along the front FLOPs and accuracy both increase, so between consecutive FLOPs values the
    # dominated height is the accuracy of the left point.
    widths = np.diff(np.append(f, ref_f))
    return float(np.sum(widths * (a - ref_a)))
