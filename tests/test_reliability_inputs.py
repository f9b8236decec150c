"""Bad input files and options fail with one line naming the file (or option), the line or key,
and what was expected; never a traceback, never a silently wrong result. One test per kind of
bad input, each at the function every caller goes through (the CLI's fuzz table,
``scripts/fuzz_cli.py``, runs the same cases end to end)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from searchspace.pooling import PoolingSpace
from stitching.anchors import MANIFEST_FILE, AnchorRef, create_anchor, read_anchor_folder
from stitching.checkpoint import load_checkpoint
from stitching.learngene import StudentSpec
from stitching.learngene_train import DistillConfig
from stitching.trainer import StitchTrainConfig
from stitchnas.cli import main
from stitchnas.core.io import file_sha256
from stitchnas.data import DataSpec
from stitchnas.studies.truth import TRUTH_COLUMNS, TruthConfig, load_truth, read_truth_rows, seed_noise
from supernet.training import TrainConfig

SPACE = PoolingSpace(name="small", widths=(4, 4, 8, 8, 8), num_downsamples=2)  # 6 configurations
DATA = DataSpec(name="digits", input_size=8, seed=1, max_train_samples=240)
HEADER = ",".join(TRUTH_COLUMNS)


def truth_folder(folder: Path, rows: str = "0:0,0,[1],0,10,50.0,60.0,1.0\n1:0,1,[2],0,20,55.0,61.0,1.0\n",
                 header: str = HEADER, run_config: object = None) -> Path:
    """A hand-made ``stitchnas truth`` folder: ``run_config.json`` and ``truth.csv``."""
    folder.mkdir(parents=True, exist_ok=True)
    if run_config is None:
        run_config = TruthConfig(SPACE, DATA, TrainConfig(epochs=1), seeds=(0,)).to_json()
    (folder / "run_config.json").write_text(json.dumps(run_config))
    (folder / "truth.csv").write_text(f"{header}\n{rows}")
    return folder


# --------------------------------------------------------------------------- ground truth: run config
def test_truth_reads_a_good_folder(tmp_path):
    folder = truth_folder(tmp_path / "t")
    assert load_truth(folder, SPACE, complete=False) == {"0": 50.0, "1": 55.0}
    assert seed_noise(folder)["configs"] == 2


@pytest.mark.parametrize("edit, message", [
    (lambda d: [], r"expected a JSON object, got list"),
    (lambda d: {k: v for k, v in d.items() if k != "space"}, r"missing field 'space'"),
    (lambda d: {**d, "space": 5}, r"field 'space'"),
    (lambda d: {**d, "kind": "pooling_search"}, r"field 'kind': expected 'pooling_truth'"),
])
def test_truth_run_config_of_wrong_type_or_fields_is_one_line(tmp_path, edit, message):
    good = TruthConfig(SPACE, DATA, TrainConfig(epochs=1), seeds=(0,)).to_json()
    folder = truth_folder(tmp_path / "t", run_config=edit(good))
    for read in (lambda: load_truth(folder, SPACE, complete=False), lambda: read_truth_rows(folder)):
        with pytest.raises(ValueError, match=rf"^ground-truth run config {folder}/run_config.json: .*{message}"):
            read()


# --------------------------------------------------------------------------- ground truth: truth.csv
@pytest.mark.parametrize("header, rows, message", [
    ("key,candidate,label,seed,flops", "0:0,0,x,0,1\n",
     r"line 1 \(the header\): no column 'test_acc'"),
    (HEADER, "0:0,0,x,0,1,high,1,1\n1:0,1,x,0,1,low,1,1\n",
     r"line 2, column 'test_acc': expected a number, got 'high'"),
    (HEADER, "0:0,0,x,0,1,50,1,1\n1:0,one,x,0,1,50,1,1\n",
     r"line 3, column 'candidate': expected an integer, got 'one'"),
    (HEADER, "0:0,0,x,0,1,50,1\n", r"line 2 has 7 cells, expected 8"),
    ("", "", r"line 1 \(the header\): no column 'key'"),
])
def test_truth_csv_without_a_column_or_with_text_numbers_is_one_line(tmp_path, header, rows, message):
    folder = truth_folder(tmp_path / "t", rows=rows, header=header)
    with pytest.raises(ValueError, match=rf"^ground truth {folder}/truth.csv: {message}"):
        load_truth(folder, SPACE, complete=False)


def test_truth_csv_keeps_types_and_optional_cells(tmp_path):
    folder = truth_folder(tmp_path / "t", rows="0:0,0,[1],0,10,nan,,\n0:1,0,[1],1,10,40,1,1\n")
    rows = read_truth_rows(folder)
    assert rows["candidate"].tolist() == [0, 0] and rows["seed"].tolist() == [0, 1]
    assert math.isnan(rows["train_acc"][0]) and load_truth(folder) == {"0": 40.0}  # the mean skips a NaN


# --------------------------------------------------------------------------- anchors
def _anchor_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    entries = []
    for i, preset in enumerate(("vit_digits_tiny", "vit_digits_small")):
        torch.manual_seed(i)
        model = create_anchor(preset, img_size=8, depth=1)
        torch.save(model.state_dict(), folder / f"{preset}.pth")
        entries.append({"name": preset, "config": model.config, "file": f"{preset}.pth",
                        "sha256": file_sha256(folder / f"{preset}.pth")})
    (folder / MANIFEST_FILE).write_text(json.dumps({"format": "stitchnas.anchors", "format_version": 1,
                                                    "anchors": entries}))
    return folder


def test_anchor_file_changed_since_the_manifest_is_refused(tmp_path):
    folder = _anchor_folder(tmp_path / "a")
    assert [r.sha256 for r in read_anchor_folder(folder)] == [
        file_sha256(folder / "vit_digits_tiny.pth"), file_sha256(folder / "vit_digits_small.pth")]
    path = folder / "vit_digits_tiny.pth"
    state = torch.load(path, weights_only=True)
    torch.save({k: v.clone().zero_() if v.is_floating_point() else v for k, v in state.items()}, path)
    with pytest.raises(ValueError, match=rf"^anchor vit_digits_tiny file {path}: changed since it was trained "
                                         r"\(SHA-256 differs from anchors.json\)$"):
        read_anchor_folder(folder)
    # A hand-written manifest without SHA-256s has nothing to check against.
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    for entry in manifest["anchors"]:
        entry.pop("sha256")
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert len(read_anchor_folder(folder)) == 2


def test_anchor_resume_retrains_an_anchor_whose_file_changed(tmp_path, monkeypatch):
    from stitchnas.methods import anchors as anchors_module

    trained: list[str] = []
    monkeypatch.setattr(anchors_module, "train_network", lambda model, *a, desc="", **k: trained.append(desc))
    cfg = anchors_module.AnchorTrainConfig("vit_digits", DATA, StitchTrainConfig(epochs=1, batch_size=32),
                                           {"depth": 1})
    out = tmp_path / "anchors"
    anchors_module.train_anchors(cfg, out, progress=False)
    assert len(trained) == 3
    path = out / "vit_digits_small.pth"
    recorded = file_sha256(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    trained.clear()
    refs = anchors_module.train_anchors(cfg, out, resume=True, progress=False)
    assert trained == ["anchor vit_digits_small"]  # only the changed one, retrained ...
    assert file_sha256(path) == recorded == refs[1].sha256  # ... to exactly the recorded anchor
    assert (out / "vit_digits_small.pth.changed").read_bytes() == data[: len(data) // 2]  # nothing lost
    trained.clear()
    anchors_module.train_anchors(cfg, out, resume=True, progress=False)
    assert trained == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_checkpoint_with_non_finite_weights_is_refused_on_load(tmp_path, bad):
    torch.manual_seed(0)
    model = create_anchor("vit_digits_tiny", img_size=8, depth=1)
    state = model.state_dict()
    key = "blocks.0.attn.qkv.weight"
    state[key] = state[key].clone()
    state[key][0, :3] = bad
    path = tmp_path / "anchor.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=rf"^checkpoint {path}: key '{key}' holds 3 non-finite value\(s\)"):
        load_checkpoint(create_anchor("vit_digits_tiny", img_size=8, depth=1), path)
    # Every anchor load goes through it (stitch train, learngene teachers, exports).
    from stitching.anchors import load_anchors

    with pytest.raises(ValueError, match="non-finite"):
        load_anchors([AnchorRef("a", dict(model.config), str(path))])


# --------------------------------------------------------------------------- learngene manifest
def test_learngene_manifest_is_checked_when_a_distillation_resumes(tmp_path):
    from stitchnas.methods.learngene import (
        LEARNGENE_MANIFEST,
        LEARNGENE_WEIGHTS,
        LearngeneDistillRunConfig,
        read_learngene_manifest,
        run_distill,
    )

    torch.manual_seed(0)
    teacher = create_anchor("vit_digits_base", img_size=8, depth=4)
    teacher_path = tmp_path / "teacher.pth"
    torch.save(teacher.state_dict(), teacher_path)
    students = (StudentSpec("tiny", 32, 2, 2), StudentSpec("base", 64, 4, 2))
    cfg = LearngeneDistillRunConfig(
        AnchorRef("teacher", teacher.config, str(teacher_path), file_sha256(teacher_path)),
        DistillConfig(students, matches=((1, 0), (3, 1)), train=StitchTrainConfig(epochs=1, batch_size=32)), DATA)
    out = tmp_path / "d"
    out.mkdir()
    (out / LEARNGENE_WEIGHTS).write_bytes(b"weights")
    manifest = out / LEARNGENE_MANIFEST
    for content, message in [
        ([], r"'format' must be 'stitchnas.learngene', got \[\]"),
        ({"format": "stitchnas.learngene", "format_version": 1, "sha256": 5}, r"field 'sha256': expected"),
    ]:
        manifest.write_text(json.dumps(content))
        with pytest.raises(ValueError, match=rf"^learngene manifest {manifest}: {message}"):
            run_distill(cfg, out, resume=True, progress=False)
        with pytest.raises(ValueError, match=rf"^learngene manifest {manifest}: {message}"):
            read_learngene_manifest(manifest)


# --------------------------------------------------------------------------- options
@pytest.mark.parametrize("argv, message", [
    (["rank", "--run", "r", "--truth", "t", "--top-k", "a"], r"argument --top-k: expected comma-separated .*'a'"),
    (["rank", "--run", "r", "--truth", "t", "--top-k", "1,,3"], r"argument --top-k: expected comma-separated"),
    (["rank", "--run", "r", "--truth", "t", "--top-k", "0"], r"argument --top-k: .*integers >= 1.*got 0"),
    (["truth", "pooling", "--seeds", "a,b"], r"argument --seeds: expected comma-separated .*'a'"),
    (["truth", "pooling", "--seeds", ""], r"argument --seeds: expected comma-separated"),
    (["truth", "pooling", "--seeds", "1,1"], r"argument --seeds: .*got 1 twice"),
    (["truth", "pooling", "--configs", "4,3,3;;1,1,8"], r"argument --configs: expected ';'-separated"),
])
def test_list_options_name_the_option_when_they_do_not_parse(capsys, tmp_path, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        # Tiny settings: without the fix a truth command would train (and not exit 2).
        tiny = ["--epochs", "1", "--configs", "0", "--seeds", "0"] if argv[0] == "truth" else []
        main([*argv[:2], *tiny, *argv[2:], "--out", str(tmp_path / "out")] if argv[0] == "truth" else argv)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and "invalid literal" not in last
    assert re.search(message, last), last
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("configs, message", [
    ("4,3,3;9,9,9", r"--configs '9,9,9': notation: expected"),
    ("x", r"--configs 'x': configuration 'x': expected an index"),
    ("0;0", r"--configs: configuration '0' given twice"),
])
def test_configs_that_are_not_in_the_space_name_the_option(capsys, tmp_path, configs, message):
    code = main(["truth", "pooling", "--dataset", "digits", "--epochs", "1", "--configs", configs,
                 "--out", str(tmp_path / "out")])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("stitchnas: error: ")
    assert re.search(message, last), last
    assert not (tmp_path / "out").exists()
