"""Cluttered digits: a harder embedded benchmark rendered from scikit-learn's real digits.

In the spirit of cluttered MNIST (Mnih et al., "Recurrent Models of Visual Attention", NeurIPS
2014): each sample puts one 8x8 digit, upsampled by a random scale, at a random position on a
larger blank canvas, plus clutter patches cropped from *other* digit images of the same split.
The label is the placed digit. Where downsampling happens matters more here than on the plain
digits, because the digit is small, off-centre and surrounded by digit-like strokes.

The source images are split into train and test *before* rendering, so no digit image (nor any
crop of it) appears in both splits. Everything is deterministic given the seed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stitchnas.data.base import (
    DataSpec,
    RawData,
    register_dataset,
    reject_data_dir,
    reject_options,
    stratified_split,
)

__all__ = ["ClutterConfig", "ClutteredDigits", "make_cluttered_digits"]

_DIGIT_SIZE = 8


@dataclass(frozen=True)
class ClutterConfig:
    """How to render cluttered digits.

    Attributes:
        canvas_size: Side of the square canvas in pixels.
        num_clutter: Clutter patches per sample.
        renders_per_image: Samples rendered from each source digit image (each with its own
            scale, position and clutter), to enlarge the set.
        min_scale: Smallest upsampling factor of the 8x8 digit.
        max_scale: Largest upsampling factor of the 8x8 digit.
        min_patch: Smallest side of a clutter crop, in source (8x8) pixels.
        max_patch: Largest side of a clutter crop, in source pixels.
        test_renders_per_image: Samples rendered from each *test* source image (default: as
            ``renders_per_image``). More test renderings shrink the evaluation noise of a
            ground truth without changing the training data (the test split has its own
            random stream).
    """

    canvas_size: int = 32
    num_clutter: int = 4
    renders_per_image: int = 3
    min_scale: float = 1.5
    max_scale: float = 3.0
    min_patch: int = 3
    max_patch: int = 5
    test_renders_per_image: int | None = None

    def __post_init__(self) -> None:
        for name, low in (("canvas_size", 1), ("num_clutter", 0), ("renders_per_image", 1),
                          ("min_patch", 1), ("max_patch", 1), ("test_renders_per_image", 1)):
            value = getattr(self, name)
            if name == "test_renders_per_image" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"cluttered_digits {name} must be an integer >= {low}, "
                                 f"got {value!r}")
        scales = (self.min_scale, self.max_scale)
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
               for v in scales) or not 0 < self.min_scale <= self.max_scale:
            raise ValueError(f"cluttered_digits scales must satisfy 0 < min_scale <= max_scale, "
                             f"got {self.min_scale!r}, {self.max_scale!r}")
        if self.min_patch > self.max_patch or self.max_patch > _DIGIT_SIZE:
            raise ValueError(f"cluttered_digits patch sides must satisfy min_patch <= max_patch "
                             f"<= {_DIGIT_SIZE}, got {self.min_patch}, {self.max_patch}")
        if int(np.rint(_DIGIT_SIZE * self.max_scale)) > self.canvas_size:
            raise ValueError(f"cluttered_digits canvas_size={self.canvas_size} is smaller than "
                             f"the largest digit ({_DIGIT_SIZE} px x max_scale={self.max_scale})")


@dataclass(frozen=True, eq=False)
class ClutteredDigits:
    """Rendered splits: images ``(N, 1, S, S)`` float32 in [0, 1], labels ``(N,)`` int64.

    ``train_sources`` / ``test_sources`` are the indices (into ``load_digits()``) of the
    source digit image of each sample; the two sets of sources are disjoint.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    train_sources: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    test_sources: np.ndarray


