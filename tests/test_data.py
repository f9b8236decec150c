from __future__ import annotations

import datetime
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from stitchnas.data import (
    DataSpec,
    RawData,
    list_datasets,
    load_data,
    make_loader,
    register_dataset,
    stratified_split,
)


# -- digits ------------------------------------------------------------------------------------

def test_digits_default_splits() -> None:
    data = load_data(DataSpec())
    assert (data.name, data.num_classes, data.in_chans, data.input_size) == ("digits", 10, 1, 16)
    # 1,797 images: 20% test (ceil) = 360, the rest 50/50 into search train / val.
    assert len(data.test) == 360 and len(data.train) == 1437
    assert (len(data.search_train), len(data.search_val)) == (718, 719)
    x, y = data.train.tensors
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape == (1437, 1, 16, 16) and data.test.tensors[0].shape == (360, 1, 16, 16)
    # train is exactly search_train followed by search_val.
    assert torch.equal(torch.cat([data.search_train.tensors[0], data.search_val.tensors[0]]), x)
    assert torch.equal(torch.cat([data.search_train.tensors[1], data.search_val.tensors[1]]), y)
    # Normalised with training statistics: mean 0 / std 1 on train, not exactly on test.
    assert float(x.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(x.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    assert abs(float(data.test.tensors[0].mean())) < 0.1
    assert 0.2 < data.mean[0] < 0.4 and 0.2 < data.std[0] < 0.45  # raw pixels are in [0, 1]
    # Stratified: every class in every split, counts within one of proportional.
    for split in (data.search_train, data.search_val, data.test):
        counts = np.bincount(split.tensors[1].numpy(), minlength=10)
        assert counts.min() >= 0.9 * counts.max() - 1
    assert data.describe() == ("digits: 10 classes, 1x16x16 images, search_train 718, "
                               "search_val 719, train 1437, test 360")


def test_digits_is_deterministic_and_seed_dependent() -> None:
    a = load_data(DataSpec(seed=3, input_size=8))
    b = load_data(DataSpec(seed=3, input_size=8))
    c = load_data(DataSpec(seed=4, input_size=8))
    for split in ("search_train", "search_val", "test"):
        assert torch.equal(getattr(a, split).tensors[0], getattr(b, split).tensors[0])
    assert not torch.equal(a.search_val.tensors[1], c.search_val.tensors[1])


def test_digits_splits_partition_the_images() -> None:
    from collections import Counter

    from sklearn.datasets import load_digits

    # At input_size 8 nothing is resized, so un-normalising gives back the 0..16 pixel values.
    data = load_data(DataSpec(input_size=8))

    def keys(split: torch.utils.data.TensorDataset) -> Counter[bytes]:
        raw = (split.tensors[0].double() * data.std[0] + data.mean[0]) * 16
        assert np.allclose(raw, raw.round(), atol=1e-4)
        return Counter(img.tobytes() for img in raw.round().long().numpy())

    parts = [keys(getattr(data, s)) for s in ("search_train", "search_val", "test")]
    original = Counter(img.tobytes() for img in load_digits().images.astype(np.int64)[:, None])
    # Together the splits hold every original image exactly as often as the data set does...
    assert parts[0] + parts[1] + parts[2] == original
    # ...and no image is shared between splits unless the data set itself repeats it.
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert all(original[k] > 1 for k in parts[i].keys() & parts[j].keys())


def test_resize_and_subsample() -> None:
    data = load_data(DataSpec(input_size=32, max_train_samples=200, max_test_samples=50))
    assert data.train.tensors[0].shape == (200, 1, 32, 32)
    assert data.test.tensors[0].shape == (50, 1, 32, 32)
    assert np.bincount(data.train.tensors[1].numpy(), minlength=10).min() >= 19


def test_stratified_split_partition() -> None:
    labels = np.repeat(np.arange(4), 25)
    kept, held = stratified_split(labels, 0.2, seed=1)
    assert len(held) == 20 and np.bincount(labels[held]).tolist() == [5, 5, 5, 5]
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(100))
    assert np.array_equal(held, stratified_split(labels, 0.2, seed=1)[1])
    with pytest.raises(ValueError, match="^search_val_fraction=0.01: cannot split 100 samples"):
        stratified_split(labels, 0.01, 0, "search_val_fraction")


# -- spec validation and registry --------------------------------------------------------------

@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_size": 0}, "DataSpec.input_size must be an integer >= 1, got 0"),
        ({"input_size": 2.5}, "DataSpec.input_size must be an integer >= 1"),
        ({"seed": -1}, "DataSpec.seed must be an integer >= 0"),
        ({"search_val_fraction": 1.0}, r"search_val_fraction must be a number in \(0, 1\)"),
        ({"test_fraction": 0}, r"DataSpec.test_fraction must be a number in \(0, 1\)"),
        ({"max_train_samples": 0}, "DataSpec.max_train_samples must be None or an integer >= 1"),
        ({"name": ""}, "DataSpec.name must be a non-empty string"),
        ({"data_dir": 3}, "DataSpec.data_dir must be a path or None"),
        ({"options": {1: 2}}, "DataSpec.options must be a dict with string keys"),
    ],
)
def test_spec_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DataSpec(**kwargs)


