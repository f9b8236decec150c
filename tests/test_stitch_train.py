"""SN-Net engine end to end on tiny ViT anchors (depth 3, 8x8 digits, a 240-image subset):
anchor training, joint training, evaluation, FLOPs, export and resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from stitching.anchors import MANIFEST_FILE, load_anchors
from stitchnas.methods.anchors import AnchorTrainConfig, train_anchors
from stitching.flops import fvcore_flops, route_flops
from stitching.snnet import SNNet, StitchedModel
from stitching.trainer import StitchTrainConfig, distillation_loss, sampled_configs, train_network
import stitchnas
from stitchnas import load_model
from stitchnas.data import DataSpec, load_data
from stitchnas.search.front import RESULT_COLUMNS
from stitchnas.core.io import file_sha256
from stitchnas.search.pareto import pareto_front
from stitchnas.methods import method_from_run
from stitchnas.methods.snnet import SNNET_CHECKPOINT, StitchSearchConfig, largest_anchor
from stitchnas.core.evaluation import accuracy

DATA = DataSpec(name="digits", input_size=8, seed=1, max_train_samples=240)  # search_train 120 -> 3 steps/epoch
ANCHOR_TRAIN = StitchTrainConfig(epochs=2, batch_size=32, lr=3e-3, seed=1)
TRAIN = StitchTrainConfig(epochs=2, batch_size=32, lr=1e-3, seed=1)
STEPS_PER_EPOCH = 3
NUM_CONFIGS = 3 + 2 * 7  # three depth-3 anchors: 7 positions per neighbouring pair


@pytest.fixture(scope="module")
def data():
    return load_data(DATA)


@pytest.fixture(scope="module")
def anchor_dir(tiny_vit_family, stitch_data_spec):
    assert stitch_data_spec == DATA
    return tiny_vit_family(depth=3, epochs=ANCHOR_TRAIN.epochs)


@pytest.fixture(scope="module")
def refs(anchor_dir):
    from stitching.anchors import read_anchor_folder

    return read_anchor_folder(anchor_dir)


def search_config(refs, **changes) -> StitchSearchConfig:
    return StitchSearchConfig(**{**dict(anchors=tuple(refs), data=DATA, train=TRAIN, init_samples=40), **changes})


def trained_snnet(run) -> SNNet:
    """The run's SN-Net with the weights of its last checkpoint."""
    method = method_from_run(run)
    return method.load_trained(Path(run), method.load_data())


@pytest.fixture(scope="module")
def finished(refs, tmp_path_factory):
    return stitchnas.run_search(search_config(refs), tmp_path_factory.mktemp("stitch") / "run", progress=False)


# --------------------------------------------------------------------------- anchors
def test_anchor_family_manifest(anchor_dir, refs):
    manifest = json.loads((anchor_dir / MANIFEST_FILE).read_text())
    assert manifest["format"] == "stitchnas.anchors" and manifest["family"] == "vit_digits"
    assert [a["name"] for a in manifest["anchors"]] == ["vit_digits_tiny", "vit_digits_small", "vit_digits_base"]
    flops = [a["flops"] for a in manifest["anchors"]]
    assert flops == sorted(flops) and len(set(flops)) == 3
    for entry, ref in zip(manifest["anchors"], refs):
        assert entry["config"]["depth"] == 3 and entry["config"]["img_size"] == 8
        assert 0 <= entry["val_acc"] <= 100 and 0 <= entry["test_acc"] <= 100
        assert file_sha256(anchor_dir / entry["file"]) == entry["sha256"] == ref.sha256
        assert not (anchor_dir / f"{entry['name']}.train.pt").exists()  # epoch checkpoints are cleaned up
    # plain timm-format state dicts: loadable with torch.load(weights_only=True)
    state = torch.load(anchor_dir / "vit_digits_tiny.pth", weights_only=True)
    assert state["cls_token"].shape == (1, 1, 32) and "blocks.2.mlp.fc2.weight" in state


