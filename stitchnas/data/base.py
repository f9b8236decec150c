"""Image classification data sets as in-memory float tensors, with the BMS search split.

Every data set is loaded whole into memory as ``float32`` NCHW tensors, normalised per channel
with statistics of the training split only. The training set is then split
``search_val_fraction`` (0.5 by default, as in Javan et al., "Balanced Mixture of SuperNets
for Learning the CNN Pooling Architecture", arXiv 2306.11982) into ``search_train`` and
``search_val``; the test split is kept for final numbers only.

This module holds the spec, the registry, the splits and :func:`load_data`; the built-in data
sets register themselves from :mod:`stitchnas.data.sources` and :mod:`stitchnas.data.cluttered`
when :mod:`stitchnas.data` is imported. :func:`register_dataset` adds more by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from stitchnas.core import records
from stitchnas.core.streaming import StreamedImages
from stitchnas.core.training import ImageDataset, ImageSplit
from stitchnas.data.splits import stratified_split

__all__ = [
    "DataSpec",
    "DataSplits",
    "RawData",
    "list_datasets",
    "load_data",
    "make_loader",
    "register_dataset",
    "stratified_split",
]


@dataclass(frozen=True)
class DataSpec:
    """Which data set to load and how to split it.

    Attributes:
        name: A registered data set name (see :func:`list_datasets`).
        data_dir: Folder or file with the data (``cifar10``, ``cifar100``, ``npz``).
        input_size: Images are resized (bilinear) to ``input_size x input_size``.
        seed: Seed of every split and subsample; the same seed gives the same tensors.
        search_val_fraction: Fraction of the training set held out as ``search_val``.
        test_fraction: Fraction held out as ``test`` when the data has no official test split.
        max_train_samples: Optional stratified subsample of the training set (quick runs).
        max_test_samples: Optional stratified subsample of the test set.
        options: Extra, data-set-specific settings (e.g. ``canvas_size`` for
            ``cluttered_digits``); data sets reject options they do not know.
        mean, std: Per-channel normalisation to use instead of the training split's own
            statistics, in the [0, 1] pixel units every loader produces: a pretrained
            checkpoint's (timm's ``pretrained_cfg``; ImageNet's for DeiT and ResNet) when
            fine-tuning it. Three values on one-channel data are averaged (the grey image is
            what the checkpoint's summed RGB filters see).
    """

    name: str = "digits"
    data_dir: str | None = None
    input_size: int = 16
    seed: int = 0
    search_val_fraction: float = 0.5
    test_fraction: float = 0.2
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    json_keep_none: ClassVar[bool] = True  # "data_dir": null etc., as run configs always had them

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"DataSpec.name must be a non-empty string, got {self.name!r}")
        if self.data_dir is not None and not isinstance(self.data_dir, (str, Path)):
            raise ValueError(f"DataSpec.data_dir must be a path or None, got {self.data_dir!r}")
        if isinstance(self.data_dir, Path):
            object.__setattr__(self, "data_dir", str(self.data_dir))  # stays JSON-friendly
        if not _is_int(self.input_size) or self.input_size < 1:
            raise ValueError(
                f"DataSpec.input_size must be an integer >= 1, got {self.input_size!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"DataSpec.seed must be an integer >= 0, got {self.seed!r}")
        for name in ("search_val_fraction", "test_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ValueError(f"DataSpec.{name} must be a number in (0, 1), got {value!r}")
        for name in ("max_train_samples", "max_test_samples"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"DataSpec.{name} must be None or an integer >= 1, got {value!r}")
        if not (isinstance(self.options, Mapping)
                and all(isinstance(k, str) for k in self.options)):
            raise ValueError(
                f"DataSpec.options must be a dict with string keys, got {self.options!r}")
        # A private copy: later edits to the caller's dict must not change a frozen spec.
        object.__setattr__(self, "options", dict(self.options))
        if (self.mean is None) != (self.std is None):
            raise ValueError("DataSpec.mean/std: give both or neither")
        if self.mean is not None and self.std is not None:
            mean, std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
            if not mean or len(mean) != len(std) or not all(math.isfinite(v) for v in mean + std) \
                    or min(std) <= 0:
                raise ValueError(f"DataSpec.mean/std: expected equally many finite values, std > 0, "
                                 f"got {list(self.mean)}/{list(self.std)}")
            object.__setattr__(self, "mean", mean)
            object.__setattr__(self, "std", std)

    def to_json(self) -> dict[str, Any]:
        """Every field, ``None`` as ``null`` (the ``"data"`` of run configs and manifests)."""
        return records.to_json(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "data spec") -> DataSpec:
        """Strict decoding (:func:`stitchnas.core.records.from_json`); absent fields take their defaults."""
        return records.from_json(cls, data, where)

    def __hash__(self) -> int:
        options = tuple(sorted((k, repr(v)) for k, v in self.options.items()))
        return hash((self.name, self.data_dir, self.input_size, self.seed,
                     self.search_val_fraction, self.test_fraction, self.max_train_samples,
                     self.max_test_samples, options))


@dataclass(frozen=True, eq=False)
class RawData:
    """What a data set loader returns, before splitting, resizing and normalising.

    Attributes:
        x_train: ``(N, C, H, W)`` images. ``uint8`` is read as 0..255 and scaled to [0, 1]
            (kept as ``uint8`` until then, to save memory); other real dtypes are used as is.
            Or a :class:`~stitchnas.core.streaming.StreamedImages` (images read from disk
            batch by batch, at the final size; then ``x_test`` is one too, or ``None``).
        y_train: ``(N,)`` integer labels in ``[0, num_classes)``.
        num_classes: Number of classes.
        x_test: Official test images, or ``None`` to hold out ``DataSpec.test_fraction``.
        y_test: Official test labels (with ``x_test``).
        class_names: Optional names, one per class.
        mirror_invariant: Whether a mirror image keeps its label (False for digits), which
            training augmentation's ``"auto"`` respects.
    """

    x_train: np.ndarray | StreamedImages
    y_train: np.ndarray
    num_classes: int
    x_test: np.ndarray | StreamedImages | None = None
    y_test: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None
    mirror_invariant: bool = True


@dataclass(frozen=True, eq=False)
class DataSplits:
    """The loaded splits; ``train`` is ``search_train`` followed by ``search_val``.

    Each split is a ``TensorDataset(x, y)`` with ``x`` float32 NCHW, normalised with the
    per-channel ``mean``/``std`` of ``train``, and ``y`` int64. ``search_train`` and
    ``search_val`` are views into ``train``'s tensors, so they cost no extra memory. A data
    set streamed from disk (:attr:`streamed`) has a
    :class:`~stitchnas.core.streaming.StreamedImages` per split instead (the same images,
    labels and normalisation; loops take either through
    :func:`stitchnas.core.training.batches_for`).
    """

    name: str
    num_classes: int
    in_chans: int
    input_size: int
    search_train: ImageSplit
    search_val: ImageSplit
    train: ImageSplit
    test: ImageSplit
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]

    def describe(self) -> str:
        """One line: name, classes, image shape and the size of every split."""
        sizes = ", ".join(
            f"{split} {len(getattr(self, split))}"
            for split in ("search_train", "search_val", "train", "test")
        )
        streamed = " (streamed from disk)" if self.streamed else ""
        return (f"{self.name}: {self.num_classes} classes, "
                f"{self.in_chans}x{self.input_size}x{self.input_size} images, {sizes}{streamed}")

    @property
    def streamed(self) -> bool:
        """Whether the images are read from disk batch by batch instead of held in memory."""
        return isinstance(self.train, StreamedImages)


DatasetLoader = Callable[[DataSpec], RawData]
_REGISTRY: dict[str, DatasetLoader] = {}


def register_dataset(name: str, loader_fn: DatasetLoader, *, overwrite: bool = False) -> None:
    """Makes ``load_data(DataSpec(name=name, ...))`` call ``loader_fn(spec) -> RawData``.

    Raises:
        ValueError: If ``name`` is empty or already registered (and ``overwrite`` is False).
        TypeError: If ``loader_fn`` is not callable.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_dataset: name must be a non-empty string, got {name!r}")
    if not callable(loader_fn):
        raise TypeError(f"register_dataset: loader_fn for {name!r} must be callable")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"register_dataset: data set {name!r} is already registered "
                         f"(pass overwrite=True to replace it)")
    _REGISTRY[name] = loader_fn


