"""The SN-Net commands: ``anchors train``, ``stitch train|evaluate|export``, and one clear
line for each kind of bad input."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch

from stitching.anchors import create_anchor
from stitchnas.cli import main

QUICK = ["--input-size", "8", "--max-train-samples", "200", "--epochs", "1", "--no-progress", "--device", "cpu"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("stitch_cli")


@pytest.fixture(scope="module")
def anchors(workdir):
    out = workdir / "anchors"
    assert main(["anchors", "train", "--depth", "2", *QUICK, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def run(anchors, workdir):
    out = workdir / "run"
    assert main(["stitch", "train", "--anchors", str(anchors), *QUICK, "--init-samples", "30", "--out", str(out)]) == 0
    return out


def test_anchors_train_prints_the_family_and_resumes(capsys, anchors):
    manifest = json.loads((anchors / "anchors.json").read_text())
    assert [a["config"]["embed_dim"] for a in manifest["anchors"]] == [32, 48, 64]
    assert all((anchors / a["file"]).exists() for a in manifest["anchors"])
    code, out, _ = run_cli(capsys, "anchors", "train", "--depth", "2", *QUICK, "--out", anchors, "--resume")
    assert code == 0 and out.count("vit_digits_") == 3 and "anchors.json" in out
    code, _, err = run_cli(capsys, "anchors", "train", "--depth", "2", *QUICK, "--out", anchors)
    assert code == 2 and "pass --resume" in err


def test_stitch_train_evaluate_export(capsys, run, tmp_path):
    results = pd.read_csv(run / "results.csv")
    assert len(results) == 3 + 2 * 4 and (results["status"] == "ok").all()  # depth 2: 4 positions per pair
    code, out, _ = run_cli(capsys, "stitch", "evaluate", "--run", run, "--no-progress")
    assert code == 0 and "Pareto front" in out and "hypervolume" in out
    again = pd.read_csv(run / "evaluate" / "checkpoint" / "results.csv")
    pd.testing.assert_series_equal(again["val_acc"], results["val_acc"])
    code, out, _ = run_cli(capsys, "stitch", "evaluate", "--run", run, "--no-train", "--no-progress")
    assert code == 0 and (run / "evaluate" / "init" / "pareto.png").exists()
    code, out, _ = run_cli(capsys, "stitch", "export", "--run", run, "--config", "4", "--out", tmp_path / "m")
    assert code == 0 and "vit_digits_tiny[0-0] -> vit_digits_small[1-1]" in out
    record = json.loads((tmp_path / "m" / "model.json").read_text())
    assert record["kind"] == "stitch" and record["model"]["config_id"] == 4
    code, out, _ = run_cli(capsys, "evaluate", tmp_path / "m")  # the generic command loads it too
    report = json.loads(out)
    assert code == 0 and report["measured"]["test_acc"] == report["recorded"]["test_acc"]


@pytest.fixture(scope="module")
def checkpoints(workdir):
    """Standalone timm-format state dicts of presets at 8x8 input."""
    files = {}
    for preset in ("vit_digits_tiny", "vit_digits_small", "resnet_digits_tiny"):
        torch.manual_seed(0)
        files[preset] = workdir / f"{preset}.pth"
        torch.save(create_anchor(preset, img_size=8).state_dict(), files[preset])
    return files


def _manifest_with_patch_sizes(workdir, checkpoints) -> str:
    folder = workdir / "mixed_patches"
    folder.mkdir(exist_ok=True)
    entries = []
    for preset, patch in (("vit_digits_tiny", 4), ("vit_digits_small", 2)):
        model = create_anchor(preset, img_size=8, depth=2, patch_size=patch)
        torch.save(model.state_dict(), folder / f"{preset}.pth")
        entries.append({"name": preset, "config": model.config, "file": f"{preset}.pth"})
    manifest = {"format": "stitchnas.anchors", "format_version": 1, "anchors": entries}
    (folder / "anchors.json").write_text(json.dumps(manifest))
    return str(folder)


@pytest.mark.parametrize(
    "case, message",
    [
        ("families", r"anchor 1 \(.*\): family '(resnet|vit)' does not match anchor 0 \(.*\)'s '(vit|resnet)'"),
        ("patch_sizes", r"anchor 1 \(vit_digits_small\): patch_size 2 does not match anchor 0 \(vit_digits_tiny\)'s 4"),
        ("missing_checkpoint", r"checkpoint .*/nonexistent/tiny.pth: file not found"),
        ("mismatched_checkpoint", r"checkpoint .*vit_digits_small.pth: key 'cls_token' has shape \(1, 1, 48\), "
                                  r"model expects \(1, 1, 32\)"),
        ("data_size", r"anchor 0 \(vit_digits_tiny\): expects 1x8x8 inputs and 10 classes, data 'digits' has 1x16x16"),
        ("no_anchors", r"give either --anchors FOLDER or --anchor PRESET=PATH"),
        ("no_manifest", r"anchors manifest .*/nonexistent/anchors.json: file not found"),
        ("bad_anchor_syntax", r"--anchor 'vit_digits_tiny': expected PRESET=PATH"),
        ("unknown_preset", r"anchor preset 'vit_huge': unknown"),
        ("unknown_config", r"stitch config id 99: unknown, expected an int in 0\.\.10"),
        ("bad_config", r"--config 'first': expected a configuration id"),
    ],
)
def test_bad_input_gets_one_clear_line(capsys, workdir, checkpoints, run, case, message):
    train = ["stitch", "train", *QUICK, "--out", workdir / f"bad_{case}"]
    vit_tiny, vit_small = checkpoints["vit_digits_tiny"], checkpoints["vit_digits_small"]
    argv = {
        "families": [*train, "--anchor", f"vit_digits_tiny={vit_tiny}",
                     "--anchor", f"resnet_digits_tiny={checkpoints['resnet_digits_tiny']}"],
        "patch_sizes": [*train, "--anchors", _manifest_with_patch_sizes(workdir, checkpoints)],
        "missing_checkpoint": [*train, "--anchor", "vit_digits_tiny=/nonexistent/tiny.pth",
                               "--anchor", f"vit_digits_small={vit_small}"],
        "mismatched_checkpoint": [*train, "--anchor", f"vit_digits_tiny={vit_small}",
                                  "--anchor", f"vit_digits_small={vit_small}"],
        "data_size": ["stitch", "train", "--anchors", workdir / "anchors", "--no-progress", "--out",
                      workdir / f"bad_{case}"],
        "no_anchors": train,
        "no_manifest": [*train, "--anchors", "/nonexistent"],
        "bad_anchor_syntax": [*train, "--anchor", "vit_digits_tiny", "--anchor", f"vit_digits_small={vit_small}"],
        "unknown_preset": [*train, "--anchor", f"vit_huge={vit_tiny}", "--anchor", f"vit_digits_small={vit_small}"],
        "unknown_config": ["stitch", "export", "--run", run, "--config", "99", "--out", workdir / "bad_export"],
        "bad_config": ["stitch", "export", "--run", run, "--config", "first", "--out", workdir / "bad_export"],
    }[case]
    code, _, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("stitchnas: error:"), err
    assert re.search(message, lines[0]), lines[0]
    assert not (workdir / f"bad_{case}").exists()  # nothing half-created
