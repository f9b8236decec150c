"""SN-Netv2 through the SN-Net engine (``version="v2"``) on tiny ViT anchors (depth 4, 8x8
digits): the two-way space, ROS sampling in the trainer, low-rank stitching layers, the same
run files and exports as SN-Net, resume, and one clear line for each kind of bad input."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from searchspace.samplers import FlopsGroupedSampler, UniformSampler
from searchspace.stitch_v2 import StitchSpaceV2
from stitching.anchors import read_anchor_folder
from stitching.flops import route_flops
from stitching.layers import StitchingLayer
from stitching.lowrank import LowRankStitchingLayer
from stitching.snnet import StitchedModel
from stitching.trainer import SamplingConfig, StitchTrainConfig, sampled_configs, train_network
from stitching.vit import create_vit
import stitchnas
from stitchnas import load_model
from stitchnas.cli import main
from stitchnas.data import DataSpec, load_data
from stitchnas.search.front import RESULT_COLUMNS
from stitchnas.core.io import file_sha256
from stitchnas.methods import method_from_run
from stitchnas.methods.snnet import (
    SNNET_CHECKPOINT, StitchSearchConfig, initialised_snnet, route_text, training_sampler,
)
from stitchnas.core.evaluation import accuracy

DATA = DataSpec(name="digits", input_size=8, seed=1, max_train_samples=240)  # search_train 120 -> 3 steps/epoch
ANCHOR_TRAIN = StitchTrainConfig(epochs=3, batch_size=32, lr=3e-3, seed=1)
TRAIN = StitchTrainConfig(epochs=2, batch_size=32, lr=1e-3, seed=1)
STEPS_PER_EPOCH = 3
NUM_CONFIGS = 14  # depths 4 / 4: b = 3 boundaries -> 2 + 3 + 3 + 3 + 3
QUICK = ["--input-size", "8", "--max-train-samples", "240", "--seed", "1", "--epochs", "1", "--batch-size", "32",
         "--init-samples", "40", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def data():
    return load_data(DATA)


@pytest.fixture(scope="module")
def anchor_dir(tiny_vit_family, stitch_data_spec):
    assert stitch_data_spec == DATA
    return tiny_vit_family(depth=4, epochs=ANCHOR_TRAIN.epochs)


@pytest.fixture(scope="module")
def refs(anchor_dir):
    return read_anchor_folder(anchor_dir)  # tiny, small, base: v2 keeps tiny (32 wide) and base (64 wide)


def v2_config(refs, **changes) -> StitchSearchConfig:
    return StitchSearchConfig(**{**dict(anchors=tuple(refs), data=DATA, train=TRAIN, init_samples=40,
                                        version="v2"), **changes})


def trained_snnet(run):
    """The run's SN-Net with the weights of its last checkpoint."""
    method = method_from_run(run)
    return method.load_trained(Path(run), method.load_data())


@pytest.fixture(scope="module")
def finished(refs, tmp_path_factory):
    return stitchnas.run_search(v2_config(refs), tmp_path_factory.mktemp("stitch_v2") / "run", progress=False)


# --------------------------------------------------------------------------- run files
def test_v2_run_writes_the_sn_net_files(finished, refs):
    out = finished.out_dir
    for name in ("run_config.json", SNNET_CHECKPOINT, "results.csv", "pareto.json", "pareto.png"):
        assert (out / name).stat().st_size > 0, name
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["version"] == "v2" and run_config["lora_rank"] == 4
    assert run_config["route_types"] == ["fs", "sf", "sfs", "fsf"]
    assert run_config["sampling"] == {"kind": "ros", "flops_gap_mflops": None, "weighting": "uniform", "k": 1.0}
    assert [a["name"] for a in run_config["anchors"]] == ["vit_digits_tiny", "vit_digits_base"]  # first and last
    results = pd.read_csv(out / "results.csv")
    assert tuple(results.columns) == RESULT_COLUMNS
    assert sorted(results["candidate"]) == list(range(NUM_CONFIGS)) and (results["status"] == "ok").all()
    labels = results.set_index("candidate")["label"]
    assert labels[0] == "vit_digits_tiny[0-3]" and labels[1] == "vit_digits_base[0-3]"
    assert labels[11] == "vit_digits_tiny[0-0] -> vit_digits_base[1-1] -> vit_digits_tiny[2-3]"  # first FSF
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["num_candidates"] == NUM_CONFIGS and pareto["hypervolume"] > 0
    assert len(finished.exports) == len(pareto["front"]) >= 1
    snnet = trained_snnet(out)
    assert isinstance(snnet.space, StitchSpaceV2) and len(snnet.space) == NUM_CONFIGS
    assert all(isinstance(m, LowRankStitchingLayer) and m.rank == 4 for m in snnet.stitch_layers.values())
    # the params column is the exported (merged, plain) model's size
    snnet.set_active(12)
    exported = snnet.export_active()
    assert results.set_index("candidate").loc[12, "params"] == sum(p.numel() for p in exported.parameters())


