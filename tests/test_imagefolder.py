"""The ``imagefolder`` data set: real image files (PNG, JPEG, ...) in class sub-folders."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stitchnas.cli import main
from stitchnas.core.training import AUGMENT_STREAM, batches_for, epoch_generator, split_images
from stitchnas.data import DataSpec, list_datasets, load_data
from stitchnas.data.imagefolder import decode_image

LOGGER = "stitchnas.data.imagefolder"


def _pixels(rng: np.random.Generator, size: tuple[int, int], channels: int) -> np.ndarray:
    shape = (size[1], size[0]) if channels == 1 else (size[1], size[0], channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def write_image(path: Path, kind: str, rng: np.random.Generator, size: tuple[int, int] = (12, 10)) -> None:
    """One image file in a real format; ``kind`` names the Pillow mode (and format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "L":
        Image.fromarray(_pixels(rng, size, 1), mode="L").save(path, "PNG")
    elif kind == "RGB":  # JPEG
        Image.fromarray(_pixels(rng, size, 3), mode="RGB").save(path, "JPEG", quality=90)
    elif kind == "RGBA":
        Image.fromarray(_pixels(rng, size, 4), mode="RGBA").save(path, "PNG")
    elif kind == "LA":
        Image.fromarray(_pixels(rng, size, 1), mode="L").convert("LA").save(path, "PNG")
    elif kind == "P":  # colour palette
        Image.fromarray(_pixels(rng, size, 3), mode="RGB").quantize(16).save(path, "PNG")
    elif kind == "P_transparent":  # palette with a transparent index
        image = Image.fromarray(_pixels(rng, size, 3), mode="RGB").quantize(16)
        image.save(path, "PNG", transparency=0)
    elif kind == "I;16":  # 16-bit grey PNG
        wide = rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16)
        Image.fromarray(wide).save(path, "PNG")
    elif kind == "CMYK":  # JPEG
        Image.fromarray(_pixels(rng, size, 4), mode="CMYK").save(path, "JPEG")
    elif kind == "L_jpeg":
        Image.fromarray(_pixels(rng, size, 1), mode="L").save(path, "JPEG")
    else:
        raise AssertionError(kind)


def write_broken(folder: Path, rng: np.random.Generator) -> list[Path]:
    """A zero-byte file, a garbage file and a truncated PNG, in sorted path order."""
    folder.mkdir(parents=True, exist_ok=True)
    empty, garbage, truncated = folder / "broken_0_empty.png", folder / "broken_1_garbage.jpg", \
        folder / "broken_2_truncated.png"
    empty.write_bytes(b"")
    garbage.write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    write_image(truncated, "RGB", rng, (40, 40))
    Image.open(truncated).save(truncated, "PNG")
    truncated.write_bytes(truncated.read_bytes()[:200])
    return [empty, garbage, truncated]


MIXED = ("L", "RGB", "RGBA", "LA", "P", "P_transparent", "I;16", "CMYK")


def write_folder(root: Path, classes: dict[str, int], seed: int = 0, kinds: tuple[str, ...] = MIXED) -> None:
    """``root/<class>/<i>.<ext>`` with ``classes[name]`` images each, cycling through ``kinds``."""
    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        for i in range(count):
            kind = kinds[i % len(kinds)]
            ext = ".jpg" if kind in ("RGB", "CMYK", "L_jpeg") else ".png"
            size = (12 + i % 3, 10 + i % 4)  # several sizes in one folder
            write_image(root / name / f"{i:03d}{ext}", kind, rng, size)


def all_labels(data) -> np.ndarray:
    return np.concatenate([data.train.tensors[1].numpy(), data.test.tensors[1].numpy()])


def spec(root: Path, **kwargs) -> DataSpec:
    kwargs.setdefault("input_size", 8)
    return DataSpec(name="imagefolder", data_dir=str(root), **kwargs)


# -- loading -----------------------------------------------------------------------------------

