"""Benchmark SN-Net stitching on the embedded digits data, CPU only, in a few minutes.

1. Train three ViT anchors (``vit_digits_{tiny,small,base}``, depth 12) standalone.
2. Score all 71 configurations right after the least-squares init (no training).
3. Train the SN-Net jointly and score all 71 again; Pareto front and hypervolume.
4. Cost: the stitching run beside training intermediate-size models separately: the
   architectures of a few stitches (the best of each FLOPs bin), trained from scratch with the
   anchors' recipe.

Prints a compact table and writes a markdown snippet (``<out>/BENCH_SNIPPET.md``).
Anchors are reused when ``<out>/anchors`` already holds them (their recorded training time
is reported); every other stage reruns.

    python scripts/bench_stitch.py --out runs/bench_stitch
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

import torch

import stitchnas
from stitching.anchors import read_anchor_folder
from stitchnas.methods.anchors import AnchorTrainConfig, train_anchors
from stitching.trainer import StitchTrainConfig, train_network
from stitchnas.data import DataSpec, load_data
from stitchnas.core.io import read_json
from stitchnas.methods import method_from_run
from stitchnas.methods.snnet import StitchSearchConfig
from benchlib import add_augment_option, timed
from stitchnas.core.evaluation import accuracy


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_stitch")
    p.add_argument("--anchor-epochs", type=int, default=40)
    p.add_argument("--stitch-epochs", type=int, default=10)
    p.add_argument("--stitch-lr", type=float, default=1e-3)
    p.add_argument("--scratch", type=int, default=2, help="intermediate stitches trained from scratch")
    p.add_argument("--dataset", default="digits", help="embedded data set: digits or cluttered_digits")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these tiny models)")
    p.add_argument("--seed", type=int, default=0)
    add_augment_option(p)
    return p.parse_args(argv)


def scratch_candidates(rows: list[dict], num_anchors: int, k: int) -> list[dict]:
    """The best stitch of each of ``k`` equal-count FLOPs bins of the stitched configurations."""
    stitched = sorted((r for r in rows if int(r["candidate"]) >= num_anchors and r["status"] == "ok"),
                      key=lambda r: r["flops"])
    bins = [stitched[i * len(stitched) // k:(i + 1) * len(stitched) // k] for i in range(k)]
    return [max(b, key=lambda r: r["val_acc"]) for b in bins if b]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    train_config = partial(StitchTrainConfig, augment=args.augment)  # every run's recipe
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    data_spec = DataSpec(name=args.dataset, input_size=16, seed=args.seed)
    data = load_data(data_spec)
    anchor_train = train_config(epochs=args.anchor_epochs, batch_size=32, lr=3e-3, warmup_epochs=2,
                                seed=args.seed, device="cpu")
    start_all = time.perf_counter()

    # 1. anchors (reused if already trained with the same settings)
    anchors_dir = out / "anchors"
    train_anchors(AnchorTrainConfig("vit_digits", data_spec, anchor_train), anchors_dir, resume=True, progress=False)
    manifest = read_json(anchors_dir / "anchors.json", "anchors manifest")
    refs = read_anchor_folder(anchors_dir)

    # 2. least-squares init only, 3. joint training (fresh run folders every time)
    for name in ("init", "joint"):
        shutil.rmtree(out / name, ignore_errors=True)
    joint_train = train_config(epochs=args.stitch_epochs, batch_size=32, lr=args.stitch_lr, seed=args.seed,
                               device="cpu")
    base = dict(anchors=tuple(refs), data=data_spec)
    init_cfg = StitchSearchConfig(**base, train=train_config(epochs=0, seed=args.seed), export_front=False)
    init, init_s = timed(stitchnas.run_search, init_cfg, out / "init", progress=False)
    joint, joint_s = timed(stitchnas.run_search, StitchSearchConfig(**base, train=joint_train), out / "joint",
                           progress=False)
    eval_s = sum(r["seconds"] for r in joint.rows)

    # 4. intermediate architectures from scratch, same recipe as an anchor
    method = method_from_run(out / "joint")
    snnet = method.load_trained(out / "joint", method.load_data())  # the last checkpoint's weights
    scratch = []
    for row in scratch_candidates(joint.rows, len(refs), args.scratch):
        snnet.set_active(int(row["candidate"]))
        stitch_test = accuracy(snnet, data.test)
        torch.manual_seed(args.seed)
        model = snnet.export_active(preserve_weight=False)  # fresh anchors' init (timm's), same shape
        _, seconds = timed(train_network, model, data.search_train, anchor_train, progress=False)
        scratch.append({"row": row, "seconds": seconds, "val": accuracy(model, data.search_val),
                        "test": accuracy(model, data.test), "stitch_test": stitch_test})
    total_s = time.perf_counter() - start_all

    text = report(args, data, manifest, init, joint, joint_s, eval_s, init_s, scratch, total_s)
    print(text)
    (out / "BENCH_SNIPPET.md").write_text(markdown(args, text))
    print(f"\nmarkdown snippet: {(out / 'BENCH_SNIPPET.md').resolve()}")
    return 0


def report(args, data, manifest, init, joint, joint_s, eval_s, init_s, scratch, total_s) -> str:
    init_acc = {r["candidate"]: r["val_acc"] for r in init.rows}
    lines = []
    anchors = manifest["anchors"]
    n = len(joint.rows)
    lines.append(f"anchors on {args.dataset} ({args.anchor_epochs} epochs each, AdamW 3e-3, batch 32, "
                 f"augment {args.augment}, "
                 f"search_train {len(data.search_train)} images, search_val {len(data.search_val)})")
    lines.append(f"  {'anchor':<18} {'MFLOPs':>7} {'params':>7} {'val %':>6} {'test %':>6} {'train s':>7}")
    for a in anchors:
        lines.append(f"  {a['name']:<18} {a['flops'] / 1e6:7.2f} {a['params']:>7} {a['val_acc']:6.2f} "
                     f"{a['test_acc']:6.2f} {a['train_seconds']:7.1f}")
    stitched = [r for r in joint.rows if int(r["candidate"]) >= len(anchors)]
    for title, rows in (("least-squares init, no training", [init_acc[r["candidate"]] for r in stitched]),
                        (f"after {args.stitch_epochs} epochs of joint training", [r["val_acc"] for r in stitched])):
        lines.append(f"{len(stitched)} stitched configurations, {title}: val % min {min(rows):.2f} / "
                     f"median {statistics.median(rows):.2f} / max {max(rows):.2f}")
    lines.append(f"hypervolume (ref 1.1 x max FLOPs, 0 %): LS init {init.summary.hypervolume / 1e6:.2f}, "
                 f"joint {joint.summary.hypervolume / 1e6:.2f} (x1e6 FLOPs*%); "
                 f"Pareto front {len(joint.summary.front)} of {n}")
    lines.append("Pareto front after joint training (val % beside the LS-init val %)")
    lines.append(f"  {'id':>3} {'MFLOPs':>7} {'LS val':>6} {'val':>6}  route")
    for r in joint.summary.front:
        lines.append(f"  {r['candidate']:>3} {r['flops'] / 1e6:7.2f} {init_acc[r['candidate']]:6.2f} "
                     f"{r['val_acc']:6.2f}  {r['label']}")
    anchor_s = sum(a["train_seconds"] for a in anchors)
    lines.append(f"cost: anchors {anchor_s:.0f} s; stitching run {joint_s:.0f} s (LS init + {args.stitch_epochs} "
                 f"epochs + scoring {n} configs {eval_s:.0f} s + exports) gives {n - len(anchors)} stitched models; "
                 f"LS-init-only run {init_s:.0f} s")
    lines.append("intermediate architectures (best stitch per FLOPs bin) trained from scratch with the anchor "
                 "recipe vs the same stitch in the SN-Net")
    lines.append(f"  {'id':>3} {'MFLOPs':>7} {'scratch s':>9} {'scratch val/test':>16} {'stitch val/test':>15}")
    for s in scratch:
        r = s["row"]
        lines.append(f"  {r['candidate']:>3} {r['flops'] / 1e6:7.2f} {s['seconds']:9.1f} "
                     f"{s['val']:7.2f}/{s['test']:6.2f}  {r['val_acc']:7.2f}/{s['stitch_test']:6.2f}")
    if scratch:
        per = statistics.mean(s["seconds"] for s in scratch)
        count = n - len(anchors)
        lines.append(f"  training all {count} stitched sizes separately: ~{per * count / 60:.0f} min "
                     f"({per:.0f} s each) vs {joint_s:.0f} s for the stitching run")
    lines.append(f"total wall time {total_s / 60:.1f} min (torch threads: {args.threads})")
    return "\n".join(lines)


def markdown(args, text: str) -> str:
    cmd = (f"python scripts/bench_stitch.py --dataset {args.dataset} --anchor-epochs {args.anchor_epochs} "
           f"--stitch-epochs {args.stitch_epochs} --scratch {args.scratch} --threads {args.threads} "
           f"--augment {args.augment}")
    return (
        "## SN-Net stitching on digits (CPU)\n\n"
        f"Command: `{cmd}`  \nMachine: 2-core CPU (shared), torch {torch.__version__}, "
        f"{args.threads} torch thread(s). Date: {time.strftime('%Y-%m-%d')}.\n\n```text\n{text}\n```\n"
    )


if __name__ == "__main__":
    sys.exit(main())
