"""Device, mixed precision, per-epoch seeded randomness, in-memory batches and the epoch loop
:func:`fit`: what every training and scoring loop of the engine shares (supernet, mixture,
SN-Net, Learngene, Ray Train).

Every random choice of epoch ``e`` is drawn from generators seeded with ``(seed, e, stream)``,
so a run resumed from an epoch-boundary checkpoint replays exactly what an uninterrupted run does.
:func:`fit` owns the rest of a loop's scaffolding (resume, progress bar, checkpoint after every
epoch, ``on_step``, stopping at a non-finite loss); a trainer supplies only one epoch's body.

Loops take their batches from :func:`batches_for`: :class:`TensorBatches` for a split held in
memory, :class:`~stitchnas.core.streaming.StreamedBatches` for one streamed from disk (the same
batches either way). Training batches are augmented on the device, in batch (:func:`augment_batch`,
applied by :meth:`TensorBatches.iterate`): random crop with padding and horizontal flip for small images,
random-resized crop and flip for larger ones. Its parameters are drawn on the CPU from the epoch's
:data:`AUGMENT_STREAM` generator, so a resumed run replays them too. Scoring never augments.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal, Protocol, TypeAlias

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import ParamsT
from tqdm.auto import tqdm

from stitchnas.core import records
from stitchnas.core.checkpoints import EpochCheckpoint, Optimizers
from stitchnas.core.records import check_finite


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; an explicit 'cuda' without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r}: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available on this machine (use 'cpu' or 'auto')")
    return device


def autocast(device: torch.device, enabled: bool) -> AbstractContextManager[None]:
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def epoch_rng(seed: int, epoch: int, stream: int = 0) -> random.Random:
    """The Python generator for one epoch's path sampling (independent of resume points)."""
    return random.Random((seed * 1_000_003 + epoch) * 7 + stream)


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 7 + stream)


# ----------------------------------------------------------------------------- augmentation
#: A training recipe's augmentation. ``"auto"``: ``"crop_flip"`` for images of at most
#: :data:`AUTO_CROP_FLIP_MAX_SIZE` px a side, else ``"rrc_flip"`` (:func:`resolve_augment`).
#: ``"crop"`` / ``"rrc"`` are the same crops without the flip: what ``"auto"`` picks for data whose
#: labels a mirror image changes (digits: :attr:`ImageDataset.mirror_invariant`).
Augment = Literal["auto", "none", "crop_flip", "rrc_flip", "crop", "rrc"]
AUGMENTS: tuple[str, ...] = ("auto", "none", "crop_flip", "rrc_flip", "crop", "rrc")
AUTO_CROP_FLIP_MAX_SIZE = 64
#: The per-epoch generator stream augmentation draws from (:meth:`Epoch.generator`); 0 is the
#: batch order, 2 torch's global RNG (drop path) and the mixture's scoring batches, 3 the GM split.
AUGMENT_STREAM = 5
#: Where a recipe's ``augment`` is left out of its JSON: files written before augmentation existed
#: have no ``augment`` key, and those runs trained without augmentation, so a missing key means
#: ``"none"``, not today's default (see ``json_absent`` in :mod:`stitchnas.core.records`).
AUGMENT_ABSENT: Mapping[str, Any] = MappingProxyType({"augment": "none"})
RRC_SCALE = (0.08, 1.0)  # random-resized crop: area fraction, torchvision's and timm's default
RRC_RATIO = (3 / 4, 4 / 3)  # ... and aspect ratio (drawn log-uniformly)
RRC_TRIES = 10  # draws before the centre-crop fallback, as torchvision


def check_augment(kind: Any, what: str) -> None:
    """Raise one ValueError line unless ``kind`` is one of :data:`AUGMENTS`."""
    if kind not in AUGMENTS:
        raise ValueError(f"{what} 'augment': expected one of {AUGMENTS}, got {kind!r}")


def resolve_augment(kind: str, height: int, width: int, mirror_invariant: bool = True) -> str:
    """The augmentation ``kind`` means for ``height`` x ``width`` images (``"auto"`` resolved:
    padded crops for small images, random-resized crops for larger ones, flipped only where a
    mirror image keeps its label)."""
    check_augment(kind, "augmentation")
    if kind != "auto":
        return kind
    small = max(height, width) <= AUTO_CROP_FLIP_MAX_SIZE
    if mirror_invariant:
        return "crop_flip" if small else "rrc_flip"
    return "crop" if small else "rrc"