def test_spec_is_hashable_and_copies_options(tmp_path: Path) -> None:
    options = {"canvas_size": 32}
    spec = DataSpec(options=options, data_dir=tmp_path)
    options["canvas_size"] = 40
    assert spec.options == {"canvas_size": 32} and spec.data_dir == str(tmp_path)
    assert hash(spec) == hash(DataSpec(options={"canvas_size": 32}, data_dir=str(tmp_path)))


def test_spec_json_round_trip() -> None:
    import json
    from dataclasses import asdict

    spec = DataSpec(name="cluttered_digits", input_size=32, options={"num_clutter": 2},
                    max_train_samples=100)
    again = DataSpec(**json.loads(json.dumps(asdict(spec))))
    assert again == spec and hash(again) == hash(spec)


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown data set 'imagenet' \(known: .*cifar10.*dig"):
        load_data(DataSpec(name="imagenet"))
    assert {"digits", "cifar10", "cifar100", "npz", "cluttered_digits"} <= set(list_datasets())


def test_options_rejected_by_builtin_sets() -> None:
    with pytest.raises(ValueError, match=r"data set 'digits' does not take \['canvas_size'\]"):
        load_data(DataSpec(options={"canvas_size": 32}))


def test_embedded_sets_refuse_a_data_dir() -> None:
    for name in ("digits", "cluttered_digits"):
        with pytest.raises(ValueError, match=rf"data set '{name}' is embedded and reads no files, got '/my/images'"):
            load_data(DataSpec(name=name, data_dir="/my/images"))


def test_register_dataset() -> None:
    def tiny(spec: DataSpec) -> RawData:
        x = np.arange(40 * 3 * 4 * 4, dtype=np.float32).reshape(40, 3, 4, 4)
        return RawData(x, np.arange(40) % 2, num_classes=2)

    register_dataset("tiny_test_set", tiny, overwrite=True)
    data = load_data(DataSpec(name="tiny_test_set", input_size=4))
    assert data.in_chans == 3 and len(data.test) == 8 and len(data.train) == 32
    with pytest.raises(ValueError, match="'tiny_test_set' is already registered"):
        register_dataset("tiny_test_set", tiny)
    with pytest.raises(TypeError, match="must be callable"):
        register_dataset("other", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        register_dataset("", tiny)

    register_dataset("bad_labels",
                     lambda s: RawData(np.zeros((4, 1, 2, 2)), np.array([0, 1, 2, 5]), 3),
                     overwrite=True)
    with pytest.raises(ValueError, match=r"'bad_labels' train: labels outside range 0..2 \("):
        load_data(DataSpec(name="bad_labels"))
    register_dataset("bad_shape", lambda s: RawData(np.zeros((4, 2, 2)), np.zeros(4, int), 3),
                     overwrite=True)
    with pytest.raises(ValueError, match=r"'bad_shape': expected train images \(N, C, H, W\)"):
        load_data(DataSpec(name="bad_shape"))


def test_make_loader_is_seeded() -> None:
    dataset = torch.utils.data.TensorDataset(torch.arange(50))

    def order(seed: int) -> list[int]:
        return [int(v) for (batch,) in make_loader(dataset, 8, True, seed) for v in batch]

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(order(1)) == list(range(50))
    assert [len(b[0]) for b in make_loader(dataset, 8, False, 0, drop_last=True)] == [8] * 6
    assert [int(b[0][0]) for b in make_loader(dataset, 10, False, 0)] == [0, 10, 20, 30, 40]
    # Epochs differ from each other, but the sequence of epochs repeats with the seed.
    loader_a, loader_b = make_loader(dataset, 50, True, 5), make_loader(dataset, 50, True, 5)
    epochs_a = [next(iter(loader_a))[0].tolist() for _ in range(2)]
    epochs_b = [next(iter(loader_b))[0].tolist() for _ in range(2)]
    assert epochs_a == epochs_b and epochs_a[0] != epochs_a[1]
    for bad in (0, -1, 2.0):
        with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
            make_loader(dataset, bad, True, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed must be an integer, got '1'"):
        make_loader(dataset, 4, True, "1")  # type: ignore[arg-type]


# -- CIFAR python pickles ----------------------------------------------------------------------

def _cifar_images(n: int, offset: int, rng: np.random.Generator) -> np.ndarray:
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    data[:, 0] = np.arange(offset, offset + n)  # red pixel (0, 0) identifies the image
    return data


def write_cifar10(root: Path, per_batch: int = 12, protocol: int = 2) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for i in range(1, 6):
        data = _cifar_images(per_batch, (i - 1) * per_batch, rng)
        labels = [int(v) for v in np.arange(per_batch) % 10]
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"batch_label": b"training batch", b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * per_batch}, f, protocol=protocol)
        xs.append(data)
        ys.extend(labels)
    test = _cifar_images(10, 200, rng)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"labels": list(range(10)), b"data": test}, f, protocol=protocol)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f, protocol=protocol)
    return {"x": np.concatenate(xs), "y": np.array(ys), "x_test": test}


