"""Option groups and helpers every command family shares: space, data, training, evaluation,
run folder, backend (in process, Ray Tune, Ray Train) and printing a front."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from searchspace.pooling import DOWNSAMPLE_OPS, SPACE_PRESETS, PoolingSpace, create_space

if TYPE_CHECKING:
    from stitching.trainer import StitchTrainConfig
    from stitchnas.data import DataSpec
    from stitchnas.search.candidates import EvaluationBackend
    from stitchnas.search.cost import CostConfig
    from stitchnas.search.pipeline import SearchResult
    from stitchnas.search.rank_rule import RankRule
    from supernet.evaluation import EvalConfig
    from supernet.training import TrainConfig


def finite_float(text: str) -> float:
    """argparse type: a finite number (``nan``, ``inf`` and ``1e999`` are refused up front)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def add_space_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("search space")
    g.add_argument("--space", default="resnet20", choices=sorted(SPACE_PRESETS), help="pooling space preset")
    g.add_argument("--downsample", default=None, choices=DOWNSAMPLE_OPS,
                   help="downsampling op (default: the preset's; resnet20 uses a 2x2 max-pool)")
    g.add_argument("--num-downsamples", type=int, default=None,
                   help="k, number of downsamplings (resnet20 presets only)")
    g.add_argument("--width-scale", type=finite_float, default=None, help="multiply the preset's channel widths")


def space_from_args(args: argparse.Namespace) -> PoolingSpace:
    overrides = {}
    if args.downsample is not None:
        overrides["downsample"] = args.downsample
    if getattr(args, "num_downsamples", None) is not None:
        if args.space not in ("resnet20", "resnet20_equal_flops"):
            raise ValueError("--num-downsamples: only the resnet20 and resnet20_equal_flops presets take it")
        overrides["num_downsamples"] = args.num_downsamples
    if getattr(args, "width_scale", None) is not None:
        if not args.width_scale > 0:
            raise ValueError(f"--width-scale: expected > 0, got {args.width_scale}")
        overrides["width_scale"] = args.width_scale
    return create_space(args.space, **overrides)


def add_data_args(p: argparse.ArgumentParser, input_size: int = 16) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits",
                   help="digits (embedded default), cluttered_digits (embedded), cifar10, cifar100, npz, imagefolder")
    g.add_argument("--data-dir", default=None,
                   help="CIFAR python-pickle folder, .npz file, or image folder (train/ and val/ of class folders)")
    g.add_argument("--input-size", type=int, default=input_size, help="square input side in pixels")
    g.add_argument("--seed", type=int, default=0, help="seed for splits, initialisation and sampling")
    g.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                   help="data-set-specific setting, e.g. canvas_size=24 for cluttered_digits, stream=true|false|auto "
                        "for imagefolder (repeatable)")
    g.add_argument("--workers", default=None, metavar="N",
                   help="data-loading worker processes (imagefolder: decoding, and streaming when the set is "
                        "streamed from disk); the same as --data-option workers=N")


def data_spec_from_args(args: argparse.Namespace) -> DataSpec:
    from stitchnas.data import DataSpec

    options = parse_options(args.data_option)
    workers = getattr(args, "workers", None)
    if workers is not None:
        if not (workers.isascii() and workers.isdigit()):
            raise ValueError(f"--workers: expected an integer >= 0, got {workers!r}")
        if "workers" in options and options["workers"] != int(workers):
            raise ValueError(f"--workers {workers} and --data-option workers={options['workers']}: give one")
        options["workers"] = int(workers)
    # Absolute, so the run folder's run_config.json reloads from any working directory.
    data_dir = None if args.data_dir is None else os.path.abspath(os.path.expanduser(args.data_dir))
    return DataSpec(name=args.dataset, data_dir=data_dir, input_size=args.input_size, seed=args.seed,
                    options=options)


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
    g.add_argument("--lr", type=finite_float, default=lr, help="initial SGD learning rate (cosine decay)")
    g.add_argument("--weight-decay", type=finite_float, default=5e-4)
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    g.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on CUDA")
    add_augment_args(g)