class ImageDataset(torch.utils.data.TensorDataset):
    """``(images, labels)`` tensors plus whether a mirror image keeps its label (False for
    digits: a mirrored 2 is no 2), which ``augment="auto"`` respects."""

    def __init__(self, *tensors: torch.Tensor, mirror_invariant: bool = True) -> None:
        super().__init__(*tensors)
        self.mirror_invariant = mirror_invariant


def crop_padding(height: int, width: int) -> int:
    """The zero padding of ``crop_flip``: an eighth of the image side, i.e. CIFAR's 4 px at 32 px
    (BMS trains with ``RandomCrop(32, padding=4)``); at least 1. A fixed 4 px would shift an 8 px
    image by half its width."""
    return max(1, round(min(height, width) / 8))


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor of drawn parameters on ``device``; to CUDA from pinned memory without
    blocking, so the host never waits for the GPU's queued work."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _crop_flip(x: torch.Tensor, generator: torch.Generator, allow_flip: bool = True) -> torch.Tensor:
    n, _, h, w = x.shape
    pad = crop_padding(h, w)
    offsets = _to_device(torch.randint(0, 2 * pad + 1, (n, 2), generator=generator), x.device)  # (top, left)
    flip = _to_device((torch.rand(n, generator=generator) < 0.5) & allow_flip, x.device)
    # zero padding: the data is normalised per channel, so zero is the mean colour (as torchvision's
    # RandomCrop(padding=4) on a normalised tensor; BMS pads before normalising, with black)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # (n, h)
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + offsets[:, 1:]  # (n, w), mirrored where flipped
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()  # (n, h, w, c) -> NCHW


