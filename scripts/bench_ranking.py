"""Ranking benchmark for pooling search (issues 3 and 15): one supernet (M=1), BMS mixtures
(M=2, 4, ...) and the GM-style split, each ranked against standalone ground truth, at equal
total steps and at equal steps per supernet, beside the no-training baselines (FLOPs; the
FLOPs+params proxy) and each search's rank blend with that proxy.

Every search is an ordinary resumable run folder ``--out/e{epochs}/{m|gm}{M}_s{seed}``;
rerunning the script skips finished work, and a run shared by both protocols (e.g. M=4 at
4 x 30 = 120 epochs) is trained once. Ground truth comes from ``stitchnas truth pooling``
folders (``--truth``, one per seed) made with the same space and data.

    python scripts/bench_ranking.py --space resnet20_equal_flops --truth runs/eq_s0 --truth runs/eq_s1 \
        --ms 1,2,4 --gm-m 4 --seeds 0,1 --total-epochs 120 --per-supernet-epochs 30 --out runs/ranking_eq

Prints the truth's spread and seed agreement, then per method Kendall tau (per seed), Spearman
rho, top-5 overlap, regret and budget regret (points) and the search's own seed-to-seed tau;
``--bn-compare`` adds M=1 scored with per-batch BatchNorm statistics; ``--finetune-epochs E``
adds the M=1 runs (``--finetune-ms``) ranked after fine-tuning every placement E epochs from
the supernet's weights (36 x E x 45 more SGD steps per run; cached in each run folder);
``--snapshots 90,100,110,120`` adds the M=1 runs of the last epoch ranked by the mean of their
scores over supernet snapshots at those epochs (score averaging over checkpoints; retrains);
repeat it for runs of other lengths (``--snapshots 24,26,28,30``).
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import stitchnas
from searchspace.pooling import create_space
from stitchnas.core.io import atomic_write_json
from stitchnas.data import DataSpec
from stitchnas.methods.pooling import PoolingSearchConfig
from stitchnas.studies.ranking import (
    blend,
    budget_regret,
    cost_proxy,
    kendall_tau,
    regret,
    spearman_rho,
    top_k_overlap,
)
from stitchnas.studies.report import search_estimates
from stitchnas.studies.truth import read_truth_rows, seed_noise
from supernet.bms import MixtureConfig
from supernet.evaluation import EvalConfig
from supernet.training import TrainConfig

# Kendall tau between supernet and standalone accuracy over the 36 ResNet-20 placements on
# CIFAR-10, as published in the BMS paper (Figure 3).
PAPER_TAU = {1: 0.142, 2: 0.311, 4: 0.533, 8: 0.530}


def search_config(m: int, seed: int, epochs: int, args: argparse.Namespace, grouping: str = "bms",
                  bn_mode: str = "recalibrate") -> PoolingSearchConfig:
    return PoolingSearchConfig(
        space=create_space(args.space, width_scale=args.width_scale),
        data=DataSpec(name="cluttered_digits", input_size=args.input_size, seed=0,
                      options={"canvas_size": args.input_size, "renders_per_image": 2}),
        train=TrainConfig(epochs=epochs, batch_size=32, lr=0.1, seed=seed, device=args.device, augment=args.augment),
        eval=EvalConfig(bn_mode=bn_mode, calib_batches=8, seed=seed),
        export_front=False,
        mixture=MixtureConfig(num_supernets=m, t_max=args.t_max, grouping=grouping) if m > 1 else None,
    )


def bn_mode_scores(run: Path, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """One trained M=1 supernet's scores with per-batch BatchNorm statistics (scored here, all
    placements with shared prefixes) and with re-calibrated statistics (the run's results)."""
    from dataclasses import replace

    from stitchnas.core.io import load_checkpoint, read_json
    from stitchnas.data import load_data
    from supernet.networks import ModelSpec, build_supernet
    from supernet.shared_prefix import score_placements

    path = run / "run_config.json"
    cfg = PoolingSearchConfig.from_json(read_json(path, "run config"), f"run config {path}")
    data = load_data(cfg.data)
    supernet = build_supernet(cfg.space, ModelSpec(data.in_chans, data.num_classes))
    supernet.load_state_dict(load_checkpoint(run / "supernet.pt")["model"])
    configs = [cfg.space.config(int(k)) for k in keys]
    batch_cfg = replace(cfg.eval, bn_mode="batch")
    batch, _ = score_placements(supernet, configs, data.search_train, data.search_val, batch_cfg)
    _, recal = search_estimates(run)
    return np.array(batch, dtype=float), np.array([recal[k] for k in keys])


def finetune_scores(run: Path, keys: list[str], epochs: int, lr: float) -> np.ndarray:
    """Every placement's ``search_val`` accuracy after ``epochs`` of fine-tuning its standalone
    network from the run's supernet weights: the engine's fine-tuned scoring
    (``EvalConfig.finetune``, ``--finetune-epochs``) with the search's own recipe, ``lr`` decaying
    to a hundredth of it. Cached in the run folder (``finetune_e{epochs}_lr{lr}.json``, written
    after each placement), so an interrupted run resumes and re-ranking is free."""
    import json
    from dataclasses import replace

    from stitchnas.core.io import atomic_write_text, load_checkpoint, read_json
    from stitchnas.data import load_data
    from stitchnas.methods.pooling import build_search_model
    from supernet.evaluation import evaluate_path
    from supernet.networks import ModelSpec

    cache = run / f"finetune_e{epochs}_lr{lr:g}.json"
    scores: dict[str, float] = json.loads(cache.read_text()) if cache.exists() else {}
    todo = [k for k in keys if k not in scores]
    if not todo:
        return np.array([scores[k] for k in keys])
    path = run / "run_config.json"
    cfg = PoolingSearchConfig.from_json(read_json(path, "run config"), f"run config {path}")
    data = load_data(cfg.data)
    search = build_search_model(cfg, ModelSpec(data.in_chans, data.num_classes))
    search.load_state_dict(load_checkpoint(run / "supernet.pt")["model"])
    tuned = replace(cfg.eval, finetune=replace(cfg.train, epochs=epochs, lr=lr, lr_min=lr / 100))
    print(f"  fine-tuning {len(todo)} placements of {run} ({epochs} epochs each)", flush=True)
    for k in todo:
        scores[k] = evaluate_path(search, cfg.space.config(int(k)), data.search_train, data.search_val, tuned)
        atomic_write_text(cache, json.dumps(scores, indent=1))
    return np.array([scores[k] for k in keys])


def snapshot_scores(run: Path, keys: list[str], epochs: list[int]) -> dict[int, np.ndarray]:
    """Scores of an M=1 run's supernet at the end of each epoch in ``epochs`` (1-based), for
    averaging scores over checkpoints: the supernet is retrained from scratch with the run's
    own recipe (its final snapshot must score exactly as the run did: checked) and every
    snapshot scored as the search scores (shared prefixes, its BatchNorm mode). Cached in the
    run folder (``snapshots_e{...}.json``)."""
    import json

    from stitchnas.core.io import atomic_write_text, read_json
    from stitchnas.core.training import batches_for
    from stitchnas.data import load_data
    from supernet.networks import ModelSpec, build_supernet
    from supernet.shared_prefix import score_placements
    from supernet.training import train

    cache = run / f"snapshots_e{'-'.join(map(str, epochs))}.json"
    if cache.exists():
        stored = json.loads(cache.read_text())
        return {int(e): np.array([stored[str(e)][k] for k in keys]) for e in epochs}
    path = run / "run_config.json"
    cfg = PoolingSearchConfig.from_json(read_json(path, "run config"), f"run config {path}")
    if cfg.mixture is not None or cfg.train.epochs not in epochs:
        raise ValueError(f"{run}: snapshots need an M=1 run and its last epoch ({cfg.train.epochs}) in {epochs}")
    data = load_data(cfg.data)
    torch.manual_seed(cfg.train.seed)  # as the search builds its supernet
    supernet = build_supernet(cfg.space, ModelSpec(data.in_chans, data.num_classes))
    per_epoch = batches_for(data.search_train, torch.device("cpu")).num_batches(cfg.train.batch_size, drop_last=True)
    states: dict[int, dict[str, torch.Tensor]] = {}

    def keep(step: int) -> None:
        if step % per_epoch == 0 and step // per_epoch in epochs:
            states[step // per_epoch] = {k: v.detach().clone() for k, v in supernet.state_dict().items()}

    print(f"  retraining {run} for snapshots at epochs {epochs}", flush=True)
    train(supernet, data.search_train, cfg.train, choose_path=supernet.sample_active, progress=False, on_step=keep)
    configs = [cfg.space.config(int(k)) for k in keys]
    stored = {}
    for epoch in epochs:
        supernet.load_state_dict(states[epoch])
        accs, _ = score_placements(supernet, configs, data.search_train, data.search_val, cfg.eval)
        stored[str(epoch)] = dict(zip(keys, accs))
    final = search_estimates(run)[1]
    if any(stored[str(cfg.train.epochs)][k] != final[k] for k in keys):
        raise ValueError(f"{run}: the retrained supernet does not score as the run did (threads or code changed)")
    atomic_write_text(cache, json.dumps(stored, indent=1))
    return {e: np.array([stored[str(e)][k] for k in keys]) for e in epochs}


def augment_of(folder: Path, config_cls) -> str:
    """The training augmentation a run folder (search or ground truth) recorded; files from
    before the option decode as ``"none"``, what those runs did."""
    from stitchnas.core.io import read_json

    path = folder / "run_config.json"
    return config_cls.from_json(read_json(path, "run config"), f"run config {path}").train.augment


def truth_table(truth_dirs: list[str], space) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Candidate keys, mean true accuracy, FLOPs and parameters (per candidate, key order)."""
    from stitchnas.studies.truth import load_truth
    from supernet.flops import pooling_params

    truth = load_truth(truth_dirs, space)
    rows = read_truth_rows(truth_dirs)
    flops = {str(r.candidate): float(r.flops) for r in rows.itertuples()}
    keys = sorted(truth, key=int)
    # the truth table has no parameter column: count them (in_chans 1, 10 classes: the digits)
    params = [pooling_params(space, 1, 10, space.config(int(k))) for k in keys]
    return keys, np.array([truth[k] for k in keys]), np.array([flops[k] for k in keys]), np.array(params, float)


def metrics(est: np.ndarray, truth: np.ndarray, flops: np.ndarray) -> dict[str, float]:
    return {"kendall_tau": kendall_tau(est, truth), "spearman_rho": spearman_rho(est, truth),
            "top_5_overlap": top_k_overlap(est, truth, 5), "regret": regret(est, truth),
            "budget_regret": budget_regret(est, truth, flops)}


def search_agreement(folders: list[Path]) -> float | None:
    """Mean Kendall tau between the scores two search seeds of one method give (None for one
    seed): how reproducible the method's own ranking is."""
    from itertools import combinations

    scores = [search_estimates(f)[1] for f in folders]
    taus = []
    for a, b in combinations(scores, 2):
        keys = sorted(set(a) & set(b), key=int)
        taus.append(kendall_tau([a[k] for k in keys], [b[k] for k in keys]))
    return statistics.mean(taus) if taus else None


@dataclass(frozen=True)
class Method:
    """One search recipe: M supernets (BMS or the GM-style split) trained for ``epochs``."""

    name: str
    m: int
    grouping: str
    epochs: int

    def folder(self, root: Path, seed: int) -> Path:
        prefix = "gm" if self.grouping == "gm" else "m"
        return root / f"e{self.epochs}" / f"{prefix}{self.m}_s{seed}"


def protocols(args: argparse.Namespace) -> dict[str, list[Method]]:
    """Equal total steps (every method trains ``--total-epochs``: each of M supernets gets about
    1/M of the steps) and equal steps per supernet (M supernets train M x
    ``--per-supernet-epochs``)."""
    ms = [int(m) for m in args.ms.split(",")]

    def methods(epochs_of) -> list[Method]:
        out = [Method("M=1" if m == 1 else f"BMS M={m}", m, "bms", epochs_of(m)) for m in ms]
        if args.gm_m:
            out.append(Method(f"GM M={args.gm_m}", args.gm_m, "gm", epochs_of(args.gm_m)))
        return out

    return {"equal total steps": methods(lambda m: args.total_epochs),
            "equal steps per supernet": methods(lambda m: args.per_supernet_epochs * m)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--truth", action="extend", nargs="+", required=True,
                        help="ground-truth folders (one or more; repeatable), e.g. a shell glob of truth20t10_s*")
    parser.add_argument("--space", default="resnet20", help="pooling space preset (resnet20, resnet20_equal_flops)")
    parser.add_argument("--width-scale", type=float, default=0.5)
    parser.add_argument("--input-size", type=int, default=24)
    parser.add_argument("--ms", default="1,2,4", help="mixture sizes M (BMS; M=1 is one supernet)")
    parser.add_argument("--gm-m", type=int, default=4, help="M of the GM-style split (0: none)")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--total-epochs", type=int, default=120,
                        help="equal total steps: every method's epochs (45 steps each)")
    parser.add_argument("--per-supernet-epochs", type=int, default=30,
                        help="equal steps per supernet: M supernets train M times this many epochs")
    parser.add_argument("--augment", default="auto",
                        help="the searches' training augmentation; must be the ground truth's (checked when ranking)")
    parser.add_argument("--t-max", type=float, default=100.0)
    parser.add_argument("--device", default="cpu",
                        help="the searches' device (cpu, cuda, cuda:N); cpu for the committed tables")
    parser.add_argument("--blend-weight", type=float, default=0.5, help="weight of the no-training proxy in the blend")
    parser.add_argument("--bn-compare", action="store_true",
                        help="also score the M=1 supernets with per-batch BatchNorm statistics (needs supernet.pt)")
    parser.add_argument("--finetune-epochs", type=int, default=0,
                        help="also rank by search_val accuracy after fine-tuning every placement this many epochs "
                             "from the supernet's weights (needs supernet.pt; 0: no)")
    parser.add_argument("--finetune-lr", type=float, default=0.01)
    parser.add_argument("--finetune-ms", default="1", help="the mixture sizes whose runs are fine-tuned")
    parser.add_argument("--snapshots", action="append", default=[],
                        help="comma-separated epochs, the last an M=1 run's: also rank by its score averaged over "
                             "supernet snapshots at these epochs (retrains the supernet once; cached); repeatable")
    parser.add_argument("--out", default="runs/bench_ranking", help="root folder: e{epochs}/{m|gm}{M}_s{seed}")
    parser.add_argument("--summary", type=Path, default=None,
                        help="where the ranking table's JSON goes (default: OUT/summary.json)")
    parser.add_argument("--search-only", action="store_true", help="run the searches, skip ranking")
    parser.add_argument("--rank-only", action="store_true",
                        help="rank finished search folders (results.csv) without running or resuming searches")
    args = parser.parse_args()
    root = Path(args.out)
    # the snapshot epochs of an M=1 run, by its length (the last epoch of each list)
    snapshot_lists = [sorted(int(e) for e in text.split(",") if e.strip()) for text in args.snapshots]
    snapshots_of = {epochs[-1]: epochs for epochs in snapshot_lists if epochs}
    seeds = [int(s) for s in args.seeds.split(",")]
    plan = protocols(args)
    unique = sorted({m for ms in plan.values() for m in ms}, key=lambda m: (m.epochs * m.m, m.m, m.grouping))

    for method in [] if args.rank_only else unique:  # searches first: they need no ground truth
        for seed in seeds:
            folder = method.folder(root, seed)
            resume = (folder / "run_config.json").exists()
            state = "resuming" if resume else "running"
            print(f"[{method.name}, {method.epochs} epochs, seed {seed}] {state} in {folder}", flush=True)
            cfg = search_config(method.m, seed, method.epochs, args, method.grouping)
            stitchnas.run_search(cfg, folder, resume=resume, progress=os.isatty(2))
    if args.search_only:
        return

    space = create_space(args.space, width_scale=args.width_scale)
    noise = seed_noise(args.truth)
    keys, truth, flops, params = truth_table(args.truth, space)
    print(f"space {space.name}: {len(keys)} placements, FLOPs {flops.min() / 1e6:.3f}-{flops.max() / 1e6:.3f} M "
          f"(max/min {flops.max() / flops.min():.3f}), parameters {params.min():,.0f}-{params.max():,.0f}")
    print(f"ground truth ({', '.join(args.truth)}): spread {noise['spread']:.2f} points, mean seed range "
          f"{noise['mean_seed_range']:.2f}, max seed range {noise['max_seed_range']:.2f}; "
          f"Kendall tau between seeds {noise['seed_kendall_tau']:.3f}, between the means of two halves of its "
          f"{noise['seeds']} seeds {noise['half_kendall_tau']:.3f}")
    print("  a k-seed mean against another (mean Kendall tau over disjoint sets): "
          + ", ".join(f"k={k} {tau:.3f}" for k, tau in noise["agreement_by_seeds"].items()))
    from stitchnas.studies.truth import TruthConfig

    truth_augments = {augment_of(Path(t), TruthConfig) for t in args.truth}
    if len(truth_augments) != 1:
        parser.error(f"--truth: the folders were trained with different augmentations {sorted(truth_augments)}")
    truth_augment = truth_augments.pop()
    print(f"training augmentation of the ground truth: {truth_augment!r} (searches with another are skipped)")
    proxy = cost_proxy(flops, params)
    baselines = {"FLOPs (no training)": flops, "FLOPs+params proxy (no training)": proxy}
    summary: dict = {"space": space.name, "noise": noise, "blend_weight": args.blend_weight, "baselines": {},
                     "protocols": {}}
    header = (f"{'method':<34} {'epochs':>6} {'Kendall tau (seeds)':>22} {'rho':>6} {'top-5':>6} {'regret':>7} "
              f"{'budget regret':>13} {'search seed tau':>15}")
    print("\n" + header)
    for name, est in baselines.items():
        r = metrics(est, truth, flops)
        summary["baselines"][name] = r
        print(f"{name:<34} {'-':>6} {r['kendall_tau']:>22.3f} {r['spearman_rho']:>6.3f} {r['top_5_overlap']:>6.2f} "
              f"{r['regret']:>7.2f} {r['budget_regret']:>13.2f} {'-':>15}")
    for protocol, methods in plan.items():
        print(f"\n{protocol}:")
        table = summary["protocols"][protocol] = {}
        for method in methods:
            folders = [method.folder(root, seed) for seed in seeds]
            # An interrupted search has results for some placements only: not a ranking yet.
            missing = [str(f) for f in folders
                       if not (f / "results.csv").exists() or not set(keys) <= set(search_estimates(f)[1])]
            if missing:
                print(f"{method.name:<34} {method.epochs:>6}  not run yet or unfinished: {', '.join(missing)}")
                continue
            augments = {augment_of(f, PoolingSearchConfig) for f in folders}
            if augments != {truth_augment}:  # a search trained on another recipe than the truth's networks
                print(f"{method.name:<34} {method.epochs:>6}  trained with augment {sorted(augments)}, the ground "
                      f"truth with {truth_augment!r}: not comparable, skipped")
                table[method.name] = {"epochs": method.epochs, "skipped": f"augment {sorted(augments)}"}
                continue
            def searched(folder: Path) -> np.ndarray:
                est = search_estimates(folder)[1]
                return np.array([est[k] for k in keys])

            # (label, blend weight or None, where a seed's scores come from)
            rules: list[tuple[str, float | None, Callable[[Path], np.ndarray]]] = [
                (method.name, None, searched), (f"{method.name} + proxy blend", args.blend_weight, searched)]
            fine_tunable = method.grouping == "bms" and str(method.m) in args.finetune_ms.split(",")
            if args.finetune_epochs and fine_tunable:
                def tuned(folder: Path) -> np.ndarray:
                    return finetune_scores(folder, keys, args.finetune_epochs, args.finetune_lr)

                label = f"{method.name} + fine-tune {args.finetune_epochs} ep"
                rules += [(label, None, tuned), (f"{label} + proxy blend", args.blend_weight, tuned)]
            snapshots = snapshots_of.get(method.epochs, [])
            if snapshots and method.m == 1:
                def averaged(folder: Path, epochs: list[int] = snapshots) -> np.ndarray:
                    return np.mean(list(snapshot_scores(folder, keys, epochs).values()), axis=0)

                label = f"{method.name} + mean of {len(snapshots)} ckpts"
                rules += [(label, None, averaged), (f"{label} + blend", args.blend_weight, averaged)]
            for label, rule, source in rules:
                per_seed = []
                for folder in folders:
                    score = source(folder)
                    per_seed.append(metrics(score if rule is None else blend(score, proxy, rule), truth, flops))
                mean = {k: statistics.mean(r[k] for r in per_seed) for k in per_seed[0]}
                taus = ", ".join(f"{r['kendall_tau']:.2f}" for r in per_seed)
                # the search's own seed-to-seed agreement: only for its plain score (a rule has none of its own)
                agreement = search_agreement(folders) if rule is None and source is searched else None
                agreement_text = "-" if agreement is None else f"{agreement:.3f}"
                table[label] = {"epochs": method.epochs, "mean": mean, "seeds": per_seed, "search_seed_tau": agreement}
                print(f"{label:<34} {method.epochs:>6} {mean['kendall_tau']:>7.3f} ({taus:>12}) "
                      f"{mean['spearman_rho']:>6.3f} {mean['top_5_overlap']:>6.2f} {mean['regret']:>7.2f} "
                      f"{mean['budget_regret']:>13.2f} {agreement_text:>15}", flush=True)
    if args.bn_compare:
        print("\nBatchNorm handling, M=1 (the same trained supernets scored both ways; tau / regret):")
        for method in {m for ms in plan.values() for m in ms if m.m == 1}:
            for seed in seeds:
                folder = method.folder(root, seed)
                if not (folder / "supernet.pt").exists():  # committed tables keep no weights
                    print(f"  {method.epochs} epochs seed {seed}: no supernet.pt in {folder}, skipped")
                    continue
                batch, recal = bn_mode_scores(folder, keys)
                rb, rr = metrics(batch, truth, flops), metrics(recal, truth, flops)
                print(f"  {method.epochs} epochs seed {seed}: re-calibrated {rr['kendall_tau']:.3f} / "
                      f"{rr['regret']:.2f}, per-batch {rb['kendall_tau']:.3f} / {rb['regret']:.2f}")
                summary.setdefault("bn_modes", []).append({"epochs": method.epochs, "seed": seed,
                                                            "recalibrate": rr, "batch": rb})
    print("\nBMS paper, Kendall tau on CIFAR-10 (equal total steps): "
          + ", ".join(f"M={m} {tau}" for m, tau in PAPER_TAU.items()))
    summary_path = args.summary or root / "summary.json"
    atomic_write_json(summary_path, summary)
    print(f"\nsummary: {summary_path}")


if __name__ == "__main__":
    main()
