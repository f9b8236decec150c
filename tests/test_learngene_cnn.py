"""Learngene Pool with a ResNet teacher (issue 13): default students and stage matching, a
zero feature loss for a student equal to the teacher, the stitch init from the 1x1-conv
matrices (exact composed weights, least squares where none is defined), and a timm
``resnet18`` checkpoint (3 channels, 1000 classes) as the teacher of ``learngene distill`` on
digits, pooled, exported and reloaded to its recorded accuracy. Tiny students on 16x16 inputs."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from stitching.anchors import AnchorRef, create_anchor
from stitching.checkpoint import anchor_to_timm_resnet
from stitching.cnn import ResNetAnchor
from stitching.flops import anchor_flops
from stitching.learngene import (
    LearngeneDistiller,
    ResNetStudentSpec,
    StudentSpec,
    build_pool,
    default_students,
    descendant_count,
    init_stitches_from_matrices,
    parse_student,
    stage_matched_blocks,
    student_config,
)
from stitching.learngene_train import DistillConfig
from stitching.snnet import StitchedModel
from stitchnas import load_model
from stitchnas.cli import main
from stitchnas.core.evaluation import accuracy
from stitchnas.core.io import file_sha256
from stitchnas.data import load_data
from stitchnas.methods.learngene import LearngeneDistillRunConfig, load_teacher, read_distill_run

from helpers import perturb_batchnorm

TIMM_STEM = dict(in_chans=1, num_classes=10, img_size=16, stem_stride=2, stem="conv7x7_maxpool")


def _teacher(widths=(8, 16, 32, 64), stages=(2, 2, 2, 2), block="basic") -> ResNetAnchor:
    model = ResNetAnchor(widths, stages, block=block, **TIMM_STEM)
    perturb_batchnorm(model)
    return model.eval()


def _randomise(distiller: LearngeneDistiller) -> None:
    with torch.no_grad():
        for mats in distiller.matrices:
            for m in mats.maps:
                m.weight.copy_(torch.randn_like(m.weight))


def _block_stage(stages):
    return [s for s, n in enumerate(stages) for _ in range(n)]


# --------------------------------------------------------------------------- students, matching
def test_default_students_and_stage_matching():
    r18, r34 = create_anchor("resnet18").config, create_anchor("resnet34").config
    tiny, base = default_students(r18)
    assert (tiny.widths, base.widths) == ((32, 64, 128, 256), (64, 128, 256, 512))
    assert tiny.stage_depths == base.stage_depths == (2, 2, 2, 2)  # a stage keeps >= 2 blocks to stitch inside
    assert default_students(create_anchor("resnet50").config)[0].stage_depths == (2, 2, 3, 2)  # 9 blocks
    assert descendant_count([8, 8], stage_depths=[(2, 2, 2, 2)] * 2) == 12
    assert stage_matched_blocks("stages", (3, 4, 6, 3), (2, 2, 3, 2)) == ((2, 1), (6, 3), (12, 6), (15, 8))
    assert stage_matched_blocks("end", (3, 4, 6, 3), (2, 2, 3, 2)) == ((15, 8),)
    assert stage_matched_blocks(((4, 2),), (3, 4, 6, 3), (2, 2, 3, 2)) == ((4, 2),)
    across = r"matches pair 4:1: teacher block 4 is in stage 1, student block 1 in stage 0"
    with pytest.raises(ValueError, match=across):
        stage_matched_blocks(((4, 1),), (3, 4, 6, 3), (2, 2, 3, 2))
    with pytest.raises(ValueError, match=r"matches 'front_end': evenly spaced ViT blocks"):
        DistillConfig(default_students(r34)).check(r34)
    assert parse_student("tiny:8,16,32,64:2,1,1,1", r18) == ResNetStudentSpec("tiny", (8, 16, 32, 64), (2, 1, 1, 1))
    config = student_config(r18, ResNetStudentSpec("tiny", (8, 16, 32, 64), (2, 1, 1, 1)))
    assert (config["widths"], config["stage_depths"], config["stem"]) == ([8, 16, 32, 64], [2, 1, 1, 1],
                                                                         "conv7x7_maxpool")
    for spec, message in (
        (ResNetStudentSpec("w", (8, 16, 32, 1024), (2, 2, 2, 2)), r"stage 3 width 1024 is wider than the teacher's"),
        (ResNetStudentSpec("d", (8, 16, 32, 64), (2, 3, 2, 2)), r"'stage_depths': stage 1 has 3 blocks"),
        (ResNetStudentSpec("s", (8, 16, 32), (2, 2, 2)), r"'widths': 3 stages, the teacher has 4"),
        (StudentSpec("vit", 32, 2, 2), r"student 'vit': a StudentSpec does not fit a 'resnet' teacher"),
    ):
        with pytest.raises(ValueError, match=message):
            student_config(r18, spec)
    with pytest.raises(ValueError, match=r"expected NAME:WIDTHS:STAGE_DEPTHS for a ResNet teacher"):
        parse_student("tiny:32:2:6", r18)


# --------------------------------------------------------------------------- loss
def test_feature_loss_is_zero_for_a_student_equal_to_the_teacher():
    torch.manual_seed(0)
    teacher = _teacher()
    spec = ResNetStudentSpec("same", (8, 16, 32, 64), (2, 2, 2, 2))
    distiller = LearngeneDistiller(teacher.config, (spec,), matches="stages").eval()
    distiller.students[0].load_state_dict(teacher.state_dict())
    mats = distiller.matrices[0]
    assert mats.dims == ((8, 8), (16, 16), (32, 32), (64, 64)) and mats.stages == (0, 1, 2, 3)
    assert all(torch.equal(mats.weight(i), torch.eye(d)) for i, (d, _) in enumerate(mats.dims))  # identity P
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    feats = teacher.block_features(x)
    (loss,) = distiller(x, y, feats, teacher(x))
    assert loss.mse.item() == 0.0 and loss.soft.item() > 0
    # any P: the MSE is that of the 1x1 conv of the teacher's maps, summed over the stages' ends
    _randomise(distiller)
    (loss,) = distiller(x, y, feats, teacher(x))
    ours = distiller.students[0].block_features(x)
    want = sum(torch.nn.functional.mse_loss(ours[s + 1], torch.einsum("oc,nchw->nohw", mats.weight(i), feats[t + 1]))
               for i, (t, s) in enumerate(distiller.matches[0]))
    torch.testing.assert_close(loss.mse, want)


# --------------------------------------------------------------------------- stitch init
def test_matrix_init_composes_1x1_convolutions():
    torch.manual_seed(0)
    teacher = _teacher()
    specs = tuple(ResNetStudentSpec(n, w, (2, 2, 2, 2)) for n, w in
                  (("tiny", (4, 8, 16, 32)), ("small", (6, 12, 24, 48)), ("base", (8, 16, 32, 64))))
    distiller = LearngeneDistiller(teacher.config, specs, matches="stages")
    _randomise(distiller)
    tiny, small, base = (distiller.student_matrices(i) for i in range(3))
    stage = _block_stage((2, 2, 2, 2))
    for end, end_mats, composed in ((2, base, False), (1, small, True)):
        pool = build_pool([distiller.student(0), distiller.student(end)], ["tiny", specs[end].name])
        assert init_stitches_from_matrices(pool, [tiny, end_mats]) == []
        for spec in pool.space.stitching_layers():
            for j, k in spec.positions:
                s = stage[j]
                a = tiny.stage_mean(s)
                want = end_mats.stage_mean(s) @ a.T if composed else a.T  # B A^T, or A^T into teacher width
                layer = pool.stitching_layer(0, 1, spec.window, (j, k))
                assert torch.equal(layer.transform.weight, want.reshape(*want.shape, 1, 1))
                assert not layer.transform.bias.any()
                x = torch.randn(2, a.shape[0], 3, 3)
                torch.testing.assert_close(layer(x), torch.einsum("oc,nchw->nohw", want, x))


def test_matrix_init_leaves_undefined_layers_to_least_squares():
    torch.manual_seed(0)
    teacher = _teacher((4, 8, 16, 32), block="bottleneck")
    specs = (ResNetStudentSpec("tiny", (2, 4, 8, 16), (2, 2, 2, 2)), ResNetStudentSpec("base", (4, 8, 16, 32),
                                                                                        (2, 2, 2, 2)))
    distiller = LearngeneDistiller(teacher.config, specs, matches="stages")
    pool = build_pool([distiller.student(0), distiller.student(1)], ["tiny", "base"])
    before = {k: v.clone() for k, v in pool.stitch_layers.state_dict().items()}
    left = init_stitches_from_matrices(pool, [distiller.student_matrices(0), distiller.student_matrices(1)])
    # block 0 of the bottleneck base is entered at its stem width (4), which no matrix maps to
    assert sorted(pool.stitch_layers) == ["0_1_0", "0_1_0_8x16", "0_1_1", "0_1_2", "0_1_3"]
    assert left == ["0_1_0"] and pool.stitch_layers["0_1_0"].out_dim == 4
    assert torch.equal(pool.stitch_layers["0_1_0"].transform.weight, before["0_1_0.transform.weight"])
    assert torch.equal(pool.stitch_layers["0_1_0_8x16"].transform.weight[..., 0, 0],
                       distiller.student_matrices(0).stage_mean(0).T)  # (16, 8): into the teacher's width
    fitted = {k: v.clone() for k, v in pool.stitch_layers.state_dict().items()}
    pool.init_stitching_layers(torch.randn(16, 1, 16, 16), only=left)
    after = pool.stitch_layers.state_dict()
    assert all(torch.equal(after[k], fitted[k]) == (not k.startswith("0_1_0.")) for k in after)
    # rule 'end': stages 0-2 have no matched pair, so their layers are left too
    end = LearngeneDistiller(teacher.config, specs, matches="end")
    pool = build_pool([end.student(0), end.student(1)], ["tiny", "base"])
    assert init_stitches_from_matrices(pool, [end.student_matrices(0), end.student_matrices(1)]) == \
        ["0_1_0", "0_1_0_8x16", "0_1_1", "0_1_2"]


# --------------------------------------------------------------------------- timm resnet18 teacher, end to end
@pytest.fixture(scope="module")
def timm_resnet18(tmp_path_factory):
    """timm's resnet18 state dict (``conv1``, ``bn1``, ``layer1..4``, ``fc``): 3 channels, 1000 classes."""
    torch.manual_seed(0)
    model = create_anchor("resnet18")
    path = tmp_path_factory.mktemp("timm") / "resnet18.pth"
    state = anchor_to_timm_resnet(model.state_dict(), model.stage_depths)
    assert {"conv1.weight", "bn1.weight", "layer4.1.conv2.weight", "fc.weight"} <= set(state)
    assert tuple(state["conv1.weight"].shape) == (64, 3, 7, 7) and tuple(state["fc.weight"].shape) == (1000, 512)
    torch.save(state, path)
    return path, state


