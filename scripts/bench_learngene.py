"""Benchmark the Learngene Pool beside SN-Net on the embedded digits data, CPU only.

Recipe (every stage seeded; ``--threads 1``):

1. Train the ``vit_digits`` family standalone (tiny/small/base: 32/48/64 wide, 12 blocks,
   ``--anchor-epochs``, AdamW 3e-3, batch 32). The base anchor is the **teacher** of both
   methods.
2. SN-Net on the three anchors (71 configurations): least-squares init, ``--finetune-epochs``
   of joint training (AdamW 1e-3, anchors x0.1) with soft distillation (weight 0.5) from the
   teacher, then every configuration scored on ``search_val``.
3. Learngene Pool: distil the teacher into a 32-wide and a 64-wide student of
   ``--student-depth`` blocks (``front_end`` matches, alpha 0.1, T 1, learned matrices,
   ``--distill-epochs``, AdamW 2e-3, 2 warm-up epochs), build the 3 x depth descendants,
   initialise the stitching layers from the transformation matrices, fine-tune
   ``--finetune-epochs`` (AdamW 3e-4, one rate for all, soft distillation weight 0.5 from the
   teacher), score every descendant.
4. Init ablation: matrices vs least squares (100 images), scored right after the init and
   after ``--short-epochs`` of fine-tuning, on the students of step 3 and on students
   distilled the same way but with frozen matrices (the official code's effective setting).

Both fronts' hypervolumes use one reference point (1.1 x the largest FLOPs of either method,
0 % accuracy), so they compare. "Stored parameters" are what serving every model of a method
needs: SN-Net's three anchors plus its stitching layers, the pool's two students plus its
stitching layers (the teacher is needed for training only; it is also SN-Net's base anchor).

    python scripts/bench_learngene.py --out runs/bench_learngene
"""

from __future__ import annotations

import argparse
from functools import partial
import logging
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

