"""The stitching searches (SN-Net, SN-Netv2, Learngene Pool) through the evaluation backends
of :mod:`stitchnas.search.candidates`: in process and Ray Tune give identical rows, Optuna searches
stitches within their budget, and the tasks' encodings and subsets are what they claim.

Tiny models: depth-4 ViT anchors (3 epochs) on 8x8 digits, 240 training images."""

from __future__ import annotations

import math

import pytest
import torch

import stitchnas
from stitching.anchors import AnchorRef, read_anchor_folder
from stitching.learngene import StudentSpec
from stitching.learngene_train import DistillConfig
from stitching.trainer import StitchTrainConfig
from stitching.vit import create_vit
from stitchnas.search.candidates import CandidateJob, CandidateTask, LookupEvaluator, evaluate_in_process
from stitchnas.cli import main
from stitchnas.data import DataSpec
from stitchnas.search.front import RESULT_COLUMNS
from stitchnas.core.io import ResultsTable, file_sha256, read_json
from stitchnas.methods.learngene import LearngeneDistillRunConfig, LearngenePoolConfig, run_distill
from stitchnas.methods.snnet import StitchSearchConfig, StitchTask, initialised_snnet
from stitchnas.backends.tune import RayTuneStage, TuneOptions

DATA = DataSpec(name="digits", input_size=8, seed=1, max_train_samples=240)
TRAIN = StitchTrainConfig(epochs=1, batch_size=32, lr=1e-3, seed=1)
QUICK = ["--input-size", "8", "--max-train-samples", "240", "--seed", "1", "--epochs", "1", "--batch-size", "32",
         "--init-samples", "40", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def anchor_dir(tiny_vit_family, stitch_data_spec):
    assert stitch_data_spec == DATA  # the session's shared stitching data
    return tiny_vit_family(depth=4, epochs=3)  # the SN-Netv2 tests' family


@pytest.fixture(scope="module")
def snnet_run(anchor_dir, tmp_path_factory):
    """An SN-Net run evaluated in process (3 depth-4 anchors: 3 + 2 x 10 = 23 configurations)."""
    cfg = StitchSearchConfig(anchors=tuple(read_anchor_folder(anchor_dir)), data=DATA, train=TRAIN, init_samples=40,
                             export_front=False)
    return stitchnas.run_search(cfg, tmp_path_factory.mktemp("tune_snnet") / "run", progress=False)


def accuracies(folder) -> dict[int, float]:
    rows = ResultsTable(folder / "results.csv", RESULT_COLUMNS).rows()
    assert len(rows) == len({r["candidate"] for r in rows}), "a candidate was recorded twice"
    assert all(r["status"] == "ok" for r in rows)
    return {int(r["candidate"]): r["val_acc"] for r in rows}


# ----------------------------------------------------------------------------- no Ray needed
def test_stitch_task_encoding_orders_by_flops_and_round_trips(anchor_dir, stitch_data):
    data = stitch_data
    cfg = StitchSearchConfig(anchors=tuple(read_anchor_folder(anchor_dir)), data=DATA, train=TRAIN, init_samples=40)
    task = StitchTask(initialised_snnet(cfg, data), data)
    assert len(task) == 23
    ranks = [task.encode(i)["flops_rank"] for i in range(len(task))]
    assert sorted(ranks) == list(range(len(task)))  # a bijection onto 0..N-1
    assert all(task.decode(task.encode(i)) == i for i in range(len(task)))
    flops = [task.flops(task.decode({"flops_rank": r})) for r in range(len(task))]
    assert flops == sorted(flops) and flops[0] < flops[-1]
    dist = task.distributions()["flops_rank"]
    assert (dist.low, dist.high) == (0, len(task) - 1)
    subset = task.sample(5, seed=3)
    assert len(subset) == 5 == len(set(subset)) and subset == sorted(subset)
    anchors = range(task.snnet.space.num_anchors)  # ids 0..A-1; a stitch may cost more than any anchor
    assert task.default_index() in subset and task.default_index() == max(anchors, key=task.flops)
    assert task.sample(5, seed=3) == subset and task.sample(99, seed=3) == list(range(len(task)))
    row = task.row(task.default_index())
    assert row["flops"] == task.flops(task.default_index()) and row["label"] == task.describe(task.default_index())


class _Squares(CandidateTask):
    """Candidate i scores i * i, except candidate 2, whose scoring raises; counts scorings."""

    def __init__(self):
        self.scored = []

    def __len__(self):
        return 4

    def describe(self, index):
        return f"c{index}"

    def row(self, index):
        return {"candidate": str(index), "label": self.describe(index), "config": "", "flops": index, "params": 1}

    def flops(self, index):
        return index

    def evaluator(self):
        task = self

        class Evaluator(LookupEvaluator):
            def prepare(self, device):
                def score(index):
                    task.scored.append(index)
                    if index == 2:
                        raise RuntimeError("out of memory")
                    return float(index * index)
                return score

        return Evaluator("squares", {})


def test_in_process_backend_records_failures_and_skips_finished_rows(tmp_path):
    table = ResultsTable(tmp_path / "results.csv", RESULT_COLUMNS)
    first = _Squares()
    evaluate_in_process(CandidateJob(first, table, [0, 1], tmp_path, progress=False))  # an interrupted run
    again = _Squares()
    evaluate_in_process(CandidateJob(again, ResultsTable(tmp_path / "results.csv", RESULT_COLUMNS), [0, 1, 2, 3],
                                     tmp_path, progress=False))
    assert first.scored == [0, 1] and again.scored == [2, 3]  # resumed: nothing scored twice
    rows = {r["candidate"]: r for r in ResultsTable(tmp_path / "results.csv", RESULT_COLUMNS).rows()}
    assert sorted(rows) == [0, 1, 2, 3]
    assert rows[2]["status"] == "failed" and math.isnan(rows[2]["val_acc"])
    assert rows[2]["error"] == "RuntimeError: out of memory"
    assert rows[3]["val_acc"] == 9.0 and rows[3]["status"] == "ok"


def test_cli_rejects_searches_the_in_process_backend_cannot_run(capsys, snnet_run, anchor_dir, tmp_path):
    assert main(["stitch", "evaluate", "--run", str(snnet_run.out_dir), "--search", "random", "--budget", "3",
                 "--no-progress"]) == 2
    assert main(["stitch", "train", "--anchors", str(anchor_dir), *QUICK, "--search", "tpe", "--budget", "3",
                 "--out", str(tmp_path / "x")]) == 2
    assert main(["stitch", "evaluate", "--run", str(snnet_run.out_dir), "--backend", "ray", "--budget", "0"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == [
        "stitchnas: error: --search random: this command evaluates every configuration in process; "
        "use --backend ray for random, nsga2 or tpe",
        "stitchnas: error: --search tpe: needs --backend ray (Optuna's samplers run through Ray Tune)",
        "stitchnas: error: --budget: expected a number of evaluations >= 1, got 0",
    ]
    assert not (tmp_path / "x").exists()


def test_ray_job_entry_point_sends_every_evaluating_command_to_the_jobs_cluster():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("ray_job", Path(__file__).parent.parent / "scripts" / "ray_job.py")
    ray_job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ray_job)
    for command in (["stitch", "train"], ["stitch", "evaluate"], ["learngene", "pool"], ["learngene", "evaluate"]):
        assert ray_job.job_argv([*command, "--out", "/x"]) == [*command, "--out", "/x", "--backend", "ray",
                                                                "--address", "auto"]
    given = ["stitch", "train", "--backend", "local", "--address=10.0.0.1:6379"]
    assert ray_job.job_argv(given) == given  # what the command gives is kept
    assert ray_job.job_argv(["stitch", "export", "--run", "r"]) == ["stitch", "export", "--run", "r"]


# ----------------------------------------------------------------------------- on Ray
@pytest.mark.ray
def test_snnet_on_ray_tune_gives_the_in_process_rows(ray_cluster, snnet_run, tmp_path):
    stage = RayTuneStage(TuneOptions(search="exhaustive", candidates_per_trial=4))
    outcome = stitchnas.evaluate_run(snnet_run.out_dir, out_dir=tmp_path / "ray", progress=False,
                                     backend=stage.evaluate)
    local, remote = accuracies(snnet_run.out_dir), accuracies(tmp_path / "ray")
    assert len(remote) == 23 and remote == local  # bit-identical accuracies, every configuration once
    assert [r["candidate"] for r in outcome.summary.front] == [r["candidate"] for r in snnet_run.summary.front]
    for name in ("pareto.json", "pareto.png"):
        assert (tmp_path / "ray" / name).is_file()
    summary = read_json(tmp_path / "ray" / "tune_summary.json", "summary")
    assert 1 < summary["trials"] < 23 and sorted(summary["evaluated"]) == list(range(23))  # batched trials


@pytest.mark.ray
def test_snnetv2_cli_searches_stitches_with_nsga2_within_its_budget(ray_cluster, anchor_dir, tmp_path, capsys):
    out = tmp_path / "v2"
    code = main(["stitch", "train", "--version", "v2", "--anchors", str(anchor_dir), *QUICK, "--backend", "ray",
                 "--address", ray_cluster, "--search", "nsga2", "--budget", "6", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = ResultsTable(out / "results.csv", RESULT_COLUMNS).rows()
    assert len(rows) == 6 == len({r["candidate"] for r in rows}) and all(r["status"] == "ok" for r in rows)
    assert read_json(out / "tune_summary.json", "summary")["trials"] == 6  # one stitch per Optuna trial
    points = {int(r["candidate"]): (r["flops"], r["val_acc"]) for r in rows}

    def dominated(p):
        return any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in points.values())

    front = {int(m["candidate"]) for m in read_json(out / "pareto.json", "front")["front"]}
    assert front == {i for i, p in points.items() if not dominated(p)}
    assert len(list((out / "exports").iterdir())) == len(front)  # every front member exported
    assert "Pareto front" in capsys.readouterr().out


@pytest.mark.ray
def test_learngene_pool_random_subset_on_ray_matches_in_process(ray_cluster, tmp_path):
    torch.manual_seed(0)
    teacher = create_vit("vit_digits_base", depth=4, img_size=8)
    path = tmp_path / "teacher.pth"
    torch.save(teacher.state_dict(), path)
    ref = AnchorRef("teacher", teacher.config, str(path), file_sha256(path))
    students = (StudentSpec("tiny", 32, 2, 2), StudentSpec("base", 64, 4, 2))
    distill = DistillConfig(students, matches=((1, 0), (3, 1)), train=TRAIN)
    distilled = run_distill(LearngeneDistillRunConfig(ref, distill, DATA), tmp_path / "d", progress=False)
    pool_cfg = LearngenePoolConfig(distill_run=str(distilled.out_dir), finetune=TRAIN, init_samples=40,
                                   export_front=False)
    local = stitchnas.run_search(pool_cfg, tmp_path / "p", progress=False)
    stage = RayTuneStage(TuneOptions(search="random", budget=4, candidates_per_trial=2, seed=5))
    remote = stitchnas.evaluate_run(local.out_dir, out_dir=tmp_path / "ray", progress=False, backend=stage.evaluate)
    got, want = accuracies(remote.out_dir), accuracies(local.out_dir)
    assert len(want) == 6 and len(got) == 4
    assert all(got[i] == want[i] for i in got)  # the same numbers for the sampled descendants
    anchors = [r for r in local.rows if int(r["candidate"]) < 2]  # the two students come first
    assert int(max(anchors, key=lambda r: r["flops"])["candidate"]) in got  # a seeded subset keeps the largest