def _raw_images(split: torch.utils.data.TensorDataset, mean: tuple, std: tuple) -> np.ndarray:
    scale, shift = torch.tensor(std).view(1, -1, 1, 1), torch.tensor(mean).view(1, -1, 1, 1)
    x = split.tensors[0] * scale + shift
    return np.round(x.numpy() * 255).astype(np.int64)


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_layout_and_split(tmp_path: Path, protocol: int) -> None:
    written = write_cifar10(tmp_path, protocol=protocol)
    data = load_data(DataSpec(name="cifar10", data_dir=str(tmp_path), input_size=32))
    assert (data.num_classes, data.in_chans, len(data.train), len(data.test)) == (10, 3, 60, 10)
    assert data.class_names[0] == "airplane" and data.class_names[9] == "truck"
    raw = _raw_images(data.train, data.mean, data.std)
    ids = raw[:, 0, 0, 0]
    assert sorted(ids.tolist()) == list(range(60))
    # Every loaded image equals its source row: channel planes, row-major.
    expect = written["x"][ids].reshape(-1, 3, 32, 32)
    assert np.array_equal(raw, expect)
    assert np.array_equal(data.train.tensors[1].numpy(), written["y"][ids])
    test_raw = _raw_images(data.test, data.mean, data.std)
    assert np.array_equal(test_raw, written["x_test"].reshape(-1, 3, 32, 32))
    assert data.test.tensors[1].tolist() == list(range(10))
    # The folder itself works too, and resizing happens after loading.
    small = load_data(DataSpec(name="cifar10", data_dir=str(tmp_path / "cifar-10-batches-py")))
    assert small.train.tensors[0].shape == (60, 3, 16, 16)


def test_cifar_python2_module_names(tmp_path: Path) -> None:
    # The official files were pickled by Python 2 / numpy 1, naming numpy.core.multiarray.
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(tmp_path)
    for path in folder.iterdir():
        blob = path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        assert b"numpy.core.multiarray" in blob or path.name == "batches.meta"
        path.write_bytes(blob)
    assert len(load_data(DataSpec(name="cifar10", data_dir=str(folder))).train) == 60


def test_cifar100(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 400), ("test", 50)):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"fine_labels": [i % 100 for i in range(n)],
                         b"coarse_labels": [i % 20 for i in range(n)]}, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                     b"coarse_label_names": [b"x"] * 20}, f)
    data = load_data(DataSpec(name="cifar100", data_dir=str(tmp_path), input_size=8))
    assert (data.num_classes, len(data.train), len(data.test)) == (100, 400, 50)
    assert data.class_names[42] == "c42" and data.train.tensors[0].shape[1:] == (3, 8, 8)
    assert len(data.search_val) == 200


