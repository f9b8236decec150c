"""Ray Tune evaluation backend and search algorithms (stitchnas/backends/tune.py).

Tests marked ``ray`` share one local Ray (2 CPUs, 127.0.0.1) started by a module fixture; the
job-submission test starts its own head node with ``ray start --head --block`` and stops it by
terminating that process (``ray stop --force`` would kill every Ray on the machine).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import stitchnas
from searchspace.pooling import PoolingConfig, resnet20_space
from stitchnas.cli import main as cli_main
from stitchnas.data import DataSpec
from stitchnas.core.io import ResultsTable, read_json
from stitchnas.search.front import RESULT_COLUMNS
from stitchnas.methods.pooling import (
    PoolingSearchConfig, PoolingTask, decode_positions, encode_positions, select_candidates,
)
from stitchnas.search.candidates import evaluate_in_process
from stitchnas.backends.tune import (
    FailureHooks, Ledger, RayTuneStage, TuneOptions, check_resources, cluster_nodes, init_ray, make_sampler,
    ray_session,
)
from stitchnas.backends.tune_search import TRIAL_NODE_COLUMNS, TRIAL_NODES_FILE
from supernet.evaluation import EvalConfig
from supernet.flops import pooling_flops
from supernet.training import TrainConfig

REPO = Path(__file__).resolve().parent.parent


def tiny_config(max_candidates: int | None = None, export: bool = False) -> PoolingSearchConfig:
    """ResNet-20 space on 8x8 digits, 200 images, one epoch: seconds, not minutes."""
    return PoolingSearchConfig(
        space=resnet20_space(),
        data=DataSpec(name="digits", input_size=8, seed=0, max_train_samples=200),
        train=TrainConfig(epochs=1, batch_size=32, seed=0, device="cpu"),
        eval=EvalConfig(calib_batches=2, calib_batch_size=32, device="cpu"),
        max_candidates=max_candidates,
        export_front=export,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rows_by_candidate(out: Path) -> dict[int, dict]:
    rows = ResultsTable(out / "results.csv", RESULT_COLUMNS).rows()
    assert len(rows) == len({r["candidate"] for r in rows}), "a candidate was recorded twice"
    return {int(r["candidate"]): r for r in rows}


# ----------------------------------------------------------------------------- no Ray needed
def test_positions_encoding_round_trips_and_rejects_repeats():
    space = resnet20_space()
    for config in space:
        assert decode_positions(space, encode_positions(config)) == config
    assert decode_positions(space, {"p0": 7, "p1": 2}) == PoolingConfig((2, 7))  # any order
    assert decode_positions(space, {"p0": 4, "p1": 4}) is None  # invalid suggestion


def test_bad_options_raise_one_line_value_errors():
    with pytest.raises(ValueError, match=r"^search algorithm 'grid': unknown, expected one of"):
        TuneOptions(search="grid", budget=5)
    with pytest.raises(ValueError, match=r"^budget: expected a number of evaluations >= 1, got 0$"):
        TuneOptions(search="nsga2", budget=0)
    with pytest.raises(ValueError, match="needs a budget"):
        TuneOptions(search="tpe")
    with pytest.raises(ValueError, match="not an Optuna sampler"):
        make_sampler("cmaes", 10, 0)
    with pytest.raises(ValueError, match="cannot reach a Ray cluster"):
        init_ray(f"127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(ValueError, match="dashboard"):
        init_ray("http://127.0.0.1:8265")
    nodes = [{"CPU": 2.0}]
    with pytest.raises(ValueError, match=r"needs 3 CPUs but the largest node of the Ray cluster has 2"):
        check_resources(3, 0, nodes)
    with pytest.raises(ValueError, match="the Ray cluster has no GPUs"):
        check_resources(1, 0.5, nodes)


def test_cli_rejects_bad_distributed_options(tmp_path, capsys):
    base = ["search", "pooling", "--no-progress", "--out", str(tmp_path / "run")]
    assert cli_main(base + ["--backend", "ray", "--search", "nsga2", "--budget", "0"]) == 2
    assert cli_main(base + ["--search", "tpe", "--budget", "5"]) == 2  # Optuna needs --backend ray
    port = free_port()
    assert cli_main(base + ["--backend", "ray", "--address", f"127.0.0.1:{port}"]) == 2  # before any training
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == ["stitchnas: error: --budget: expected a number of evaluations >= 1, got 0",
                      "stitchnas: error: --search tpe: needs --backend ray (Optuna's samplers run through Ray Tune)",
                      f"stitchnas: error: --address 127.0.0.1:{port}: cannot reach a Ray cluster there "
                      "(Connection refused)"]
    assert not (tmp_path / "run").exists()


def test_ledger_records_failures_and_requeues_the_rest_of_a_batch(tmp_path):
    space = resnet20_space()
    data = SimpleNamespace(input_size=8, in_chans=1, num_classes=10)
    table = ResultsTable(tmp_path / "results.csv", RESULT_COLUMNS)
    ledger = Ledger(PoolingTask(space, data), table, budget=None)
    ledger.start("t1", [0, 1, 2, 3])
    ledger.record("t1", {"rows": [{"candidate": 0, "val_acc": 50.0, "seconds": 0.1}],
                         "failed": {"candidate": 1, "error": "RuntimeError: boom", "seconds": 0.2}})
    ledger.record("t1", {"rows": [{"candidate": 0, "val_acc": 50.0, "seconds": 0.1}]})  # a retry repeats it
    ledger.trial_errored("t1", attempts=2, error_text=None)
    assert list(ledger.queue) == [2, 3]
    rows = {r["candidate"]: r for r in table.rows()}
    assert set(rows) == {0, 1}
    assert rows[0]["status"] == "ok" and rows[0]["val_acc"] == 50.0
    assert rows[1]["status"] == "failed" and math.isnan(rows[1]["val_acc"])
    assert rows[1]["error"] == "RuntimeError: boom (failed 2 attempts)"
    # A crash without a report blames the first unrecorded candidate, with the trial's error.
    ledger.start("t2", [ledger.queue.popleft(), ledger.queue.popleft()])
    ledger.trial_errored("t2", attempts=1, error_text="Traceback ...\nRayActorError: the actor died")
    assert table.rows()[-1]["candidate"] == 2
    assert table.rows()[-1]["error"] == "RayActorError: the actor died (failed 1 attempts)"
    assert list(ledger.queue) == [3] and not ledger.inflight


def test_ledger_records_the_node_of_each_scored_candidate_once(tmp_path):
    space = resnet20_space()
    data = SimpleNamespace(input_size=8, in_chans=1, num_classes=10)
    table = ResultsTable(tmp_path / "results.csv", RESULT_COLUMNS)
    nodes = ResultsTable(tmp_path / TRIAL_NODES_FILE, TRIAL_NODE_COLUMNS)
    ledger = Ledger(PoolingTask(space, data), table, budget=None, nodes=nodes)
    ledger.start("t1", [0, 1])
    first = {"candidate": 0, "val_acc": 50.0, "seconds": 0.1, "node_id": "n1", "node_ip": "10.0.0.2"}
    ledger.record("t1", {"rows": [first]})
    # the retry of t1 on another node repeats its checkpointed row (with the node that scored it)
    ledger.record("t1", {"rows": [first, {"candidate": 1, "val_acc": 40.0, "seconds": 0.1, "node_id": "n0",
                                          "node_ip": "10.0.0.1"}]})
    assert ResultsTable(tmp_path / TRIAL_NODES_FILE, TRIAL_NODE_COLUMNS).rows() == [
        {"candidate": 0, "trial": "t1", "node_id": "n1", "node_ip": "10.0.0.2"},
        {"candidate": 1, "trial": "t1", "node_id": "n0", "node_ip": "10.0.0.1"}]


def in_process_and_on_ray(cfg: PoolingSearchConfig, tmp_path: Path, stage: RayTuneStage):
    """The same search run in process (``tmp_path/local``) and through ``stage`` (``tmp_path/ray``),
    both with one torch thread, as in the 1-CPU trials: parallel reductions may round differently."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = stitchnas.run_search(cfg, tmp_path / "local", progress=False, backend=evaluate_in_process)
        remote = stitchnas.run_search(cfg, tmp_path / "ray", progress=False, backend=stage.evaluate)
    finally:
        torch.set_num_threads(threads)
    return local, remote


