"""Ranking benchmark for pooling search: one supernet (M=1) against BMS mixtures (M=2, 4, ...)
and the GM-style split, each ranked against standalone ground truth.

Every search is an ordinary resumable run folder under ``--out``; rerunning the script skips
finished work. Ground truth comes from ``stitchnas truth pooling`` folders (``--truth``, one or
more, e.g. one per seed) made with the same space and data.

    python scripts/bench_ranking.py --truth runs/truth_s0 --truth runs/truth_s1 \
        --ms 1,2,4 --seeds 0,1 --out runs/bench_ranking

Prints Kendall tau, Spearman rho, top-3 overlap and regret per (M, seed), their means, the
paper's CIFAR-10 Kendall tau beside ours, and the BatchNorm-mode comparison for M=1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import stitchnas
from searchspace.pooling import resnet20_space
from stitchnas.data import DataSpec
from stitchnas.methods.pooling import PoolingSearchConfig
from stitchnas.studies.report import rank_run
from stitchnas.studies.truth import seed_noise
from supernet.bms import MixtureConfig
from supernet.evaluation import EvalConfig
from supernet.training import TrainConfig

# Kendall tau between supernet and standalone accuracy over the 36 ResNet-20 placements on
# CIFAR-10, as published in the BMS paper (Figure 3).
PAPER_TAU = {1: 0.142, 2: 0.311, 4: 0.533, 8: 0.530}


def search_config(m: int, seed: int, args: argparse.Namespace, grouping: str = "bms", bn_mode: str = "recalibrate") -> PoolingSearchConfig:
    return PoolingSearchConfig(
        space=resnet20_space(width_scale=args.width_scale),
        data=DataSpec(name="cluttered_digits", input_size=args.input_size, seed=0,
                      options={"canvas_size": args.input_size, "renders_per_image": 2}),
        train=TrainConfig(epochs=args.epochs, batch_size=32, lr=0.1, seed=seed, device="cpu"),
        eval=EvalConfig(bn_mode=bn_mode, calib_batches=8, seed=seed),
        export_front=False,
        mixture=MixtureConfig(num_supernets=m, t_max=args.t_max, grouping=grouping) if m > 1 else None,
    )


def bn_mode_comparison(run: Path, truth_dirs: list[str]) -> tuple[float, float]:
    """Kendall tau of one trained M=1 supernet scored with per-batch BatchNorm statistics and
    with re-calibrated statistics (read from the run's own results)."""
    from dataclasses import replace

    from stitchnas.data import load_data
    from stitchnas.core.io import load_checkpoint, read_json
    from stitchnas.studies.ranking import kendall_tau
    from stitchnas.studies.report import search_estimates
    from stitchnas.studies.truth import load_truth
    from supernet.evaluation import evaluate_path
    from supernet.networks import ModelSpec, build_supernet

    path = run / "run_config.json"
    cfg = PoolingSearchConfig.from_json(read_json(path, "run config"), f"run config {path}")
    data = load_data(cfg.data)
    supernet = build_supernet(cfg.space, ModelSpec(data.in_chans, data.num_classes))
    supernet.load_state_dict(load_checkpoint(run / "supernet.pt")["model"])
    truth = load_truth(truth_dirs, cfg.space)
    batch_cfg = replace(cfg.eval, bn_mode="batch")
    keys = [str(i) for i in range(len(cfg.space))]
    batch = [evaluate_path(supernet, cfg.space.config(int(k)), data.search_train, data.search_val, batch_cfg) for k in keys]
    _, recal = search_estimates(run)
    truth_values = [truth[k] for k in keys]
    return kendall_tau(batch, truth_values), kendall_tau([recal[k] for k in keys], truth_values)


def flops_baseline(truth_dirs: list[str]) -> dict:
    """The ranking FLOPs alone give (more compute, higher rank) against the ground truth."""
    from stitchnas.studies.ranking import kendall_tau
    from stitchnas.studies.truth import read_truth_rows

    rows = read_truth_rows(truth_dirs)
    per_config = rows.groupby(["candidate", "label"], as_index=False).agg(acc=("test_acc", "mean"),
                                                                          flops=("flops", "first"))
    dearest = per_config.loc[per_config["flops"].idxmax()]
    return {"kendall_tau": kendall_tau(per_config["flops"].tolist(), per_config["acc"].tolist()),
            "picked": dearest["label"], "regret": float(per_config["acc"].max() - dearest["acc"])}


def search_agreement(folders: list[Path]) -> float:
    """Mean Kendall tau between the scores two search seeds of one method give (NaN for one
    seed): how reproducible the method's own ranking is."""
    from itertools import combinations

    from stitchnas.studies.ranking import kendall_tau
    from stitchnas.studies.report import search_estimates

    scores = [search_estimates(f)[1] for f in folders]
    taus = []
    for a, b in combinations(scores, 2):
        keys = sorted(set(a) & set(b), key=int)
        taus.append(kendall_tau([a[k] for k in keys], [b[k] for k in keys]))
    return statistics.mean(taus) if taus else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--truth", action="append", required=True, help="ground-truth folder (repeatable)")
    parser.add_argument("--ms", default="1,2,4", help="mixture sizes M")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--gm", action="store_true", help="also run the GM-style split (M: --gm-m)")
    parser.add_argument("--gm-m", type=int, default=None, help="M of the GM-style split (default: the largest of --ms)")
    parser.add_argument("--bn-compare", action="store_true", help="also score M=1 with per-batch BatchNorm statistics")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--t-max", type=float, default=100.0)
    parser.add_argument("--width-scale", type=float, default=0.5)
    parser.add_argument("--input-size", type=int, default=24)
    parser.add_argument("--out", default="runs/bench_ranking")
    parser.add_argument("--search-only", action="store_true", help="run the searches, skip ranking")
    parser.add_argument("--rank-only", action="store_true",
                        help="rank finished search folders (results.csv) without running or resuming searches")
    parser.add_argument("--partial-truth", action="store_true",
                        help="rank on the configurations the ground truth covers (a subset study)")
    args = parser.parse_args()
    out = Path(args.out)
    ms = [int(m) for m in args.ms.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]

    runs: list[tuple[str, int, int, Path]] = []
    for m in ms:
        for seed in seeds:
            runs.append((f"M={m}", m, seed, out / f"m{m}_s{seed}"))
    if args.gm:
        gm_m = args.gm_m or max(ms)
        for seed in seeds:
            runs.append((f"GM M={gm_m}", gm_m, seed, out / f"gm{gm_m}_s{seed}"))

    for name, m, seed, folder in [] if args.rank_only else runs:  # searches first: they need no ground truth
        grouping = "gm" if name.startswith("GM") else "bms"
        bn_mode = "batch" if "batch-BN" in name else "recalibrate"
        cfg = search_config(m, seed, args, grouping, bn_mode)
        resume = (folder / "run_config.json").exists()
        print(f"[{name} seed {seed}] {'resuming' if resume else 'running'} in {folder}", flush=True)
        stitchnas.run_search(cfg, folder, resume=resume, progress=os.isatty(2))
    if args.search_only:
        return

    noise = seed_noise(args.truth)
    print(f"ground truth ({', '.join(args.truth)}): {noise['configs']} configurations, spread {noise['spread']:.2f} points, "
          f"mean seed std {noise['mean_seed_std']:.2f}, mean seed range {noise['mean_seed_range']:.2f}, "
          f"max seed range {noise['max_seed_range']:.2f}; Kendall tau between seeds {noise['seed_kendall_tau']:.3f}")
    baseline = flops_baseline(args.truth)
    print(f"baseline without any training, rank by FLOPs: Kendall tau {baseline['kendall_tau']:.3f}, picks "
          f"{baseline['picked']} (regret {baseline['regret']:.2f} points)")
    reports: dict[str, list[dict]] = {}
    for name, m, seed, folder in runs:
        report = rank_run(folder, args.truth, partial=args.partial_truth)
        reports.setdefault(name, []).append(report)
        print(f"[{name} seed {seed}] tau {report['kendall_tau']:.3f}  rho {report['spearman_rho']:.3f}  regret {report['regret']:.2f}  "
              f"picked {report['best_estimated_label']} (truth {report['truth_of_selected']:.2f}, best {report['truth_best']:.2f})",
              flush=True)

    print("\nmethod          seeds  Kendall tau    Spearman rho   top-3   regret (points)   paper tau (CIFAR-10)"
          "   seed-to-seed tau")
    summary = {}
    folders: dict[str, list[Path]] = {}
    for name, _, _, folder in runs:
        folders.setdefault(name, []).append(folder)
    for name, rs in reports.items():
        def mean(key: str) -> float:
            return statistics.mean(r[key] for r in rs)
        top3 = mean("top_3_overlap")
        taus = [r["kendall_tau"] for r in rs]
        m = int(name.split("=")[1].split()[0])
        paper = PAPER_TAU.get(m) if name.startswith("M=") and "batch" not in name else None
        agreement = search_agreement(folders[name])
        print(f"{name:<15} {len(rs):>5}  {mean('kendall_tau'):.3f} ({min(taus):.2f}..{max(taus):.2f})  {mean('spearman_rho'):.3f}"
              f"          {top3:.2f}    {mean('regret'):.2f}              {paper if paper is not None else '-':<5}"
              f"                 {agreement:.3f}")
        summary[name] = {"kendall_tau": mean("kendall_tau"), "spearman_rho": mean("spearman_rho"),
                         "top_3_overlap": top3, "regret": mean("regret"), "runs": len(rs),
                         "seed_to_seed_tau": agreement}
    if args.bn_compare and 1 in ms:
        print("\nBatchNorm handling for M=1 (the same trained supernets, scored both ways):")
        for seed in seeds:
            batch_tau, recal_tau = bn_mode_comparison(out / f"m1_s{seed}", args.truth)
            print(f"  seed {seed}: Kendall tau recalibrated {recal_tau:.3f}, per-batch statistics {batch_tau:.3f}")
            summary.setdefault("bn_modes", []).append({"seed": seed, "recalibrate": recal_tau, "batch": batch_tau})
    (out / "summary.json").write_text(json.dumps({"noise": noise, "flops_baseline": baseline, "methods": summary},
                                                 indent=2))
    print(f"\nsummary: {out / 'summary.json'}")


if __name__ == "__main__":
    main()
