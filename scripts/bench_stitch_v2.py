"""Benchmark SN-Netv2 against SN-Net on the same two anchors, data and training budget (CPU).

1. Train two ViT anchors standalone, ``vit_digits_tiny`` (small) and ``vit_digits_base``
   (large), depth 12 (reused when ``<out>/anchors`` already holds them with the same settings).
2. Three stitching runs of the engine with one recipe (epochs, learning rate, batch, seed, data):

   * ``v1``: SN-Net -- one-way stitches (small -> large), uniform sampling, plain stitching layers;
   * ``v2``: SN-Netv2 -- FS / SF / FSF / SFS stitches (134 configurations for depths 12 / 12),
     ROS sampling (automatic gap), low-rank stitching layers (rank 4);
   * ``v2-uniform``: the same SN-Netv2 with uniform sampling (isolates ROS).

3. For each run: the Pareto front and its hypervolume against one reference shared by all
   runs; the cheapest and the dearest stitched configuration; and how often each FLOPs range
   was trained, counted from the configuration ids the run recorded (``history[e]["configs"]``).

Prints a compact report and writes a markdown snippet (``<out>/BENCH_SNIPPET.md``).

    python scripts/bench_stitch_v2.py --out runs/bench_stitch_v2
"""

from __future__ import annotations

import argparse
from functools import partial
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import stitchnas
from stitching.anchors import MANIFEST_FILE, create_anchor, read_anchor_folder
from stitchnas.methods.anchors import data_overrides
from stitching.flops import anchor_flops
from stitching.trainer import AUTO_GAP_STEPS, SamplingConfig, StitchTrainConfig, train_network
from stitchnas.data import DataSpec, load_data
from stitchnas.core.io import atomic_torch_save, atomic_write_json, file_sha256, read_json
from stitchnas.search.pareto import hypervolume_2d
from stitchnas.methods.snnet import StitchSearchConfig
from benchlib import add_augment_option, timed
from stitchnas.core.evaluation import accuracy

PRESETS = ("vit_digits_tiny", "vit_digits_base")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_stitch_v2")
    p.add_argument("--dataset", default="digits", help="embedded data set: digits or cluttered_digits")
    p.add_argument("--max-train-samples", type=int, default=None, help="stratified training subset (quicker)")
    p.add_argument("--anchor-epochs", type=int, default=40)
    p.add_argument("--anchor-lr", type=float, default=1e-3,
                   help="anchors' AdamW peak LR (1e-3: the large anchor ends ahead of the small one on digits; "
                        "at 3e-3 the small one wins and every front collapses to it)")
    p.add_argument("--stitch-epochs", type=int, default=12)
    p.add_argument("--stitch-lr", type=float, default=1e-3)
    p.add_argument("--lora-rank", type=int, default=4)
    p.add_argument("--bins", type=int, default=5, help="equal-width FLOPs bins of the sampling histogram")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these tiny models)")
    p.add_argument("--seed", type=int, default=0)
    add_augment_option(p)
    return p.parse_args(argv)


def train_two_anchors(out: Path, data_spec: DataSpec, train: StitchTrainConfig) -> list[Any]:
    """The two anchors as an anchors folder (``anchors.json`` + ``.pth``), trained once."""
    settings = {"data": data_spec.to_json(), "train": train.to_json(), "presets": list(PRESETS)}
    manifest_path = out / MANIFEST_FILE
    if manifest_path.exists():
        manifest = read_json(manifest_path, "anchors manifest")
        if manifest.get("bench") == settings and all((out / a["file"]).exists() for a in manifest["anchors"]):
            return manifest["anchors"]
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    data = load_data(data_spec)
    entries = []
    for i, preset in enumerate(PRESETS):
        torch.manual_seed(train.seed * 1000 + i)
        model = create_anchor(preset, **data_overrides(data))
        _, seconds = timed(train_network, model, data.search_train, train, progress=False)
        weights = out / f"{preset}.pth"
        atomic_torch_save({k: v.detach().contiguous() for k, v in model.state_dict().items()}, weights)
        entries.append({"name": preset, "preset": preset, "config": model.config, "file": weights.name,
                        "sha256": file_sha256(weights), "flops": anchor_flops(model).total,
                        "params": sum(p.numel() for p in model.parameters()),
                        "val_acc": accuracy(model, data.search_val), "test_acc": accuracy(model, data.test),
                        "train_seconds": round(seconds, 2)})
    atomic_write_json(manifest_path, {"format": "stitchnas.anchors", "format_version": 1, "family": "vit_digits",
                                      "bench": settings, "anchors": entries})
    return entries