def test_single_folder_class_order_counts_channels_and_shape(tmp_path: Path) -> None:
    assert "imagefolder" in list_datasets()
    write_folder(tmp_path, {"dog": 10, "cat": 8, "Ant": 9})
    rng = np.random.default_rng(5)
    write_image(tmp_path / "cat" / "nested" / "deep.PNG", "L", rng)  # sub-folders, any case of extension
    write_image(tmp_path / ".cache" / "x.png", "RGB", rng)  # hidden folder: not a class
    write_image(tmp_path / "dog" / ".hidden.png", "RGB", rng)  # hidden file: skipped
    (tmp_path / "dog" / "notes.txt").write_text("not an image")  # other extensions: ignored
    write_image(tmp_path / "loose.png", "RGB", rng)  # files next to the class folders: ignored
    data = load_data(spec(tmp_path))
    # Sorted folder names, as torchvision's ImageFolder (upper case sorts first).
    assert data.class_names == ("Ant", "cat", "dog") and data.num_classes == 3
    assert data.in_chans == 3 and data.input_size == 8  # colour images present: RGB
    assert np.bincount(all_labels(data)).tolist() == [9, 9, 10]
    assert len(data.train) + len(data.test) == 28
    assert len(data.test) == 6  # stratified test_fraction=0.2 of 28 (ceil)
    assert data.train.tensors[0].shape == (22, 3, 8, 8) and data.test.tensors[0].shape == (6, 3, 8, 8)
    assert data.train.tensors[0].dtype == torch.float32
    assert torch.isfinite(data.train.tensors[0]).all()


def test_channels_default_and_option(tmp_path: Path) -> None:
    grey = tmp_path / "grey"
    write_folder(grey, {"a": 5, "b": 5}, kinds=("L", "LA", "I;16", "L_jpeg"))
    assert load_data(spec(grey)).in_chans == 1  # only grey modes: one channel
    assert load_data(spec(grey, options={"channels": 3})).in_chans == 3
    colour = tmp_path / "colour"
    write_folder(colour, {"a": 5, "b": 5})
    assert load_data(spec(colour)).in_chans == 3
    forced = load_data(spec(colour, options={"channels": 1}))
    assert forced.in_chans == 1 and forced.train.tensors[0].shape[1:] == (1, 8, 8)


