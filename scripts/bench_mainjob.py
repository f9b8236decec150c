"""The README's main job (``stitchnas search pooling``) against its physical limit.

The limit is what the job cannot avoid: its supernet training steps (the same data, recipe,
epochs and batch size, through the same training loop, without checkpoints), one validation
forward pass per candidate (36 placements over ``search_val``) and, for each member of the
job's front, the ``torch.export`` program every export must write (issue 16: trace with a
dynamic batch, then ``torch.export.save``). Everything else (imports, data loading, BatchNorm
re-calibration, the front, the exports' test-set scores and checks, file writes) is overhead.
Issue 14's target: the main job within 1.2x its limit.

Both sides run in fresh child processes with the same thread policy, interleaved
(job, limit, job, limit, ...), so drifts in machine load hit both alike; medians are reported.

    python scripts/bench_mainjob.py [--repeats 3] [--threads N] [--busy 2] [--before DIR]

``--busy N`` keeps N CPU-bound processes (pure-Python loops) running beside both sides, as on
a shared machine. ``--before DIR`` also times the job of another source tree (e.g. a
``git worktree`` of an older commit, run through ``PYTHONPATH``), interleaved with this one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The limit, in a child process: train the supernet exactly as the default search does, then
# one validation forward per candidate, then the front's torch.export programs. Prints JSON with
# the three parts in seconds.
LIMIT_CHILD = r"""
import io, json, sys, time
from stitchnas.core.threads import configure
configure(int(sys.argv[2]) if sys.argv[2] else None)  # the policy the job's console script applies
import torch
import torch._dynamo  # noqa: F401  (an optimizer's first step imports it: an import, not a step)
from stitchnas.core.evaluation import accuracy
from stitchnas.data import load_data
from stitchnas.methods.pooling import PoolingSearchConfig
from supernet.networks import ModelSpec, build_model, build_supernet
from supernet.training import train

cfg = PoolingSearchConfig.from_json(json.load(open(sys.argv[1])))  # the job's own run_config.json
data = load_data(cfg.data)
supernet = build_supernet(cfg.space, ModelSpec(data.in_chans, data.num_classes))
start = time.perf_counter()
train(supernet, data.search_train, cfg.train, choose_path=supernet.sample_active, progress=False)
train_s = time.perf_counter() - start
start = time.perf_counter()
for config in cfg.space.configurations():
    supernet.set_active(config)
    accuracy(supernet, data.search_val, cfg.eval.batch_size, cfg.eval.device)
forward_s = time.perf_counter() - start
front = json.load(open(sys.argv[3]))["front"]  # the job's own pareto.json
start = time.perf_counter()
for member in front:
    config = cfg.space.config(member["candidate"])
    model = build_model(cfg.space, config, ModelSpec(data.in_chans, data.num_classes)).eval()
    example = torch.randn(2, data.in_chans, data.input_size, data.input_size)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(program, io.BytesIO())
print(json.dumps({"train_s": train_s, "forward_s": forward_s, "export_s": time.perf_counter() - start,
                  "exports": len(front)}))
"""


def run_job(threads: int | None, out: Path, source: Path | None = None) -> float:
    """Wall time of ``stitchnas search pooling`` run as a user runs it (the console script's entry
    point), from this tree or from ``source`` (whose code is put first on ``PYTHONPATH``)."""
    cmd = [sys.executable, "-c", "import sys; from stitchnas.cli import main; sys.exit(main())",
           "search", "pooling", "--out", str(out), "--no-progress"]
    if threads is not None:
        cmd += ["--threads", str(threads)]  # an option of the command, after its name
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(source), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    start = time.perf_counter()
    # cwd: out's parent, never a source tree (``python -c`` puts the working directory first on
    # sys.path, ahead of PYTHONPATH: run from this checkout, ``source`` would be ignored).
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=out.parent)
    return time.perf_counter() - start


def start_busy(count: int) -> list[subprocess.Popen[bytes]]:
    """``count`` CPU-bound processes (a pure-Python loop each: no threads of their own)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def run_limit(run_dir: Path, threads: int | None) -> dict[str, float]:
    """The limit's parts (``train_s``, ``forward_s``, ``export_s``) for the job run in ``run_dir``."""
    done = subprocess.run([sys.executable, "-c", LIMIT_CHILD, str(run_dir / "run_config.json"),
                           "" if threads is None else str(threads), str(run_dir / "pareto.json")],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _limit(part: dict[str, float]) -> float:
    return part["train_s"] + part["forward_s"] + part["export_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="passed to both sides (default: the policy's)")
    parser.add_argument("--busy", type=int, default=0, help="CPU-bound processes running beside it")
    parser.add_argument("--before", type=Path, default=None, help="source tree of the 'before' job")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average at start {open('/proc/loadavg').read().split()[0]}, "
          f"{args.busy} busy processes beside it, {time.strftime('%Y-%m-%d %H:%M')}")
    jobs, limits, befores = [], [], []
    busy = start_busy(args.busy)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.repeats):
                if args.before is not None:
                    befores.append(run_job(None, Path(tmp) / f"before{r}", args.before))
                    print(f"repeat {r + 1}: before {befores[-1]:.1f} s", flush=True)
                jobs.append(run_job(args.threads, Path(tmp) / f"job{r}"))
                limits.append(run_limit(Path(tmp) / f"job{r}", args.threads))
                part = limits[-1]
                print(f"repeat {r + 1}: job {jobs[-1]:.1f} s | limit {_limit(part):.1f} s "
                      f"(train {part['train_s']:.1f} s + 36 forwards {part['forward_s']:.1f} s "
                      f"+ {part['exports']} torch.export programs "
                      f"{part['export_s']:.1f} s)", flush=True)
            config = json.loads((Path(tmp) / "job0" / "run_config.json").read_text())
    finally:
        for proc in busy:
            proc.kill()
    job = statistics.median(jobs)
    limit = statistics.median(_limit(p) for p in limits)
    print(f"threads recorded by the job: {config.get('threads', 'not recorded')}")
    print(f"main job median {job:.1f} s, limit median {limit:.1f} s: ratio {job / limit:.2f} (target <= 1.2)")
    if befores:
        before = statistics.median(befores)
        print(f"before ({args.before}) median {before:.1f} s: after / before {job / before:.2f}")


if __name__ == "__main__":
    main()
