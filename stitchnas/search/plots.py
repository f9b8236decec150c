"""PNG plots: FLOPs-vs-accuracy Pareto fronts and heatmaps (e.g. BMS assignment matrices).

As in optuna's ``visualization/_pareto_front.py``, what to draw is computed first into a
dataclass (:func:`pareto_plot_data`, testable without drawing) and rendered separately.
matplotlib is imported inside the drawing functions and used through its object API on an Agg
canvas, so importing this module is cheap and never switches a notebook's global backend.
Files are written atomically.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stitchnas.core.io import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["ParetoPlotData", "draw_pareto", "pareto_plot_data", "plot_matrix", "plot_pareto"]

_ANNOTATE_MAX_CELLS = 300  # beyond this, numbers in heatmap cells become unreadable


@dataclass(frozen=True, eq=False)
class ParetoPlotData:
    """Everything :func:`plot_pareto` draws, in plot units (MFLOPs by default: the cost times
    ``x_scale``; the ``mflops`` fields hold whatever cost the front uses, e.g. milliseconds).

    Attributes:
        mflops: Cost in plot units of every drawable (finite) candidate.
        accuracy: Accuracy of every drawable candidate.
        front_mflops: Front members by increasing MFLOPs (the step line).
        front_accuracy: Their accuracy.
        front_labels: Their labels (``""`` when no labels were given).
        default_point: ``(mflops, accuracy)`` of the default configuration, or ``None``.
        default_label: Its label (``""`` when no labels were given).
        num_hidden: Candidates not drawn because a value is missing, NaN or inf.
    """

    mflops: np.ndarray
    accuracy: np.ndarray
    front_mflops: np.ndarray
    front_accuracy: np.ndarray
    front_labels: tuple[str, ...]
    default_point: tuple[float, float] | None
    default_label: str
    num_hidden: int


def _floats(values: Sequence[Any] | np.ndarray, name: str) -> np.ndarray:
    try:
        return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold numbers or None") from None


def _index(value: Any, n: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < n:
        raise ValueError(f"{name} must be an index in [0, {n}), got {value!r}")
    return int(value)


def pareto_plot_data(
    flops: Sequence[Any] | np.ndarray,
    acc: Sequence[Any] | np.ndarray,
    front_idx: Sequence[int] | np.ndarray,
    labels: Sequence[str] | None = None,
    default_idx: int | None = None,
    x_scale: float = 1e-6,
) -> ParetoPlotData:
    """Computes what :func:`plot_pareto` draws; arguments as there.

    Raises:
        ValueError: On length mismatches, out-of-range indices, or a front/default member
            without finite values.
    """
    f = _floats(flops, "flops")
    a = _floats(acc, "acc")
    n = len(f)
    if len(a) != n:
        raise ValueError(f"flops and acc differ in length: {n} != {len(a)}")
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries for {n} candidates")
    finite = np.isfinite(f) & np.isfinite(a)
    front = np.array([_index(i, n, "front_idx entry") for i in front_idx], dtype=np.int64)
    if not finite[front].all():
        raise ValueError(f"front_idx includes candidates without finite values: "
                         f"{front[~finite[front]].tolist()}")
    front = front[np.lexsort((-a[front], f[front]))]
    default_point = None
    default_label = ""
    if default_idx is not None:
        d = _index(default_idx, n, "default_idx")
        if not finite[d]:
            raise ValueError(f"default_idx={d} points to a candidate without finite values")
        default_point = (float(f[d]) * x_scale, float(a[d]))
        default_label = str(labels[d]) if labels is not None else ""
    names = [str(labels[i]) if labels is not None else "" for i in front]
    return ParetoPlotData(
        mflops=f[finite] * x_scale,
        accuracy=a[finite],
        front_mflops=f[front] * x_scale,
        front_accuracy=a[front],
        front_labels=tuple(names),
        default_point=default_point,
        default_label=default_label,
        num_hidden=int(n - finite.sum()),
    )


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _save_png(figure: Figure, path: str | Path, dpi: int) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def draw_pareto(data: ParetoPlotData, title: str, ylabel: str = "accuracy", xlabel: str = "MFLOPs") -> Figure:
    """Renders :class:`ParetoPlotData` onto a new Agg figure."""
    figure = _new_figure(7.0, 5.0)
    ax = figure.add_subplot(1, 1, 1)
    ax.scatter(data.mflops, data.accuracy, s=16, color="0.6", alpha=0.7,
               label=f"candidates ({len(data.mflops)})", zorder=1)
    if len(data.front_mflops):
        ax.step(data.front_mflops, data.front_accuracy, where="post", color="C0", zorder=2)
        ax.scatter(data.front_mflops, data.front_accuracy, s=28, color="C0", zorder=3,
                   label=f"Pareto front ({len(data.front_mflops)})")
        for x, y, text in zip(data.front_mflops, data.front_accuracy, data.front_labels):
            if text:
                ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if data.default_point is not None:
        name = f"default ({data.default_label})" if data.default_label else "default"
        ax.scatter([data.default_point[0]], [data.default_point[1]], marker="*", s=220,
                   color="C3", edgecolors="black", linewidths=0.6, zorder=4, label=name)
    if data.num_hidden:
        ax.text(0.01, 0.01, f"{data.num_hidden} candidate(s) not shown (missing/NaN/inf)",
                transform=ax.transAxes, fontsize=7, color="0.4")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return figure


def plot_pareto(
    path: str | Path,
    flops: Sequence[Any] | np.ndarray,
    acc: Sequence[Any] | np.ndarray,
    front_idx: Sequence[int] | np.ndarray,
    labels: Sequence[str] | None = None,
    default_idx: int | None = None,
    title: str = "FLOPs vs accuracy",
    ylabel: str = "accuracy",
    dpi: int = 120,
    xlabel: str = "MFLOPs",
    x_scale: float = 1e-6,
) -> Path:
    """Writes a cost-vs-accuracy PNG (FLOPs by default): all candidates grey, the front as a step line.

    Args:
        path: Output PNG file (written atomically).
        flops: Cost per candidate (FLOPs by default, plotted in MFLOPs); ``None``/NaN/inf ones
            are not drawn.
        acc: Accuracy per candidate.
        front_idx: Indices of the front (e.g. from :func:`stitchnas.search.pareto.pareto_front`).
        labels: Optional label per candidate; front members and the default are annotated.
        default_idx: Index of the default configuration, marked with a red star.
        title: Plot title.
        ylabel: Y-axis label.
        dpi: Resolution.
        xlabel: X-axis label (the cost axis in plot units).
        x_scale: Plot units per cost unit (1e-6: FLOPs drawn in MFLOPs; 1.0 for milliseconds).

    Returns:
        ``path`` as a ``Path``.
    """
    data = pareto_plot_data(flops, acc, front_idx, labels, default_idx, x_scale)
    return _save_png(draw_pareto(data, title, ylabel, xlabel), path, dpi)


def plot_matrix(
    path: str | Path,
    matrix: Sequence[Sequence[float]] | np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str,
    xlabel: str,
    ylabel: str,
    dpi: int = 120,
) -> Path:
    """Writes a heatmap PNG with a colorbar, e.g. a 36 x M BMS assignment matrix.

    Cell values are printed when there are at most 300 cells; NaN cells are left blank.

    Raises:
        ValueError: If ``matrix`` is not a non-empty numeric 2-D array or a label list does not
            match its shape.
    """
    try:
        values = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("matrix must be a numeric 2-D array") from None
    if values.ndim != 2 or 0 in values.shape:
        raise ValueError(f"matrix must be a non-empty 2-D array, got shape {values.shape}")
    rows, cols = values.shape
    if len(row_labels) != rows or len(col_labels) != cols:
        raise ValueError(f"labels do not match matrix shape {values.shape}: "
                         f"{len(row_labels)} row_labels, {len(col_labels)} col_labels")
    figure = _new_figure(min(20.0, max(4.0, 2.0 + 0.45 * cols)),
                         min(20.0, max(3.0, 1.5 + 0.22 * rows)))
    ax = figure.add_subplot(1, 1, 1)
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", interpolation="nearest",
                      cmap="viridis")
    figure.colorbar(image, ax=ax)
    ax.set_xticks(np.arange(cols))
    ax.set_xticklabels([str(c) for c in col_labels], fontsize=7, rotation=90 if cols > 12 else 0)
    ax.set_yticks(np.arange(rows))
    ax.set_yticklabels([str(r) for r in row_labels], fontsize=6 if rows > 20 else 8)
    if rows * cols <= _ANNOTATE_MAX_CELLS:
        finite = values[np.isfinite(values)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for (r, c), v in np.ndenumerate(values):
            if math.isfinite(v):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if v > middle else "white")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return _save_png(figure, path, dpi)