def test_decode_modes_exact_values(tmp_path: Path) -> None:
    # RGBA composited on black: transparent -> 0 whatever its colour; opaque kept; half scaled.
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 100, 50, 0)
    rgba[0, 1] = (200, 100, 50, 255)
    rgba[1, 0] = (200, 100, 50, 128)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    out, colour = decode_image(tmp_path / "rgba.png", 2)
    assert colour and out.shape == (3, 2, 2) and out.dtype == np.uint8
    assert out[:, 0, 0].tolist() == [0, 0, 0] and out[:, 0, 1].tolist() == [200, 100, 50]
    assert np.abs(out[:, 1, 0].astype(int) - [100, 50, 25]).max() <= 1
    # 16-bit grey scaled from 0..65535, not clipped at 255 as Pillow's convert("L") would.
    wide = np.array([[0, 257 * 100], [65535, 32768]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    out, colour = decode_image(tmp_path / "wide.png", 2)
    assert not colour and out.shape == (1, 2, 2) and out[0].tolist() == [[0, 100], [255, 128]]
    # CMYK as Pillow converts it; grey repeated over three channels when asked for RGB.
    Image.new("CMYK", (2, 2), (0, 255, 0, 0)).save(tmp_path / "cmyk.tif")
    out, colour = decode_image(tmp_path / "cmyk.tif", 2)
    assert colour and out[:, 0, 0].tolist() == [255, 0, 255]
    Image.new("LA", (2, 2), (90, 255)).save(tmp_path / "la.png")
    out, colour = decode_image(tmp_path / "la.png", 2, channels=3)
    assert not colour and out.shape == (3, 2, 2) and (out == 90).all()
    # Colour to grey by ITU-R 601-2 luma.
    Image.new("RGB", (2, 2), (255, 0, 0)).save(tmp_path / "red.bmp")
    out, _ = decode_image(tmp_path / "red.bmp", 2, channels=1)
    assert out.shape == (1, 2, 2) and (out == 76).all()


def test_palette_transparency_is_black_after_load(tmp_path: Path) -> None:
    palette = Image.new("P", (2, 2))
    palette.putpalette([255, 255, 255, 0, 255, 0] + [0] * 762)  # index 0 white but transparent
    palette.putpixel((1, 1), 1)
    palette.save(tmp_path / "p.png", transparency=0)
    out, _ = decode_image(tmp_path / "p.png", 2)
    assert out[:, 0, 0].tolist() == [0, 0, 0] and out[:, 1, 1].tolist() == [0, 255, 0]


def test_resize_stretch_and_center_crop(tmp_path: Path) -> None:
    wide = np.zeros((8, 24), dtype=np.uint8)
    wide[:, 8:16] = 255  # a white centre square between black sides
    Image.fromarray(wide, mode="L").save(tmp_path / "wide.png")
    stretched, _ = decode_image(tmp_path / "wide.png", 4)
    cropped, _ = decode_image(tmp_path / "wide.png", 4, center_crop=True)
    assert (cropped == 255).all()
    assert stretched[0, :, 0].max() < 50 and stretched[0, :, 1:3].min() > 100
    write_folder(tmp_path / "set", {"a": 5, "b": 5})
    data = load_data(spec(tmp_path / "set", input_size=6, options={"center_crop": True}))
    assert data.train.tensors[0].shape[1:] == (3, 6, 6)


def test_broken_files_are_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_folder(tmp_path, {"a": 6, "b": 6})
    broken = write_broken(tmp_path / "a", np.random.default_rng(1))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        data = load_data(spec(tmp_path))
    assert len(data.train) + len(data.test) == 12
    assert np.bincount(all_labels(data)).tolist() == [6, 6]
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "\n" not in message
    assert message.startswith(f"imagefolder {tmp_path}: skipped 3 unreadable files (first: {broken[0]}: empty file)")


def test_truncated_and_garbage_reasons(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_folder(tmp_path, {"a": 4, "b": 4})
    rng = np.random.default_rng(2)
    garbage = tmp_path / "b" / "0_garbage.png"
    garbage.write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        load_data(spec(tmp_path))
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    assert f"skipped 1 unreadable files (first: {garbage}: not an image Pillow can read)" in record.getMessage()


def test_train_val_layout_vs_single_folder(tmp_path: Path) -> None:
    split = tmp_path / "split"
    write_folder(split / "train", {"x": 8, "y": 6}, seed=1)
    write_folder(split / "val", {"x": 3, "y": 2}, seed=2)
    write_folder(split / "test", {"z": 3}, seed=3)  # other folders next to train/ and val/: ignored
    data = load_data(spec(split))
    assert data.class_names == ("x", "y")
    assert len(data.train) == 14 and len(data.test) == 5  # val/ is the test split, as is
    assert np.bincount(data.test.tensors[1].numpy()).tolist() == [3, 2]
    assert (len(data.search_train), len(data.search_val)) == (7, 7)
    # One folder: stratified test split by the spec's seed, reproducible.
    single = tmp_path / "single"
    write_folder(single, {"x": 10, "y": 10})
    first, again = load_data(spec(single, seed=3)), load_data(spec(single, seed=3))
    assert len(first.test) == 4 and np.bincount(first.test.tensors[1].numpy()).tolist() == [2, 2]
    assert torch.equal(first.train.tensors[0], again.train.tensors[0])
    other = load_data(spec(single, seed=4))
    assert not torch.equal(first.test.tensors[0], other.test.tensors[0])


def test_workers_give_the_same_tensors(tmp_path: Path) -> None:
    write_folder(tmp_path, {"a": 40, "b": 35}, seed=7)  # > 2 decode batches per worker
    write_broken(tmp_path / "b", np.random.default_rng(3))
    serial = load_data(spec(tmp_path, options={"workers": 0}))
    parallel = load_data(spec(tmp_path, options={"workers": 2}))
    for split in ("train", "test", "search_train", "search_val"):
        for a, b in zip(getattr(serial, split).tensors, getattr(parallel, split).tensors):
            assert torch.equal(a, b), split
    assert serial.mean == parallel.mean and serial.class_names == parallel.class_names


# -- bad input ---------------------------------------------------------------------------------

def _one_line_error(data_spec: DataSpec) -> str:
    with pytest.raises(ValueError) as info:
        load_data(data_spec)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_bad_layouts_are_one_line_naming_the_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    flat = tmp_path / "flat"  # images but no class folders
    write_image(flat / "a.png", "RGB", rng)
    message = _one_line_error(spec(flat))
    assert f"imagefolder {flat}: no class sub-folders" in message and "<class>" in message

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".git").mkdir()  # hidden folders are not classes
    assert f"imagefolder {empty}: no class sub-folders" in _one_line_error(spec(empty))

    no_images = tmp_path / "no_images"
    write_folder(no_images, {"a": 3})
    (no_images / "b").mkdir()
    (no_images / "b" / "readme.txt").write_text("x")
    message = _one_line_error(spec(no_images))
    assert f"imagefolder {no_images / 'b'}: class 'b' has no image files" in message and ".jpg" in message

    unreadable = tmp_path / "unreadable"
    write_folder(unreadable, {"a": 3})
    write_broken(unreadable / "b", rng)
    message = _one_line_error(spec(unreadable))
    assert f"imagefolder {unreadable / 'b'}: class 'b' has no readable image (all 3" in message

    mismatch = tmp_path / "mismatch"
    write_folder(mismatch / "train", {"a": 3, "b": 3, "c": 3})
    write_folder(mismatch / "val", {"a": 2, "b": 2, "d": 2})
    message = _one_line_error(spec(mismatch))
    assert f"imagefolder {mismatch}: train/ and val/ must hold the same class folders" in message
    assert "only in train/: ['c']" in message and "only in val/: ['d']" in message

    no_val = tmp_path / "no_val"
    write_folder(no_val / "train", {"a": 3, "b": 3})
    assert f"imagefolder {no_val}: found train/ but no val/" in _one_line_error(spec(no_val))

    val_unreadable = tmp_path / "val_unreadable"
    write_folder(val_unreadable / "train", {"a": 3, "b": 3})
    write_folder(val_unreadable / "val", {"a": 2})
    write_broken(val_unreadable / "val" / "b", rng)
    assert f"imagefolder {val_unreadable / 'val' / 'b'}: class 'b' has no readable image" in \
        _one_line_error(spec(val_unreadable))


def test_bad_data_dir_and_options(tmp_path: Path) -> None:
    assert "DataSpec.data_dir (--data-dir) is required for data set 'imagefolder'" in \
        _one_line_error(DataSpec(name="imagefolder"))
    assert f"imagefolder data_dir (--data-dir) {tmp_path / 'absent'}: folder not found" in \
        _one_line_error(spec(tmp_path / "absent"))
    write_folder(tmp_path / "ok", {"a": 3, "b": 3})
    assert "channels must be 1 or 3, got 4" in _one_line_error(spec(tmp_path / "ok", options={"channels": 4}))
    assert "workers must be an integer >= 0, got -1" in \
        _one_line_error(spec(tmp_path / "ok", options={"workers": -1}))
    assert "center_crop must be true or false" in \
        _one_line_error(spec(tmp_path / "ok", options={"center_crop": "yes"}))
    assert "does not take ['canvas_size']" in \
        _one_line_error(spec(tmp_path / "ok", options={"canvas_size": 24}))


def test_image_folder_given_to_cifar_loader(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_folder(tmp_path, {"a": 3, "b": 3})
    message = _one_line_error(DataSpec(name="cifar10", data_dir=str(tmp_path)))
    assert f"cifar10 data_dir {tmp_path}: this looks like an image folder" in message
    assert "use --dataset imagefolder" in message
    split = tmp_path / "split"
    write_folder(split / "train", {"a": 3})
    write_folder(split / "val", {"a": 3})
    assert "looks like an image folder" in _one_line_error(DataSpec(name="cifar100", data_dir=str(split)))
    code = main(["search", "pooling", "--dataset", "cifar10", "--data-dir", str(tmp_path),
                 "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "use --dataset imagefolder" in err[0]


# -- end to end --------------------------------------------------------------------------------

def test_search_pooling_on_an_image_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "images"
    write_folder(data, {"circle": 12, "square": 12, "triangle": 12})
    write_broken(data / "square", np.random.default_rng(6))
    out = tmp_path / "run"
    code = main(["search", "pooling", "--dataset", "imagefolder", "--data-dir", str(data), "--epochs", "1",
                 "--input-size", "8", "--width-scale", "0.25", "--candidates", "2", "--out", str(out),
                 "--data-option", "workers=2", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = (out / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + 2 candidates


# -- streaming from disk -----------------------------------------------------------------------

SPLITS = ("search_train", "search_val", "train", "test")


def _passes(data, split: str, device: torch.device = torch.device("cpu")) -> list[list[tuple[torch.Tensor, ...]]]:
    """Every batch of one split: evaluation order, and two seeded training passes (shuffled, augmented)."""
    batches = batches_for(getattr(data, split), device)
    return [
        list(batches.iterate(7)),
        list(batches.iterate(8, epoch_generator(3, 1), drop_last=True, augment="auto",
                             aug_generator=epoch_generator(3, 1, AUGMENT_STREAM))),
        list(batches.iterate(5, epoch_generator(3, 2), augment="rrc_flip",
                             aug_generator=epoch_generator(3, 2, AUGMENT_STREAM))),
    ]


def assert_same_batches(memory, streamed) -> None:
    assert not memory.streamed and streamed.streamed
    assert (memory.in_chans, memory.class_names, memory.mean, memory.std) == \
        (streamed.in_chans, streamed.class_names, streamed.mean, streamed.std)
    for split in SPLITS:
        assert len(getattr(memory, split)) == len(getattr(streamed, split)), split
        for one, other in zip(_passes(memory, split), _passes(streamed, split), strict=True):
            assert len(one) == len(other) > 0, split
            for (x, y), (xs, ys) in zip(one, other):
                assert torch.equal(x, xs) and torch.equal(y, ys), split


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_folder_gives_the_in_memory_batches(tmp_path: Path, workers: int) -> None:
    write_folder(tmp_path, {"a": 20, "b": 17, "c": 12}, seed=8)
    write_broken(tmp_path / "b", np.random.default_rng(9))  # empty, garbage, truncated PNG: all skipped
    memory = load_data(spec(tmp_path, seed=2, options={"stream": False}))
    streamed = load_data(spec(tmp_path, seed=2, options={"stream": True, "workers": workers}))
    assert "(streamed from disk)" in streamed.describe() and "streamed" not in memory.describe()
    assert_same_batches(memory, streamed)
    # the seeded batch SN-Net's least-squares init takes
    order = torch.randperm(len(memory.search_train), generator=epoch_generator(0, 0, 4))[:9]
    assert torch.equal(split_images(memory.search_train, order), split_images(streamed.search_train, order))
    # a second pass over a split while one is open (its own loader) and a pass abandoned half way
    outer = batches_for(streamed.train, torch.device("cpu")).iterate(4)
    first = next(outer)
    inner = [x for x, _ in batches_for(streamed.train, torch.device("cpu")).iterate(4)]
    assert torch.equal(first[0], inner[0]) and all(torch.equal(x, y) for (x, _), y in zip(outer, inner[1:], strict=True))
    half = batches_for(streamed.test, torch.device("cpu")).iterate(3)
    next(half)
    del half
    assert_same_batches(memory, streamed)


@pytest.mark.gpu  # scripts/gpu_check.sh
def test_streamed_batches_on_cuda_equal_the_in_memory_ones(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.fail("needs a CUDA device")
    write_folder(tmp_path, {"a": 20, "b": 20}, seed=5)
    memory = load_data(spec(tmp_path, input_size=80, options={"stream": False}))  # > 64 px: rrc_flip
    streamed = load_data(spec(tmp_path, input_size=80, options={"stream": True, "workers": 2}))
    cuda = torch.device("cuda")
    for split in SPLITS:
        for one, other in zip(_passes(memory, split, cuda), _passes(streamed, split, cuda), strict=True):
            for (x, y), (xs, ys) in zip(one, other, strict=True):
                assert xs.device.type == "cuda" and torch.equal(x, xs) and torch.equal(y, ys), split


def test_streamed_grey_layouts_limits_and_given_normalisation(tmp_path: Path) -> None:
    grey = tmp_path / "grey"
    write_folder(grey, {"a": 6, "b": 6}, kinds=("L", "LA", "I;16", "L_jpeg"))
    split = tmp_path / "split"
    write_folder(split / "train", {"x": 8, "y": 6}, seed=1)
    write_folder(split / "val", {"x": 4, "y": 3}, seed=2)
    cases = [(grey, {}, {}), (grey, {"channels": 3, "center_crop": True}, {}),
             (tmp_path / "split", {"channels": 1}, {"max_test_samples": 4}),
             (tmp_path / "split", {}, {"max_train_samples": 10, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.3, 0.25)})]
    for root, options, kwargs in cases:
        memory = load_data(spec(root, options={"stream": False, **options}, **kwargs))
        streamed = load_data(spec(root, options={"stream": True, **options}, **kwargs))
        assert_same_batches(memory, streamed)
    assert load_data(spec(grey, options={"stream": True})).in_chans == 1


def test_streamed_statistics_from_a_seeded_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stitchnas.data import base

    write_folder(tmp_path, {"a": 10, "b": 10}, seed=4)
    memory = load_data(spec(tmp_path, options={"stream": False}))
    monkeypatch.setattr(base, "_EXACT_STATS_BYTES", 0)  # float64 sums over chunks: equal up to rounding
    chunked = load_data(spec(tmp_path, options={"stream": True}))
    np.testing.assert_allclose(chunked.mean + chunked.std, memory.mean + memory.std, rtol=1e-12)
    monkeypatch.setattr(base, "STATS_SAMPLE", 6)  # a seeded sample of 6 of the 16 training images
    sampled = load_data(spec(tmp_path, options={"stream": True}))
    assert sampled.mean == load_data(spec(tmp_path, options={"stream": True})).mean != memory.mean


def test_stream_auto_follows_the_available_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    from stitchnas.data import imagefolder

    write_folder(tmp_path, {"a": 5, "b": 5})
    need = 10 * 3 * 8 * 8 * 4  # float32 bytes of the whole set (3 channels assumed)
    for available, streamed in ((int(need / imagefolder.STREAM_MEMORY_FRACTION), False), (need * 3, True)):
        monkeypatch.setattr(imagefolder, "available_memory", lambda available=available: available)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=LOGGER):
            assert load_data(spec(tmp_path)).streamed is streamed  # the default is stream=auto
        how = "streamed from disk by 0 workers" if streamed else "decoded into memory"
        assert any(f"10 image files, {how} (stream=auto: float32 tensors of" in r.getMessage()
                   for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert imagefolder.available_memory() is None or imagefolder.available_memory() > 0


def test_streamed_broken_files_are_skipped_with_the_same_warning(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    write_folder(tmp_path, {"a": 6, "b": 6})
    broken = write_broken(tmp_path / "a", np.random.default_rng(1))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        data = load_data(spec(tmp_path, options={"stream": True, "workers": 2}))
    assert len(data.train) + len(data.test) == 12
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    assert record.getMessage().startswith(
        f"imagefolder {tmp_path}: skipped 3 unreadable files (first: {broken[0]}: empty file)")


def test_a_file_failing_while_streaming_raises_one_line_naming_it(tmp_path: Path) -> None:
    from stitchnas.core.streaming import UnreadableImage

    write_folder(tmp_path / "train", {"a": 4, "b": 4})
    write_folder(tmp_path / "val", {"a": 2, "b": 2})
    late = tmp_path / "val" / "b" / "late.jpg"  # its header is whole: only decoding finds the damage
    write_image(late, "RGB", np.random.default_rng(0), (64, 64))
    late.write_bytes(late.read_bytes()[:len(late.read_bytes()) * 4 // 5])
    data = load_data(spec(tmp_path, options={"stream": True, "workers": 2}))
    assert len(data.test) == 5
    with pytest.raises(UnreadableImage) as info:
        for _ in batches_for(data.test, torch.device("cpu")).iterate(2):
            pass
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"imagefolder {late}: ") and "truncated" in message
    assert len(list(batches_for(data.train, torch.device("cpu")).iterate(3))) == 3  # the loader goes on


def test_streamed_split_ships_as_paths(tmp_path: Path) -> None:
    import pickle

    from stitchnas.search.candidates import ship_split, unship_split

    write_folder(tmp_path, {"a": 30, "b": 30}, kinds=("RGB",))
    memory = load_data(spec(tmp_path, input_size=32, options={"stream": False}))
    streamed = load_data(spec(tmp_path, input_size=32, options={"stream": True}))
    shipped = ship_split(memory.search_val)
    assert all(torch.equal(a, b) for a, b in zip(shipped.tensors, memory.search_val.tensors, strict=True))
    assert shipped.mirror_invariant == getattr(memory.search_val, "mirror_invariant", True)
    assert ship_split(streamed.search_val) is streamed.search_val
    wire = pickle.dumps(ship_split(streamed.search_val))
    assert len(wire) < len(pickle.dumps(shipped)) / 4  # file names, not pixels
    received = unship_split(pickle.loads(wire))
    for (x, y), (xs, ys) in zip(batches_for(memory.search_val, torch.device("cpu")).iterate(16),
                                batches_for(received, torch.device("cpu")).iterate(16), strict=True):
        assert torch.equal(x, xs) and torch.equal(y, ys)


def test_search_pooling_streamed_equals_in_memory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    data = tmp_path / "images"
    write_folder(data, {"circle": 12, "square": 12, "triangle": 12})
    write_broken(data / "square", np.random.default_rng(6))
    runs = {}
    for name, options in (("memory", ["--data-option", "stream=false"]),
                          ("streamed", ["--data-option", "stream=true", "--workers", "2"])):
        out = tmp_path / name
        code = main(["search", "pooling", "--dataset", "imagefolder", "--data-dir", str(data), "--epochs", "1",
                     "--input-size", "8", "--width-scale", "0.25", "--candidates", "2", "--out", str(out),
                     "--no-progress", *options])
        assert code == 0, capsys.readouterr().err
        runs[name] = out
    rows = {name: [row.split(",")[:-1] for row in (out / "results.csv").read_text().splitlines()]
            for name, out in runs.items()}  # all but "seconds" (wall time)
    assert len(rows["memory"]) == 3 and rows["memory"] == rows["streamed"]
    # the same training: the same supernet, bit for bit
    assert (runs["memory"] / "supernet.pt").read_bytes() == (runs["streamed"] / "supernet.pt").read_bytes()
    options = json.loads((runs["streamed"] / "run_config.json").read_text())["data"]["options"]
    assert options == {"stream": True, "workers": 2}


def test_bad_stream_and_workers_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_folder(tmp_path / "ok", {"a": 3, "b": 3})
    assert "stream must be true, false or auto, got 'yes'" in \
        _one_line_error(spec(tmp_path / "ok", options={"stream": "yes"}))
    for bad, wanted in ((["--data-option", "stream=maybe"], "stream must be true, false or auto, got 'maybe'"),
                        (["--workers", "-1"], "--workers: expected an integer >= 0, got '-1'"),
                        (["--workers", "two"], "--workers: expected an integer >= 0, got 'two'"),
                        (["--workers", "2", "--data-option", "workers=3"], "--workers 2 and --data-option workers=3")):
        code = main(["search", "pooling", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "ok"),
                     "--out", str(tmp_path / "run"), "--no-progress", *bad])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and wanted in err[0], err
