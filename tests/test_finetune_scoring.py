"""Fine-tuned scoring (issue 15): each placement scored after a few epochs of training its
network from the supernet's weights (``EvalConfig.finetune``, ``--finetune-epochs``); the
arithmetic of the path, what the search records and exports, and the CLI options."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch
from helpers import assert_bad_option

import stitchnas
from searchspace.pooling import create_space
from stitchnas.cli import main
from stitchnas.core.evaluation import accuracy
from stitchnas.data import DataSpec, load_data
from stitchnas.methods.pooling import PoolingSearchConfig
from stitchnas.search.export import load_model
from supernet.bms import MixtureConfig
from supernet.evaluation import EvalConfig, evaluate_path, prepare_path
from supernet.networks import ModelSpec, build_supernet
from supernet.shared_prefix import score_placements
from supernet.training import TrainConfig, train

SPACE = create_space("resnet20", width_scale=0.25)
DATA = DataSpec(name="digits", input_size=8, seed=0, max_train_samples=300)
RECIPE = TrainConfig(epochs=1, batch_size=32, lr=0.05, seed=0)
FINETUNE = replace(RECIPE, lr=0.01, lr_min=1e-4, seed=3)


@pytest.fixture(scope="module")
def trained():
    data = load_data(DATA)
    torch.manual_seed(0)
    supernet = build_supernet(SPACE, ModelSpec(data.in_chans, data.num_classes))
    train(supernet, data.search_train, RECIPE, choose_path=supernet.sample_active, progress=False)
    return supernet, data


def test_eval_config_records_the_recipe_and_old_files_decode_without_it():
    plain = EvalConfig(calib_batches=2)
    assert "finetune" not in plain.to_json()  # files stay as they were without the option
    assert EvalConfig.from_json(plain.to_json()).finetune is None
    tuned = EvalConfig(calib_batches=2, finetune=FINETUNE)
    data = json.loads(json.dumps(tuned.to_json()))
    assert data["finetune"]["epochs"] == 1 and data["finetune"]["lr"] == 0.01
    assert EvalConfig.from_json(data) == tuned


def test_a_fine_tuned_score_is_the_accuracy_of_the_placement_trained_from_supernet_weights(trained):
    supernet, data = trained
    config = SPACE.config(5)
    cfg = EvalConfig(calib_batches=2, finetune=FINETUNE)
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    tuned = evaluate_path(supernet, config, data.search_train, data.search_val, cfg)
    assert all(torch.equal(before[k], v) for k, v in supernet.state_dict().items())  # the supernet is untouched
    # by hand: the re-calibrated path, trained with the recipe, then its accuracy in eval mode
    model = prepare_path(supernet, config, data.search_train, replace(cfg, finetune=None))
    start = copy.deepcopy(model.state_dict())
    torch.manual_seed(FINETUNE.seed)
    train(model, data.search_train, FINETUNE, progress=False)
    assert any(not torch.equal(start[k], v) for k, v in model.state_dict().items())
    assert tuned == accuracy(model.eval(), data.search_val, cfg.batch_size)
    plain = evaluate_path(supernet, config, data.search_train, data.search_val, replace(cfg, finetune=None))
    assert tuned != plain
    # the same recipe gives the same network, so a resume or a Ray trial scores alike
    assert evaluate_path(supernet, config, data.search_train, data.search_val, cfg) == tuned


def test_a_shipped_split_keeps_whether_mirror_images_keep_their_labels(trained):
    import pickle

    from stitchnas.search.candidates import ship_split, unship_split

    _, data = trained
    assert data.search_train.mirror_invariant is False  # digits: a mirrored 2 is no 2
    received = unship_split(pickle.loads(pickle.dumps(ship_split(data.search_train))))
    assert received.mirror_invariant is False  # else a Ray trial would fine-tune with flips
    assert all(torch.equal(a, b) for a, b in zip(received.tensors, data.search_train.tensors, strict=True))


def test_shared_prefix_scoring_refuses_fine_tuned_scores(trained):
    supernet, data = trained
    with pytest.raises(ValueError, match="shares no prefixes"):
        score_placements(supernet, SPACE.configurations()[:3], data.search_train, data.search_val,
                         EvalConfig(calib_batches=2, finetune=FINETUNE))


@pytest.mark.parametrize("mixture", [None, MixtureConfig(num_supernets=2)], ids=["spos", "bms"])
def test_a_fine_tuned_search_scores_and_exports_the_fine_tuned_networks(tmp_path, mixture):
    cfg = PoolingSearchConfig(space=SPACE, data=DATA, train=RECIPE,
                              eval=EvalConfig(calib_batches=2, finetune=FINETUNE), max_candidates=4, mixture=mixture)
    out = tmp_path / "run"
    result = stitchnas.run_search(cfg, out, progress=False)
    assert json.loads((out / "run_config.json").read_text())["eval"]["finetune"]["epochs"] == 1
    scores = {int(r["candidate"]): r["val_acc"] for r in result.rows if r["status"] == "ok"}
    assert len(scores) == 4
    plain = stitchnas.run_search(replace(cfg, eval=EvalConfig(calib_batches=2)), tmp_path / "plain", progress=False)
    assert scores != {int(r["candidate"]): r["val_acc"] for r in plain.rows}  # the same supernet, other scores
    data = load_data(DATA)
    assert result.exports
    for folder in result.exports:
        model, record = load_model(folder, return_record=True)
        index = SPACE.index(SPACE.from_notation(record["notation"]))
        # the exported network is the one that was scored: its own accuracy is the search's score
        assert record["metrics"]["val_acc"] == scores[index]
        assert accuracy(model, data.search_val) == pytest.approx(scores[index], abs=1e-9)
        assert accuracy(model, data.test) == pytest.approx(record["metrics"]["test_acc"], abs=1e-9)


def test_cli_fine_tune_options_reach_the_run_config(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["search", "pooling", "--space", "resnet20", "--width-scale", "0.25", "--dataset", "digits",
                 "--input-size", "8", "--epochs", "1", "--candidates", "2",
                 "--finetune-epochs", "1", "--finetune-lr", "0.02", "--no-export", "--no-progress",
                 "--threads", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    recorded = json.loads((out / "run_config.json").read_text())
    assert recorded["eval"]["finetune"]["epochs"] == 1 and recorded["eval"]["finetune"]["lr"] == 0.02
    assert recorded["eval"]["finetune"]["lr_min"] == pytest.approx(2e-4)
    assert recorded["eval"]["finetune"]["batch_size"] == recorded["train"]["batch_size"]


@pytest.mark.parametrize("argv, message", [
    (["--finetune-epochs", "-1"], "--finetune-epochs: expected an integer >= 0, got -1"),
    (["--finetune-epochs", "2", "--finetune-lr", "0"], "--finetune-lr: expected a number > 0, got 0.0"),
])
def test_bad_fine_tune_options_get_one_line_naming_the_option(capsys, tmp_path, argv, message):
    assert_bad_option(capsys, ["search", "bms", *argv], message, tmp_path / "run")
