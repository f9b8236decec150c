"""Fail loudly, lose nothing: a run that went wrong says so in one line and never looks like a
result (RELIABILITY.md lists each case and the test that holds it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import stitchnas
from searchspace.pooling import create_space
from stitchnas.cli import main
from stitchnas.core.evaluation import NonFiniteOutput, accuracy
from stitchnas.core.io import ResultsTable, atomic_torch_save, load_checkpoint
from stitchnas.core.records import RESULT_COLUMNS
from stitchnas.data import DataSpec
from stitchnas.methods.pooling import PoolingSearchConfig
from stitchnas.search.candidates import CandidateJob, evaluate_in_process
from supernet.evaluation import EvalConfig
from supernet.training import TrainConfig

REPO = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "--input-size", "8", "--width-scale", "0.25", "--no-progress"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith(("stitchnas: error:", "stitchnas search pooling: error:",
                                           "stitchnas search bms: error:", "stitchnas train: error:")), err
    return lines[-1]


def tiny_config(**changes) -> PoolingSearchConfig:
    cfg = PoolingSearchConfig(
        space=create_space("resnet20", width_scale=0.25), data=DataSpec("digits", input_size=8, max_train_samples=300),
        train=TrainConfig(epochs=1, batch_size=32, lr=0.05), eval=EvalConfig(calib_batches=2), max_candidates=6)
    return replace(cfg, **changes)


# --------------------------------------------------------------------------- wrong results
@pytest.mark.parametrize("argv", [
    ["search", "pooling", "--lr", "1e6"],
    ["train", "--config", "4,3,3", "--lr", "1e6"],
    ["search", "bms", "-M", "2", "--lr", "1e6"],
])
def test_diverged_training_stops_with_one_line_and_no_result(capsys, tmp_path, argv):
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, *argv, *TINY, "--out", str(out))
    assert code == 1 and "accuracy" not in stdout
    assert "training diverged: loss" in one_line_error(err) and "at epoch 1, step" in err
    assert not (out / "results.csv").exists() and not (out / "pareto.json").exists()
    assert not (out / "exports").exists() and not (out / "model").exists()


class NaNNet(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((len(x), 10), float("nan"))


def test_a_network_with_non_finite_logits_has_no_accuracy():
    data = torch.utils.data.TensorDataset(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(NonFiniteOutput, match="non-finite logits .* on 4 of 4 images"):
        accuracy(NaNNet(), data)


def test_a_candidate_with_non_finite_logits_is_failed_and_off_the_front(tmp_path):
    """Scoring a supernet whose weights went NaN: every candidate is failed with the reason,
    the front is empty and nothing is exported (before: all ok at the share of class 0)."""
    def nan_backend(job: CandidateJob) -> None:
        network = job.task.supernet  # type: ignore[attr-defined]
        with torch.no_grad():
            for p in network.parameters():
                p.fill_(float("nan"))
        evaluate_in_process(job)

    result = stitchnas.run_search(tiny_config(), tmp_path / "run", progress=False, backend=nan_backend)
    assert result.rows and all(r["status"] == "failed" for r in result.rows)
    assert all("NonFiniteOutput: non-finite logits" in r["error"] for r in result.rows)
    assert result.summary.front == [] and result.exports == []
    assert not (tmp_path / "run" / "exports").exists()


@pytest.mark.parametrize("argv, message", [
    (["search", "pooling", "--lr", "nan"], "argument --lr: expected a finite number, got 'nan'"),
    (["search", "pooling", "--weight-decay", "inf"], "argument --weight-decay: expected a finite number"),
    (["search", "pooling", "--width-scale", "inf"], "argument --width-scale: expected a finite number"),
    (["search", "bms", "--t-max", "nan"], "argument --t-max: expected a finite number"),
    (["train", "--lr", "1e999"], "argument --lr: expected a finite number, got '1e999'"),
    (["search", "pooling", "--device", "garbage"], "device 'garbage': expected auto, cpu, cuda or cuda:N"),
])
def test_bad_options_exit_2_with_one_line(tmp_path, argv, message):
    proc = subprocess.run([sys.executable, "-m", "stitchnas.cli.main", *argv, *TINY, "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and message in one_line_error(proc.stderr)
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- run folders
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    return stitchnas.run_search(tiny_config(), tmp_path_factory.mktemp("rel") / "run", progress=False)


def copy_run(finished_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished_run.out_dir, out)
    return out


@pytest.mark.parametrize("edit, message", [
    ("duplicate", r"results table .*results\.csv: line 3: candidate \d+ is already on line 2"),
    ("not_an_index", r"results table .*results\.csv: line 2: candidate '999' is not a candidate of this run"),
    ("ok_without_accuracy", r"line 2: candidate \d+ is 'ok' without a finite val_acc"),
])
def test_a_results_table_that_cannot_belong_to_the_run_is_refused(finished_run, tmp_path, edit, message):
    out = copy_run(finished_run, tmp_path)
    rows = ResultsTable(out / "results.csv", RESULT_COLUMNS).rows()[:3]
    if edit == "duplicate":
        rows = [rows[0], rows[0]]
    elif edit == "not_an_index":
        rows[0]["candidate"] = "999"
    else:
        rows[0]["val_acc"] = float("nan")
    (out / "results.csv").unlink()
    table = ResultsTable(out / "results.csv", RESULT_COLUMNS)
    for row in rows:
        table.append(row)
    with pytest.raises(ValueError, match=message):
        stitchnas.run_search(tiny_config(), out, resume=True, progress=False)


def test_interrupt_during_exports_leaves_no_pareto_json_and_resume_finishes(finished_run, tmp_path, monkeypatch):
    from stitchnas.methods.pooling import PoolingMethod

    out = copy_run(finished_run, tmp_path)
    shutil.rmtree(out / "exports")
    (out / "pareto.json").unlink()
    real_export, calls = PoolingMethod.export, []

    def export_then_interrupt(self, folder, *args, **kwargs):
        calls.append(folder.name)
        if len(calls) == 2:  # Ctrl-C while the second front member is exported
            raise KeyboardInterrupt
        return real_export(self, folder, *args, **kwargs)

    monkeypatch.setattr(PoolingMethod, "export", export_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        stitchnas.run_search(tiny_config(), out, resume=True, progress=False)
    assert len(calls) == 2 and len(finished_run.exports) > 2
    # pareto.json marks a finished run: none while the exports are incomplete
    assert not (out / "pareto.json").exists()
    monkeypatch.setattr(PoolingMethod, "export", real_export)
    result = stitchnas.run_search(tiny_config(), out, resume=True, progress=False)
    assert json.loads((out / "pareto.json").read_text())["front"] == json.loads(
        (finished_run.out_dir / "pareto.json").read_text())["front"]
    assert sorted(p.name for p in (out / "exports").iterdir()) == sorted(p.name for p in result.exports)


def test_resume_leaves_exactly_the_final_front_in_exports(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path)
    stale = out / "exports" / "0001_1-1-8"
    shutil.copytree(finished_run.exports[0], stale)  # as an earlier partial front would have left it
    (out / "pareto.json").unlink()
    result = stitchnas.run_search(tiny_config(), out, resume=True, progress=False)
    assert sorted(p.name for p in (out / "exports").iterdir()) == sorted(p.name for p in result.exports)
    assert not stale.exists()


def test_run_config_that_is_not_an_object_is_one_line(finished_run, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path)
    (out / "run_config.json").write_text("[1, 2]")
    code, _, err = run_cli(capsys, "search", "pooling", *TINY, "--out", str(out), "--resume")
    assert code == 2 and "run config" in one_line_error(err) and "expected a JSON object, got list" in err


@pytest.mark.parametrize("damage, message", [
    ("no_model", "key 'model' missing or not a dict"),
    ("no_history", "key 'history' missing or not a list"),
    ("bad_shape", r"key 'stem\.conv\.weight' has shape \(1, 1, 1, 1\)"),
])
def test_a_damaged_checkpoint_on_resume_is_one_line(finished_run, tmp_path, capsys, damage, message):
    out = copy_run(finished_run, tmp_path)
    state = load_checkpoint(out / "supernet.pt")
    if damage == "no_model":
        del state["model"]
    elif damage == "no_history":
        del state["history"]
    else:
        key = next(k for k in state["model"] if k.endswith("weight") and state["model"][k].dim() == 4)
        message = message.replace("stem\\.conv\\.weight", key.replace(".", "\\."))
        state["model"][key] = torch.zeros(1, 1, 1, 1)
    state["epoch"] = 0  # so that training resumes from it
    atomic_torch_save(state, out / "supernet.pt")
    for name in ("results.csv", "pareto.json"):
        (out / name).unlink()
    cfg = tiny_config()
    with pytest.raises(ValueError, match=rf"checkpoint .*supernet\.pt: {message}"):
        stitchnas.run_search(cfg, out, resume=True, progress=False)


@pytest.mark.parametrize("kind", ["file", "under_a_file", "dangling_symlink"])
def test_out_that_cannot_be_a_folder_is_one_line(capsys, tmp_path, kind):
    target = tmp_path / "thing"
    target.write_text("x")
    out = {"file": target, "under_a_file": target / "run", "dangling_symlink": tmp_path / "link"}[kind]
    if kind == "dangling_symlink":
        os.symlink(tmp_path / "nowhere", out)
    code, _, err = run_cli(capsys, "search", "pooling", *TINY, "--out", str(out))
    line = one_line_error(err)
    assert code == 2 and str(out) in line
    assert target.read_text() == "x"  # nothing already there is damaged


# --------------------------------------------------------------------------- data against a model
def test_evaluating_a_model_on_data_with_other_classes_or_channels_is_one_line(finished_run, tmp_path, capsys):
    model = finished_run.exports[0]
    rng = np.random.default_rng(0)
    four = tmp_path / "four.npz"
    np.savez(four, x=rng.random((40, 8, 8, 1), dtype=np.float32), y=np.arange(40) % 4)
    code, _, err = run_cli(capsys, "evaluate", str(model), "--dataset", "npz", "--data-dir", str(four))
    assert code == 2 and "predicts 10 classes" in one_line_error(err) and "4 classes" in err
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, x=rng.random((100, 8, 8, 3), dtype=np.float32), y=np.arange(100) % 10)
    code, _, err = run_cli(capsys, "evaluate", str(model), "--dataset", "npz", "--data-dir", str(rgb))
    assert code == 2 and "takes 1-channel images" in one_line_error(err) and "3 channels" in err


# --------------------------------------------------------------------------- Ray Tune: Ctrl-C
INTERRUPTED_RAY_RUN = """
import json, sys
import stitchnas
from stitchnas.methods.pooling import PoolingSearchConfig
from stitchnas.backends.tune import FailureHooks, RayTuneStage, TuneOptions
cfg = PoolingSearchConfig.from_json(json.load(open(sys.argv[1])))
stage = RayTuneStage(TuneOptions(search=sys.argv[4], budget=None if sys.argv[4] == "exhaustive" else 8,
                                 candidates_per_trial=1, address=sys.argv[3], hooks=FailureHooks(delay_s=1.0)))