def rrc_boxes(n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Random-resized-crop boxes ``(top, left, h, w)`` (float64, shape (n, 4), on the CPU),
    torchvision's ``RandomResizedCrop.get_params`` for ``n`` images at once: up to
    :data:`RRC_TRIES` draws of an area fraction in :data:`RRC_SCALE` and a log-uniform aspect
    ratio in :data:`RRC_RATIO`; the first that fits is placed uniformly, else the centre crop of
    the image clamped to the ratio range."""
    area = height * width
    scale = torch.empty(n, RRC_TRIES, dtype=torch.float64).uniform_(*RRC_SCALE, generator=generator)
    log_ratio = torch.empty(n, RRC_TRIES, dtype=torch.float64).uniform_(
        math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]), generator=generator)
    ratio = torch.exp(log_ratio)
    cw, ch = torch.round(torch.sqrt(area * scale * ratio)), torch.round(torch.sqrt(area * scale / ratio))
    fits = (cw > 0) & (cw <= width) & (ch > 0) & (ch <= height)
    first = fits.to(torch.int8).argmax(1, keepdim=True)  # the first try that fits (0 when none does)
    cw, ch, found = cw.gather(1, first)[:, 0], ch.gather(1, first)[:, 0], fits.any(1)
    in_ratio = width / height
    if in_ratio < RRC_RATIO[0]:
        fw, fh = width, round(width / RRC_RATIO[0])
    elif in_ratio > RRC_RATIO[1]:
        fw, fh = round(height * RRC_RATIO[1]), height
    else:
        fw, fh = width, height
    cw = torch.where(found, cw, torch.full_like(cw, fw))
    ch = torch.where(found, ch, torch.full_like(ch, fh))
    u = torch.rand(n, 2, dtype=torch.float64, generator=generator)
    top = torch.minimum(torch.floor(u[:, 0] * (height - ch + 1)), height - ch)
    left = torch.minimum(torch.floor(u[:, 1] * (width - cw + 1)), width - cw)
    top = torch.where(found, top, torch.full_like(top, (height - fh) // 2))
    left = torch.where(found, left, torch.full_like(left, (width - fw) // 2))
    return torch.stack([top, left, ch, cw], 1)


def _rrc_flip(x: torch.Tensor, generator: torch.Generator, allow_flip: bool = True) -> torch.Tensor:
    n, _, h, w = x.shape
    top, left, ch, cw = rrc_boxes(n, h, w, generator).unbind(1)
    sign = torch.where((torch.rand(n, generator=generator) < 0.5) & allow_flip, -1.0, 1.0).double()
    # one affine map per image from output to input coordinates (align_corners=False: pixel
    # centres), the crop box scaled to the whole output, x negated where flipped
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = sign * cw / w, (2 * left + cw) / w - 1
    theta[:, 1, 1], theta[:, 1, 2] = ch / h, (2 * top + ch) / h - 1
    grid = F.affine_grid(_to_device(theta.to(x.dtype), x.device), [n, x.shape[1], h, w], align_corners=False)
    # bilinear sampling of the box on the whole image: where torchvision resizes the cut-out
    # (clamping at its edges), edge pixels here blend with their neighbours outside the box
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator | None,
                  mirror_invariant: bool = True) -> torch.Tensor:
    """Augment the images ``x`` (N, C, H, W, on any device) per image, vectorised over the batch.

    Args:
        x: A normalised batch.
        kind: ``"none"`` (``x`` itself), ``"crop_flip"`` (zero-pad by :func:`crop_padding`, crop
            back to H x W at a uniform offset, flip horizontally with p = 0.5: CIFAR's recipe),
            ``"rrc_flip"`` (random-resized crop, :func:`rrc_boxes`, resized back to H x W
            bilinearly, then the flip: ImageNet's recipe) or ``"auto"`` (:func:`resolve_augment`).
        generator: A CPU generator every random draw comes from (never the global RNG), so
            a run with seeded generators is deterministic and a resume replays it; the small
            parameter tensors are moved to ``x``'s device: no host sync per image.

    Raises:
        ValueError: An unknown ``kind``, or augmenting without a generator.
    """
    kind = resolve_augment(kind, x.shape[-2], x.shape[-1], mirror_invariant)
    if kind == "none" or len(x) == 0:
        return x
    if generator is None:
        raise ValueError(f"augmentation {kind!r}: needs a seeded generator (e.g. epoch.generator(AUGMENT_STREAM))")
    flip = kind in ("crop_flip", "rrc_flip")  # the same draws either way: "crop" only drops the flip
    return (_crop_flip(x, generator, flip) if kind in ("crop_flip", "crop") else _rrc_flip(x, generator, flip))


def count_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Batches of ``batch_size`` in ``n`` items (``drop_last``: full ones only, unless there is
    not even one, as ``TensorBatches.iterate`` yields them)."""
    return n // batch_size if drop_last and n >= batch_size else math.ceil(n / batch_size)


class TensorBatches:
    """Mini-batches of an in-memory ``TensorDataset`` held on the training device.

    Indexing whole tensors is much cheaper than a ``DataLoader`` collating single samples; a
    training loop's batches are augmented there too (:func:`augment_batch`).
    """

    def __init__(self, dataset: torch.utils.data.TensorDataset, device: torch.device) -> None:
        self.x, self.y = (t.to(device) for t in dataset.tensors)
        self.mirror_invariant = getattr(dataset, "mirror_invariant", True)

    def __len__(self) -> int:
        return len(self.y)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return count_batches(len(self), batch_size, drop_last)

    def iterate(
        self, batch_size: int, generator: torch.Generator | None = None, drop_last: bool = False,
        augment: str = "none", aug_generator: torch.Generator | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches in order, or shuffled by ``generator``; each augmented (``augment``, drawn
        from ``aug_generator``; training loops only, scoring keeps the default ``"none"``)."""
        n = len(self)
        if self.x.dim() == 4:
            kind = resolve_augment(augment, self.x.shape[-2], self.x.shape[-1], self.mirror_invariant)
        else:  # not images: "auto" means none
            check_augment(augment, "augmentation")
            kind = "none" if augment == "auto" else augment
            if kind != "none":
                raise ValueError(f"augmentation {kind!r}: needs images (N, C, H, W), got shape {tuple(self.x.shape)}")
        if kind != "none" and aug_generator is None:
            raise ValueError(f"augmentation {kind!r}: needs a seeded generator (aug_generator)")
        order = torch.randperm(n, generator=generator).to(self.x.device) if generator is not None else None
        for b in range(self.num_batches(batch_size, drop_last)):
            idx = slice(b * batch_size, (b + 1) * batch_size)
            if order is None:
                x, y = self.x[idx], self.y[idx]
            else:
                sel = order[idx]
                x, y = self.x[sel], self.y[sel]
            yield augment_batch(x, kind, aug_generator), y


class Batches(Protocol):
    """What training and scoring loops iterate: :class:`TensorBatches` for an in-memory split,
    :class:`~stitchnas.core.streaming.StreamedBatches` for one streamed from disk (the same
    batches for the same generators)."""

    @property
    def mirror_invariant(self) -> bool:
        """Whether a mirror image keeps its label (``augment="auto"``)."""

    def __len__(self) -> int: ...

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int: ...

    def iterate(
        self, batch_size: int, generator: torch.Generator | None = None, drop_last: bool = False,
        augment: str = "none", aug_generator: torch.Generator | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class StreamSource(Protocol):
    """A split that is not held in memory (:class:`~stitchnas.core.streaming.StreamedImages`)."""

    @property
    def mirror_invariant(self) -> bool:
        """Whether a mirror image keeps its label (``augment="auto"``)."""

    def __len__(self) -> int: ...

    def batches(self, device: torch.device) -> Batches:
        """Its batches on ``device``."""

    def images(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """The normalised float32 images at ``indices``, on the CPU."""


#: A data split as loops take it: images and labels in memory, or streamed from disk.
ImageSplit: TypeAlias = "torch.utils.data.TensorDataset | StreamSource"


def batches_for(dataset: ImageSplit, device: torch.device) -> Batches:
    """The mini-batches of ``dataset`` on ``device``: :class:`TensorBatches` for an in-memory
    ``TensorDataset``, the streamed batches of a split kept on disk."""
    if isinstance(dataset, torch.utils.data.TensorDataset):
        return TensorBatches(dataset, device)
    return dataset.batches(device)


def split_images(dataset: ImageSplit, indices: torch.Tensor) -> torch.Tensor:
    """The (normalised) images of ``dataset`` at ``indices``, on the dataset's device (streamed: the CPU)."""
    if isinstance(dataset, torch.utils.data.TensorDataset):
        return dataset.tensors[0][indices]
    return dataset.images(indices)


@dataclass
class TrainHistory:
    """Per-epoch records of a run (``epochs[e]`` describes epoch ``e + 1``)."""

    epochs: list[dict[str, float]] = field(default_factory=list)




# ----------------------------------------------------------------------------- the SGD recipe
TRAIN_CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    """One training recipe (SGD + momentum, per-step cosine decay from ``lr`` to ``lr_min``):
    standalone networks and the supernet (:func:`supernet.training.train`), the mixture and the
    Ray Train workers. ``augment``: the training batches' augmentation (:func:`augment_batch`).

    Raises:
        ValueError: ``epochs`` or ``batch_size`` below 1, not ``0 <= lr_min <= lr, lr > 0``, or an
            unknown ``augment``.
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "cpu"
    amp: bool = True  # bf16 autocast, used only on CUDA
    augment: Augment = "auto"

    # files without "augment" were written by runs that did not augment: they decode as "none"
    json_absent: ClassVar[Mapping[str, Any]] = AUGMENT_ABSENT

    def __post_init__(self) -> None:
        check_finite(self, "train config")
        check_augment(self.augment, "train config")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"train config '{name}': expected >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.lr_min < 0 or self.lr_min > self.lr:
            raise ValueError(f"train config 'lr'/'lr_min': expected 0 <= lr_min <= lr, lr > 0, "
                             f"got {self.lr}/{self.lr_min}")

    def to_json(self) -> dict[str, Any]:
        return records.to_json(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "train config") -> TrainConfig:
        return records.from_json(cls, data, where)


def cosine_lr(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of (0-based) ``step`` of ``total_steps``: cosine from ``cfg.lr`` to ``cfg.lr_min``."""
    progress = min(1.0, step / max(1, total_steps))
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * progress))


def build_optimizer(params: ParamsT, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with ``cfg``'s momentum and weight decay over ``params`` (parameters or groups)."""
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def sgd_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    lr: float,
    amp: bool = False,
) -> tuple[float, int]:
    """One optimisation step on images ``x`` (N, C, H, W) and labels ``y`` (N,) with cross-entropy.

    Every group's learning rate is set to ``lr * group.get("lr_scale", 1)`` first.

    Returns:
        The batch's mean loss and the number of correct predictions.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    model.train()
    with autocast(x.device, amp):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), int((logits.argmax(1) == y).sum())


def train_checkpoint(path: str | Path | None, cfg: TrainConfig, what: str = "supernet") -> EpochCheckpoint:
    """The checkpoint format of :func:`supernet.training.train` (also what Ray Train's workers write)."""
    return EpochCheckpoint(Path(path) if path is not None else None,
                           {"version": TRAIN_CHECKPOINT_VERSION, "train_config": cfg.to_json()}, what)


# ----------------------------------------------------------------------------- the epoch loop
class TrainingDiverged(FloatingPointError):
    """A training step's loss, or a weight at an epoch's end, was not finite.

    The message is one line naming the epoch (1-based), the global step (1-based, as
    ``on_step`` counts) and the value, and where the last finite checkpoint is kept.

    Attributes:
        epoch: The epoch (1-based) that diverged.
        step: The global step (1-based) whose loss was not finite, or the last step of
            ``epoch`` when a weight was.
        value: The non-finite loss (NaN or +-inf); NaN for a non-finite weight.
        checkpoint_epoch: The epoch of the checkpoint left on disk (None: none was written).
    """

    def __init__(self, message: str, epoch: int, step: int, value: float, checkpoint_epoch: int | None) -> None:
        super().__init__(message)
        self.epoch, self.step, self.value, self.checkpoint_epoch = epoch, step, value, checkpoint_epoch

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled whole (e.g. from a Ray worker to the driver), not from ``args`` alone
        return type(self), (str(self), self.epoch, self.step, self.value, self.checkpoint_epoch)


class EpochStore(Protocol):
    """Where :func:`fit` restores from and writes its epoch-boundary state.

    :class:`~stitchnas.core.checkpoints.EpochCheckpoint` is one; a backend whose workers report
    their state elsewhere (Ray Train) supplies its own.
    """

    @property
    def path(self) -> Path | None:
        """The file the state is kept in (None: kept nowhere this process can name)."""

    def restore(self, model: nn.Module, optimizers: Optimizers, resume: bool) -> tuple[int, list[dict[str, Any]]]:
        """Load the saved state when resuming; returns (epochs done, their history), else (0, [])."""

    def save(self, epoch: int, model: nn.Module, optimizers: Optimizers, history: list[dict[str, Any]]) -> None:
        """Keep the state after ``epoch`` epochs (atomically: a crash leaves the previous one)."""


def record_postfix(record: dict[str, Any]) -> dict[str, str]:
    """The progress bar's default postfix: the epoch's mean loss and training accuracy (%),
    those of the two the record has."""
    shown = {"loss": f"{record['loss']:.3f}"} if "loss" in record else {}
    return {**shown, "acc": f"{record['train_acc']:.1f}"} if "train_acc" in record else shown


@dataclass(frozen=True)
class FitOptions:
    """How :func:`fit` runs the epochs of one training run.

    Attributes:
        epochs: Epochs of the whole run (a resumed run continues up to it).
        steps_per_epoch: Steps every epoch runs (global step = epoch * steps_per_epoch + i + 1).
        seed: Seed of the per-epoch generators (:meth:`Epoch.rng`, :meth:`Epoch.generator`).
        desc: The progress bar's label.
        progress: Show the per-epoch progress bar.
        resume: Continue from the store's saved state when there is one.
        save_start: Keep the starting state as the epoch-0 checkpoint when starting at epoch 0.
        torch_stream: When set, every epoch runs with torch's global RNG forked and seeded from
            ``epoch_generator(seed, epoch, torch_stream)`` (so drop path replays on resume).
        device: The training device (its CUDA generator is forked with ``torch_stream``).
        postfix: Maps an epoch's record to the progress bar's postfix.
    """

    epochs: int
    steps_per_epoch: int
    seed: int
    desc: str = "train"
    progress: bool = True
    resume: bool = False
    save_start: bool = False
    torch_stream: int | None = None
    device: torch.device | None = None
    postfix: Callable[[dict[str, Any]], dict[str, str]] = record_postfix


class Epoch:
    """One epoch as the per-epoch body of :func:`fit` sees it: its seeded generators and the
    ``step`` call that reports every step's loss.

    Attributes:
        index: The epoch, 0-based (the record's ``"epoch"`` is ``index + 1``).
        global_step: Steps finished since the run began (restored epochs included), i.e. the
            0-based index of the next step; :meth:`step` increments it.
    """

    def __init__(self, index: int, seed: int, global_step: int, on_step: Callable[[int], None] | None,
                 diverged: Callable[[int, int, float], TrainingDiverged]) -> None:
        self.index, self.seed, self.global_step = index, seed, global_step
        self._on_step, self._diverged = on_step, diverged

    def rng(self, stream: int = 0) -> random.Random:
        """This epoch's Python generator of ``stream`` (:func:`epoch_rng`)."""
        return epoch_rng(self.seed, self.index, stream)

    def generator(self, stream: int = 0) -> torch.Generator:
        """This epoch's torch generator of ``stream`` (:func:`epoch_generator`)."""
        return epoch_generator(self.seed, self.index, stream)

    def step(self, loss: float) -> int:
        """Report one finished step's loss; returns the global step (1-based).

        Raises:
            TrainingDiverged: ``loss`` is NaN or infinite (``on_step`` is not called).
        """
        self.global_step += 1
        if not math.isfinite(loss):
            raise self._diverged(self.index + 1, self.global_step, float(loss))
        if self._on_step is not None:
            self._on_step(self.global_step)
        return self.global_step


def _nonfinite_parameter(model: nn.Module) -> str | None:
    """The name of the first parameter holding a NaN or infinity (None: all finite)."""
    named = list(model.named_parameters())
    finite = [torch.isfinite(p.detach()).all() for _, p in named]
    if not finite or bool(torch.stack(finite).all()):  # one device sync when all is well
        return None
    return next(name for (name, _), ok in zip(named, finite) if not bool(ok))


def fit(
    run_epoch: Callable[[Epoch], dict[str, Any]],
    model: nn.Module,
    optimizers: Optimizers,
    store: EpochStore,
    options: FitOptions,
    on_step: Callable[[int], None] | None = None,
) -> TrainHistory:
    """The epoch loop every trainer of the engine shares.

    Restores ``model`` and ``optimizers`` from ``store`` (when ``options.resume``), keeps the
    epoch-0 state if ``options.save_start``, then for every remaining epoch calls
    ``run_epoch(epoch)``, appends the record it returns to the history, checks that every
    parameter is finite and saves the state after the epoch to ``store``. The body draws its
    randomness from ``epoch.rng(stream)`` / ``epoch.generator(stream)`` and calls
    ``epoch.step(loss)`` after every step, which checks the loss and calls ``on_step``.

    Args:
        run_epoch: Trains one epoch; returns its record (a JSON-able dict; ``"epoch"`` should
            be ``epoch.index + 1``).
        model: The module whose ``state_dict`` the store saves (and whose parameters are checked).
        optimizers: Its optimizer, or several (a mixture's), saved with it.
        store: The checkpoint (e.g. :class:`~stitchnas.core.checkpoints.EpochCheckpoint`).
        options: Epochs, steps per epoch, seed, resume and progress settings.
        on_step: Called with the global step (1-based, consecutive over epochs and resumes)
            after every step; tests interrupt runs with it.

    Returns:
        The history of every epoch, restored ones included.

    Raises:
        TrainingDiverged: A step's loss or, at an epoch's end, a parameter is not finite; the
            non-finite state is not saved, so the store keeps the last finite epoch.
        ValueError: The store's checkpoint was written for a different recipe.
    """
    history = TrainHistory()
    start, history.epochs = store.restore(model, optimizers, options.resume)
    kept: int | None = start if start > 0 else None
    if options.save_start and start == 0:
        store.save(0, model, optimizers, [])
        kept = 0

    def diverged(epoch: int, step: int, value: float, what: str | None = None) -> TrainingDiverged:
        if store.path is None:
            where = "this run keeps no checkpoint"
        elif kept is None:
            where = f"no checkpoint was written to {store.path}"
        else:
            where = f"the last finite checkpoint (epoch {kept}) is kept at {store.path}"
        found = what or f"loss {value}"
        return TrainingDiverged(f"training diverged: {found} at epoch {epoch}, step {step}; {where}",
                                epoch, step, value, kept)

    bar = tqdm(range(start, options.epochs), desc=options.desc, unit="epoch", disable=not options.progress,
               initial=start, total=options.epochs, leave=False)
    for index in bar:
        epoch = Epoch(index, options.seed, index * options.steps_per_epoch, on_step, diverged)
        if options.torch_stream is None:
            record = run_epoch(epoch)
        else:
            device = options.device
            cuda_devices = [device.index or 0] if device is not None and device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda_devices):
                # e.g. drop path draws from torch's global RNG: seeded per epoch, a resume replays it
                torch.manual_seed(epoch.generator(options.torch_stream).initial_seed())
                record = run_epoch(epoch)
        bad = _nonfinite_parameter(model)
        if bad is not None:
            raise diverged(index + 1, epoch.global_step, math.nan, f"non-finite weights ({bad!r})")
        history.epochs.append(record)
        bar.set_postfix(**options.postfix(record))
        store.save(index + 1, model, optimizers, history.epochs)
        kept = index + 1
    return history
