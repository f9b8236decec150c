"""Measured latency against FLOPs as the cost axis of a front (issue 16, "Latency as a cost axis").

Two spaces, each with the validation accuracies of a real search:

* ``resnet20``: the pooling search of the main job (``stitchnas search pooling`` with its defaults:
  36 placements, embedded digits at 16x16, 40 epochs), or ``--pooling-run DIR``;
* ``snnet``: SN-Net on the three anchors the stitching benches use (``vit_digits_tiny/small/base``,
  depth 12, trained standalone by ``stitchnas anchors train``, then ``stitchnas stitch train``: 71
  configurations), or ``--stitch-run DIR``.

Then the latency of every configuration's standalone module (what ``--cost latency`` measures:
:func:`stitchnas.search.cost.measure_latency`, eval mode, ``torch.inference_mode``, float32,
warm-up discarded, median of the timed passes) at each ``--batch``, on ``--device`` with
``--threads`` torch threads, in ``--rounds`` interleaved rounds (every configuration once per
round, in a new shuffled order, so load drifting during the run hits all alike; the latency is the
median of the round medians). Printed per space and batch: Kendall tau (and Spearman rho) between
FLOPs and latency, the FLOPs front and the latency front (FLOPs lower / latency lower, accuracy
higher), and how many members of the FLOPs front the latency front dominates (are not on it),
with the machine, threads and load at the start and the end.

    python scripts/bench_latency.py --out runs/bench_latency            # both spaces, batch 1 and 64
    python scripts/bench_latency.py --quick --out /tmp/bench_latency    # smoke run (tiny training)

Searches already finished in ``--out`` (or given with ``--pooling-run`` / ``--stitch-run``) are
reused; their training and logs are in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from benchlib import machine_state

from stitchnas.core.io import ResultsTable
from stitchnas.core.records import RESULT_COLUMNS
from stitchnas.methods import method_from_run
from stitchnas.search.cost import LatencyStats, machine_name, measure_latency
from stitchnas.search.pareto import pareto_front
from stitchnas.studies.ranking import kendall_tau, spearman_rho

CLI = "import sys; from stitchnas.cli.main import main; sys.exit(main(sys.argv[1:]))"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_latency")
    p.add_argument("--spaces", nargs="+", default=["resnet20", "snnet"], choices=["resnet20", "snnet"])
    p.add_argument("--pooling-run", default=None, help="a finished resnet20 pooling search to take accuracies from")
    p.add_argument("--stitch-run", default=None, help="a finished SN-Net search (vit_digits anchors) to use")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 64], help="batch sizes to time (default 1 64)")
    p.add_argument("--warmup", type=int, default=10, help="untimed passes per configuration and round")
    p.add_argument("--repeats", type=int, default=30, help="timed passes per configuration and round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median of the round medians)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=1, help="torch threads while timing (and training)")
    p.add_argument("--anchor-epochs", type=int, default=30, help="'stitchnas anchors train' epochs (its default)")
    p.add_argument("--stitch-epochs", type=int, default=10, help="'stitchnas stitch train' epochs (its default)")
    p.add_argument("--pooling-epochs", type=int, default=40, help="'stitchnas search pooling' epochs (its default)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny training (1 epoch, 8x8 images, depth-2 anchors), batch 1 only, "
                        "1 round of 1 warm-up + 3 timed passes")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.warmup, args.repeats, args.rounds = [1], 1, 3, 1
        args.anchor_epochs = args.stitch_epochs = args.pooling_epochs = 1
    for name in ("warmup", "repeats", "rounds", "threads"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            p.error(f"--{name}: expected a whole number >= {0 if name == 'warmup' else 1}")
    if min(args.batch) < 1:
        p.error("--batch: expected whole numbers >= 1")
    return args


# --------------------------------------------------------------------------- the searches
def cli(args: argparse.Namespace, log: Path, *argv: str) -> None:
    """One ``stitchnas`` command in a fresh process (output appended to ``log``); exits on failure."""
    command = [sys.executable, "-c", CLI, *argv, "--threads", str(args.threads)]
    with log.open("a") as handle:
        handle.write(f"$ stitchnas {' '.join(argv)}\n")
        handle.flush()
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"bench_latency: 'stitchnas {' '.join(argv)}' failed ({done.returncode}); see {log}")


def resumable(run: Path) -> list[str]:
    return ["--resume"] if (run / "run_config.json").exists() else []


def pooling_run(args: argparse.Namespace, out: Path) -> Path:
    if args.pooling_run:
        return Path(args.pooling_run)
    run = out / "pooling"
    if not (run / "pareto.json").exists():
        quick = ["--input-size", "8", "--width-scale", "0.25"] if args.quick else []
        cli(args, out / "log.txt", "search", "pooling", "--out", str(run), "--epochs", str(args.pooling_epochs),
            "--no-export", "--no-progress", *quick, *resumable(run))
    return run


def stitch_run(args: argparse.Namespace, out: Path) -> Path:
    if args.stitch_run:
        return Path(args.stitch_run)
    anchors, run = out / "anchors", out / "stitch"
    quick = ["--input-size", "8", "--max-train-samples", "240"] if args.quick else []
    if not (run / "pareto.json").exists():  # anchors train --resume keeps the anchors already trained
        depth = ["--depth", "2"] if args.quick else []
        cli(args, out / "log.txt", "anchors", "train", "--family", "vit_digits", "--out", str(anchors),
            "--epochs", str(args.anchor_epochs), "--no-progress", *depth, *quick, *resumable(anchors))
    if not (run / "pareto.json").exists():
        cli(args, out / "log.txt", "stitch", "train", "--anchors", str(anchors), "--out", str(run),
            "--epochs", str(args.stitch_epochs), "--no-export", "--no-progress", *quick, *resumable(run))
    return run


# --------------------------------------------------------------------------- measuring
@dataclass
class Space:
    name: str
    run: Path
    labels: list[str]
    flops: np.ndarray
    accuracy: np.ndarray  # NaN: not scored
    latency: dict[int, np.ndarray]  # batch -> ms per configuration
    spread: dict[int, float]  # batch -> median over configurations of the IQR / median of the timed passes


def measure_space(name: str, run: Path, args: argparse.Namespace) -> Space:
    method = method_from_run(run)
    data = method.load_data()
    network = method.load_trained(run, data)
    task = method.task(network, data)
    n = len(task)
    scored = {int(r["candidate"]): r for r in ResultsTable(run / "results.csv", RESULT_COLUMNS).rows()}
    accuracy = np.array([float(scored[i]["val_acc"]) if i in scored and scored[i]["status"] == "ok" else math.nan
                         for i in range(n)])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        models = [task.standalone(i) for i in range(n)]
    shape = task.input_shape()
    rounds: dict[int, list[list[LatencyStats]]] = {b: [[] for _ in range(n)] for b in args.batch}
    start = time.perf_counter()
    for r in range(args.rounds):
        order = list(range(n))
        random.Random(r).shuffle(order)
        for i in order:
            for b in args.batch:
                rounds[b][i].append(measure_latency(models[i], shape, b, args.device, args.warmup, args.repeats))
    print(f"  measured {n} configurations x {len(args.batch)} batch size(s) x {args.rounds} round(s) in "
          f"{time.perf_counter() - start:.0f} s")
    latency = {b: np.array([statistics.median(s.median_ms for s in per) for per in rounds[b]]) for b in args.batch}
    spread = {b: statistics.median(statistics.median((s.q3_ms - s.q1_ms) / s.median_ms for s in per)
                                   for per in rounds[b]) for b in args.batch}
    return Space(name, run, [task.describe(i) for i in range(n)], np.array([task.flops(i) for i in range(n)], float),
                 accuracy, latency, spread)


# --------------------------------------------------------------------------- report
def report(space: Space, batch: int) -> dict:
    latency = space.latency[batch]
    tau = kendall_tau(space.flops, latency)
    rho = spearman_rho(space.flops, latency)
    ok = np.flatnonzero(np.isfinite(space.accuracy))
    by_flops = {int(ok[i]) for i in pareto_front(space.flops[ok], space.accuracy[ok])}
    by_latency = {int(ok[i]) for i in pareto_front(latency[ok], space.accuracy[ok])}
    dominated = sorted(by_flops - by_latency, key=lambda i: space.flops[i])
    print(f"\n{space.name}, batch {batch}: {len(space.flops)} configurations, latency {latency.min():.3f}-"
          f"{latency.max():.3f} ms (median IQR/median of the timed passes {100 * space.spread[batch]:.1f}%)")
    print(f"  Kendall tau (FLOPs, latency) {tau:.3f}, Spearman rho {rho:.3f}")
    print(f"  FLOPs front {len(by_flops)}, latency front {len(by_latency)}; FLOPs-front members not on the latency "
          f"front (dominated there): {len(dominated)} of {len(by_flops)}")
    shown = sorted(by_flops | by_latency, key=lambda i: space.flops[i])
    width = max(len("configuration"), *(len(space.labels[i]) for i in shown))
    print(f"  | {'configuration':<{width}} | MFLOPs | latency ms | val acc % | FLOPs front | latency front |")
    print(f"  |{'-' * (width + 2)}|-------:|-----------:|----------:|:-----------:|:-------------:|")
    for i in shown:
        print(f"  | {space.labels[i]:<{width}} | {space.flops[i] / 1e6:6.3f} | {latency[i]:10.4f} | "
              f"{space.accuracy[i]:9.2f} | {'x' if i in by_flops else '':^11} | {'x' if i in by_latency else '':^13} |")
    return {"space": space.name, "batch": batch, "configurations": len(space.flops), "kendall_tau": tau,
            "spearman_rho": rho, "flops_front": sorted(by_flops), "latency_front": sorted(by_latency),
            "dominated_on_latency": dominated, "latency_ms": latency.tolist(), "flops": space.flops.tolist(),
            "val_acc": [None if math.isnan(a) else a for a in space.accuracy], "labels": space.labels,
            "spread": space.spread[batch]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M")
    print(f"# bench_latency {started}{' (--quick)' if args.quick else ''}: {machine_state()}")
    print(f"# timing on {args.device} ({machine_name(args.device)}), {torch.get_num_threads()} torch thread(s), "
          f"torch {torch.__version__}; per configuration and round {args.warmup} warm-up + {args.repeats} timed "
          f"passes, {args.rounds} interleaved round(s), batch {', '.join(map(str, args.batch))}")
    runs = {}
    if "resnet20" in args.spaces:
        runs["resnet20"] = pooling_run(args, out)
    if "snnet" in args.spaces:
        runs["snnet"] = stitch_run(args, out)
    print(f"# after training: {machine_state()}")
    results = []
    for name, run in runs.items():
        print(f"\n## {name}: {run}")
        space = measure_space(name, run, args)
        results += [report(space, b) for b in args.batch]
    print(f"\n# end {time.strftime('%Y-%m-%d %H:%M')}: {machine_state()}")
    (out / "latency_bench.json").write_text(json.dumps({"args": vars(args), "started": started,
                                                        "results": results}, indent=1))
    print(f"results: {(out / 'latency_bench.json').resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
