"""``stitchnas anchors train`` and ``stitchnas stitch train|evaluate|export`` (SN-Net, SN-Netv2)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from stitchnas.cli.options import (
    add_data_args,
    add_export_format_arg,
    add_front_args,
    add_run_args,
    add_stitch_train_args,
    add_tune_args,
    backend_from_args,
    cost_config_from_args,
    export_formats_from_args,
    finite_float,
    run_and_print,
    stitch_data_spec_from_args,
    stitch_train_config_from_args,
)

if TYPE_CHECKING:
    from stitching.anchors import AnchorRef
    from stitchnas.data import DataSpec

log = logging.getLogger("stitchnas")


def parse_anchor_files(items: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        preset, sep, path = item.partition("=")
        if not sep or not preset or not path:
            raise ValueError(f"--anchor {item!r}: expected PRESET=PATH, e.g. deit_tiny_patch16_224=deit_tiny.pth")
        pairs.append((preset, path))
    return pairs


def cmd_anchors_train(args: argparse.Namespace) -> int:
    from stitching.anchors import MANIFEST_FILE
    from stitchnas.core.io import read_json
    from stitchnas.methods.anchors import AnchorTrainConfig, train_anchors

    overrides = {"depth": args.depth} if args.depth is not None else {}
    cfg = AnchorTrainConfig(family=args.family, data=stitch_data_spec_from_args(args),
                            train=stitch_train_config_from_args(args), overrides=overrides)
    train_anchors(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    manifest = read_json(Path(args.out) / MANIFEST_FILE, "anchors manifest")
    print(f"{'anchor':<22} {'MFLOPs':>9} {'params':>9} {'val acc %':>9} {'test acc %':>10}")
    for a in manifest["anchors"]:
        print(f"{a['name']:<22} {a['flops'] / 1e6:9.3f} {a['params']:>9} {a['val_acc']:9.2f} {a['test_acc']:10.2f}")
    print(f"outputs: {(Path(args.out) / MANIFEST_FILE).resolve()} (and one .pth state dict per anchor)")
    return 0


def _stitch_anchor_refs(args: argparse.Namespace, data_spec: DataSpec) -> list[AnchorRef]:
    from stitching.anchors import MANIFEST_FILE, anchor_refs_from_files, read_anchor_folder
    from stitchnas.core.io import read_json

    if bool(args.anchors) == bool(args.anchor):
        raise ValueError("anchors: give either --anchors FOLDER or --anchor PRESET=PATH (at least twice)")
    if args.anchor:
        from stitchnas.data import load_data

        data = load_data(data_spec)  # the presets are rebuilt for the data; checkpoints adapt on load
        return anchor_refs_from_files(parse_anchor_files(args.anchor), input_size=data.input_size,
                                      in_chans=data.in_chans, num_classes=data.num_classes)
    refs = read_anchor_folder(args.anchors)
    trained_on = read_json(Path(args.anchors) / MANIFEST_FILE, "anchors manifest").get("data")
    wanted = json.loads(json.dumps(data_spec.to_json()))
    if isinstance(trained_on, dict) and trained_on != wanted:
        log.warning("anchors were trained on other data settings (%s); search_val may overlap their training data",
                    {k: v for k, v in trained_on.items() if wanted.get(k) != v})
    return refs


def checkpoint_normalisation(spec: DataSpec, presets: Sequence[str]) -> DataSpec:
    """Fine-tuning pretrained checkpoints normalises with their mean/std (timm's
    ``pretrained_cfg``: ImageNet's for DeiT and ResNet), not the data's own statistics, when
    every preset has the same; presets without one (the digits families) keep the data's."""
    from dataclasses import replace

    from stitching.anchors import pretrained_cfg

    cfgs = {(c.mean, c.std) for c in (pretrained_cfg(p) for p in presets)}
    if len(cfgs) != 1 or None in next(iter(cfgs)):
        return spec
    mean, std = next(iter(cfgs))
    log.info("normalising the data with the checkpoints' mean %s and std %s", mean, std)
    return replace(spec, mean=mean, std=std)


def cmd_stitch_train(args: argparse.Namespace) -> int:
    from stitchnas import api
    from stitchnas.methods.snnet import StitchSearchConfig

    presets = [preset for preset, _ in parse_anchor_files(args.anchor)]
    cost = cost_config_from_args(args)  # a bad --cost fails before the anchors are read
    data_spec = checkpoint_normalisation(stitch_data_spec_from_args(args), presets)
    if args.no_train:
        args.epochs = 0
    train_cfg = stitch_train_config_from_args(args, anchor_lr_scale=args.anchor_lr_scale,
                                              distill_weight=args.distill, distill_temperature=args.distill_temperature)
    version_options = stitch_version_options_from_args(args)
    anchors = tuple(_stitch_anchor_refs(args, data_spec))
    if args.version == "v2" and len(anchors) > 2:
        log.info("SN-Netv2 stitches two anchors: %s (small) and %s (large), the first and last of %d",
                 anchors[0].name, anchors[-1].name, len(anchors))
    cfg = StitchSearchConfig(anchors=anchors, data=data_spec, train=train_cfg,
                             init_samples=args.init_samples, nearest=not args.all_pairs,
                             export_front=not args.no_export, hv_reference=args.hv_reference,
                             reset_head=args.reset_head, cost=cost, **version_options)
    return run_and_print(backend_from_args(args), lambda b: api.run_search(
        cfg, args.out, resume=args.resume, progress=not args.no_progress, backend=b.evaluate), args.hv_reference)


def stitch_version_options_from_args(args: argparse.Namespace) -> dict:
    """``version``, ``route_types``, ``sampling`` and ``lora_rank`` of a ``stitch train`` run;
    options left unset take the version's defaults (v1: uniform, plain layers; v2: ROS, rank 4)."""
    from stitching.trainer import SamplingConfig

    v2 = args.version == "v2"
    route_types = None
    if args.routes is not None:
        if not v2:
            raise ValueError(f"--routes {args.routes!r}: route filters are SN-Netv2's; add --version v2")
        route_types = tuple(t.strip() for t in args.routes.split(","))
        if not all(route_types):
            raise ValueError(f"--routes {args.routes!r}: expected comma-separated route types, e.g. fs,sf,fsf,sfs")
    if v2 and args.all_pairs:
        raise ValueError("--all-pairs: shapes SN-Net's space (--version v1); SN-Netv2 stitches two anchors")
    kind: Literal["uniform", "ros"] = args.sampler or ("ros" if v2 else "uniform")
    if kind != "ros" and (args.flops_gap is not None or args.ros_weighting is not None):
        raise ValueError("--flops-gap / --ros-weighting: apply to ROS sampling only (--sampler ros)")
    if args.flops_gap is not None and not args.flops_gap > 0:
        raise ValueError(f"--flops-gap {args.flops_gap}: expected a FLOPs gap in MFLOPs > 0")
    sampling = SamplingConfig(kind, args.flops_gap, args.ros_weighting or "uniform")
    if args.lora_rank is not None and args.lora_rank < 0:
        raise ValueError(f"--lora-rank {args.lora_rank}: expected a rank >= 0 (0: plain stitching layers)")
    return {"version": args.version, "route_types": route_types, "sampling": sampling, "lora_rank": args.lora_rank}


def cmd_reevaluate(args: argparse.Namespace) -> int:
    """``stitch evaluate`` / ``learngene evaluate``: re-score every candidate of a run."""
    from stitchnas import api

    return run_and_print(backend_from_args(args), lambda b: api.evaluate_run(
        args.run, no_train=args.no_train, out_dir=args.out, progress=not args.no_progress, backend=b.evaluate))


def cmd_stitch_export(args: argparse.Namespace) -> int:
    from stitchnas import api
    from stitchnas.methods.snnet import parse_route
    from stitchnas.search.export import load_model

    config = args.config.strip()
    if not config.isdigit() and parse_route(config) is None:
        raise ValueError(f"--config {args.config!r}: expected a configuration id (see results.csv) "
                         "or a route such as a0.0-3_a1.4-11 (a<anchor>.<first>-<last> per segment)")
    formats = export_formats_from_args(args)
    folder = api.export_from_run(args.run, config, args.out, formats=formats)
    _, record = load_model(folder, return_record=True)
    config_id = record["config"]["id"]
    print(f"exported configuration {config_id} ({record['label']}, {record['flops'] / 1e6:.3f} MFLOPs, "
          f"test accuracy {record['metrics']['test_acc']:.2f}%) to {Path(folder).resolve()}")
    return 0


def add_reevaluate_command(sub: argparse._SubParsersAction, what: str, run_kind: str, init: str) -> None:
    """``... evaluate``: re-score a stitching run's configurations (checkpoint or init)."""
    p = sub.add_parser("evaluate", help=f"re-evaluate {what}")
    p.add_argument("--run", required=True, help=f"a {run_kind} run folder")
    p.add_argument("--no-train", action="store_true", help=f"evaluate right after {init} instead")
    p.add_argument("--out", default=None, help="output folder (default: RUN/evaluate/checkpoint or .../init)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--seed", type=int, default=0, help="seed of random / Optuna searches")
    add_tune_args(p)
    p.set_defaults(handler=cmd_reevaluate)


def add_stitch_commands(sub: argparse._SubParsersAction) -> None:
    """``stitchnas anchors train`` and ``stitchnas stitch train|evaluate|export`` (SN-Net, SN-Netv2)."""
    anchors = sub.add_parser("anchors", help="anchor families for stitching").add_subparsers(
        dest="anchors_kind", required=True)
    p = anchors.add_parser("train", help="train a family of 3 anchors (small -> large) standalone, resumable")
    p.add_argument("--family", default="vit_digits", choices=("vit_digits", "resnet_digits"))
    p.add_argument("--depth", type=int, default=None, help="override the presets' depth (ViT) for quick runs")
    add_data_args(p)
    add_stitch_train_args(p, epochs=30, lr=3e-3, warmup_epochs=2)
    add_run_args(p, "runs/anchors")
    p.set_defaults(handler=cmd_anchors_train)

    stitch = sub.add_parser("stitch", help="Stitchable Neural Networks (SN-Net, SN-Netv2)").add_subparsers(
        dest="stitch_kind", required=True)
    p = stitch.add_parser("train", help="least-squares init, joint training, evaluation of every configuration")
    g = p.add_argument_group("anchors")
    g.add_argument("--anchors", default=None, help="folder written by 'stitchnas anchors train' (anchors.json)")
    g.add_argument("--anchor", action="append", default=[], metavar="PRESET=PATH",
                   help="a local timm-format checkpoint of a preset (repeat, small to large)")
    g.add_argument("--reset-head", action="store_true",
                   help="give every anchor a freshly initialised head even when its class count matches the data's "
                        "(same count, other classes, e.g. digits 0-4 -> 5-9)")
    add_data_args(p)
    add_stitch_train_args(p, epochs=10, lr=1e-3, warmup_epochs=0)
    g = p.add_argument_group("stitching")
    g.add_argument("--anchor-lr-scale", type=finite_float, default=0.1, help="anchor LR = this x --lr (SN-Net: 0.1)")
    g.add_argument("--distill", type=finite_float, default=0.0, metavar="WEIGHT",
                   help="weight of KL distillation from the largest anchor (0: off)")
    g.add_argument("--distill-temperature", type=finite_float, default=1.0)
    g.add_argument("--init-samples", type=int, default=100, help="images for the least-squares init (SN-Net: 100)")
    g.add_argument("--all-pairs", action="store_true", help="stitch every anchor sequence, not only neighbours")
    g.add_argument("--no-train", action="store_true", help="stop after the least-squares init (same as --epochs 0)")
    g = p.add_argument_group("SN-Netv2 (--version v2) and its options")
    g.add_argument("--version", default="v1", choices=("v1", "v2"),
                   help="v1: SN-Net (neighbouring anchors, one-way stitches); v2: SN-Netv2 (first and last anchor, "
                        "two-way FS/SF/FSF/SFS stitches, ROS sampling, low-rank stitching layers)")
    g.add_argument("--routes", default=None, metavar="TYPES",
                   help="v2: comma-separated route types to keep, from fs,sf,fsf,sfs (default: all)")
    g.add_argument("--sampler", default=None, choices=("uniform", "ros"),
                   help="configuration drawn per training step (default: v1 uniform, v2 ros)")
    g.add_argument("--flops-gap", type=finite_float, default=None, metavar="MFLOPS",
                   help="ROS: FLOPs grouping gap in MFLOPs, > 0 (default: the FLOPs range / 24, which gives "
                        "SN-Netv2's 13 groups for 12-block small anchors)")
    g.add_argument("--ros-weighting", default=None, choices=("uniform", "linear"),
                   help="ROS: draw FLOPs groups uniformly (default) or linearly favouring heavier ones")
    g.add_argument("--lora-rank", type=int, default=None, metavar="R",
                   help="low-rank stitching layers of rank R, base frozen at the least-squares map; 0: plain "
                        "layers (default: v1 0, v2 4)")
    p.add_argument("--no-export", action="store_true", help="skip exporting the Pareto-optimal models")
    add_tune_args(p)
    add_front_args(p)
    add_run_args(p, "runs/stitch")
    p.set_defaults(handler=cmd_stitch_train)

    add_reevaluate_command(stitch, "every configuration of a run", "'stitchnas stitch train'",
                           "the least-squares init")

    p = stitch.add_parser("export", help="export one configuration of a run as a standalone model")
    p.add_argument("--run", required=True, help="a 'stitchnas stitch train' run folder")
    p.add_argument("--config", required=True,
                   help="configuration id (column 'candidate' of results.csv) or route, e.g. a0.0-3_a1.4-11")
    p.add_argument("--out", required=True, help="folder for the export: model.json, model.pt and --format's files")
    add_export_format_arg(p)
    p.set_defaults(handler=cmd_stitch_export)