def list_datasets() -> list[str]:
    """Sorted names of every registered data set."""
    return sorted(_REGISTRY)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _derived_seed(seed: int, stream: int) -> int:
    # Independent, reproducible sub-seeds for each split (sklearn wants < 2**32).
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def _check_labels(y: np.ndarray, num_classes: int, where: str) -> None:
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{where}: labels outside range 0..{num_classes - 1} "
                         f"(found {int(y.min())}..{int(y.max())})")


def _checked_arrays(raw: RawData, name: str) -> list[np.ndarray]:
    """``[x_train, y_train]`` (+ ``[x_test, y_test]``) as arrays, after checking shapes."""
    if not _is_int(raw.num_classes) or raw.num_classes < 1:
        raise ValueError(f"data set {name!r}: num_classes must be >= 1, got {raw.num_classes!r}")
    if (raw.x_test is None) != (raw.y_test is None):
        raise ValueError(f"data set {name!r}: x_test and y_test must be given together")
    pairs = [("train", raw.x_train, raw.y_train)]
    if raw.x_test is not None and raw.y_test is not None:  # both or neither (checked above)
        pairs.append(("test", raw.x_test, raw.y_test))
    arrays = []
    for split, x_in, y_in in pairs:
        x, y = np.asarray(x_in), np.asarray(y_in)
        if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
            raise ValueError(f"data set {name!r}: expected {split} images (N, C, H, W) and "
                             f"labels (N,), got {x.shape} and {y.shape}")
        if 0 in x.shape[1:]:
            raise ValueError(f"data set {name!r}: {split} images have an empty channel, height or width "
                             f"(shape {x.shape})")
        if x.dtype.kind not in "biuf":
            raise ValueError(f"data set {name!r}: {split} images must be numeric, got {x.dtype}")
        if y.dtype.kind not in "iu":
            raise ValueError(f"data set {name!r}: {split} labels must be integers, got {y.dtype}")
        _check_labels(y, raw.num_classes, f"data set {name!r} {split}")
        arrays += [x, y.astype(np.int64)]
    if len(arrays) == 4 and arrays[2].shape[1] != arrays[0].shape[1]:
        raise ValueError(f"data set {name!r}: train has {arrays[0].shape[1]} channels, "
                         f"test has {arrays[2].shape[1]}")
    return arrays


