"""Downstream transfer of a stitched ViT family, and ResNet-20 with and without the standard recipe.

A real downstream transfer, offline, from the embedded digits only:

1. Data (``<out>/data``). scikit-learn's 8x8 digits drawn by the cluttered-digits renderer
   (``stitchnas.data.cluttered``: each digit upscaled 1.5-2x on a 16 px canvas at a random
   place; ``--clutter`` patches cut from other digits, none by default), split by *class*: the
   pretraining task is classes 0-4 at 16x16, the downstream task classes 5-9 (labels 0-4 there:
   a new head) at 24x24 (the 16 px canvas resized bilinearly: 1.5x the resolution, so 6x6
   instead of 4x4 patches). Each task is rendered from its own source images only, so
   pretraining never sees a pixel of a 5-9 image; train and test source images are disjoint
   (the library's stratified split). Written as ``.npz`` files (``--dataset npz``; trained with
   ``--augment crop``, because ``npz`` data count as mirror-invariant and ``auto`` would flip
   the digits).
2. Pretraining (``<out>/pretrain``): ``stitchnas anchors train --family vit_digits`` (three
   depth-12 ViTs, 32/48/64 wide, patch 4) on the 0-4 task.
3. Downstream (``<out>/direct``, ``<out>/finetuned``): ``stitchnas stitch train --anchor
   PRESET=FILE ...`` on the 5-9 task: the downstream path rebuilds the presets for the data and
   loads the pretraining checkpoints (saved without their 0-4 classifier, ``<out>/backbones``)
   with a fresh 5-class head and the position embeddings resampled (4x4 -> 6x6 grid); then
   SN-Net's least-squares init, joint training with the anchors at a lower learning rate, every
   configuration scored on search_val (``results.csv``, ``pareto.json``). The three anchors are
   exported too (``stitch export``), for their downstream test accuracy. Two arms: ``direct``
   (the pretrained backbones as they are: fresh heads trained inside the stitch run) and
   ``finetuned`` (each backbone first adapted the same way and fine-tuned standalone on the
   downstream search_train, then stitched: SN-Net's assumption that the anchors are trained for
   the task).
4. The check: anchors' accuracy rises with size (pretraining and downstream), the stitched
   front lies between the anchors, and no stitch is below the smaller anchor of its pair at
   equal or higher FLOPs; PASS/FAIL with the reasons.
5. ResNet-20 standalone (``<out>/resnet``) on ``cluttered_digits`` (digits saturates near
   100%): ``stitchnas train`` with the default recipe (crop augmentation + per-channel
   normalisation) against ``--no-augment`` at the same epochs, and, since the command line has
   no switch for normalisation, a third arm through the Python API (``train_standalone`` with
   ``DataSpec(mean=(0,), std=(1,))``: raw [0, 1] pixels) without augmentation either.

Every stage is skipped when its files are complete and resumed (``--resume``) when a folder was
left half-done; a re-run with other settings into the same ``--out`` is refused.

    python scripts/bench_transfer.py --out runs/bench_transfer
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

PRESETS = ("vit_digits_tiny", "vit_digits_small", "vit_digits_base")
PRE_CLASSES, DOWN_CLASSES = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
ARMS = ("recipe", "no_augment", "no_aug_no_norm")
ARM_TEXT = {"recipe": "crop aug + normalised (default)", "no_augment": "--no-augment, normalised",
            "no_aug_no_norm": "no aug, raw pixels (API)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_transfer")
    p.add_argument("--pre-size", type=int, default=16, help="pretraining canvas and input side (px)")
    p.add_argument("--down-size", type=int, default=24, help="downstream input side (px)")
    p.add_argument("--down-canvas", type=int, default=16,
                   help="downstream canvas side (px), resized to --down-size (default: the pretraining geometry "
                        "at 1.5x the resolution)")
    p.add_argument("--clutter", type=int, default=0, help="clutter patches per image (ViT tasks)")
    p.add_argument("--renders", type=int, default=3, help="renderings per source image (ViT tasks)")
    p.add_argument("--resnet-canvas", type=int, default=24, help="ResNet-20: cluttered_digits canvas and input side")
    p.add_argument("--pretrain-epochs", type=int, default=30)
    p.add_argument("--pretrain-lr", type=float, default=1e-3,
                   help="AdamW peak LR (3e-3 left the base ViT under-trained)")
    p.add_argument("--stitch-epochs", type=int, default=40)
    p.add_argument("--stitch-lr", type=float, default=2e-3, help="stitching layers' peak LR")
    p.add_argument("--anchor-lr-scale", type=float, default=0.25,
                   help="arm 'direct': anchors (and their fresh heads) at this x --stitch-lr")
    p.add_argument("--finetuned-anchor-lr-scale", type=float, default=0.1,
                   help="arm 'finetuned': anchors at this x --stitch-lr (SN-Net's 0.1)")
    p.add_argument("--sampler", default="ros", choices=("uniform", "ros"),
                   help="stitch train --sampler (ROS draws the anchors far more often than uniform's 1 in 71)")
    p.add_argument("--finetune-epochs", type=int, default=10,
                   help="arm 'fine-tune first': epochs of standalone downstream fine-tuning per anchor (0: arm off)")
    p.add_argument("--finetune-lr", type=float, default=5e-4)
    p.add_argument("--resnet-epochs", type=int, default=20)
    p.add_argument("--resnet-seeds", default="0,1,2")
    p.add_argument("--resnet-width", type=float, default=0.5, help="ResNet-20 --width-scale")
    p.add_argument("--resnet-renders", type=int, default=1, help="cluttered_digits renders_per_image for ResNet-20")
    p.add_argument("--resnet-arms", default=",".join(ARMS), help=f"subset of {','.join(ARMS)}")
    p.add_argument("--skip-resnet", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def bench_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in ("out", "skip_resnet", "threads")}


# ----------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    print(msg, flush=True)


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update({"OMP_NUM_THREADS": str(ARGS.threads), "MKL_NUM_THREADS": str(ARGS.threads),
              "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    return e


def run_cli(cmd: list[str], logfile: Path) -> float:
    """Runs ``stitchnas ...`` (as ``python -m stitchnas.cli.main``), output to ``logfile``;
    raises with the log's tail on failure. Returns the wall time."""
    full = [sys.executable, "-c", "import sys; from stitchnas.cli import main; sys.exit(main(sys.argv[1:]))", *cmd]
    log("  $ stitchnas " + " ".join(cmd))
    logfile.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with logfile.open("a") as fh:
        fh.write(f"\n$ stitchnas {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(full, stdout=fh, stderr=subprocess.STDOUT, env=env())
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = logfile.read_text().splitlines()[-15:]
        raise SystemExit(f"command failed (exit {proc.returncode}), log {logfile}:\n" + "\n".join(tail))
    return seconds


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


class Timings:
    """Wall time per stage, kept in ``<out>/timings.json`` so a resumed run still reports them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, float] = read_json(path) if path.exists() else {}

    def add(self, key: str, seconds: float) -> None:
        self.data[key] = round(self.data.get(key, 0.0) + seconds, 1)
        self.path.write_text(json.dumps(self.data, indent=1))

    def get(self, key: str) -> str:
        return f"{self.data[key]:.0f} s" if key in self.data else "?"


# ----------------------------------------------------------------------------- 1. data
def clutter_config(canvas: int) -> Any:
    """The renderer's settings for a ``canvas`` px task: digits upscaled 1.5x up to what fits
    (2x on 16 px, the library's 3x on 24 px), ``--clutter`` patches."""
    from stitchnas.data.cluttered import ClutterConfig

    return ClutterConfig(canvas_size=canvas, num_clutter=ARGS.clutter, renders_per_image=ARGS.renders,
                         min_scale=1.5, max_scale=min(3.0, canvas / 8))


def render_task(classes: tuple[int, ...], canvas: int, seed: int, stream: int) -> dict[str, np.ndarray]:
    """Digits of ``classes`` only rendered by the cluttered-digits renderer (clutter, if any, from
    the same classes' images of the same split), labels renumbered 0..len(classes)-1; source
    images of train and test disjoint."""
    from sklearn.datasets import load_digits

    from stitchnas.data.cluttered import _render  # the renderer behind cluttered_digits
    from stitchnas.data.splits import stratified_split

    config = clutter_config(canvas)
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_src, test_src = stratified_split(labels, 0.2, seed, "test_fraction")  # as make_cluttered_digits
    remap = {c: i for i, c in enumerate(classes)}
    out: dict[str, np.ndarray] = {}
    for split, sources, sub in (("train", train_src, 1), ("test", test_src, 2)):
        mine = sources[np.isin(labels[sources], classes)]
        x, order = _render(images, mine, config, np.random.default_rng([seed, stream, sub]), config.renders_per_image)
        out[f"x_{split}"] = x
        out[f"y_{split}"] = np.array([remap[int(c)] for c in labels[order]], dtype=np.int64)
        out[f"src_{split}"] = order
    assert not set(out["src_train"].tolist()) & set(out["src_test"].tolist())
    return out


def stage_data(out: Path) -> tuple[Path, Path]:
    folder = out / "data"
    pre, down = folder / "pretrain_0-4.npz", folder / "downstream_5-9.npz"
    if pre.exists() and down.exists():
        log(f"[data] reused {folder}")
        return pre, down
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    tasks = ((pre, PRE_CLASSES, ARGS.pre_size, 10), (down, DOWN_CLASSES, ARGS.down_canvas, 20))
    for path, classes, canvas, stream in tasks:
        arrays = render_task(classes, canvas, ARGS.seed, stream)
        sources.append(set(arrays["src_train"].tolist()) | set(arrays["src_test"].tolist()))
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, x_train=arrays["x_train"], y_train=arrays["y_train"],
                            x_test=arrays["x_test"], y_test=arrays["y_test"])
        tmp.replace(path)
        log(f"[data] {path.name}: classes {classes[0]}-{classes[-1]}, train {len(arrays['y_train'])}, "
            f"test {len(arrays['y_test'])} images ({canvas}x{canvas}, {clutter_config(canvas)})")
    assert not sources[0] & sources[1]  # no source image in both tasks
    return pre, down


# ----------------------------------------------------------------------------- 2. pretraining
def stage_pretrain(out: Path, npz: Path, timings: Timings) -> Path:
    folder = out / "pretrain"
    manifest = folder / "anchors.json"
    if manifest.exists() and len(read_json(manifest)["anchors"]) == len(PRESETS) \
            and all((folder / f"{p}.pth").exists() for p in PRESETS):
        log(f"[pretrain] reused {folder}")
        return folder
    cmd = ["anchors", "train", "--family", "vit_digits", "--dataset", "npz", "--data-dir", str(npz),
           "--input-size", str(ARGS.pre_size), "--augment", "crop", "--epochs", str(ARGS.pretrain_epochs),
           "--lr", str(ARGS.pretrain_lr), "--seed", str(ARGS.seed), "--device", "cpu", "--no-progress",
           "--out", str(folder)]
    if (folder / "run_config.json").exists():
        cmd.append("--resume")
    timings.add("pretrain", run_cli(cmd, out / "logs" / "pretrain.log"))
    return folder


def stage_backbones(out: Path, pretrain: Path) -> Path:
    """The pretraining checkpoints without their classifier (timm's ``num_classes=0`` export):
    the downstream classes 5-9 are other classes than 0-4, but as many, so a checkpoint with its
    head would hand the 0-4 classifier to the 5-9 task (the loader replaces a head only when the
    class count differs, as timm does). Without one, loading gives a fresh head."""
    import torch

    folder = out / "backbones"
    folder.mkdir(parents=True, exist_ok=True)
    for preset in PRESETS:
        target = folder / f"{preset}.pth"
        if not target.exists():
            state = torch.load(pretrain / f"{preset}.pth", map_location="cpu", weights_only=True)
            tmp = target.with_suffix(".tmp")
            torch.save({k: v for k, v in state.items() if not k.startswith("head.")}, tmp)
            tmp.replace(target)
    return folder


# ----------------------------------------------------------------------------- 3. downstream stitching
def arm_lr_scale(name: str) -> float:
    return ARGS.anchor_lr_scale if name == "direct" else ARGS.finetuned_anchor_lr_scale


def stage_stitch(out: Path, npz: Path, anchor_dir: Path, name: str, timings: Timings) -> Path:
    folder = out / name
    if not ((folder / "pareto.json").exists() and (folder / "results.csv").exists()):
        cmd = ["stitch", "train"]
        for preset in PRESETS:
            cmd += ["--anchor", f"{preset}={anchor_dir / (preset + '.pth')}"]
        cmd += ["--dataset", "npz", "--data-dir", str(npz), "--input-size", str(ARGS.down_size),
                "--augment", "crop", "--epochs", str(ARGS.stitch_epochs), "--lr", str(ARGS.stitch_lr),
                "--anchor-lr-scale", str(arm_lr_scale(name)), "--sampler", ARGS.sampler, "--seed", str(ARGS.seed),
                "--device", "cpu", "--no-progress", "--out", str(folder)]
        if (folder / "run_config.json").exists():
            cmd.append("--resume")
        timings.add(name, run_cli(cmd, out / "logs" / f"{name}.log"))
    else:
        log(f"[{name}] reused {folder}")
    for i in range(len(PRESETS)):  # the anchors' downstream test accuracy
        target = folder / "selected" / f"anchor{i}"
        if not (target / "model.json").exists():
            timings.add(f"{name}_anchor_exports", run_cli(
                ["stitch", "export", "--run", str(folder), "--config", str(i), "--out", str(target)],
                out / "logs" / f"{name}.log"))
    return folder


def stage_finetune(out: Path, npz: Path, pretrain: Path, timings: Timings) -> Path:
    """Arm 'fine-tune first': each pretraining checkpoint adapted exactly as the downstream path
    adapts it (``anchor_refs_from_files`` + ``load_anchors_with_reports``: fresh head, resampled
    ``pos_embed``), fine-tuned standalone on the downstream search_train with the anchors'
    trainer, and saved as a timm-format state dict for ``stitch train --anchor``."""
    import torch

    from stitching.anchors import anchor_refs_from_files, load_anchors_with_reports
    from stitching.flops import anchor_flops
    from stitching.trainer import StitchTrainConfig, train_network
    from stitchnas.core.evaluation import accuracy
    from stitchnas.core.io import atomic_torch_save
    from stitchnas.data import DataSpec, load_data

    folder = out / "finetune"
    folder.mkdir(parents=True, exist_ok=True)
    if all((folder / f"{p}.json").exists() for p in PRESETS):
        log(f"[finetune] reused {folder}")
        return folder
    torch.set_num_threads(ARGS.threads)
    data = load_data(DataSpec("npz", data_dir=str(npz), input_size=ARGS.down_size, seed=ARGS.seed))
    refs = anchor_refs_from_files([(p, str(pretrain / f"{p}.pth")) for p in PRESETS], input_size=data.input_size,
                                  in_chans=data.in_chans, num_classes=data.num_classes)
    cfg = StitchTrainConfig(epochs=ARGS.finetune_epochs, batch_size=32, lr=ARGS.finetune_lr, warmup_epochs=1,
                            seed=ARGS.seed, device="cpu", augment="crop")
    for i, ref in enumerate(refs):
        if (folder / f"{ref.name}.json").exists():
            continue
        torch.manual_seed(ARGS.seed * 1000 + i)  # the fresh head's initialisation
        (model,), (adapted,) = load_anchors_with_reports([ref])
        start = time.perf_counter()
        train_network(model, data.search_train, cfg, checkpoint_path=folder / f"{ref.name}.train.pt", resume=True,
                      desc=f"fine-tune {ref.name}", progress=False)
        seconds = time.perf_counter() - start
        atomic_torch_save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                          folder / f"{ref.name}.pth")
        entry = {"name": ref.name, "flops": anchor_flops(model).total,
                 "val_acc": accuracy(model, data.search_val, device="cpu"),
                 "test_acc": accuracy(model, data.test, device="cpu"),
                 "seconds": round(seconds, 1), "adapted": adapted.describe()}
        (folder / f"{ref.name}.json").write_text(json.dumps(entry, indent=1))
        (folder / f"{ref.name}.train.pt").unlink(missing_ok=True)
        timings.add("finetune", seconds)
        log(f"  fine-tuned {ref.name}: downstream val {entry['val_acc']:.2f} %, test {entry['test_acc']:.2f} % "
            f"({seconds:.0f} s; {'; '.join(entry['adapted'])})")
    return folder


