"""The built-in data sets that come as files or with a package: ``digits`` (scikit-learn's
bundled 8x8 digits, never downloaded), ``cifar10`` / ``cifar100`` (the official python-pickle
folders; the unpickler accepts arrays only) and ``npz`` (any ``.npz`` file)."""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stitchnas.data.base import (
    DataSpec,
    RawData,
    _check_labels,
    register_dataset,
    reject_data_dir,
    reject_options,
)
from stitchnas.data.imagefolder import looks_like_image_folder


def digits_file() -> Path:
    """scikit-learn's bundled ``digits.csv.gz`` (UCI optical digits, 1,797 8x8 images of 0..16,
    one row of 64 pixels + the label each), found without importing scikit-learn (~1 s)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("data set 'digits': scikit-learn is not installed (it ships the digits file)")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"


def _load_digits(spec: DataSpec) -> RawData:
    """The digits as ``sklearn.datasets.load_digits`` returns them, pixels scaled to [0, 1]."""
    reject_options(spec)
    reject_data_dir(spec)
    with gzip.open(digits_file(), "rt", encoding="utf-8") as f:
        table = np.loadtxt(f, delimiter=",")  # what load_digits reads, the same way
    images = (table[:, :-1].reshape(-1, 8, 8).astype(np.float32) / 16.0)[:, None]
    return RawData(images, table[:, -1].astype(np.int64), num_classes=10,
                   class_names=tuple(str(i) for i in range(10)), mirror_invariant=False)


# -- CIFAR python-pickle folders ---------------------------------------------------------------

_NUMPY_GLOBALS = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"}
_NUMPY_MODULES = {"numpy", "numpy.core.multiarray", "numpy._core.multiarray",
                  "numpy.core.numeric", "numpy._core.numeric"}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays only: a data file must not be able to run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode") or (
            module in _NUMPY_MODULES and name in _NUMPY_GLOBALS
        ):
            # numpy 2 renamed numpy.core to numpy._core; old pickles use the old name.
            for candidate in (module.replace("numpy.core", "numpy._core"), module):
                try:
                    return super().find_class(candidate, name)
                except (ImportError, AttributeError):
                    continue
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


@dataclass(frozen=True)
class _CifarLayout:
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int


_CIFAR_LAYOUTS = {
    "cifar10": _CifarLayout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                            ("test_batch",), "batches.meta", "labels", "label_names", 10),
    "cifar100": _CifarLayout("cifar-100-python", ("train",), ("test",), "meta", "fine_labels",
                             "fine_label_names", 100),
}


def _require_data_dir(spec: DataSpec, expected: str) -> Path:
    if spec.data_dir is None:
        raise ValueError(f"DataSpec.data_dir (--data-dir) is required for data set {spec.name!r} "
                         f"(expected {expected})")
    return Path(spec.data_dir).expanduser()


def _read_pickle(path: Path, what: str) -> dict[Any, Any]:
    if not path.is_file():
        raise ValueError(f"{what}: missing file {path}")
    try:
        with path.open("rb") as handle:
            obj = _ArrayOnlyUnpickler(handle, encoding="bytes").load()
    except Exception as exc:  # any unpickling failure means the same: a malformed file
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise ValueError(f"{what} file {path}: not a valid CIFAR pickle "
                         f"({type(exc).__name__}: {detail})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{what} file {path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _get_key(obj: dict[Any, Any], key: str, path: Path, what: str) -> Any:
    # The official files were written by Python 2, so keys read back as bytes.
    for candidate in (key.encode(), key):
        if candidate in obj:
            return obj[candidate]
    raise ValueError(f"{what} file {path}: missing key b{key!r}")


def _read_cifar_batch(
    path: Path, layout: _CifarLayout, what: str
) -> tuple[np.ndarray, np.ndarray]:
    batch = _read_pickle(path, what)
    data = np.asarray(_get_key(batch, "data", path, what))
    labels = np.asarray(_get_key(batch, layout.label_key, path, what))
    if data.ndim != 2 or data.shape[1] != 3072 or not np.issubdtype(data.dtype, np.number):
        raise ValueError(f"{what} file {path}: expected b'data' as a numeric (N, 3072) array, "
                         f"got {data.dtype} {data.shape}")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what} file {path}: expected b{layout.label_key!r} as {len(data)} "
                         f"integers, got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64)
    _check_labels(labels, layout.num_classes, f"{what} file {path}")
    # Each row is 1024 red, 1024 green, 1024 blue values, each plane row-major 32x32.
    images = data.reshape(-1, 3, 32, 32)
    if images.dtype != np.uint8:
        images = images.astype(np.float32) / 255.0
    return images, labels


def _load_cifar(spec: DataSpec) -> RawData:
    reject_options(spec)
    layout = _CIFAR_LAYOUTS[spec.name]
    root = _require_data_dir(spec, f"the folder holding {layout.folder}/")
    if not root.is_dir():
        raise ValueError(f"{spec.name} data_dir (--data-dir) {root}: folder not found")
    folder = root / layout.folder
    if not folder.is_dir():
        if not (root / layout.train_files[0]).is_file():
            if looks_like_image_folder(root):
                raise ValueError(f"{spec.name} data_dir {root}: this looks like an image folder (class "
                                 f"sub-folders of images), not the {layout.folder}/ python-pickle folder; "
                                 f"use --dataset imagefolder")
            raise ValueError(f"{spec.name} data_dir {root}: expected folder {layout.folder}/ "
                             f"or the file {layout.train_files[0]} in it")
        folder = root
    parts = [_read_cifar_batch(folder / f, layout, spec.name) for f in layout.train_files]
    tests = [_read_cifar_batch(folder / f, layout, spec.name) for f in layout.test_files]
    names = None
    if (folder / layout.meta_file).is_file():
        meta = _read_pickle(folder / layout.meta_file, spec.name)
        raw_names = _get_key(meta, layout.names_key, folder / layout.meta_file, spec.name)
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in raw_names)
        if len(names) != layout.num_classes:
            raise ValueError(f"{spec.name} file {folder / layout.meta_file}: expected "
                             f"{layout.num_classes} class names, got {len(names)}")
    return RawData(
        np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
        num_classes=layout.num_classes,
        x_test=np.concatenate([t[0] for t in tests]), y_test=np.concatenate([t[1] for t in tests]),
        class_names=names,
    )


# -- .npz files --------------------------------------------------------------------------------

def _npz_images(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise ValueError(f"npz file {path}: expected numeric {key!r}, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        first, last = x.shape[1], x.shape[3]
        if first > 4 and last > 4:
            raise ValueError(f"npz file {path}: cannot tell the channel axis of {key!r} with "
                             f"shape {x.shape} (expected NHWC or NCHW with at most 4 channels)")
        if first > 4:  # NHWC; when both axes are small, NCHW wins
            x = x.transpose(0, 3, 1, 2)
    else:
        raise ValueError(f"npz file {path}: expected {key!r} as NHW, NHWC or NCHW, "
                         f"got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"npz file {path}: {key!r} holds no images (shape {x.shape})")
    if 0 in x.shape[1:]:
        raise ValueError(f"npz file {path}: {key!r} has images of zero channels, height or width (shape {x.shape})")
    if x.dtype == np.uint8:
        return x  # scaled to [0, 1] by load_data
    images = x.astype(np.float32)
    if not np.isfinite(images).all():
        raise ValueError(f"npz file {path}: {key!r} contains NaN or inf")
    return images


def _npz_labels(y: np.ndarray, n: int, path: Path, key: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n or y.dtype.kind not in "iuf":
        raise ValueError(f"npz file {path}: expected {key!r} as {n} numeric labels, "
                         f"got {y.dtype} {y.shape}")
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        raise ValueError(f"npz file {path}: {key!r} must hold whole-number class labels")
    labels = y.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(f"npz file {path}: labels outside range: {key!r} has {labels.min()}, "
                         f"expected labels >= 0")
    return labels


def _load_npz(spec: DataSpec) -> RawData:
    reject_options(spec)
    path = _require_data_dir(spec, "a .npz file")
    if not path.is_file():
        raise ValueError(f"npz data_dir {path}: file not found (expected a .npz file)")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ValueError(
            f"npz file {path}: cannot be read as .npz ({type(exc).__name__})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"npz file {path}: expected a .npz archive, got a single array")
    with archive:
        keys = set(archive.files)
        if {"x_train", "y_train"} <= keys:
            names = ["x_train", "y_train"]
            if len({"x_test", "y_test"} & keys) == 1:
                raise ValueError(f"npz file {path}: 'x_test' and 'y_test' must come together, "
                                 f"found only {sorted({'x_test', 'y_test'} & keys)}")
            if {"x_test", "y_test"} <= keys:
                names += ["x_test", "y_test"]
        elif {"x", "y"} <= keys:
            names = ["x", "y"]
        else:
            raise ValueError(f"npz file {path}: expected arrays 'x' and 'y' (or 'x_train', "
                             f"'y_train'[, 'x_test', 'y_test']), found {sorted(keys)}")
        try:
            arrays = [np.asarray(archive[k]) for k in names]
        except ValueError as exc:  # object arrays need pickle, which is refused
            raise ValueError(f"npz file {path}: unreadable array ({exc})") from None
    x_train = _npz_images(arrays[0], path, names[0])
    y_train = _npz_labels(arrays[1], len(x_train), path, names[1])
    x_test = y_test = None
    if len(arrays) == 4:
        x_test = _npz_images(arrays[2], path, names[2])
        y_test = _npz_labels(arrays[3], len(x_test), path, names[3])
    num_classes = int(max(y_train.max(), -1 if y_test is None else y_test.max())) + 1
    return RawData(x_train, y_train, num_classes=num_classes, x_test=x_test, y_test=y_test)


# overwrite=True: re-importing this module (e.g. importlib.reload) must not fail.
register_dataset("digits", _load_digits, overwrite=True)
register_dataset("cifar10", _load_cifar, overwrite=True)
register_dataset("cifar100", _load_cifar, overwrite=True)
register_dataset("npz", _load_npz, overwrite=True)
