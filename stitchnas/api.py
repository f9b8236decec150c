"""The Python API for launch scripts: one call per search, whatever the method.

    import stitchnas
    from searchspace.pooling import create_space

    cfg = stitchnas.PoolingSearchConfig(space=create_space("resnet20"),
                                        train=stitchnas.TrainConfig(epochs=40))
    result = stitchnas.run_search(cfg, "runs/pooling")
    print(result.results.sort_values("val_acc").tail())   # pandas.DataFrame of every candidate
    for row in result.front:                              # ResultRow records, cheapest first
        print(row.label, row.flops, row.val_acc)
    model = stitchnas.load_model(result.exports[0])         # a plain nn.Module

The config's type picks the method: :class:`PoolingSearchConfig` (SPOS; a Balanced Mixture of
SuperNets when ``mixture`` is set), :class:`StitchSearchConfig` (SN-Net, ``version="v2"`` for
SN-Netv2) or :class:`LearngenePoolConfig` (Learngene Pool, after :func:`distill`). Every call
writes the run folder the command line writes, so runs started here resume from the command
line and the other way round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stitchnas.backends.tune import RayTuneStage, TuneOptions
from stitchnas.search import pipeline
from stitchnas.search.candidates import EvaluationBackend, evaluate_in_process
from stitchnas.search.pipeline import SearchResult

Backend = EvaluationBackend | TuneOptions | None


def _backend(backend: Backend) -> EvaluationBackend:
    if backend is None:
        return evaluate_in_process
    if isinstance(backend, TuneOptions):
        return RayTuneStage(backend).evaluate
    if not callable(backend):
        raise TypeError(f"backend: expected None, TuneOptions or a callable, got {type(backend).__name__}")
    return backend


def run_search(
    config: Any,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    backend: Backend = None,
    trainer: Any = None,
    on_step: Callable[[int], None] | None = None,
) -> SearchResult:
    """Run (or, with ``resume``, continue) a search and return its result.

    Args:
        config: A :class:`~stitchnas.methods.pooling.PoolingSearchConfig`,
            :class:`~stitchnas.methods.snnet.StitchSearchConfig` or
            :class:`~stitchnas.methods.learngene.LearngenePoolConfig`.
        out_dir: The run folder (created; must be empty unless ``resume``).
        resume: Continue an interrupted run in ``out_dir`` (same config required).
        progress: Show progress bars.
        backend: Where candidates are scored: None (in this process),
            :class:`~stitchnas.backends.tune.TuneOptions` (Ray Tune trials, Optuna samplers),
            or any evaluation backend callable.
        trainer: Pooling search only: the supernet trainer, e.g.
            :class:`~stitchnas.backends.ray_train.RayTrainTrainer` for data-parallel training.
        on_step: Called with the global step after every training step.

    Returns:
        A :class:`~stitchnas.search.pipeline.SearchResult`: ``front`` (records),
        ``results`` (``pandas.DataFrame``), ``out_dir``, ``exports`` and ``export(candidate)``.

    Raises:
        ValueError: Bad options or inputs, one line naming the option or file.
        TypeError: ``config`` is not a search config.
    """
    from stitchnas.methods import method_for  # here: importing stitchnas must not import supernet/stitching

    method = method_for(config, **({"trainer": trainer} if trainer is not None else {}))
    return pipeline.run_search(method, out_dir, resume=resume, progress=progress, on_step=on_step,
                               backend=_backend(backend))


def evaluate_run(
    run_dir: str | Path,
    *,
    no_train: bool = False,
    out_dir: str | Path | None = None,
    progress: bool = True,
    backend: Backend = None,
) -> SearchResult:
    """Re-score every candidate of a finished run (its last checkpoint; with ``no_train`` the
    network before training) into ``out_dir`` (default ``RUN/evaluate/checkpoint|init``)."""
    from stitchnas.methods import method_from_run

    return pipeline.evaluate_run(method_from_run(run_dir), run_dir, no_train=no_train, out_dir=out_dir,
                                 progress=progress, backend=_backend(backend))


def export_from_run(run_dir: str | Path, candidate: int | str, out_dir: str | Path | None = None,
                    formats: str | Sequence[str] | None = None) -> Path:
    """Export one candidate of a finished run (an index, or the method's notation: ``4,3,3`` for
    placements, ``a0.0-3_a1.4-11`` for stitches) as a standalone model folder.

    ``formats`` (a comma-separated string or a list of ``pt``, ``pt2``, ``onnx``; default
    ``pt,pt2``) says which files besides ``model.json`` and ``model.pt`` are written
    (:mod:`stitchnas.search.portable`); ``onnx`` needs ``pip install 'stitchnas[onnx]'``.
    Raises ValueError (one line) for an unknown format or a missing extra, before any work."""
    from stitchnas.methods import method_from_run
    from stitchnas.search.export import export_formats

    with export_formats(formats):
        return pipeline.export_from_run(method_from_run(run_dir), run_dir, candidate, out_dir)


__all__ = ["evaluate_run", "export_from_run", "run_search"]
