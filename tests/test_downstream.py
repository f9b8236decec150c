"""Downstream stitching (issue "Real inputs"): anchors pretrained on another task (3-channel,
1,000-class, other resolution; timm format inside a training wrapper) are stitched and
fine-tuned on 1-channel 10-class data end to end: new heads, adapted stems, resized position
embeddings, recorded in the exports' provenance; the exports reload and reproduce."""

from __future__ import annotations

import json

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