def add_augment_args(g: argparse._ActionsContainer) -> None:
    """``--augment`` / ``--no-augment``: the training batches' augmentation (one ``augment`` dest)."""
    g.add_argument("--augment", default="auto", choices=("auto", "none", "crop_flip", "rrc_flip", "crop", "rrc"),
                   help="training augmentation, on the device: crop_flip (pad an eighth of the side, random crop, "
                        "horizontal flip; CIFAR's recipe), rrc_flip (random-resized crop and flip; ImageNet's), "
                        "crop / rrc (the same without the flip), auto (default: crop_flip up to 64 px, else "
                        "rrc_flip; without the flip for data a mirror changes, like digits); evaluation never augments")
    g.add_argument("--no-augment", dest="augment", action="store_const", const="none",
                   help="train without augmentation (same as --augment none)")


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    from stitchnas.core.training import resolve_device
    from supernet.training import TrainConfig

    device = str(resolve_device(args.device))
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lr_min=min(args.lr, 1e-3),
                       weight_decay=args.weight_decay, seed=args.seed, device=device, amp=not args.no_amp,
                       augment=getattr(args, "augment", "auto"))


def add_eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--bn-mode", default="recalibrate", choices=("recalibrate", "batch"),
                   help="BatchNorm statistics per configuration: re-estimated (default) or per batch")
    g.add_argument("--calib-batches", type=int, default=8, help="batches used to re-estimate BatchNorm statistics")


def add_finetune_args(p: argparse.ArgumentParser) -> None:
    """``--finetune-epochs`` / ``--finetune-lr``: score each placement after fine-tuning it from the
    supernet's weights (``EvalConfig.finetune``; read by :func:`eval_config_from_args`)."""
    g = p.add_argument_group("fine-tuned scoring")
    g.add_argument("--finetune-epochs", type=int, default=0,
                   help="score every placement after this many epochs of training its network from the supernet's "
                        "weights on the search's training split (the --batch-size, augmentation and seed of the "
                        "supernet's recipe); the exports are those networks. Default 0: score the supernet's weights")
    g.add_argument("--finetune-lr", type=finite_float, default=0.01,
                   help="--finetune-epochs: initial learning rate, cosine decay to a hundredth of it (default 0.01)")


def add_rank_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ranking")
    g.add_argument("--rank-by", default=None, metavar="{score,blend}",
                   help="the front's score: the supernet's validation accuracy (score) or its rank blend with the "
                        "no-training FLOPs-and-parameters rank (blend); default: see README 'Search quality'")
    g.add_argument("--blend-weight", type=finite_float, default=None,
                   help="--rank-by blend: weight of the FLOPs-and-parameters rank, in [0, 1] (default 0.5)")


def rank_rule_from_args(args: argparse.Namespace) -> RankRule:
    """``--rank-by`` / ``--blend-weight`` as a :class:`~stitchnas.search.rank_rule.RankRule`.

    Raises:
        ValueError: a weight outside [0, 1], or ``--blend-weight`` with ``--rank-by score``.
    """
    from stitchnas.methods.pooling import DEFAULT_RANK
    from stitchnas.search.rank_rule import RANK_RULES, RankRule

    by = args.rank_by or DEFAULT_RANK.by
    if by not in RANK_RULES:
        raise ValueError(f"--rank-by: expected one of {', '.join(RANK_RULES)}, got {by!r}")
    if args.blend_weight is None:
        return DEFAULT_RANK if by == DEFAULT_RANK.by else RankRule(by)
    if by != "blend":
        raise ValueError(f"--blend-weight: applies to --rank-by blend only (the rank is {by!r})")
    if not 0.0 <= args.blend_weight <= 1.0:
        raise ValueError(f"--blend-weight: expected a number in [0, 1], got {args.blend_weight}")
    return RankRule("blend", args.blend_weight)


