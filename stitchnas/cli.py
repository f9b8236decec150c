"""The ``stitchnas`` command line.

Every command validates its input up front and fails with one line naming the bad option or
file. Ctrl-C leaves the last checkpoint in place; rerun with ``--resume`` to continue.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from searchspace.pooling import DOWNSAMPLE_OPS, SPACE_PRESETS, PoolingSpace, create_space

log = logging.getLogger("stitchnas")

Handler = Callable[[argparse.Namespace], int]


# ------------------------------------------------------------------ shared option groups
def add_space_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("search space")
    g.add_argument("--space", default="resnet20", choices=sorted(SPACE_PRESETS), help="pooling space preset")
    g.add_argument("--downsample", default=None, choices=DOWNSAMPLE_OPS,
                   help="downsampling op (default: the preset's; resnet20 uses a 2x2 max-pool)")
    g.add_argument("--num-downsamples", type=int, default=None, help="k, number of downsamplings (resnet20 only)")


def space_from_args(args: argparse.Namespace) -> PoolingSpace:
    overrides = {}
    if args.downsample is not None:
        overrides["downsample"] = args.downsample
    if getattr(args, "num_downsamples", None) is not None:
        if args.space != "resnet20":
            raise ValueError("--num-downsamples: only the resnet20 preset takes it")
        overrides["num_downsamples"] = args.num_downsamples
    return create_space(args.space, **overrides)


def add_data_args(p: argparse.ArgumentParser, input_size: int = 16) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits",
                   help="digits (embedded default), cluttered_digits (embedded), cifar10, cifar100, npz")
    g.add_argument("--data-dir", default=None, help="CIFAR python-pickle folder or .npz file")
    g.add_argument("--input-size", type=int, default=input_size, help="square input side in pixels")
    g.add_argument("--seed", type=int, default=0, help="seed for splits, initialisation and sampling")


def data_spec_from_args(args: argparse.Namespace):
    from stitchnas.data import DataSpec

    return DataSpec(name=args.dataset, data_dir=args.data_dir, input_size=args.input_size, seed=args.seed)


def add_train_args(p: argparse.ArgumentParser, epochs: int, batch_size: int = 64, lr: float = 0.1) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--batch-size", type=int, default=batch_size)
    g.add_argument("--lr", type=float, default=lr, help="initial SGD learning rate (cosine decay)")
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    g.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on CUDA")


def train_config_from_args(args: argparse.Namespace):
    from supernet.training import TrainConfig, resolve_device

    device = str(resolve_device(args.device))
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lr_min=min(args.lr, 1e-3),
                       weight_decay=args.weight_decay, seed=args.seed, device=device, amp=not args.no_amp)


def add_eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--bn-mode", default="recalibrate", choices=("recalibrate", "batch"),
                   help="BatchNorm statistics per configuration: re-estimated (default) or per batch")
    g.add_argument("--calib-batches", type=int, default=8, help="batches used to re-estimate BatchNorm statistics")


def eval_config_from_args(args: argparse.Namespace, device: str):
    from supernet.evaluation import EvalConfig

    return EvalConfig(bn_mode=args.bn_mode, calib_batches=args.calib_batches, device=device, seed=args.seed)


def add_run_args(p: argparse.ArgumentParser, default_out: str) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--out", default=default_out, help="run folder (results, checkpoints, exports)")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")


# ------------------------------------------------------------------ commands
def cmd_search_pooling(args: argparse.Namespace) -> int:
    from stitchnas.pooling_search import PoolingSearchConfig, run_pooling_search

    train_cfg = train_config_from_args(args)
    cfg = PoolingSearchConfig(
        space=space_from_args(args), data=data_spec_from_args(args), train=train_cfg,
        eval=eval_config_from_args(args, train_cfg.device), max_candidates=args.candidates,
        export_front=not args.no_export,
    )
    outcome = run_pooling_search(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    _print_front(outcome.summary.front, outcome.out_dir, len(outcome.rows))
    return 0


def _print_front(front: Sequence[dict], out_dir: Path, num_rows: int) -> None:
    print(f"Pareto front ({len(front)} of {num_rows} candidates):")
    print(f"  {'config':<14} {'MFLOPs':>9} {'val acc %':>9}")
    for row in front:
        print(f"  {row['label']:<14} {row['flops'] / 1e6:9.3f} {row['val_acc']:9.2f}")
    print(f"outputs: {Path(out_dir).resolve()} (results.csv, pareto.json, pareto.png, exports/)")


def cmd_train(args: argparse.Namespace) -> int:
    from stitchnas.export import load_model
    from stitchnas.pooling_search import train_standalone

    space = space_from_args(args)
    config = space.parse_config(args.config) if args.config else space.default_config()
    train_cfg = train_config_from_args(args)
    folder = train_standalone(space, config, data_spec_from_args(args), train_cfg, args.out,
                              eval_config_from_args(args, train_cfg.device), resume=args.resume,
                              progress=not args.no_progress)
    _, record = load_model(folder, return_record=True)
    print(f"{space.describe(config)}: test accuracy {record['metrics']['test_acc']:.2f}% "
          f"({record['flops'] / 1e6:.3f} MFLOPs); model: {folder.resolve()}")
    return 0


def cmd_flops(args: argparse.Namespace) -> int:
    from stitchnas.flops import pooling_flops, pooling_params

    space = space_from_args(args)
    space.check_input_size(args.input_size)
    configs = [space.parse_config(args.config)] if args.config else space.configurations()
    rows = []
    for config in configs:
        row = {"index": space.index(config), "config": space.describe(config),
               "flops": pooling_flops(space, config, args.input_size, args.in_chans, args.num_classes),
               "params": pooling_params(space, args.in_chans, args.num_classes)}
        if args.check_fvcore:
            import torch

            from stitchnas.flops import fvcore_flops
            from supernet.networks import ModelSpec, build_model

            model = build_model(space, config, ModelSpec(args.in_chans, args.num_classes))
            row["fvcore_flops"] = fvcore_flops(model, torch.zeros(1, args.in_chans, args.input_size, args.input_size))
            if row["fvcore_flops"] != row["flops"]:
                raise RuntimeError(f"analytic and fvcore FLOPs differ for {row['config']}: {row}")
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'index':>5} {'config':<14} {'MFLOPs':>10} {'params':>10}" + ("  fvcore" if args.check_fvcore else ""))
        for r in rows:
            print(f"{r['index']:>5} {r['config']:<14} {r['flops'] / 1e6:10.4f} {r['params']:>10}"
                  + ("  equal" if args.check_fvcore else ""))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from stitchnas.data import load_data
    from stitchnas.io import file_sha256, load_checkpoint
    from stitchnas.pooling_search import (
        SUPERNET_CHECKPOINT, PoolingSearchConfig, data_provenance, export_pooling_candidate,
    )
    from stitchnas.runs import RUN_CONFIG
    from stitchnas.io import read_json
    from supernet.networks import ModelSpec, build_supernet

    run = Path(args.run)
    cfg = PoolingSearchConfig.from_json(read_json(run / RUN_CONFIG, "run config"))
    config = cfg.space.parse_config(args.config)
    data = load_data(cfg.data)
    supernet = build_supernet(cfg.space, ModelSpec(data.in_chans, data.num_classes))
    ckpt = run / SUPERNET_CHECKPOINT
    state = load_checkpoint(ckpt)
    supernet.load_state_dict(state["model"])
    provenance = {**data_provenance(cfg.data), "source": "supernet", "run_dir": str(run.resolve()),
                  "checkpoint_sha256": file_sha256(ckpt)}
    folder = export_pooling_candidate(Path(args.out), supernet, cfg.space, config, data, cfg, provenance)
    print(f"exported {cfg.space.describe(config)} to {folder.resolve()}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from stitchnas.data import DataSpec, load_data
    from stitchnas.export import load_model
    from supernet.evaluation import accuracy

    model, record = load_model(args.model, return_record=True)
    prov = record["provenance"]
    spec = DataSpec(name=args.dataset or prov["dataset"], data_dir=args.data_dir or prov.get("data_dir"),
                    input_size=record["model"].get("input_size", prov.get("input_size", 16)), seed=prov["seed"])
    data = load_data(spec)
    result = {"val_acc": accuracy(model, data.search_val), "test_acc": accuracy(model, data.test)}
    print(json.dumps({"measured": result, "recorded": record.get("metrics", {})}, indent=2))
    return 0


# ------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stitchnas", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    search = sub.add_parser("search", help="run a search").add_subparsers(dest="search_kind", required=True)
    p = search.add_parser("pooling", help="one-shot pooling-placement search (SPOS supernet)")
    add_space_args(p)
    add_data_args(p)
    add_train_args(p, epochs=40)
    add_eval_args(p)
    p.add_argument("--candidates", type=int, default=None, help="evaluate a seeded random subset (default: all)")
    p.add_argument("--no-export", action="store_true", help="skip exporting the Pareto-optimal models")
    add_run_args(p, "runs/pooling")
    p.set_defaults(handler=cmd_search_pooling)

    p = sub.add_parser("train", help="train one pooling configuration from scratch and export it")
    add_space_args(p)
    p.add_argument("--config", default=None, help="index, notation '4,3,3' or positions 'p:4,7' (default: the preset's)")
    add_data_args(p)
    add_train_args(p, epochs=40)
    add_eval_args(p)
    add_run_args(p, "runs/train")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("flops", help="FLOPs (fvcore convention) and parameters per configuration")
    add_space_args(p)
    p.add_argument("--config", default=None, help="one configuration (default: all)")
    p.add_argument("--input-size", type=int, default=16)
    p.add_argument("--in-chans", type=int, default=1)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--check-fvcore", action="store_true", help="also trace with fvcore and require equality")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_flops)

    p = sub.add_parser("export", help="export one configuration of a search run with supernet weights")
    p.add_argument("--run", required=True, help="a pooling search run folder")
    p.add_argument("--config", required=True, help="index, notation '4,3,3' or positions 'p:4,7'")
    p.add_argument("--out", required=True, help="folder for model.json and model.pt")
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("evaluate", help="load an exported model and measure it on its data")
    p.add_argument("model", help="exported model folder or its model.json")
    p.add_argument("--dataset", default=None)
    p.add_argument("--data-dir", default=None)
    p.set_defaults(handler=cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.handler(args)
    except ValueError as err:
        print(f"stitchnas: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        hint = f" rerun the same command with --resume to continue in {out}" if out else ""
        print(f"stitchnas: interrupted; checkpoints and results written so far are kept;{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
