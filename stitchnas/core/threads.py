"""How many threads torch computes with and how its idle OpenMP threads wait: one policy,
chosen once per process, before torch is imported.

Why (issue 14): torch's CPU wheels run every parallel operator on GNU OpenMP (``libgomp``,
bundled with torch), whose idle threads busy-wait for the next parallel region (about 300,000
spins, milliseconds) before sleeping. On a quiet machine that is what makes two threads fast; on
a shared one (other jobs, Ray trials side by side, ``stitchnas truth`` runs in parallel) a
thread spins while the thread it waits for is descheduled, and a training step slowed 10-100x.

The policy:

* **How many threads** (:func:`choose_threads`), first match wins: ``--threads N`` (or the
  ``requested`` argument); inside a Ray task, trial or Train worker, the CPUs Ray assigned it
  (``floor``, at least 1; Ray's own rule for ``OMP_NUM_THREADS``); an ``OMP_NUM_THREADS`` the user
  exported; else the CPUs this process may run on: its affinity mask
  (``os.sched_getaffinity``), capped by the cgroup CPU quota (v2 ``cpu.max``, v1
  ``cpu.cfs_quota_us / cpu.cfs_period_us``, the tightest along the cgroup's path; ``floor``, at
  least 1), and then capped by the CPUs other processes leave idle when the command starts
  (:func:`idle_cpus`, 0.1 s of ``/proc/stat``; rounded, at least 1; source ``"idle CPUs"``):
  beside CPU-bound jobs a second thread mostly waits at barriers for a descheduled partner.
  The count is chosen once; ``--threads`` pins it (runs on machines under different load may
  otherwise use other counts, which changes results in the last bits; the count is recorded).
* **How idle threads wait** (:data:`WAIT_ENV`): a short spin, then sleep:
  ``GOMP_SPINCOUNT=3000`` bounds libgomp's spin (torch's OpenMP on Linux) to tens of
  microseconds instead of milliseconds. A thread whose partner was preempted then gives its
  CPU back instead of burning its time slice, while on a quiet machine the next parallel region
  still finds it awake. ``OMP_WAIT_POLICY=PASSIVE`` (no spin) and one thread cost 1.5-1.9x on a
  quiet machine; see ``scripts/bench_threads.py`` and BENCHMARKS.md ("Threads"). The user's own
  ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME`` (LLVM/Intel OpenMP, torch on
  macOS, which ignores ``GOMP_SPINCOUNT``) is left as it is.
  The wait policy never changes results; the thread count changes them in the last bits (a
  reduction splits differently), so runs with the same count give identical numbers and the
  count is recorded in ``run_config.json``.

OpenMP reads its environment once, when torch loads it: :func:`apply` must run before
``import torch`` to set the wait policy. Later it can still set the thread count
(``torch.set_num_threads``) and logs that the wait policy stays as loaded. The ``stitchnas``
command applies the policy right after parsing its options; a library never changes
process-wide settings on import, so Python callers opt in with :func:`configure`
(``stitchnas.set_threads``). :func:`current` describes the settings in force, whoever made
them; run folders record it.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Where a policy's thread count came from.
SOURCES = ("--threads", "ray", "env OMP_NUM_THREADS", "cgroup", "affinity", "idle CPUs", "torch")

#: The wait policy :func:`apply` sets when the user set none: 3,000 spins (about 75 us at the
#: 25 ns a ``pause`` takes on our AMD EPYC VMs) instead of libgomp's default 300,000, then sleep.
#: Measured (scripts/bench_threads.py): 1,000 loses 15-20% on a quiet machine, 10,000 spins
#: erratically (100-800 ms steps) beside busy processes.
WAIT_ENV: Mapping[str, str] = {"GOMP_SPINCOUNT": "3000"}
#: Any of these set by the user means the user chose the wait policy.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class ThreadPolicy:
    """The threads torch computes with and how its idle OpenMP threads wait.

    Attributes:
        num_threads: torch's intra-op threads (``OMP_NUM_THREADS``, ``torch.set_num_threads``).
        source: Where the count came from, one of :data:`SOURCES` (``"torch"``: not chosen by
            stitchnas; whatever the process had, see :func:`current`).
        cpus_available: CPUs in this process's affinity mask.
        cpu_quota: CPUs the cgroup's quota allows (None: no quota found).
        wait_env: The wait-policy variables this policy sets (empty: the user's, or torch's
            default, are in force).
        wait_policy: The wait policy in words, e.g. ``"GOMP_SPINCOUNT=10000"`` or
            ``"user: OMP_WAIT_POLICY=PASSIVE"``.
    """

    num_threads: int
    source: str
    cpus_available: int
    cpu_quota: float | None = None
    wait_env: tuple[tuple[str, str], ...] = ()
    wait_policy: str = "OpenMP default (spin, then sleep)"

    def __post_init__(self) -> None:
        if isinstance(self.num_threads, bool) or not isinstance(self.num_threads, int) or self.num_threads < 1:
            raise ValueError(f"threads: expected a whole number >= 1, got {self.num_threads!r}")
        if self.source not in SOURCES:
            raise ValueError(f"threads source: expected one of {SOURCES}, got {self.source!r}")

    def env(self) -> dict[str, str]:
        """The environment :func:`apply` sets: the thread count and the wait policy."""
        return {"OMP_NUM_THREADS": str(self.num_threads), **dict(self.wait_env)}

    def to_json(self) -> dict[str, Any]:
        """What a run folder records (``run_config.json`` key ``"threads"``)."""
        return {"num_threads": self.num_threads, "source": self.source, "wait_policy": self.wait_policy}

    def describe(self) -> str:
        quota = "" if self.cpu_quota is None else f", cgroup quota {self.cpu_quota:g} CPUs"
        return (f"{self.num_threads} torch thread(s) (from {self.source}; {self.cpus_available} CPUs in the "
                f"affinity mask{quota}), OpenMP wait: {self.wait_policy}")


def parse_threads(text: str) -> int:
    """argparse type of ``--threads``: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads >= 1, got {text!r}")
    return value


