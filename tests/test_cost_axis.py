"""The front's cost axis (``--cost flops|params|latency``, ``CostConfig``): latency measured with
a deterministic clock, the front ranked on the latency column, the cache a resume reads instead of
measuring again, parameters equal to the exported module's, and one-line errors for bad options."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import stitchnas
from searchspace.pooling import create_space
from searchspace.stitch_v2 import StitchSpaceV2
from stitching.lowrank import LowRankStitchingLayer
from stitching.snnet import SNNet, anchor_space
from stitching.vit import create_vit
from stitchnas.cli.main import main
from stitchnas.core.io import ResultsTable
from stitchnas.data import DataSpec
from stitchnas.methods.pooling import PoolingSearchConfig, PoolingTask
from stitchnas.methods.snnet import StitchSearchConfig, StitchTask
from stitchnas.search import cost
from stitchnas.search.cost import (
    LATENCY_COLUMNS,
    LATENCY_FILE,
    CostConfig,
    LatencyCache,
    LatencyStats,
    measure_latency,
    params_cost,
)
from stitchnas.search.front import summarize_front
from supernet.evaluation import EvalConfig
from supernet.training import TrainConfig

POOLING = PoolingSearchConfig(
    space=create_space("resnet20", width_scale=0.25),
    data=DataSpec(name="digits", input_size=8, seed=0, max_train_samples=300),
    train=TrainConfig(epochs=1, batch_size=32, lr=0.05, seed=0), eval=EvalConfig(calib_batches=2), max_candidates=6)


def ticking(times: list[float]) -> Iterator[float]:
    yield from times


# --------------------------------------------------------------------------- measuring
class Counting(nn.Module):
    """Counts forward passes and checks they run in eval mode under inference_mode."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert torch.is_inference_mode_enabled() and not self.training
        assert x.shape == (3, 1, 2, 2)
        self.calls += 1
        return self.linear(x.flatten(1))


def test_latency_discards_the_warm_up_and_reports_the_median_and_spread_of_the_timed_passes():
    clock_values = [0, 3, 10, 11, 20, 22, 30, 35, 40, 44]  # timed passes of 3, 1, 2, 5, 4 seconds
    ticks = ticking([float(v) for v in clock_values])
    readings = []

    def clock() -> float:
        readings.append(next(ticks))
        return readings[-1]

    model = Counting().train()
    stats = measure_latency(model, (1, 2, 2), batch=3, device="cpu", warmup=2, repeats=5, clock=clock)
    assert model.calls == 7 and len(readings) == 10  # the 2 warm-up passes are not timed
    assert stats == LatencyStats(median_ms=3000.0, q1_ms=2000.0, q3_ms=4000.0, min_ms=1000.0, max_ms=5000.0,
                                 repeats=5)
    assert LatencyStats.of([7.0]) == LatencyStats(7.0, 7.0, 7.0, 7.0, 7.0, 1)
    with pytest.raises(ValueError, match="batch >= 1"):
        measure_latency(model, (1, 2, 2), batch=0)


# --------------------------------------------------------------------------- the front
def _rows() -> list[dict]:
    # FLOPs rank 0 < 1 < 2 < 3; latency ranks them 2 < 0 < 3 < 1
    return [{"candidate": i, "label": f"c{i}", "flops": f, "params": p, "val_acc": a, "status": "ok", "error": ""}
            for i, (f, p, a) in enumerate([(100, 40, 50.0), (200, 30, 60.0), (300, 20, 70.0), (400, 10, 80.0)])]


LATENCY = {0: 2.0, 1: 9.0, 2: 1.0, 3: 5.0}


def _latency_cost(errors: dict[str, str] | None = None) -> cost.FrontCost:
    columns = {str(i): {"latency_ms": ms, "latency_q1_ms": ms - 0.5, "latency_q3_ms": ms + 0.5,
                        "latency_min_ms": ms - 1, "latency_max_ms": ms + 1} for i, ms in LATENCY.items()}
    for key in errors or {}:
        columns[key]["latency_ms"] = float("nan")
    info = {"axis": "latency", "unit": "ms", "batch": 1, "device": "cpu", "threads": 1}
    return cost.FrontCost("latency", "latency_ms", "ms", "latency (ms)", 1.0, info, columns, errors or {})


