"""Data-parallel supernet training on Ray Train's ``TorchTrainer`` (gloo on CPU, NCCL on GPU).

With ``N`` workers the result equals one process training on the same global batch
(:func:`supernet.training.train`), up to floating-point rounding:

* every worker draws the batch order, the augmentation and the SPOS path from the same seeded
  generators (:func:`~stitchnas.core.training.epoch_generator`,
  :func:`~stitchnas.core.training.epoch_rng`), so all workers run the same path at every step
  and augment the global batch the same way;
* worker ``r`` takes rows ``[r * b / N, (r + 1) * b / N)`` of each global batch of ``b`` rows
  (``b`` must divide by ``N``);
* DDP averages the gradients, so the step is the full-batch step; the learning rate
  (:func:`~stitchnas.core.training.cosine_lr`), optimizer and step
  (:func:`~stitchnas.core.training.sgd_step`) are the single-process trainer's own;
* BatchNorm normalises with statistics of the global batch: :class:`GlobalBatchNorm2d`
  all-reduces them with a differentiable ``all_reduce`` (torch's ``SyncBatchNorm`` refuses
  CPU tensors). Without it each worker would normalise with its shard's statistics and the
  result would differ from the one-process run.

Rank 0 reports a checkpoint per epoch, in the single-process trainer's format; the driver
copies the last one to the run's ``supernet.pt``, so ``--resume`` and ``stitchnas export``
work as after an in-process run. On a multi-node cluster the run folder must be on storage
every node sees (Ray Train writes its checkpoints under ``<run>/ray_train``).

Each worker's epochs run in :func:`stitchnas.core.training.fit` (:func:`worker_epochs`), so a
non-finite loss stops the run with :class:`~stitchnas.core.training.TrainingDiverged`, which
the driver re-raises as is. The supernet travels to the workers pickled whole: this backend
imports nothing of the model code (``supernet``, ``stitching``) nor of the pipelines.
"""

from __future__ import annotations

import copy
import logging
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import nn

from stitchnas.core import threads
from stitchnas.core.io import atomic_torch_save, load_checkpoint
from stitchnas.core.training import (
    AUGMENT_STREAM,
    Batches,
    Epoch,
    FitOptions,
    ImageDataset,
    TrainConfig,
    TrainHistory,
    TrainingDiverged,
    batches_for,
    build_optimizer,
    cosine_lr,
    fit,
    sgd_step,
    train_checkpoint,
)

log = logging.getLogger(__name__)

RAY_TRAIN_DIR = "ray_train"
CHECKPOINT_NAME = "supernet.pt"


class SupernetRun(Protocol):
    """What :class:`RayTrainTrainer` reads of the run it trains (the pooling search passes its
    training context).

    Attributes:
        supernet: The supernet (with ``sample_active(rng)``); left holding the trained weights.
        data: Its splits: ``search_train`` (a ``TensorDataset`` of images (N, C, H, W), labels (N,), or a
            split streamed from disk, shipped to the workers as its file paths).
        cfg: The search config: ``train`` (a :class:`~stitchnas.core.training.TrainConfig`) and
            ``mixture`` (a mixture is refused: it trains in process).
        checkpoint: The run's checkpoint file (:func:`~supernet.training.train`'s format).
        out_dir: The run folder (Ray Train keeps its epoch checkpoints under ``ray_train/``).
        resume: Continue from ``checkpoint`` when it exists.
        progress: Show progress (unused: the workers train remotely).
        on_step: Called after every step in process (unused: the workers train remotely).
    """

    @property
    def supernet(self) -> nn.Module: ...

    @property
    def data(self) -> Any: ...

    @property
    def cfg(self) -> Any: ...

    @property
    def checkpoint(self) -> Path: ...

    @property
    def out_dir(self) -> Path: ...

    @property
    def resume(self) -> bool: ...

    @property
    def progress(self) -> bool: ...

    @property
    def on_step(self) -> Callable[[int], None] | None: ...