def _rewrite(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def test_cifar_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"DataSpec.data_dir \(--data-dir\) is required for data set 'cifar10'"):
        load_data(DataSpec(name="cifar10"))
    with pytest.raises(ValueError, match=r"cifar10 data_dir \(--data-dir\) .*absent: folder not found"):
        load_data(DataSpec(name="cifar10", data_dir=str(tmp_path / "absent")))
    with pytest.raises(ValueError, match=r"expected folder cifar-10-batches-py/ or the file"):
        load_data(DataSpec(name="cifar10", data_dir=str(tmp_path)))
    written = write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    spec = DataSpec(name="cifar10", data_dir=str(tmp_path))
    batch3 = (folder / "data_batch_3").read_bytes()

    (folder / "data_batch_3").unlink()
    with pytest.raises(ValueError, match=r"cifar10: missing file .*data_batch_3$"):
        load_data(spec)
    (folder / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"cifar10 file .*data_batch_3: not a valid CIFAR pickle"):
        load_data(spec)
    _rewrite(folder / "data_batch_3", {b"data": written["x"][:12]})
    with pytest.raises(ValueError, match=r"data_batch_3: missing key b'labels'"):
        load_data(spec)
    _rewrite(folder / "data_batch_3",
             {b"data": np.zeros((12, 1024), np.uint8), b"labels": [0] * 12})
    with pytest.raises(ValueError, match=r"data_batch_3: expected b'data' as a numeric \(N, 3072"):
        load_data(spec)
    _rewrite(folder / "data_batch_3", {b"data": written["x"][:12], b"labels": [0] * 11})
    with pytest.raises(ValueError, match=r"data_batch_3: expected b'labels' as 12 integers"):
        load_data(spec)
    _rewrite(folder / "data_batch_3", {b"data": written["x"][:12], b"labels": [10] * 12})
    with pytest.raises(ValueError, match=r"data_batch_3: labels outside range 0..9 \(found 10"):
        load_data(spec)
    _rewrite(folder / "data_batch_3", [1, 2, 3])
    with pytest.raises(ValueError, match=r"data_batch_3: expected a pickled dict, got list"):
        load_data(spec)
    # Anything but plain containers and numpy arrays is refused, not executed.
    _rewrite(folder / "data_batch_3", {b"data": datetime.date(2020, 1, 1)})
    with pytest.raises(ValueError, match=r"refusing to load global datetime.date"):
        load_data(spec)
    (folder / "data_batch_3").write_bytes(batch3)
    _rewrite(folder / "batches.meta", {b"label_names": [b"a", b"b"]})
    with pytest.raises(ValueError, match=r"batches.meta: expected 10 class names, got 2"):
        load_data(spec)
    _rewrite(folder / "batches.meta", {b"other": 1})
    with pytest.raises(ValueError, match=r"batches.meta: missing key b'label_names'"):
        load_data(spec)
    with pytest.raises(ValueError, match=r"does not take \['x'\]"):
        load_data(DataSpec(name="cifar10", data_dir=str(tmp_path), options={"x": 1}))


# -- .npz --------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_npz_layouts(tmp_path: Path, layout: str) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(100, 3, 6, 6), dtype=np.uint8)
    if layout == "NHW":
        x = base[:, 0]
    elif layout == "NHWC":
        x = base.transpose(0, 2, 3, 1)
    else:
        x = base
    y = np.arange(100) % 5
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = load_data(DataSpec(name="npz", data_dir=str(tmp_path / "d.npz"), input_size=6))
    channels = 1 if layout == "NHW" else 3
    assert data.in_chans == channels and data.num_classes == 5
    assert len(data.test) == 20 and len(data.train) == 80
    raw = _raw_images(data.train, data.mean, data.std)
    expect = base[:, :channels]
    # Each loaded image is one of the originals in NCHW order.
    originals = {img.tobytes() for img in expect.astype(np.int64)}
    assert all(img.tobytes() in originals for img in raw)