def test_anchor_training_resumes_per_anchor(anchor_dir, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(anchor_dir, out)
    cfg = AnchorTrainConfig("vit_digits", DATA, ANCHOR_TRAIN, {"depth": 3})
    steps = []
    train_anchors(cfg, out, resume=True, progress=False, on_step=steps.append)
    assert steps == []  # every anchor finished: nothing retrained
    before = file_sha256(out / "vit_digits_small.pth")
    (out / "vit_digits_small.pth").unlink()
    train_anchors(cfg, out, resume=True, progress=False, on_step=steps.append)
    assert steps == list(range(1, 2 * STEPS_PER_EPOCH + 1))  # only the missing anchor, once
    assert file_sha256(out / "vit_digits_small.pth") == before  # and exactly as before
    with pytest.raises(ValueError, match="pass --resume"):
        train_anchors(cfg, out, progress=False)


# --------------------------------------------------------------------------- results
def test_results_cover_every_configuration(finished, refs):
    out = finished.out_dir
    for name in ("run_config.json", SNNET_CHECKPOINT, "results.csv", "pareto.json", "pareto.png"):
        assert (out / name).stat().st_size > 0, name
    results = pd.read_csv(out / "results.csv")
    assert tuple(results.columns) == RESULT_COLUMNS
    assert sorted(results["candidate"]) == list(range(NUM_CONFIGS)) and (results["status"] == "ok").all()
    assert results["val_acc"].between(0, 100).all()
    assert results.loc[results["candidate"] == 7, "label"].item() == "vit_digits_tiny[0-1] -> vit_digits_small[2-2]"
    pareto = json.loads((out / "pareto.json").read_text())
    expected = set(results["candidate"].iloc[pareto_front(results["flops"].to_numpy(), results["val_acc"].to_numpy())])
    assert {r["candidate"] for r in pareto["front"]} == expected and pareto["hypervolume"] > 0
    assert len(finished.exports) == len(pareto["front"])


def test_flops_are_analytic_and_match_fvcore(finished):
    snnet = trained_snnet(finished.out_dir)
    results = pd.read_csv(finished.out_dir / "results.csv").set_index("candidate")
    configs = [c for c in snnet.space]
    for config in (configs[0], configs[2], configs[5], configs[-1]):  # anchors, k>j and k<=j stitches
        snnet.set_active(config)
        analytic = route_flops([a.config for a in snnet.anchors], config)
        assert results.loc[config.id, "flops"] == analytic == fvcore_flops(snnet, torch.zeros(1, 1, 8, 8))
        assert results.loc[config.id, "params"] == sum(p.numel() for p in snnet.export_active().parameters())
    assert largest_anchor(snnet) == 2  # the 'default' marked on pareto.png


# --------------------------------------------------------------------------- export
def test_exported_models_give_the_snnet_logits(finished, data):
    snnet = trained_snnet(finished.out_dir)
    x = data.test.tensors[0][:64]
    for folder in finished.exports:
        model, record = load_model(folder, return_record=True)
        assert isinstance(model, StitchedModel) and not model.training
        config = snnet.set_active(record["config"]["id"])
        assert sum(len(seg) for seg in model.segments) == config.num_blocks()  # only the blocks it uses
        total = sum(p.numel() for p in snnet.parameters())
        assert sum(p.numel() for p in model.parameters()) == record["params"] < total
        with torch.no_grad():
            torch.testing.assert_close(model(x), snnet(x), rtol=0, atol=0)


def test_load_model_reproduces_recorded_accuracy(finished, data):
    results = pd.read_csv(finished.out_dir / "results.csv").set_index("candidate")
    for folder in finished.exports:
        model, record = load_model(folder, return_record=True)
        assert record["kind"] == "stitch" and record["provenance"]["source"] == "snnet"
        assert record["provenance"]["checkpoint_sha256"] == file_sha256(finished.out_dir / SNNET_CHECKPOINT)
        assert accuracy(model, data.test) == record["metrics"]["test_acc"]
        assert accuracy(model, data.search_val) == record["metrics"]["val_acc"]
        assert record["metrics"]["search_val_acc"] == results.loc[record["config"]["id"], "val_acc"]
        assert record["flops"] == results.loc[record["config"]["id"], "flops"]


def test_export_from_run_and_unknown_id(finished, tmp_path):
    folder = stitchnas.export_from_run(finished.out_dir, 9, tmp_path / "m")
    record = json.loads((folder / "model.json").read_text())
    assert record["config"]["id"] == 9 and record["label"] == "vit_digits_tiny[0-2] -> vit_digits_small[2-2]"
    with pytest.raises(ValueError, match=rf"stitch config id 99: unknown, expected an int in 0\.\.{NUM_CONFIGS - 1}"):
        stitchnas.export_from_run(finished.out_dir, 99, tmp_path / "bad")


# --------------------------------------------------------------------------- resume and evaluation
def test_interrupted_run_resumes_to_the_same_result(finished, refs, tmp_path):
    out = tmp_path / "interrupted"

    def ctrl_c_in_second_epoch(step: int) -> None:
        if step == STEPS_PER_EPOCH + 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stitchnas.run_search(search_config(refs), out, progress=False, on_step=ctrl_c_in_second_epoch)
    assert torch.load(out / SNNET_CHECKPOINT, weights_only=True)["epoch"] == 1
    assert not (out / "results.csv").exists()
    resumed = stitchnas.run_search(search_config(refs), out, resume=True, progress=False)
    a = pd.read_csv(finished.out_dir / "results.csv")
    b = pd.read_csv(out / "results.csv")
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))
    assert resumed.history.epochs == finished.history.epochs
    assert [p.name for p in resumed.exports] == [p.name for p in finished.exports]
    for x, y in zip(resumed.exports, finished.exports):
        assert file_sha256(x / "model.pt") == file_sha256(y / "model.pt")
    with pytest.raises(ValueError, match=r"differing: \['train'\]"):
        stitchnas.run_search(search_config(refs, train=StitchTrainConfig(epochs=3, seed=1)), out, resume=True,
                             progress=False)


