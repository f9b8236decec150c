"""Learngene Pool: the distillation loss by hand, descendant counts, the stitch init from the
transformation matrices (exact weights), the two-stage pipeline with exports that rebuild
exactly, resume, the CLI and one clear line per kind of bad input. Tiny models: a depth-4
teacher on 8x8 digits and 2-block students (6 descendants)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from stitching.anchors import AnchorRef
from stitching.flops import anchor_flops, flops_table
from stitching.learngene import (
    LearngeneDistiller, StudentSpec, build_pool, default_students, descendant_count, init_stitches_from_matrices,
    learngene_loss, make_student, matched_blocks, parse_matches,
)
from stitching.learngene_train import DistillConfig, build_distiller, distill_students, teacher_outputs
from stitching.snnet import StitchedModel
from stitching.trainer import StitchTrainConfig
from stitching.vit import create_vit
import stitchnas
from stitchnas import load_model
from stitchnas.cli import main
from stitchnas.data import DataSpec, load_data
from stitchnas.search.front import RESULT_COLUMNS
from stitchnas.core.io import file_sha256
from stitchnas.methods.learngene import (
    LEARNGENE_MANIFEST, LEARNGENE_WEIGHTS, POOL_CHECKPOINT, LearngeneDistillRunConfig, LearngenePoolConfig,
    read_distill_run, run_distill,
)
from stitchnas.methods import method_from_run
from stitchnas.core.evaluation import accuracy

DATA = DataSpec(name="digits", input_size=8, seed=1, max_train_samples=240)  # search_train 120 -> 3 steps/epoch
STUDENTS = (StudentSpec("tiny", 32, 2, 2), StudentSpec("base", 64, 4, 2))
DISTILL = DistillConfig(STUDENTS, matches=((1, 0), (3, 1)), train=StitchTrainConfig(epochs=1, batch_size=32, seed=1))
FINETUNE = StitchTrainConfig(epochs=1, batch_size=32, lr=1e-3, anchor_lr_scale=1.0, distill_weight=0.5, seed=1)
NUM_DESCENDANTS = 6  # two 2-block students: 2 + 3 * 2 - 2 positions


@pytest.fixture(scope="module")
def data():
    return load_data(DATA)


@pytest.fixture(scope="module")
def teacher_ref(tmp_path_factory):
    torch.manual_seed(0)
    teacher = create_vit("vit_digits_base", depth=4, img_size=8)  # untrained: the tests check plumbing
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.save(teacher.state_dict(), path)
    return AnchorRef("teacher", teacher.config, str(path), file_sha256(path))


@pytest.fixture(scope="module")
def distilled(teacher_ref, tmp_path_factory):
    return run_distill(LearngeneDistillRunConfig(teacher_ref, DISTILL, DATA), tmp_path_factory.mktemp("lg") / "d",
                       progress=False)


def pool_config(distilled, **changes) -> LearngenePoolConfig:
    return LearngenePoolConfig(**{**dict(distill_run=str(distilled.out_dir), finetune=FINETUNE, init_samples=40),
                                  **changes})


@pytest.fixture(scope="module")
def pooled(distilled, tmp_path_factory):
    return stitchnas.run_search(pool_config(distilled), tmp_path_factory.mktemp("lg") / "p", progress=False)


# --------------------------------------------------------------------------- loss
def _softmax(row: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def test_loss_equals_hand_computation():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 2.0]])
    teacher = torch.tensor([[2.0, 1.0, 0.0], [0.5, 0.5, 1.5]])
    labels = torch.tensor([1, 2])
    student_feats = [torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[3.0, 0.0, 1.0]]])]
    teacher_feats = [torch.tensor([[[0.0, 1.0]]]), torch.tensor([[[1.0, 0.0, 0.0]]])]
    parts = learngene_loss(logits, teacher, labels, student_feats, teacher_feats, alpha=0.1, temperature=2.0)
    rows, trows = logits.tolist(), teacher.tolist()
    ce = -(math.log(_softmax(rows[0], 1)[1]) + math.log(_softmax(rows[1], 1)[2])) / 2
    soft = -sum(sum(p * math.log(q) for p, q in zip(_softmax(t, 2), _softmax(s, 2))) for s, t in zip(rows, trows)) / 2
    mse = (1 + 1) / 2 + (4 + 0 + 1) / 3
    assert parts.ce.item() == pytest.approx(ce, abs=1e-6)
    assert parts.soft.item() == pytest.approx(soft, abs=1e-6)
    assert parts.mse.item() == pytest.approx(mse, abs=1e-6)
    assert parts.total.item() == pytest.approx(0.1 * ce + 0.9 * (soft + mse), abs=1e-6)
    # worked by hand: CE 0.31711, soft 1.13718, MSE 2.66667 -> 0.031711 + 0.9 * 3.80385
    assert parts.total.item() == pytest.approx(3.45518, abs=2e-5)


def test_distiller_matches_blocks_through_its_matrices():
    torch.manual_seed(0)
    teacher = create_vit("vit_digits_base", depth=4, img_size=8).eval()
    distiller = LearngeneDistiller(teacher.config, STUDENTS[:1], matches=((1, 0), (3, 1)), alpha=0.3, temperature=2.0)
    x, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 2])
    feats, t_logits = teacher_outputs(teacher, x)
    (got,) = distiller(x, y, feats, t_logits)
    student, mats = distiller.students[0], distiller.matrices[0]
    s_feats = student.block_features(x)
    want = learngene_loss(student(x), teacher(x), y, [s_feats[1], s_feats[2]],
                          [feats[2] @ mats.maps[0].weight.T, feats[4] @ mats.maps[1].weight.T], 0.3, 2.0)
    torch.testing.assert_close(got.total, want.total)


def test_frozen_matrices_stay_at_their_init(data):
    torch.manual_seed(0)
    teacher = create_vit("vit_digits_base", depth=4, img_size=8).eval()
    cfg = DistillConfig(STUDENTS, matches=((1, 0), (3, 1)), train_matrices=False,
                        train=StitchTrainConfig(epochs=1, batch_size=32, seed=1))
    distiller = build_distiller(teacher.config, cfg)
    before = {k: v.clone() for k, v in distiller.state_dict().items()}
    history = distill_students(distiller, teacher, data.search_train, cfg, progress=False)
    after = distiller.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("matrices."))
    assert torch.equal(after["matrices.1.maps.0.weight"], torch.eye(64))  # base as wide as the teacher: identity
    assert not torch.equal(before["students.0.head.weight"], after["students.0.head.weight"])
    assert len(history.epochs) == 1 and history.epochs[0]["mse"] > 0


def test_matched_blocks_rules():
    assert matched_blocks("front_end", 12, 9) == ((3, 2), (7, 5), (11, 8))  # the official 9-block pairs
    assert matched_blocks("front_end", 12, 6) == ((3, 1), (7, 3), (11, 5))
    assert matched_blocks("end", 12, 6) == ((11, 5),)
    assert parse_matches("3:1,7:3") == ((3, 1), (7, 3)) and parse_matches("end") == "end"


# --------------------------------------------------------------------------- pool
def test_pool_builds_the_official_descendant_counts():
    teacher_config = create_vit("vit_digits_base").config  # depth 12, width 64
    for depth, expected in ((6, 18), (9, 27)):
        tiny, base = (make_student(teacher_config, s) for s in default_students(teacher_config, depth))
        assert (tiny.embed_dim, base.embed_dim) == (32, 64)
        pool = build_pool([tiny, base], ["tiny", "base"])
        assert len(pool.space) == descendant_count([depth, depth]) == expected == 3 * depth
        assert len(pool.stitch_layers) == depth - 1  # one per window
        assert all(c.anchors in ((0,), (1,), (0, 1)) for c in pool.space)  # tiny -> base stitches only
    # the 6-block tiny student is smaller than the SN-Net family's smallest anchor
    small_family_anchor = anchor_flops(create_vit("vit_digits_tiny")).total
    assert min(flops_table(build_pool([make_student(teacher_config, s) for s in default_students(teacher_config, 6)])))\
        < small_family_anchor / 1.9


def test_matrix_init_gives_the_stated_layers():
    torch.manual_seed(0)
    teacher_config = create_vit("vit_digits_base", depth=4, img_size=8).config  # width 64
    specs = (StudentSpec("tiny", 32, 2, 2), StudentSpec("small", 48, 3, 2), StudentSpec("base", 64, 4, 2))
    distiller = LearngeneDistiller(teacher_config, specs, matches=((1, 0), (2, 1), (3, 1)))
    with torch.no_grad():
        for mats in distiller.matrices:
            for m in mats.maps:
                m.weight.copy_(torch.randn_like(m.weight))
    a = torch.stack([m.weight for m in distiller.matrices[0].maps]).mean(0)  # (32, 64): teacher -> tiny
    b = torch.stack([m.weight for m in distiller.matrices[1].maps]).mean(0)  # (48, 64): teacher -> small
    # base as wide as the teacher: every tiny -> base layer is the transposed mean, bias 0
    pool = build_pool([distiller.students[0], distiller.students[2]], ["tiny", "base"])
    init_stitches_from_matrices(pool, [distiller.matrices[0], distiller.matrices[2]])
    for layer in pool.stitch_layers.values():
        assert torch.equal(layer.transform.weight, a.T) and torch.equal(layer.transform.bias, torch.zeros(64))
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(pool.stitching_layer(0, 1, 0)(x), x @ a)  # tiny features back to teacher width
    # a narrower end student composes with its own matrices: B A^T
    pool = build_pool([distiller.students[0], distiller.students[1]], ["tiny", "small"])
    init_stitches_from_matrices(pool, [distiller.matrices[0], distiller.matrices[1]])
    for layer in pool.stitch_layers.values():
        assert torch.equal(layer.transform.weight, b @ a.T) and not layer.transform.bias.any()


# --------------------------------------------------------------------------- pipeline
def test_distill_run_files(distilled, teacher_ref):
    out = distilled.out_dir
    manifest = json.loads((out / LEARNGENE_MANIFEST).read_text())
    assert manifest["sha256"] == file_sha256(out / LEARNGENE_WEIGHTS) and not (out / "distill.pt").exists()
    assert [(s["name"], s["embed_dim"], s["matches"]) for s in manifest["students"]] == [
        ("tiny", 32, [[1, 0], [3, 1]]), ("base", 64, [[1, 0], [3, 1]])]
    assert manifest["teacher"]["sha256"] == teacher_ref.sha256 and len(manifest["history"]) == 1
    _, _, distiller = read_distill_run(out)
    assert distiller.students[1].config["depth"] == 2


def test_pool_results_and_front(pooled):
    out = pooled.out_dir
    for name in ("run_config.json", POOL_CHECKPOINT, "results.csv", "pareto.json", "pareto.png"):
        assert (out / name).stat().st_size > 0, name
    results = pd.read_csv(out / "results.csv")
    assert tuple(results.columns) == RESULT_COLUMNS and sorted(results["candidate"]) == list(range(NUM_DESCENDANTS))
    assert results.loc[results["candidate"] == 3, "label"].item() == "tiny[0-0] -> base[1-1]"
    pareto = json.loads((out / "pareto.json").read_text())
    assert len(pooled.exports) == len(pareto["front"]) >= 1 and pareto["hypervolume"] > 0


def test_exports_rebuild_exactly(pooled, data):
    method = method_from_run(pooled.out_dir)
    pool = method.load_trained(Path(pooled.out_dir), method.load_data())
    results = pd.read_csv(pooled.out_dir / "results.csv").set_index("candidate")
    x = data.test.tensors[0][:64]
    for folder in pooled.exports:
        model, record = load_model(folder, return_record=True)
        assert isinstance(model, StitchedModel) and record["kind"] == "stitch"
        assert record["provenance"]["source"] == "learngene_pool"
        pool.set_active(record["config"]["id"])
        with torch.no_grad():
            torch.testing.assert_close(model(x), pool(x), rtol=0, atol=0)
        assert accuracy(model, data.search_val) == record["metrics"]["val_acc"] == \
            results.loc[record["config"]["id"], "val_acc"]
        assert accuracy(model, data.test) == record["metrics"]["test_acc"]


def test_export_from_run_evaluate_and_unknown_id(pooled, tmp_path):
    folder = stitchnas.export_from_run(pooled.out_dir, 4, tmp_path / "m")
    assert json.loads((folder / "model.json").read_text())["label"] == "tiny[0-1] -> base[0-1]"
    with pytest.raises(ValueError, match=r"stitch config id 99: unknown, expected an int in 0\.\.5"):
        stitchnas.export_from_run(pooled.out_dir, 99, tmp_path / "bad")
    again = stitchnas.evaluate_run(pooled.out_dir, progress=False)
    assert [r["val_acc"] for r in again.rows] == [r["val_acc"] for r in pooled.rows]
    init = stitchnas.evaluate_run(pooled.out_dir, no_train=True, progress=False)
    assert len(init.rows) == NUM_DESCENDANTS and (pooled.out_dir / "evaluate" / "init" / "pareto.json").exists()


def test_interrupted_runs_resume_to_the_same_result(distilled, pooled, tmp_path):
    out = tmp_path / "interrupted"

    def ctrl_c(step: int) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stitchnas.run_search(pool_config(distilled), out, progress=False, on_step=ctrl_c)
    resumed = stitchnas.run_search(pool_config(distilled), out, resume=True, progress=False)
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv").drop(columns="seconds"),
                                  pd.read_csv(pooled.out_dir / "results.csv").drop(columns="seconds"))
    for a, b in zip(resumed.exports, pooled.exports):
        assert file_sha256(a / "model.pt") == file_sha256(b / "model.pt")
    steps: list[int] = []
    run_distill(LearngeneDistillRunConfig(*_distill_args(distilled)), distilled.out_dir, resume=True,
                progress=False, on_step=steps.append)
    assert steps == []  # a finished distillation is not redone
    with pytest.raises(KeyboardInterrupt):
        run_distill(LearngeneDistillRunConfig(*_distill_args(distilled)), tmp_path / "d", progress=False,
                    on_step=ctrl_c)
    run_distill(LearngeneDistillRunConfig(*_distill_args(distilled)), tmp_path / "d", resume=True, progress=False)
    assert file_sha256(tmp_path / "d" / LEARNGENE_WEIGHTS) == file_sha256(distilled.out_dir / LEARNGENE_WEIGHTS)
    with pytest.raises(ValueError, match=r"differing: \['init'\]"):
        stitchnas.run_search(pool_config(distilled, init="least_squares"), out, resume=True, progress=False)


def _distill_args(distilled):
    cfg, _, _ = read_distill_run(distilled.out_dir)
    return cfg.teacher, cfg.distill, cfg.data


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_one_line_errors(distilled, teacher_ref):
    config = teacher_ref.config
    with pytest.raises(ValueError, match=r"student 'wide' 'embed_dim': 96 is wider than the teacher's 64"):
        DistillConfig((StudentSpec("wide", 96, 4, 2),)).check(config)
    outside = r"matches pair 4:0: outside the networks \(teacher blocks 0\.\.3, student blocks 0\.\.1\)"
    with pytest.raises(ValueError, match=outside):
        DistillConfig(STUDENTS, matches=((4, 0),)).check(config)
    with pytest.raises(ValueError, match=r"matches pair 3:2: outside the networks"):
        LearngeneDistillRunConfig(teacher_ref, DistillConfig(STUDENTS, matches=parse_matches("3:2")), DATA)
    with pytest.raises(ValueError, match="front_end': needs >= 3 blocks"):
        matched_blocks("front_end", 4, 2)
    with pytest.raises(ValueError, match="learngene pool: expected at least one learngene instance"):
        build_pool([])
    with pytest.raises(ValueError, match="learngene pool: expected at least one learngene instance"):
        descendant_count([])
    with pytest.raises(ValueError, match="'students': expected at least one auxiliary student"):
        DistillConfig(())
    with pytest.raises(ValueError, match=r"learngene student 'nosuch': unknown, expected one of \['tiny', 'base'\]"):
        stitchnas.run_search(pool_config(distilled, students=("nosuch",)), distilled.out_dir / "x", progress=False)
    for err in ("width", "nope"):
        with pytest.raises(ValueError):
            pool_config(distilled, init=err)


# --------------------------------------------------------------------------- CLI
def test_cli_distill_pool_export(teacher_ref, tmp_path, capsys):
    folder = tmp_path / "anchors"
    folder.mkdir()
    small = create_vit("vit_digits_tiny", depth=4, img_size=8)
    torch.save(small.state_dict(), folder / "small.pth")
    (folder / "anchors.json").write_text(json.dumps({"format": "stitchnas.anchors", "format_version": 1, "anchors": [
        {"name": "small", "config": small.config, "file": "small.pth"},
        {"name": "teacher", "config": teacher_ref.config, "file": teacher_ref.path}]}))
    quick = ["--input-size", "8", "--max-train-samples", "200", "--epochs", "1", "--no-progress", "--device", "cpu"]
    students = ["--student", "tiny:32:2:2", "--student", "base:64:4:2", "--matches", "end"]
    d, p = tmp_path / "d", tmp_path / "p"
    cli = lambda *argv: main([str(a) for a in argv])  # noqa: E731
    assert cli("learngene", "distill", "--anchors", folder, *students, *quick, "--out", d) == 0
    out = capsys.readouterr().out
    assert "teacher teacher" in out and "student tiny" in out and "learngene.json" in out
    assert cli("learngene", "pool", "--distill", d, "--init", "least-squares", "--init-samples", "30",
               "--epochs", "1", "--no-progress", "--device", "cpu", "--out", p) == 0
    assert "Pareto front" in capsys.readouterr().out
    assert cli("learngene", "export", "--run", p, "--config", "2", "--out", tmp_path / "m") == 0
    assert "tiny[0-0] -> base[0-1]" in capsys.readouterr().out
    for argv, message in (
        (["distill", "--anchors", folder, "--student", "wide:96:4:2", *quick, "--out", tmp_path / "e1"],
         "is wider than the teacher's 64"),
        (["distill", "--anchors", folder, *students[:4], "--matches", "0:5", *quick, "--out", tmp_path / "e2"],
         "outside the networks"),
        (["distill", "--anchors", folder, "--teacher", "nosuch", *quick, "--out", tmp_path / "e3"],
         "--teacher 'nosuch': not in"),
        (["pool", "--distill", d, "--student", "nosuch", "--out", tmp_path / "e4"], "learngene student 'nosuch'"),
    ):
        assert cli("learngene", *argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
