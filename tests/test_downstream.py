"""Downstream stitching (issue "Real inputs"): anchors pretrained on another task (3-channel,
1,000-class, other resolution; timm format inside a training wrapper) are stitched and
fine-tuned on 1-channel 10-class data end to end: new heads, adapted stems, resized position
embeddings, recorded in the exports' provenance; the exports reload and reproduce."""

from __future__ import annotations

import json

import pytest
import torch

import stitchnas
from stitching.vit import create_vit
from stitchnas.cli import main
from stitchnas.core.evaluation import accuracy
from stitchnas.methods import method_from_run


def pretrained_file(tmp_path, preset: str, seed: int):
    """A timm-format checkpoint as a DDP training script saves it: {"state_dict": {"module.*": ...}}."""
    torch.manual_seed(seed)
    model = create_vit(preset, img_size=16, in_chans=3, num_classes=1000)
    path = tmp_path / f"{preset}.pth"
    torch.save({"epoch": 300, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def test_imagenet_style_anchors_fine_tune_on_grey_ten_class_data(tmp_path, capsys):
    tiny, base = pretrained_file(tmp_path, "vit_digits_tiny", 0), pretrained_file(tmp_path, "vit_digits_base", 1)
    out = tmp_path / "run"
    code = main(["stitch", "train", "--anchor", f"vit_digits_tiny={tiny}", "--anchor", f"vit_digits_base={base}",
                 "--input-size", "8", "--max-train-samples", "240", "--epochs", "1", "--batch-size", "32",
                 "--init-samples", "40", "--no-progress", "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0 and "Pareto front" in stdout
    run_config = json.loads((out / "run_config.json").read_text())
    for anchor in run_config["anchors"]:
        assert (anchor["config"]["in_chans"], anchor["config"]["num_classes"], anchor["config"]["img_size"]) == (1, 10, 8)
    exports = sorted((out / "exports").iterdir())
    assert exports
    data = method_from_run(out).load_data()
    for folder in exports:
        model, record = stitchnas.load_model(folder, return_record=True)
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
        assert accuracy(model, data.test) == record["metrics"]["test_acc"]
        adapted = record["provenance"]["anchor_adaptations"]
        assert any("vit_digits_tiny" in line and "1000" in line and "10" in line for line in adapted), adapted
        assert any("vit_digits_base" in line and "3" in line and "1" in line for line in adapted), adapted
    # the adapted stem is the pretrained RGB filters summed (timm's adapt_input_conv for 3 -> 1)
    net = method_from_run(out).build(data)
    pretrained = torch.load(tiny, weights_only=True)["state_dict"]["module.patch_embed.proj.weight"]
    first = net.anchor(0) if hasattr(net, "anchor") else net.anchors[0]
    torch.testing.assert_close(first.patch_embed.proj.weight, pretrained.sum(dim=1, keepdim=True))


def test_fine_tuning_deit_checkpoints_normalises_with_their_mean_and_std(tmp_path):
    from stitching.checkpoint import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from stitchnas.cli.stitch import checkpoint_normalisation
    from stitchnas.data import DataSpec, load_data

    spec = DataSpec("digits", input_size=8)
    tuned = checkpoint_normalisation(spec, ["deit_tiny_patch16_224", "deit_small_patch16_224"])
    assert (tuned.mean, tuned.std) == (tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD))
    assert checkpoint_normalisation(spec, ["vit_digits_tiny", "vit_digits_base"]) == spec  # the data's own
    raw, norm = load_data(spec), load_data(tuned)
    mean, std = sum(IMAGENET_DEFAULT_MEAN) / 3, sum(IMAGENET_DEFAULT_STD) / 3  # grey data: averaged
    assert norm.mean == (mean,) and norm.std == (std,)
    pixels = raw.test.tensors[0] * raw.std[0] + raw.mean[0]  # back to [0, 1]
    torch.testing.assert_close(norm.test.tensors[0], (pixels - mean) / std, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- issue 13: SN-Netv2's downstream setting
def _snnet_of(tmp_path, num_classes: int, reset_head: bool = False):
    from types import SimpleNamespace

    from stitching.anchors import anchor_refs_from_files
    from stitchnas.methods.snnet import StitchSearchConfig, build_snnet

    files = []
    for seed, preset in enumerate(("vit_digits_tiny", "vit_digits_small")):
        torch.manual_seed(seed)
        model = create_vit(preset, img_size=8, in_chans=1, num_classes=num_classes, depth=2)
        files.append((preset, str(tmp_path / f"{preset}_{num_classes}.pth")))
        torch.save({"state_dict": model.state_dict()}, files[-1][1])
    refs = anchor_refs_from_files(files, input_size=8, in_chans=1, num_classes=10)
    cfg = StitchSearchConfig(anchors=tuple(refs), reset_head=reset_head)
    data = SimpleNamespace(name="digits", in_chans=1, input_size=8, num_classes=10)
    return build_snnet(cfg, data), files, cfg  # type: ignore[arg-type]


def test_fresh_heads_train_at_the_stitching_layers_rate_pretrained_weights_at_the_anchors(tmp_path):
    from stitching.trainer import StitchTrainConfig, param_groups

    train = StitchTrainConfig(lr=1e-3, anchor_lr_scale=0.1)
    snnet, _, _ = _snnet_of(tmp_path, num_classes=5)  # 5-class checkpoints, 10-class data: heads replaced
    assert snnet.new_heads == (True, True)
    groups = {g["name"]: g for g in param_groups(snnet, train)}
    assert list(groups) == ["anchors", "stitch_layers", "new_heads"]
    assert groups["new_heads"]["lr"] == groups["stitch_layers"]["lr"] == 1e-3
    assert groups["new_heads"]["lr_scale"] == groups["stitch_layers"]["lr_scale"] == 1.0
    heads = {id(p) for a in snnet.anchors for p in a.head.parameters()}
    assert {id(p) for p in groups["new_heads"]["params"]} == heads
    anchor_ids = {id(p) for p in groups["anchors"]["params"]}
    assert not anchor_ids & heads and groups["anchors"]["lr"] == pytest.approx(1e-4)
    assert {id(p) for p in snnet.anchors[0].blocks.parameters()} <= anchor_ids
    # no head replaced: the two groups of every earlier run, unchanged (old checkpoints resume)
    kept, _, _ = _snnet_of(tmp_path, num_classes=10)
    assert kept.new_heads == (False, False)
    groups = param_groups(kept, train)
    assert [g["name"] for g in groups] == ["anchors", "stitch_layers"]
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in kept.anchors.parameters()]


def test_reset_head_gives_a_fresh_head_of_the_same_class_count_recorded_and_fixed_on_resume(tmp_path, capsys):
    snnet, files, cfg = _snnet_of(tmp_path, num_classes=10, reset_head=True)
    assert snnet.new_heads == (True, True)
    saved = torch.load(files[0][1], weights_only=True)["state_dict"]["head.weight"]
    assert saved.shape == snnet.anchors[0].head.weight.shape
    assert not torch.equal(saved, snnet.anchors[0].head.weight)
    assert cfg.to_json()["reset_head"] is True
    out = tmp_path / "run"
    args = ["stitch", "train", *(a for preset, path in files for a in ("--anchor", f"{preset}={path}")),
            "--input-size", "8", "--max-train-samples", "60", "--epochs", "0", "--init-samples", "20",
            "--no-progress", "--out", str(out)]
    assert main([*args, "--reset-head"]) == 0
    assert json.loads((out / "run_config.json").read_text())["reset_head"] is True
    record = json.loads(next((out / "exports").glob("*/model.json")).read_text())
    assert any("--reset-head" in line for line in record["provenance"]["anchor_adaptations"])
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "reset_head" in err and len(err.splitlines()) == 1, err


def test_anchors_trained_with_another_depth_load_by_preset_and_record_it(tmp_path, capsys):
    anchors, run = tmp_path / "anchors", tmp_path / "stitch"
    assert main(["anchors", "train", "--depth", "2", "--input-size", "8", "--epochs", "1",
                 "--max-train-samples", "60", "--no-progress", "--out", str(anchors)]) == 0
    files = [f"vit_digits_{size}={anchors / f'vit_digits_{size}.pth'}" for size in ("tiny", "small")]
    args = ["stitch", "train", "--anchor", files[0], "--anchor", files[1], "--input-size", "8", "--epochs", "0",
            "--max-train-samples", "60", "--init-samples", "20", "--no-progress"]
    assert main([*args, "--out", str(run)]) == 0
    assert [a["config"]["depth"] for a in json.loads((run / "run_config.json").read_text())["anchors"]] == [2, 2]
    # block indices with a gap: refused in one line naming the file
    state = torch.load(anchors / "vit_digits_tiny.pth", weights_only=True)
    state = {k.replace("blocks.1.", "blocks.3."): v for k, v in state.items()}
    torch.save(state, tmp_path / "gap.pth")
    capsys.readouterr()
    code = main(["stitch", "train", "--anchor", f"vit_digits_tiny={tmp_path / 'gap.pth'}", *args[4:],
                 "--out", str(tmp_path / "gap")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "gap.pth" in err and "not contiguous" in err and len(err.splitlines()) == 1, err