@functools.cache
def _linear_resize_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``(size_out, size_in)`` matrix of 1-D linear resizing (``align_corners=False``)."""
    eye = torch.eye(size_in, dtype=torch.float64)[:, None, :]
    return F.interpolate(eye, size=size_out, mode="linear", align_corners=False)[:, 0, :].T.numpy()


def _upsample(patch: np.ndarray, size: int) -> np.ndarray:
    # Bilinear is separable: rows then columns. Two tiny matmuls are far cheaper than one
    # F.interpolate call per patch, and give the same values.
    rows = _linear_resize_matrix(patch.shape[0], size)
    cols = _linear_resize_matrix(patch.shape[1], size)
    return (rows @ patch @ cols.T).astype(np.float32)


def _render(
    images: np.ndarray, sources: np.ndarray, config: ClutterConfig, rng: np.random.Generator, renders: int
) -> tuple[np.ndarray, np.ndarray]:
    """Renders ``renders`` samples per source image; clutter comes from ``sources``."""
    order = np.repeat(sources, renders)
    size = config.canvas_size
    canvases = np.zeros((len(order), 1, size, size), dtype=np.float32)
    # Clutter comes from other images of this split only, so the splits stay disjoint.
    num_clutter = config.num_clutter if len(sources) > 1 else 0
    for n, source in enumerate(order):
        canvas = canvases[n, 0]
        scale = rng.uniform(config.min_scale, config.max_scale)
        # Donor positions in ``sources``, skipping the sample's own image.
        donors = rng.integers(0, len(sources) - 1, size=num_clutter)
        donors += donors >= n // renders
        sides = rng.integers(config.min_patch, config.max_patch + 1, size=num_clutter)
        crops_at = rng.integers(0, _DIGIT_SIZE - sides + 1, size=(2, num_clutter))
        # Same scale as the digit, so clutter strokes look like digit strokes.
        outs = np.clip(np.rint(sides * scale), 1, size).astype(np.int64)
        places = rng.integers(0, size - outs + 1, size=(2, num_clutter))
        for i in range(num_clutter):
            (top, left), (y, x), side, out = crops_at[:, i], places[:, i], sides[i], outs[i]
            crop = images[sources[donors[i]], top:top + side, left:left + side]
            region = canvas[y:y + out, x:x + out]
            np.maximum(region, _upsample(crop, out), out=region)
        digit_size = int(np.rint(_DIGIT_SIZE * scale))
        y, x = rng.integers(0, size - digit_size + 1, size=2)
        region = canvas[y:y + digit_size, x:x + digit_size]
        np.maximum(region, _upsample(images[source], digit_size), out=region)
    np.clip(canvases, 0.0, 1.0, out=canvases)
    return canvases, order


def make_cluttered_digits(
    seed: int = 0, test_fraction: float = 0.2, config: ClutterConfig | None = None
) -> ClutteredDigits:
    """Renders the cluttered digits benchmark.

    Args:
        seed: Seed of the source split and of every random choice while rendering.
        test_fraction: Fraction of the 1,797 source images (stratified) reserved for test.
        config: Rendering settings; defaults to :class:`ClutterConfig()`.

    Returns:
        The rendered train and test splits with their source indices.
    """
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    config = config or ClutterConfig()
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_src, test_src = stratified_split(labels, test_fraction, seed, "test_fraction")
    # Separate streams: the test renders do not change when train settings change.
    train_rng, test_rng = (np.random.default_rng([seed, stream]) for stream in (1, 2))
    x_train, train_order = _render(images, train_src, config, train_rng, config.renders_per_image)
    test_renders = config.test_renders_per_image or config.renders_per_image
    x_test, test_order = _render(images, test_src, config, test_rng, test_renders)
    return ClutteredDigits(x_train, labels[train_order], train_order,
                           x_test, labels[test_order], test_order)


def _load_cluttered(spec: DataSpec) -> RawData:
    reject_options(spec, tuple(f.name for f in fields(ClutterConfig)))
    reject_data_dir(spec)
    options: dict[str, Any] = dict(spec.options)
    rendered = make_cluttered_digits(spec.seed, spec.test_fraction, ClutterConfig(**options))
    return RawData(rendered.x_train, rendered.y_train, num_classes=10,
                   x_test=rendered.x_test, y_test=rendered.y_test,
                   class_names=tuple(str(i) for i in range(10)), mirror_invariant=False)


# overwrite=True: re-importing this module (e.g. importlib.reload) must not fail.
register_dataset("cluttered_digits", _load_cluttered, overwrite=True)
