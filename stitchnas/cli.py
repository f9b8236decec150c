"""The ``stitchnas`` command line.

Every command validates its input up front and fails with one line naming the bad option or
file. Ctrl-C leaves the last checkpoint in place; rerun with ``--resume`` to continue.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Iterator, Sequence

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
    g.add_argument("--width-scale", type=float, default=None, help="multiply the preset's channel widths")


def space_from_args(args: argparse.Namespace) -> PoolingSpace:
    overrides = {}
    if args.downsample is not None:
        overrides["downsample"] = args.downsample
    if getattr(args, "num_downsamples", None) is not None:
        if args.space != "resnet20":
            raise ValueError("--num-downsamples: only the resnet20 preset takes it")
        overrides["num_downsamples"] = args.num_downsamples
    if getattr(args, "width_scale", None) is not None:
        if not args.width_scale > 0:
            raise ValueError(f"--width-scale: expected > 0, got {args.width_scale}")
        overrides["width_scale"] = args.width_scale
    return create_space(args.space, **overrides)


def add_data_args(p: argparse.ArgumentParser, input_size: int = 16) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits",
                   help="digits (embedded default), cluttered_digits (embedded), cifar10, cifar100, npz")
    g.add_argument("--data-dir", default=None, help="CIFAR python-pickle folder or .npz file")
    g.add_argument("--input-size", type=int, default=input_size, help="square input side in pixels")
    g.add_argument("--seed", type=int, default=0, help="seed for splits, initialisation and sampling")
    g.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                   help="data-set-specific setting, e.g. canvas_size=24 for cluttered_digits (repeatable)")


def data_spec_from_args(args: argparse.Namespace):
    from stitchnas.data import DataSpec

    return DataSpec(name=args.dataset, data_dir=args.data_dir, input_size=args.input_size, seed=args.seed,
                    options=parse_options(args.data_option))


def parse_options(items: Sequence[str]) -> dict:
    """``KEY=VALUE`` strings to a dict, values read as JSON where possible (numbers, booleans)."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--data-option {item!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


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
def add_tune_args(p: argparse.ArgumentParser) -> None:
    """Options of the evaluation backend every search shares (in process or Ray Tune)."""
    g = p.add_argument_group("candidate evaluation (in process or Ray Tune)")
    g.add_argument("--backend", default="local", choices=("local", "ray"),
                   help="evaluate candidates in this process (local) or as Ray Tune trials (ray)")
    g.add_argument("--address", default=None,
                   help="Ray cluster to join: 'auto' or host:port (default: start a local Ray on 127.0.0.1)")
    g.add_argument("--search", default="exhaustive", choices=("exhaustive", "random", "nsga2", "tpe"),
                   help="exhaustive, random subset, or Optuna NSGA-II / TPE (those two need --backend ray)")
    g.add_argument("--budget", type=int, default=None, help="number of evaluations (random, nsga2, tpe)")
    g.add_argument("--candidates-per-trial", type=int, default=8,
                   help="candidates one Tune trial evaluates (exhaustive/random; Optuna trials take one)")
    g.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs reserved per Tune trial")
    g.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs per Tune trial, fractional allowed")
    g.add_argument("--max-failures", type=int, default=1, help="retries of a crashing Ray trial / worker group")


def add_distributed_args(p: argparse.ArgumentParser) -> None:
    add_tune_args(p)
    g = p.add_argument_group("distributed training and fronts")
    g.add_argument("--num-workers", type=int, default=1,
                   help="train the supernet data-parallel on N Ray Train workers (1: in this process)")
    g.add_argument("--hv-reference", default="evaluated", choices=("evaluated", "space"),
                   help="hypervolume reference: 1.1 x the largest evaluated FLOPs, or over the whole space "
                        "(use 'space' to compare searches on one space)")


