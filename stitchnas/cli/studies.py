"""``stitchnas truth pooling`` and ``stitchnas rank``: ranking studies."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from stitchnas.cli.options import (
    add_data_args,
    add_run_args,
    add_space_args,
    add_train_args,
    data_spec_from_args,
    space_from_args,
    train_config_from_args,
)

if TYPE_CHECKING:
    from searchspace.pooling import PoolingSpace


def int_list(minimum: int, what: str) -> Callable[[str], tuple[int, ...]]:
    """argparse type: comma-separated distinct integers >= ``minimum`` (argparse names the
    option in its error: ``argument --seeds: expected comma-separated ...``)."""

    def parse(text: str) -> tuple[int, ...]:
        expected = f"comma-separated {what} (integers >= {minimum}, e.g. '{minimum},{minimum + 1}')"
        items = [t.strip() for t in text.split(",")]
        if not text.strip() or any(not t for t in items):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        values = []
        for item in items:
            try:
                value = int(item)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected {expected}, got {item!r} in {text!r}") from None
            if value < minimum:
                raise argparse.ArgumentTypeError(f"expected {expected}, got {value} in {text!r}")
            if value in values:
                raise argparse.ArgumentTypeError(f"expected {expected}, got {value} twice in {text!r}")
            values.append(value)
        return tuple(values)

    return parse


def config_list(text: str) -> tuple[str, ...]:
    """argparse type for ``--configs``: ';'-separated configurations (each checked against the
    space in :func:`cmd_truth_pooling`, which knows it)."""
    items = tuple(t.strip() for t in text.split(";"))
    if any(not t for t in items):
        raise argparse.ArgumentTypeError(
            f"expected ';'-separated configurations (an index, 'a,b,c' or 'p:i,j', e.g. '1,1,8;4,3,3'), "
            f"got an empty one in {text!r}")
    return items


def _candidates(space: PoolingSpace, configs: tuple[str, ...]) -> tuple[int, ...]:
    """``--configs`` as configuration indices; one line naming the option and the bad item."""
    indices: list[int] = []
    for text in configs:
        try:
            index = space.index(space.parse_config(text))
        except ValueError as err:
            raise ValueError(f"--configs {text!r}: {err} (space {space.name!r})") from None
        if index in indices:
            raise ValueError(f"--configs: configuration {text!r} given twice (index {index})")
        indices.append(index)
    return tuple(indices)


def cmd_truth_pooling(args: argparse.Namespace) -> int:
    from stitchnas.studies.truth import TruthConfig, run_ground_truth, seed_noise

    space = space_from_args(args)
    candidates = _candidates(space, args.configs) if args.configs else None
    cfg = TruthConfig(space=space, data=data_spec_from_args(args), train=train_config_from_args(args),
                      seeds=args.seeds, candidates=candidates)
    out = run_ground_truth(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    noise = seed_noise(out)
    seed_text = (f"mean seed std {noise['mean_seed_std']:.2f}, largest seed range {noise['max_seed_range']:.2f}; "
                 f"Kendall tau between seeds {noise['seed_kendall_tau']:.3f}" if noise["seeds"] > 1
                 else "one seed: no seed noise to report")
    print(f"ground truth: {out.resolve() / 'truth.csv'}; spread across configurations {noise['spread']:.2f} points, "
          + seed_text)
    return 0


def cmd_rank(args: argparse.Namespace) -> int:
    from stitchnas.studies.report import rank_run

    report = rank_run(args.run, args.truth, ks=args.top_k, partial=args.partial)
    print(json.dumps(report, indent=2))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    truth = sub.add_parser("truth", help="ground truth for ranking studies").add_subparsers(dest="truth_kind",
                                                                                           required=True)
    p = truth.add_parser("pooling", help="train configurations standalone over several seeds (resumable)")
    add_space_args(p)
    p.add_argument("--configs", default=None, type=config_list,
                   help="';'-separated configurations (default: all), e.g. '1,1,8;4,3,3'")
    p.add_argument("--seeds", default="0,1", type=int_list(0, "training seeds"),
                   help="comma-separated training seeds")
    add_data_args(p)
    add_train_args(p, epochs=15)
    add_run_args(p, "runs/truth")
    p.set_defaults(handler=cmd_truth_pooling)

    p = sub.add_parser("rank", help="compare a search run's ranking with a ground-truth table")
    p.add_argument("--run", required=True, help="search run folder (results.csv)")
    p.add_argument("--truth", required=True, action="append",
                   help="'stitchnas truth' folder (repeatable, e.g. one per seed)")
    p.add_argument("--top-k", default="1,3,5", type=int_list(1, "k for top-k overlap"),
                   help="comma-separated k for top-k overlap")
    p.add_argument("--partial", action="store_true",
                   help="rank on the configurations the ground truth covers (default: it must cover them all)")
    p.set_defaults(handler=cmd_rank)
