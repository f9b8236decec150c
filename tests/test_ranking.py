from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from stitchnas.studies.ranking import (
    RankingReport,
    blend,
    budget_regret,
    compare,
    cost_proxy,
    kendall_tau,
    regret,
    spearman_rho,
    top_k_overlap,
)


def test_ranking_works_without_scipy() -> None:
    # scipy is a test-only dependency: block it and use the module in a fresh interpreter.
    code = (
        "import sys; sys.modules['scipy'] = None\n"
        "from stitchnas.studies.ranking import compare\n"
        "print(compare({'a': 1.0, 'b': 2.0}, {'a': 1.0, 'b': 3.0}).kendall_tau)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "1.0"


def test_fixed_values() -> None:
    a = [1, 2, 3, 4, 5]
    assert kendall_tau(a, a) == pytest.approx(1.0)
    assert kendall_tau(a, a[::-1]) == pytest.approx(-1.0)
    assert spearman_rho(a, [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    # Hand count: one discordant pair out of ten, no ties -> (9 - 1) / 10.
    assert kendall_tau(a, [2, 1, 3, 4, 5]) == pytest.approx(0.8)
    # Ties: tau-b, checked against scipy and a hand computation.
    x, y = [1, 1, 2, 3], [1, 2, 2, 3]
    # concordant 4, discordant 0, n0=6, tied x 1, tied y 1 -> 4 / sqrt(5 * 5)
    assert kendall_tau(x, y) == pytest.approx(0.8)
    assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)
    assert spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


def test_against_scipy_on_random_inputs_with_ties() -> None:
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(2, 60))
        levels = int(rng.integers(2, 8)) if trial % 2 else 1000
        a = rng.integers(0, levels, size=n).astype(float)
        b = rng.integers(0, levels, size=n).astype(float)
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            continue
        assert kendall_tau(a, b) == pytest.approx(stats.kendalltau(a, b).statistic, abs=1e-12)
        assert spearman_rho(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)


def test_large_input_chunking_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 50, size=2500).astype(float)
    b = a + rng.normal(0, 10, size=2500).round()
    assert kendall_tau(a, b) == pytest.approx(stats.kendalltau(a, b).statistic, abs=1e-12)


def test_infinities_are_ranked_not_nan() -> None:
    a = [1.0, math.inf, 3.0, -math.inf, math.inf]
    b = [1.0, 5.0, 3.0, 0.0, 4.0]
    assert kendall_tau(a, b) == pytest.approx(stats.kendalltau(a, b).statistic)
    assert spearman_rho(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)


def test_undefined_cases_return_nan() -> None:
    assert math.isnan(kendall_tau([1.0], [2.0]))
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman_rho([1, 2, 3], [4, 4, 4]))
    assert math.isnan(spearman_rho([], []))