def tune_stage_from_args(args: argparse.Namespace):
    """The Ray Tune stage the options ask for, or None for in-process evaluation."""
    if args.budget is not None and args.budget < 1:
        raise ValueError(f"--budget: expected a number of evaluations >= 1, got {args.budget}")
    if args.backend == "local" and args.search in ("nsga2", "tpe"):
        raise ValueError(f"--search {args.search}: needs --backend ray (Optuna's samplers run through Ray Tune)")
    if args.backend != "ray":
        return None
    from stitchnas.tune import RayTuneStage, TuneOptions

    return RayTuneStage(TuneOptions(
        search=args.search, budget=args.budget, candidates_per_trial=args.candidates_per_trial,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial, address=args.address,
        max_failures=args.max_failures, seed=args.seed))


def stitch_backend_from_args(args: argparse.Namespace):
    """``stage`` keyword arguments of a stitching pipeline and the Ray session they need (joined
    before training, so a cluster that cannot run a trial fails the command at once)."""
    from contextlib import nullcontext

    stage = tune_stage_from_args(args)
    if stage is None:
        if args.search != "exhaustive":
            raise ValueError(f"--search {args.search}: stitching evaluates every configuration in process; "
                             "use --backend ray for random, nsga2 or tpe")
        return {}, nullcontext()
    from stitchnas.ray_cluster import ray_session

    return {"stage": stage.evaluate}, _preflighted(ray_session(args.address), [stage])


@contextlib.contextmanager
def _preflighted(session, plugins: Sequence) -> Iterator[None]:
    with session:
        for plugin in plugins:
            plugin.preflight()  # cluster too small: fail now, not after training
        yield


def distributed_from_args(args: argparse.Namespace, train_device: str):
    """``run_pooling_search`` keyword arguments for the chosen backend, and the Ray session
    (joined once, before training) they need."""
    from contextlib import nullcontext

    kwargs: dict = {"hv_reference": args.hv_reference}
    if args.num_workers < 1:
        raise ValueError(f"--num-workers: expected >= 1, got {args.num_workers}")
    stage = tune_stage_from_args(args)
    if args.search == "random" and args.candidates is not None:
        raise ValueError("--candidates: not with --search random, which takes --budget")
    if stage is not None:
        kwargs["stage"] = stage
    elif args.search == "random" and args.budget is None:
        raise ValueError("--budget: --search random needs a number of evaluations")
    if args.num_workers > 1:
        from stitchnas.distributed import DistributedOptions, RayTrainTrainer

        kwargs["trainer"] = RayTrainTrainer(DistributedOptions(
            num_workers=args.num_workers, use_gpu=train_device.startswith("cuda"), address=args.address,
            max_failures=args.max_failures))
    if args.backend == "ray" or args.num_workers > 1:
        from stitchnas.ray_cluster import ray_session

        plugins = [p for p in (kwargs.get("stage"), kwargs.get("trainer")) if p is not None]
        return kwargs, _preflighted(ray_session(args.address), plugins)
    return kwargs, nullcontext()


def cmd_search_pooling(args: argparse.Namespace) -> int:
    from stitchnas.pooling_search import PoolingSearchConfig, run_pooling_search

    train_cfg = train_config_from_args(args)
    kwargs, session = distributed_from_args(args, train_cfg.device)
    cfg = PoolingSearchConfig(
        space=space_from_args(args), data=data_spec_from_args(args), train=train_cfg,
        eval=eval_config_from_args(args, train_cfg.device),
        max_candidates=args.budget if args.search == "random" else args.candidates,
        export_front=not args.no_export,
    )
    with session:
        outcome = run_pooling_search(cfg, args.out, resume=args.resume, progress=not args.no_progress, **kwargs)
    _print_front(outcome.summary.front, outcome.out_dir, len(outcome.rows))
    ref_flops, ref_acc = outcome.summary.reference
    print(f"hypervolume: {outcome.summary.hypervolume:.6g} (reference {ref_flops / 1e6:.3f} MFLOPs, "
          f"{ref_acc:g}% accuracy; --hv-reference {args.hv_reference})")
    return 0


