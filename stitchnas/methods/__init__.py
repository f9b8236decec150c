"""The search methods, one module each, as :class:`~stitchnas.search.pipeline.SearchMethod`
implementations: :mod:`~stitchnas.methods.pooling` (SPOS), :mod:`~stitchnas.methods.bms`
(Balanced Mixture of SuperNets), :mod:`~stitchnas.methods.snnet` (SN-Net and SN-Netv2) and
:mod:`~stitchnas.methods.learngene` (Learngene Pool); :mod:`~stitchnas.methods.anchors` trains
anchor families. This module maps configs and run folders to their method.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stitchnas.core.io import read_json
from stitchnas.core.runs import RUN_CONFIG
from stitchnas.methods.bms import MixtureMethod
from stitchnas.methods.learngene import LearngenePoolConfig, LearngenePoolMethod
from stitchnas.methods.pooling import PoolingMethod, PoolingSearchConfig
from stitchnas.methods.snnet import SNNetMethod, StitchSearchConfig
from stitchnas.search.pipeline import SearchMethod

#: ``run_config.json`` kinds of the runs :func:`method_from_run` can reopen.
RUN_KINDS: tuple[str, ...] = ("pooling_search", "stitch_search", "learngene_pool")


def method_for(config: Any, **options: Any) -> SearchMethod:
    """The method that runs ``config`` (a :class:`PoolingSearchConfig`, with or without a
    mixture, a :class:`StitchSearchConfig` or a :class:`LearngenePoolConfig`).

    ``options`` go to the method (``trainer=`` for a one-supernet pooling search).

    Raises:
        TypeError: ``config`` is none of those.
    """
    if isinstance(config, PoolingSearchConfig):
        return (MixtureMethod if config.mixture is not None else PoolingMethod)(config, **options)
    if isinstance(config, StitchSearchConfig):
        return SNNetMethod(config, **options)
    if isinstance(config, LearngenePoolConfig):
        return LearngenePoolMethod(config, **options)
    raise TypeError(f"search config: expected PoolingSearchConfig, StitchSearchConfig or LearngenePoolConfig, "
                    f"got {type(config).__name__}")


def method_from_run(run_dir: str | Path) -> SearchMethod:
    """The method of a run folder, rebuilt from its ``run_config.json``.

    Raises:
        ValueError: One line when the folder holds no search run, or a run of an unknown kind
            (e.g. an anchors, distillation or ground-truth folder) or an unreadable config.
    """
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise ValueError(f"run folder {run_dir}: no {RUN_CONFIG} (expected a search run folder)")
    raw = read_json(path, "run config")
    kind = raw.get("kind") if isinstance(raw, dict) else None
    if kind not in RUN_KINDS:
        raise ValueError(f"run config {path}: kind {kind!r} is not a search run (expected one of {list(RUN_KINDS)})")
    where = f"run config {path}"
    if kind == "pooling_search":
        return (MixtureMethod if raw.get("mixture") else PoolingMethod).from_run_config(raw, where)
    if kind == "stitch_search":
        return SNNetMethod.from_run_config(raw, where)
    return LearngenePoolMethod.from_run_config(raw, where)


__all__ = ["RUN_KINDS", "method_for", "method_from_run"]
