"""Shared-prefix candidate evaluation against per-candidate evaluation (issue 14, part 2).

For each space: the ideal FLOPs ratio computed from the space (every distinct prefix once per
image over every configuration's own FLOPs, fvcore convention), the FLOPs the shared evaluation
actually ran over those of per-candidate evaluation (counted from the steps the trie executor
applied, recomputations included; with ``--torch-count`` also with torch's ``FlopCounterMode``
around both implementations: convolutions and matrix products only), the exact equality of the scores,
and the wall time ratio new / old (medians of interleaved repetitions).

Cases: ``resnet20`` (36 placements) and ``resnet50`` (455) pooling supernets with BatchNorm
re-calibration; ``snnet`` (71 configurations on three depth-12 ViT anchors, SN-Net's default
space) and ``snnetv2`` (134 two-way routes, rank-4 low-rank stitching layers). Untrained
weights, N(0, 1) images: neither FLOPs nor time depend on the values.

    OMP_NUM_THREADS=1 python scripts/bench_prefix.py [--cases resnet20 resnet50 snnet snnetv2] [--reps 3]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from benchlib import timed
from torch.utils.flop_counter import FlopCounterMode

from searchspace.pooling import create_space
from searchspace.stitch_v2 import StitchSpaceV2
from stitching.flops import anchor_flops, flops_table
from stitching.lowrank import LowRankStitchingLayer
from stitching.shared_prefix import route_steps, score_routes
from stitching.snnet import SNNet, anchor_space
from stitching.vit import create_vit
from stitchnas.core.evaluation import accuracy
from stitchnas.core.prefix import PrefixReport, PrefixTrie
from supernet.evaluation import EvalConfig, evaluate_path
from supernet.flops import pooling_flops, pooling_step_flops
from supernet.networks import ModelSpec, build_supernet
from supernet.shared_prefix import placement_steps, score_placements


@dataclass
class Case:
    """One space: how to score it both ways, its trie and every node's FLOPs per image."""

    name: str
    settings: str
    candidates: int
    old: Callable[[], list[float]]
    new: Callable[[], tuple[list[float | None], PrefixReport]]
    trie: PrefixTrie
    node_flops: dict[int, int]  # trie node id -> FLOPs per image of its step
    config_flops: list[int]  # per configuration, per image
    images: tuple[int, int]  # (calibration images, validation images) per candidate


def _images(n: int, size: int, seed: int) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 1, size, size, generator=g)
    return torch.utils.data.TensorDataset(images, torch.randint(0, 10, (n,), generator=g))