def cmd_search_bms(args: argparse.Namespace) -> int:
    from stitchnas.pooling_search import PoolingSearchConfig, run_pooling_search
    from supernet.bms import MixtureConfig

    train_cfg = train_config_from_args(args)
    space = space_from_args(args)
    mixture = MixtureConfig(num_supernets=args.num_supernets, t_max=args.t_max, grouping=args.grouping,
                            score_batch_size=args.score_batch_size)
    cfg = PoolingSearchConfig(
        space=space, data=data_spec_from_args(args), train=train_cfg,
        eval=eval_config_from_args(args, train_cfg.device), max_candidates=args.candidates,
        export_front=not args.no_export, mixture=mixture,
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
        SUPERNET_CHECKPOINT, PoolingSearchConfig, build_search_model, data_provenance, export_pooling_candidate,
    )
    from stitchnas.runs import RUN_CONFIG
    from stitchnas.io import read_json
    from supernet.networks import ModelSpec

    run = Path(args.run)
    cfg = PoolingSearchConfig.from_json(read_json(run / RUN_CONFIG, "run config"))
    config = cfg.space.parse_config(args.config)
    data = load_data(cfg.data)
    supernet = build_search_model(cfg, ModelSpec(data.in_chans, data.num_classes))
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


def cmd_truth_pooling(args: argparse.Namespace) -> int:
    from stitchnas.truth import TruthConfig, run_ground_truth, seed_noise

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
    from stitchnas.ranking_report import rank_run

    report = rank_run(args.run, args.truth, ks=tuple(int(k) for k in args.top_k.split(",")), partial=args.partial)
    print(json.dumps(report, indent=2))
    return 0


# ------------------------------------------------------------------ SN-Net: anchors and stitching
def add_stitch_train_args(p: argparse.ArgumentParser, epochs: int, lr: float, warmup_epochs: int,
                          batch_size: int = 32) -> None:
    g = p.add_argument_group("training (AdamW or SGD, warm-up then cosine decay)")
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--batch-size", type=int, default=batch_size)
    g.add_argument("--lr", type=float, default=lr, help="peak learning rate (SN-Net: of the stitching layers)")
    g.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"))
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--warmup-epochs", type=int, default=warmup_epochs)
    g.add_argument("--max-train-samples", type=int, default=None,
                   help="stratified subset of the training split (quick runs)")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    g.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on CUDA")


def stitch_train_config_from_args(args: argparse.Namespace, **extra):
    from stitching.trainer import StitchTrainConfig
    from supernet.training import resolve_device

    return StitchTrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lr_min=min(args.lr, 1e-5),
        optimizer=args.optimizer, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        seed=args.seed, device=str(resolve_device(args.device)), amp=not args.no_amp, **extra,
    )


def stitch_data_spec_from_args(args: argparse.Namespace):
    from dataclasses import replace

    return replace(data_spec_from_args(args), max_train_samples=args.max_train_samples)