def run_summary(name: str, cfg: StitchSearchConfig, outcome: Any, seconds: float,
                num_anchors: int = 2) -> dict[str, Any]:
    rows = [r for r in outcome.rows if r["status"] == "ok"]
    by_id = sorted(outcome.rows, key=lambda r: int(r["candidate"]))
    # the sampler training used: the run's sampling options over its analytic FLOPs (= flops_table)
    probabilities = cfg.effective_sampling.build([int(r["flops"]) for r in by_id]).probabilities()
    stitched = sorted((r for r in rows if int(r["candidate"]) >= num_anchors),
                      key=lambda r: (r["flops"], -r["val_acc"]))
    drawn = [int(i) for e in outcome.history.epochs for i in e.get("configs", [])]
    flops_of = {int(r["candidate"]): float(r["flops"]) for r in outcome.rows}
    return {"name": name, "rows": rows, "stitched": stitched, "front": outcome.summary.front, "seconds": seconds,
            "drawn_flops": [flops_of[i] for i in drawn],
            "probabilities": [(float(r["flops"]), p) for r, p in zip(by_id, probabilities)],
            "anchors": sorted((r for r in rows if int(r["candidate"]) < num_anchors), key=lambda r: r["flops"])}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    train_config = partial(StitchTrainConfig, augment=args.augment)  # every run's recipe
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    data_spec = DataSpec(name=args.dataset, input_size=16, seed=args.seed, max_train_samples=args.max_train_samples)
    data = load_data(data_spec)
    start_all = time.perf_counter()

    anchor_train = train_config(epochs=args.anchor_epochs, batch_size=32, lr=args.anchor_lr, warmup_epochs=2,
                                seed=args.seed, device="cpu")
    anchors = train_two_anchors(out / "anchors", data_spec, anchor_train)
    refs = tuple(read_anchor_folder(out / "anchors"))

    joint = train_config(epochs=args.stitch_epochs, batch_size=32, lr=args.stitch_lr, seed=args.seed, device="cpu")
    base = dict(anchors=refs, data=data_spec, train=joint)
    runs = {
        "v1": StitchSearchConfig(**base),
        "v2": StitchSearchConfig(**base, version="v2", lora_rank=args.lora_rank),
        "v2-uniform": StitchSearchConfig(**base, version="v2", lora_rank=args.lora_rank, sampling=SamplingConfig()),
    }
    summaries = []
    for name, cfg in runs.items():
        shutil.rmtree(out / name, ignore_errors=True)
        outcome, seconds = timed(stitchnas.run_search, cfg, out / name, progress=False)
        summaries.append(run_summary(name, cfg, outcome, seconds))
    total_s = time.perf_counter() - start_all

    text = report(args, data, anchors, runs, summaries, total_s)
    print(text)
    (out / "BENCH_SNIPPET.md").write_text(markdown(args, text))
    print(f"\nmarkdown snippet: {(out / 'BENCH_SNIPPET.md').resolve()}")
    return 0