def test_npz_with_test_arrays_and_float_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "split.npz"
    np.savez(path, x_train=rng.normal(size=(40, 2, 5, 5)).astype(np.float32),
             y_train=(np.arange(40) % 4).astype(np.float64),
             x_test=rng.normal(size=(12, 2, 5, 5)), y_test=(np.arange(12) % 6).reshape(-1, 1))
    data = load_data(DataSpec(name="npz", data_dir=str(path), input_size=10))
    assert (len(data.train), len(data.test), data.num_classes, data.in_chans) == (40, 12, 6, 2)
    assert data.test.tensors[0].shape == (12, 2, 10, 10)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"images": np.zeros((4, 3, 3))}, r"expected arrays 'x' and 'y'.*found \['images'\]"),
        ({"x": np.zeros((4, 9)), "y": np.zeros(4)},
         r"expected 'x' as NHW, NHWC or NCHW, got shape \(4, 9\)"),
        ({"x": np.zeros((4, 8, 8, 8)), "y": np.zeros(4)}, "cannot tell the channel axis of 'x'"),
        ({"x": np.full((4, 3, 3), np.nan), "y": np.zeros(4)}, "'x' contains NaN or inf"),
        ({"x": np.zeros((4, 3, 3)), "y": np.zeros(3)}, "expected 'y' as 4 numeric labels"),
        ({"x": np.zeros((4, 3, 3)), "y": np.array([0, 1, -1, 0])},
         "labels outside range: 'y' has -1"),
        ({"x": np.zeros((4, 3, 3)), "y": np.array([0, 0.5, 1, 0])}, "'y' must hold whole-number"),
        ({"x": np.array(["a"] * 4).reshape(4, 1, 1), "y": np.zeros(4)}, "expected numeric 'x'"),
        ({"x_train": np.zeros((4, 3, 3)), "y_train": np.zeros(4), "x_test": np.zeros((2, 3, 3))},
         r"'x_test' and 'y_test' must come together, found only \['x_test'\]"),
        ({"x_train": np.zeros((4, 3, 3)), "y_train": np.zeros(4), "x_test": np.zeros((2, 3, 4, 4)),
          "y_test": np.zeros(2)}, "train has 1 channels, test has 3"),
    ],
)
def test_npz_errors(tmp_path: Path, arrays: dict, message: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        load_data(DataSpec(name="npz", data_dir=str(tmp_path / "bad.npz")))


def test_npz_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"DataSpec.data_dir \(--data-dir\) is required for data set 'npz'"):
        load_data(DataSpec(name="npz"))
    with pytest.raises(ValueError, match=r"npz data_dir .*nope.npz: file not found"):
        load_data(DataSpec(name="npz", data_dir=str(tmp_path / "nope.npz")))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"npz file .*junk.npz: cannot be read as .npz"):
        load_data(DataSpec(name="npz", data_dir=str(tmp_path / "junk.npz")))
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="expected a .npz archive, got a single array"):
        load_data(DataSpec(name="npz", data_dir=str(tmp_path / "single.npy")))
    np.savez(tmp_path / "obj.npz", x=np.array([None] * 4, dtype=object), y=np.zeros(4))
    with pytest.raises(ValueError, match="obj.npz: unreadable array"):
        load_data(DataSpec(name="npz", data_dir=str(tmp_path / "obj.npz")))
    np.savez(tmp_path / "few.npz", x=np.zeros((4, 3, 3)), y=np.arange(4))
    with pytest.raises(ValueError, match=r"^test_fraction=0.2: cannot split 4 samples stratified"):
        load_data(DataSpec(name="npz", data_dir=str(tmp_path / "few.npz")))


def test_stratified_split_equals_scikit_learn_index_for_index():
    """Run folders were split by sklearn's train_test_split: the numpy version must make the
    same splits (fractions and counts, sorted and unsorted labels, large seeds)."""
    from sklearn.model_selection import train_test_split

    from stitchnas.data.splits import stratified_split

    rng = np.random.default_rng(0)
    compared = 0
    for _ in range(600):
        n, classes = int(rng.integers(4, 300)), int(rng.integers(1, 12))
        y = rng.integers(0, classes, n)
        if rng.random() < 0.3:
            y = np.sort(y)
        held = float(rng.uniform(0.01, 0.99)) if rng.random() < 0.6 else int(rng.integers(1, n))
        seed = int(rng.integers(0, 2**40))
        try:
            kept, out = train_test_split(np.arange(n), test_size=held, stratify=y, random_state=seed % 2**32)
        except ValueError:
            with pytest.raises(ValueError, match=r"cannot split \d+ samples stratified by class"):
                stratified_split(y, held, seed, "x")
            continue
        mine = stratified_split(y, held, seed, "x")
        assert np.array_equal(mine[0], np.sort(kept)) and np.array_equal(mine[1], np.sort(out))
        compared += 1
    assert compared > 400


