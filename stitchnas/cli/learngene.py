"""``stitchnas learngene distill|pool|evaluate|export`` (Learngene Pool)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from stitchnas.cli.stitch import add_reevaluate_command, parse_anchor_files

if TYPE_CHECKING:
    from stitching.anchors import AnchorRef
    from stitchnas.data import DataSpec


def _learngene_teacher_ref(args: argparse.Namespace, data_spec: DataSpec) -> AnchorRef:
    """The teacher: ``--teacher PRESET=PATH``, or an anchor of ``--anchors`` (``--teacher NAME``,
    default the one with the most FLOPs)."""
    from stitching.anchors import AnchorRef, create_anchor, read_anchor_folder
    from stitching.flops import anchor_flops
    from stitching.learngene import check_teacher_kind
    from stitchnas.core.io import file_sha256

    if args.anchors:
        refs = read_anchor_folder(args.anchors)
        if args.teacher is None:
            for ref in refs:  # before counting FLOPs: one line naming the file and the kind
                check_teacher_kind(dict(ref.config), ref.path)
            return max(refs, key=lambda r: anchor_flops(dict(r.config)).total)
        found = [r for r in refs if r.name == args.teacher]
        if not found:
            raise ValueError(f"--teacher {args.teacher!r}: not in {args.anchors}, "
                             f"expected one of {[r.name for r in refs]}")
        return found[0]
    if not args.teacher or "=" not in args.teacher:
        raise ValueError("teacher: give --anchors FOLDER (optionally --teacher NAME) or --teacher PRESET=PATH")
    preset, path = parse_anchor_files([args.teacher])[0]
    from stitchnas.data import load_data

    data = load_data(data_spec)  # the preset is rebuilt for the data; the checkpoint adapts on load
    config = create_anchor(preset, img_size=data.input_size, in_chans=data.in_chans,
                           num_classes=data.num_classes).config
    weights = Path(path)
    return AnchorRef(preset, config, str(weights.resolve()), file_sha256(weights) if weights.is_file() else "")


def _width_blocks(config: dict[str, Any]) -> tuple[int, int]:
    """What the summary prints: a ViT's width and depth, a ResNet's last stage width and blocks."""
    if "embed_dim" in config:
        return config["embed_dim"], config["depth"]
    return config["widths"][-1], sum(config["stage_depths"])


def cmd_learngene_distill(args: argparse.Namespace) -> int:
    from stitching.learngene import check_teacher_kind, default_students, parse_matches, parse_student
    from stitching.learngene_train import DistillConfig
    from stitchnas.methods.learngene import LearngeneDistillRunConfig, run_distill

    data_spec = stitch_data_spec_from_args(args)
    teacher = _learngene_teacher_ref(args, data_spec)
    teacher_config = dict(teacher.config)
    kind = check_teacher_kind(teacher_config, teacher.path)
    students = tuple(parse_student(s, teacher_config) for s in args.student) or default_students(teacher_config)
    matches = args.matches if args.matches is not None else ("front_end" if kind == "vit" else "stages")
    distill = DistillConfig(students=students, matches=parse_matches(matches), alpha=args.alpha,
                            temperature=args.temperature, train=stitch_train_config_from_args(args),
                            train_matrices=not args.freeze_matrices)
    outcome = run_distill(LearngeneDistillRunConfig(teacher, distill, data_spec), args.out, resume=args.resume,
                          progress=not args.no_progress)
    m = outcome.manifest
    print(f"{'model':<22} {'width':>5} {'blocks':>6} {'MFLOPs':>9} {'params':>9} {'val acc %':>9} {'test acc %':>10}")
    t = m["teacher"]
    width, blocks = _width_blocks(t["config"])
    print(f"{'teacher ' + t['name']:<22} {width:>5} {blocks:>6} "
          f"{t['flops'] / 1e6:9.3f} "
          f"{t['params']:>9} {t['val_acc']:9.2f} {t['test_acc']:10.2f}")
    for s in m["students"]:
        width, blocks = _width_blocks(s["config"])
        print(f"{'student ' + s['name']:<22} {width:>5} {blocks:>6} {s['flops'] / 1e6:9.3f} "
              f"{s['params']:>9} {s['val_acc']:9.2f} {s['test_acc']:10.2f}")
    print(f"outputs: {Path(outcome.out_dir).resolve()} (learngene.json, learngene.pt)")
    return 0


def cmd_learngene_pool(args: argparse.Namespace) -> int:
    from stitchnas import api
    from stitchnas.methods.learngene import LearngenePoolConfig

    if args.max_train_samples is not None:
        raise ValueError("--max-train-samples: the pool uses the distillation run's data; "
                         "set it on 'learngene distill'")
    if args.no_train:
        args.epochs = 0
    train_cfg = stitch_train_config_from_args(args, anchor_lr_scale=args.instance_lr_scale,
                                              distill_weight=args.distill_weight,
                                              distill_temperature=args.distill_temperature)
    cfg = LearngenePoolConfig(distill_run=args.distill, students=tuple(args.student),
                              init=args.init.replace("-", "_"), init_samples=args.init_samples, finetune=train_cfg,
                              export_front=not args.no_export, hv_reference=args.hv_reference,
                              cost=cost_config_from_args(args))
    return run_and_print(backend_from_args(args), lambda b: api.run_search(
        cfg, args.out, resume=args.resume, progress=not args.no_progress, backend=b.evaluate), args.hv_reference)


def cmd_learngene_export(args: argparse.Namespace) -> int:
    from stitchnas import api
    from stitchnas.search.export import load_model

    try:
        config_id = int(args.config)
    except ValueError:
        raise ValueError(f"--config {args.config!r}: expected a descendant id (see results.csv)") from None
    formats = export_formats_from_args(args)
    folder = api.export_from_run(args.run, config_id, args.out, formats=formats)
    _, record = load_model(folder, return_record=True)
    print(f"exported descendant {config_id} ({record['label']}, {record['flops'] / 1e6:.3f} MFLOPs, "
          f"test accuracy {record['metrics']['test_acc']:.2f}%) to {Path(folder).resolve()}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """``stitchnas learngene distill|pool|evaluate|export`` (Learngene Pool)."""
    lg = sub.add_parser("learngene", help="Learngene Pool: distil a teacher into students, stitch descendants")
    lg = lg.add_subparsers(dest="learngene_kind", required=True)
    p = lg.add_parser("distill", help="distil a trained ViT or ResNet teacher into auxiliary students (resumable)")
    g = p.add_argument_group("teacher and students")
    g.add_argument("--anchors", default=None, help="folder written by 'stitchnas anchors train' (anchors.json)")
    g.add_argument("--teacher", default=None,
                   help="NAME of an anchor in --anchors (default: the largest), or PRESET=PATH without --anchors "
                        "(e.g. resnet18=resnet18.pth, a timm checkpoint adapted to the data)")
    g.add_argument("--student", action="append", default=[], metavar="NAME:DIM:HEADS:DEPTH",
                   help="an auxiliary student (repeat; default: tiny at half and base at full teacher width, "
                        "half its depth); a ResNet teacher's: NAME:WIDTHS:STAGE_DEPTHS, e.g. "
                        "tiny:32,64,128,256:2,2,2,2 (default: half and full widths, about half of every stage)")
    g.add_argument("--matches", default=None,
                   help="matched blocks for the MSE term: front_end (ViT default), stages (the last block of every "
                        "stage; ResNet default), end, or TEACHER:STUDENT pairs like 3:1,7:3,11:5")
    g.add_argument("--alpha", type=finite_float, default=0.1, help="weight of the hard-label CE (official 0.1)")
    g.add_argument("--temperature", type=finite_float, default=1.0, help="temperature of the soft CE on logits")
    g.add_argument("--freeze-matrices", action="store_true",
                   help="keep the transformation matrices at their init (what the official code ends up doing)")
    add_data_args(p)
    add_stitch_train_args(p, epochs=30, lr=2e-3, warmup_epochs=2)
    add_run_args(p, "runs/learngene_distill")
    p.set_defaults(handler=cmd_learngene_distill)

    p = lg.add_parser("pool", help="stitch descendants from the students, fine-tune, evaluate, export the front")
    p.add_argument("--distill", required=True, help="a 'stitchnas learngene distill' run folder")
    g = p.add_argument_group("pool")
    g.add_argument("--student", action="append", default=[], metavar="NAME",
                   help="a student in the pool (repeat; default: the narrowest and the widest)")
    g.add_argument("--init", default="matrices", choices=("matrices", "least-squares"),
                   help="stitching-layer init: from the transformation matrices, or SN-Net's least squares")
    g.add_argument("--init-samples", type=int, default=100, help="images for the least-squares init")
    g.add_argument("--instance-lr-scale", type=finite_float, default=1.0,
                   help="students' LR = this x --lr (official 1)")
    g.add_argument("--distill-weight", type=finite_float, default=0.5,
                   help="weight of KL distillation from the teacher")
    g.add_argument("--distill-temperature", type=finite_float, default=1.0)
    g.add_argument("--seed", type=int, default=0, help="seed for descendant draws, batch order and init batch")
    g.add_argument("--no-train", action="store_true", help="stop after the stitch init (same as --epochs 0)")
    add_stitch_train_args(p, epochs=10, lr=3e-4, warmup_epochs=0)
    p.add_argument("--no-export", action="store_true", help="skip exporting the Pareto-optimal descendants")
    add_tune_args(p)
    add_front_args(p)
    add_run_args(p, "runs/learngene_pool")
    p.set_defaults(handler=cmd_learngene_pool)

    add_reevaluate_command(lg, "every descendant of a pool run", "'stitchnas learngene pool'", "the stitch init")

    p = lg.add_parser("export", help="export one descendant of a pool run as a standalone model")
    p.add_argument("--run", required=True, help="a 'stitchnas learngene pool' run folder")
    p.add_argument("--config", required=True, help="descendant id (column 'candidate' of results.csv)")
    p.add_argument("--out", required=True, help="folder for the export: model.json, model.pt and --format's files")
    add_export_format_arg(p)
    p.set_defaults(handler=cmd_learngene_export)
