"""``imagefolder``: a folder of class sub-folders of image files, as torchvision's ``ImageFolder``.

Layouts (``DataSpec.data_dir`` = ``DIR``):

* ``DIR/train/<class>/...`` and ``DIR/val/<class>/...``: ``val`` becomes the test split (as
  CIFAR's test set); both must hold the same classes.
* ``DIR/<class>/...`` (no ``DIR/train/`` folder): one folder, split into train and test by
  :func:`stitchnas.data.base.load_data` (stratified, ``DataSpec.test_fraction``, the spec's seed).

Classes are the sorted names of the non-hidden sub-folders (the class index is the position in
that order, as ``ImageFolder``); the images of a class are all files under its folder (sub-folders
included, symbolic links followed, hidden files and folders skipped) whose extension is one of
:data:`IMG_EXTENSIONS` (torchvision's list, case-insensitive), in sorted path order.

Decoding (Pillow), per image:

* Only the first frame of multi-frame files is read; EXIF orientation is not applied (as
  ``ImageFolder``).
* 16-bit and 32-bit integer grey (``I;16*``, ``I``: 16-bit PNG, TIFF, PGM) are scaled from
  0..65535 to 0..255 (Pillow's own ``convert("L")`` would clip them to 255 instead).
* Transparency (``RGBA``, ``LA``, ``PA``, and ``P``/``L``/``RGB`` with a ``transparency`` key)
  is **composited on black**: ``out = colour * alpha / 255``, so fully transparent pixels are 0,
  whatever colour they hold. (Pillow's ``convert("RGB")`` would drop alpha and keep the hidden
  colours.)
* Everything else is converted with Pillow's ``convert``: ``CMYK``/``YCbCr``/``P`` to ``RGB``,
  ``1`` to ``L``, colour to grey by ITU-R 601-2 luma (``convert("L")``).
* The channel count is the option ``channels`` (1 = grey ``L``, 3 = ``RGB``); by default 3 if
  any image of the data set (train or test) is colour (``RGB``/``CMYK``/``YCbCr``/palette
  modes), else 1. Grey images in a colour set are repeated over the three channels.
* Each image is resized at decode time to ``input_size x input_size`` with Pillow's
  ``BILINEAR`` filter (which averages over the footprint when shrinking), so images of any
  size mix. By default the image is stretched to the square (as
  ``torchvision.transforms.Resize((s, s))``); the option ``center_crop=true`` keeps the aspect
  ratio instead: the largest centred square is cropped, then resized (only pixels inside
  the crop are used, as ``Resize(s)`` + ``CenterCrop(s)`` up to rounding).

Unreadable files (zero bytes, not an image, truncated, ...) are skipped and counted in one
WARNING line ``imagefolder DIR: skipped N unreadable files (first: PATH: reason)``. Bad
layouts (no class sub-folders, a class without a readable image, ``train/`` and ``val/`` with
different classes) raise one-line ``ValueError`` naming the folder.

Decoding runs through a ``torch.utils.data.DataLoader`` with ``num_workers`` = the option
``workers`` (CLI ``--workers``; default 0, in-process), so big folders decode in parallel; the
order, and so every tensor, is the same for any number of workers.

In memory or streamed (the option ``stream``: ``true``, ``false`` or ``auto``, the default):

* In memory: the decoded set is held as ``uint8`` ``(N, C, input_size, input_size)`` like the
  other data sets (scaled and normalised to float32 by ``load_data``).
* Streamed: only the file list is kept; every split is a
  :class:`~stitchnas.core.streaming.StreamedImages` whose batches the ``workers`` decode while
  the device trains (see :mod:`stitchnas.core.streaming`). The splits are made by index as for
  the in-memory set (the same images for the same seed), and the batches, normalisation and
  augmentation are the same tensors, so a streamed run gives the in-memory run's results. At
  load time every file's header is checked instead of decoding it (``Image.open`` and
  ``verify``, in the workers: the pixels are not decoded, a PNG's chunks are CRC-checked);
  unreadable files are skipped with the same WARNING line, and the channel count comes from
  the headers' modes. Damage that only decoding finds (e.g. a JPEG cut short after its headers)
  raises :class:`~stitchnas.core.streaming.UnreadableImage`, one line naming the file, when a
  batch meets it. Unless ``DataSpec.mean``/``std`` are given, the normalisation is the training
  split's per-channel statistics, computed from every training image when there are at most
  :data:`stitchnas.data.base.STATS_SAMPLE` (2048; then the in-memory statistics, to the last bit
  up to 256 MiB of float64 pixels, else up to float64 rounding), else from a seeded sample of
  that many.
* ``auto`` streams when the float32 tensors of all the files (``N * C * input_size**2 * 4``
  bytes, ``C`` = the option ``channels``, else 3) would exceed :data:`STREAM_MEMORY_FRACTION`
  (a quarter) of the memory available when loading (``MemAvailable`` of ``/proc/meminfo``, else
  ``os.sysconf``); the in-memory load peaks at about 3.5 times those bytes. The choice is logged
  (INFO ``imagefolder DIR: N image files, streamed from disk by W workers (stream=auto: ...)``);
  ``run_config.json`` records the options as given.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from torch.utils.data import DataLoader, Dataset

from stitchnas.core.streaming import StreamedImages
from stitchnas.data.base import DataSpec, RawData, _is_int, register_dataset, reject_options

__all__ = ["IMG_EXTENSIONS", "STREAM_MEMORY_FRACTION", "available_memory", "decode_image", "looks_like_image_folder"]

log = logging.getLogger(__name__)

#: torchvision's ``IMG_EXTENSIONS``, matched case-insensitively.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

_OPTIONS = ("channels", "workers", "center_crop", "stream")
_WIDE_GREY = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # integer grey, 0..65535
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_DECODE_BATCH = 32  # images per worker round trip
_HEADER_BATCH = 256  # files per worker round trip when checking headers
#: ``stream=auto`` streams when the float32 tensors of every image would take more than this
#: fraction of the memory available (``load_data`` peaks at about 3.5 times that: the ``uint8``
#: decode, the float32 splits and a float64 copy for the statistics).
STREAM_MEMORY_FRACTION = 0.25


@dataclass(frozen=True)
class _Options:
    channels: int | None
    workers: int
    center_crop: bool
    stream: bool | str


def _options(spec: DataSpec) -> _Options:
    reject_options(spec, _OPTIONS)
    channels = spec.options.get("channels")
    if channels is not None and (not _is_int(channels) or channels not in (1, 3)):
        raise ValueError(f"DataSpec.options (--data-option): imagefolder channels must be 1 or 3, got {channels!r}")
    workers = spec.options.get("workers", 0)
    if not _is_int(workers) or workers < 0:
        raise ValueError("DataSpec.options (--data-option): "
                         f"imagefolder workers must be an integer >= 0, got {workers!r}")
    center_crop = spec.options.get("center_crop", False)
    if not isinstance(center_crop, bool):
        raise ValueError("DataSpec.options (--data-option): "
                         f"imagefolder center_crop must be true or false, got {center_crop!r}")
    stream = spec.options.get("stream", "auto")
    if not isinstance(stream, bool) and stream != "auto":
        raise ValueError("DataSpec.options (--data-option): "
                         f"imagefolder stream must be true, false or auto, got {stream!r}")
    return _Options(None if channels is None else int(channels), int(workers), center_crop, stream)


# -- decoding ----------------------------------------------------------------------------------

def decode_image(path: str | Path, size: int, channels: int | None = None,
                 center_crop: bool = False) -> tuple[np.ndarray, bool]:
    """One image file as ``uint8 (C, size, size)``, converted as the module docstring says.

    Args:
        path: The image file.
        size: Output side in pixels.
        channels: 1 (grey) or 3 (RGB); ``None`` keeps the image's own kind (1 for grey
            modes, 3 for colour modes).
        center_crop: Crop the largest centred square instead of stretching.

    Returns:
        The image and whether its mode is a colour mode.

    Raises:
        Exception: Whatever Pillow raises for a file it cannot read (the loader counts these).
    """
    from PIL import Image

    with Image.open(path) as opened:
        opened.load()  # decodes everything now: a truncated file fails here
        image: Image.Image = opened
        colour = Image.getmodebase(image.mode) == "RGB" or image.mode in ("P", "PA")
        if image.mode in _WIDE_GREY:
            wide = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
            image = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))  # mode L
        elif image.mode in _ALPHA_MODES or "transparency" in image.info:
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
        target = ("RGB" if colour else "L") if channels is None else ("L" if channels == 1 else "RGB")
        image = image.convert(target)
        if center_crop and image.width != image.height:
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side))
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return np.ascontiguousarray(array), colour


def _reason(path: str, exc: BaseException) -> str:
    from PIL import UnidentifiedImageError

    try:
        if os.path.getsize(path) == 0:
            return "empty file"
    except OSError:
        pass
    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can read"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_Decoded = tuple[np.ndarray | None, bool, str]  # (image or None, colour, reason if None)
_T = TypeVar("_T")


class _DecodeSet(Dataset[_Decoded]):
    """The files as a map-style data set, so a ``DataLoader`` decodes them (in workers)."""

    def __init__(self, paths: Sequence[str], size: int, channels: int | None, center_crop: bool) -> None:
        self.paths, self.size, self.channels, self.center_crop = list(paths), size, channels, center_crop

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> _Decoded:
        path = self.paths[index]
        try:
            image, colour = decode_image(path, self.size, self.channels, self.center_crop)
        except Exception as exc:  # any failure to read a file means the same: skip it, count it
            return None, False, _reason(path, exc)
        return image, colour, ""


def _as_list(batch: list[_T]) -> list[_T]:
    return batch  # module level, so worker processes can pickle it


# -- streaming ---------------------------------------------------------------------------------

def available_memory() -> int | None:
    """Bytes of memory available now: ``MemAvailable`` of ``/proc/meminfo`` (Linux), else
    ``os.sysconf`` free pages times the page size; None when neither is known."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _streams(options: _Options, root: Path, count: int, size: int) -> bool:
    """Whether to stream (the option, or ``auto``'s rule); logs the choice."""
    need = count * (options.channels or 3) * size * size * 4  # float32, before the channel count is known
    if options.stream == "auto":
        available = available_memory()
        stream = available is not None and need > STREAM_MEMORY_FRACTION * available
        why = (f"stream=auto: float32 tensors of {need / 2**30:.2f} GiB, "
               f"{'over' if stream else 'within'} {STREAM_MEMORY_FRACTION:.0%} of the "
               + ("available memory (unknown)" if available is None else f"{available / 2**30:.2f} GiB available"))
    else:
        stream, why = bool(options.stream), f"stream={str(options.stream).lower()}"
    how = f"streamed from disk by {options.workers} workers" if stream else "decoded into memory"
    hint = ("; with 0 workers this process decodes every batch (--workers N: N processes decode while "
            "the device trains)") if stream and options.workers == 0 else ""
    log.info("imagefolder %s: %d image files, %s (%s)%s", root, count, how, why, hint)
    return stream


