"""Run folders written by main before the "One engine" restructuring (tests/data/runs_2026-11-23,
see its README) still evaluate, export, load and rank with today's code, to the same numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

import stitchnas
from stitchnas.cli import main
from stitchnas.core.evaluation import accuracy
from stitchnas.methods import method_from_run

OLD = Path(__file__).resolve().parent / "data" / "runs_2026-11-23"


@pytest.fixture
def old(tmp_path) -> Path:
    """A writable copy (rank and evaluate write into the run folder)."""
    shutil.copytree(OLD, tmp_path / "old")
    return tmp_path / "old"


def scores(path: Path) -> pd.DataFrame:
    return pd.read_csv(path).drop(columns="seconds").sort_values("candidate").reset_index(drop=True)


def test_old_pooling_run_re_evaluates_to_its_own_results(old, tmp_path):
    method = method_from_run(old / "pooling")
    assert method.hv_reference == "evaluated"  # the key did not exist then
    stitchnas.evaluate_run(old / "pooling", out_dir=tmp_path / "eval", progress=False)
    pd.testing.assert_frame_equal(scores(tmp_path / "eval" / "results.csv"), scores(old / "pooling" / "results.csv"))


def test_old_export_loads_and_a_new_export_of_the_same_candidate_equals_it(old, tmp_path):
    folder = next((old / "pooling" / "exports").iterdir())
    model, record = stitchnas.load_model(folder, return_record=True)
    data = method_from_run(old / "pooling").load_data()
    assert accuracy(model, data.test) == record["metrics"]["test_acc"]
    index = int(folder.name.split("_")[0])  # exports/NNNN_a-b-c
    again = stitchnas.export_from_run(old / "pooling", index, tmp_path / "again")
    _, new = stitchnas.load_model(again, return_record=True)
    assert new["metrics"]["test_acc"] == record["metrics"]["test_acc"]
    assert new["metrics"]["val_acc"] == record["metrics"]["val_acc"]
    assert (again / "model.pt").read_bytes() == (folder / "model.pt").read_bytes()


def test_old_run_and_truth_rank_to_the_same_report(old, capsys):
    code = main(["rank", "--run", str(old / "pooling"), "--truth", str(old / "truth"), "--partial"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((OLD / "rank.json").read_text())