# ----------------------------------------------------------------------------- on Ray
@pytest.mark.ray
def test_ray_and_in_process_give_identical_results(ray_cluster, tmp_path):
    cfg = tiny_config(max_candidates=8, export=True)
    local, remote = in_process_and_on_ray(cfg, tmp_path, RayTuneStage(TuneOptions(search="exhaustive",
                                                                                   candidates_per_trial=3)))
    a, b = rows_by_candidate(local.out_dir), rows_by_candidate(remote.out_dir)
    assert set(a) == set(b) and len(a) == 8
    for index in a:
        assert b[index]["status"] == "ok"
        assert b[index]["val_acc"] == a[index]["val_acc"]  # bit-identical accuracies
        assert (b[index]["flops"], b[index]["label"]) == (a[index]["flops"], a[index]["label"])
    assert [r["candidate"] for r in remote.summary.front] == [r["candidate"] for r in local.summary.front]
    assert remote.summary.hypervolume == pytest.approx(local.summary.hypervolume, rel=1e-12)
    for name in ("results.csv", "pareto.json", "pareto.png"):
        assert (remote.out_dir / name).is_file()
    assert sorted(p.name for p in (remote.out_dir / "exports").iterdir()) == \
        sorted(p.name for p in (local.out_dir / "exports").iterdir())
    summary = read_json(remote.out_dir / "tune_summary.json", "summary")
    assert summary["trials"] < 8 and sorted(summary["evaluated"]) == sorted(a)  # batched trials
    import ray

    placed = ResultsTable(remote.out_dir / TRIAL_NODES_FILE, TRIAL_NODE_COLUMNS).rows()
    assert sorted(r["candidate"] for r in placed) == sorted(a)  # every candidate once, with its node
    assert {r["node_id"] for r in placed} == {ray.get_runtime_context().get_node_id()}
    assert {r["node_ip"] for r in placed} == {"127.0.0.1"}
    assert not (local.out_dir / TRIAL_NODES_FILE).exists()