def test_digits_are_read_without_importing_scikit_learn():
    import subprocess
    import sys

    code = ("import sys, numpy as np; from stitchnas.data import DataSpec, load_data; d = load_data(DataSpec()); "
            "print('sklearn' in sys.modules, len(d.train), len(d.test))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "1437", "360"]
    from sklearn.datasets import load_digits

    from stitchnas.data.sources import _load_digits

    bunch, raw = load_digits(), _load_digits(DataSpec())
    assert np.array_equal(raw.x_train, (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None])
    assert np.array_equal(raw.y_train, bunch.target)


@pytest.mark.parametrize("input_size", [8, 16])
def test_one_channel_images_have_nchw_strides(input_size):
    """numpy leaves a size-1 axis' stride arbitrary; channels-last strides would make torch run
    every convolution channels-last (other results in the last bits than runs written before)."""
    data = load_data(DataSpec(input_size=input_size, max_train_samples=200))
    for split in (data.search_train, data.search_val, data.test):
        x = split.tensors[0]
        assert x.stride()[1:] == (input_size * input_size, input_size, 1)
    conv = torch.nn.Conv2d(1, 4, 3)
    assert not conv(data.test.tensors[0][:4]).is_contiguous(memory_format=torch.channels_last)


def test_mirror_invariant_option_overrides_the_data_sets_own(tmp_path):
    path = tmp_path / "digits.npz"
    np.savez(path, x=np.random.default_rng(0).random((60, 1, 8, 8), dtype=np.float32), y=np.repeat(np.arange(3), 20))
    assert load_data(DataSpec("npz", data_dir=str(path), input_size=8)).train.mirror_invariant
    spec = DataSpec("npz", data_dir=str(path), input_size=8, options={"mirror_invariant": False})
    assert not load_data(spec).train.mirror_invariant
    assert load_data(DataSpec(input_size=8, options={"mirror_invariant": True})).search_train.mirror_invariant
    with pytest.raises(ValueError, match=r"^DataSpec.options \(--data-option\): mirror_invariant must be true or false, got 'no'$"):
        load_data(DataSpec(input_size=8, options={"mirror_invariant": "no"}))


def test_cli_records_data_dir_as_an_absolute_path(tmp_path, monkeypatch):
    import argparse

    from stitchnas.cli.options import data_spec_from_args

    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(dataset="npz", data_dir="sub/x.npz", input_size=8, seed=0, data_option=[], workers=None)
    assert data_spec_from_args(args).data_dir == str(tmp_path / "sub" / "x.npz")


def test_a_run_recorded_with_a_relative_data_dir_resumes_with_the_absolute_one(tmp_path, monkeypatch):
    """Run folders written before --data-dir was recorded absolute hold the path as given."""
    import json

    from stitchnas.core.runs import prepare_run_dir

    monkeypatch.chdir(tmp_path)
    old = {"kind": "k", "data": {"name": "npz", "data_dir": "sub/x.npz"}}
    prepare_run_dir(tmp_path / "run", old, resume=False)
    now = {"kind": "k", "data": {"name": "npz", "data_dir": str(tmp_path / "sub" / "x.npz")}}
    assert prepare_run_dir(tmp_path / "run", now, resume=True) == tmp_path / "run"
    assert json.loads((tmp_path / "run" / "run_config.json").read_text())["data"]["data_dir"] == "sub/x.npz"
    other = {"kind": "k", "data": {"name": "npz", "data_dir": str(tmp_path / "other.npz")}}
    with pytest.raises(ValueError, match=r"differing: \['data'\]"):
        prepare_run_dir(tmp_path / "run", other, resume=True)


def test_a_relative_data_dir_given_through_the_api_resumes(tmp_path, monkeypatch):
    from stitchnas.core.runs import prepare_run_dir

    monkeypatch.chdir(tmp_path)
    config = {"kind": "k", "data": {"name": "npz", "data_dir": "sub/x.npz"}}
    prepare_run_dir(tmp_path / "run", config, resume=False)
    assert prepare_run_dir(tmp_path / "run", config, resume=True) == tmp_path / "run"