def eval_config_from_args(args: argparse.Namespace, device: str, train_cfg: TrainConfig | None = None) -> EvalConfig:
    """The evaluation options as an :class:`~supernet.evaluation.EvalConfig`; with ``train_cfg``
    (the supernet's recipe) and ``--finetune-epochs`` above 0, its ``finetune`` recipe.

    Raises:
        ValueError: ``--finetune-epochs`` below 0 or ``--finetune-lr`` not above 0 (one line).
    """
    from dataclasses import replace

    from supernet.evaluation import EvalConfig

    finetune = None
    epochs = getattr(args, "finetune_epochs", 0)
    if epochs < 0:
        raise ValueError(f"--finetune-epochs: expected an integer >= 0, got {epochs}")
    if epochs and train_cfg is not None:
        lr = args.finetune_lr
        if not lr > 0:
            raise ValueError(f"--finetune-lr: expected a number > 0, got {lr}")
        finetune = replace(train_cfg, epochs=epochs, lr=lr, lr_min=lr / 100)
    return EvalConfig(bn_mode=args.bn_mode, calib_batches=args.calib_batches, device=device, seed=args.seed,
                      finetune=finetune)


def add_run_args(p: argparse.ArgumentParser, default_out: str) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--out", default=default_out, help="run folder (results, checkpoints, exports)")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_export_format_arg(p: argparse.ArgumentParser) -> None:
    """``--format``: the files an export writes besides model.json (parsed by :func:`export_formats_from_args`)."""
    p.add_argument("--format", default="pt,pt2", metavar="FORMATS",
                   help="comma-separated: pt (model.pt, for stitchnas.load_model; always written), pt2 (model.pt2, a "
                        "torch.export program), onnx (model.onnx, checked with onnxruntime; needs "
                        "pip install 'stitchnas[onnx]'); default pt,pt2")


def export_formats_from_args(args: argparse.Namespace) -> tuple[str, ...]:
    """``--format`` parsed; one-line ValueError naming ``--format`` (unknown format, onnx extra missing)."""
    from stitchnas.search.portable import parse_formats

    return parse_formats(args.format, "--format")


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
    g.add_argument("--cpus-per-trial", type=finite_float, default=1.0, help="CPUs reserved per Tune trial")
    g.add_argument("--gpus-per-trial", type=finite_float, default=0.0, help="GPUs per Tune trial, fractional allowed")
    g.add_argument("--max-failures", type=int, default=1, help="retries of a crashing Ray trial / worker group")


def add_distributed_args(p: argparse.ArgumentParser) -> None:
    add_tune_args(p)
    g = p.add_argument_group("distributed training")
    g.add_argument("--num-workers", type=int, default=1,
                   help="train the supernet data-parallel on N Ray Train workers (1: in this process)")


def add_front_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Pareto front")
    g.add_argument("--hv-reference", default="evaluated", choices=("evaluated", "space"),
                   help="hypervolume reference: 1.1 x the largest evaluated cost, or over the whole space "
                        "(use 'space' to compare searches on one space; not with --cost latency)")
    g.add_argument("--cost", default="flops", metavar="{flops,params,latency}",
                   help="the front's cost axis: flops (default; analytic, fvcore's convention), params (of the "
                        "exported model) or latency (measured once per candidate on the run's device with the "
                        "torch threads in force, cached in latency.csv)")
    g.add_argument("--latency-batch", default=None, metavar="N",
                   help="--cost latency: images per timed forward pass (default 1)")
    g.add_argument("--latency-warmup", default=None, metavar="N",
                   help="--cost latency: untimed passes first, discarded (default 10)")
    g.add_argument("--latency-repeats", default=None, metavar="N",
                   help="--cost latency: timed passes; the latency is their median, the quartiles, minimum and "
                        "maximum are recorded as its spread (default 30)")