@pytest.mark.ray
@pytest.mark.parametrize("variant", ["snapshots", "finetune"])
def test_ray_trials_score_snapshots_and_fine_tuned_networks_as_in_process(ray_cluster, tmp_path, variant):
    """Ray trials score with what the evaluator carries (the snapshot weights; the fine-tuning
    recipe and data), as the in-process backend does. That a shipped split keeps its mirror
    flag is tested in test_finetune_scoring.py."""
    cfg = tiny_config(max_candidates=4)
    if variant == "snapshots":
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=2), score_snapshots=2)
    else:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, finetune=dataclasses.replace(
            cfg.train, lr=0.01, lr_min=1e-4)))
    local, remote = in_process_and_on_ray(cfg, tmp_path, RayTuneStage(TuneOptions(search="exhaustive",
                                                                                   candidates_per_trial=2)))
    a, b = rows_by_candidate(local.out_dir), rows_by_candidate(remote.out_dir)
    assert set(a) == set(b) and len(a) == 4
    assert all(b[i]["status"] == "ok" and b[i]["val_acc"] == a[i]["val_acc"] for i in a)


@pytest.mark.ray
def test_nsga2_front_is_valid_and_respects_the_budget(ray_cluster, tmp_path):
    cfg = dataclasses.replace(tiny_config(), hv_reference="space")
    stage = RayTuneStage(TuneOptions(search="nsga2", budget=10, population_size=4, seed=3))
    outcome = stitchnas.run_search(cfg, tmp_path / "nsga2", progress=False, backend=stage.evaluate)
    rows = rows_by_candidate(outcome.out_dir)
    assert len(rows) == 10 and all(r["status"] == "ok" for r in rows.values())
    summary = read_json(outcome.out_dir / "tune_summary.json", "summary")
    assert summary["trials"] == 10  # one candidate per Optuna trial, no candidate twice
    points = [(r["flops"], r["val_acc"]) for r in rows.values()]

    def dominated(p):
        return any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in points)

    front = {int(r["candidate"]) for r in outcome.summary.front}
    assert front == {i for i, r in rows.items() if not dominated((r["flops"], r["val_acc"]))}
    ref = (1.1 * max(pooling_flops(cfg.space, c, 8, 1, 10) for c in cfg.space), 0.0)  # 1.1 x the space's largest
    assert outcome.summary.reference == ref
    assert read_json(outcome.out_dir / "pareto.json", "front")["hypervolume_reference"] == list(ref)
    assert 0 < outcome.summary.hypervolume < ref[0] * 100


@pytest.mark.ray
def test_failing_candidate_is_recorded_and_the_search_completes(ray_cluster, tmp_path):
    cfg = tiny_config(max_candidates=6)
    candidates = [cfg.space.index(c) for c in select_candidates(cfg.space, 6, cfg.train.seed)]
    # Batches of 3: the always-failing candidate sits mid-batch, so the one after it must be
    # queued again; the flaky one fails its first attempt only and is retried.
    bad, flaky = candidates[1], candidates[4]
    stage = RayTuneStage(TuneOptions(search="exhaustive", candidates_per_trial=3, max_failures=1,
                                     hooks=FailureHooks(fail_candidates=(bad,), flaky_candidates=(flaky,))))
    outcome = stitchnas.run_search(cfg, tmp_path / "fail", progress=False, backend=stage.evaluate)
    rows = rows_by_candidate(outcome.out_dir)
    assert sorted(rows) == sorted(candidates)
    assert rows[bad]["status"] == "failed" and math.isnan(rows[bad]["val_acc"])
    assert rows[bad]["error"] == f"RuntimeError: forced failure of candidate {bad} (test hook) (failed 2 attempts)"
    assert rows[flaky]["status"] == "ok" and rows[flaky]["val_acc"] > 0
    assert all(r["status"] == "ok" for i, r in rows.items() if i != bad)
    excluded = read_json(outcome.out_dir / "pareto.json", "front")["excluded"]
    assert [e["candidate"] for e in excluded] == [bad]
    assert bad not in {int(r["candidate"]) for r in outcome.summary.front}