class _PathSampler(Protocol):
    """The part of a pooling supernet :func:`worker_epochs` calls besides ``nn.Module``'s."""

    def sample_active(self, rng: random.Random) -> object: ...


class _AllReduceSum(torch.autograd.Function):
    """Sum over workers whose backward sums the gradients over workers too (each worker's loss
    depends on every worker's activations through the shared statistics)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = grad.clone()
        dist.all_reduce(out)
        return out


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(x)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training-mode statistics cover the batch of every worker.

    Two differentiable all-reduces (sum and count, then the squared deviations) give the exact
    mean and biased variance of the global batch; running statistics are updated as
    ``BatchNorm2d`` does (unbiased variance). Outside a multi-worker process group, or in eval
    mode, it is a plain ``BatchNorm2d``. Parameters and buffers keep their names.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        channels = x.shape[1]
        count = torch.full((1,), x.numel() / channels, dtype=x.dtype, device=x.device)
        totals = all_reduce_sum(torch.cat([x.sum(dim=(0, 2, 3)), count]))
        n = totals[-1]
        mean = totals[:channels] / n
        centred = x - mean.view(1, -1, 1, 1)
        var = all_reduce_sum((centred * centred).sum(dim=(0, 2, 3))) / n
        if self.track_running_stats and self.num_batches_tracked is not None \
                and self.running_mean is not None and self.running_var is not None:  # all three with tracking
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y


def convert_global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` under ``module`` by a :class:`GlobalBatchNorm2d`
    carrying the same parameters, buffers and mode (in place; returns ``module``)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_global_batchnorm(child)
    return module


@dataclass(frozen=True)
class DistributedOptions:
    """How Ray Train runs the supernet training.

    Attributes:
        num_workers: Data-parallel workers (the global batch must divide by it).
        use_gpu: One GPU per worker (NCCL) instead of CPUs (gloo).
        cpus_per_worker: CPUs reserved per worker (also its torch threads).
        address: ``None`` starts a local Ray on 127.0.0.1; ``"auto"`` or ``host:port`` joins one.
        num_cpus: CPUs of the local Ray started when ``address`` is None.
        max_failures: Worker-group restarts (from the last epoch checkpoint) before giving up.
    """

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    address: str | None = None
    num_cpus: int | None = None
    max_failures: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.num_workers, bool) or self.num_workers < 1:
            raise ValueError(f"num_workers: expected >= 1, got {self.num_workers}")
        if not self.cpus_per_worker > 0:
            raise ValueError(f"cpus_per_worker: expected > 0, got {self.cpus_per_worker}")
        if self.max_failures < 0:
            raise ValueError(f"max_failures: expected >= 0, got {self.max_failures}")


def check_batch(cfg: TrainConfig, num_workers: int) -> None:
    if cfg.batch_size % num_workers:
        raise ValueError(f"--batch-size {cfg.batch_size}: must be divisible by --num-workers {num_workers} "
                         "(each worker takes an equal shard of the global batch)")


def check_cluster(options: DistributedOptions, nodes: list[dict[str, float]]) -> None:
    """One-line ``ValueError`` when the cluster cannot host the worker group."""
    cpus = sum(float(n.get("CPU", 0)) for n in nodes)
    gpus = sum(float(n.get("GPU", 0)) for n in nodes)
    need = options.num_workers * options.cpus_per_worker
    if need > cpus:
        raise ValueError(f"--num-workers {options.num_workers}: needs {need:g} CPUs but the Ray cluster has {cpus:g}")
    if options.use_gpu and options.num_workers > gpus:
        raise ValueError(f"--num-workers {options.num_workers}: one GPU per worker but the Ray cluster has {gpus:g}")


def _initial_state(ctx: SupernetRun) -> dict[str, Any]:
    """The state to start from: the run's checkpoint when resuming, else the fresh supernet."""
    checkpoint = train_checkpoint(ctx.checkpoint, ctx.cfg.train)
    if ctx.resume and ctx.checkpoint.exists():
        state = load_checkpoint(ctx.checkpoint)
        checkpoint.check(state)
        return state
    return {**checkpoint.recipe, "epoch": 0, "model": ctx.supernet.state_dict(), "optimizer": None, "history": []}