def test_least_squares_init_fits_the_two_segment_positions(refs, data):
    snnet = initialised_snnet(v2_config(refs), data)
    space = snnet.space
    for key, layer in snnet.stitch_layers.items():
        spec = next(s for s in space.stitching_layers() if s.key == key)
        # one position per layer: where the two-segment FS / SF route of that boundary stitches
        two_segment = [c for c in space if len(c.route) == 2 and c.junctions()[0][:2] == (spec.in_anchor,
                                                                                         spec.out_anchor)
                       and c.windows == (spec.window,)]
        assert len(two_segment) == 1 and spec.positions == (two_segment[0].junctions()[0][2:4],)
        assert not layer.lora_b.any()  # the base is the least-squares map, the update starts at zero
        assert not layer.transform.weight.requires_grad and layer.lora_a.requires_grad


# --------------------------------------------------------------------------- exports
def test_export_of_a_three_segment_route_reproduces_the_snnet(finished, data, tmp_path):
    snnet = trained_snnet(finished.out_dir)
    fsf = snnet.space.config(snnet.space.ids("fsf")[-1])  # tiny[0-1] -> base[2-2] -> tiny[3-3]
    folder = stitchnas.export_from_run(finished.out_dir, route_text(fsf.route), tmp_path / "fsf")
    model, record = load_model(folder, return_record=True)
    assert record["config"]["id"] == fsf.id == 13 and record["label"] == snnet.space.describe(fsf)
    assert record["provenance"]["source"] == "snnetv2" and record["space"]["kind"] == "stitch_v2"
    assert isinstance(model, StitchedModel) and len(model.stitch_layers) == 2
    assert all(type(m) is StitchingLayer for m in model.stitch_layers)  # low-rank update merged away
    assert sum(p.numel() for p in model.parameters()) == record["params"]
    assert accuracy(model, data.test) == record["metrics"]["test_acc"]
    assert accuracy(model, data.search_val) == record["metrics"]["val_acc"]
    results = pd.read_csv(finished.out_dir / "results.csv").set_index("candidate")
    assert record["metrics"]["search_val_acc"] == results.loc[13, "val_acc"] == record["metrics"]["val_acc"]
    snnet.set_active(fsf)
    x = data.test.tensors[0][:64]
    with torch.no_grad():
        torch.testing.assert_close(model(x), snnet(x), rtol=0, atol=0)


def test_front_exports_reproduce_their_recorded_accuracy(finished, data):
    results = pd.read_csv(finished.out_dir / "results.csv").set_index("candidate")
    for folder in finished.exports:
        model, record = load_model(folder, return_record=True)
        assert accuracy(model, data.test) == record["metrics"]["test_acc"]
        assert accuracy(model, data.search_val) == record["metrics"]["search_val_acc"]
        assert record["flops"] == results.loc[record["config"]["id"], "flops"]


# --------------------------------------------------------------------------- training
def test_low_rank_layers_train_only_a_b_and_bias(finished, refs, data):
    init = initialised_snnet(v2_config(refs), data).state_dict()
    final = torch.load(finished.out_dir / SNNET_CHECKPOINT, weights_only=True)["model"]
    snnet = trained_snnet(finished.out_dir)
    drawn = [i for epoch in finished.history.epochs for i in epoch["configs"]]
    used = {f"{a}_{b}_{w}" for i in drawn for a, b, _, _, w in snnet.space.config(i).junctions()}
    assert used and len(drawn) == 2 * STEPS_PER_EPOCH
    for key in snnet.stitch_layers:
        p = f"stitch_layers.{key}."
        assert torch.equal(final[p + "transform.weight"], init[p + "transform.weight"]), key  # W frozen
        moved = [not torch.equal(final[p + n], init[p + n]) for n in ("lora_a", "lora_b", "transform.bias")]
        assert moved == ([True] * 3 if key in used else [False] * 3), key
        assert final[p + "lora_b"].any() == (key in used)
    assert any(not torch.equal(final[k], init[k]) for k in final if k.startswith("anchors."))


