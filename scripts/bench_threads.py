#!/usr/bin/env python
"""Thread policy (issue 14): a ResNet-20 training step, quiet and beside two CPU-bound
processes, under today's default, the new policy and one thread.

Targets, as ratios of one run: with two CPU-bound processes beside it the new policy's step is
within 2.5x of its quiet step (fair share on 2 CPUs is 2x), and its quiet step is within 10% of
today's default quiet step.

* Step: ResNet-20, the default placement [4,3,3], batch 64, 16x16 inputs, SGD
  (as ``bench_supernet.py``); the median over up to ``--steps`` steps or ``--max-s`` seconds
  (at least 3 steps) after 5 warm-up steps.
* Each measurement is a fresh child process, so the setting's environment is in force before
  torch (and its OpenMP runtime) loads:

  - ``default``: today's default: no thread or wait variables (torch takes every CPU, libgomp
    busy-waits about 300,000 spins);
  - ``policy``: ``stitchnas.core.threads.configure()`` before ``import torch``, as the
    ``stitchnas`` command does;
  - ``1 thread``: ``OMP_NUM_THREADS=1``;
  - ``--setting NAME:KEY=VALUE,...``: any other environment, to explore.

* Busy: two Python processes each running ``while True: pass`` (pure CPU, no threads, no
  memory traffic), started before the child and killed after it.
* Measurements are interleaved (round 1: every setting quiet then busy, round 2 in reverse
  order, ...) so drifting load from other jobs hits every setting alike; the reported number is
  the median over rounds. The load average and CPU pressure (PSI) at the start and the end
  say how quiet "quiet" was.

    python scripts/bench_threads.py [--rounds 3] [--steps 40] [--max-s 8]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
BUSY = "while True: pass"


def child(setting: str, steps: int, max_s: float) -> None:
    """One measurement: print a JSON line with the median step time."""
    if setting == "policy":
        sys.path.insert(0, str(ROOT))
        from stitchnas.core.threads import configure

        policy = configure()
        described = policy.describe()
    import torch

    from searchspace.pooling import resnet20_space
    from supernet.networks import ModelSpec, build_model
    from supernet.training import TrainConfig, build_optimizer, sgd_step

    if setting != "policy":
        described = f"{torch.get_num_threads()} torch thread(s)"
    torch.manual_seed(0)
    space = resnet20_space()
    model = build_model(space, space.default_config(), ModelSpec(1, 10))
    optimizer = build_optimizer(model.parameters(), TrainConfig())
    x, y = torch.randn(64, 1, 16, 16), torch.randint(0, 10, (64,))
    for _ in range(5):
        sgd_step(model, x, y, optimizer, 0.01)
    times: list[float] = []
    start, cpu = time.perf_counter(), time.process_time()
    while len(times) < steps and (time.perf_counter() - start < max_s or len(times) < 3):
        t = time.perf_counter()
        sgd_step(model, x, y, optimizer, 0.01)
        times.append(time.perf_counter() - t)
    print(json.dumps({"median_ms": 1e3 * statistics.median(times), "steps": len(times),
                      "p10_ms": 1e3 * sorted(times)[len(times) // 10],
                      "cpu_ms": 1e3 * (time.process_time() - cpu) / len(times),
                      "threads": torch.get_num_threads(), "policy": described}))


def pressure() -> str:
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    psi = Path("/proc/pressure/cpu")
    some = psi.read_text().splitlines()[0].replace("some ", "") if psi.exists() else "n/a"
    return f"load average {load}; CPU pressure (PSI some) {some}"


def measure(env: dict[str, str], setting: str, busy: bool, args: argparse.Namespace) -> dict:
    procs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(2)] if busy else []
    try:
        time.sleep(0.2 if busy else 0.0)
        out = subprocess.run([sys.executable, __file__, "--child", setting, "--steps", str(args.steps),
                              "--max-s", str(args.max_s)], env=env, cwd=ROOT, capture_output=True, text=True,
                             check=True)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--max-s", type=float, default=8.0)
    p.add_argument("--setting", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                   help="an extra setting to measure, e.g. spin1000:OMP_NUM_THREADS=2,GOMP_SPINCOUNT=1000")
    p.add_argument("--quiet-only", dest="modes", action="store_const", const=(False,), default=(False, True),
                   help="measure without the busy neighbours only (exploring)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        child(args.child, args.steps, args.max_s)
        return
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    clean["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    settings = {"default": ("default", clean), "policy": ("policy", clean),
                "1 thread": ("1 thread", {**clean, "OMP_NUM_THREADS": "1"})}
    for spec in args.setting:
        name, _, assignments = spec.partition(":")
        extra = dict(a.split("=", 1) for a in assignments.split(",") if a)
        settings[name] = (name, {**clean, **extra})
    print(f"start: {pressure()}; {os.cpu_count()} CPUs, affinity {len(os.sched_getaffinity(0))}")
    print(f"busy neighbours: 2 processes running {BUSY!r}; {args.rounds} interleaved rounds, "
          f"each measurement up to {args.steps} steps or {args.max_s:g} s")
    medians: dict[tuple[str, bool], list[float]] = {}
    described: dict[str, str] = {}
    order = list(settings)
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            for busy in [b for b in ((False, True) if r % 2 == 0 else (True, False)) if b in args.modes]:
                child_setting, env = settings[name]
                result = measure(env, child_setting, busy, args)
                medians.setdefault((name, busy), []).append(result["median_ms"])
                described[name] = result["policy"]
                mode = "busy " if busy else "quiet"
                print(f"  round {r + 1} {name:<10} {mode} median {result['median_ms']:8.1f} ms, fastest tenth "
                      f"{result['p10_ms']:7.1f} ms ({result['steps']} steps, CPU {result['cpu_ms']:.0f} ms/step)",
                      flush=True)
    print(f"end: {pressure()}")
    med = {k: statistics.median(v) for k, v in medians.items()}
    print("\nsetting      quiet ms   busy ms   busy/quiet   quiet/default-quiet")
    default_quiet = med[("default", False)]
    for name in settings:
        q, b = med[(name, False)], med.get((name, True), math.nan)
        print(f"{name:<10} {q:10.1f} {b:9.1f} {b / q:10.2f}x {q / default_quiet:14.2f}x   ({described[name]})")
    q, b = med[("policy", False)], med.get(("policy", True), math.nan)
    print(f"\npolicy busy / policy quiet: {b / q:.2f}x (target <= 2.5)")
    print(f"policy quiet / default quiet: {q / default_quiet:.2f}x (target <= 1.10)")


if __name__ == "__main__":
    main()