# ----------------------------------------------------------------------------- 4. ResNet-20
def resnet_data_args() -> list[str]:
    return ["--dataset", "cluttered_digits", "--input-size", str(ARGS.resnet_canvas),
            "--data-option", f"canvas_size={ARGS.resnet_canvas}",
            "--data-option", f"renders_per_image={ARGS.resnet_renders}"]


def raw_pixel_train(folder: Path, seed: int, resume: bool) -> None:
    """``stitchnas train --no-augment`` with normalisation off: the command line has no switch for
    it, so the same function it calls, with the DataSpec's given statistics mean 0, std 1."""
    import torch

    from searchspace.pooling import create_space
    from stitchnas.data import DataSpec
    from stitchnas.methods.pooling import train_standalone
    from supernet.evaluation import EvalConfig
    from supernet.training import TrainConfig

    torch.set_num_threads(ARGS.threads)
    space = create_space("resnet20", width_scale=ARGS.resnet_width)
    spec = DataSpec("cluttered_digits", input_size=ARGS.resnet_canvas, seed=seed, mean=(0.0,), std=(1.0,),
                    options={"canvas_size": ARGS.resnet_canvas, "renders_per_image": ARGS.resnet_renders})
    lr = 0.1  # stitchnas train's defaults, as train_config_from_args builds them
    train_cfg = TrainConfig(epochs=ARGS.resnet_epochs, batch_size=64, lr=lr, lr_min=min(lr, 1e-3),
                            weight_decay=5e-4, seed=seed, device="cpu", amp=True, augment="none")
    train_standalone(space, space.default_config(), spec, train_cfg, folder,
                     EvalConfig(bn_mode="recalibrate", calib_batches=8, device="cpu", seed=seed),
                     resume=resume, progress=False)