def _given_normalisation(mean: tuple[float, ...], std: tuple[float, ...],
                         channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    if len(mean) == 3 and channels == 1:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    if len(mean) != channels:
        raise ValueError(f"DataSpec.mean/std: {len(mean)} values for {channels}-channel images")
    return torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)


def _nchw(images: torch.Tensor) -> torch.Tensor:
    """``images`` with NCHW's own strides. A one-channel array indexed by numpy can come with
    channels-last strides (numpy leaves a size-1 axis' stride arbitrary); torch then runs every
    convolution channels-last, whose results differ in the last bits from NCHW's."""
    n, c, h, w = images.shape
    if images.stride() == (c * h * w, h * w, w, 1):
        return images
    return images.clone(memory_format=torch.contiguous_format)


def _resize(x: np.ndarray, size: int) -> torch.Tensor:
    """``(N, C, H, W)`` array -> float32 tensor of ``(N, C, size, size)``, in chunks.

    ``uint8`` input is scaled from 0..255 to [0, 1] on the way.
    """
    if x.dtype == np.uint8:
        images = _nchw(torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0))
    else:
        images = _nchw(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    if images.shape[-2:] == (size, size):
        return images
    # Antialias when shrinking, or bilinear sampling skips pixels and aliases.
    shrink = size < max(images.shape[-2:])
    chunks = [
        F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False,
                      antialias=shrink)
        for chunk in images.split(4096)
    ]
    return torch.cat(chunks)