def _header(path: str) -> tuple[bool, bool, str]:
    """(readable, colour mode, reason if not) from the file's header, without decoding pixels."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            colour = Image.getmodebase(image.mode) == "RGB" or image.mode in ("P", "PA")
            image.verify()  # PNG: reads every chunk and checks its CRC, so a truncated PNG fails here
    except Exception as exc:  # as _DecodeSet: any failure means the file is skipped
        return False, False, _reason(path, exc)
    return True, colour, ""


class _HeaderSet(Dataset[tuple[bool, bool, str]]):
    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[bool, bool, str]:
        return _header(self.paths[index])


def _check_all(paths: Sequence[str], workers: int) -> tuple[np.ndarray, bool, list[tuple[str, str]]]:
    """Checks the header of every file (in ``workers`` processes): (readable mask, any colour?, skipped)."""
    ok = np.zeros(len(paths), dtype=bool)
    colour = False
    skipped: list[tuple[str, str]] = []
    loader: DataLoader[Any] = DataLoader(_HeaderSet(paths), batch_size=_HEADER_BATCH, shuffle=False,
                                         num_workers=workers, collate_fn=_as_list)
    index = 0
    for batch in loader:
        for readable, is_colour, reason in batch:
            if readable:
                ok[index], colour = True, colour or is_colour
            else:
                skipped.append((paths[index], reason))
                log.debug("imagefolder: skipping %s: %s", paths[index], reason)
            index += 1
    return ok, colour, skipped


@dataclass(frozen=True)
class _FileReader:
    """Picklable ``read`` of a streamed image folder: a path (bytes) to ``uint8 (C, size, size)``,
    decoded as the in-memory path decodes it."""

    size: int
    channels: int | None  # the option, as decode_image takes it
    out_channels: int
    center_crop: bool

    def __call__(self, item: bytes) -> np.ndarray:
        path = os.fsdecode(bytes(item))
        try:
            image, _ = decode_image(path, self.size, self.channels, self.center_crop)
        except Exception as exc:  # one line naming the file (StreamedImages raises it as UnreadableImage)
            raise OSError(f"imagefolder {path}: {_reason(path, exc)}") from None
        if image.shape[0] != self.out_channels:
            if image.shape[0] != 1:
                raise OSError(f"imagefolder {path}: a colour image in a set its headers said is grey "
                              "(set the option channels=1 or channels=3)")
            image = np.broadcast_to(image, (self.out_channels, *image.shape[1:]))  # grey in a colour set
        return image


# -- the folder layout -------------------------------------------------------------------------

def _class_dirs(folder: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``folder``."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


def _image_files(folder: Path) -> list[str]:
    """Every image file under ``folder``, sorted, symbolic links followed (each folder once)."""
    found = []
    seen: set[tuple[int, int]] = set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        stat = os.stat(top)
        if (stat.st_dev, stat.st_ino) in seen:  # a link loop or a folder reached twice
            dirs[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(top, f) for f in files
                  if not f.startswith(".") and f.lower().endswith(IMG_EXTENSIONS)]
    return sorted(found)


def _expected(root: Path) -> str:
    return f"expected {root}/<class>/<image> or {root}/train/<class>/ and {root}/val/<class>/"


def _scan_split(folder: Path, root: Path) -> tuple[list[str], list[list[str]]]:
    classes = _class_dirs(folder)
    if not classes:
        raise ValueError(f"imagefolder {folder}: no class sub-folders ({_expected(root)})")
    files = [_image_files(folder / c) for c in classes]
    for name, paths in zip(classes, files):
        if not paths:
            raise ValueError(f"imagefolder {folder / name}: class {name!r} has no image files "
                             f"(expected files ending in {' '.join(IMG_EXTENSIONS)})")
    return classes, files


def looks_like_image_folder(path: str | Path) -> bool:
    """Whether ``path`` has the layout of this data set (class sub-folders holding image files).

    Looks at the files directly in at most 50 class folders; never raises.
    """
    root = Path(path)
    try:
        base = root / "train" if (root / "train").is_dir() else root
        for name in _class_dirs(base)[:50]:
            with os.scandir(base / name) as entries:
                if any(e.name.lower().endswith(IMG_EXTENSIONS) and e.is_file() for e in entries):
                    return True
    except OSError:
        return False
    return False


def _load_imagefolder(spec: DataSpec) -> RawData:
    options = _options(spec)
    if spec.data_dir is None:
        raise ValueError("DataSpec.data_dir (--data-dir) is required for data set 'imagefolder' "
                         "(expected a folder of class sub-folders of images)")
    root = Path(spec.data_dir).expanduser()
    if not root.is_dir():
        raise ValueError(f"imagefolder data_dir (--data-dir) {root}: folder not found ({_expected(root)})")
    if (root / "train").is_dir():
        if not (root / "val").is_dir():
            raise ValueError(f"imagefolder {root}: found train/ but no val/ folder next to it "
                             f"({_expected(root)})")
        splits = [root / "train", root / "val"]
    else:
        splits = [root]
    scanned = [_scan_split(folder, root) for folder in splits]
    classes = scanned[0][0]
    if len(scanned) == 2 and scanned[1][0] != classes:
        only_train = sorted(set(classes) - set(scanned[1][0]))
        only_val = sorted(set(scanned[1][0]) - set(classes))
        raise ValueError(f"imagefolder {root}: train/ and val/ must hold the same class folders "
                         f"(only in train/: {only_train or 'none'}; only in val/: {only_val or 'none'})")

    paths = [p for _, files in scanned for per_class in files for p in per_class]
    labels = np.array([c for _, files in scanned for c, per_class in enumerate(files) for _ in per_class],
                      dtype=np.int64)
    split_of = np.repeat(np.arange(len(scanned)), [sum(map(len, files)) for _, files in scanned])
    stream = _streams(options, root, len(paths), spec.input_size)
    if stream:
        ok, colour, skipped = _check_all(paths, options.workers)
    else:
        images, ok, colour, skipped = _decode_all(paths, spec.input_size, options)
    if skipped:
        path, reason = skipped[0]
        log.warning("imagefolder %s: skipped %d unreadable files (first: %s: %s)",
                    root, len(skipped), path, reason)
    for index, (folder, (names, files)) in enumerate(zip(splits, scanned)):
        readable = np.bincount(labels[ok & (split_of == index)], minlength=len(names))
        for c in np.flatnonzero(readable == 0):
            raise ValueError(f"imagefolder {folder / names[c]}: class {names[c]!r} has no readable image "
                             f"(all {len(files[c])} image files are unreadable)")
    if stream:
        kept_split = split_of[ok] if len(scanned) == 2 else None
        return _streamed(spec, options, root, [p for p, good in zip(paths, ok) if good], labels[ok], kept_split,
                         colour, tuple(classes))
    if options.channels is None and not colour:
        images = np.ascontiguousarray(images[:, :1])  # an all-grey set: one channel
    kept_labels, kept_split = labels[ok], split_of[ok]
    log.info("imagefolder %s: %d images, %d classes, %d channels", root, len(images), len(classes),
             images.shape[1])
    if len(scanned) == 1:
        return RawData(images, kept_labels, num_classes=len(classes), class_names=tuple(classes))
    train, test = kept_split == 0, kept_split == 1
    return RawData(images[train], kept_labels[train], num_classes=len(classes),
                   x_test=images[test], y_test=kept_labels[test], class_names=tuple(classes))


def _decode_all(
    paths: Sequence[str], size: int, options: _Options
) -> tuple[np.ndarray, np.ndarray, bool, list[tuple[str, str]]]:
    """Decodes ``paths`` in order: (readable images, readable mask, any colour?, skipped files)."""
    # Without a fixed channel count, every image is stored as RGB (grey repeated) and the set is
    # cut to one channel afterwards if no image was colour.
    channels = options.channels or 3
    images = np.empty((len(paths), channels, size, size), dtype=np.uint8)  # pages touched on write
    ok = np.zeros(len(paths), dtype=bool)
    colour = False
    skipped: list[tuple[str, str]] = []
    loader: DataLoader[Any] = DataLoader(
        _DecodeSet(paths, size, options.channels, options.center_crop), batch_size=_DECODE_BATCH,
        shuffle=False, num_workers=options.workers, collate_fn=_as_list)
    kept = index = 0
    for batch in loader:
        for image, is_colour, reason in batch:
            if image is None:
                skipped.append((paths[index], reason))
                log.debug("imagefolder: skipping %s: %s", paths[index], reason)
            else:
                images[kept] = image  # (1, S, S) broadcasts over 3 channels
                ok[index] = True
                colour |= is_colour
                kept += 1
            index += 1
    return images[:kept], ok, colour, skipped


def _streamed(spec: DataSpec, options: _Options, root: Path, paths: list[str], labels: np.ndarray,
              split_of: np.ndarray | None, colour: bool, classes: tuple[str, ...]) -> RawData:
    """The readable files as :class:`StreamedImages` (``load_data`` splits them by index)."""
    channels = options.channels or (3 if colour else 1)
    source = StreamedImages(
        items=np.array([os.fsencode(p) for p in paths]), labels=labels,
        read=_FileReader(spec.input_size, options.channels, channels, options.center_crop),
        image_shape=(channels, spec.input_size, spec.input_size), workers=options.workers)
    log.info("imagefolder %s: %d images, %d classes, %d channels", root, len(paths), len(classes), channels)
    if split_of is None:  # one folder: load_data holds out the test split
        return RawData(source, labels, num_classes=len(classes), class_names=classes)
    train, test = np.flatnonzero(split_of == 0), np.flatnonzero(split_of == 1)
    return RawData(source.subset(train), labels[train], num_classes=len(classes),
                   x_test=source.subset(test), y_test=labels[test], class_names=classes)


# overwrite=True: re-importing this module (e.g. importlib.reload) must not fail.
register_dataset("imagefolder", _load_imagefolder, overwrite=True)
