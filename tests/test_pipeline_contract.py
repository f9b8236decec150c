"""The search pipeline's contract, written once and held by all five methods (pooling / SPOS,
BMS, SN-Net, SN-Netv2, Learngene Pool):

* a run writes its files, and its front is the brute-force front of its own ``results.csv``;
* every export reloads as a plain module that reproduces its recorded accuracies exactly;
* an interruption (during training or during scoring) leaves only complete files, no front
  and no exports, and ``resume`` replays to files identical to an uninterrupted run;
* a run folder as written before ``hv_reference`` was recorded still re-evaluates and exports.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

import stitchnas
from searchspace.pooling import create_space
from stitching.anchors import read_anchor_folder
from stitching.learngene import StudentSpec
from stitching.learngene_train import DistillConfig
from stitching.trainer import StitchTrainConfig
from stitching.vit import create_vit
from stitchnas.core.evaluation import accuracy
from stitchnas.core.io import file_sha256, load_checkpoint
from stitchnas.core.records import AnchorDigest, Provenance, ResultRow
from stitchnas.data import DataSpec
from stitchnas.methods import method_from_run
from stitchnas.methods.learngene import LearngeneDistillRunConfig, LearngenePoolConfig, run_distill
from stitchnas.methods.pooling import PoolingSearchConfig
from stitchnas.methods.snnet import StitchSearchConfig
from stitchnas.search.candidates import evaluate_in_process
from supernet.bms import MixtureConfig
from supernet.evaluation import EvalConfig
from supernet.training import TrainConfig

METHODS = ("pooling", "bms", "snnet", "snnetv2", "learngene")
POOLING_DATA = DataSpec(name="digits", input_size=8, seed=0, max_train_samples=300)
STITCH_TRAIN = StitchTrainConfig(epochs=1, batch_size=32, lr=1e-3, seed=1)


@pytest.fixture(scope="session")
def configs(tiny_vit_family, stitch_data_spec, tmp_path_factory):
    """One tiny config per method (built once per session)."""
    pooling = PoolingSearchConfig(
        space=create_space("resnet20", width_scale=0.25), data=POOLING_DATA,
        train=TrainConfig(epochs=1, batch_size=32, lr=0.05, seed=0), eval=EvalConfig(calib_batches=2),
        max_candidates=6)
    bms = replace(pooling, mixture=MixtureConfig(num_supernets=2))
    anchors = tuple(read_anchor_folder(tiny_vit_family(2, 1)))
    snnet = StitchSearchConfig(anchors=anchors, data=stitch_data_spec, train=STITCH_TRAIN, init_samples=40)
    snnetv2 = replace(snnet, version="v2", sampling=None, lora_rank=None)
    torch.manual_seed(0)
    teacher = create_vit("vit_digits_base", depth=4, img_size=8)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.save(teacher.state_dict(), path)
    teacher_ref = stitchnas.AnchorRef("teacher", teacher.config, str(path), file_sha256(path))
    students = (StudentSpec("tiny", 32, 2, 2), StudentSpec("base", 64, 4, 2))
    distill = DistillConfig(students, matches=((1, 0), (3, 1)), train=StitchTrainConfig(epochs=1, batch_size=32, seed=1))
    distilled = run_distill(LearngeneDistillRunConfig(teacher_ref, distill, stitch_data_spec),
                            tmp_path_factory.mktemp("distill") / "d", progress=False)
    learngene = LearngenePoolConfig(distill_run=str(distilled.out_dir), init_samples=40,
                                    finetune=replace(STITCH_TRAIN, distill_weight=0.5))
    return {"pooling": pooling, "bms": bms, "snnet": snnet, "snnetv2": snnetv2, "learngene": learngene}


@pytest.fixture(scope="session")
def finished(configs, tmp_path_factory):
    """``finished(name)``: an uninterrupted run of that method (once per session)."""
    runs: dict[str, stitchnas.SearchResult] = {}

    def get(name: str) -> stitchnas.SearchResult:
        if name not in runs:
            runs[name] = stitchnas.run_search(configs[name], tmp_path_factory.mktemp(name) / "run", progress=False)
        return runs[name]

    return get


def brute_force_front(rows: list[ResultRow]) -> set[str]:
    """Candidates no other usable row dominates (FLOPs <=, accuracy >=, one strictly)."""
    usable = [r for r in rows if r.usable]
    return {r.candidate for r in usable
            if not any(o.flops <= r.flops and o.val_acc >= r.val_acc and (o.flops, o.val_acc) != (r.flops, r.val_acc)
                       for o in usable)}


def timeless(path: Path) -> dict:
    """``pareto.json`` without the scoring wall times."""
    front = json.loads(path.read_text())
    front["front"] = [{k: v for k, v in r.items() if k != "seconds"} for r in front["front"]]
    return front


def table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path).drop(columns="seconds").sort_values("candidate").reset_index(drop=True)


@pytest.mark.parametrize("name", METHODS)
def test_a_run_writes_its_files_and_its_front_is_the_brute_force_front(finished, name):
    result = finished(name)
    out = result.out_dir
    for file in ("run_config.json", result.method.checkpoint_file, "results.csv", "pareto.json", "pareto.png"):
        assert (out / file).is_file(), file
    frame = result.results
    assert list(frame.columns)[:6] == ["candidate", "label", "config", "flops", "params", "val_acc"]
    assert len(frame) == len(result.rows) >= 2 and (frame["status"] == "ok").all()
    rows = [ResultRow.from_row(r) for r in pd.read_csv(out / "results.csv").to_dict("records")]
    front = {r["candidate"] for r in json.loads((out / "pareto.json").read_text())["front"]}
    assert {str(c) for c in front} == brute_force_front(rows)
    assert {r.candidate for r in result.front} == brute_force_front(rows)
    assert [r.flops for r in result.front] == sorted(r.flops for r in result.front)
    assert sorted(p.name for p in (out / "exports").iterdir()) == sorted(p.name for p in result.exports)
    assert len(result.exports) == len(front)
    assert json.loads((out / "run_config.json").read_text())["hv_reference"] == "evaluated"


@pytest.mark.parametrize("name", METHODS)
def test_exports_reload_and_reproduce_their_recorded_accuracy(finished, name):
    result = finished(name)
    data = result.method.load_data()
    by_candidate = {r.candidate: r for r in result.front}
    for folder in result.exports:
        model, record = stitchnas.load_model(folder, return_record=True)
        assert not hasattr(model, "set_active")  # a plain module, no switching logic
        metrics = record["metrics"]
        assert accuracy(model, data.test) == metrics["test_acc"]
        assert accuracy(model, data.search_val) == metrics["val_acc"]
        assert record["provenance"]["checkpoint_sha256"] == file_sha256(result.out_dir / result.method.checkpoint_file)
        label = record.get("label") or "[" + ",".join(str(n) for n in record["notation"]) + "]"
        assert any(r.label == label and r.val_acc == metrics["search_val_acc"] for r in by_candidate.values())


class Interrupt(KeyboardInterrupt):
    pass


def interrupt_at_step(step: int):
    def on_step(s: int) -> None:
        if s == step:
            raise Interrupt

    return on_step


def interrupt_after(count: int):
    """A backend that scores ``count`` candidates, then is interrupted (Ctrl-C in scoring)."""
    def backend(job):
        evaluate_in_process(replace(job, candidates=job.candidates[:count]))
        raise Interrupt

    return backend


def assert_complete_files_only(out: Path, checkpoint: str) -> None:
    names = {p.name for p in out.rglob("*")}
    assert not [n for n in names if n.startswith(".") or n.endswith((".tmp", ".part"))], names
    assert "pareto.json" not in names and "exports" not in names
    json.loads((out / "run_config.json").read_text())
    if (out / checkpoint).exists():  # SPOS writes its first checkpoint after epoch 1, stitching at epoch 0
        state = load_checkpoint(out / checkpoint)  # weights_only=True; a torn write would not load
        assert isinstance(state["model"], dict)
    if (out / "results.csv").exists():
        frame = pd.read_csv(out / "results.csv")
        assert frame["val_acc"].notna().all() and (frame["status"] == "ok").all()


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("where", ["training", "scoring"])
def test_interrupted_run_leaves_complete_files_and_resumes_identically(configs, finished, tmp_path, name, where):
    reference = finished(name)
    out = tmp_path / "run"
    kwargs = {"on_step": interrupt_at_step(2)} if where == "training" else {"backend": interrupt_after(2)}
    with pytest.raises(Interrupt):
        stitchnas.run_search(configs[name], out, progress=False, **kwargs)
    assert_complete_files_only(out, reference.method.checkpoint_file)
    if where == "scoring":
        assert len(pd.read_csv(out / "results.csv")) == 2
    with pytest.raises(ValueError, match="--resume"):
        stitchnas.run_search(configs[name], out, progress=False)  # never silently mixes two runs
    resumed = stitchnas.run_search(configs[name], out, resume=True, progress=False)
    pd.testing.assert_frame_equal(table(out / "results.csv"), table(reference.out_dir / "results.csv"))
    assert [p.name for p in resumed.exports] == [p.name for p in reference.exports]
    for a, b in zip(resumed.exports, reference.exports):
        assert file_sha256(a / "model.pt") == file_sha256(b / "model.pt")
    assert timeless(out / "pareto.json") == timeless(reference.out_dir / "pareto.json")


@pytest.mark.parametrize("name", METHODS)
def test_a_run_without_hv_reference_re_evaluates_and_exports(finished, tmp_path, name):
    """Run folders written before ``hv_reference`` was recorded (main of 2026-11-23)."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(finished(name).out_dir, old)
    raw = json.loads((old / "run_config.json").read_text())
    del raw["hv_reference"]
    (old / "run_config.json").write_text(json.dumps(raw))
    method = method_from_run(old)
    assert method.hv_reference == "evaluated"
    again = stitchnas.evaluate_run(old, out_dir=tmp_path / "eval", progress=False)
    pd.testing.assert_frame_equal(table(tmp_path / "eval" / "results.csv"), table(old / "results.csv"))
    front = again.front[-1]
    folder = stitchnas.export_from_run(old, front.candidate, tmp_path / "export")
    _, record = stitchnas.read_model_record(folder)
    assert record["metrics"]["search_val_acc"] == front.val_acc
    assert math.isfinite(record["metrics"]["test_acc"])
    # a resume with the same options continues the old folder (the missing key is today's default)
    resumed = stitchnas.run_search(method.cfg, old, resume=True, progress=False)  # type: ignore[attr-defined]
    assert len(resumed.rows) == len(finished(name).rows)


def test_unknown_run_kinds_get_one_line(tmp_path):
    (tmp_path / "run_config.json").write_text(json.dumps({"kind": "anchors"}))
    with pytest.raises(ValueError, match=r"kind 'anchors' is not a search run"):
        method_from_run(tmp_path)
    with pytest.raises(ValueError, match=r"no run_config.json"):
        method_from_run(tmp_path / "missing")


def test_provenance_is_one_record_for_every_method(finished):
    sources = set()
    for name in METHODS:
        _, record = stitchnas.read_model_record(finished(name).exports[0])
        prov = record["provenance"]
        sources.add(prov["source"])
        for key in ("dataset", "data_dir", "input_size", "seed", "run_dir", "checkpoint_sha256"):
            assert key in prov, (name, key)
    assert sources == {"supernet", "snnet", "snnetv2", "learngene_pool"}
    digest = Provenance(source="snnet", run_dir="/r", checkpoint_sha256="x", dataset="digits",
                        anchors=(AnchorDigest("a", "1"),))
    assert digest.to_json()["anchors"] == [{"name": "a", "sha256": "1"}] and "teacher" not in digest.to_json()
