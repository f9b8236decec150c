"""How well estimated scores (e.g. supernet accuracies) rank candidates against ground truth.

Rank correlation between weight-shared and standalone accuracy is how BMS (Javan et al.,
arXiv 2306.11982, Figure 3) and few-shot NAS judge a supernet. Implemented with numpy only;
``kendall_tau`` is tau-b and ``spearman_rho`` uses average ranks, matching
``scipy.stats.kendalltau`` / ``scipy.stats.spearmanr`` including ties.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np

__all__ = [
    "RankingReport",
    "blend",
    "budget_regret",
    "compare",
    "cost_proxy",
    "kendall_tau",
    "regret",
    "spearman_rho",
    "top_k_overlap",
]


def _pair(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
          fn: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"{fn}: expected two 1-D sequences, got shapes {x.shape} and {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"{fn}: the two sequences differ in length ({len(x)} != {len(y)})")
    if np.isnan(x).any() or np.isnan(y).any():
        raise ValueError(f"{fn}: inputs contain NaN")
    return x, y


def _tied_pairs(x: np.ndarray) -> int:
    _, counts = np.unique(x, return_counts=True)
    return int(np.sum(counts * (counts - 1) // 2))


def kendall_tau(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Kendall's tau-b between two score lists (ties handled as in scipy's default).

    Exact O(n^2) pair count, in chunks so memory stays bounded; fine for thousands of
    candidates.

    Returns:
        tau-b in [-1, 1], or NaN when undefined (fewer than 2 items, or a constant input).

    Raises:
        ValueError: If the inputs differ in length, are not 1-D or contain NaN.
    """
    x, y = _pair(a, b, "kendall_tau")
    n = len(x)
    if n < 2:
        return math.nan
    # sum over ordered pairs of sign(dx) * sign(dy) = 2 * (concordant - discordant).
    # Comparisons rather than subtraction, so that inf - inf never produces NaN.
    total = 0
    chunk = max(1, 4_000_000 // n)
    for start in range(0, n, chunk):
        xi, yi = x[start:start + chunk, None], y[start:start + chunk, None]
        sx = (xi > x).astype(np.int8) - (xi < x).astype(np.int8)
        sy = (yi > y).astype(np.int8) - (yi < y).astype(np.int8)
        total += int(np.sum(sx * sy, dtype=np.int64))
    pairs = n * (n - 1) // 2
    denominator = math.sqrt(float(pairs - _tied_pairs(x)) * float(pairs - _tied_pairs(y)))
    if denominator == 0.0:
        return math.nan
    return min(1.0, max(-1.0, (total / 2) / denominator))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts_group = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    counts = np.diff(np.r_[starts, len(x)])
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = (starts + (counts + 1) / 2.0)[group]
    return ranks


def spearman_rho(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman's rho: the Pearson correlation of average ranks.

    Returns:
        rho in [-1, 1], or NaN when undefined (fewer than 2 items, or a constant input).

    Raises:
        ValueError: If the inputs differ in length, are not 1-D or contain NaN.
    """
    x, y = _pair(a, b, "spearman_rho")
    if len(x) < 2:
        return math.nan
    rx = _average_ranks(x) - (len(x) + 1) / 2.0
    ry = _average_ranks(y) - (len(y) + 1) / 2.0
    denominator = math.sqrt(float(np.dot(rx, rx)) * float(np.dot(ry, ry)))
    if denominator == 0.0:
        return math.nan
    return min(1.0, max(-1.0, float(np.dot(rx, ry)) / denominator))


def _top(x: np.ndarray, k: int) -> np.ndarray:
    # Stable sort of -x: among equal scores the lower index comes first, deterministically.
    return np.argsort(-x, kind="stable")[:k]


def top_k_overlap(est: Sequence[float] | np.ndarray, truth: Sequence[float] | np.ndarray,
                  k: int) -> float:
    """Fraction of the true top-``k`` candidates that are also in the estimated top-``k``.

    Both top-``k`` sets are taken by descending score; equal scores are ordered by index.

    Raises:
        ValueError: If ``k`` is not an integer in ``[1, n]``, or the inputs are malformed.
    """
    x, y = _pair(est, truth, "top_k_overlap")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(x):
        raise ValueError(f"top_k_overlap: k must be an integer in [1, {len(x)}], got {k!r}")
    found = np.intersect1d(_top(x, int(k)), _top(y, int(k)))
    return len(found) / int(k)


def regret(est: Sequence[float] | np.ndarray, truth: Sequence[float] | np.ndarray) -> float:
    """Best true score minus the true score of the candidate the estimate ranks first.

    In the units of ``truth`` (e.g. accuracy points). Ties for the best estimate go to the
    lowest index (``np.argmax``).

    Raises:
        ValueError: If the inputs are empty or malformed.
    """
    x, y = _pair(est, truth, "regret")
    if len(x) == 0:
        raise ValueError("regret: needs at least one candidate")
    return float(np.max(y) - y[int(np.argmax(x))])


def budget_regret(est: Sequence[float] | np.ndarray, truth: Sequence[float] | np.ndarray,
                  cost: Sequence[float] | np.ndarray) -> float:
    """Mean regret over budgets: for every distinct ``cost`` value b, the best true score among
    candidates costing at most b minus the true score of the one the estimate ranks first
    among them. What a user who deploys "the best model within my budget" loses, averaged
    over the budgets the space offers (units of ``truth``). Ties go to the lowest index.

    Raises:
        ValueError: If the inputs are empty, of different lengths, or malformed.
    """
    x, y = _pair(est, truth, "budget_regret")
    c, _ = _pair(cost, truth, "budget_regret")
    if len(x) == 0:
        raise ValueError("budget_regret: needs at least one candidate")
    losses = []
    for budget in np.unique(c):
        idx = np.flatnonzero(c <= budget)
        losses.append(float(np.max(y[idx]) - y[idx[int(np.argmax(x[idx]))]]))
    return float(np.mean(losses))


def cost_proxy(flops: Sequence[float] | np.ndarray, params: Sequence[float] | np.ndarray) -> np.ndarray:
    """The no-training baseline: the mean of the average ranks of FLOPs and of parameters
    (more compute or capacity ranks higher). On a space where every placement has the same
    parameters it orders as FLOPs alone; where FLOPs are equal, as parameters.

    Returns:
        ``(n,)`` float array, higher = predicted better.
    """
    f, p = _pair(flops, params, "cost_proxy")
    return (_average_ranks(f) + _average_ranks(p)) / 2.0


def blend(score: Sequence[float] | np.ndarray, proxy: Sequence[float] | np.ndarray,
          weight: float = 0.5) -> np.ndarray:
    """Rank blend of a supernet score with a no-training proxy:
    ``weight * rank(proxy) + (1 - weight) * rank(score)`` with average ranks (ties share).

    Ranks, not values, so the supernet's accuracy scale (often compressed, sometimes near
    chance for some placements) cannot swamp the proxy or the reverse.

    Raises:
        ValueError: ``weight`` outside [0, 1] or malformed inputs.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"blend: weight must be in [0, 1], got {weight!r}")
    s, q = _pair(score, proxy, "blend")
    return weight * _average_ranks(q) + (1.0 - weight) * _average_ranks(s)


