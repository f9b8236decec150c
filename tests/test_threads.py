"""The thread policy (issue 14): chosen once, from the CPUs the process may use, applied before
torch is imported, recorded in run_config.json; the same thread count gives the same results."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from stitchnas.cli import main
from stitchnas.core import threads
from stitchnas.core.runs import prepare_run_dir
from stitchnas.methods import method_from_run

REPO = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "--input-size", "8", "--width-scale", "0.25",
        "--candidates", "6", "--calib-batches", "2", "--no-progress"]


@pytest.fixture
def machine(monkeypatch):
    """A fake machine: ``machine(cpus=4, quota=None, ray=None, idle=None)`` sets what the readers
    return (``idle``: CPUs other processes leave idle; None: all of them)."""
    def set_machine(cpus: int = 4, quota: float | None = None, ray: float | None = None,
                    idle: float | None = None) -> None:
        monkeypatch.setattr(threads, "affinity_cpus", lambda: cpus)
        monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: quota)
        monkeypatch.setattr(threads, "ray_assigned_cpus", lambda: ray)
        monkeypatch.setattr(threads, "idle_cpus", lambda: float(cpus) if idle is None else idle)

    return set_machine


# --------------------------------------------------------------------------- choosing the count
def test_the_count_is_the_affinity_mask_with_a_bounded_spin(machine):
    machine(cpus=3)
    policy = threads.choose_threads(environ={})
    assert (policy.num_threads, policy.source, policy.cpus_available) == (3, "affinity", 3)
    assert policy.env() == {"OMP_NUM_THREADS": "3", **threads.WAIT_ENV}


@pytest.mark.parametrize("quota, expected", [(1.5, 1), (2.0, 2), (0.3, 1)])
def test_a_cgroup_quota_below_the_mask_caps_the_count(machine, quota, expected):
    machine(cpus=4, quota=quota)
    policy = threads.choose_threads(environ={})
    assert (policy.num_threads, policy.source, policy.cpu_quota) == (expected, "cgroup", quota)


def test_a_quota_above_the_mask_leaves_the_mask(machine):
    machine(cpus=2, quota=8.0)
    assert threads.choose_threads(environ={}).source == "affinity"


def test_the_order_of_the_sources(machine):
    machine(cpus=4, quota=3.0, ray=1.5)
    assert threads.choose_threads(2, environ={"OMP_NUM_THREADS": "3"}).source == "--threads"
    ray = threads.choose_threads(environ={"OMP_NUM_THREADS": "3"})  # a Ray worker inherits the driver's env
    assert (ray.num_threads, ray.source) == (1, "ray")
    machine(cpus=4, quota=3.0)
    env = threads.choose_threads(environ={"OMP_NUM_THREADS": "3"})
    assert (env.num_threads, env.source) == (3, "env OMP_NUM_THREADS")
    assert threads.choose_threads(environ={"OMP_NUM_THREADS": "zero"}).source == "cgroup"  # not a count


@pytest.mark.parametrize("idle, expected", [(0.1, 1), (1.4, 1), (1.6, 2), (3.0, 3), (9.0, 4)])
def test_cpus_busy_with_other_processes_cap_the_count(machine, idle, expected):
    machine(cpus=4, idle=idle)
    policy = threads.choose_threads(environ={})
    assert policy.num_threads == expected
    assert policy.source == ("affinity" if expected == 4 else "idle CPUs")
    machine(cpus=4, quota=3.0, idle=idle)
    assert threads.choose_threads(environ={}).num_threads == min(3, expected)
    # an explicit count is never capped
    assert threads.choose_threads(4, environ={}).num_threads == 4
    assert threads.choose_threads(environ={"OMP_NUM_THREADS": "4"}).num_threads == 4


def test_idle_cpus_reads_proc_stat(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    lines = iter(["cpu  100 0 100 800 0 0 0 0 0 0\n", "cpu  250 0 250 900 0 0 0 0 0 0\n"])
    monkeypatch.setattr(threads.Path, "read_text", lambda self: next(lines))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    # 300 busy of 400 jiffies: a quarter of 2 CPUs idle
    assert threads.idle_cpus(0.0, stat) == pytest.approx(0.5)
    monkeypatch.setattr(threads.Path, "read_text", lambda self: "garbage")
    assert threads.idle_cpus(0.0, stat) is None


def test_a_ray_worker_with_a_fraction_of_a_cpu_gets_one_thread(machine):
    machine(cpus=16, ray=0.5)
    assert threads.choose_threads(environ={}).num_threads == 1


def test_the_users_wait_policy_is_kept(machine):
    machine()
    policy = threads.choose_threads(environ={"OMP_WAIT_POLICY": "ACTIVE"})
    assert policy.wait_env == () and policy.wait_policy == "user: OMP_WAIT_POLICY=ACTIVE"
    assert policy.env() == {"OMP_NUM_THREADS": "4"}
    # the policy's own setting, inherited from a parent that applied it, is not the user's
    assert threads.choose_threads(environ=dict(threads.WAIT_ENV)).wait_env == tuple(threads.WAIT_ENV.items())


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_a_bad_count_is_refused(bad):
    with pytest.raises(ValueError, match="threads: expected a whole number >= 1"):
        threads.configure(bad)


# --------------------------------------------------------------------------- cgroup files
def cgroup(tmp_path: Path, self_line: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "sys_fs_cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (tmp_path / "self_cgroup").write_text(self_line)
    return root, tmp_path / "self_cgroup"


def test_cgroup_v2_takes_the_tightest_quota_along_the_path(tmp_path):
    root, me = cgroup(tmp_path, "0::/user.slice/job\n",
                      {"user.slice/job/cpu.max": "max 100000\n", "user.slice/cpu.max": "150000 100000\n",
                       "cpu.max": "400000 100000\n"})
    assert threads.cgroup_cpu_quota(root, me) == 1.5


def test_cgroup_v2_without_a_quota(tmp_path):
    root, me = cgroup(tmp_path, "0::/a\n", {"a/cpu.max": "max 100000\n"})
    assert threads.cgroup_cpu_quota(root, me) is None


def test_cgroup_v1_quota_and_period(tmp_path):
    root, me = cgroup(tmp_path, "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n",
                      {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000\n",
                       "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"})
    assert threads.cgroup_cpu_quota(root, me) == 2.5


def test_cgroup_v1_in_a_container_reads_the_mount_itself(tmp_path):
    """The host's path is not below the container's mount; the mount's own files count."""
    root, me = cgroup(tmp_path, "1:cpu:/docker/0123\n",
                      {"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"})
    assert threads.cgroup_cpu_quota(root, me) == 1.0