def pooling_case(name: str, args: argparse.Namespace) -> Case:
    scale = args.resnet20_width if name == "resnet20" else args.resnet50_width
    size = args.resnet20_input if name == "resnet20" else args.resnet50_input
    space = create_space(name, width_scale=scale)
    torch.manual_seed(0)
    supernet = build_supernet(space, ModelSpec(1, 10)).eval()
    calib, val = _images(args.calib, size, 1), _images(args.val, size, 2)
    cfg = EvalConfig(calib_batches=args.calib_batches, calib_batch_size=args.calib_batch_size,
                     batch_size=args.batch_size)
    configs = space.configurations()
    trie = PrefixTrie({i: placement_steps(space, c) for i, c in enumerate(configs)})
    node_flops: dict[int, int] = {}
    for i, c in enumerate(configs):
        steps = pooling_step_flops(space, c, size, 1, 10)
        for node in trie.leaf[i].path():
            node_flops[node.id] = steps[node.depth - 1]
    calib_images = min(args.calib_batches, args.calib // args.calib_batch_size) * args.calib_batch_size
    settings = (f"width x{scale}, {size}x{size}x1 inputs, BN re-calibration on "
                f"{calib_images} images ({args.calib_batch_size} per batch), {args.val} validation images "
                f"({args.batch_size} per batch)")
    return Case(
        name=f"{name} ({len(configs)} placements)", settings=settings, candidates=len(configs),
        old=lambda: [evaluate_path(supernet, c, calib, val, cfg) for c in configs],
        new=lambda: score_placements(supernet, configs, calib, val, cfg),
        trie=trie, node_flops=node_flops,
        config_flops=[pooling_flops(space, c, size, 1, 10) for c in configs],
        images=(calib_images, args.val),
    )


def stitch_case(version: str, args: argparse.Namespace) -> Case:
    torch.manual_seed(0)
    if version == "v1":
        anchors = [create_vit(n) for n in ("vit_digits_tiny", "vit_digits_small", "vit_digits_base")]
        net = SNNet(anchors, anchor_space(anchors, ["tiny", "small", "base"]))
        label, what = "snnet", "configurations on three depth-12 ViT anchors (32/48/64 wide)"
    else:
        anchors = [create_vit("vit_digits_tiny"), create_vit("vit_digits_base")]
        space = StitchSpaceV2((12, 12), names=("tiny", "base"))
        net = SNNet(anchors, space, layer_factory=functools.partial(LowRankStitchingLayer, rank=4))
        label, what = "snnetv2", "two-way routes (FS/SF/FSF/SFS), depth-12 anchors 32/64 wide, rank-4 layers"
    net.init_stitching_layers(torch.randn(64, 1, 16, 16))
    net.eval()
    val = _images(args.val, 16, 2)
    ids = list(range(len(net.space)))
    trie = PrefixTrie({i: route_steps(net, net.space.config(i)) for i in ids})
    parts = [anchor_flops(a) for a in net.anchors]
    node_flops: dict[int, int] = {}
    for node in trie.nodes[1:]:
        step: Any = node.step
        kind, a = step[0], step[1]
        if kind == "embed":
            node_flops[node.id] = parts[a].embed
        elif kind == "block":
            node_flops[node.id] = parts[a].blocks[step[2]]
        elif kind == "stitch":
            layer = net.stitch_layers[step[3]]
            node_flops[node.id] = parts[a].positions[step[2] + 1] * layer.in_dim * layer.out_dim
        else:
            node_flops[node.id] = parts[a].tail

    def old() -> list[float]:
        out = []
        for i in ids:
            net.set_active(i)
            out.append(accuracy(net, val, args.batch_size, "cpu"))
        return out

    return Case(
        name=f"{label} ({len(ids)} {what})", settings=f"16x16x1 inputs, {args.val} validation images "
        f"({args.batch_size} per batch)", candidates=len(ids), old=old,
        new=lambda: score_routes(net, ids, val, args.batch_size, "cpu"),
        trie=trie, node_flops=node_flops, config_flops=flops_table(net), images=(0, args.val),
    )


def torch_flops(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def run_case(case: Case, reps: int, count_torch: bool, case_seconds: float) -> None:
    ideal = sum(case.node_flops.values()) / sum(case.config_flops)
    old_t, new_t = [], []
    start = time.perf_counter()
    for rep in range(reps):  # interleaved, so load from other processes hits both alike
        if rep and time.perf_counter() - start > case_seconds:
            break
        old_scores, seconds = timed(case.old)
        old_t.append(seconds)
        (new_scores, report), seconds = timed(case.new)
        new_t.append(seconds)
        if rep == 0:
            identical = new_scores == old_scores
    calib_images, val_images = case.images
    alone = (calib_images + val_images) * sum(case.config_flops)  # the head runs in calibration too
    passes = [p for p in (report.calib, report.val) if p is not None]
    ran = sum(n * case.node_flops[node] for p in passes for node, n in p.applied.items())
    print(f"{case.name}")
    print(f"  settings: {case.settings}")
    print(f"  ideal FLOPs ratio (from the space, per image): {ideal:.3f}  ({1 / ideal:.2f}x less work)")
    print(f"  FLOPs computed / per-candidate (counted steps): {ran / alone:.3f}  "
          f"({ran / 1e9:.2f} / {alone / 1e9:.2f} GFLOPs; recomputed steps {sum(p.recomputed for p in passes)})")
    if count_torch:
        t_new, t_old = torch_flops(case.new), torch_flops(case.old)
        print(f"  FLOPs computed / per-candidate (torch FlopCounterMode, conv+matmul, 2/MAC): {t_new / t_old:.3f}")
    print(f"  scores identical to per-candidate: {identical}")
    print(f"  peak activations kept {max(p.peak_bytes for p in passes) / 2**20:.2f} MiB, "
          f"BatchNorm state {report.state_bytes / 2**20:.2f} MiB")
    old_s, new_s = statistics.median(old_t), statistics.median(new_t)
    print(f"  wall time: per-candidate median {old_s:.2f}s, shared {new_s:.2f}s over {len(old_t)} interleaved "
          f"repetitions -> new/old {new_s / old_s:.3f}")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["resnet20", "resnet50", "snnet", "snnetv2"],
                   choices=["resnet20", "resnet50", "snnet", "snnetv2"])
    p.add_argument("--reps", type=int, default=3, help="interleaved timing repetitions (median), >= 1")
    p.add_argument("--case-seconds", type=float, default=75,
                   help="no further repetition once a case has run this long (at least one always runs)")
    p.add_argument("--resnet20-input", type=int, default=16, help="resnet20 image side")
    p.add_argument("--resnet50-input", type=int, default=8, help="resnet50 image side (3 downsamplings: >= 8)")
    p.add_argument("--resnet20-width", type=float, default=0.25)
    p.add_argument("--resnet50-width", type=float, default=0.0625)
    p.add_argument("--calib", type=int, default=128, help="calibration images available")
    p.add_argument("--calib-batches", type=int, default=2)
    p.add_argument("--calib-batch-size", type=int, default=32)
    p.add_argument("--val", type=int, default=128, help="validation images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--torch-count", action="store_true",
                   help="also count both implementations' FLOPs with torch's FlopCounterMode (slow: one more "
                        "per-candidate pass under the counter)")
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error(f"--reps: expected >= 1, got {args.reps}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU")
    for name in args.cases:
        start = time.perf_counter()
        case = pooling_case(name, args) if name.startswith("resnet") else stitch_case(name[5:] or "v1", args)
        run_case(case, args.reps, args.torch_count, args.case_seconds)
        print(f"  (case took {time.perf_counter() - start:.0f}s)")


if __name__ == "__main__":
    main()
