from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from stitchnas.search.pareto import pareto_front
from stitchnas.search.plots import pareto_plot_data, plot_matrix, plot_pareto

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    blob = path.read_bytes()
    assert blob[:8] == PNG_MAGIC and blob[12:16] == b"IHDR"
    width, height = struct.unpack(">II", blob[16:24])
    return width, height


def test_importing_plots_does_not_import_matplotlib() -> None:
    import subprocess

    code = "import sys, stitchnas.search.plots; print('matplotlib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_pareto_plot_data() -> None:
    flops = [30e6, 10e6, 20e6, None, 10e6, 25e6]
    acc = [0.9, 0.7, 0.85, 0.99, 0.6, float("nan")]
    front = pareto_front(flops, acc)
    data = pareto_plot_data(flops, acc, front, labels=list("abcdef"), default_idx=2)
    assert data.mflops.tolist() == [30.0, 10.0, 20.0, 10.0]
    assert data.front_mflops.tolist() == [10.0, 20.0, 30.0]
    assert data.front_accuracy.tolist() == [0.7, 0.85, 0.9]
    assert data.front_labels == ("b", "c", "a")
    assert data.default_point == (20.0, 0.85) and data.default_label == "c"
    assert data.num_hidden == 2
    no_labels = pareto_plot_data(flops, acc, front[::-1])
    assert no_labels.front_labels == ("", "", "") and no_labels.default_point is None
    assert no_labels.front_mflops.tolist() == [10.0, 20.0, 30.0]  # re-sorted by FLOPs


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"acc": [0.1]}, "flops and acc differ in length: 2 != 1"),
        ({"labels": ["a"]}, "labels has 1 entries for 2 candidates"),
        ({"front_idx": [2]}, r"front_idx entry must be an index in \[0, 2\), got 2"),
        ({"default_idx": -1}, r"default_idx must be an index in \[0, 2\), got -1"),
        ({"flops": [1.0, None], "front_idx": [1]},
         r"front_idx includes candidates without finite values: \[1\]"),
        ({"flops": [1.0, None], "front_idx": [0], "default_idx": 1},
         "default_idx=1 points to a candidate without finite"),
        ({"flops": ["x", 1.0]}, "flops must hold numbers or None"),
    ],
)
def test_pareto_plot_data_errors(kwargs: dict, message: str) -> None:
    args = {"flops": [1e6, 2e6], "acc": [0.5, 0.6], "front_idx": [0, 1]} | kwargs
    with pytest.raises(ValueError, match=message):
        pareto_plot_data(**args)


def test_plot_pareto_writes_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    flops = rng.uniform(1e6, 50e6, size=36)
    acc = rng.uniform(0.8, 0.95, size=36)
    path = tmp_path / "front.png"
    out = plot_pareto(path, flops, acc, pareto_front(flops, acc),
                      labels=[f"[{i}]" for i in range(36)], default_idx=5,
                      title="ResNet20 / digits")
    assert out == path
    width, height = png_size(path)
    assert width > 300 and height > 200
    assert path.stat().st_size > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["front.png"]  # no temp files left
    # Rewriting replaces the file in place.
    plot_pareto(path, flops[:3], acc[:3], pareto_front(flops[:3], acc[:3]))
    assert png_size(path)[0] > 300


def test_plot_matrix_writes_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    matrix = rng.dirichlet(np.ones(4), size=36)
    matrix[0, 0] = np.nan
    path = tmp_path / "assign.png"
    plot_matrix(path, matrix, [f"cfg{i}" for i in range(36)], [f"M{j}" for j in range(4)],
                title="BMS assignment", xlabel="supernet", ylabel="configuration")
    width, height = png_size(path)
    assert height > width > 200  # 36 rows: a tall figure
    assert path.stat().st_size > 10_000
    big = tmp_path / "big.png"
    plot_matrix(big, rng.random((40, 30)), list(range(40)), list(range(30)), "t", "x", "y")
    assert png_size(big)[0] > 500


@pytest.mark.parametrize(
    ("matrix", "rows", "cols", "message"),
    [
        (np.zeros(3), 3, 1, r"non-empty 2-D array, got shape \(3,\)"),
        (np.zeros((0, 2)), 0, 2, "non-empty 2-D array"),
        (np.zeros((2, 2)), 3, 2, "3 row_labels, 2 col_labels"),
        ([["a", "b"]], 1, 2, "matrix must be a numeric 2-D array"),
    ],
)
def test_plot_matrix_errors(
    tmp_path: Path, matrix: object, rows: int, cols: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        plot_matrix(tmp_path / "m.png", matrix, list(range(rows)), list(range(cols)),
                    "t", "x", "y")
    assert not (tmp_path / "m.png").exists()