def test_timm_resnet18_teacher_distill_pool_export(timm_resnet18, tmp_path, capsys):
    path, state = timm_resnet18
    quick = ["--input-size", "16", "--max-train-samples", "120", "--epochs", "1", "--batch-size", "30",
             "--no-progress", "--device", "cpu"]
    students = ["--student", "tiny:4,8,16,32:2,2,2,2", "--student", "base:8,16,32,64:2,2,2,2"]
    d, p = tmp_path / "d", tmp_path / "p"
    cli = lambda *argv: main([str(a) for a in argv])  # noqa: E731
    assert cli("learngene", "distill", "--teacher", f"resnet18={path}", *students, *quick, "--out", d) == 0
    out = capsys.readouterr().out
    assert "teacher resnet18" in out and "student tiny" in out
    manifest = json.loads((d / "learngene.json").read_text())
    cfg, _, distiller = read_distill_run(d)
    assert cfg.distill.matches == "stages" and distiller.student(1).config["stem"] == "conv7x7_maxpool"
    data = load_data(cfg.data)
    teacher = load_teacher(cfg.teacher, data)
    assert torch.equal(teacher.stem.conv.weight, state["conv1.weight"].sum(1, keepdim=True))  # summed stem
    assert teacher.fc.out_features == 10 and torch.equal(load_teacher(cfg.teacher, data).fc.weight, teacher.fc.weight)
    t = manifest["teacher"]
    assert (t["flops"], t["params"]) == (anchor_flops(teacher).total, sum(q.numel() for q in teacher.parameters()))
    assert t["test_acc"] == accuracy(teacher, data.test) and 0 <= t["val_acc"] <= 100
    assert [(s["name"], s["widths"], s["matches"]) for s in manifest["students"]] == [
        ("tiny", [4, 8, 16, 32], [[1, 1], [3, 3], [5, 5], [7, 7]]),
        ("base", [8, 16, 32, 64], [[1, 1], [3, 3], [5, 5], [7, 7]])]

    assert cli("learngene", "pool", "--distill", d, "--epochs", "1", "--batch-size", "30", "--no-progress",
               "--no-export", "--device", "cpu", "--out", p) == 0
    assert "Pareto front" in capsys.readouterr().out
    results = pd.read_csv(p / "results.csv").set_index("candidate")
    assert len(results) == 12 and (results["status"] == "ok").all()
    stitched = int(results.index[results["label"].str.contains("->")][0])
    assert cli("learngene", "export", "--run", p, "--config", stitched, "--out", tmp_path / "m") == 0
    model, record = load_model(tmp_path / "m", return_record=True)
    assert isinstance(model, StitchedModel) and record["provenance"]["source"] == "learngene_pool"
    assert model.config["family"] == "resnet" and len(model.stitch_layers) == 1
    assert accuracy(model, data.search_val) == record["metrics"]["val_acc"] == results.loc[stitched, "val_acc"]
    assert accuracy(model, data.test) == record["metrics"]["test_acc"]


