"""Data sets as in-memory tensors with the BMS search split (see :mod:`stitchnas.data.base`).

Importing this package registers the built-in data sets: ``digits``, ``cifar10``, ``cifar100``,
``npz`` (:mod:`~stitchnas.data.sources`), ``cluttered_digits``
(:mod:`~stitchnas.data.cluttered`) and ``imagefolder`` (:mod:`~stitchnas.data.imagefolder`).
"""

from stitchnas.data import cluttered, imagefolder, sources  # noqa: F401  (registers the built-in data sets)
from stitchnas.data.base import (
    DataSpec,
    DataSplits,
    RawData,
    list_datasets,
    load_data,
    make_loader,
    register_dataset,
    reject_options,
    stratified_split,
)

__all__ = [
    "DataSpec",
    "DataSplits",
    "RawData",
    "list_datasets",
    "load_data",
    "make_loader",
    "register_dataset",
    "reject_options",
    "stratified_split",
]