class _Stub(nn.Module):
    """The cheapest model a trainer can drive: records every configuration it is set to."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(1, 2)
        self.active: list[int] = []

    def set_active(self, config: int) -> int:
        self.active.append(config)
        return config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def test_ros_sampling_in_the_trainer_follows_its_probabilities(finished, refs):
    snnet = trained_snnet(finished.out_dir)
    sampler = training_sampler(v2_config(refs), snnet)
    assert isinstance(sampler, FlopsGroupedSampler)
    assert [len(g) for g in sampler.groups()] == [1, 4, 4, 4, 1]  # by number of tiny blocks: 4, 3, 2, 1, 0
    probs = sampler.probabilities()
    assert probs[0] == probs[1] == pytest.approx(1 / 5) and probs[5] == pytest.approx(1 / 20)
    steps = 3000
    stub, cfg = _Stub(), StitchTrainConfig(epochs=1, batch_size=1, lr=1e-3, seed=7)
    dataset = torch.utils.data.TensorDataset(torch.zeros(steps, 1), torch.zeros(steps, dtype=torch.long))
    history = train_network(stub, dataset, cfg, sampler=sampler, progress=False)
    assert stub.active == history.epochs[0]["configs"] == sampled_configs(NUM_CONFIGS, cfg, steps, sampler=sampler)
    counts = Counter(stub.active)
    for i, p in enumerate(probs):  # every id within 4.5 binomial standard deviations
        assert abs(counts[i] - steps * p) < 4.5 * (steps * p * (1 - p)) ** 0.5 + 1, (i, counts[i], steps * p)
    for group in sampler.groups():
        share = sum(counts[i] for i in group) / steps
        assert abs(share - 0.2) < 0.04, (group, share)
    # uniform sampling draws exactly what SN-Net's snnet.sample_active draws
    uniform = SamplingConfig().build([1] * NUM_CONFIGS)
    assert isinstance(uniform, UniformSampler)
    assert sampled_configs(NUM_CONFIGS, cfg, 50, sampler=uniform) == sampled_configs(NUM_CONFIGS, cfg, 50)


def test_sampling_config_validation():
    assert SamplingConfig("ros", 0.5).gap_flops([0, 10]) == 500_000.0
    assert SamplingConfig("ros").gap_flops([100, 1300]) == 50.0  # auto: range / 24


def test_auto_gap_gives_sn_netv2_groups_for_deit_small_large():
    small = dict(create_vit("deit_small_patch16_224").config)
    large = dict(small, embed_dim=1024, num_heads=16, depth=24)  # DeiT3-L's shape, analytic FLOPs only
    flops = [route_flops([small, large], c) for c in StitchSpaceV2((12, 24))]
    assert (min(flops), max(flops)) == (4_608_338_304, 61_604_135_936)  # SN-Netv2: 4.61-61.60 GFLOPs
    for sampling in (SamplingConfig("ros"), SamplingConfig("ros", flops_gap_mflops=1000.0)):
        groups = sampling.build(flops).groups()
        assert [len(g) for g in groups] == [1] + [12] * 11 + [1]  # SN-Netv2's 13 groups
        assert groups[0] == (0,) and groups[-1] == (1,)  # each anchor alone: p = 1/13, not 1/134
    for bad, message in [
        (dict(kind="ros", flops_gap_mflops=0), "'flops_gap_mflops': expected a finite number of MFLOPs > 0, got 0"),
        (dict(kind="ros", flops_gap_mflops=-1.5), "got -1.5"),
        (dict(kind="uniform", flops_gap_mflops=1.0), "apply to ROS sampling only"),
        (dict(kind="grouped"), "'kind': expected one of"),
        (dict(kind="ros", weighting="square"), "'weighting': expected one of"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            SamplingConfig(**bad)


# --------------------------------------------------------------------------- resume
def test_interrupted_v2_run_resumes_to_the_same_result(finished, refs, tmp_path):
    out = tmp_path / "interrupted"

    def ctrl_c_in_second_epoch(step: int) -> None:
        if step == STEPS_PER_EPOCH + 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stitchnas.run_search(v2_config(refs), out, progress=False, on_step=ctrl_c_in_second_epoch)
    assert torch.load(out / SNNET_CHECKPOINT, weights_only=True)["epoch"] == 1
    resumed = stitchnas.run_search(v2_config(refs), out, resume=True, progress=False)
    a = pd.read_csv(finished.out_dir / "results.csv")
    b = pd.read_csv(out / "results.csv")
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))
    assert resumed.history.epochs == finished.history.epochs  # the ROS draws included
    assert [p.name for p in resumed.exports] == [p.name for p in finished.exports]
    for x, y in zip(resumed.exports, finished.exports):
        assert file_sha256(x / "model.pt") == file_sha256(y / "model.pt")
    with pytest.raises(ValueError, match=r"differing: \['sampling'\]"):
        stitchnas.run_search(v2_config(refs, sampling=SamplingConfig("uniform")), out, resume=True, progress=False)


# --------------------------------------------------------------------------- command line
def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_v2_options_are_recorded(capsys, anchor_dir, tmp_path):
    out = tmp_path / "cli"
    code, stdout, _ = run_cli(capsys, "stitch", "train", "--anchors", anchor_dir, *QUICK, "--version", "v2",
                              "--routes", "fsf,fs", "--sampler", "ros", "--flops-gap", "0.1",
                              "--ros-weighting", "linear", "--lora-rank", "2", "--no-export", "--out", out)
    assert code == 0 and "Pareto front" in stdout
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["version"] == "v2" and run_config["route_types"] == ["fs", "fsf"]
    assert run_config["sampling"] == {"kind": "ros", "flops_gap_mflops": 0.1, "weighting": "linear", "k": 1.0}
    assert run_config["lora_rank"] == 2
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 2 + 3 + 3  # anchors, FS, FSF
    # v1 stays the default, and records its own choices
    v1 = StitchSearchConfig(anchors=tuple(read_anchor_folder(anchor_dir)), data=DATA).to_json()
    assert (v1["version"], v1["route_types"], v1["sampling"]["kind"], v1["lora_rank"]) == ("v1", None, "uniform", 0)
    assert len(v1["anchors"]) == 3


@pytest.mark.parametrize(
    "case, message",
    [
        ("rank_too_large", r"low-rank stitching layer 'rank': expected an int in 1\.\.32 \(min of 32 -> 64\), got 64"),
        ("gap_zero", r"--flops-gap 0\.0: expected a FLOPs gap in MFLOPs > 0"),
        ("gap_negative", r"--flops-gap -2\.0: expected a FLOPs gap in MFLOPs > 0"),
        ("gap_with_uniform", r"--flops-gap / --ros-weighting: apply to ROS sampling only"),
        ("unknown_route_type", r"stitch search 'route_types': expected distinct values from .*got \['fs', 'ls'\]"),
        ("routes_with_v1", r"--routes 'fs': route filters are SN-Netv2's; add --version v2"),
        ("route_with_gap", r"stitch_v2 route \[\(0, 0, 0\), \(1, 2, 3\)\]: junction 1 leaves anchor 0 after block 0 "
                           r"but enters anchor 1 at block 2 \(gap\)"),
        ("route_not_from_block_0", r"stitch_v2 route \[\(1, 1, 3\)\]: does not start at block 0"),
        ("unknown_id", r"stitch config id 99: unknown, expected an int in 0\.\.13"),
        ("bad_config", r"--config 'tiny': expected a configuration id \(see results.csv\) or a route"),
    ],
)
def test_bad_v2_input_gets_one_clear_line(capsys, anchor_dir, finished, tmp_path, case, message):
    train = ["stitch", "train", "--anchors", anchor_dir, *QUICK, "--out", tmp_path / "bad"]
    export = ["stitch", "export", "--run", finished.out_dir, "--out", tmp_path / "bad"]
    argv = {
        "rank_too_large": [*train, "--version", "v2", "--lora-rank", "64"],
        "gap_zero": [*train, "--version", "v2", "--flops-gap", "0"],
        "gap_negative": [*train, "--version", "v2", "--flops-gap", "-2"],
        "gap_with_uniform": [*train, "--version", "v2", "--sampler", "uniform", "--flops-gap", "1"],
        "unknown_route_type": [*train, "--version", "v2", "--routes", "fs,ls"],
        "routes_with_v1": [*train, "--routes", "fs"],
        "route_with_gap": [*export, "--config", "a0.0-0_a1.2-3"],
        "route_not_from_block_0": [*export, "--config", "a1.1-3"],
        "unknown_id": [*export, "--config", "99"],
        "bad_config": [*export, "--config", "tiny"],
    }[case]
    code, _, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("stitchnas: error:"), err
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "bad").exists()  # nothing half-created
