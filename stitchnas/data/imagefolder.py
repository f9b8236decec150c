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
``workers`` (default 0, in-process), so big folders decode in parallel; the order, and so every
tensor, is the same for any number of workers. The decoded set is held in memory as ``uint8``
``(N, C, input_size, input_size)`` like the other data sets (scaled and normalised to float32
by ``load_data``). Streaming data sets larger than memory is not done yet.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from stitchnas.data.base import DataSpec, RawData, _is_int, register_dataset, reject_options

__all__ = ["IMG_EXTENSIONS", "decode_image", "looks_like_image_folder"]

log = logging.getLogger(__name__)

#: torchvision's ``IMG_EXTENSIONS``, matched case-insensitively.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

_OPTIONS = ("channels", "workers", "center_crop")
_WIDE_GREY = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # integer grey, 0..65535
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_DECODE_BATCH = 32  # images per worker round trip


@dataclass(frozen=True)
class _Options:
    channels: int | None
    workers: int
    center_crop: bool


def _options(spec: DataSpec) -> _Options:
    reject_options(spec, _OPTIONS)
    channels = spec.options.get("channels")
    if channels is not None and (not _is_int(channels) or channels not in (1, 3)):
        raise ValueError(f"DataSpec.options: imagefolder channels must be 1 or 3, got {channels!r}")
    workers = spec.options.get("workers", 0)
    if not _is_int(workers) or workers < 0:
        raise ValueError(f"DataSpec.options: imagefolder workers must be an integer >= 0, got {workers!r}")
    center_crop = spec.options.get("center_crop", False)
    if not isinstance(center_crop, bool):
        raise ValueError(f"DataSpec.options: imagefolder center_crop must be true or false, got {center_crop!r}")
    return _Options(None if channels is None else int(channels), int(workers), center_crop)


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


def _as_list(batch: list[_Decoded]) -> list[_Decoded]:
    return batch  # module level, so worker processes can pickle it


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
        raise ValueError("DataSpec.data_dir is required for data set 'imagefolder' "
                         "(expected a folder of class sub-folders of images)")
    root = Path(spec.data_dir).expanduser()
    if not root.is_dir():
        raise ValueError(f"imagefolder data_dir {root}: folder not found")
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


# overwrite=True: re-importing this module (e.g. importlib.reload) must not fail.
register_dataset("imagefolder", _load_imagefolder, overwrite=True)