def stage_resnet(out: Path, timings: Timings) -> dict[tuple[str, int], float]:
    arms = [a.strip() for a in ARGS.resnet_arms.split(",") if a.strip()]
    seeds = [int(s) for s in ARGS.resnet_seeds.split(",") if s.strip()]
    accs: dict[tuple[str, int], float] = {}
    for seed in seeds:
        for arm in arms:
            folder = out / "resnet" / f"{arm}_s{seed}"
            record = folder / "model" / "model.json"
            if not record.exists():
                resume = (folder / "run_config.json").exists()
                if arm == "no_aug_no_norm":
                    log(f"  (API) train_standalone resnet20 x{ARGS.resnet_width} raw pixels, no aug, "
                        f"seed {seed} -> {folder}")
                    start = time.perf_counter()
                    raw_pixel_train(folder, seed, resume)
                    timings.add(f"resnet_{arm}_s{seed}", time.perf_counter() - start)
                else:
                    cmd = ["train", "--space", "resnet20", "--width-scale", str(ARGS.resnet_width), *resnet_data_args(),
                           "--epochs", str(ARGS.resnet_epochs), "--seed", str(seed), "--device", "cpu",
                           "--no-progress", "--out", str(folder)]
                    if arm == "no_augment":
                        cmd.append("--no-augment")
                    if resume:
                        cmd.append("--resume")
                    timings.add(f"resnet_{arm}_s{seed}", run_cli(cmd, out / "logs" / "resnet.log"))
            else:
                log(f"[resnet] reused {folder}")
            accs[(arm, seed)] = float(read_json(record)["metrics"]["test_acc"])
    return accs