def parse_anchor_files(items: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        preset, sep, path = item.partition("=")
        if not sep or not preset or not path:
            raise ValueError(f"--anchor {item!r}: expected PRESET=PATH, e.g. deit_tiny_patch16_224=deit_tiny.pth")
        pairs.append((preset, path))
    return pairs


def cmd_anchors_train(args: argparse.Namespace) -> int:
    from stitching.anchors_train import MANIFEST_FILE, AnchorTrainConfig, train_anchors
    from stitchnas.io import read_json

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


def _stitch_anchor_refs(args: argparse.Namespace, data_spec) -> list:
    from dataclasses import asdict

    from stitching.anchors_train import MANIFEST_FILE, anchor_refs_from_files, read_anchor_folder
    from stitchnas.io import read_json

    if bool(args.anchors) == bool(args.anchor):
        raise ValueError("anchors: give either --anchors FOLDER or --anchor PRESET=PATH (at least twice)")
    if args.anchor:
        return anchor_refs_from_files(parse_anchor_files(args.anchor), input_size=data_spec.input_size)
    refs = read_anchor_folder(args.anchors)
    trained_on = read_json(Path(args.anchors) / MANIFEST_FILE, "anchors manifest").get("data")
    if isinstance(trained_on, dict) and trained_on != json.loads(json.dumps(asdict(data_spec))):
        log.warning("anchors were trained on other data settings (%s); search_val may overlap their training data",
                    {k: v for k, v in trained_on.items() if asdict(data_spec).get(k) != v})
    return refs


def cmd_stitch_train(args: argparse.Namespace) -> int:
    from stitchnas.stitch_search import StitchSearchConfig, run_stitch_search

    data_spec = stitch_data_spec_from_args(args)
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
                             export_front=not args.no_export, **version_options)
    backend, session = stitch_backend_from_args(args)
    with session:
        outcome = run_stitch_search(cfg, args.out, resume=args.resume, progress=not args.no_progress, **backend)
    _print_stitch_front(outcome)
    return 0


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
    kind = args.sampler or ("ros" if v2 else "uniform")
    if kind != "ros" and (args.flops_gap is not None or args.ros_weighting is not None):
        raise ValueError("--flops-gap / --ros-weighting: apply to ROS sampling only (--sampler ros)")
    if args.flops_gap is not None and not args.flops_gap > 0:
        raise ValueError(f"--flops-gap {args.flops_gap}: expected a FLOPs gap in MFLOPs > 0")
    sampling = SamplingConfig(kind, args.flops_gap, args.ros_weighting or "uniform")
    if args.lora_rank is not None and args.lora_rank < 0:
        raise ValueError(f"--lora-rank {args.lora_rank}: expected a rank >= 0 (0: plain stitching layers)")
    return {"version": args.version, "route_types": route_types, "sampling": sampling, "lora_rank": args.lora_rank}


def _print_stitch_front(outcome) -> None:
    summary = outcome.summary
    print(f"Pareto front ({len(summary.front)} of {len(outcome.rows)} configurations, "
          f"hypervolume {summary.hypervolume:.4g}):")
    print(f"  {'id':>4} {'MFLOPs':>9} {'val acc %':>9}  route")
    for row in summary.front:
        print(f"  {row['candidate']:>4} {row['flops'] / 1e6:9.3f} {row['val_acc']:9.2f}  {row['label']}")
    extra = ", exports/" if outcome.exports else ""
    print(f"outputs: {Path(outcome.out_dir).resolve()} (results.csv, pareto.json, pareto.png{extra})")


def cmd_stitch_evaluate(args: argparse.Namespace) -> int:
    from stitchnas.stitch_search import evaluate_run

    backend, session = stitch_backend_from_args(args)
    with session:
        outcome = evaluate_run(args.run, no_train=args.no_train, out_dir=args.out, progress=not args.no_progress,
                               **backend)
    _print_stitch_front(outcome)
    return 0


def cmd_stitch_export(args: argparse.Namespace) -> int:
    from stitchnas.export import load_model
    from stitchnas.stitch_search import export_from_run, parse_route

    config = args.config.strip()
    if not config.isdigit() and parse_route(config) is None:
        raise ValueError(f"--config {args.config!r}: expected a configuration id (see results.csv) "
                         "or a route such as a0.0-3_a1.4-11 (a<anchor>.<first>-<last> per segment)")
    folder = export_from_run(args.run, int(config) if config.isdigit() else config, args.out)
    _, record = load_model(folder, return_record=True)
    config_id = record["config"]["id"]
    print(f"exported configuration {config_id} ({record['label']}, {record['flops'] / 1e6:.3f} MFLOPs, "
          f"test accuracy {record['metrics']['test_acc']:.2f}%) to {Path(folder).resolve()}")
    return 0


