"""Ground truth (resumable, one row per run), ranking of a search run against it, and BMS search files."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import stitchnas
from searchspace.pooling import PoolingSpace
from stitchnas.data import DataSpec
from stitchnas.methods.pooling import PoolingSearchConfig
from stitchnas.studies.report import rank_run
from stitchnas.studies.truth import TruthConfig, load_truth, run_ground_truth, seed_noise
from supernet.bms import MixtureConfig
from supernet.evaluation import EvalConfig
from supernet.training import TrainConfig

SPACE = PoolingSpace(name="small", widths=(4, 4, 8, 8, 8), num_downsamples=2)  # 6 configurations
DATA = DataSpec(name="digits", input_size=8, seed=1, max_train_samples=300)
TRAIN = TrainConfig(epochs=1, batch_size=32, lr=0.05)


def truth_config(**changes):
    return TruthConfig(**{**dict(space=SPACE, data=DATA, train=TRAIN, seeds=(0, 1)), **changes})


@pytest.fixture(scope="module")
def truth_dir(tmp_path_factory):
    return run_ground_truth(truth_config(), tmp_path_factory.mktemp("truth") / "t", progress=False)


def test_ground_truth_has_one_row_per_configuration_and_seed(truth_dir):
    rows = pd.read_csv(truth_dir / "truth.csv")
    assert len(rows) == 12 and rows["key"].is_unique
    assert set(rows["seed"]) == {0, 1}
    summary = pd.read_csv(truth_dir / "truth_summary.csv")
    assert len(summary) == 6 and (summary["seeds"] == 2).all()
    np.testing.assert_allclose(summary["test_acc"].to_numpy(), rows.groupby("candidate")["test_acc"].mean().to_numpy())
    noise = seed_noise(truth_dir)
    assert noise["configs"] == 6 and noise["spread"] >= 0 and noise["max_seed_range"] >= noise["mean_seed_range"]
    by_seed = rows.pivot(index="candidate", columns="seed", values="test_acc")
    assert noise["seed_kendall_tau"] == pytest.approx(stats.kendalltau(by_seed[0], by_seed[1]).statistic)
    assert noise["seeds"] == 2 and noise["half_kendall_tau"] == pytest.approx(noise["seed_kendall_tau"])
    assert noise["agreement_by_seeds"] == {1: pytest.approx(noise["seed_kendall_tau"])}


def test_half_agreement_averages_every_split_of_the_seeds_into_two_halves():
    from stitchnas.studies.truth import half_agreement, mean_agreement, seed_agreement

    # 4 configurations x 4 seeds.
    by_seed = pd.DataFrame({0: [1.0, 4.0, 2.0, 3.0], 1: [3.0, 1.0, 4.0, 2.0],
                            2: [2.0, 3.0, 1.0, 4.0], 3: [2.0, 2.0, 5.0, 1.0]}, index=[10, 11, 12, 13])
    splits = [([0, 2], [1, 3]), ([0, 1], [2, 3]), ([0, 3], [1, 2])]  # the three ways to halve 4 seeds
    means = [(by_seed[a].mean(axis=1), by_seed[b].mean(axis=1)) for a, b in splits]
    assert list(means[0][0]) == [1.5, 3.5, 1.5, 3.5] and list(means[0][1]) == [2.5, 1.5, 4.5, 1.5]
    taus = [stats.kendalltau(a, b).statistic for a, b in means]
    # by hand (tau-b): 0 concordant, 4 discordant pairs; identical means; 2 concordant, 3 discordant
    assert taus == pytest.approx([-4 / np.sqrt(4 * 5), 1.0, -1 / np.sqrt(6 * 5)])
    assert half_agreement(by_seed) == pytest.approx(np.mean(taus))
    assert mean_agreement(by_seed, 2) == pytest.approx(np.mean(taus))
    # One seed a side is the mean over every pair of seeds.
    assert mean_agreement(by_seed, 1) == pytest.approx(seed_agreement(by_seed))
    assert half_agreement(by_seed[[0, 1]]) == pytest.approx(seed_agreement(by_seed[[0, 1]]))
    assert np.isnan(half_agreement(by_seed[[0]])) and np.isnan(mean_agreement(by_seed, 3))
    # Only configurations every seed of both halves trained count (seed 3 is in every split).
    gappy = by_seed.astype(float)
    gappy.loc[13, 3] = np.nan
    expected = np.mean([stats.kendalltau(a[:3], b[:3]).statistic for a, b in means])
    assert half_agreement(gappy) == pytest.approx(expected)
    # More pairs of seed sets than max_pairs: a fixed sample of them, the same every call.
    wide = pd.DataFrame(np.random.default_rng(0).normal(size=(8, 8)))
    assert mean_agreement(wide, 2, max_pairs=5) == mean_agreement(wide, 2, max_pairs=5)
    assert mean_agreement(wide, 2, max_pairs=5) != pytest.approx(mean_agreement(wide, 2))


def test_ground_truth_resume_loses_and_repeats_nothing(truth_dir, tmp_path):
    out = tmp_path / "resumed"
    run_ground_truth(truth_config(candidates=(0, 1)), out, progress=False)
    first = pd.read_csv(out / "truth.csv")
    assert len(first) == 4
    # Resuming the same run finds nothing left to do and keeps rows byte for byte.
    before = (out / "truth.csv").read_bytes()
    run_ground_truth(truth_config(candidates=(0, 1)), out, resume=True, progress=False)
    assert (out / "truth.csv").read_bytes() == before
    # Rows are deterministic: the same (configuration, seed) gives the same accuracy in another run.
    full = pd.read_csv(truth_dir / "truth.csv").set_index("key")
    for _, row in first.iterrows():
        assert row["test_acc"] == full.loc[row["key"], "test_acc"]


def test_interrupted_ground_truth_keeps_finished_rows(tmp_path, monkeypatch):
    from stitchnas.studies import truth as truth_module

    out = tmp_path / "interrupted"
    calls = {"n": 0}
    real_train = truth_module.train

    def train_then_interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(truth_module, "train", train_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_ground_truth(truth_config(candidates=(0, 1, 2)), out, progress=False)
    assert len(pd.read_csv(out / "truth.csv")) == 2
    calls["n"] = 10
    run_ground_truth(truth_config(candidates=(0, 1, 2)), out, resume=True, progress=False)
    rows = pd.read_csv(out / "truth.csv")
    assert len(rows) == 6 and rows["key"].is_unique and calls["n"] == 14


def test_truth_for_another_space_or_incomplete_is_refused(truth_dir, tmp_path):
    other = PoolingSpace(name="other", widths=(4, 4, 8, 8, 16), num_downsamples=2)
    with pytest.raises(ValueError, match="not for the search's space 'other'"):
        load_truth(truth_dir, other)
    partial = run_ground_truth(truth_config(candidates=(0,), seeds=(0,)), tmp_path / "partial", progress=False)
    with pytest.raises(ValueError, match="5 of 6 configurations missing"):
        load_truth(partial, SPACE)
    with pytest.raises(ValueError, match="file not found"):
        load_truth(tmp_path / "nowhere", SPACE)


@pytest.fixture(scope="module")
def bms_run(tmp_path_factory):
    cfg = PoolingSearchConfig(space=SPACE, data=DATA, train=TrainConfig(epochs=2, batch_size=32, lr=0.05),
                              eval=EvalConfig(calib_batches=2), mixture=MixtureConfig(num_supernets=2, t_max=20.0))
    return stitchnas.run_search(cfg, tmp_path_factory.mktemp("bms") / "run", progress=False)


def test_bms_search_writes_assignment_and_all_pairs(bms_run):
    out = bms_run.out_dir
    assignment = pd.read_csv(out / "assignment.csv")
    assert assignment.shape == (6, 4)
    np.testing.assert_allclose(assignment[["m0", "m1"]].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(assignment[["m0", "m1"]].mean(axis=0), 0.5, atol=0.02)  # balanced
    assert (out / "assignment.png").read_bytes()[:4] == b"\x89PNG"
    matrix = pd.read_csv(out / "accuracy_matrix.csv")
    results = pd.read_csv(out / "results.csv")
    np.testing.assert_allclose(results["val_acc"], matrix[["m0", "m1"]].max(axis=1))
    assert json.loads((out / "run_config.json").read_text())["mixture"]["num_supernets"] == 2


def test_bms_export_uses_the_supernet_that_scored_best(bms_run):
    from stitchnas import load_model

    matrix = pd.read_csv(bms_run.out_dir / "accuracy_matrix.csv").set_index("candidate")
    for folder in bms_run.exports:
        _, record = load_model(folder, return_record=True)
        candidate = SPACE.index(SPACE.from_notation(record["notation"]))
        assert record["metrics"]["search_val_acc"] == matrix.loc[candidate, ["m0", "m1"]].max()


def test_rank_agrees_with_scipy_and_reports_regret(bms_run, truth_dir):
    report = rank_run(bms_run.out_dir, truth_dir)
    est = pd.read_csv(bms_run.out_dir / "results.csv").set_index("candidate")["val_acc"].sort_index()
    truth = pd.read_csv(truth_dir / "truth.csv").groupby("candidate")["test_acc"].mean().sort_index()
    assert report["kendall_tau"] == pytest.approx(stats.kendalltau(est, truth).statistic)
    assert report["spearman_rho"] == pytest.approx(stats.spearmanr(est, truth).statistic)
    assert report["regret"] == pytest.approx(truth.max() - truth[est.idxmax()])
    assert json.loads((bms_run.out_dir / "ranking.json").read_text())["regret"] == report["regret"]


def test_partial_truth_ranks_the_covered_subset_only_when_asked(bms_run, truth_dir, tmp_path):
    subset = (0, 2, 3, 5)
    partial = run_ground_truth(truth_config(candidates=subset, seeds=(0,)), tmp_path / "partial", progress=False)
    with pytest.raises(ValueError, match="2 of 6 configurations missing"):
        rank_run(bms_run.out_dir, partial)
    report = rank_run(bms_run.out_dir, partial, partial=True)
    est = pd.read_csv(bms_run.out_dir / "results.csv").set_index("candidate")["val_acc"].loc[list(subset)]
    truth = pd.read_csv(partial / "truth.csv").set_index("candidate")["test_acc"].loc[list(subset)]
    assert report["num_candidates"] == 4
    assert report["kendall_tau"] == pytest.approx(stats.kendalltau(est, truth).statistic)
    assert report["regret"] == pytest.approx(truth.max() - truth[est.idxmax()])  # within the subset


def test_truth_command_with_one_seed_reports_no_nan(tmp_path, capsys):
    """One seed has no seed noise: the summary line says so instead of printing 'nan'."""
    from stitchnas.cli import main

    code = main(["truth", "pooling", "--epochs", "1", "--configs", "0;35", "--seeds", "0", "--input-size", "8",
                 "--no-progress", "--threads", "1", "--out", str(tmp_path / "t")])
    out = capsys.readouterr().out
    assert code == 0 and "one seed: no seed noise to report" in out and "nan" not in out.lower()