def test_the_front_on_latency_ranks_the_latency_column(tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "l").mkdir()
    flops = summarize_front(_rows(), tmp_path / "f", plot=False)
    assert [r["candidate"] for r in flops.front] == [0, 1, 2, 3]  # by FLOPs all four are on the front
    summary = summarize_front(_rows(), tmp_path / "l", title="t", cost=_latency_cost())
    # by latency: 2 (1 ms, 70%) dominates 0 (2 ms, 50%) and 1 (9 ms, 60%); 3 (5 ms, 80%) stays
    assert [r["candidate"] for r in summary.front] == [2, 3]
    assert [r["latency_ms"] for r in summary.front] == [1.0, 5.0]
    written = json.loads((tmp_path / "l" / "pareto.json").read_text())
    assert written["objectives"] == {"latency_ms": "minimize", "val_acc": "maximize"}
    assert written["cost"]["axis"] == "latency" and written["cost"]["unit"] == "ms"
    assert written["hypervolume_reference"] == [pytest.approx(9.9), 0.0]
    assert written["front"][0]["latency_q3_ms"] == 1.5
    assert (tmp_path / "l" / "pareto.png").is_file()
    assert summary.cost["axis"] == "latency" and summary.cost_column == "latency_ms"


def test_a_candidate_whose_latency_failed_is_excluded_with_the_reason(tmp_path):
    summary = summarize_front(_rows(), tmp_path, plot=False, cost=_latency_cost({"2": "latency: RuntimeError: oom"}))
    assert [r["candidate"] for r in summary.front] == [0, 3]
    assert summary.excluded == [{"candidate": 2, "label": "c2", "status": "ok", "error": "latency: RuntimeError: oom"}]


def test_the_plot_draws_the_cost_axis():
    from stitchnas.search.plots import pareto_plot_data

    data = pareto_plot_data([1.0, 2.0], [10.0, 20.0], [0, 1], x_scale=1.0)
    assert data.front_mflops.tolist() == [1.0, 2.0]
    assert pareto_plot_data([1e6, 2e6], [10.0, 20.0], [0, 1]).mflops.tolist() == [1.0, 2.0]  # MFLOPs by default


# --------------------------------------------------------------------------- params
def test_the_params_front_ranks_the_params_column(tmp_path):
    summary = summarize_front(_rows(), tmp_path, plot=False, cost=params_cost())
    assert [r["candidate"] for r in summary.front] == [3]  # fewest parameters and the best accuracy
    assert json.loads((tmp_path / "pareto.json").read_text())["cost"]["axis"] == "params"