def add_reevaluate_command(sub: argparse._SubParsersAction, what: str, run_kind: str, init: str,
                           handler: Callable[[argparse.Namespace], int]) -> None:
    """``... evaluate``: re-score a stitching run's configurations (checkpoint or init)."""
    p = sub.add_parser("evaluate", help=f"re-evaluate {what}")
    p.add_argument("--run", required=True, help=f"a {run_kind} run folder")
    p.add_argument("--no-train", action="store_true", help=f"evaluate right after {init} instead")
    p.add_argument("--out", default=None, help="output folder (default: RUN/evaluate/checkpoint or .../init)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--seed", type=int, default=0, help="seed of random / Optuna searches")
    add_tune_args(p)
    p.set_defaults(handler=handler)


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
    add_data_args(p)
    add_stitch_train_args(p, epochs=10, lr=1e-3, warmup_epochs=0)
    g = p.add_argument_group("stitching")
    g.add_argument("--anchor-lr-scale", type=float, default=0.1, help="anchor LR = this x --lr (SN-Net: 0.1)")
    g.add_argument("--distill", type=float, default=0.0, metavar="WEIGHT",
                   help="weight of KL distillation from the largest anchor (0: off)")
    g.add_argument("--distill-temperature", type=float, default=1.0)
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
    g.add_argument("--flops-gap", type=float, default=None, metavar="MFLOPS",
                   help="ROS: FLOPs grouping gap in MFLOPs, > 0 (default: the FLOPs range / 24, which gives "
                        "SN-Netv2's 13 groups for 12-block small anchors)")
    g.add_argument("--ros-weighting", default=None, choices=("uniform", "linear"),
                   help="ROS: draw FLOPs groups uniformly (default) or linearly favouring heavier ones")
    g.add_argument("--lora-rank", type=int, default=None, metavar="R",
                   help="low-rank stitching layers of rank R, base frozen at the least-squares map; 0: plain "
                        "layers (default: v1 0, v2 4)")
    p.add_argument("--no-export", action="store_true", help="skip exporting the Pareto-optimal models")
    add_tune_args(p)
    add_run_args(p, "runs/stitch")
    p.set_defaults(handler=cmd_stitch_train)

    add_reevaluate_command(stitch, "every configuration of a run", "'stitchnas stitch train'",
                           "the least-squares init", cmd_stitch_evaluate)

    p = stitch.add_parser("export", help="export one configuration of a run as a standalone model")
    p.add_argument("--run", required=True, help="a 'stitchnas stitch train' run folder")
    p.add_argument("--config", required=True,
                   help="configuration id (column 'candidate' of results.csv) or route, e.g. a0.0-3_a1.4-11")
    p.add_argument("--out", required=True, help="folder for model.json and model.pt")
    p.set_defaults(handler=cmd_stitch_export)


# ------------------------------------------------------------------ Learngene Pool
def _learngene_teacher_ref(args: argparse.Namespace, data_spec):
    """The teacher: ``--teacher PRESET=PATH``, or an anchor of ``--anchors`` (``--teacher NAME``,
    default the one with the most FLOPs)."""
    from stitching.anchors_train import AnchorRef, create_anchor, read_anchor_folder
    from stitching.flops import anchor_flops
    from stitchnas.io import file_sha256

    if args.anchors:
        refs = read_anchor_folder(args.anchors)
        if args.teacher is None:
            return max(refs, key=lambda r: anchor_flops(dict(r.config)).total)
        found = [r for r in refs if r.name == args.teacher]
        if not found:
            raise ValueError(f"--teacher {args.teacher!r}: not in {args.anchors}, expected one of {[r.name for r in refs]}")
        return found[0]
    if not args.teacher or "=" not in args.teacher:
        raise ValueError("teacher: give --anchors FOLDER (optionally --teacher NAME) or --teacher PRESET=PATH")
    preset, path = parse_anchor_files([args.teacher])[0]
    config = create_anchor(preset, img_size=data_spec.input_size).config
    weights = Path(path)
    return AnchorRef(preset, config, str(weights.resolve()), file_sha256(weights) if weights.is_file() else "")


