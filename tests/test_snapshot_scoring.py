"""Score averaging over checkpoints (issue 15): a placement's score is its mean accuracy over the
supernet at several epochs near the end of training (``score_snapshots``,
``--score-snapshots``); the epochs, the kept files, the arithmetic of the scores, resume, exports
and the options."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest
import torch
from helpers import assert_bad_option

import stitchnas
from searchspace.pooling import create_space
from stitchnas.cli import main
from stitchnas.core.evaluation import accuracy
from stitchnas.core.io import load_checkpoint
from stitchnas.core.training import batches_for
from stitchnas.data import DataSpec, load_data
from stitchnas.methods.pooling import PoolingSearchConfig, snapshot_path
from stitchnas.search.export import load_model
from supernet.bms import MixtureConfig
from supernet.evaluation import EvalConfig, evaluate_path
from supernet.networks import ModelSpec, build_supernet
from supernet.training import TrainConfig, snapshot_epochs

SPACE = create_space("resnet20", width_scale=0.25)
DATA = DataSpec(name="digits", input_size=8, seed=0, max_train_samples=300)
CFG = PoolingSearchConfig(space=SPACE, data=DATA, train=TrainConfig(epochs=3, batch_size=32, lr=0.05, seed=0),
                          eval=EvalConfig(calib_batches=2), max_candidates=6, score_snapshots=3)


def test_snapshot_epochs_end_at_the_last_epoch_a_twelfth_of_training_apart():
    assert snapshot_epochs(120, 4) == (90, 100, 110, 120)  # the benchmark's four
    assert snapshot_epochs(40, 4) == (31, 34, 37, 40)
    assert snapshot_epochs(3, 3) == (1, 2, 3)
    assert snapshot_epochs(40, 1) == (40,)
    with pytest.raises(ValueError, match="do not fit in 3 epochs"):
        snapshot_epochs(3, 4)
    with pytest.raises(ValueError, match="expected an integer >= 1"):
        snapshot_epochs(40, 0)


def test_the_config_records_snapshots_and_refuses_a_mixture():
    assert "score_snapshots" not in replace(CFG, score_snapshots=1).to_json()  # old files are unchanged
    data = CFG.to_json()
    assert data["score_snapshots"] == 3 and PoolingSearchConfig.from_json(data) == CFG
    del data["score_snapshots"]  # a run written before the option
    assert PoolingSearchConfig.from_json(data).score_snapshots == 1
    with pytest.raises(ValueError, match="for one supernet"):
        replace(CFG, mixture=MixtureConfig(num_supernets=2))
    with pytest.raises(ValueError, match="do not fit"):
        replace(CFG, score_snapshots=4)


@pytest.fixture(scope="module")
def averaged(tmp_path_factory):
    return stitchnas.run_search(CFG, tmp_path_factory.mktemp("snap") / "run", progress=False)


def test_a_score_is_the_mean_accuracy_over_the_kept_supernets(averaged):
    out = averaged.out_dir
    data = load_data(DATA)
    files = [snapshot_path(out, 1), snapshot_path(out, 2), out / "supernet.pt"]
    assert all(f.exists() for f in files) and not snapshot_path(out, 3).exists()
    supernets = []
    for f in files:
        supernet = build_supernet(SPACE, ModelSpec(data.in_chans, data.num_classes))
        supernet.load_state_dict(load_checkpoint(f)["model"])
        supernets.append(supernet.eval())
    assert not torch.equal(next(supernets[0].parameters()), next(supernets[2].parameters()))  # different networks
    singles = {}
    for row in averaged.rows:
        config = SPACE.config(int(row["candidate"]))
        accs = [evaluate_path(s, config, data.search_train, data.search_val, CFG.eval) for s in supernets]
        assert row["val_acc"] == pytest.approx(sum(accs) / len(accs), abs=1e-12)
        singles[row["candidate"]] = accs[-1]
    assert any(row["val_acc"] != singles[row["candidate"]] for row in averaged.rows)
    # the exports are the final supernet's networks, measured themselves (the mean is no network's)
    assert averaged.exports
    for folder in averaged.exports:
        model, record = load_model(folder, return_record=True)
        assert record["metrics"]["val_acc"] == accuracy(model, data.search_val)
        index = SPACE.index(SPACE.from_notation(record["notation"]))
        row = next(r for r in averaged.rows if int(r["candidate"]) == index)
        assert record["metrics"]["search_val_acc"] == row["val_acc"]


def test_an_interrupted_run_keeps_its_snapshots_and_resumes_identically(averaged, tmp_path):
    data = load_data(DATA)
    per_epoch = batches_for(data.search_train, torch.device("cpu")).num_batches(32, drop_last=True)

    def interrupt(step: int) -> None:
        if step == per_epoch + 2:  # inside epoch 2, after epoch 1's snapshot
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        stitchnas.run_search(CFG, out, progress=False, on_step=interrupt)
    assert snapshot_path(out, 1).exists() and not snapshot_path(out, 2).exists()
    stitchnas.run_search(CFG, out, resume=True, progress=False)
    for epoch in (1, 2):
        a, b = load_checkpoint(snapshot_path(out, epoch))["model"], load_checkpoint(snapshot_path(averaged.out_dir,
                                                                                                  epoch))["model"]
        assert all(torch.equal(a[k], b[k]) for k in a)
    columns = ["candidate", "val_acc", "status"]
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv")[columns].sort_values("candidate", ignore_index=True),
                                  pd.read_csv(averaged.out_dir / "results.csv")[columns].sort_values(
                                      "candidate", ignore_index=True))


def test_a_missing_snapshot_is_one_line_naming_it(averaged, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(averaged.out_dir, run)
    snapshot_path(run, 2).unlink()
    with pytest.raises(ValueError, match=r"supernet_e0002\.pt"):
        stitchnas.evaluate_run(run, progress=False)


@pytest.mark.parametrize("argv, message", [
    (["--score-snapshots", "0"], "--score-snapshots: expected an integer >= 1, got 0"),
    (["--score-snapshots", "5", "--epochs", "3"], "--score-snapshots: 5 snapshots 1 epoch(s) apart do not fit in 3"),
])
def test_bad_snapshot_options_get_one_line_naming_the_option(capsys, tmp_path, argv, message):
    assert_bad_option(capsys, ["search", "pooling", *argv], message, tmp_path / "run")


def test_cli_records_the_snapshots(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["search", "pooling", "--space", "resnet20", "--width-scale", "0.25", "--input-size", "8",
                 "--epochs", "2", "--candidates", "2", "--score-snapshots", "2", "--no-export", "--no-progress",
                 "--threads", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "run_config.json").read_text())["score_snapshots"] == 2
    assert snapshot_path(out, 1).exists()
