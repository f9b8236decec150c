#!/usr/bin/env python
"""Ray Tune for the stitching searches (SN-Net, SN-Netv2, Learngene Pool): throughput against the
in-process loop with identical accuracies, and how NSGA-II, TPE and random search do on a
stitch space with a third of its configurations as budget.

For each finished run folder given (``stitchnas stitch train`` or ``stitchnas learngene pool``):

1. Throughput, real evaluations: every configuration scored by the in-process loop (one torch
   thread) and by the Ray Tune backend (exhaustive, ``--candidates-per-trial`` per trial, 1 CPU
   per trial, the stitched network shared once through the object store). Accuracies must be
   identical. Ray's rate counts the whole ``Tuner.fit`` but not ``ray.init`` (paid once).
2. Search quality, tabular: trials look up the in-process scores, so each sampler sees the numbers
   real evaluations would give. Hypervolume against 1.1 x the space's largest FLOPs (accuracy 0)
   and against a tight reference (1.1 x the front's largest FLOPs, the space's worst accuracy),
   as a fraction of the exhaustive front's.

Run:  python scripts/bench_tune_stitch.py --run runs/bench_stitch_v2/v1 --run runs/bench_stitch_v2/v2 \\
          --run runs/bench_learngene/pool
(the folders ``scripts/bench_stitch_v2.py`` and ``scripts/bench_learngene.py`` write;
a few minutes on 2 CPU cores). Ray's workers run at nice 0 (``--worker-niceness``), so trials
and the in-process loop get the CPUs on equal terms on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import torch  # noqa: E402

from stitchnas.search.candidates import CandidateJob, evaluate_in_process  # noqa: E402
from stitchnas.search.front import RESULT_COLUMNS  # noqa: E402
from stitchnas.core.io import ResultsTable  # noqa: E402
from stitchnas.search.pareto import hypervolume_2d, pareto_front  # noqa: E402
from stitchnas.backends.cluster import ray_session  # noqa: E402
from stitchnas.methods import method_from_run  # noqa: E402
from stitchnas.methods.learngene import LearngenePoolMethod  # noqa: E402
from stitchnas.methods.snnet import SNNetMethod, StitchTask  # noqa: E402
from stitchnas.backends.tune import RayTuneStage, TuneOptions  # noqa: E402


def load_network(run: Path) -> tuple[str, Any, Any, int]:
    """(method, network, data, eval batch size) of a stitch or learngene-pool run."""
    method = method_from_run(run)
    if isinstance(method, SNNetMethod):
        name = "SN-Netv2" if method.cfg.version == "v2" else "SN-Net"
    elif isinstance(method, LearngenePoolMethod):
        name = "Learngene Pool"
    else:
        raise ValueError(f"run folder {run}: not a stitch or learngene-pool run")
    data = method.load_data()
    return name, method.load_trained(run, data), data, method.cfg.eval_batch_size


def job(task: StitchTask, folder: Path, candidates: list[int]) -> CandidateJob:
    folder.mkdir(parents=True, exist_ok=False)
    return CandidateJob(task, ResultsTable(folder / "results.csv", RESULT_COLUMNS), candidates, folder,
                        progress=False)


def scores(j: CandidateJob) -> dict[int, float]:
    return {int(r["candidate"]): float(r["val_acc"]) for r in j.table.rows()}


def bench_run(run: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    method, network, data, batch_size = load_network(run)
    task = StitchTask(network.eval(), data, batch_size)
    everything = list(range(len(task)))
    print(f"\n== {method}: {run} ({len(task)} configurations)")

    torch.set_num_threads(1)
    local = job(task, out / "local", everything)
    start = time.perf_counter()
    evaluate_in_process(local)
    local_rate = len(task) / (time.perf_counter() - start)
    reference = scores(local)

    stage = RayTuneStage(TuneOptions(search="exhaustive", candidates_per_trial=args.candidates_per_trial))
    remote = job(task, out / "ray", everything)
    stage.evaluate(remote)
    summary = stage.summary
    assert summary is not None
    ray_rate = len(task) / summary.wall_s
    identical = scores(remote) == reference
    print(f"in-process, 1 thread: {local_rate:.2f} cfg/s; ray tune, {summary.concurrency} x 1-CPU trials, "
          f"{summary.trials} trials: {ray_rate:.2f} cfg/s over the whole Tuner.fit ({summary.wall_s:.1f}s, "
          f"{summary.startup_s:.1f}s before the first trial); ratio {ray_rate / local_rate:.2f}; "
          f"accuracies identical: {identical}")

    flops = [task.flops(i) for i in everything]
    accs = [reference[i] for i in everything]
    space_ref = (1.1 * max(flops), 0.0)
    front = {everything[i] for i in pareto_front(flops, accs)}
    # Tight reference: just past the front's dearest member, at the worst accuracy of the space
    # (the front's own worst accuracy would give a one-member front no area at all).
    tight_ref = (1.1 * max(flops[i] for i in front), min(accs))
    full_hv, tight_hv = hypervolume_2d(flops, accs, space_ref), hypervolume_2d(flops, accs, tight_ref)
    budget = args.budget or max(4, len(task) // 3)
    quality: dict[str, Any] = {}
    print(f"search quality, {budget} of {len(task)} evaluations (tabular), hypervolume as a fraction of the "
          f"exhaustive front's ({len(front)} members):")
    for algorithm in ("nsga2", "tpe", "random"):
        fractions, tight, found = [], [], []
        for seed in range(args.seeds):
            stage = RayTuneStage(TuneOptions(search=algorithm, budget=budget, seed=seed), lookup=reference)
            searched = job(task, out / f"{algorithm}-seed{seed}", [])
            stage.evaluate(searched)
            got = searched.table.rows()
            assert len(got) == budget == len({r["candidate"] for r in got})
            f, a = [r["flops"] for r in got], [r["val_acc"] for r in got]
            fractions.append(hypervolume_2d(f, a, space_ref) / full_hv)
            tight.append(hypervolume_2d(f, a, tight_ref) / tight_hv)
            found.append(len(front & {int(r["candidate"]) for r in got}))
        quality[algorithm] = {"hv_fraction": fractions, "hv_fraction_tight": tight, "front_found": found}
        print(f"  {algorithm:<7} space reference {statistics.mean(fractions):.4f}; tight reference "
              f"{statistics.mean(tight):.3f} ({' '.join(f'{v:.3f}' for v in tight)}); front members found "
              f"{statistics.mean(found):.1f} of {len(front)}")
    return {"method": method, "run": str(run), "configurations": len(task), "local_cfg_per_s": local_rate,
            "ray_cfg_per_s": ray_rate, "ratio": ray_rate / local_rate, "identical": identical,
            "tune_summary": summary.__dict__, "budget": budget, "quality": quality}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="a stitch or learngene-pool run (repeatable)")
    parser.add_argument("--out", default="runs/bench_tune_stitch")
    parser.add_argument("--candidates-per-trial", type=int, default=8)
    parser.add_argument("--budget", type=int, default=None, help="evaluations per search (default: a third)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per search algorithm")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="size of the local Ray")
    parser.add_argument("--worker-niceness", type=int, default=0,
                        help="nice value of Ray's workers (Ray's default 15 starves trials on a busy machine)")
    args = parser.parse_args(argv)
    os.environ["RAY_worker_niceness"] = str(args.worker_niceness)  # read when the local Ray starts
    out = Path(args.out) / time.strftime("session-%Y%m%d-%H%M%S")
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}; outputs: {out}")
    results = []
    with ray_session(num_cpus=args.cpus):
        for i, run in enumerate(args.run):
            results.append(bench_run(Path(run), out / f"{i}_{Path(run).name}", args))
    (out / "bench.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\ndetails: {out / 'bench.json'}; load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
