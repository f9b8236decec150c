"""End-to-end pooling search on the embedded digits data, kept small (8x8 inputs, 2 epochs)."""

import json
import math

import pandas as pd
import pytest

from searchspace.pooling import PoolingConfig, resnet20_space
from supernet.flops import pooling_flops
import stitchnas
from stitchnas import load_model
from stitchnas.data import DataSpec, load_data
from stitchnas.core.io import file_sha256
from stitchnas.search.pareto import pareto_front
from stitchnas.methods.pooling import PoolingSearchConfig
from stitchnas.search.candidates import evaluate_in_process, score_candidates
from stitchnas.core.evaluation import accuracy
from supernet.evaluation import EvalConfig
from supernet.training import TrainConfig

SPACE = resnet20_space()
CANDIDATES = 8


def small_config(**changes) -> PoolingSearchConfig:
    base = dict(
        space=SPACE,
        data=DataSpec(name="digits", input_size=8, seed=3),
        train=TrainConfig(epochs=2, batch_size=64, lr=0.05, seed=3),
        eval=EvalConfig(calib_batches=2, seed=3),
        max_candidates=CANDIDATES,
    )
    base.update(changes)
    return PoolingSearchConfig(**base)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "run"
    return stitchnas.run_search(small_config(), out, progress=False)


def test_search_writes_every_output_file(finished_run):
    out = finished_run.out_dir
    for name in ("run_config.json", "supernet.pt", "results.csv", "pareto.json", "pareto.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = pd.read_csv(out / "results.csv")
    assert len(results) == CANDIDATES
    assert str(SPACE.index(SPACE.default_config())) in set(results["candidate"].astype(str))
    assert (results["status"] == "ok").all()
    assert results["val_acc"].between(0, 100).all()


def test_pareto_json_is_the_front_of_results_csv(finished_run):
    out = finished_run.out_dir
    results = pd.read_csv(out / "results.csv")
    pareto = json.loads((out / "pareto.json").read_text())
    expected = set(results["candidate"].iloc[pareto_front(results["flops"].to_numpy(), results["val_acc"].to_numpy())].astype(str))
    assert {str(r["candidate"]) for r in pareto["front"]} == expected
    for member in pareto["front"]:  # brute-force check: nothing dominates a front member
        dominated = (results["flops"] <= member["flops"]) & (results["val_acc"] >= member["val_acc"]) & (
            (results["flops"] < member["flops"]) | (results["val_acc"] > member["val_acc"]))
        assert not dominated.any()
    assert pareto["hypervolume"] > 0


def test_exported_models_reload_and_reproduce_recorded_accuracy(finished_run):
    exports = finished_run.exports
    assert len(exports) == len(finished_run.summary.front) >= 1
    data = load_data(DataSpec(name="digits", input_size=8, seed=3))
    for folder in exports:
        model, record = load_model(folder, return_record=True)
        assert type(model).__name__ == "PoolingNet" and not model.training
        assert record["format_version"] == 1 and record["kind"] == "pooling"
        assert record["provenance"]["dataset"] == "digits" and record["provenance"]["seed"] == 3
        assert record["provenance"]["checkpoint_sha256"] == file_sha256(finished_run.out_dir / "supernet.pt")
        assert accuracy(model, data.test) == record["metrics"]["test_acc"]
        assert accuracy(model, data.search_val) == record["metrics"]["val_acc"]
        config = PoolingConfig.from_json(record["config"])
        assert record["flops"] == pooling_flops(SPACE, config, 8, 1, 10)
        assert str(SPACE.index(config)) in {str(r["candidate"]) for r in finished_run.summary.front}


def test_interrupted_search_resumes_to_the_same_result(finished_run, tmp_path):
    out = tmp_path / "interrupted"

    def ctrl_c_in_second_epoch(step: int) -> None:
        if step == 15:  # 11 steps per epoch (718 images, batch 64): mid-way through epoch 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stitchnas.run_search(small_config(), out, progress=False, on_step=ctrl_c_in_second_epoch)
    assert (out / "supernet.pt").exists() and not (out / "results.csv").exists()
    with pytest.raises(ValueError, match="pass --resume"):
        stitchnas.run_search(small_config(), out, progress=False)
    resumed = stitchnas.run_search(small_config(), out, resume=True, progress=False)
    a = pd.read_csv(finished_run.out_dir / "results.csv")
    b = pd.read_csv(out / "results.csv")
    pd.testing.assert_series_equal(a["val_acc"], b["val_acc"])
    assert [p.name for p in resumed.exports] == [p.name for p in finished_run.exports]
    for x, y in zip(resumed.exports, finished_run.exports):
        assert file_sha256(x / "model.pt") == file_sha256(y / "model.pt")


def test_resume_skips_finished_candidates(finished_run, tmp_path):
    out = tmp_path / "partial"
    evaluated = []

    def counting_backend(job):
        evaluated.extend(job.candidates[len(job.table):])
        evaluate_in_process(job)

    def stop_after_three(job):
        score_candidates(job.table, job.task, job.candidates[:3], job.task.evaluator().prepare(job.device),
                         progress=False)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stitchnas.run_search(small_config(), out, progress=False, backend=stop_after_three)
    assert len(pd.read_csv(out / "results.csv")) == 3
    stitchnas.run_search(small_config(), out, resume=True, progress=False, backend=counting_backend)
    assert len(evaluated) == CANDIDATES - 3
    b = pd.read_csv(out / "results.csv")
    assert len(b) == CANDIDATES and b["candidate"].is_unique


def test_resume_with_other_options_is_refused(finished_run):
    with pytest.raises(ValueError, match="differing: \\['train'\\]"):
        stitchnas.run_search(small_config(train=TrainConfig(epochs=3, seed=3)), finished_run.out_dir, resume=True, progress=False)


def test_failed_and_nan_candidates_are_excluded_and_reported(tmp_path):
    def flaky(job):
        def score(index):
            if index == job.candidates[0]:
                raise RuntimeError("simulated out-of-memory")
            if index == job.candidates[1]:
                return math.nan
            return 50.0 + index
        score_candidates(job.table, job.task, job.candidates, score, progress=False)

    outcome = stitchnas.run_search(small_config(train=TrainConfig(epochs=1, seed=3), export_front=False),
                                   tmp_path / "flaky", progress=False, backend=flaky)
    pareto = json.loads((outcome.out_dir / "pareto.json").read_text())
    excluded = {e["candidate"]: e for e in pareto["excluded"]}
    assert len(excluded) == 2
    failed = [e for e in excluded.values() if e["status"] == "failed"]
    assert failed and "simulated out-of-memory" in failed[0]["error"]
    assert all(not math.isnan(r["val_acc"]) for r in pareto["front"])