def cmd_learngene_distill(args: argparse.Namespace) -> int:
    from stitching.learngene import StudentSpec, default_students, parse_matches
    from stitching.learngene_train import DistillConfig
    from stitchnas.learngene_search import LearngeneDistillRunConfig, run_distill

    data_spec = stitch_data_spec_from_args(args)
    teacher = _learngene_teacher_ref(args, data_spec)
    students = tuple(StudentSpec.parse(s) for s in args.student) or default_students(dict(teacher.config))
    distill = DistillConfig(students=students, matches=parse_matches(args.matches), alpha=args.alpha,
                            temperature=args.temperature, train=stitch_train_config_from_args(args),
                            train_matrices=not args.freeze_matrices)
    outcome = run_distill(LearngeneDistillRunConfig(teacher, distill, data_spec), args.out, resume=args.resume,
                          progress=not args.no_progress)
    m = outcome.manifest
    print(f"{'model':<22} {'width':>5} {'blocks':>6} {'MFLOPs':>9} {'params':>9} {'val acc %':>9} {'test acc %':>10}")
    t = m["teacher"]
    print(f"{'teacher ' + t['name']:<22} {t['config']['embed_dim']:>5} {t['config']['depth']:>6} {t['flops'] / 1e6:9.3f} "
          f"{t['params']:>9} {t['val_acc']:9.2f} {t['test_acc']:10.2f}")
    for s in m["students"]:
        print(f"{'student ' + s['name']:<22} {s['embed_dim']:>5} {s['depth']:>6} {s['flops'] / 1e6:9.3f} "
              f"{s['params']:>9} {s['val_acc']:9.2f} {s['test_acc']:10.2f}")
    print(f"outputs: {Path(outcome.out_dir).resolve()} (learngene.json, learngene.pt)")
    return 0


def cmd_learngene_pool(args: argparse.Namespace) -> int:
    from stitchnas.learngene_search import LearngenePoolConfig, run_learngene_pool

    if args.max_train_samples is not None:
        raise ValueError("--max-train-samples: the pool uses the distillation run's data; set it on 'learngene distill'")
    if args.no_train:
        args.epochs = 0
    train_cfg = stitch_train_config_from_args(args, anchor_lr_scale=args.instance_lr_scale,
                                              distill_weight=args.distill_weight,
                                              distill_temperature=args.distill_temperature)
    cfg = LearngenePoolConfig(distill_run=args.distill, students=tuple(args.student),
                              init=args.init.replace("-", "_"), init_samples=args.init_samples, finetune=train_cfg,
                              export_front=not args.no_export)
    backend, session = stitch_backend_from_args(args)
    with session:
        outcome = run_learngene_pool(cfg, args.out, resume=args.resume, progress=not args.no_progress, **backend)
    _print_stitch_front(outcome)
    return 0


def cmd_learngene_evaluate(args: argparse.Namespace) -> int:
    from stitchnas.learngene_search import evaluate_pool_run

    backend, session = stitch_backend_from_args(args)
    with session:
        outcome = evaluate_pool_run(args.run, no_train=args.no_train, out_dir=args.out,
                                    progress=not args.no_progress, **backend)
    _print_stitch_front(outcome)
    return 0


def cmd_learngene_export(args: argparse.Namespace) -> int:
    from stitchnas.export import load_model
    from stitchnas.learngene_search import export_from_pool_run

    try:
        config_id = int(args.config)
    except ValueError:
        raise ValueError(f"--config {args.config!r}: expected a descendant id (see results.csv)") from None
    folder = export_from_pool_run(args.run, config_id, args.out)
    _, record = load_model(folder, return_record=True)
    print(f"exported descendant {config_id} ({record['label']}, {record['flops'] / 1e6:.3f} MFLOPs, "
          f"test accuracy {record['metrics']['test_acc']:.2f}%) to {Path(folder).resolve()}")
    return 0