def _counted(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_params_cost_equals_the_parameters_of_every_pooling_candidates_module(stitch_data):
    space = create_space("resnet20", width_scale=0.25)
    task = PoolingTask(space, stitch_data)
    for i in range(len(task)):
        assert cost.candidate_cost("params", task, i) == _counted(task.standalone(i)), task.describe(i)
    assert task.input_shape() == (1, 8, 8)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_params_cost_equals_the_parameters_of_every_stitched_candidates_module(stitch_data, version):
    torch.manual_seed(0)
    if version == "v1":
        anchors = [create_vit(n, depth=2, img_size=8) for n in ("vit_digits_tiny", "vit_digits_small")]
        net = SNNet(anchors, anchor_space(anchors, ["tiny", "small"]))
    else:
        anchors = [create_vit(n, depth=2, img_size=8) for n in ("vit_digits_tiny", "vit_digits_base")]
        net = SNNet(anchors, StitchSpaceV2((2, 2), names=("tiny", "base")),
                    layer_factory=functools.partial(LowRankStitchingLayer, rank=2))
    task = StitchTask(net, stitch_data)
    for i in range(len(task)):
        assert cost.candidate_cost("params", task, i) == _counted(task.standalone(i)), task.describe(i)
    # standalone() initialises fresh weights from torch's RNG; measuring leaves the RNG as it was
    before = torch.random.get_rng_state()
    cost.measure_candidate(task, 0, CostConfig("latency", latency_warmup=0, latency_repeats=1), "cpu")
    assert torch.equal(before, torch.random.get_rng_state())


# --------------------------------------------------------------------------- a search on latency
@pytest.fixture
def fake_latency(monkeypatch):
    """Every candidate's latency measured by the real :func:`measure_latency` with a clock that
    ticks ``1 + (7 * index) % 5`` seconds per reading; returns the candidates measured, in order."""
    measured: list[int] = []

    def measure(task, index, cfg, device):
        measured.append(index)
        step = 1 + (7 * index) % 5
        ticks = ticking([float(step * k) for k in range(2 * cfg.latency_repeats)])
        return measure_latency(task.standalone(index), task.input_shape(), cfg.latency_batch, device,
                               cfg.latency_warmup, cfg.latency_repeats, clock=lambda: next(ticks))

    monkeypatch.setattr(cost, "measure_candidate", measure)
    return measured


def brute_force(points: dict[str, tuple[float, float]]) -> set[str]:
    """Keys no other point dominates (cost <=, accuracy >=, one strictly)."""
    return {k for k, (c, a) in points.items()
            if not any(c2 <= c and a2 >= a and (c2, a2) != (c, a) for c2, a2 in points.values())}


def test_a_latency_search_ranks_measured_latency_and_a_resume_never_measures_again(tmp_path, fake_latency):
    cfg = PoolingSearchConfig(**{**POOLING.__dict__, "cost": CostConfig("latency", latency_batch=2,
                                                                        latency_warmup=1, latency_repeats=3)})
    out = tmp_path / "run"
    result = stitchnas.run_search(cfg, out, progress=False)
    evaluated = sorted(int(r["candidate"]) for r in result.rows)
    assert sorted(fake_latency) == evaluated and len(evaluated) == 6  # each candidate once

    cached = ResultsTable(out / LATENCY_FILE, LATENCY_COLUMNS).rows()
    latency = {str(r["candidate"]): r["latency_ms"] for r in cached}
    assert latency == {str(i): 1000.0 * (1 + (7 * i) % 5) for i in evaluated}
    settings = {(r["batch"], r["warmup"], r["repeats"], r["device"], r["status"]) for r in cached}
    assert settings == {(2, 1, 3, "cpu", "ok")}

    pareto = json.loads((out / "pareto.json").read_text())
    accuracy = {str(r["candidate"]): r["val_acc"] for r in result.rows}
    expected = brute_force({k: (latency[k], accuracy[k]) for k in latency})
    assert {str(r["candidate"]) for r in pareto["front"]} == expected
    assert [r["latency_ms"] for r in pareto["front"]] == sorted(r["latency_ms"] for r in pareto["front"])
    assert pareto["cost"]["axis"] == "latency" and pareto["cost"]["batch"] == 2 and pareto["cost"]["threads"] >= 1
    assert {r.candidate for r in result.front} == expected
    assert json.loads((out / "run_config.json").read_text())["cost"] == {
        "axis": "latency", "latency_batch": 2, "latency_warmup": 1, "latency_repeats": 3}
    for folder in result.exports:
        record = json.loads((folder / "model.json").read_text())
        index = str(int(folder.name.split("_")[0]))  # NNNN_a-b-c
        assert record["cost"]["axis"] == "latency" and record["cost"]["value"] == latency[index]
        assert record["cost"]["q1_ms"] == latency[index] and record["cost"]["batch"] == 2
        stitchnas.load_model(folder)  # still a valid record

    fake_latency.clear()
    again = stitchnas.run_search(cfg, out, resume=True, progress=False)
    assert fake_latency == []  # the cache answers
    assert json.loads((out / "pareto.json").read_text()) == pareto
    assert [r["candidate"] for r in again.summary.front] == [r["candidate"] for r in pareto["front"]]

    # another axis or latency option is another run: refused in one line, naming the option
    for other in (CostConfig("flops"), CostConfig("latency", latency_batch=1)):
        with pytest.raises(ValueError, match=r"^output folder .*differing: \['cost'\]$"):
            stitchnas.run_search(PoolingSearchConfig(**{**cfg.__dict__, "cost": other}), out, resume=True,
                                 progress=False)

    # an export of any candidate records its latency (measured once more only if missing)
    folder = stitchnas.export_from_run(out, str(evaluated[0]))
    assert json.loads((folder / "model.json").read_text())["cost"]["value"] == latency[str(evaluated[0])]
    assert fake_latency == []


def test_cached_latency_counts_only_under_the_same_setting(tmp_path):
    setting = {"batch": 1, "warmup": 10, "repeats": 30, "device": "cpu", "machine": "m", "threads": 1,
               "dtype": "float32"}
    cache = LatencyCache(tmp_path / LATENCY_FILE, setting)
    cache.add(3, "[1,2,7]", LatencyStats(1.0, 0.5, 1.5, 0.1, 2.0, 30))
    cache.add(4, "[1,3,6]", None, "RuntimeError: oom")
    assert set(LatencyCache(tmp_path / LATENCY_FILE, setting).rows) == {"3", "4"}
    other = LatencyCache(tmp_path / LATENCY_FILE, {**setting, "threads": 2})
    assert other.rows == {}  # measured again under 2 threads; the 1-thread rows stay for a later resume
    other.add(3, "[1,2,7]", LatencyStats(2.0, 1.5, 2.5, 1.1, 3.0, 30))
    assert LatencyCache(tmp_path / LATENCY_FILE, setting).rows["3"]["latency_ms"] == 1.0
    assert len(ResultsTable(tmp_path / LATENCY_FILE, LATENCY_COLUMNS)) == 3


# --------------------------------------------------------------------------- configs and options
def test_cost_config_checks_its_fields_and_stays_out_of_flops_run_configs():
    assert "cost" not in POOLING.to_json()  # FLOPs, the default: run configs as before the option
    assert PoolingSearchConfig.from_json(POOLING.to_json()).cost == CostConfig()
    latency = PoolingSearchConfig(**{**POOLING.__dict__, "cost": CostConfig("latency", latency_batch=8)})
    assert PoolingSearchConfig.from_json(latency.to_json()) == latency
    for kwargs, message in [
        ({"axis": "time"}, r"cost 'axis': expected one of \['flops', 'params', 'latency'\], got 'time'"),
        ({"axis": "latency", "latency_batch": 0}, r"cost 'latency_batch': expected an integer >= 1, got 0"),
        ({"axis": "latency", "latency_repeats": True}, r"cost 'latency_repeats': expected an integer >= 1"),
        ({"axis": "params", "latency_warmup": 3}, r"cost 'latency_warmup': applies to axis 'latency' only"),
    ]:
        with pytest.raises(ValueError, match=message):
            CostConfig(**kwargs)
    with pytest.raises(ValueError, match=r"search 'hv_reference': 'space' needs"):
        PoolingSearchConfig(**{**POOLING.__dict__, "cost": CostConfig("latency"), "hv_reference": "space"})
    assert PoolingSearchConfig(**{**POOLING.__dict__, "cost": CostConfig("params"), "hv_reference": "space"})
    assert stitchnas.CostConfig is CostConfig
    with pytest.raises(ValueError, match=r"field 'cost.axis'"):
        StitchSearchConfig.from_json({**_stitch_json(), "cost": {"axis": "speed"}}, "run config")


def _stitch_json() -> dict:
    anchor = {"name": "a", "config": {"family": "vit"}, "path": "/x"}
    return {"kind": "stitch_search", "anchors": [anchor, {**anchor, "name": "b"}]}


LAT = ["--cost", "latency"]


@pytest.mark.parametrize("argv, message", [
    (["search", "pooling", "--cost", "time"], "--cost: expected one of flops, params, latency, got 'time'"),
    (["search", "pooling", *LAT, "--latency-batch", "0"], "--latency-batch: expected a whole number >= 1, got '0'"),
    (["search", "pooling", *LAT, "--latency-batch", "x"], "--latency-batch: expected a whole number >= 1"),
    (["search", "pooling", *LAT, "--latency-repeats", "-3"], "--latency-repeats: expected a whole number >= 1"),
    (["search", "pooling", "--latency-batch", "4"], "--latency-batch: applies to --cost latency only"),
    (["search", "pooling", *LAT, "--hv-reference", "space"], "--hv-reference space: needs every"),
    (["search", "bms", "--cost", "lat"], "--cost: expected one of"),
    (["stitch", "train", "--cost", "lat"], "--cost: expected one of"),
    (["learngene", "pool", "--distill", "/nonexistent", "--latency-warmup", "x", "--cost", "latency"],
     "--latency-warmup: expected a whole number >= 0"),
])
def test_bad_cost_options_get_one_line_naming_the_option(capsys, tmp_path, argv, message):
    code = main([*argv, "--out", str(tmp_path / "run"), "--no-progress"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("stitchnas: error: ") and message in lines[-1], lines
    assert not any(line.startswith("Traceback") for line in lines)
    assert not Path(tmp_path / "run").exists()
