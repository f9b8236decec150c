"""Image splits kept on disk and streamed to the training device batch by batch.

A :class:`StreamedImages` is what a data set too large for memory becomes instead of a
``TensorDataset``: the items (for an image folder, the file paths), their labels, a picklable
``read`` that turns one item into ``uint8 (C, H, W)`` pixels, and the per-channel ``mean``/``std``
to normalise with. It pickles as that plain data (paths, not pixels), so evaluators ship it to
Ray trials whole.

:class:`StreamedBatches` (what :func:`stitchnas.core.training.batches_for` gives for it) reads
the batches through a ``torch.utils.data.DataLoader`` with ``workers`` worker processes
(``persistent_workers`` when there are any, pinned memory on CUDA): each batch is split into one
chunk per worker, the chunks are decoded in parallel and sent as ``uint8`` (a quarter of the
float32 bytes), moved to the device without blocking and normalised there. The order of the
batches is the one :class:`~stitchnas.core.training.TensorBatches` gives for the same generator
(``torch.randperm(n, generator=generator)``), training batches are augmented by the same
:func:`~stitchnas.core.training.augment_batch` on the device, and normalisation looks each
``uint8`` value up in a per-channel table computed with the in-memory path's own float32 ops
(``x / 255``, ``- mean``, ``/ std``), so a streamed split and the same split held in memory give
equal tensors, batch for batch, on any device.

An item that fails to read while streaming raises :class:`UnreadableImage`, one line naming it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from stitchnas.core.training import augment_batch, count_batches, resolve_augment

__all__ = ["StreamedBatches", "StreamedImages", "UnreadableImage"]


class UnreadableImage(OSError):
    """An item of a streamed split could not be read (e.g. a file truncated after the data set
    was loaded); the message is one line naming it."""


@dataclass(frozen=True, eq=False)
class StreamedImages(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """An image split read from disk on demand (see the module docstring).

    Attributes:
        items: ``(N,)`` what ``read`` takes, one per image (image folders: paths as bytes).
        labels: ``(N,)`` int64 class labels.
        read: Picklable; one item to ``uint8`` pixels of ``image_shape``. It runs in
            ``DataLoader`` worker processes; what it raises becomes :class:`UnreadableImage`.
        image_shape: ``(C, H, W)`` of every image.
        workers: ``DataLoader`` worker processes (0: read in this process).
        mean, std: Per-channel normalisation in [0, 1] pixel units (None: pixels / 255 as is).
        mirror_invariant: Whether a mirror image keeps its label (``augment="auto"``).
    """

    items: np.ndarray
    labels: np.ndarray
    read: Callable[[Any], np.ndarray]
    image_shape: tuple[int, int, int]
    workers: int = 0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    mirror_invariant: bool = True

    def __post_init__(self) -> None:
        if self.items.ndim != 1 or self.labels.shape != self.items.shape:
            raise ValueError(f"StreamedImages: expected (N,) items and labels, got {self.items.shape} "
                             f"and {self.labels.shape}")
        if (self.mean is None) != (self.std is None) or \
                (self.mean is not None and len(self.mean) != self.image_shape[0]):
            raise ValueError(f"StreamedImages: mean/std must be both None or {self.image_shape[0]} values each")
        if self.workers < 0:
            raise ValueError(f"StreamedImages: workers must be >= 0, got {self.workers}")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One normalised float32 image and its label (the batch paths never call this)."""
        return self.images([index])[0], torch.tensor(int(self.labels[index]))

    def subset(self, indices: Sequence[int] | np.ndarray) -> StreamedImages:
        """The images at ``indices``, in that order (a new split; no file is read)."""
        take = np.asarray(indices, dtype=np.int64)
        return replace(self, items=self.items[take], labels=self.labels[take])

    def normalised(self, mean: Sequence[float], std: Sequence[float]) -> StreamedImages:
        """This split, normalised with ``mean``/``std`` (per channel, in [0, 1] pixel units)."""
        return replace(self, mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))

    def lookup_table(self) -> torch.Tensor:
        """``(C, 256)`` float32: the normalised value of every ``uint8`` pixel value per channel,
        by the in-memory path's ops (``float(v) / 255``, then ``- mean``, then ``/ std``)."""
        pixels = torch.arange(256, dtype=torch.uint8).float().div_(255.0).view(1, 256)
        pixels = pixels.expand(self.image_shape[0], 256)
        if self.mean is None or self.std is None:
            return pixels.contiguous()
        mean = torch.tensor(self.mean, dtype=torch.float64).float().view(-1, 1)
        std = torch.tensor(self.std, dtype=torch.float64).float().view(-1, 1)
        return ((pixels - mean) / std).contiguous()

    def images(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """The normalised float32 images at ``indices`` on the CPU (read in this process)."""
        chunk = _read_chunk(self, [int(i) for i in indices])
        return _normalise(_checked(chunk), self.lookup_table())

    def pixels(self, chunk_size: int = 64) -> Iterator[torch.Tensor]:
        """Every image in order as ``uint8`` chunks of ``chunk_size``, read by the workers."""
        plan = [list(range(i, min(i + chunk_size, len(self)))) for i in range(0, len(self), chunk_size)]
        for chunk in _loader(self, _Plan(plan), pin=False, persistent=False):
            yield _checked(chunk)

    def batches(self, device: torch.device) -> StreamedBatches:
        """This split's batches on ``device``; one loader (and its workers) per split and device,
        kept while the split lives."""
        cache: dict[torch.device, StreamedBatches] = self.__dict__.setdefault("_batches", {})
        if device not in cache:
            cache[device] = StreamedBatches(self, device)
        return cache[device]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_batches", None)  # loaders and their workers belong to this process
        return state

_Chunk = tuple[torch.Tensor | None, str]  # (uint8 images, "") or (None, why an item failed)


def _read_chunk(images: StreamedImages, indices: list[int]) -> _Chunk:
    """Runs in a worker: the items at ``indices`` as one ``uint8 (B, C, H, W)`` tensor."""
    out = np.empty((len(indices), *images.image_shape), dtype=np.uint8)
    for j, i in enumerate(indices):
        try:
            out[j] = images.read(images.items[i])
        except Exception as exc:  # reported in the main process, one line
            return None, " ".join(str(exc).split()) or type(exc).__name__
    return torch.from_numpy(out), ""


def _checked(chunk: _Chunk) -> torch.Tensor:
    images, error = chunk
    if images is None:
        raise UnreadableImage(f"{error} (found while streaming: the check when the data set was loaded "
                              "reads file headers only; remove or replace the file)")
    return images


def _normalise(pixels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``uint8 (B, C, H, W)`` to float32 by ``table`` (``(C, 256)``, on the same device)."""
    channels = table.shape[0]
    offsets = torch.arange(channels, device=pixels.device).mul_(256).view(1, channels, 1, 1)
    return table.view(-1).take(pixels.long().add_(offsets))


class _ChunkReader(Dataset[_Chunk]):
    """What the ``DataLoader`` indexes: a list of indices (one chunk) to decoded pixels."""

    def __init__(self, images: StreamedImages) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, indices: list[int]) -> _Chunk:
        return _read_chunk(self.images, indices)


class _Plan(Sampler[list[int]]):
    """The chunks of one pass, in order; a persistent loader reads the current plan at every
    ``iter(loader)``."""

    def __init__(self, chunks: list[list[int]] | None = None) -> None:
        self.chunks = chunks or []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)


def _as_is(chunk: Any) -> Any:
    return chunk  # one chunk, as the worker made it (module level: worker processes pickle it)


def _loader(images: StreamedImages, plan: _Plan, pin: bool, persistent: bool) -> DataLoader[_Chunk]:
    return DataLoader(
        _ChunkReader(images), batch_size=None, sampler=plan, num_workers=images.workers, collate_fn=_as_is,
        pin_memory=pin, persistent_workers=persistent and images.workers > 0,
        # its own generator: iterating must not draw from torch's global RNG (a streamed and an
        # in-memory run draw the same random numbers)
        generator=torch.Generator().manual_seed(0))


class StreamedBatches:
    """Mini-batches of a :class:`StreamedImages` on ``device``, as
    :class:`~stitchnas.core.training.TensorBatches` gives them for an in-memory split (the same
    order for the same generator, augmented on the device)."""

    def __init__(self, images: StreamedImages, device: torch.device) -> None:
        self.images, self.device = images, device
        self.mirror_invariant = images.mirror_invariant
        self.y = torch.tensor(images.labels, dtype=torch.int64).to(device)  # a copy: Ray ships read-only arrays
        self._table = images.lookup_table().to(device)
        self._plan = _Plan()
        self._pin = device.type == "cuda"
        self._loader = _loader(images, self._plan, self._pin, persistent=True)
        self._busy = threading.Lock()  # held while a pass reads through the persistent loader

    def __len__(self) -> int:
        return len(self.y)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return count_batches(len(self), batch_size, drop_last)

    def iterate(
        self, batch_size: int, generator: torch.Generator | None = None, drop_last: bool = False,
        augment: str = "none", aug_generator: torch.Generator | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """As :meth:`TensorBatches.iterate <stitchnas.core.training.TensorBatches.iterate>`."""
        _, height, width = self.images.image_shape
        kind = resolve_augment(augment, height, width, self.mirror_invariant)
        if kind != "none" and aug_generator is None:
            raise ValueError(f"augmentation {kind!r}: needs a seeded generator (aug_generator)")
        n, count = len(self), self.num_batches(batch_size, drop_last)
        order = torch.randperm(n, generator=generator) if generator is not None else None
        covered = min(n, count * batch_size)
        indices = (order[:covered] if order is not None else torch.arange(covered)).tolist()
        # one chunk per worker and batch, so the workers decode every batch together
        step = max(1, math.ceil(batch_size / max(1, self.images.workers)))
        chunks, per_batch = [], []
        for b in range(count):
            batch = indices[b * batch_size:(b + 1) * batch_size]
            chunks += [batch[i:i + step] for i in range(0, len(batch), step)]
            per_batch.append(math.ceil(len(batch) / step))
        labels_order = order.to(self.device) if order is not None else None
        owner = self._busy.acquire(blocking=False)
        if owner:
            self._plan.chunks, loader = chunks, self._loader
        else:  # a pass of this split is still open (nested or in another thread): its own loader
            loader = _loader(self.images, _Plan(chunks), self._pin, persistent=False)
        try:
            stream = iter(loader)
            for b, parts in enumerate(per_batch):
                pixels = [_checked(next(stream)).to(self.device, non_blocking=True) for _ in range(parts)]
                x = _normalise(pixels[0] if parts == 1 else torch.cat(pixels), self._table)
                rows = slice(b * batch_size, (b + 1) * batch_size)
                y = self.y[rows] if labels_order is None else self.y[labels_order[rows]]
                yield augment_batch(x, kind, aug_generator), y
        finally:
            if owner:
                self._busy.release()
