from __future__ import annotations

import math

import numpy as np
import pytest

from stitchnas.search.pareto import (
    ParetoResult,
    compute_pareto,
    hypervolume_2d,
    non_dominated,
    pareto_front,
)


def brute_non_dominated(points: np.ndarray, directions: list[str]) -> list[int]:
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    loss = points * signs
    front = []
    for i in range(len(loss)):
        dominated = any(
            np.all(loss[j] <= loss[i]) and np.any(loss[j] < loss[i]) for j in range(len(loss))
        )
        if not dominated:
            front.append(i)
    return front


def brute_hypervolume(flops: np.ndarray, acc: np.ndarray, ref: tuple[float, float]) -> float:
    """Area of the union of rectangles, by summing the covered cells of a compressed grid."""
    ok = np.isfinite(flops) & np.isfinite(acc) & (flops < ref[0]) & (acc > ref[1])
    f, a = flops[ok], acc[ok]
    xs = np.unique(np.append(f, ref[0]))
    ys = np.unique(np.append(a, ref[1]))
    area = 0.0
    for x0, x1 in zip(xs[:-1], xs[1:]):
        for y0, y1 in zip(ys[:-1], ys[1:]):
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            if np.any((f <= cx) & (a >= cy)):
                area += (x1 - x0) * (y1 - y0)
    return area


@pytest.mark.parametrize("dims", [1, 2, 3, 4])
def test_non_dominated_matches_brute_force_with_ties(dims: int) -> None:
    rng = np.random.default_rng(dims)
    for trial in range(150):
        n = int(rng.integers(0, 30))
        # Few distinct values: many ties and exact duplicates.
        points = rng.integers(0, 4, size=(n, dims)).astype(float)
        if n and trial % 3 == 0:
            points[rng.integers(0, n)] = points[0]
        directions = [str(d) for d in rng.choice(["minimize", "maximize"], size=dims)]
        got = non_dominated(points, directions)
        assert got.tolist() == brute_non_dominated(points, directions)


def test_non_dominated_handles_infinities() -> None:
    rng = np.random.default_rng(7)
    for _ in range(100):
        points = rng.integers(0, 3, size=(12, 2)).astype(float)
        mask = rng.random(points.shape) < 0.2
        points[mask] = rng.choice([np.inf, -np.inf], size=mask.sum())
        directions = ["minimize", "maximize"]
        expect = brute_non_dominated(points, directions)
        assert non_dominated(points, directions).tolist() == expect
    # A lone point with an infinite objective is still undominated.
    assert non_dominated([[0.0, np.inf]], ["minimize", "minimize"]).tolist() == [0]


def test_non_dominated_errors() -> None:
    with pytest.raises(ValueError, match="directions has 1 entries"):
        non_dominated([[1.0, 2.0]], ["minimize"])
    with pytest.raises(ValueError, match="'minimize' or 'maximize'"):
        non_dominated([[1.0, 2.0]], ["minimize", "max"])
    with pytest.raises(ValueError, match="NaN"):
        non_dominated([[1.0, np.nan]], ["minimize", "maximize"])
    with pytest.raises(ValueError, match="2-D"):
        non_dominated([1.0, 2.0], ["minimize"])
    assert non_dominated(np.zeros((0, 2)), ["minimize", "maximize"]).tolist() == []


def test_pareto_front_ties() -> None:
    flops = [10, 10, 10, 20, 5, 30]
    acc = [0.8, 0.8, 0.7, 0.8, 0.5, 0.9]
    # 0 and 1 identical -> both; 2 same FLOPs lower acc -> out; 3 same acc more FLOPs -> out.
    assert pareto_front(flops, acc).tolist() == [4, 0, 1, 5]


def test_pareto_front_matches_brute_force_and_excludes_bad_values() -> None:
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 40))
        flops = rng.integers(1, 8, size=n).astype(object)
        acc = (rng.integers(0, 6, size=n) / 10).astype(object)
        for i in rng.choice(n, size=min(n, 3), replace=False):
            kind = rng.integers(0, 5)
            if kind == 0:
                flops[i] = None
            elif kind == 1:
                acc[i] = float("nan")
            elif kind == 2:
                acc[i] = float("inf")
            elif kind == 3:
                flops[i] = float("-inf")
        result = compute_pareto(list(flops), list(acc))
        f = np.array([np.nan if v is None else float(v) for v in flops])
        a = np.array([np.nan if v is None else float(v) for v in acc])
        valid = np.flatnonzero(np.isfinite(f) & np.isfinite(a))
        expect = valid[brute_non_dominated(np.stack([f[valid], a[valid]], 1),
                                           ["minimize", "maximize"])]
        assert sorted(result.indices.tolist()) == sorted(expect.tolist())
        # Ordered by FLOPs, ties by index.
        assert result.indices.tolist() == sorted(expect.tolist(), key=lambda i: (f[i], i))
        assert set(result.excluded) == set(range(n)) - set(valid.tolist())
        assert result.is_pareto.sum() == len(expect)


def test_compute_pareto_reports_reasons() -> None:
    result = compute_pareto([1.0, None, 3.0, float("inf"), 2.0],
                            [0.5, 0.9, float("nan"), 0.9, 0.6])
    assert isinstance(result, ParetoResult)
    assert result.indices.tolist() == [0, 4]
    assert result.excluded == {
        1: "flops is missing (failed candidate)",
        2: "accuracy is NaN",
        3: "flops is inf",
    }
    assert result.is_pareto.tolist() == [True, False, False, False, True]
    assert result.num_candidates == 5


def test_compute_pareto_input_errors() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        pareto_front([1, 2], [0.1])
    with pytest.raises(ValueError, match="flops must hold numbers"):
        pareto_front(["a", 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="accuracy must be 1-D"):
        pareto_front([1, 2], [[0.1, 0.2]])
    assert pareto_front([], []).tolist() == []
    assert pareto_front([None], [None]).tolist() == []


def test_hypervolume_known_value() -> None:
    assert hypervolume_2d([1, 2], [0.5, 0.8], reference=(3, 0)) == pytest.approx(1.3)
    # A dominated point adds nothing; points worse than the reference add nothing.
    more = hypervolume_2d([1, 2, 2.5, 4, 1], [0.5, 0.8, 0.7, 0.99, -1], (3, 0))
    assert more == pytest.approx(1.3)
    assert hypervolume_2d([5], [0.9], (3, 0)) == 0.0
    assert hypervolume_2d([], [], (3, 0)) == 0.0
    # Failed candidates are ignored, not fatal.
    assert hypervolume_2d([1, None, np.nan], [0.5, 0.9, 0.9], (3, 0)) == pytest.approx(1.0)


def test_hypervolume_matches_union_of_rectangles() -> None:
    rng = np.random.default_rng(3)
    for trial in range(200):
        n = int(rng.integers(0, 25))
        flops = rng.integers(0, 12, size=n).astype(float)
        acc = rng.integers(0, 12, size=n).astype(float) / 10
        if n and trial % 4 == 0:
            flops[0] = np.nan
        ref = (float(rng.integers(3, 13)), float(rng.integers(0, 5)) / 10)
        assert hypervolume_2d(flops, acc, ref) == pytest.approx(brute_hypervolume(flops, acc, ref))


def test_hypervolume_reference_errors() -> None:
    with pytest.raises(ValueError, match="reference must be"):
        hypervolume_2d([1], [0.5], reference=(1.0,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reference must be finite"):
        hypervolume_2d([1], [0.5], reference=(math.inf, 0.0))