import stitchnas
from stitching.anchors import read_anchor_folder
from stitchnas.methods.anchors import AnchorTrainConfig, train_anchors
from stitching.flops import anchor_flops
from stitching.learngene import StudentSpec
from stitching.learngene_train import DistillConfig
from stitching.trainer import StitchTrainConfig
from stitchnas.data import DataSpec, load_data
from stitchnas.core.io import read_json
from stitchnas.methods import method_from_run
from stitchnas.methods.learngene import LearngeneDistillRunConfig, LearngenePoolConfig, run_distill
from stitchnas.search.pareto import hypervolume_2d
from stitchnas.methods.snnet import StitchSearchConfig
from benchlib import add_augment_option, timed
from stitchnas.core.evaluation import accuracy


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_learngene")
    p.add_argument("--anchor-epochs", type=int, default=20)
    p.add_argument("--distill-epochs", type=int, default=20)
    p.add_argument("--finetune-epochs", type=int, default=8, help="SN-Net joint training and pool fine-tuning")
    p.add_argument("--short-epochs", type=int, default=2, help="fine-tuning of the init ablation")
    p.add_argument("--student-depth", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    add_augment_option(p)
    return p.parse_args(argv)


def trained_network(run: Path):
    """A finished run's network with the weights of its last checkpoint (eval mode)."""
    method = method_from_run(run)
    return method.load_trained(run, method.load_data())


def extremes(rows: list[dict], net, data) -> dict:
    """FLOPs and val/test accuracy of the smallest and the largest model (by FLOPs)."""
    out = {}
    for key, row in (("small", min(rows, key=lambda r: r["flops"])), ("large", max(rows, key=lambda r: r["flops"]))):
        net.set_active(int(row["candidate"]))
        out[key] = {"label": row["label"], "flops": row["flops"], "val": row["val_acc"],
                    "test": accuracy(net, data.test)}
    return out


def stitched_stats(rows: list[dict], num_instances: int) -> str:
    acc = [r["val_acc"] for r in rows if int(r["candidate"]) >= num_instances]
    return (f"min {min(acc):6.2f} / median {statistics.median(acc):6.2f} / mean {statistics.mean(acc):6.2f} / "
            f"max {max(acc):6.2f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    train_config = partial(StitchTrainConfig, augment=args.augment)  # every run's recipe
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    spec = DataSpec(name="digits", input_size=16, seed=args.seed)
    data = load_data(spec)
    start_all, cpu_all = time.perf_counter(), time.process_time()

    # 1. the anchor family (reused when already trained with these settings)
    anchor_train = train_config(epochs=args.anchor_epochs, batch_size=32, lr=3e-3, warmup_epochs=2,
                                seed=args.seed)
    train_anchors(AnchorTrainConfig("vit_digits", spec, anchor_train), out / "anchors", resume=True, progress=False)
    anchors = read_json(out / "anchors" / "anchors.json", "anchors manifest")["anchors"]
    refs = read_anchor_folder(out / "anchors")
    teacher_ref = refs[-1]
    for name in ("snnet", "distill", "distill_frozen", "pool", "ablation"):
        shutil.rmtree(out / name, ignore_errors=True)

    # 2. SN-Net on the family, distilled from the same teacher
    joint = train_config(epochs=args.finetune_epochs, batch_size=32, lr=1e-3, distill_weight=0.5,
                         seed=args.seed)
    snnet_run, snnet_s = timed(stitchnas.run_search, StitchSearchConfig(anchors=tuple(refs), data=spec, train=joint,
                                                                         export_front=False), out / "snnet",
                               progress=False)
    snnet = trained_network(out / "snnet")

    # 3. Learngene Pool
    d = args.student_depth
    students = (StudentSpec("tiny", 32, 2, d), StudentSpec("base", 64, 4, d))
    distill = DistillConfig(students, matches="front_end", alpha=0.1, temperature=1.0,
                            train=train_config(epochs=args.distill_epochs, batch_size=32, lr=2e-3,
                                               warmup_epochs=2, seed=args.seed))
    distilled, distill_s = timed(run_distill, LearngeneDistillRunConfig(teacher_ref, distill, spec), out / "distill",
                                 progress=False)
    finetune = train_config(epochs=args.finetune_epochs, batch_size=32, lr=3e-4, anchor_lr_scale=1.0,
                            distill_weight=0.5, seed=args.seed)
    pool_cfg = LearngenePoolConfig(distill_run=str(out / "distill"), init="matrices", finetune=finetune,
                                   export_front=True)
    pool_run, pool_s = timed(stitchnas.run_search, pool_cfg, out / "pool", progress=False)
    pool = trained_network(out / "pool")

    # 4. init ablation, on the students above and on students distilled with frozen matrices
    frozen, frozen_s = timed(run_distill, LearngeneDistillRunConfig(teacher_ref, replace(distill, train_matrices=False),
                                                                     spec), out / "distill_frozen", progress=False)
    ablation = {}
    for matrices in ("learned", "frozen"):
        run_dir = out / ("distill" if matrices == "learned" else "distill_frozen")
        for init in ("matrices", "least_squares"):
            for tag, epochs in (("0", 0), ("short", args.short_epochs)):
                cfg = LearngenePoolConfig(distill_run=str(run_dir), init=init, export_front=False,
                                          finetune=replace(finetune, epochs=epochs))
                ablation[(matrices, init, tag)] = stitchnas.run_search(
                    cfg, out / "ablation" / f"{matrices}_{init}_{tag}", progress=False)
    total_s, cpu_s = time.perf_counter() - start_all, time.process_time() - cpu_all

    # shared hypervolume reference
    ref = (1.1 * max(max(r["flops"] for r in snnet_run.rows), max(r["flops"] for r in pool_run.rows)), 0.0)

    def hv(rows: list[dict]) -> float:
        return hypervolume_2d([r["flops"] for r in rows], [r["val_acc"] for r in rows], ref) / 1e6

    methods = {"SN-Net": (snnet, snnet_run), "Learngene Pool": (pool, pool_run)}
    lines = [f"digits 16x16: search_train {len(data.search_train)}, search_val {len(data.search_val)}, "
             f"test {len(data.test)} images; torch threads {args.threads}"]
    t = anchors[-1]
    lines.append(f"teacher = SN-Net's base anchor {teacher_ref.name}: {t['flops'] / 1e6:.2f} MFLOPs, "
                 f"{t['params']} params, val {t['val_acc']:.2f} / test {t['test_acc']:.2f} %")
    lines.append(f"anchors ({args.anchor_epochs} epochs each, augment {args.augment}): " + ", ".join(
        f"{a['name'].replace('vit_digits_', '')} {a['flops'] / 1e6:.2f} MFLOPs val {a['val_acc']:.2f}"
        for a in anchors))
    m = distilled.manifest
    for what, man, secs in (("learned", m, distill_s), ("frozen", frozen.manifest, frozen_s)):
        lines.append(f"students, {what} matrices ({args.distill_epochs} epochs of distillation, {secs:.0f} s): "
                     + ", ".join(f"{s['name']} {s['embed_dim']}x{s['depth']} {s['flops'] / 1e6:.2f} MFLOPs "
                                 f"val {s['val_acc']:.2f}" for s in man["students"]))
    lines.append(f"{'':<15} {'configs':>7} {'stored params':>13} {'min MFLOPs':>10} {'HV':>7} {'front':>5} "
                 f"{'smallest val/test':>17} {'largest val/test':>16}")
    for name, (net, run) in methods.items():
        ex = extremes(run.rows, net, data)
        small, large = ex["small"], ex["large"]
        lines.append(f"{name:<15} {len(run.rows):>7} {sum(p.numel() for p in net.parameters()):>13} "
                     f"{small['flops'] / 1e6:>10.3f} {hv(run.rows):>7.2f} {len(run.summary.front):>5} "
                     f"{small['val']:>8.2f}/{small['test']:<8.2f} {large['val']:>7.2f}/{large['test']:<8.2f}")
        lines.append(f"{'':<15} smallest: {ex['small']['label']}; largest: {ex['large']['label']}")
    lines.append(f"HV: hypervolume in 1e6 FLOPs x %, reference ({ref[0] / 1e6:.2f} MFLOPs, 0 %), both fronts")
    pool_anchor = anchor_flops(dict(m["students"][0]["config"])).total
    lines.append(f"smallest pool model vs smallest SN-Net anchor: {pool_anchor / 1e6:.3f} vs "
                 f"{anchors[0]['flops'] / 1e6:.3f} MFLOPs")
    extra = anchors[0]["train_seconds"] + anchors[1]["train_seconds"]
    lines.append(f"wall time beyond the teacher: SN-Net tiny/small anchors {extra:.0f} s + joint run {snnet_s:.0f} s; "
                 f"Learngene distill {distill_s:.0f} s + pool run {pool_s:.0f} s (runs include scoring, exports)")
    lines.append(f"init ablation ({len(pool_run.rows) - 2} stitched descendants, val %; HV of all descendants):")
    for matrices in ("learned", "frozen"):
        for init in ("matrices", "least_squares"):
            for tag, what in (("0", "right after init"), ("short", f"after {args.short_epochs} epochs")):
                run = ablation[(matrices, init, tag)]
                lines.append(f"  {matrices:<7} {init:<13} {what:<18} {stitched_stats(run.rows, 2)}  "
                             f"HV {hv(run.rows):.2f}")
    lines.append(f"total wall time {total_s / 60:.1f} min, CPU time of this process {cpu_s / 60:.1f} min "
                 "(anchors reused from an earlier run in --out count in neither)")
    text = "\n".join(lines)
    print(text)
    (out / "BENCH_SNIPPET.md").write_text(markdown(args, text))
    print(f"\nmarkdown snippet: {(out / 'BENCH_SNIPPET.md').resolve()}")
    return 0


def markdown(args: argparse.Namespace, text: str) -> str:
    cmd = (f"OMP_NUM_THREADS=1 python scripts/bench_learngene.py --anchor-epochs {args.anchor_epochs} "
           f"--distill-epochs {args.distill_epochs} --finetune-epochs {args.finetune_epochs} "
           f"--short-epochs {args.short_epochs} --student-depth {args.student_depth} --threads {args.threads}")
    return ("## Learngene Pool beside SN-Net on digits (CPU)\n\n"
            f"Command: `{cmd}`  \nMachine: 2-core CPU (shared), torch {torch.__version__}, {args.threads} torch "
            f"thread(s). Date: 2026-11-23.\n\n```text\n{text}\n```\n")


if __name__ == "__main__":
    sys.exit(main())