def test_resnet_students_round_trip_in_the_run_config(timm_resnet18):
    path, _ = timm_resnet18
    config = create_anchor("resnet18", img_size=16, in_chans=1, num_classes=10).config
    run = LearngeneDistillRunConfig(AnchorRef("resnet18", config, str(path), file_sha256(path)),
                                    DistillConfig(default_students(config), matches="stages"))
    data = run.to_json()
    assert data["distill"]["students"][0] == {"name": "tiny", "widths": [32, 64, 128, 256],
                                              "stage_depths": [2, 2, 2, 2]}
    assert LearngeneDistillRunConfig.from_json(data) == run
    data["distill"]["students"][0] = {"name": "tiny", "widths": [32, 64, 128, 256]}
    with pytest.raises(ValueError, match=r"^f\.json: missing field 'distill\.students\[0\]\.stage_depths'$"):
        LearngeneDistillRunConfig.from_json(data, "f.json")


def test_unsupported_teacher_kinds_are_refused_in_one_line(timm_resnet18, tmp_path, capsys):
    path, _ = timm_resnet18
    ref = AnchorRef("levit", {"family": "levit", "embed_dim": 64}, str(path), file_sha256(path))
    spec = ResNetStudentSpec("tiny", (4, 8, 16, 32), (2, 2, 2, 2))
    with pytest.raises(ValueError, match=rf"^learngene teacher {path}: kind 'levit' is not supported, expected one "
                                         r"of \['resnet', 'vit'\]"):
        LearngeneDistillRunConfig(ref, DistillConfig((spec,), matches="stages"))
    folder = tmp_path / "anchors"
    folder.mkdir()
    (folder / "anchors.json").write_text(json.dumps({"format": "stitchnas.anchors", "format_version": 1, "anchors": [
        {"name": "a", "config": {"family": "levit"}, "file": str(path)},
        {"name": "b", "config": {"family": "levit"}, "file": str(path)}]}))
    quick = ["--input-size", "16", "--max-train-samples", "120", "--epochs", "1", "--no-progress"]
    for extra in ([], ["--teacher", "b"]):
        argv = ["learngene", "distill", "--anchors", str(folder), *extra, *quick, "--out", str(tmp_path / "o")]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{path}: kind 'levit' is not supported" in err and err.count("\n") == 1, err
    assert main(["learngene", "distill", "--teacher", f"resnet18={path}", "--matches", "front_end", *quick,
                 "--out", str(tmp_path / "o")]) == 2
    assert "matches 'front_end': evenly spaced ViT blocks" in capsys.readouterr().err