def _load_ray_checkpoint(checkpoint: Any) -> dict[str, Any]:
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / CHECKPOINT_NAME, map_location="cpu", weights_only=True)


#: ``report(epoch, record, state)``: hands one epoch's record (every worker) and checkpoint
#: state (rank 0; None elsewhere) to Ray Train.
Report = Callable[[int, dict[str, Any], "dict[str, Any] | None"], None]


class _ReportedState:
    """The :class:`~stitchnas.core.training.EpochStore` of one worker: it starts from the state
    the driver sent (already loaded) and reports every epoch's state through ``report``."""

    def __init__(self, state: dict[str, Any], cfg: TrainConfig, rank: int, report: Report,
                 path: Path | None) -> None:
        self.state, self.cfg, self.rank, self.report, self.path = state, cfg, rank, report, path

    def restore(self, model: nn.Module, optimizers: Any, resume: bool) -> tuple[int, list[dict[str, Any]]]:
        return int(self.state["epoch"]), list(self.state["history"])

    def save(self, epoch: int, model: nn.Module, optimizers: Any, history: list[dict[str, Any]]) -> None:
        state = None
        if self.rank == 0:
            state = {**train_checkpoint(None, self.cfg).recipe, "epoch": epoch, "model": model.state_dict(),
                     "optimizer": optimizers.state_dict(), "history": history}
        self.report(epoch, history[-1], state)


