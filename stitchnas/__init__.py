"""stitchnas: pooling-placement NAS and model stitching with FLOPs-vs-accuracy Pareto fronts.

The public Python API (see README, "Python API"): build a config, call :func:`run_search`, read
the :class:`SearchResult`; :func:`load_model` rebuilds any exported model as a plain
``torch.nn.Module``. Importing the package changes no process-wide setting: call
:func:`set_threads` first (before anything imports torch) for the thread policy the
``stitchnas`` command applies (see README, "Threads").

Names are imported on first use (PEP 562): ``import stitchnas.core.io`` from the lower floors
(``supernet/``, ``stitching/``) must not pull in the methods built on top of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from stitchnas.core.version import __version__

if TYPE_CHECKING:
    from stitching.anchors import AnchorRef, read_anchor_folder
    from stitching.trainer import SamplingConfig, StitchTrainConfig
    from stitchnas.api import evaluate_run, export_from_run, run_search
    from stitchnas.backends.tune import TuneOptions
    from stitchnas.core.records import ResultRow
    from stitchnas.core.threads import configure as set_threads
    from stitchnas.data import DataSpec
    from stitchnas.methods.anchors import AnchorTrainConfig, train_anchors
    from stitchnas.methods.learngene import LearngeneDistillRunConfig, LearngenePoolConfig
    from stitchnas.methods.learngene import run_distill as distill
    from stitchnas.methods.pooling import PoolingSearchConfig, train_standalone
    from stitchnas.methods.snnet import StitchSearchConfig
    from stitchnas.search.cost import CostConfig
    from stitchnas.search.export import export_model, load_model, read_model_record
    from stitchnas.search.pipeline import SearchResult
    from supernet.bms import MixtureConfig
    from supernet.evaluation import EvalConfig
    from supernet.training import TrainConfig

#: public name -> "module" or "module:attribute"
_EXPORTS: dict[str, str] = {
    "AnchorRef": "stitching.anchors",
    "AnchorTrainConfig": "stitchnas.methods.anchors",
    "CostConfig": "stitchnas.search.cost",
    "DataSpec": "stitchnas.data",
    "EvalConfig": "supernet.evaluation",
    "LearngeneDistillRunConfig": "stitchnas.methods.learngene",
    "LearngenePoolConfig": "stitchnas.methods.learngene",
    "MixtureConfig": "supernet.bms",
    "PoolingSearchConfig": "stitchnas.methods.pooling",
    "ResultRow": "stitchnas.core.records",
    "SamplingConfig": "stitching.trainer",
    "SearchResult": "stitchnas.search.pipeline",
    "StitchSearchConfig": "stitchnas.methods.snnet",
    "StitchTrainConfig": "stitching.trainer",
    "TrainConfig": "supernet.training",
    "TuneOptions": "stitchnas.backends.tune",
    "distill": "stitchnas.methods.learngene:run_distill",
    "evaluate_run": "stitchnas.api",
    "export_from_run": "stitchnas.api",
    "export_model": "stitchnas.search.export",
    "load_model": "stitchnas.search.export",
    "read_anchor_folder": "stitching.anchors",
    "read_model_record": "stitchnas.search.export",
    "run_search": "stitchnas.api",
    "set_threads": "stitchnas.core.threads:configure",
    "train_anchors": "stitchnas.methods.anchors",
    "train_standalone": "stitchnas.methods.pooling",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'stitchnas' has no attribute {name!r}")
    module, _, attr = _EXPORTS[name].partition(":")
    value = getattr(importlib.import_module(module), attr or name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "AnchorRef",
    "AnchorTrainConfig",
    "CostConfig",
    "DataSpec",
    "EvalConfig",
    "LearngeneDistillRunConfig",
    "LearngenePoolConfig",
    "MixtureConfig",
    "PoolingSearchConfig",
    "ResultRow",
    "SamplingConfig",
    "SearchResult",
    "StitchSearchConfig",
    "StitchTrainConfig",
    "TrainConfig",
    "TuneOptions",
    "__version__",
    "distill",
    "evaluate_run",
    "export_from_run",
    "export_model",
    "load_model",
    "read_anchor_folder",
    "read_model_record",
    "run_search",
    "set_threads",
    "train_anchors",
    "train_standalone",
]
