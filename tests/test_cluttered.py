from __future__ import annotations

import numpy as np
import pytest
import torch

from stitchnas.data import DataSpec, load_data
from stitchnas.data.cluttered import ClutterConfig, make_cluttered_digits

SMALL = ClutterConfig(canvas_size=24, num_clutter=2, renders_per_image=1, max_scale=2.5)


def test_determinism_and_seed_dependence() -> None:
    a = make_cluttered_digits(seed=5, config=SMALL)
    b = make_cluttered_digits(seed=5, config=SMALL)
    c = make_cluttered_digits(seed=6, config=SMALL)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.x_test, b.x_test)
    assert np.array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.x_train, c.x_train)
    assert set(a.test_sources.tolist()) != set(c.test_sources.tolist())


def test_shapes_labels_and_balance() -> None:
    data = make_cluttered_digits(seed=0)  # defaults: 32x32 canvas, 3 renders per image
    # 1,797 sources, 20% (ceil) = 360 for test, each rendered 3 times.
    assert data.x_train.shape == (1437 * 3, 1, 32, 32)
    assert data.x_test.shape == (360 * 3, 1, 32, 32)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    from sklearn.datasets import load_digits

    targets = load_digits().target
    assert np.array_equal(data.y_train, targets[data.train_sources])
    assert np.array_equal(data.y_test, targets[data.test_sources])
    for labels in (data.y_train, data.y_test):
        counts = np.bincount(labels, minlength=10)
        assert counts.sum() == len(labels) and (counts % 3 == 0).all()
        assert counts.min() >= 0.9 * counts.max()  # stratified source split
    # Every source image is rendered exactly renders_per_image times.
    assert set(np.bincount(data.train_sources)[np.unique(data.train_sources)]) == {3}


def test_train_and_test_sources_are_disjoint() -> None:
    data = make_cluttered_digits(seed=1, config=SMALL)
    train, test = set(data.train_sources.tolist()), set(data.test_sources.tolist())
    assert not train & test
    assert len(train) + len(test) == 1797


def test_digit_and_clutter_are_drawn() -> None:
    plain = make_cluttered_digits(seed=2, config=ClutterConfig(num_clutter=0, renders_per_image=1))
    busy = make_cluttered_digits(seed=2, config=ClutterConfig(num_clutter=8, renders_per_image=1))
    ink_plain = (plain.x_train > 0.05).sum(axis=(1, 2, 3))
    ink_busy = (busy.x_train > 0.05).sum(axis=(1, 2, 3))
    assert ink_plain.min() > 20  # the upsampled digit (at least 12x12) is always there
    assert ink_busy.mean() > ink_plain.mean() + 30
    # With no clutter, the ink fits in one box no larger than the biggest digit (24 px).
    rows = np.flatnonzero((plain.x_train[0, 0] > 0).any(axis=1))
    cols = np.flatnonzero((plain.x_train[0, 0] > 0).any(axis=0))
    assert rows[-1] - rows[0] < 24 and cols[-1] - cols[0] < 24


def test_load_data_integration() -> None:
    data = load_data(DataSpec(name="cluttered_digits", input_size=32))
    assert (data.num_classes, data.in_chans, data.input_size) == (10, 1, 32)
    assert len(data.train) == 1437 * 3 and len(data.test) == 360 * 3
    assert len(data.search_train) + len(data.search_val) == len(data.train)
    assert float(data.train.tensors[0].mean()) == pytest.approx(0.0, abs=1e-4)
    resized = load_data(DataSpec(name="cluttered_digits", input_size=16,
                                 options={"renders_per_image": 1, "canvas_size": 28}))
    assert resized.train.tensors[0].shape == (1437, 1, 16, 16)
    again = load_data(DataSpec(name="cluttered_digits", input_size=16,
                               options={"renders_per_image": 1, "canvas_size": 28}))
    assert torch.equal(resized.test.tensors[0], again.test.tensors[0])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"canvas": 32}, r"'cluttered_digits' does not take \['canvas'\]"),
        ({"canvas_size": 16}, "canvas_size=16 is smaller than the largest digit"),
        ({"num_clutter": -1}, "num_clutter must be an integer >= 0"),
        ({"renders_per_image": 0}, "renders_per_image must be an integer >= 1"),
        ({"min_scale": 2.0, "max_scale": 1.0}, "0 < min_scale <= max_scale"),
        ({"min_scale": "2"}, "0 < min_scale <= max_scale"),
        ({"max_scale": float("inf")}, "0 < min_scale <= max_scale"),
        ({"max_patch": 9}, "min_patch <= max_patch <= 8"),
        ({"test_renders_per_image": 0}, "test_renders_per_image must be an integer >= 1"),
    ],
)
def test_option_errors(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_data(DataSpec(name="cluttered_digits", options=options))


def test_clutter_comes_only_from_other_images_of_the_same_split() -> None:
    from stitchnas.data.cluttered import _render

    # Image i is the constant (i + 1) / 256, so every inked pixel names its source image.
    images = np.repeat((np.arange(100, dtype=np.float32) + 1) / 256, 64).reshape(100, 8, 8)
    sources = np.array([3, 17, 42, 80])
    config = ClutterConfig(canvas_size=32, num_clutter=3, renders_per_image=2)
    canvases, order = _render(images, sources, config, np.random.default_rng(0), config.renders_per_image)
    assert order.tolist() == [3, 3, 17, 17, 42, 42, 80, 80]
    for canvas, source in zip(canvases, order):
        ids = set(np.unique(np.rint(canvas * 256)).astype(int).tolist()) - {0}
        ids = {i - 1 for i in ids}
        assert source in ids  # the digit itself
        assert ids <= set(sources.tolist())  # nothing from outside the split
    # Clutter is cut from *other* images: with two sources, every canvas shows both.
    pair = np.array([5, 9])
    canvases, order = _render(images, pair, ClutterConfig(num_clutter=4, renders_per_image=3),
                              np.random.default_rng(1), 3)
    for canvas in canvases:
        assert set((np.unique(np.rint(canvas * 256)).astype(int) - 1).tolist()) - {-1} == {5, 9}


def test_more_test_renderings_leave_the_training_data_unchanged() -> None:
    from dataclasses import replace

    base = make_cluttered_digits(seed=3, config=SMALL)
    more = make_cluttered_digits(seed=3, config=replace(SMALL, test_renders_per_image=4))
    assert np.array_equal(base.x_train, more.x_train) and np.array_equal(base.y_train, more.y_train)
    assert len(more.x_test) == 4 * len(base.x_test) == 4 * len(set(base.test_sources.tolist()))
    assert np.array_equal(np.unique(more.test_sources), np.unique(base.test_sources))
    assert np.array_equal(more.y_test, np.repeat(base.y_test, 4))  # each test source 4 times, in order