@dataclass(frozen=True)
class RankingReport:
    """Ranking quality of estimated scores against ground truth over the same candidates.

    Attributes:
        num_candidates: Number of candidates compared.
        kendall_tau: Kendall tau-b (NaN if undefined).
        spearman_rho: Spearman rho (NaN if undefined).
        top_k: ``((k, overlap), ...)`` for each requested ``k`` not above ``num_candidates``.
        regret: Best true score minus the true score of the estimated best.
        best_estimated: Key the estimate ranks first.
        best_true: Key with the best true score.
    """

    num_candidates: int
    kendall_tau: float
    spearman_rho: float
    top_k: tuple[tuple[int, float], ...]
    regret: float
    best_estimated: Hashable
    best_true: Hashable

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON/CSV; ``top_k`` becomes ``top_{k}_overlap`` entries."""
        data = asdict(self)
        data.pop("top_k")
        data.update({f"top_{k}_overlap": v for k, v in self.top_k})
        return data


K = TypeVar("K", bound=Hashable)  # a candidate key


def _values(table: Mapping[K, Any], keys: list[K], name: str) -> np.ndarray:
    out = np.empty(len(keys), dtype=np.float64)
    for i, key in enumerate(keys):
        value = table[key]
        try:
            out[i] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"compare: {name}[{key!r}] is not a number: {value!r}") from None
        if math.isnan(out[i]):
            raise ValueError(f"compare: {name}[{key!r}] is NaN")
    return out


def _preview(keys: Sequence[Hashable]) -> str:
    shown = ", ".join(repr(k) for k in keys[:5])
    return f"[{shown}{', ...' if len(keys) > 5 else ''}] ({len(keys)} keys)"


def compare(est: Mapping[K, float], truth: Mapping[K, float],
            ks: Sequence[int] = (1, 3, 5, 10)) -> RankingReport:
    """Compares estimated and true scores of the same candidates (higher is better).

    Args:
        est: Estimated score per candidate key (e.g. supernet validation accuracy).
        truth: True score per candidate key (e.g. standalone accuracy).
        ks: The ``k`` values for :func:`top_k_overlap`; those above the number of candidates
            are skipped.

    Raises:
        ValueError: Naming the keys missing from either table, or a non-numeric/NaN score.
    """
    missing_truth = [k for k in est if k not in truth]
    missing_est = [k for k in truth if k not in est]
    if missing_truth or missing_est:
        parts = []
        if missing_truth:
            parts.append(f"truth lacks {_preview(missing_truth)}")
        if missing_est:
            parts.append(f"est lacks {_preview(missing_est)}")
        raise ValueError(f"compare: the tables cover different candidates: {'; '.join(parts)}")
    if not est:
        raise ValueError("compare: no candidates to compare")
    bad_ks = [k for k in ks if isinstance(k, bool) or not isinstance(k, int) or k < 1]
    if bad_ks:
        raise ValueError(f"compare: ks must be integers >= 1, got {bad_ks}")
    keys = list(est)
    x = _values(est, keys, "est")
    y = _values(truth, keys, "truth")
    return RankingReport(
        num_candidates=len(keys),
        kendall_tau=kendall_tau(x, y),
        spearman_rho=spearman_rho(x, y),
        top_k=tuple((k, top_k_overlap(x, y, k)) for k in sorted(set(ks)) if k <= len(keys)),
        regret=regret(x, y),
        best_estimated=keys[int(np.argmax(x))],
        best_true=keys[int(np.argmax(y))],
    )