# --------------------------------------------------------------------------- what the process may use
def affinity_cpus() -> int:
    """CPUs this process may run on (its affinity mask; the CPU count where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _read_quota(folder: Path) -> float | None:
    """The CPU quota set in one cgroup folder (v2 ``cpu.max`` or v1 CFS files), None if none."""
    try:
        if (folder / "cpu.max").is_file():  # v2: "max 100000" or "150000 100000"
            fields = (folder / "cpu.max").read_text().split()
            if not fields or fields[0] == "max":
                return None
            quota, period = int(fields[0]), int(fields[1]) if len(fields) > 1 else 100_000
            return quota / period if quota > 0 and period > 0 else None
        if (folder / "cpu.cfs_quota_us").is_file():
            quota_us = int((folder / "cpu.cfs_quota_us").read_text())
            period_us = int((folder / "cpu.cfs_period_us").read_text())
            return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None
    return None


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> float | None:
    """CPUs the cgroup CPU quota allows this process (quota / period; the tightest along the
    cgroup's path up to the mount point), or None when no quota is set or none can be read.

    Reads ``self_cgroup`` (``/proc/self/cgroup``): the v2 line ``0::/path`` looks under ``root``
    (or ``root/unified``), a v1 line naming the ``cpu`` controller under ``root/<controllers>``
    (or ``root/cpu``). In a container the path may not exist below the mount (it is the host's):
    then the folders that exist on the way up still count.
    """
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return None
    mounts: list[tuple[Path, str]] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        rel = rel.strip().lstrip("/")
        if controllers == "":
            mounts += [(root, rel), (root / "unified", rel)]
        elif "cpu" in controllers.split(","):
            mounts += [(root / controllers, rel), (root / "cpu", rel)]
    quotas = []
    for mount, rel in mounts:
        folder = mount / rel if rel else mount
        while True:
            quota = _read_quota(folder)
            if quota is not None:
                quotas.append(quota)
            if folder == mount or mount not in folder.parents:
                break
            folder = folder.parent
    return min(quotas) if quotas else None


def ray_assigned_cpus() -> float | None:
    """The CPUs Ray assigned this process when it is a Ray worker (a task, a Tune trial, a Train
    worker), else None. Never imports Ray: a process that has not imported it is no worker."""
    ray = sys.modules.get("ray")
    if ray is None:
        return None
    try:
        if not ray.is_initialized():
            return None
        context = ray.get_runtime_context()
        if context.worker.mode != ray.WORKER_MODE:
            return None
        return float(context.get_assigned_resources().get("CPU", 1.0))
    except Exception:  # noqa: BLE001 - any Ray API change means "not known", never a crash
        return None


def _cpu_times(stat: Path) -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from ``/proc/stat``'s first line; None if unreadable."""
    try:
        fields = [int(v) for v in stat.read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - idle, total


def idle_cpus(seconds: float = 0.1, stat: Path = Path("/proc/stat")) -> float | None:
    """CPUs of the machine left idle by every other process, sampled over ``seconds`` from
    ``/proc/stat`` (None where there is no such file, e.g. macOS): 2.0 on a quiet 2-CPU machine,
    about 0 beside two CPU-bound processes."""
    before = _cpu_times(stat)
    time.sleep(seconds)
    after = _cpu_times(stat)
    if before is None or after is None or after[1] <= before[1]:
        return None
    busy, total = after[0] - before[0], after[1] - before[1]
    return (os.cpu_count() or 1) * (1.0 - busy / total)


def _env_threads(environ: Mapping[str, str]) -> int | None:
    text = environ.get("OMP_NUM_THREADS", "").strip()
    return int(text) if text.isdigit() and int(text) >= 1 else None


def _wait(environ: Mapping[str, str]) -> tuple[tuple[tuple[str, str], ...], str]:
    """The wait-policy variables to set and the policy in words."""
    user = {k: environ[k] for k in WAIT_VARIABLES if environ.get(k, "").strip()}
    if user and user != dict(WAIT_ENV):  # exactly WAIT_ENV: set by apply(), here or in a parent process
        return (), "user: " + " ".join(f"{k}={v}" for k, v in user.items())
    return tuple(WAIT_ENV.items()), " ".join(f"{k}={v}" for k, v in WAIT_ENV.items())


# --------------------------------------------------------------------------- choosing and applying
def choose_threads(requested: int | None = None, environ: Mapping[str, str] | None = None) -> ThreadPolicy:
    """The policy for this process (see the module docstring for the order of the sources).

    Args:
        requested: An explicit thread count (``--threads``), None to choose.
        environ: The environment to read (default ``os.environ``).

    Raises:
        ValueError: ``requested`` is not a whole number >= 1.
    """
    environ = os.environ if environ is None else environ
    cpus = affinity_cpus()
    quota = cgroup_cpu_quota()
    wait_env, wait_policy = _wait(environ)
    ray_cpus = ray_assigned_cpus()
    env_threads = _env_threads(environ)
    if requested is not None:
        n, source = requested, "--threads"
    elif ray_cpus is not None:
        n, source = max(1, math.floor(ray_cpus)), "ray"
    elif env_threads is not None:
        n, source = env_threads, "env OMP_NUM_THREADS"
    elif quota is not None and quota < cpus:
        n, source = max(1, math.floor(quota)), "cgroup"
    else:
        n, source = cpus, "affinity"
    if source in ("cgroup", "affinity") and n > 1:
        # Threads beyond the CPUs other processes leave idle wait at every barrier for a partner
        # that is descheduled: on a busy machine fewer threads are faster (BENCHMARKS.md, Threads).
        idle = idle_cpus()
        if idle is not None and round(idle) < n:
            n, source = max(1, round(idle)), "idle CPUs"
    return ThreadPolicy(n, source, cpus, quota, wait_env, wait_policy)


_applied: ThreadPolicy | None = None


def apply(policy: ThreadPolicy) -> ThreadPolicy:
    """Put ``policy`` in force in this process and log it once.

    Before torch is imported it sets the environment (the thread count and the wait policy,
    which OpenMP reads when torch loads it; child processes inherit them). If torch is already
    imported it sets the thread count with ``torch.set_num_threads`` and logs that the wait
    policy stays as OpenMP loaded it, unless the environment already asked for this one.
    """
    global _applied
    torch = sys.modules.get("torch")
    wait_already = all(os.environ.get(k) == v for k, v in policy.wait_env)
    os.environ.update(policy.env())
    if torch is not None:
        torch.set_num_threads(policy.num_threads)
        if not wait_already:
            log.info("threads: torch was imported before the thread policy was applied; %d threads set, but the "
                     "OpenMP wait policy stays as loaded (set %s before importing torch)", policy.num_threads,
                     " ".join(f"{k}={v}" for k, v in policy.wait_env))
    if policy != _applied:  # debug here: a run logs its threads with its folder (core.runs), after validation
        log.debug("threads: %s", policy.describe())
    _applied = policy
    return policy


def configure(threads: int | None = None) -> ThreadPolicy:
    """Choose the thread policy (``threads``: an explicit count; None: from the CPUs this
    process may use) and apply it; the public ``stitchnas.set_threads``.

    Call it before the first ``import torch`` (directly or through ``stitchnas`` searches) for
    the wait policy to take effect::

        import stitchnas
        stitchnas.set_threads()          # or set_threads(1) for jobs side by side
        result = stitchnas.run_search(cfg, "runs/pooling")

    Returns:
        The policy now in force (``run_config.json`` of the runs started afterwards records it).
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads: expected a whole number >= 1 or None, got {threads!r}")
    return apply(choose_threads(threads))


def current() -> ThreadPolicy:
    """The thread settings in force: the applied policy, or (when nothing was applied, or the
    count was changed since) what torch and the environment say, with source ``"torch"``."""
    torch = sys.modules.get("torch")
    actual = torch.get_num_threads() if torch is not None else None
    if _applied is not None and actual in (None, _applied.num_threads):
        return _applied
    if actual is None:
        actual = _env_threads(os.environ) or affinity_cpus()
    user = [f"{k}={os.environ[k]}" for k in WAIT_VARIABLES if os.environ.get(k, "").strip()]
    wait = " ".join(user) if user else "OpenMP default (spin, then sleep)"
    return ThreadPolicy(int(actual), "torch", affinity_cpus(), cgroup_cpu_quota(), (), wait)


def worker_env() -> dict[str, str]:
    """The wait-policy variables for Ray workers' ``runtime_env`` (they import torch before any
    trial code runs). Empty when the user chose the wait policy: theirs travels as they set it."""
    return dict(_wait(os.environ)[0])


__all__ = [
    "SOURCES",
    "WAIT_ENV",
    "ThreadPolicy",
    "affinity_cpus",
    "apply",
    "cgroup_cpu_quota",
    "choose_threads",
    "idle_cpus",
    "configure",
    "current",
    "parse_threads",
    "ray_assigned_cpus",
    "worker_env",
]