def worker_epochs(
    supernet: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    cfg: TrainConfig,
    state: dict[str, Any],
    report: Report,
    rank: int = 0,
    world: int = 1,
    storage: Path | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainHistory:
    """One worker's epochs from ``state["epoch"]`` on (needs no Ray: :func:`train_worker`
    passes Ray Train's report; tests pass their own).

    Every epoch runs in :func:`~stitchnas.core.training.fit`: the path is drawn from the epoch's
    generator (the same on every worker), the worker trains on rows
    ``[rank * b / world, (rank + 1) * b / world)`` of each global batch of ``b = cfg.batch_size``
    and the epoch's loss and accuracy are summed over workers.

    Args:
        supernet: The supernet (weights and ``state`` already loaded); its state is reported.
        model: What the steps run: ``supernet``, or its ``DistributedDataParallel`` wrapper.
        optimizer: The optimizer over ``model``'s parameters (state already loaded).
        batches: The whole training set on this worker's device.
        cfg: The recipe.
        state: The starting point: ``epoch`` (epochs done) and ``history``.
        report: Called after every epoch (see :data:`Report`).
        rank: This worker's rank; world: the number of workers.
        storage: Where the reported checkpoints are kept (named in a divergence message).
        on_step: Called with the global step after every step.

    Raises:
        TrainingDiverged: A step's loss is not finite on this worker (nothing is reported for
            that epoch). With :class:`GlobalBatchNorm2d`, a NaN on any worker reaches every
            worker's loss in the same step.
    """
    import torch.distributed as dist

    steps_per_epoch = batches.num_batches(cfg.batch_size, drop_last=True)
    total_steps = cfg.epochs * steps_per_epoch
    shard = cfg.batch_size // world
    sampler = cast(_PathSampler, supernet)  # a pooling supernet (SupernetRun.supernet: with sample_active)

    def run_epoch(epoch: Epoch) -> dict[str, Any]:
        rng = epoch.rng()
        sums = torch.zeros(3, dtype=torch.float64)
        # every worker augments the whole global batch from the same generator, then takes its
        # rows: the images a single process would train on
        batch_iter = batches.iterate(cfg.batch_size, epoch.generator(), drop_last=True, augment=cfg.augment,
                                     aug_generator=epoch.generator(AUGMENT_STREAM))
        for i, (x, y) in enumerate(batch_iter):
            sampler.sample_active(rng)  # the same path on every worker
            xs, ys = x[rank * shard:(rank + 1) * shard], y[rank * shard:(rank + 1) * shard]
            lr = cosine_lr(cfg, epoch.index * steps_per_epoch + i, total_steps)
            loss, hits = sgd_step(model, xs, ys, optimizer, lr, cfg.amp)
            sums += torch.tensor([loss * len(ys), hits, len(ys)], dtype=torch.float64)
            epoch.step(loss)
        if world > 1:
            dist.all_reduce(sums)
        seen = max(1.0, float(sums[2]))
        return {"epoch": epoch.index + 1, "loss": float(sums[0]) / seen, "train_acc": 100.0 * float(sums[1]) / seen}

    store = _ReportedState(state, cfg, rank, report, storage)
    return fit(run_epoch, supernet, optimizer, store, FitOptions(cfg.epochs, steps_per_epoch, cfg.seed, progress=False),
               on_step)


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker loop (see the module docstring for why it matches one process)."""
    import ray
    import ray.train
    import ray.train.torch
    from torch.nn.parallel import DistributedDataParallel

    payload = ray.get(config["payload"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    threads.apply(threads.choose_threads())  # the CPUs Ray gave this worker (cpus_per_worker)
    device = ray.train.torch.get_device() if config["use_gpu"] else torch.device("cpu")
    cfg = TrainConfig.from_json(payload["train_config"], "ray train payload 'train_config'")
    state = payload["state"]
    restored = ray.train.get_checkpoint()
    if restored is not None:  # a restarted worker group continues from its last epoch
        candidate = _load_ray_checkpoint(restored)
        if int(candidate["epoch"]) > int(state["epoch"]):
            state = candidate
    supernet = payload["supernet"]  # the driver's supernet, shipped whole
    supernet.load_state_dict(state["model"])
    if world > 1:
        convert_global_batchnorm(supernet)
    supernet.to(device)
    model: nn.Module = supernet
    if world > 1:
        # Buffers need no per-step broadcast: GlobalBatchNorm2d keeps them equal on every worker.
        model = DistributedDataParallel(supernet, device_ids=[device.index] if device.type == "cuda" else None,
                                        forward_sync_buffers=False)
    optimizer = build_optimizer(model.parameters(), cfg)
    if state.get("optimizer"):
        optimizer.load_state_dict(state["optimizer"])
    data = payload["data"]  # tensors, or a split streamed from disk (its file paths)
    split = ImageDataset(*data, mirror_invariant=payload.get("mirror_invariant", True)) if isinstance(data, tuple) \
        else data
    batches = batches_for(split, device)

    def report(epoch: int, record: dict[str, Any], checkpoint_state: dict[str, Any] | None) -> None:
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if checkpoint_state is not None:
                torch.save(checkpoint_state, Path(folder) / CHECKPOINT_NAME)
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(record, checkpoint=checkpoint, checkpoint_dir_name=f"epoch_{epoch:04d}")

    worker_epochs(supernet, model, optimizer, batches, cfg, state, report, rank, world, Path(payload["storage"]))


def diverged_cause(error: BaseException) -> TrainingDiverged | None:
    """The :class:`~stitchnas.core.training.TrainingDiverged` a worker raised, found in the
    chain of errors Ray Train wraps it in (None when the failure was something else)."""
    seen: set[int] = set()
    todo: list[Any] = [error]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)  # a RayTaskError's user exception
        if isinstance(cause, TrainingDiverged):
            return cause
        if isinstance(e, TrainingDiverged):
            return e
        failures = getattr(e, "worker_failures", None)
        todo.extend([cause, e.__cause__, e.__context__, getattr(e, "controller_failure", None),
                     *(failures.values() if isinstance(failures, dict) else ())])
    return None


class RayTrainTrainer:
    """Supernet trainer on Ray Train; pass it as ``run_pooling_search(..., trainer=...)``."""

    def __init__(self, options: DistributedOptions) -> None:
        self.options = options

    def preflight(self) -> None:
        """Fail fast if the connected cluster cannot host the worker group."""
        from stitchnas.backends.cluster import cluster_nodes

        check_cluster(self.options, cluster_nodes())

    def __call__(self, ctx: SupernetRun) -> None:
        """Train ``ctx.supernet`` for ``ctx.cfg.train.epochs`` on the worker group (from
        ``ctx.checkpoint`` when resuming); write the result there and into ``ctx.supernet``.

        Raises:
            ValueError: A mixture, a batch not divisible by the workers, a cluster too small,
                or a checkpoint of a different recipe.
            TrainingDiverged: A worker's loss was not finite (``ctx.checkpoint`` is unchanged;
                Ray Train keeps the finite epochs' checkpoints under ``<out_dir>/ray_train``).
        """
        from stitchnas.backends.cluster import cluster_nodes, ray_session

        opts, cfg = self.options, ctx.cfg.train
        if getattr(ctx.cfg, "mixture", None) is not None:
            raise ValueError("--num-workers: Ray Train trains one supernet; a supernet mixture (BMS) trains in process")
        check_batch(cfg, opts.num_workers)
        state = _initial_state(ctx)
        if int(state["epoch"]) >= cfg.epochs:
            ctx.supernet.load_state_dict(state["model"])
            log.info("supernet already trained for %d epochs (%s)", cfg.epochs, ctx.checkpoint)
            return
        with ray_session(opts.address, opts.num_cpus):
            check_cluster(opts, cluster_nodes())
            final = self._fit(ctx, state)
        ctx.supernet.load_state_dict(final["model"])
        atomic_torch_save(final, ctx.checkpoint)

    def _fit(self, ctx: SupernetRun, state: dict[str, Any]) -> dict[str, Any]:
        import ray
        import ray.train
        from ray.train.torch import TorchTrainer

        opts = self.options
        storage = (ctx.out_dir / RAY_TRAIN_DIR).resolve()
        tensors = getattr(ctx.data.search_train, "tensors", None)  # None: streamed from disk
        payload = ray.put({
            "supernet": copy.deepcopy(ctx.supernet).cpu(),  # pickled by class reference: no import here
            "train_config": ctx.cfg.train.to_json(),
            "state": state,
            "data": ctx.data.search_train if tensors is None else tuple(t.detach().clone() for t in tensors),
            # "auto" augmentation must resolve on the workers as in this process (no flip for digits)
            "mirror_invariant": bool(getattr(ctx.data.search_train, "mirror_invariant", True)),
            "storage": str(storage),
        })
        resources = {"CPU": opts.cpus_per_worker, **({"GPU": 1} if opts.use_gpu else {})}
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={"payload": payload, "use_gpu": opts.use_gpu},
            scaling_config=ray.train.ScalingConfig(num_workers=opts.num_workers, use_gpu=opts.use_gpu,
                                                   resources_per_worker=resources),
            run_config=ray.train.RunConfig(name="supernet", storage_path=str(storage),
                                           failure_config=ray.train.FailureConfig(max_failures=opts.max_failures)),
        )
        log.info("training the supernet on %d Ray Train workers", opts.num_workers)
        try:
            result = trainer.fit()
        except Exception as error:
            diverged = diverged_cause(error)
            if diverged is None:
                raise
            raise diverged from error  # one line, not Ray's wrapped traceback
        if result.checkpoint is None:
            raise RuntimeError("Ray Train finished without a checkpoint")
        return _load_ray_checkpoint(result.checkpoint)
