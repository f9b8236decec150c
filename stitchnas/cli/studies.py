"""``stitchnas truth pooling`` and ``stitchnas rank``: ranking studies."""

from __future__ import annotations

import argparse
import json

from stitchnas.cli.options import (
    add_data_args,
    add_run_args,
    add_space_args,
    add_train_args,
    data_spec_from_args,
    space_from_args,
    train_config_from_args,
)


def cmd_truth_pooling(args: argparse.Namespace) -> int:
    from stitchnas.studies.truth import TruthConfig, run_ground_truth, seed_noise

    space = space_from_args(args)
    candidates = tuple(space.index(space.parse_config(c)) for c in args.configs.split(";")) if args.configs else None
    cfg = TruthConfig(space=space, data=data_spec_from_args(args), train=train_config_from_args(args),
                      seeds=tuple(int(s) for s in args.seeds.split(",")), candidates=candidates)
    out = run_ground_truth(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    noise = seed_noise(out)
    print(f"ground truth: {out.resolve() / 'truth.csv'}; spread across configurations {noise['spread']:.2f} points, "
          f"mean seed std {noise['mean_seed_std']:.2f}, largest seed range {noise['max_seed_range']:.2f}")
    return 0


def cmd_rank(args: argparse.Namespace) -> int:
    from stitchnas.studies.report import rank_run

    report = rank_run(args.run, args.truth, ks=tuple(int(k) for k in args.top_k.split(",")), partial=args.partial)
    print(json.dumps(report, indent=2))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    truth = sub.add_parser("truth", help="ground truth for ranking studies").add_subparsers(dest="truth_kind",
                                                                                           required=True)
    p = truth.add_parser("pooling", help="train configurations standalone over several seeds (resumable)")
    add_space_args(p)
    p.add_argument("--configs", default=None, help="';'-separated configurations (default: all), e.g. '1,1,8;4,3,3'")
    p.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    add_data_args(p)
    add_train_args(p, epochs=15)
    add_run_args(p, "runs/truth")
    p.set_defaults(handler=cmd_truth_pooling)

    p = sub.add_parser("rank", help="compare a search run's ranking with a ground-truth table")
    p.add_argument("--run", required=True, help="search run folder (results.csv)")
    p.add_argument("--truth", required=True, action="append",
                   help="'stitchnas truth' folder (repeatable, e.g. one per seed)")
    p.add_argument("--top-k", default="1,3,5", help="comma-separated k for top-k overlap")
    p.add_argument("--partial", action="store_true",
                   help="rank on the configurations the ground truth covers (default: it must cover them all)")
    p.set_defaults(handler=cmd_rank)