KILLED_RUN = """
import json, sys
import stitchnas
from stitchnas.methods.pooling import PoolingSearchConfig
from stitchnas.backends.tune import FailureHooks, RayTuneStage, TuneOptions
cfg = PoolingSearchConfig.from_json(json.load(open(sys.argv[1])), f'run config {sys.argv[1]}')
stage = RayTuneStage(TuneOptions(search="exhaustive", candidates_per_trial=1, address=sys.argv[3],
                                 hooks=FailureHooks(delay_s=1.0)))
stitchnas.run_search(cfg, sys.argv[2], progress=False, backend=stage.evaluate)
"""


@pytest.mark.ray
def test_resume_after_a_killed_run_does_not_repeat_finished_candidates(ray_cluster, tmp_path):
    cfg = tiny_config(max_candidates=8)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_json()))
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tmp_path / "cfg.json"), str(out), ray_cluster],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "results.csv").exists() and len(ResultsTable(out / "results.csv", RESULT_COLUMNS)) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = rows_by_candidate(out)
    assert 2 <= len(before) < 8
    outcome = stitchnas.run_search(cfg, out, resume=True, progress=False,
                                   backend=RayTuneStage(TuneOptions(search="exhaustive", candidates_per_trial=1)).evaluate)
    after = rows_by_candidate(out)
    assert len(after) == 8 and all(r["status"] == "ok" for r in after.values())
    for index, row in before.items():
        assert after[index] == row  # untouched: not evaluated again
    summary = read_json(out / "tune_summary.json", "summary")
    assert summary["previously_done"] == len(before)
    assert sorted(summary["evaluated"]) == sorted(set(after) - set(before))
    assert len(outcome.rows) == 8


@pytest.mark.ray
def test_cluster_checks_reject_what_the_cluster_cannot_run(ray_cluster, tmp_path):
    nodes = cluster_nodes()
    assert max(n["CPU"] for n in nodes) == 2
    with pytest.raises(ValueError, match="--cpus-per-trial: a trial needs 3 CPUs"):
        check_resources(3, 0, nodes)
    with pytest.raises(ValueError, match="--gpus-per-trial 0.25: the Ray cluster has no GPUs"):
        check_resources(1, 0.25, nodes)
    with pytest.raises(ValueError, match="already connected"):
        with ray_session(f"127.0.0.1:{free_port()}"):
            pass
    with ray_session("auto"):  # the running cluster is reused, not shut down
        pass
    import ray

    assert ray.is_initialized()


def _wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # up: token authentication answers 401 to this anonymous request
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


@pytest.mark.ray
def test_job_submitted_to_a_local_head_node_writes_the_result_files(tmp_path):
    ray_bin = Path(sys.executable).parent / "ray"
    port, dash = free_port(), free_port()
    # Every other port the head opens gets a free one too: the defaults (dashboard agent 52365,
    # client server 10001, ...) are taken when another Ray runs on the machine, e.g. the module's.
    others = [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port", "ray-client-server-port", "node-manager-port", "object-manager-port")]
    # Token authentication stays on; the job client sends the token only in token mode.
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token"}
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true", "--num-cpus=2",
         "--disable-usage-stats", *others],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    out = tmp_path / "job"
    try:
        _wait_http(f"http://127.0.0.1:{dash}/api/version", 120)
        submit = [str(ray_bin), "job", "submit", f"--address=http://127.0.0.1:{dash}", f"--working-dir={REPO}", "--",
                  sys.executable, "scripts/ray_job.py", "search", "pooling", "--space", "resnet20",
                  "--input-size", "8", "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--candidates", "4",
                  "--candidates-per-trial", "2", "--no-export", "--no-progress", "--out", str(out)]
        for _ in range(60):  # the dashboard answers before the node's job agent is up
            job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=400)
            if job.returncode == 0 or "No available agent" not in job.stdout + job.stderr:
                break
            time.sleep(2)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
    rows = rows_by_candidate(out)
    assert len(rows) == 4 and all(r["status"] == "ok" and r["val_acc"] > 0 for r in rows.values())
    front = read_json(out / "pareto.json", "front")
    assert front["num_candidates"] == 4 and front["hypervolume"] > 0
    assert (out / "pareto.png").is_file()
    assert "Pareto front (" in job.stdout and "hypervolume:" in job.stdout