def _split_indices(spec: DataSpec, y_train: np.ndarray,
                   y_test: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Which images every split takes, by index: ``(train, test, n_search)``.

    ``train`` indexes the training source, ``search_train`` (its first ``n_search``) then
    ``search_val``; ``test`` indexes the official test source, or the training source when
    there is none (``None``: the whole official test source, in order).
    """
    test_idx: np.ndarray | None = None
    if y_test is None:
        train_idx, test_idx = stratified_split(
            y_train, spec.test_fraction, _derived_seed(spec.seed, 0), "test_fraction")
        y_te = y_train[test_idx]
    else:
        train_idx, y_te = np.arange(len(y_train)), y_test
    y_tr = y_train[train_idx]
    if spec.max_train_samples is not None and spec.max_train_samples < len(y_tr):
        _, take = stratified_split(y_tr, spec.max_train_samples,
                                   _derived_seed(spec.seed, 1), "max_train_samples")
        train_idx, y_tr = train_idx[take], y_tr[take]
    if spec.max_test_samples is not None and spec.max_test_samples < len(y_te):
        _, take = stratified_split(y_te, spec.max_test_samples,
                                   _derived_seed(spec.seed, 2), "max_test_samples")
        test_idx = take if test_idx is None else test_idx[take]
    keep, held = stratified_split(y_tr, spec.search_val_fraction,
                                  _derived_seed(spec.seed, 3), "search_val_fraction")
    return train_idx[np.concatenate([keep, held])], test_idx, len(keep)


def _statistics(x_train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel float64 mean and (population) std of float32 NCHW images; std 0 -> 1."""
    mean = x_train.double().mean(dim=(0, 2, 3))
    std = x_train.double().std(dim=(0, 2, 3), unbiased=False)
    return mean, torch.where(std > 1e-12, std, torch.ones_like(std))


def load_data(spec: DataSpec) -> DataSplits:
    """Loads, splits, resizes and normalises the data set described by ``spec``.

    Raises:
        ValueError: One line naming the setting, folder or file at fault.
    """
    if spec.name not in _REGISTRY:
        raise ValueError(f"DataSpec.name (--dataset): unknown data set {spec.name!r} "
                         f"(known: {', '.join(sorted(_REGISTRY))})")
    raw = _REGISTRY[spec.name](spec)
    if "mirror_invariant" in spec.options:  # the user knows their labels: e.g. digits in an .npz
        mirror = spec.options["mirror_invariant"]
        if not isinstance(mirror, bool):
            raise ValueError("DataSpec.options (--data-option): "
                             f"mirror_invariant must be true or false, got {mirror!r}")
        raw = replace(raw, mirror_invariant=mirror)
    if isinstance(raw.x_train, StreamedImages):
        return _streamed_splits(raw, raw.x_train, spec)
    arrays = _checked_arrays(raw, spec.name)
    x_src, y_src = arrays[:2]
    x_te_src, y_te_src = arrays[2:] if len(arrays) == 4 else arrays
    train_idx, test_idx, n_search = _split_indices(spec, y_src, arrays[3] if len(arrays) == 4 else None)
    x_train = _resize(x_src[train_idx], spec.input_size)  # a copy (normalised in place below)
    y_train = torch.from_numpy(y_src[train_idx])
    x_te, y_te = (x_te_src, y_te_src) if test_idx is None else (x_te_src[test_idx], y_te_src[test_idx])
    x_test = _resize(x_te, spec.input_size)
    if spec.mean is not None and spec.std is not None:
        mean, std = _given_normalisation(spec.mean, spec.std, x_train.shape[1])
    else:
        # Statistics of the training split only: the test set must not leak into the inputs.
        mean, std = _statistics(x_train)
    scale = (mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1))
    x_train.sub_(scale[0]).div_(scale[1])  # in place: x_train is our own copy
    x_test = (x_test - scale[0]) / scale[1]
    names = raw.class_names or tuple(str(i) for i in range(raw.num_classes))
    return DataSplits(
        name=spec.name,
        num_classes=int(raw.num_classes),
        in_chans=int(x_train.shape[1]),
        input_size=spec.input_size,
        search_train=ImageDataset(x_train[:n_search], y_train[:n_search], mirror_invariant=raw.mirror_invariant),
        search_val=TensorDataset(x_train[n_search:], y_train[n_search:]),
        train=ImageDataset(x_train, y_train, mirror_invariant=raw.mirror_invariant),
        test=TensorDataset(x_test.contiguous(), torch.from_numpy(np.array(y_te))),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        class_names=tuple(names),
    )


#: Normalisation statistics of a streamed training split come from at most this many images.
STATS_SAMPLE = 2048
#: ... computed exactly as the in-memory path does (one float64 tensor) up to this many bytes.
_EXACT_STATS_BYTES = 256 * 2**20


def _streamed_splits(raw: RawData, source: StreamedImages, spec: DataSpec) -> DataSplits:
    """:func:`load_data` for a data set kept on disk: the same indices, labels and normalisation
    as the in-memory path, every split a :class:`StreamedImages`."""
    test_source = raw.x_test if raw.x_test is not None else source
    if not isinstance(test_source, StreamedImages) or (raw.x_test is None) != (raw.y_test is None):
        raise ValueError(f"data set {spec.name!r}: a streamed training split needs a streamed test split (or none)")
    if raw.num_classes < 1:
        raise ValueError(f"data set {spec.name!r}: num_classes must be >= 1, got {raw.num_classes!r}")
    y_src, y_test = np.asarray(raw.y_train, dtype=np.int64), raw.y_test
    y_te_src = y_src if y_test is None else np.asarray(y_test, dtype=np.int64)
    for split, images, labels in (("train", source, y_src), ("test", test_source, y_te_src)):
        if len(images) != len(labels) or len(labels) == 0 or not np.array_equal(images.labels, labels):
            raise ValueError(f"data set {spec.name!r}: {split} images and labels do not match")
        _check_labels(labels, raw.num_classes, f"data set {spec.name!r} {split}")
    train_idx, test_idx, n_search = _split_indices(spec, y_src, None if y_test is None else y_te_src)
    train = source.subset(train_idx)
    test = test_source if test_idx is None else test_source.subset(test_idx)
    channels = source.image_shape[0]
    if spec.mean is not None and spec.std is not None:
        mean, std = _given_normalisation(spec.mean, spec.std, channels)
    else:
        mean, std = _streamed_statistics(train, spec.seed)
    train = replace(train.normalised(mean.float().tolist(), std.float().tolist()),
                    mirror_invariant=raw.mirror_invariant)
    test = replace(test.normalised(mean.float().tolist(), std.float().tolist()),
                   mirror_invariant=raw.mirror_invariant)
    names = raw.class_names or tuple(str(i) for i in range(raw.num_classes))
    return DataSplits(
        name=spec.name, num_classes=int(raw.num_classes), in_chans=channels, input_size=spec.input_size,
        search_train=train.subset(np.arange(n_search)), search_val=train.subset(np.arange(n_search, len(train))),
        train=train, test=test, mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
        class_names=tuple(names),
    )