def report(args, data, anchors, runs, summaries, total_s) -> str:
    lines = []
    steps = len(data.search_train) // 32
    lines.append(f"data {args.dataset} 16x16: search_train {len(data.search_train)} images ({steps} steps/epoch), "
                 f"search_val {len(data.search_val)}")
    lines.append(f"anchors ({args.anchor_epochs} epochs each, AdamW {args.anchor_lr:g}, batch 32, "
                 f"augment {args.augment})")
    lines.append(f"  {'anchor':<16} {'MFLOPs':>7} {'params':>7} {'val %':>6} {'test %':>6} {'train s':>7}")
    for a in anchors:
        lines.append(f"  {a['name']:<16} {a['flops'] / 1e6:7.3f} {a['params']:>7} {a['val_acc']:6.2f} "
                     f"{a['test_acc']:6.2f} {a['train_seconds']:7.1f}")
    lines.append(f"stitching: same recipe for every run -- {args.stitch_epochs} epochs, AdamW {args.stitch_lr:g} "
                 f"(anchors x0.1), batch 32, seed {args.seed}; accuracies on search_val")
    all_flops = [r["flops"] for s in summaries for r in s["rows"]]
    ref = (1.1 * max(all_flops), 0.0)
    lo, hi = min(all_flops), max(all_flops)
    edges = np.linspace(lo, hi, args.bins + 1)
    desc = {"v1": "SN-Net, uniform, plain layers",
            "v2": f"SN-Netv2, ROS ({_groups(runs['v2'])}), LoRA r={args.lora_rank}",
            "v2-uniform": f"SN-Netv2, uniform, LoRA r={args.lora_rank}"}
    lines.append(f"hypervolume: shared reference ({ref[0] / 1e6:.3f} MFLOPs, 0 %), normalised by "
                 f"{ref[0] / 1e6:.3f} x 100 (1.0 = a 100 % model at zero FLOPs)")
    lines.append(f"  {'run':<10} {'configs':>7} {'front':>5} {'HV':>6} {'median %':>8} {'cheapest stitch':>24} "
                 f"{'dearest stitch':>24} {'run s':>6}  what")
    for s in summaries:
        hv = hypervolume_2d([r["flops"] for r in s["rows"]], [r["val_acc"] for r in s["rows"]], ref)
        cheap, dear = s["stitched"][0], s["stitched"][-1]
        med = statistics.median(r["val_acc"] for r in s["stitched"])
        lines.append(f"  {s['name']:<10} {len(s['rows']):>7} {len(s['front']):>5} {hv / (ref[0] * 100):6.3f} "
                     f"{med:8.2f} {_stitch(cheap):>24} {_stitch(dear):>24} {s['seconds']:6.0f}  {desc[s['name']]}")
    lines.append("  anchors inside each trained network (val %): " + "; ".join(
        f"{s['name']} " + " / ".join(f"{r['val_acc']:.2f}" for r in s["anchors"]) for s in summaries))
    lines.append(f"training steps per FLOPs range (equal-width bins over {lo / 1e6:.3f}-{hi / 1e6:.3f} MFLOPs; "
                 "counted from each run's recorded configuration ids; % of steps / % expected from the "
                 "sampler's probabilities() [configurations in the bin])")
    width = 18
    header = " ".join(f"{f'{edges[i] / 1e6:.2f}-{edges[i + 1] / 1e6:.2f}':>{width}}" for i in range(args.bins))
    lines.append(f"  {'run':<10} {header}")
    for s in summaries:
        drawn = _bin(s["drawn_flops"], edges)
        have = _bin([f for f, _ in s["probabilities"]], edges)
        probs = np.array([p for _, p in s["probabilities"]])
        cells = [f"{100 * np.mean(drawn == b):4.1f}/{100 * probs[have == b].sum():4.1f}% [{int(np.sum(have == b)):>3}]"
                 for b in range(args.bins)]
        lines.append(f"  {s['name']:<10} " + " ".join(f"{c:>{width}}" for c in cells))
    lines.append("best stitched configuration per FLOPs bin (val %): " + "; ".join(
        f"{s['name']} " + " / ".join(_best_in_bins(s["stitched"], edges)) for s in summaries))
    lines.append(f"total wall time {total_s / 60:.1f} min (torch threads: {args.threads})")
    return "\n".join(lines)


def _bin(flops: Any, edges: np.ndarray) -> np.ndarray:
    """Bin index of each FLOPs value (equal-width bins; the top edge belongs to the last bin)."""
    return np.clip(np.digitize(np.asarray(flops, dtype=float), edges[1:-1]), 0, len(edges) - 2)


def _groups(cfg: StitchSearchConfig) -> str:
    gap = cfg.effective_sampling.flops_gap_mflops
    return f"gap {gap} MFLOPs" if gap is not None else f"auto gap = FLOPs range / {AUTO_GAP_STEPS}"


def _stitch(row: dict[str, Any]) -> str:
    return f"{row['flops'] / 1e6:.3f} MF {row['val_acc']:6.2f} %"


def _best_in_bins(rows: list[dict[str, Any]], edges: np.ndarray) -> list[str]:
    out = []
    for b in range(len(edges) - 1):
        inside = [r["val_acc"] for r in rows if edges[b] <= r["flops"] <= edges[b + 1]]
        out.append(f"{max(inside):.1f}" if inside else "-")
    return out


def markdown(args, text: str) -> str:
    cmd = (f"python scripts/bench_stitch_v2.py --dataset {args.dataset} --anchor-epochs {args.anchor_epochs} "
           f"--anchor-lr {args.anchor_lr:g} "
           f"--stitch-epochs {args.stitch_epochs} --lora-rank {args.lora_rank} --threads {args.threads} "
           f"--augment {args.augment}")
    if args.max_train_samples is not None:
        cmd += f" --max-train-samples {args.max_train_samples}"
    return (
        "## SN-Netv2 vs SN-Net on two digits ViT anchors (CPU)\n\n"
        f"Command: `{cmd}`  \nMachine: 2-core CPU (shared), torch {torch.__version__}, "
        f"{args.threads} torch thread(s). Date: {time.strftime('%Y-%m-%d')}.\n\n```text\n{text}\n```\n"
    )


if __name__ == "__main__":
    sys.exit(main())