def test_cgroup_v1_unlimited_and_unreadable(tmp_path):
    root, me = cgroup(tmp_path, "1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"})
    assert threads.cgroup_cpu_quota(root, me) is None
    assert threads.cgroup_cpu_quota(root, tmp_path / "missing") is None
    root, me = cgroup(tmp_path / "junk", "0::/\n", {"cpu.max": "lots\n"})
    assert threads.cgroup_cpu_quota(root, me) is None


# --------------------------------------------------------------------------- the command line
@pytest.mark.parametrize("value", ["0", "x", "-2"])
def test_a_bad_threads_option_exits_2_with_one_line(capsys, value):
    with pytest.raises(SystemExit) as exit_:
        main(["search", "pooling", "--threads", value, "--out", "never"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [("stitchnas search pooling: error: argument --threads: expected a whole "
                                 f"number of threads >= 1, got '{value}' (see stitchnas search pooling --help)")]
    assert not Path("never").exists()


def test_every_command_takes_threads():
    from stitchnas.cli.main import build_parser

    parser = build_parser()
    for argv in (["flops"], ["stitch", "train", "--anchors", "a"], ["learngene", "pool", "--distill", "d"],
                 ["truth", "pooling"], ["anchors", "train"]):
        assert parser.parse_args([*argv, "--threads", "3"]).threads == 3


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def test_the_command_applies_the_policy_before_torch_is_imported(tmp_path):
    script = """
import json, os, sys
from stitchnas.core import threads
from stitchnas.cli import main
seen = {}
original = threads.apply
def spy(policy):
    seen["torch_before_apply"] = "torch" in sys.modules
    return original(policy)
threads.apply = spy
code = main(["--verbose", "flops", "--space", "resnet20", "--threads", "1", "--json"])  # the choice: a debug line
import torch
print(json.dumps({"code": code, **seen, "torch_threads": torch.get_num_threads(),
                  "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "GOMP_SPINCOUNT")}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=child_env())
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["code"] == 0 and seen["torch_before_apply"] is False
    assert seen["torch_threads"] == 1
    assert seen["env"] == {"OMP_NUM_THREADS": "1", **threads.WAIT_ENV}
    assert "threads: 1 torch thread(s) (from --threads" in proc.stderr


def search(out: Path, *extra: str) -> subprocess.CompletedProcess:
    script = shutil.which("stitchnas", path=str(Path(sys.executable).parent))
    cmd = [script] if script else [sys.executable, "-m", "stitchnas.cli.main"]
    return subprocess.run([*cmd, "search", "pooling", *TINY, *extra, "--out", str(out)], capture_output=True,
                          text=True, timeout=600, cwd=REPO, env=child_env())


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same tiny search twice with --threads 2 (two threads: the parallel path)."""
    root = tmp_path_factory.mktemp("threads")
    for name in ("a", "b"):
        proc = search(root / name, "--threads", "2")
        assert proc.returncode == 0, proc.stderr
    return root / "a", root / "b"


def test_the_console_script_records_the_policy_in_run_config(two_runs):
    recorded = json.loads((two_runs[0] / "run_config.json").read_text())["threads"]
    assert recorded == {"num_threads": 2, "source": "--threads",
                        "wait_policy": " ".join(f"{k}={v}" for k, v in threads.WAIT_ENV.items())}
    assert method_from_run(two_runs[0]).run_config() == {  # the record is no option of the run
        k: v for k, v in json.loads((two_runs[0] / "run_config.json").read_text()).items() if k != "threads"}


def test_the_same_thread_count_gives_identical_results(two_runs):
    a, b = two_runs
    results = [pd.read_csv(run / "results.csv", dtype=str).drop(columns="seconds") for run in (a, b)]
    pd.testing.assert_frame_equal(*results)
    weights = [torch.load(run / "supernet.pt", map_location="cpu", weights_only=False)["model"] for run in (a, b)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    exports = [sorted((run / "exports").glob("*/model.pt")) for run in (a, b)]
    assert [p.parent.name for p in exports[0]] == [p.parent.name for p in exports[1]] and exports[0]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(*exports))


def test_resuming_with_another_count_warns_and_is_not_refused(two_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(two_runs[0], run)
    proc = search(run, "--threads", "1", "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "started with 2 torch threads, resuming with 1" in proc.stderr and "pass --threads 2 to match" in proc.stderr
    assert json.loads((run / "run_config.json").read_text())["threads"]["num_threads"] == 2  # the start's record


# --------------------------------------------------------------------------- run folders, in process
def test_prepare_run_dir_records_and_compares_without_the_threads(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(threads, "current", lambda: threads.ThreadPolicy(3, "affinity", 3))
    out = prepare_run_dir(tmp_path / "r", {"kind": "k", "x": 1}, resume=False)
    assert json.loads((out / "run_config.json").read_text()) == {
        "kind": "k", "x": 1, "threads": {"num_threads": 3, "source": "affinity",
                                         "wait_policy": "OpenMP default (spin, then sleep)"}}
    monkeypatch.setattr(threads, "current", lambda: threads.ThreadPolicy(1, "--threads", 3))
    with caplog.at_level(logging.WARNING, logger="stitchnas.core.runs"):
        prepare_run_dir(out, {"kind": "k", "x": 1, "threads": {"num_threads": 9}}, resume=True)  # passed one ignored
    assert "started with 3 torch threads, resuming with 1" in caplog.text
    with pytest.raises(ValueError, match=r"differing: \['x'\]"):
        prepare_run_dir(out, {"kind": "k", "x": 2}, resume=True)


def test_a_folder_without_the_record_resumes_silently(tmp_path, caplog):
    (tmp_path / "run_config.json").write_text(json.dumps({"kind": "k", "x": 1}))
    with caplog.at_level(logging.WARNING, logger="stitchnas.core.runs"):
        prepare_run_dir(tmp_path, {"kind": "k", "x": 1}, resume=True)
    assert "threads" not in caplog.text
    assert json.loads((tmp_path / "run_config.json").read_text()) == {"kind": "k", "x": 1}  # left as it was


def test_current_describes_torch_when_nothing_was_applied(monkeypatch):
    monkeypatch.setattr(threads, "_applied", None)
    policy = threads.current()
    assert policy.source == "torch" and policy.num_threads == torch.get_num_threads()


def test_bad_input_is_one_stderr_line_and_a_run_logs_its_threads_with_its_folder(tmp_path):
    """The thread choice is not announced before the options are checked (a bad option gets
    exactly one line), and a run states its threads where it states its folder."""
    script = shutil.which("stitchnas", path=str(Path(sys.executable).parent))
    bad = subprocess.run([script, "search", "pooling", "--dataset", "mnist", "--out", str(tmp_path / "bad")],
                         capture_output=True, text=True, timeout=300, env=child_env())
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [bad.stderr.strip()] and "--dataset" in bad.stderr and "'mnist'" in bad.stderr
    good = subprocess.run([script, "truth", "pooling", "--epochs", "1", "--configs", "0", "--seeds", "0",
                           "--input-size", "8", "--threads", "1", "--no-progress", "--out", str(tmp_path / "t")],
                          capture_output=True, text=True, timeout=300, env=child_env())
    assert good.returncode == 0, good.stderr[-2000:]
    folder_lines = [line for line in good.stderr.splitlines() if "run folder:" in line]
    assert len(folder_lines) == 1 and "threads: 1 torch thread(s) (from --threads" in folder_lines[0]