def cost_config_from_args(args: argparse.Namespace) -> CostConfig:
    """``--cost`` and the ``--latency-*`` options as a :class:`~stitchnas.search.cost.CostConfig`.

    Raises:
        ValueError: One line naming the option: an unknown axis, a count that is not a whole
            number in range, a latency option without ``--cost latency``, or ``--cost latency``
            with ``--hv-reference space``.
    """
    from stitchnas.search.cost import COST_AXES, CostConfig

    if args.cost not in COST_AXES:
        raise ValueError(f"--cost: expected one of {', '.join(COST_AXES)}, got {args.cost!r}")
    counts: dict[str, int] = {}
    for option, key, low in (("--latency-batch", "latency_batch", 1), ("--latency-warmup", "latency_warmup", 0),
                             ("--latency-repeats", "latency_repeats", 1)):
        text = getattr(args, key)
        if text is None:
            continue
        stripped = str(text).strip()
        if not (stripped.isascii() and stripped.isdigit()) or int(stripped) < low:
            raise ValueError(f"{option}: expected a whole number >= {low}, got {text!r}")
        if args.cost != "latency":
            raise ValueError(f"{option}: applies to --cost latency only (got --cost {args.cost})")
        counts[key] = int(stripped)
    if args.cost == "latency" and getattr(args, "hv_reference", None) == "space":
        raise ValueError("--hv-reference space: needs every configuration's cost without measuring it; "
                         "not with --cost latency (use --hv-reference evaluated)")
    return CostConfig(axis=args.cost, **counts)


def add_stitch_train_args(p: argparse.ArgumentParser, epochs: int, lr: float, warmup_epochs: int,
                          batch_size: int = 32) -> None:
    g = p.add_argument_group("training (AdamW or SGD, warm-up then cosine decay)")
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--batch-size", type=int, default=batch_size)
    g.add_argument("--lr", type=finite_float, default=lr, help="peak learning rate (SN-Net: of the stitching layers)")
    g.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"))
    g.add_argument("--weight-decay", type=finite_float, default=0.05)
    g.add_argument("--warmup-epochs", type=int, default=warmup_epochs)
    g.add_argument("--max-train-samples", type=int, default=None,
                   help="stratified subset of the training split (quick runs)")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    g.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on CUDA")
    add_augment_args(g)


def stitch_train_config_from_args(args: argparse.Namespace, **extra: Any) -> StitchTrainConfig:
    from stitching.trainer import StitchTrainConfig
    from stitchnas.core.training import resolve_device

    return StitchTrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lr_min=min(args.lr, 1e-5),
        optimizer=args.optimizer, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        seed=args.seed, device=str(resolve_device(args.device)), amp=not args.no_amp,
        augment=getattr(args, "augment", "auto"), **extra,
    )


def stitch_data_spec_from_args(args: argparse.Namespace) -> DataSpec:
    from dataclasses import replace

    return replace(data_spec_from_args(args), max_train_samples=args.max_train_samples)


@dataclass
class Backend:
    """What the command line's backend options resolve to.

    Attributes:
        evaluate: The evaluation backend (in process, or Ray Tune's ``evaluate``).
        session: Joins the Ray cluster once, before training, and checks that it can host a
            trial / the workers (so a too-small cluster fails the command at once).
        trainer: Pooling only: Ray Train's data-parallel supernet trainer (``--num-workers``).
        subset_size: A seeded random subset scored in process (``--search random`` locally).
    """

    evaluate: EvaluationBackend
    session: AbstractContextManager[Any]
    trainer: Any = None
    subset_size: int | None = None