def _streamed_statistics(train: StreamedImages, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of a streamed training split, from every image when it has at
    most :data:`STATS_SAMPLE`, else from a seeded sample of that many (read by its workers).

    Up to ``_EXACT_STATS_BYTES`` of float64 pixels this is :func:`_statistics` on the same
    tensor as the in-memory path, so the numbers are the same; above, float64 sums over chunks
    (shifted by the first chunk's mean), equal up to float64 rounding.
    """
    sample = train
    if len(train) > STATS_SAMPLE:
        rng = np.random.default_rng(_derived_seed(seed, 4))
        sample = train.subset(np.sort(rng.choice(len(train), STATS_SAMPLE, replace=False)))
    if len(sample) * math.prod(sample.image_shape) * 8 <= _EXACT_STATS_BYTES:
        return _statistics(torch.cat(list(sample.pixels())).float().div_(255.0))
    count, shift = 0, None
    sums = squares = torch.zeros(sample.image_shape[0], dtype=torch.float64)
    for chunk in sample.pixels():
        x = chunk.float().div_(255.0).double()
        if shift is None:
            shift = x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
        x -= shift
        sums, squares = sums + x.sum(dim=(0, 2, 3)), squares + x.square().sum(dim=(0, 2, 3))
        count += x.numel() // x.shape[1]
    assert shift is not None  # the split is not empty
    mean = sums / count
    std = (squares / count - mean.square()).clamp_(min=0).sqrt()
    return mean + shift.view(-1), torch.where(std > 1e-12, std, torch.ones_like(std))


def make_loader(
    dataset: Dataset[Any], batch_size: int, shuffle: bool, seed: int, drop_last: bool = False
) -> DataLoader[Any]:
    """A single-process ``DataLoader`` whose shuffling comes from its own seeded generator.

    The generator advances from epoch to epoch, so every epoch has a new order, but the whole
    sequence of orders is the same on every run with the same ``seed``.

    Raises:
        ValueError: If ``batch_size`` is not an integer >= 1 or ``seed`` not an integer.
    """
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"make_loader: batch_size must be an integer >= 1, got {batch_size!r}")
    if not _is_int(seed):
        raise ValueError(f"make_loader: seed must be an integer, got {seed!r}")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return DataLoader(dataset, batch_size=int(batch_size), shuffle=shuffle, generator=generator,
                      num_workers=0, drop_last=drop_last)


#: Options every data set takes (handled by :func:`load_data`, not by the data set's loader).
COMMON_OPTIONS = ("mirror_invariant",)


def reject_data_dir(spec: DataSpec) -> None:
    """Raises ``ValueError`` if an embedded data set (one that reads no files) is given a
    ``data_dir``: silently training on the embedded images instead of the user's is worse
    than stopping."""
    if spec.data_dir is not None:
        raise ValueError(f"DataSpec.data_dir (--data-dir): data set {spec.name!r} is embedded and reads no files, got "
                         f"{spec.data_dir!r} (for your own data choose imagefolder, npz, cifar10 or cifar100)")


def reject_options(spec: DataSpec, known: Sequence[str] = ()) -> None:
    """Raises ``ValueError`` if ``spec.options`` has a key not in ``known`` (or :data:`COMMON_OPTIONS`)."""
    known = (*known, *COMMON_OPTIONS)
    unknown = sorted(set(spec.options) - set(known))
    if unknown:
        raise ValueError(f"DataSpec.options (--data-option): data set {spec.name!r} does not take {unknown} "
                         f"(known options: {sorted(known) or 'none'})")
