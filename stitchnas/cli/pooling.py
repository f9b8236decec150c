"""``stitchnas search pooling|bms``, ``train``, ``flops``, ``export`` and ``evaluate``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stitchnas.cli.options import (
    add_data_args,
    add_distributed_args,
    add_eval_args,
    add_export_format_arg,
    add_finetune_args,
    add_front_args,
    add_rank_args,
    add_run_args,
    add_space_args,
    add_train_args,
    add_tune_args,
    backend_from_args,
    cost_config_from_args,
    data_spec_from_args,
    eval_config_from_args,
    export_formats_from_args,
    finite_float,
    rank_rule_from_args,
    run_and_print,
    space_from_args,
    train_config_from_args,
)

if TYPE_CHECKING:
    from stitchnas.methods.pooling import PoolingSearchConfig
    from supernet.bms import MixtureConfig


def _search_config(
    args: argparse.Namespace, mixture: MixtureConfig | None = None, max_candidates: int | None = None
) -> PoolingSearchConfig:
    from stitchnas.methods.pooling import PoolingSearchConfig
    from supernet.training import snapshot_epochs

    train_cfg = train_config_from_args(args)
    snapshots = getattr(args, "score_snapshots", 1)  # search pooling only
    snapshot_epochs(train_cfg.epochs, snapshots, "--score-snapshots")  # the option's name in the error
    return PoolingSearchConfig(
        space=space_from_args(args), data=data_spec_from_args(args), train=train_cfg,
        eval=eval_config_from_args(args, train_cfg.device, train_cfg), max_candidates=max_candidates,
        export_front=not args.no_export, mixture=mixture, hv_reference=args.hv_reference,
        cost=cost_config_from_args(args), rank=rank_rule_from_args(args), score_snapshots=snapshots,
    )


def cmd_search_pooling(args: argparse.Namespace) -> int:
    from stitchnas import api

    backend = backend_from_args(args, str(train_config_from_args(args).device), local_random=True)
    cfg = _search_config(args, max_candidates=backend.subset_size or args.candidates)
    return run_and_print(backend, lambda b: api.run_search(cfg, args.out, resume=args.resume,
                                                       progress=not args.no_progress,
                                                       backend=b.evaluate, trainer=b.trainer), args.hv_reference)


def cmd_search_bms(args: argparse.Namespace) -> int:
    from stitchnas import api
    from supernet.bms import MixtureConfig

    mixture = MixtureConfig(num_supernets=args.num_supernets, t_max=args.t_max, grouping=args.grouping,
                            score_batch_size=args.score_batch_size)
    backend = backend_from_args(args, local_random=True)
    cfg = _search_config(args, mixture=mixture, max_candidates=backend.subset_size or args.candidates)
    return run_and_print(backend, lambda b: api.run_search(cfg, args.out, resume=args.resume,
                                                       progress=not args.no_progress,
                                                       backend=b.evaluate), args.hv_reference)


def cmd_train(args: argparse.Namespace) -> int:
    from stitchnas.methods.pooling import train_standalone
    from stitchnas.search.export import load_model

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
    from supernet.flops import pooling_flops, pooling_params

    space = space_from_args(args)
    space.check_input_size(args.input_size)
    for option, value in (("--in-chans", args.in_chans), ("--num-classes", args.num_classes)):
        if value < 1:
            raise ValueError(f"{option}: expected an integer >= 1, got {value}")
    configs = [space.parse_config(args.config)] if args.config else space.configurations()
    rows: list[dict[str, Any]] = []
    for config in configs:
        row: dict[str, Any] = {"index": space.index(config), "config": space.describe(config),
               "flops": pooling_flops(space, config, args.input_size, args.in_chans, args.num_classes),
               "params": pooling_params(space, args.in_chans, args.num_classes, config)}
        if args.check_fvcore:
            import torch

            from stitchnas.core.flops import fvcore_flops
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
    """Export any candidate of any search run (pooling, BMS, SN-Net, SN-Netv2, Learngene)."""
    from stitchnas import api
    from stitchnas.search.export import load_model

    formats = export_formats_from_args(args)  # a bad --format fails before any work
    folder = api.export_from_run(args.run, args.config, args.out, formats=formats)
    _, record = load_model(folder, return_record=True)
    label = record.get("label") or "[" + ",".join(str(n) for n in record.get("notation", [])) + "]"
    print(f"exported {label} ({record['flops'] / 1e6:.3f} MFLOPs, test accuracy "
          f"{record['metrics']['test_acc']:.2f}%) to {Path(folder).resolve()}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from stitchnas.core.evaluation import accuracy
    from stitchnas.data import DataSpec, load_data
    from stitchnas.search.export import load_model

    model, record = load_model(args.model, return_record=True)
    prov = record["provenance"]
    for key in ("dataset", "seed", "input_size"):  # the split cannot be rebuilt without them
        if key not in prov:
            raise ValueError(f"model {args.model}: model.json field 'provenance.{key}' is missing; "
                             "the evaluation split cannot be rebuilt")
    input_size = record["model"].get("input_size", prov["input_size"])
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise ValueError(f"model {args.model}: model.json field 'model.input_size': expected an integer >= 1, "
                         f"got {input_size!r}")
    want = (model_in_chans(model), model_num_classes(model, input_size, args.model))
    name = args.dataset or prov["dataset"]
    # the recorded folder belongs to the recorded data set, not to one given instead
    data_dir = args.data_dir or (prov.get("data_dir") if name == prov["dataset"] else None)
    spec = DataSpec(name=name, data_dir=data_dir, input_size=input_size, seed=prov["seed"])
    data = load_data(spec)
    if (data.in_chans, data.num_classes) != want:
        raise ValueError(f"model {args.model}: takes {want[0]}-channel images and predicts {want[1]} classes; "
                         f"data {data.name!r} has {data.in_chans} channels and {data.num_classes} classes")
    result = {"val_acc": accuracy(model, data.search_val), "test_acc": accuracy(model, data.test)}
    print(json.dumps({"measured": result, "recorded": record.get("metrics", {})}, indent=2))
    return 0


def model_in_chans(model: Any) -> int:
    """Input channels of a classifier: those of its first convolution (a ViT's patch embedding too)."""
    import torch

    first = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if first is None:
        raise ValueError("model: no convolution found to tell its input channels")
    return int(first.in_channels)


def model_num_classes(model: Any, input_size: int, where: str = "model") -> int:
    """Classes a classifier predicts: the width of its logits on one blank image.

    Raises:
        ValueError: One line when the network cannot take ``input_size`` images at all.
    """
    import torch

    try:
        with torch.no_grad():
            return int(model.eval()(torch.zeros(1, model_in_chans(model), input_size, input_size)).shape[1])
    except RuntimeError as err:
        raise ValueError(f"{where}: cannot take {input_size}x{input_size} images (model.json 'input_size'; "
                         f"{str(err).splitlines()[0]})") from None


def add_commands(sub: argparse._SubParsersAction) -> None:
    search = sub.add_parser("search", help="run a search").add_subparsers(dest="search_kind", required=True)
    p = search.add_parser("pooling", help="one-shot pooling-placement search (SPOS supernet)")
    add_space_args(p)
    add_data_args(p)
    add_train_args(p, epochs=40)
    add_eval_args(p)
    p.add_argument("--score-snapshots", type=int, default=1, metavar="K",
                   help="score each placement by its mean accuracy over the supernet at K epochs near the end of "
                        "training (epochs // 12 apart, the last one the final; kept as supernet_eNNNN.pt): 4 ranked "
                        "better than 1 on both benchmarks of BENCHMARKS.md 'Search quality', at 4x the scoring "
                        "(default 1: the final supernet)")
    add_finetune_args(p)
    add_rank_args(p)
    p.add_argument("--candidates", type=int, default=None, help="evaluate a seeded random subset (default: all)")
    p.add_argument("--no-export", action="store_true", help="skip exporting the Pareto-optimal models")
    add_distributed_args(p)
    add_front_args(p)
    add_run_args(p, "runs/pooling")
    p.set_defaults(handler=cmd_search_pooling)

    p = search.add_parser("bms", help="pooling search with a Balanced Mixture of SuperNets")
    add_space_args(p)
    add_data_args(p)
    add_train_args(p, epochs=40)
    add_eval_args(p)
    add_finetune_args(p)
    add_rank_args(p)
    g = p.add_argument_group("mixture")
    g.add_argument("--num-supernets", "-M", type=int, default=4, help="M, the number of supernets")
    g.add_argument("--t-max", type=finite_float, default=100.0, help="final temperature of the assignment softmax")
    g.add_argument("--grouping", default="bms", choices=("bms", "gm"),
                   help="bms: learned balanced assignment; gm: GM-NAS-style gradient-similarity split")
    g.add_argument("--score-batch-size", type=int, default=None,
                   help="validation images scored after every step (default: --batch-size, as BMS); smaller is "
                        "cheaper and noisier")
    p.add_argument("--candidates", type=int, default=None, help="evaluate a seeded random subset (default: all)")
    p.add_argument("--no-export", action="store_true", help="skip exporting the Pareto-optimal models")
    add_tune_args(p)
    add_front_args(p)
    add_run_args(p, "runs/bms")
    p.set_defaults(handler=cmd_search_bms)

    p = sub.add_parser("train", help="train one pooling configuration from scratch and export it")
    add_space_args(p)
    p.add_argument("--config", default=None,
                   help="index, notation '4,3,3' or positions 'p:4,7' (default: the preset's)")
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

    p = sub.add_parser("export", help="export one candidate of any search run (pooling, BMS, stitching, learngene)")
    p.add_argument("--run", required=True, help="a search run folder")
    p.add_argument("--config", required=True,
                   help="candidate index, or the method's notation: '4,3,3' / 'p:4,7' for placements, "
                        "'a0.0-3_a1.4-11' for stitches")
    p.add_argument("--out", default=None,
                   help="folder for the export: model.json, model.pt and --format's files (default: RUN/selected/NAME)")
    add_export_format_arg(p)
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("evaluate", help="load an exported model and measure it on its data")
    p.add_argument("model", help="exported model folder or its model.json")
    p.add_argument("--dataset", default=None)
    p.add_argument("--data-dir", default=None)
    p.set_defaults(handler=cmd_evaluate)