def backend_from_args(args: argparse.Namespace, train_device: str = "cpu", local_random: bool = False) -> Backend:
    """The backend ``--backend/--search/--budget/--num-workers`` ask for.

    ``local_random``: the method can score a seeded random subset in process (pooling), so
    ``--search random`` works without Ray there.
    """
    from stitchnas.search.candidates import evaluate_in_process

    if args.budget is not None and args.budget < 1:
        raise ValueError(f"--budget: expected a number of evaluations >= 1, got {args.budget}")
    if args.backend == "local" and args.search in ("nsga2", "tpe"):
        raise ValueError(f"--search {args.search}: needs --backend ray (Optuna's samplers run through Ray Tune)")
    workers = getattr(args, "num_workers", 1)
    if workers < 1:
        raise ValueError(f"--num-workers: expected >= 1, got {workers}")
    if args.search == "random" and getattr(args, "candidates", None) is not None:
        raise ValueError("--candidates: not with --search random, which takes --budget")
    plugins: list[Any] = []
    result = Backend(evaluate_in_process, contextlib.nullcontext())
    if args.backend == "ray":
        from stitchnas.backends.tune import RayTuneStage, TuneOptions

        stage = RayTuneStage(TuneOptions(
            search=args.search, budget=args.budget, candidates_per_trial=args.candidates_per_trial,
            cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial, address=args.address,
            max_failures=args.max_failures, seed=args.seed))
        result.evaluate = stage.evaluate
        plugins.append(stage)
    elif args.search == "random":
        if not local_random:
            raise ValueError(f"--search {args.search}: this command evaluates every configuration in process; "
                             "use --backend ray for random, nsga2 or tpe")
        if args.budget is None:
            raise ValueError("--budget: --search random needs a number of evaluations")
        result.subset_size = args.budget
    if workers > 1:
        from stitchnas.backends.ray_train import DistributedOptions, RayTrainTrainer

        result.trainer = RayTrainTrainer(DistributedOptions(
            num_workers=workers, use_gpu=train_device.startswith("cuda"), address=args.address,
            max_failures=args.max_failures))
        plugins.append(result.trainer)
    if plugins:
        from stitchnas.backends.cluster import ray_session

        result.session = _preflighted(ray_session(args.address), plugins)
    return result


@contextlib.contextmanager
def _preflighted(session: AbstractContextManager[Any], plugins: Sequence[Any]) -> Iterator[None]:
    with session:
        for plugin in plugins:
            plugin.preflight()  # cluster too small: fail now, not after training
        yield


def print_front(result: SearchResult, hv_reference: str | None = None) -> None:
    """The Pareto front of a search or re-evaluation, one line per member, and where its files are."""
    summary = result.summary
    noun = result.method.noun if result.method is not None else "candidates"
    axis = summary.cost.get("axis", "flops")
    column = {"params": ("params", "{:>10}"), "latency": ("latency ms", "{:>10.4g}")}.get(axis)
    blend = summary.rank.get("by") == "blend"
    on = "" if axis == "flops" else f", by {axis}"
    if blend:
        on += f", ranked by the blend of val acc and FLOPs/params ranks (weight {summary.rank['weight']:g})"
    print(f"Pareto front ({len(summary.front)} of {len(result.rows)} {noun}{on}):")
    print(f"  {'id':>5} {'MFLOPs':>9}" + (f" {column[0]:>10}" if column else "") + f" {'val acc %':>9}"
          + (f" {'rank score':>10}" if blend else "") + "  label")
    for row in summary.front:
        cell = (" " + column[1].format(row[summary.cost_column])) if column else ""
        score = f" {row['rank_score']:10.3f}" if blend else ""
        print(f"  {row['candidate']:>5} {row['flops'] / 1e6:9.3f}{cell} {row['val_acc']:9.2f}{score}  {row['label']}")
    ref_cost, ref_acc = summary.reference
    option = f"; --hv-reference {hv_reference}" if hv_reference else ""
    where = {"flops": f"{ref_cost / 1e6:.3f} MFLOPs", "params": f"{ref_cost:.0f} parameters",
             "latency": f"{ref_cost:.4g} ms"}.get(axis, f"{ref_cost:g}")
    if axis == "latency":
        c = summary.cost
        option += (f"; latency: median of {c.get('repeats')} passes at batch {c.get('batch')} on {c.get('device')}, "
                   f"{c.get('threads')} thread(s)")
    y = f"rank score {ref_acc:g}" if blend else f"{ref_acc:g}% accuracy"
    print(f"hypervolume: {summary.hypervolume:.6g} (reference {where}, {y}{option})")
    extra = (", latency.csv" if axis == "latency" else "") + (", exports/" if result.exports else "")
    print(f"outputs: {Path(result.out_dir).resolve()} (results.csv, pareto.json, pareto.png{extra})")


def run_and_print(backend: Backend, run: Callable[[Backend], SearchResult], hv_reference: str | None = None) -> int:
    """Run a search or re-evaluation with ``backend`` (inside its Ray session) and print its front."""
    with backend.session:
        result = run(backend)
    print_front(result, hv_reference)
    return 0