@pytest.mark.parametrize("fn", [kendall_tau, spearman_rho, regret])
def test_malformed_inputs(fn) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="differ in length"):
        fn([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        fn([1, math.nan], [1, 2])
    with pytest.raises(ValueError, match="1-D"):
        fn([[1, 2]], [[1, 2]])


def test_top_k_overlap() -> None:
    truth = [0.9, 0.8, 0.7, 0.6, 0.5]
    est = [0.1, 0.8, 0.7, 0.9, 0.5]  # estimated top-2 = {3, 1}, true top-2 = {0, 1}
    assert top_k_overlap(est, truth, 2) == 0.5
    assert top_k_overlap(est, truth, 1) == 0.0
    assert top_k_overlap(est, truth, 5) == 1.0
    assert top_k_overlap(truth, truth, 3) == 1.0
    # Equal scores: the lower index is taken first.
    assert top_k_overlap([1.0, 1.0, 0.0], [1.0, 0.0, 0.0], 1) == 1.0
    for bad in (0, 6, 1.5, True):
        with pytest.raises(ValueError, match="k must be an integer in \\[1, 5\\]"):
            top_k_overlap(est, truth, bad)  # type: ignore[arg-type]


def test_regret() -> None:
    assert regret([0.1, 0.9, 0.5], [91.0, 90.0, 92.5]) == pytest.approx(2.5)
    assert regret([3, 2, 1], [3, 2, 1]) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        regret([], [])


def test_compare_report() -> None:
    truth = {"a": 91.0, "b": 90.0, "c": 92.5, "d": 89.0}
    est = {"d": 0.2, "c": 0.8, "b": 0.9, "a": 0.5}
    report = compare(est, truth, ks=(1, 2, 10))
    assert isinstance(report, RankingReport)
    keys = list(est)
    x = [est[k] for k in keys]
    y = [truth[k] for k in keys]
    assert report.num_candidates == 4
    assert report.kendall_tau == pytest.approx(stats.kendalltau(x, y).statistic)
    assert report.spearman_rho == pytest.approx(stats.spearmanr(x, y).statistic)
    assert report.top_k == ((1, 0.0), (2, 0.5))  # k=10 > 4 candidates is skipped
    assert report.regret == pytest.approx(2.5)
    assert report.best_estimated == "b" and report.best_true == "c"
    flat = report.as_dict()
    assert flat["top_2_overlap"] == 0.5 and "top_k" not in flat


def test_compare_errors_name_the_keys() -> None:
    with pytest.raises(ValueError, match=r"truth lacks \['x'\].*est lacks \['y'\]"):
        compare({"a": 1.0, "x": 2.0}, {"a": 1.0, "y": 2.0})
    with pytest.raises(ValueError, match=r"truth lacks .*'k4', \.\.\.\] \(7 keys\)"):
        compare({f"k{i}": float(i) for i in range(7)} | {"a": 0.0}, {"a": 1.0})
    with pytest.raises(ValueError, match="no candidates"):
        compare({}, {})
    with pytest.raises(ValueError, match=r"est\['a'\] is NaN"):
        compare({"a": math.nan}, {"a": 1.0})
    with pytest.raises(ValueError, match=r"truth\['a'\] is not a number"):
        compare({"a": 1.0}, {"a": "high"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="ks must be integers"):
        compare({"a": 1.0}, {"a": 1.0}, ks=(0,))


def test_budget_regret_on_a_fixed_table() -> None:
    # four candidates; costs 1 < 2 < 3 = 3
    cost = [1, 2, 3, 3]
    truth = [50.0, 60.0, 55.0, 70.0]
    est = [9.0, 1.0, 8.0, 2.0]  # prefers 0, then 2
    # budget 1: {0} -> 0; budget 2: {0,1}: picks 0 (50) vs best 60 -> 10; budget 3: picks 0 vs 70 -> 20
    assert budget_regret(est, truth, cost) == pytest.approx((0 + 10 + 20) / 3)
    assert budget_regret(truth, truth, cost) == 0.0
    assert budget_regret(cost, truth, cost) == pytest.approx((0 + 0 + 15) / 3)  # "biggest wins", tie -> index 2
    with pytest.raises(ValueError, match="budget_regret"):
        budget_regret(est, truth, cost[:3])


def test_cost_proxy_and_blend_arithmetic_on_a_fixed_table() -> None:
    flops = [10, 20, 30]
    same_params = [5, 5, 5]
    # equal parameters: the proxy orders as FLOPs (ranks 1,2,3 averaged with the tied 2,2,2)
    assert cost_proxy(flops, same_params).tolist() == [1.5, 2.0, 2.5]
    assert cost_proxy([7, 7, 7], [3, 1, 2]).tolist() == [2.5, 1.5, 2.0]  # equal FLOPs: as params
    score = [80.0, 90.0, 70.0]  # ranks 2, 3, 1
    proxy = [1.0, 2.0, 3.0]  # ranks 1, 2, 3
    assert blend(score, proxy).tolist() == [1.5, 2.5, 2.0]
    assert blend(score, proxy, weight=0.0).tolist() == [2.0, 3.0, 1.0]
    assert blend(score, proxy, weight=0.25).tolist() == [1.75, 2.75, 1.5]
    with pytest.raises(ValueError, match="weight"):
        blend(score, proxy, weight=1.5)
