#!/usr/bin/env python
"""Ray Tune benchmark: throughput against the in-process loop, per-trial overhead, and the
hypervolume NSGA-II, TPE and random search reach in 50 evaluations on the 455-configuration
ResNet-50 pooling space.

1. Reference (cached): one small ResNet-50-space supernet (4 epochs on 16x16 digits) trained in
   process, then every one of the 455 configurations scored in process, in
   ``<out>/reference`` (a normal run folder: rerunning reuses or resumes it).
2. Throughput, real evaluations: the same ``--candidates`` configurations scored by the
   in-process loop (torch using every core, then one thread; the faster is the baseline) and by
   the Ray Tune backend (exhaustive, ``--candidates-per-trial`` per trial, 1 CPU per trial,
   supernet weights shared through the object store). The accuracies must be identical.
   Ray's rate counts the whole ``Tuner.fit`` (experiment and actor start-up included) but not
   ``ray.init``, which a session pays once.
3. Per-trial overhead: lookup-only trials (tabular mode, no network runs), one candidate per
   trial, at two sizes; the slope is the marginal cost of one trial and the intercept the fixed
   cost of one Tune experiment.
4. Search quality, tabular mode: each trial's evaluation is a lookup of the accuracy the
   exhaustive reference measured, so every sampler sees exactly the numbers real evaluations
   would give, at no compute cost. Hypervolume is taken against the space's fixed reference
   (1.1 x the largest FLOPs of any configuration, accuracy 0) and reported as a fraction of the
   exhaustive front's hypervolume, with the share of the exhaustive front's members found.

Run:  python scripts/bench_tune.py  (about 5-10 minutes on 2 CPU cores once the reference is cached;
the reference itself costs about 4 more minutes on an idle machine). Ray's worker processes run
at nice 0 here (``--worker-niceness``; Ray's default is 15), so on a machine shared with other
work the trials and the in-process loop they are compared with get the CPUs on equal terms.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import torch  # noqa: E402

import stitchnas  # noqa: E402
from searchspace.pooling import PoolingConfig, resnet50_space  # noqa: E402
from stitchnas.data import DataSpec, load_data  # noqa: E402
from stitchnas.search.front import RESULT_COLUMNS  # noqa: E402
from stitchnas.core.io import ResultsTable, load_checkpoint  # noqa: E402
from stitchnas.search.pareto import hypervolume_2d, pareto_front  # noqa: E402
from stitchnas.methods.pooling import (  # noqa: E402
    SUPERNET_CHECKPOINT, PoolingSearchConfig, PoolingTask, select_candidates,
)
from stitchnas.search.candidates import CandidateJob, evaluate_in_process  # noqa: E402
from stitchnas.backends.cluster import ray_session  # noqa: E402
from stitchnas.backends.tune import RayTuneStage, TuneOptions  # noqa: E402
from supernet.evaluation import EvalConfig  # noqa: E402
from supernet.flops import pooling_flops  # noqa: E402
from supernet.networks import ModelSpec, build_supernet  # noqa: E402
from supernet.training import TrainConfig  # noqa: E402


def reference_config(epochs: int) -> PoolingSearchConfig:
    return PoolingSearchConfig(
        space=resnet50_space(), data=DataSpec(name="digits", input_size=16, seed=0),
        train=TrainConfig(epochs=epochs, batch_size=64, lr=0.1, lr_min=0.001, seed=0, device="cpu"),
        eval=EvalConfig(device="cpu", seed=0), export_front=False,
    )


def context(cfg: PoolingSearchConfig, supernet: Any, data: Any, candidates: list[PoolingConfig],
            folder: Path) -> CandidateJob:
    """An evaluation request for ``candidates`` of the trained ``supernet`` (None: lookups only)
    into a fresh ``folder/results.csv``, as a pooling search hands it to its backend."""
    folder.mkdir(parents=True, exist_ok=False)
    table = ResultsTable(folder / "results.csv", RESULT_COLUMNS)
    return CandidateJob(PoolingTask(cfg.space, data, supernet, cfg.eval), table,
                        [cfg.space.index(c) for c in candidates], folder, seed=cfg.train.seed,
                        subset_size=cfg.max_candidates, progress=False, device=cfg.train.device)


def accuracies(ctx: CandidateJob) -> dict[int, float]:
    return {int(r["candidate"]): float(r["val_acc"]) for r in ctx.table.rows()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench_tune", help="benchmark folder (the reference is cached here)")
    parser.add_argument("--epochs", type=int, default=4, help="supernet training epochs of the reference")
    parser.add_argument("--candidates", type=int, default=48, help="configurations in the throughput test")
    parser.add_argument("--candidates-per-trial", type=int, default=8)
    parser.add_argument("--budget", type=int, default=50, help="evaluations per search")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per search algorithm")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="size of the local Ray")
    parser.add_argument("--worker-niceness", type=int, default=0,
                        help="nice value of Ray's worker processes (Ray's default is 15; 0 lets trials compete "
                             "for a shared machine's CPUs on the same terms as the in-process loop)")
    args = parser.parse_args(argv)
    os.environ["RAY_worker_niceness"] = str(args.worker_niceness)  # read when the local Ray starts
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    run = out / f"session-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f} at start; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads by default; "
          f"Ray worker niceness {args.worker_niceness}")

    # 1. the exhaustive reference -------------------------------------------------------
    cfg = reference_config(args.epochs)
    ref_dir = out / "reference"
    start = time.perf_counter()
    reference = stitchnas.run_search(cfg, ref_dir, resume=(ref_dir / "run_config.json").exists(), progress=False)
    rows = {int(r["candidate"]): r for r in reference.rows}
    print(f"reference: {len(rows)} configurations of {cfg.space.name} scored in process "
          f"({time.perf_counter() - start:.1f}s this time; cached in {ref_dir}/results.csv)")
    data = load_data(cfg.data)
    supernet = build_supernet(cfg.space, ModelSpec(data.in_chans, data.num_classes))
    supernet.load_state_dict(load_checkpoint(ref_dir / SUPERNET_CHECKPOINT)["model"])
    lookup = {i: float(r["val_acc"]) for i, r in rows.items()}
    # the space's fixed reference: 1.1 x the largest FLOPs of any configuration, accuracy 0
    ref_point = (1.1 * max(pooling_flops(cfg.space, c, data.input_size, data.in_chans, data.num_classes)
                           for c in cfg.space), 0.0)
    flops = [float(rows[i]["flops"]) for i in sorted(rows)]
    accs = [lookup[i] for i in sorted(rows)]
    full_hv = hypervolume_2d(flops, accs, ref_point)
    full_front = {sorted(rows)[i] for i in pareto_front(flops, accs)}
    print(f"exhaustive front: {len(full_front)} members, hypervolume {full_hv:.6g} "
          f"(reference {ref_point[0] / 1e6:.3f} MFLOPs, accuracy 0)")
    # Against the space reference most of the area is the trivially covered band below the
    # worst accuracy, so fractions crowd near 1; the front's own nadir separates the samplers.
    front_flops = [float(rows[i]["flops"]) for i in full_front]
    nadir = (1.1 * max(front_flops), 0.95 * min(lookup[i] for i in full_front))
    nadir_hv = hypervolume_2d(flops, accs, nadir)

    results: dict[str, Any] = {"reference_hypervolume": full_hv, "front_size": len(full_front)}
    subset = select_candidates(cfg.space, args.candidates, seed=1)
    cores = torch.get_num_threads()
    with TimedRaySession(args.cpus, results):
        # 2. throughput ------------------------------------------------------------------
        local_rates = {}
        local_acc: dict[int, float] = {}
        for threads in sorted({cores, 1}, reverse=True):
            torch.set_num_threads(threads)
            ctx = context(cfg, supernet, data, subset, run / f"local-{threads}t")
            start = time.perf_counter()
            evaluate_in_process(ctx)
            local_rates[threads] = len(subset) / (time.perf_counter() - start)
            local_acc = accuracies(ctx)
        torch.set_num_threads(cores)
        ctx = context(cfg, supernet, data, subset, run / "ray-throughput")
        stage = RayTuneStage(TuneOptions(search="exhaustive", candidates_per_trial=args.candidates_per_trial,
                                         cpus_per_trial=1))
        stage.evaluate(ctx)
        assert stage.summary is not None
        summary = stage.summary
        ray_rate = len(subset) / summary.wall_s
        steady = len(subset) / max(summary.span_s, 1e-9)
        same = accuracies(ctx) == local_acc
        best = max(local_rates.values())
        for threads, rate in local_rates.items():
            print(f"in-process loop, {threads} torch thread(s): {len(subset)} candidates, {rate:.3f} cand/s")
        print(f"ray tune, {summary.concurrency} x 1-CPU trials, {args.candidates_per_trial} candidates/trial: "
              f"{summary.trials} trials, {ray_rate:.3f} cand/s over the whole Tuner.fit ({summary.wall_s:.1f}s, "
              f"of which {summary.startup_s:.1f}s before the first trial ran); {steady:.3f} cand/s once running")
        print(f"throughput ratio ray / best in-process: {ray_rate / best:.2f} whole fit, {steady / best:.2f} once "
              f"running (target >= 0.8); accuracies identical: {same}")
        results["throughput"] = {"local_cand_per_s": local_rates, "ray_cand_per_s": ray_rate,
                                 "ray_steady_cand_per_s": steady, "ratio": ray_rate / best,
                                 "ratio_steady": steady / best, "identical": same, "summary": summary.__dict__}

        # 3. per-trial overhead (lookup trials) ------------------------------------------
        n = 96
        ctx = context(cfg, None, data, cfg.space.configurations()[:n], run / f"overhead-{n}")
        stage = RayTuneStage(TuneOptions(search="exhaustive", candidates_per_trial=1), lookup=lookup)
        stage.evaluate(ctx)
        summary = stage.summary
        assert summary is not None and summary.trials == n
        per_trial = summary.span_s * summary.concurrency / n
        print(f"per-trial overhead ({n} one-lookup trials on {summary.concurrency} reused actors): "
              f"{per_trial * 1000:.0f} ms of actor time per trial ({summary.span_s:.1f}s from first start to last "
              f"end); {summary.startup_s:.1f}s experiment start-up; {summary.wall_s:.1f}s Tuner.fit in all")
        results["overhead"] = {"per_trial_s": per_trial, "summary": summary.__dict__}

        # 4. search quality (tabular) ----------------------------------------------------
        print(f"search quality after {args.budget} evaluations (tabular: lookups of the exhaustive scores), "
              f"hypervolume as a fraction of the exhaustive front's; front-nadir reference "
              f"({nadir[0] / 1e6:.3f} MFLOPs, {nadir[1]:.2f}% accuracy):")
        quality: dict[str, Any] = {}
        for algorithm in ("nsga2", "tpe", "random"):
            fractions, tight, found, walls_s = [], [], [], []
            for seed in range(args.seeds):
                ctx = context(cfg, None, data, [], run / f"{algorithm}-seed{seed}")
                stage = RayTuneStage(TuneOptions(search=algorithm, budget=args.budget, seed=seed,
                                                 candidates_per_trial=args.candidates_per_trial), lookup=lookup)
                stage.evaluate(ctx)
                assert stage.summary is not None
                got = ctx.table.rows()
                assert len(got) == args.budget and len({r["candidate"] for r in got}) == args.budget
                hv = hypervolume_2d([r["flops"] for r in got], [r["val_acc"] for r in got], ref_point)
                fractions.append(hv / full_hv)
                tight.append(hypervolume_2d([r["flops"] for r in got], [r["val_acc"] for r in got], nadir) / nadir_hv)
                found.append(len(full_front & {int(r["candidate"]) for r in got}))
                walls_s.append(stage.summary.wall_s)
            quality[algorithm] = {"hv_fraction": fractions, "hv_fraction_front_nadir": tight,
                                  "front_members_found": found, "wall_s": walls_s}
            print(f"  {algorithm:<7} space reference: mean {statistics.mean(fractions):.4f} "
                  f"({' '.join(f'{f:.4f}' for f in fractions)}); front-nadir reference: mean "
                  f"{statistics.mean(tight):.3f} ({' '.join(f'{f:.3f}' for f in tight)}); exhaustive-front "
                  f"members found {'/'.join(str(n) for n in found)} of {len(full_front)}; "
                  f"Tuner.fit {statistics.mean(walls_s):.1f}s per search")
        results["quality"] = quality
    (run / "bench.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"load average at end {os.getloadavg()[0]:.2f}; details: {run / 'bench.json'}")
    return 0


class TimedRaySession:
    """``ray_session`` that reports how long starting the local Ray took."""

    def __init__(self, cpus: int, results: dict[str, Any]) -> None:
        self.session = ray_session(num_cpus=cpus)
        self.results = results

    def __enter__(self) -> None:
        start = time.perf_counter()
        self.session.__enter__()
        self.results["ray_init_s"] = time.perf_counter() - start
        print(f"ray.init (local, {os.cpu_count()} cores, 127.0.0.1): {self.results['ray_init_s']:.1f}s, paid once")

    def __exit__(self, *exc: Any) -> bool | None:
        return self.session.__exit__(*exc)


if __name__ == "__main__":
    sys.exit(main())