def test_evaluate_checkpoint_and_least_squares_init(finished, refs, anchor_dir, tmp_path):
    again = stitchnas.evaluate_run(finished.out_dir, progress=False)
    assert [r["val_acc"] for r in again.rows] == [r["val_acc"] for r in finished.rows]
    assert (finished.out_dir / "evaluate" / "checkpoint" / "pareto.json").exists()
    init = stitchnas.evaluate_run(finished.out_dir, no_train=True, progress=False)
    untrained = stitchnas.run_search(search_config(refs, train=StitchTrainConfig(epochs=0, seed=1),
                                                   export_front=False), tmp_path / "epochs0", progress=False)
    assert [r["val_acc"] for r in init.rows] == [r["val_acc"] for r in untrained.rows]
    assert [r["val_acc"] for r in init.rows] != [r["val_acc"] for r in finished.rows]
    # right after the least-squares init, anchors are untouched: they score as trained standalone
    manifest = json.loads((anchor_dir / MANIFEST_FILE).read_text())
    assert [r["val_acc"] for r in init.rows[:3]] == [a["val_acc"] for a in manifest["anchors"]]


def test_mismatched_run_checkpoint_names_the_key(finished, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(finished.out_dir, run, ignore=shutil.ignore_patterns("exports", "evaluate"))
    state = torch.load(run / SNNET_CHECKPOINT, weights_only=True)
    state["model"]["stitch_layers.0_1_0.transform.weight"] = torch.zeros(48, 31)
    torch.save(state, run / SNNET_CHECKPOINT)
    with pytest.raises(ValueError, match=r"checkpoint .*snnet.pt: key 'stitch_layers.0_1_0.transform.weight' "
                                         r"has shape \(48, 31\), model expects \(48, 32\)"):
        stitchnas.evaluate_run(run, progress=False)


# --------------------------------------------------------------------------- the training loop
def tiny_snnet(refs) -> SNNet:
    return SNNet.from_anchors(load_anchors(refs[:2]), names=[r.name for r in refs[:2]])


def test_anchor_and_stitch_learning_rates_really_differ(refs, data):
    snnet = tiny_snnet(refs)
    config = snnet.space.config(5)  # a stitched path: both anchors and one stitching layer train
    before = {k: v.clone() for k, v in snnet.state_dict().items()}
    one_batch = torch.utils.data.TensorDataset(*(t[:32] for t in data.search_train.tensors))
    cfg = StitchTrainConfig(epochs=1, batch_size=32, lr=1e-3, lr_min=1e-3, weight_decay=0.0, anchor_lr_scale=0.1)
    history = train_network(snnet, one_batch, cfg, choose=lambda rng: snnet.set_active(config), progress=False)
    assert history.epochs[0]["lr_anchors"] == pytest.approx(1e-4) and history.epochs[0]["lr_stitch_layers"] == 1e-3
    moved = {k: (v - before[k]).abs().max().item() for k, v in snnet.state_dict().items()}
    a, b, _, _, w = config.junctions()[0]
    stitch = max(v for k, v in moved.items() if k.startswith(f"stitch_layers.{a}_{b}_{w}."))
    anchor = max(v for k, v in moved.items() if k.startswith("anchors."))
    # Adam's first step moves each parameter by about its learning rate
    assert 0.9e-3 < stitch <= 1.001e-3 and 0.9e-4 < anchor <= 1.001e-4
    on_path = f"stitch_layers.{a}_{b}_{w}."
    off_path = [k for k in moved if k.startswith("stitch_layers.") and not k.startswith(on_path)]
    assert off_path and all(moved[k] == 0 for k in off_path)


def test_one_uniform_draw_per_step_from_the_epoch_generator(refs, data):
    snnet = tiny_snnet(refs)
    seen: list[int] = []
    cfg = StitchTrainConfig(epochs=2, batch_size=32, seed=4)
    train_network(snnet, data.search_train, cfg, choose=snnet.sample_active, progress=False,
                  on_step=lambda step: seen.append(snnet.active.id))
    assert seen == sampled_configs(len(snnet.space), cfg, STEPS_PER_EPOCH)
    assert len(seen) == 2 * STEPS_PER_EPOCH and all(0 <= i < len(snnet.space) for i in seen)


def test_distillation_loss_and_effect(refs, data):
    s, t = torch.randn(5, 10), torch.randn(5, 10)
    p_t = t.div(2).softmax(1)
    manual = (p_t * (p_t.log() - s.div(2).log_softmax(1))).sum(1).mean() * 4
    torch.testing.assert_close(distillation_loss(s, t, 2.0), manual)
    assert distillation_loss(t, t, 3.0).abs() < 1e-6
    losses = []
    for weight in (0.0, 0.5):
        snnet = tiny_snnet(refs)
        teacher = load_anchors(refs[2:])[0]
        cfg = StitchTrainConfig(epochs=1, batch_size=32, distill_weight=weight, distill_temperature=2.0)
        losses.append(train_network(snnet, data.search_train, cfg, choose=snnet.sample_active, teacher=teacher,
                                    progress=False).epochs[0]["loss"])
    assert math.isfinite(losses[1]) and losses[0] != losses[1]


def test_an_anchor_near_chance_is_reported(tmp_path, caplog):
    """An anchor that learned nothing (one epoch at a learning rate of 1e-9: about 10% on 10
    classes) gets a warning naming it and the chance level; the run still writes it."""
    import logging

    cfg = AnchorTrainConfig("vit_digits", DATA, StitchTrainConfig(epochs=1, lr=1e-9, lr_min=0.0, seed=1),
                            {"depth": 1})
    with caplog.at_level(logging.WARNING, logger="stitchnas.methods.anchors"):
        refs = train_anchors(cfg, tmp_path / "a", progress=False)
    warned = [r.getMessage() for r in caplog.records if "near chance" in r.getMessage()]
    manifest = json.loads((tmp_path / "a" / MANIFEST_FILE).read_text())
    below = [a["name"] for a in manifest["anchors"] if a["val_acc"] < 20.0]
    assert len(refs) == 3 and below and len(warned) == len(below)
    assert all("(10.0% for 10 classes)" in w for w in warned)
    assert {w.split(":")[0].removeprefix("anchor ") for w in warned} == set(below)