def add_learngene_commands(sub: argparse._SubParsersAction) -> None:
    """``stitchnas learngene distill|pool|evaluate|export`` (Learngene Pool)."""
    lg = sub.add_parser("learngene", help="Learngene Pool: distil a teacher into students, stitch descendants")
    lg = lg.add_subparsers(dest="learngene_kind", required=True)
    p = lg.add_parser("distill", help="distil a trained ViT teacher into auxiliary students (resumable)")
    g = p.add_argument_group("teacher and students")
    g.add_argument("--anchors", default=None, help="folder written by 'stitchnas anchors train' (anchors.json)")
    g.add_argument("--teacher", default=None,
                   help="NAME of an anchor in --anchors (default: the largest), or PRESET=PATH without --anchors")
    g.add_argument("--student", action="append", default=[], metavar="NAME:DIM:HEADS:DEPTH",
                   help="an auxiliary student (repeat; default: tiny at half and base at full teacher width, "
                        "half its depth)")
    g.add_argument("--matches", default="front_end",
                   help="matched blocks for the MSE term: front_end, end, or TEACHER:STUDENT pairs like 3:1,7:3,11:5")
    g.add_argument("--alpha", type=float, default=0.1, help="weight of the hard-label CE (official 0.1)")
    g.add_argument("--temperature", type=float, default=1.0, help="temperature of the soft CE on logits")
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
    g.add_argument("--instance-lr-scale", type=float, default=1.0, help="students' LR = this x --lr (official 1)")
    g.add_argument("--distill-weight", type=float, default=0.5, help="weight of KL distillation from the teacher")
    g.add_argument("--distill-temperature", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0, help="seed for descendant draws, batch order and init batch")
    g.add_argument("--no-train", action="store_true", help="stop after the stitch init (same as --epochs 0)")
    add_stitch_train_args(p, epochs=10, lr=3e-4, warmup_epochs=0)
    p.add_argument("--no-export", action="store_true", help="skip exporting the Pareto-optimal descendants")
    add_tune_args(p)
    add_run_args(p, "runs/learngene_pool")
    p.set_defaults(handler=cmd_learngene_pool)

    add_reevaluate_command(lg, "every descendant of a pool run", "'stitchnas learngene pool'", "the stitch init",
                           cmd_learngene_evaluate)

    p = lg.add_parser("export", help="export one descendant of a pool run as a standalone model")
    p.add_argument("--run", required=True, help="a 'stitchnas learngene pool' run folder")
    p.add_argument("--config", required=True, help="descendant id (column 'candidate' of results.csv)")
    p.add_argument("--out", required=True, help="folder for model.json and model.pt")
    p.set_defaults(handler=cmd_learngene_export)


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
    add_distributed_args(p)
    add_run_args(p, "runs/pooling")
    p.set_defaults(handler=cmd_search_pooling)

    p = search.add_parser("bms", help="pooling search with a Balanced Mixture of SuperNets")
    add_space_args(p)
    add_data_args(p)
    add_train_args(p, epochs=40)
    add_eval_args(p)
    g = p.add_argument_group("mixture")
    g.add_argument("--num-supernets", "-M", type=int, default=4, help="M, the number of supernets")
    g.add_argument("--t-max", type=float, default=100.0, help="final temperature of the assignment softmax")
    g.add_argument("--grouping", default="bms", choices=("bms", "gm"),
                   help="bms: learned balanced assignment; gm: GM-NAS-style gradient-similarity split")
    g.add_argument("--score-batch-size", type=int, default=None,
                   help="validation images scored after every step (default: --batch-size, as BMS); smaller is "
                        "cheaper and noisier")
    p.add_argument("--candidates", type=int, default=None, help="evaluate a seeded random subset (default: all)")
    p.add_argument("--no-export", action="store_true", help="skip exporting the Pareto-optimal models")
    add_run_args(p, "runs/bms")
    p.set_defaults(handler=cmd_search_bms)

    p = sub.add_parser("train", help="train one pooling configuration from scratch and export it")
    add_space_args(p)
    p.add_argument("--config", default=None, help="index, notation '4,3,3' or positions 'p:4,7' (default: the preset's)")
    add_data_args(p)
    add_train_args(p, epochs=40)
    add_eval_args(p)
    add_run_args(p, "runs/train")
    p.set_defaults(handler=cmd_train)

    truth = sub.add_parser("truth", help="ground truth for ranking studies").add_subparsers(dest="truth_kind", required=True)
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
    p.add_argument("--truth", required=True, action="append", help="'stitchnas truth' folder (repeatable, e.g. one per seed)")
    p.add_argument("--top-k", default="1,3,5", help="comma-separated k for top-k overlap")
    p.add_argument("--partial", action="store_true",
                   help="rank on the configurations the ground truth covers (default: it must cover them all)")
    p.set_defaults(handler=cmd_rank)

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

    add_stitch_commands(sub)
    add_learngene_commands(sub)
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