# ----------------------------------------------------------------------------- report
def read_results(folder: Path) -> list[dict[str, Any]]:
    with (folder / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["candidate"] = int(r["candidate"])
        r["flops"] = float(r["flops"])
        r["val_acc"] = float(r["val_acc"]) if r.get("val_acc") not in (None, "") else float("nan")
    return rows


def anchor_pair(row: dict[str, Any], n: int) -> tuple[int, int]:
    """Lowest and highest anchor index a stitch's route uses (results.csv's ``config``:
    ``{"route": [[anchor, first block, last block], ...], ...}``)."""
    used = sorted({int(seg[0]) for seg in json.loads(row["config"])["route"]})
    if not used or any(not 0 <= u < n for u in used):
        raise ValueError(f"cannot read the anchors of route {row['label']!r}")
    return used[0], used[-1]


def report(pretrain: Path, arms: list[tuple[str, Path]], finetune: Path | None,
           resnet: dict[tuple[str, int], float] | None, timings: Timings) -> None:
    manifest = read_json(pretrain / "anchors.json")
    first = arms[0][1]
    what = f"digits at random scale and place{', ' + str(ARGS.clutter) + ' clutter patches' if ARGS.clutter else ''}"
    log("")
    log(f"pretraining task: {what}, classes 0-4, {ARGS.pre_size}x{ARGS.pre_size} px"
        f" (search_train {_split_size(pretrain, 'search_train')}, search_val {_split_size(pretrain, 'search_val')}, "
        f"test {_split_size(pretrain, 'test')}), {ARGS.pretrain_epochs} epochs, AdamW {ARGS.pretrain_lr:g}, crop aug; "
        f"{timings.get('pretrain')}")
    log(f"downstream task:  {what}, classes 5-9 (new 5-class head), {ARGS.down_canvas} px canvas at "
        f"{ARGS.down_size}x{ARGS.down_size} px"
        f" (search_train {_split_size(first, 'search_train')}, search_val {_split_size(first, 'search_val')}, "
        f"test {_split_size(first, 'test')}); stitch train: {ARGS.stitch_epochs} epochs, {ARGS.sampler} sampling, "
        f"stitching layers {ARGS.stitch_lr:g}, crop aug, anchors "
        + ", ".join(f"{ARGS.stitch_lr * arm_lr_scale(name):g} ('{name}')" for name, _ in arms))
    log("anchors: pretraining task (FLOPs at its size, search_val / test) | downstream task (FLOPs at its size; "
        "each arm's anchor after the stitch run, search_val / test; the standalone fine-tune before stitching)")
    log(f"{'anchor':<18} {'MFLOPs':>7} {'val %':>6} {'test %':>6} | {'MFLOPs':>7}"
        + "".join(f" | {name + ' val / test %':>27}" for name, _ in arms)
        + (f" | {'fine-tune val / test %':>31}" if finetune else ""))
    for i, entry in enumerate(manifest["anchors"]):
        by_arm = []
        for _, folder in arms:
            row = {r["candidate"]: r for r in read_results(folder)}[i]
            test = read_json(folder / "selected" / f"anchor{i}" / "model.json")["metrics"]["test_acc"]
            by_arm.append((row["flops"], row["val_acc"], test))
        line = (f"{entry['name']:<18} {entry['flops'] / 1e6:7.3f} {entry['val_acc']:6.2f} {entry['test_acc']:6.2f} | "
                f"{by_arm[0][0] / 1e6:7.3f}" + "".join(f" | {v:>13.2f} / {t:<11.2f}" for _, v, t in by_arm))
        if finetune:
            ft = read_json(finetune / f"{entry['name']}.json")
            line += f" | {ft['val_acc']:>15.2f} / {ft['test_acc']:<13.2f}"
        log(line)
    adapted = read_json(first / "selected" / "anchor0" / "model.json")["provenance"].get("anchor_adaptations")
    log(f"downstream loading adapted ('direct' run's provenance): {adapted}")
    for name, folder in arms:
        report_arm(name, folder, manifest["anchors"], timings)
    if resnet:
        resnet_table(resnet, timings)


def report_arm(name: str, stitch: Path, pre_entries: list[dict], timings: Timings) -> bool:
    rows = read_results(stitch)
    by_id = {r["candidate"]: r for r in rows}
    pareto = read_json(stitch / "pareto.json")
    n = len(PRESETS)
    anchors = [by_id[i] for i in range(n)]
    n_val = _split_size(stitch, "search_val")
    front_ids = [int(m["candidate"]) for m in pareto["front"]]
    exports = {}
    for folder in sorted((stitch / "exports").glob("*")):
        rec = read_json(folder / "model.json")
        exports[int(rec["config"]["id"])] = rec["metrics"].get("test_acc")
    log("")
    log(f"== arm '{name}' ({stitch}): stitched front, {len(front_ids)} of {len(rows)} configurations "
        f"(val = search_val, {n_val} images); run {timings.get(name)}")
    log(f"  {'id':>4} {'MFLOPs':>8} {'val %':>7} {'test %':>7}  route")
    for cid in sorted(front_ids, key=lambda c: by_id[c]["flops"]):
        r = by_id[cid]
        test = exports.get(cid)
        log(f"  {cid:>4} {r['flops'] / 1e6:8.3f} {r['val_acc']:7.2f} {'' if test is None else f'{test:7.2f}':>7}  "
            f"{'anchor ' + PRESETS[cid] if cid < n else r['label']}")
    stitched = [r for r in rows if r["candidate"] >= n and r.get("status", "ok") == "ok"]
    vals = [r["val_acc"] for r in stitched]
    log(f"  all {len(stitched)} stitches, val %: min {min(vals):.2f} / median {statistics.median(vals):.2f} "
        f"/ max {max(vals):.2f}; hypervolume {pareto['hypervolume']:.4g}")
    return check(anchors, pre_entries, stitched, [by_id[c] for c in front_ids], n_val)


def _split_size(run: Path, split: str) -> int:
    """Size of a split of a run's data (loaded again: cheap for these sets)."""
    key = (str(run), split)
    if key not in _SIZES:
        from stitchnas.data import DataSpec, load_data

        cfg = read_json(run / "run_config.json")
        data = load_data(DataSpec.from_json(cfg["data"]))
        for name in ("search_train", "search_val", "test"):
            _SIZES[(str(run), name)] = len(getattr(data, name))
    return _SIZES[key]


_SIZES: dict[tuple[str, str], int] = {}


def check(anchors: list[dict], pre_entries: list[dict], stitched: list[dict], front: list[dict], n_val: int) -> bool:
    """The issue's check, item by item, with the reason of every failure."""
    reasons: list[str] = []
    notes: list[str] = []
    pre = [e["val_acc"] for e in pre_entries]
    down = [a["val_acc"] for a in anchors]
    for what, accs in (("pretraining", pre), ("downstream", down)):
        rising = all(a < b for a, b in zip(accs, accs[1:]))
        log(f"  [{'PASS' if rising else 'FAIL'}] anchors' {what} val accuracy rises with size: "
            + " < ".join(f"{a:.2f}" for a in accs))
        if not rising:
            reasons.append(f"{what} anchors not in size order ({', '.join(f'{a:.2f}' for a in accs)})")
    lo_f, hi_f = anchors[0]["flops"], anchors[-1]["flops"]
    lo_a, hi_a = min(down), max(down)
    se = 100 * math.sqrt(max(statistics.mean(down) / 100 * (1 - statistics.mean(down) / 100), 1e-9) / n_val)
    outside = [r for r in front if r["candidate"] >= len(anchors)
               and not (lo_f <= r["flops"] <= hi_f and lo_a <= r["val_acc"] <= hi_a)]
    between = not outside

    def where(r: dict) -> str:
        parts = []
        if r["flops"] > hi_f:
            parts.append(f"{(r['flops'] - hi_f) / 1e6:.3f} MF above the largest anchor's FLOPs")
        if r["val_acc"] > hi_a:
            parts.append(f"{r['val_acc'] - hi_a:.2f} points above the best anchor")
        if r["val_acc"] < lo_a:
            parts.append(f"{lo_a - r['val_acc']:.2f} points below the worst anchor")
        return f"id {r['candidate']} {r['flops'] / 1e6:.3f} MF {r['val_acc']:.2f} % ({', '.join(parts)})"

    log(f"  [{'PASS' if between else 'FAIL'}] stitched front between the anchors "
        f"({lo_f / 1e6:.3f}-{hi_f / 1e6:.3f} MFLOPs, {lo_a:.2f}-{hi_a:.2f} %)"
        + ("" if between else ": outside: " + "; ".join(where(r) for r in outside)))
    if not between:
        near = sum(1 for r in outside if r["flops"] <= hi_f and r["val_acc"] - hi_a <= 2 * se)
        reasons.append(f"{len(outside)} front stitch(es) outside the anchors' box ({near} of them only "
                       f"by accuracy, within 2 SE = {2 * se:.2f} points)")
    anchors_on_front = sorted(r["candidate"] for r in front if r["candidate"] < len(anchors))
    notes.append(f"anchors on the front: {[PRESETS[i] for i in anchors_on_front] or 'none'}")
    # no stitch below the smaller anchor (of the pair it joins) at equal or higher FLOPs
    below = []
    for r in stitched:
        lo, _ = anchor_pair(r, len(anchors))
        small = anchors[lo]
        if r["flops"] >= small["flops"] and r["val_acc"] < small["val_acc"]:
            below.append((small["val_acc"] - r["val_acc"], r, lo))
    ok_below = not below
    log(f"  [{'PASS' if ok_below else 'FAIL'}] no stitch below the smaller anchor of its pair at >= its FLOPs: "
        f"{len(below)} of {len(stitched)} below")
    if below:
        below.sort(key=lambda t: -t[0])
        within = sum(1 for d, _, _ in below if d <= 2 * se)
        for lo in range(len(anchors)):
            mine = [d for d, _, a in below if a == lo]
            if mine:
                log(f"         smaller anchor {PRESETS[lo]} ({anchors[lo]['val_acc']:.2f} %): "
                    f"{len(mine)} stitches below, "
                    f"by up to {max(mine):.2f} points")
        for d, r, lo in below[:5]:
            log(f"         id {r['candidate']:>3} {r['flops'] / 1e6:7.3f} MF {r['val_acc']:6.2f} % ({d:.2f} below "
                f"{PRESETS[lo]}) {r['label']}")
        log(f"         {within} of {len(below)} within 2 binomial standard errors ({2 * se:.2f} points on "
            f"{n_val} images)")
        reasons.append(f"{len(below)} stitches below the smaller anchor of their pair at >= its FLOPs "
                       f"(worst {below[0][0]:.2f} points, {within} within 2 SE = {2 * se:.2f})")
    ok = not reasons
    log(f"CHECK: {'PASS' if ok else 'FAIL'}" + ("" if ok else " -- " + "; ".join(reasons)) + f" ({'; '.join(notes)})")
    return ok


def resnet_table(accs: dict[tuple[str, int], float], timings: Timings) -> None:
    arms = [a for a in ARMS if any(k[0] == a for k in accs)]
    seeds = sorted({k[1] for k in accs})
    log("")
    side = ARGS.resnet_canvas
    log(f"ResNet-20 [4,3,3] (x{ARGS.resnet_width} width) standalone on cluttered_digits {side}x{side} "
        f"(renders_per_image={ARGS.resnet_renders}), {ARGS.resnet_epochs} epochs, SGD 0.1 cosine, batch 64; "
        f"test accuracy %")
    log(f"  {'recipe':<32} " + " ".join(f"{'seed ' + str(s):>8}" for s in seeds) + f" {'mean':>7} {'s/run':>6}")
    for arm in arms:
        vals = [accs[(arm, s)] for s in seeds if (arm, s) in accs]
        secs = [timings.data.get(f"resnet_{arm}_s{s}") for s in seeds]
        sec = statistics.mean([s for s in secs if s]) if any(secs) else float("nan")
        log(f"  {ARM_TEXT[arm]:<32} " + " ".join(f"{accs.get((arm, s), float('nan')):8.2f}" for s in seeds)
            + f" {statistics.mean(vals):7.2f} {sec:6.0f}")


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    global ARGS
    ARGS = parse_args(argv)
    out = Path(ARGS.out).resolve()  # run configs record the data path: absolute, so any cwd reads them
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / "bench_config.json"
    settings = bench_settings(ARGS)
    if settings_path.exists():
        old = read_json(settings_path)
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            raise SystemExit(f"{out} holds a run with other settings {diff}; use another --out")
    else:
        settings_path.write_text(json.dumps(settings, indent=1))
    timings = Timings(out / "timings.json")
    start = time.perf_counter()
    log(f"[start] load average {Path('/proc/loadavg').read_text().split()[:3]}")
    pre_npz, down_npz = stage_data(out)
    log("[pretrain] three ViT anchors on the 0-4 task")
    pretrain = stage_pretrain(out, pre_npz, timings)
    backbones = stage_backbones(out, pretrain)
    log("[stitch] arm 'direct': downstream SN-Net on the 5-9 task straight from the pretraining checkpoints")
    arms = [("direct", stage_stitch(out, down_npz, backbones, "direct", timings))]
    finetune = None
    if ARGS.finetune_epochs > 0:
        log("[finetune] arm 'fine-tune first': each anchor fine-tuned on the 5-9 task, then stitched")
        finetune = stage_finetune(out, down_npz, backbones, timings)
        arms.append(("finetuned", stage_stitch(out, down_npz, finetune, "finetuned", timings)))
    resnet = None
    if not ARGS.skip_resnet:
        log("[resnet] ResNet-20 standalone, recipe vs none")
        resnet = stage_resnet(out, timings)
    report(pretrain, arms, finetune, resnet, timings)
    log(f"\nthis invocation: {time.perf_counter() - start:.0f} s; load average now "
        f"{Path('/proc/loadavg').read_text().split()[:3]}")
    return 0  # the verdict is printed; a FAIL is a finding, not a crash


ARGS: argparse.Namespace

if __name__ == "__main__":
    sys.exit(main())