try:
    stitchnas.run_search(cfg, sys.argv[2], progress=False, backend=stage.evaluate)
except KeyboardInterrupt as err:
    print("INTERRUPTED", err, file=sys.stderr)
    sys.exit(130)
"""


@pytest.mark.ray
@pytest.mark.parametrize("search", ["exhaustive", "tpe"])
def test_ctrl_c_during_ray_tune_is_an_interruption_not_a_result(ray_cluster, tmp_path, search):
    cfg = tiny_config(max_candidates=8 if search == "exhaustive" else None)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_json()))
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED_RAY_RUN, str(tmp_path / "cfg.json"), str(out),
                             ray_cluster, search], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "results.csv").exists() and len(ResultsTable(out / "results.csv", RESULT_COLUMNS)) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err.decode()[-2000:]
    assert "INTERRUPTED ray tune stopped with" in err.decode()
    assert not (out / "pareto.json").exists() and not (out / "exports").exists()
    done = len(ResultsTable(out / "results.csv", RESULT_COLUMNS))
    assert 2 <= done < 8


@pytest.mark.parametrize("x, message", [
    (np.zeros((0, 8, 8), np.float32), r"'x' holds no images \(shape \(0, 1, 8, 8\)\)"),
    (np.zeros((10, 0, 8), np.float32), r"'x' has images of zero channels, height or width"),
    (np.zeros((10, 8, 0, 1), np.float32), r"'x' has images of zero channels, height or width"),
])
def test_npz_without_images_or_with_empty_images_is_one_line(capsys, tmp_path, x, message):
    path = tmp_path / "bad.npz"
    np.savez(path, x=x, y=np.zeros((len(x),), np.int64))
    code, _, err = run_cli(capsys, "search", "pooling", *TINY, "--dataset", "npz", "--data-dir", str(path),
                           "--out", str(tmp_path / "run"))
    assert code == 2
    assert re.search(message, one_line_error(err)) and str(path) in err


# --------------------------------------------------------------------------- files the engine reads
@pytest.mark.parametrize("payload, message", [
    (b"\x00garbage bytes, not a zip", "cannot be loaded"),
    ("pickle", "cannot be loaded"),
    ("list", "expected a dict, got list"),
])
def test_a_weights_file_that_is_not_a_state_dict_is_one_line(finished_run, tmp_path, capsys, payload, message):
    folder = tmp_path / "model"
    shutil.copytree(finished_run.exports[0], folder)
    weights = folder / "model.pt"
    if payload == "pickle":
        import pickle

        weights.write_bytes(pickle.dumps(os.system))  # what weights_only=True must refuse
    elif payload == "list":
        torch.save([torch.zeros(1)], weights)
    else:
        weights.write_bytes(payload)  # type: ignore[arg-type]
    record = json.loads((folder / "model.json").read_text())
    from stitchnas.core.io import file_sha256

    record["weights_sha256"] = file_sha256(weights)  # the record agrees: the file itself is bad
    (folder / "model.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=rf"model\.pt: .*{message}"):
        stitchnas.load_model(folder)
    code, _, err = run_cli(capsys, "evaluate", str(folder))
    assert code == 2 and message in one_line_error(err)


def test_a_checkpoint_that_does_not_fit_the_run_is_one_line_on_export(finished_run, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path)
    state = load_checkpoint(out / "supernet.pt")
    state["model"]["extra.weight"] = torch.zeros(1)
    atomic_torch_save(state, out / "supernet.pt")
    code, _, err = run_cli(capsys, "export", "--run", str(out), "--config", "4,3,3", "--out", str(tmp_path / "m"))
    assert code == 2 and "unexpected key 'extra.weight'" in one_line_error(err) and "supernet.pt" in err


@pytest.mark.parametrize("edit, message", [
    ("no_seed", "field 'provenance.seed' is missing"),
    ("impossible_input_size", "cannot take 1x1 images"),
])
def test_a_model_record_that_cannot_be_evaluated_is_one_line(finished_run, tmp_path, capsys, edit, message):
    folder = tmp_path / "model"
    shutil.copytree(finished_run.exports[0], folder)
    record = json.loads((folder / "model.json").read_text())
    if edit == "no_seed":
        del record["provenance"]["seed"]
    else:
        record["model"]["input_size"] = 1
    (folder / "model.json").write_text(json.dumps(record))
    code, _, err = run_cli(capsys, "evaluate", str(folder))
    assert code == 2 and message in one_line_error(err)


@pytest.mark.parametrize("option", ["--in-chans", "--num-classes"])
def test_flops_of_an_impossible_model_is_refused(capsys, option):
    code, _, err = run_cli(capsys, "flops", option, "0")
    assert code == 2 and f"{option}: expected an integer >= 1, got 0" in one_line_error(err)


@pytest.mark.parametrize("command", ["export", "rank"])
def test_a_duplicated_results_row_is_refused_by_every_reader(finished_run, tmp_path, capsys, command):
    out = copy_run(finished_run, tmp_path)
    lines = (out / "results.csv").read_text().splitlines()
    (out / "results.csv").write_text("\n".join([*lines, lines[1]]) + "\n")
    argv = (["export", "--run", str(out), "--config", "4,3,3", "--out", str(tmp_path / "m")] if command == "export"
            else ["rank", "--run", str(out), "--truth", str(tmp_path / "missing")])
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "is already on line 2" in one_line_error(err)


def test_a_results_row_with_text_flops_is_refused_and_exports_are_kept(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path)
    before = sorted(p.name for p in (out / "exports").iterdir())
    rows = ResultsTable(out / "results.csv", RESULT_COLUMNS).rows()
    rows[0]["flops"] = "many"
    (out / "results.csv").unlink()
    table = ResultsTable(out / "results.csv", RESULT_COLUMNS)
    for row in rows:
        table.append(row)
    with pytest.raises(ValueError, match=r"line 2: column 'flops' is 'many', expected a count"):
        stitchnas.run_search(tiny_config(), out, resume=True, progress=False)
    assert sorted(p.name for p in (out / "exports").iterdir()) == before


def test_a_mixture_accuracy_matrix_with_an_unknown_candidate_is_refused(tmp_path):
    cfg = tiny_config(mixture=stitchnas.MixtureConfig(num_supernets=2))
    result = stitchnas.run_search(cfg, tmp_path / "bms", progress=False)
    matrix = result.out_dir / "accuracy_matrix.csv"
    lines = matrix.read_text().splitlines()
    lines[1] = "999" + lines[1][lines[1].index(","):]
    matrix.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"accuracy matrix .*: line 2: candidate 999 is not a new candidate"):
        stitchnas.export_from_run(result.out_dir, "4,3,3", tmp_path / "m")
