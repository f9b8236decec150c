"""Every config of the engine on the one strict record codec (stitchnas.core.records): the JSON
each writes is the JSON the hand-written ``to_json`` methods wrote before (run configs and
checkpoint recipes are compared on resume), old run configs still decode, and bad ones fail
with one line naming the source and the field."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest

from searchspace.pooling import PoolingSpace
from stitching.anchors import AnchorRef
from stitching.learngene import StudentSpec
from stitching.learngene_train import DistillConfig
from stitching.trainer import SamplingConfig, StitchTrainConfig
from stitchnas.core.records import OWN_JSON, from_json, to_json
from stitchnas.data import DataSpec
from stitchnas.methods import method_from_run
from stitchnas.methods.anchors import AnchorTrainConfig
from stitchnas.methods.learngene import LearngeneDistillRunConfig, LearngenePoolConfig
from stitchnas.methods.pooling import PoolingSearchConfig
from stitchnas.methods.snnet import StitchSearchConfig
from stitchnas.studies.truth import TruthConfig
from supernet.bms import MixtureConfig
from supernet.evaluation import EvalConfig
from supernet.training import TrainConfig

# --------------------------------------------------------------------------- what the old code wrote
SPACE = PoolingSpace("small", (4, 4, 8, 8, 8), 2)
SPACE_JSON = {"name": "small", "widths": [4, 4, 8, 8, 8], "num_downsamples": 2, "downsample": "maxpool",
              "block": "basic", "first_position": 1, "default": None, "kind": "pooling", "format_version": 1}
DATA = DataSpec("digits", input_size=8, seed=1, max_train_samples=240)
DATA_JSON = {"name": "digits", "data_dir": None, "input_size": 8, "seed": 1, "search_val_fraction": 0.5,
             "test_fraction": 0.2, "max_train_samples": 240, "max_test_samples": None, "options": {},
             "mean": None, "std": None}  # given normalisation (a checkpoint's), None: the data's own
TRAIN = TrainConfig(epochs=2, lr=0.05)
TRAIN_JSON = {"epochs": 2, "batch_size": 64, "lr": 0.05, "lr_min": 0.001, "momentum": 0.9, "weight_decay": 5e-4,
              "seed": 0, "device": "cpu", "amp": True, "augment": "auto"}
EVAL_JSON = {"bn_mode": "recalibrate", "calib_batches": 8, "calib_batch_size": 64, "batch_size": 256,
             "device": "cpu", "seed": 0}
MIXTURE_JSON = {"num_supernets": 2, "t_max": 100.0, "ema": 0.9, "balance_tol": 1e-4, "grouping": "bms",
                "gm_warmup_fraction": 0.25, "gm_batches": 4, "score_batch_size": None}
STITCH_TRAIN = StitchTrainConfig(epochs=1, warmup_epochs=1)
STITCH_TRAIN_JSON = {"epochs": 1, "batch_size": 64, "lr": 1e-3, "lr_min": 1e-5, "anchor_lr_scale": 0.1,
                     "warmup_epochs": 1, "optimizer": "adamw", "momentum": 0.9, "weight_decay": 0.05,
                     "distill_weight": 0.0, "distill_temperature": 1.0, "seed": 0, "device": "cpu", "amp": True,
                     "augment": "auto"}
FINETUNE_JSON = {**STITCH_TRAIN_JSON, "epochs": 10, "lr": 3e-4, "anchor_lr_scale": 1.0, "warmup_epochs": 0,
                 "distill_weight": 0.5}
VIT = {"family": "vit", "img_size": 8, "patch_size": 4, "in_chans": 1, "num_classes": 10, "embed_dim": 32,
       "depth": 4, "num_heads": 2, "mlp_ratio": 4.0, "qkv_bias": True, "drop_path_rate": 0.0}
ANCHORS = (AnchorRef("tiny", VIT, "/a/tiny.pth", "t" * 64), AnchorRef("small", VIT, "/a/small.pth"),
           AnchorRef("base", {**VIT, "embed_dim": 64}, "/a/base.pth", "b" * 64))
ANCHORS_JSON = [{"name": "tiny", "config": VIT, "path": "/a/tiny.pth", "sha256": "t" * 64},
                {"name": "small", "config": VIT, "path": "/a/small.pth", "sha256": ""},
                {"name": "base", "config": {**VIT, "embed_dim": 64}, "path": "/a/base.pth", "sha256": "b" * 64}]
UNIFORM_JSON = {"kind": "uniform", "flops_gap_mflops": None, "weighting": "uniform", "k": 1.0}
SNNET_V1_JSON = {"kind": "stitch_search", "anchors": ANCHORS_JSON, "data": DATA_JSON, "train": STITCH_TRAIN_JSON,
                 "init_samples": 100, "nearest": True, "kernel_size": 2, "stride": 1, "eval_batch_size": 256,
                 "export_front": True, "version": "v1", "route_types": None, "sampling": UNIFORM_JSON,
                 "lora_rank": 0, "hv_reference": "evaluated", "reset_head": False}  # reset_head: new, absent = False
SNNET_V2_JSON = {**SNNET_V1_JSON, "anchors": [ANCHORS_JSON[0], ANCHORS_JSON[2]], "version": "v2",
                 "route_types": ["fs", "sf", "sfs", "fsf"], "sampling": {**UNIFORM_JSON, "kind": "ros"},
                 "lora_rank": 4}


def pooling_config(**changes: Any) -> PoolingSearchConfig:
    return PoolingSearchConfig(SPACE, data=DATA, train=TRAIN, **changes)


def distill_config() -> DistillConfig:
    return DistillConfig((StudentSpec("tiny", 16, 2, 4), StudentSpec("wide", 32, 2, 3)), matches=((0, 0), (3, 2)),
                         train=STITCH_TRAIN)


def one_line(call: Any, *args: Any) -> str:
    with pytest.raises(ValueError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


def through_a_file(data: Any) -> Any:
    return json.loads(json.dumps(data))


# --------------------------------------------------------------------------- the same JSON as before
def test_configs_write_what_the_hand_written_to_json_wrote(tmp_path):
    assert TRAIN.to_json() == TRAIN_JSON  # also the "train_config" of supernet checkpoints
    assert STITCH_TRAIN.to_json() == STITCH_TRAIN_JSON  # also the "train_config" of SN-Net checkpoints
    assert EvalConfig().to_json() == EVAL_JSON
    assert MixtureConfig(num_supernets=2).to_json() == MIXTURE_JSON
    assert DATA.to_json() == DATA_JSON
    assert pooling_config(max_candidates=3).to_json() == {
        "kind": "pooling_search", "space": SPACE_JSON, "data": DATA_JSON, "train": TRAIN_JSON, "eval": EVAL_JSON,
        "max_candidates": 3, "export_front": True, "mixture": None, "hv_reference": "evaluated"}
    assert pooling_config(mixture=MixtureConfig(num_supernets=2), hv_reference="space").to_json() == {
        "kind": "pooling_search", "space": SPACE_JSON, "data": DATA_JSON, "train": TRAIN_JSON, "eval": EVAL_JSON,
        "max_candidates": None, "export_front": True, "mixture": MIXTURE_JSON, "hv_reference": "space"}
    assert StitchSearchConfig(ANCHORS, data=DATA, train=STITCH_TRAIN).to_json() == SNNET_V1_JSON
    assert StitchSearchConfig(ANCHORS, data=DATA, train=STITCH_TRAIN, version="v2").to_json() == SNNET_V2_JSON
    v2 = StitchSearchConfig(ANCHORS, data=DATA, train=STITCH_TRAIN, version="v2", route_types=("sf", "fs"),
                            sampling=SamplingConfig("ros", 0.1, "linear"), lora_rank=2)
    assert v2.to_json() == {**SNNET_V2_JSON, "route_types": ["fs", "sf"], "lora_rank": 2,
                            "sampling": {"kind": "ros", "flops_gap_mflops": 0.1, "weighting": "linear", "k": 1.0}}
    pool = LearngenePoolConfig(str(tmp_path / "distill"), students=("tiny", "wide"))
    assert pool.to_json() == {
        "kind": "learngene_pool", "distill_run": str((tmp_path / "distill").resolve()), "students": ["tiny", "wide"],
        "init": "matrices", "init_samples": 100, "finetune": FINETUNE_JSON, "kernel_size": 2, "stride": 1,
        "eval_batch_size": 256, "export_front": True, "hv_reference": "evaluated"}
    distill = distill_config()
    distill_json = {"students": [{"name": "tiny", "embed_dim": 16, "num_heads": 2, "depth": 4},
                                 {"name": "wide", "embed_dim": 32, "num_heads": 2, "depth": 3}],
                    "matches": [[0, 0], [3, 2]], "alpha": 0.1, "temperature": 1.0, "train": STITCH_TRAIN_JSON,
                    "train_matrices": True}
    assert distill.to_json() == distill_json  # also the "distill_config" of distillation checkpoints
    assert LearngeneDistillRunConfig(ANCHORS[0], distill, DATA).to_json() == {
        "kind": "learngene_distill", "teacher": ANCHORS_JSON[0], "distill": distill_json, "data": DATA_JSON,
        "eval_batch_size": 256}
    anchors = AnchorTrainConfig(data=DATA, train=STITCH_TRAIN, overrides={"depth": 2})
    assert anchors.to_json() == {"kind": "anchors", "family": "vit_digits", "data": DATA_JSON,
                                 "train": STITCH_TRAIN_JSON, "overrides": {"depth": 2}}
    assert TruthConfig(SPACE, DATA, TRAIN).to_json() == {
        "kind": "pooling_truth", "space": SPACE_JSON, "data": DATA_JSON, "train": TRAIN_JSON, "seeds": [0, 1],
        "candidates": None}
    assert TruthConfig(SPACE, DATA, TRAIN, seeds=(3,), candidates=(0, 2)).to_json()["candidates"] == [0, 2]


# --------------------------------------------------------------------------- round trips
def configs(tmp_path: Path) -> list[Any]:
    return [
        TRAIN, EvalConfig(bn_mode="batch"), MixtureConfig(num_supernets=3, grouping="gm", score_batch_size=8),
        STITCH_TRAIN, SamplingConfig(), SamplingConfig("ros", 0.5, "linear", 2.0), StudentSpec("tiny", 16, 2, 4),
        ANCHORS[1], DataSpec("cluttered_digits", data_dir="/d", options={"canvas_size": 24}), DATA,
        pooling_config(), pooling_config(max_candidates=2, export_front=False, mixture=MixtureConfig(2)),
        StitchSearchConfig(ANCHORS, data=DATA, train=STITCH_TRAIN).resolved(),
        StitchSearchConfig(ANCHORS, version="v2", route_types=("fsf",), lora_rank=0).resolved(),
        distill_config(), DistillConfig((StudentSpec("s", 16, 2, 4),), matches="end"),
        LearngeneDistillRunConfig(ANCHORS[2], distill_config(), DATA, eval_batch_size=64),
        LearngenePoolConfig(str(tmp_path), students=("a",), init="least_squares", hv_reference="space"),
        AnchorTrainConfig(family="resnet_digits", data=DATA, overrides={"depth": 2}),
        TruthConfig(SPACE, DATA, TRAIN, seeds=(3,), candidates=(0, 2)),
    ]


def test_every_config_round_trips(tmp_path):
    for config in configs(tmp_path):
        data = through_a_file(config.to_json())
        assert from_json(type(config), data, "test") == config, type(config).__name__
        if hasattr(type(config), "from_json"):
            assert type(config).from_json(data, "test") == config


def test_an_unresolved_stitch_config_reads_back_as_its_resolved_self():
    for cfg in (StitchSearchConfig(ANCHORS), StitchSearchConfig(ANCHORS, version="v2")):
        back = StitchSearchConfig.from_json(through_a_file(cfg.to_json()), "test")
        assert back == cfg.resolved() and back.to_json() == cfg.to_json()


# --------------------------------------------------------------------------- old files decode
def test_old_run_configs_without_later_fields_still_decode(tmp_path):
    old = pooling_config(mixture=MixtureConfig(2)).to_json()
    for key in ("hv_reference", "max_candidates", "export_front"):  # absent in runs before they were recorded
        del old[key]
    del old["mixture"]["score_batch_size"]
    cfg = PoolingSearchConfig.from_json(old, "run config old.json")
    assert cfg == pooling_config(mixture=MixtureConfig(2))
    old_snnet = {k: v for k, v in SNNET_V1_JSON.items()
                 if k not in ("version", "route_types", "sampling", "lora_rank", "hv_reference")}
    cfg = StitchSearchConfig.from_json(old_snnet, "run config old.json")
    assert cfg.version == "v1" and cfg.sampling is None and cfg.lora_rank is None
    assert cfg.to_json() == SNNET_V1_JSON  # today's defaults filled in
    pool = LearngenePoolConfig(str(tmp_path)).to_json()
    del pool["hv_reference"]
    assert LearngenePoolConfig.from_json(pool, "run config").hv_reference == "evaluated"


def test_a_run_folder_without_hv_reference_is_read_by_method_from_run(tmp_path):
    raw = pooling_config().to_json()
    del raw["hv_reference"]
    (tmp_path / "run_config.json").write_text(json.dumps(raw))
    assert method_from_run(tmp_path).cfg == pooling_config()  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- bad files fail in one line
def mutated(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    *parents, last = path.split(".")
    target = data
    for key in parents:
        target = target[key]
    target[last] = value
    return data


POOLING_JSON = {"kind": "pooling_search", "space": SPACE_JSON, "data": DATA_JSON, "train": TRAIN_JSON,
                "eval": EVAL_JSON, "max_candidates": None, "export_front": True, "mixture": None,
                "hv_reference": "evaluated"}


@pytest.mark.parametrize("cls, data, message", [
    (PoolingSearchConfig, mutated(POOLING_JSON, "colour", "red"), r"^run config f\.json: unknown field 'colour' "),
    (PoolingSearchConfig, mutated(POOLING_JSON, "train.epochs", "3"),
     r"^run config f\.json: field 'train\.epochs': expected an integer, got '3'$"),
    (PoolingSearchConfig, mutated(POOLING_JSON, "train.epochs", 3.0),
     r"^run config f\.json: field 'train\.epochs': expected an integer, got 3\.0$"),
    (PoolingSearchConfig, mutated(POOLING_JSON, "data.nme", "x"), r"^run config f\.json: unknown field 'data\.nme' "),
    (PoolingSearchConfig, mutated(POOLING_JSON, "eval.bn_mode", "frozen"),
     r"^run config f\.json: field 'eval\.bn_mode': expected one of \['recalibrate', 'batch'\], got 'frozen'$"),
    (PoolingSearchConfig, mutated(POOLING_JSON, "mixture", {"num_supernets": 2, "tmax": 3}),
     r"^run config f\.json: unknown field 'mixture\.tmax' "),
    (PoolingSearchConfig, mutated(POOLING_JSON, "space.bogus", 1),
     r"^run config f\.json: field 'space': pooling space: unknown fields \['bogus'\]$"),
    (PoolingSearchConfig, mutated(POOLING_JSON, "kind", "stitch_search"),
     r"^run config f\.json: field 'kind': expected 'pooling_search', got 'stitch_search'$"),
    (PoolingSearchConfig, {k: v for k, v in POOLING_JSON.items() if k != "kind"},
     r"^run config f\.json: field 'kind': expected 'pooling_search', got None$"),
    (PoolingSearchConfig, mutated(POOLING_JSON, "train.epochs", 0),
     r"^run config f\.json: train: train config 'epochs': expected >= 1, got 0$"),
    (PoolingSearchConfig, mutated(POOLING_JSON, "hv_reference", "max"),
     r"^run config f\.json: PoolingSearchConfig: search 'hv_reference': expected one of"),
    (StitchSearchConfig, mutated(SNNET_V1_JSON, "version", "v3"),
     r"^run config f\.json: field 'version': expected one of \['v1', 'v2'\], got 'v3'$"),
    (StitchSearchConfig, mutated(SNNET_V1_JSON, "train.optimizer", "adam"),
     r"^run config f\.json: field 'train\.optimizer': expected one of \['adamw', 'sgd'\], got 'adam'$"),
    (StitchSearchConfig, mutated(SNNET_V1_JSON, "sampling.gap", 1),
     r"^run config f\.json: unknown field 'sampling\.gap' "),
    (StitchSearchConfig, mutated(SNNET_V1_JSON, "anchors", [ANCHORS_JSON[0], {**ANCHORS_JSON[1], "name": 3}]),
     r"^run config f\.json: field 'anchors\[1\]\.name': expected a string, got 3$"),
    (StitchSearchConfig, mutated(SNNET_V1_JSON, "nearest", "yes"),
     r"^run config f\.json: field 'nearest': expected true or false, got 'yes'$"),
    (LearngenePoolConfig, {"kind": "learngene_pool", "distill_run": "/d", "init": "random"},
     r"^run config f\.json: field 'init': expected one of \['matrices', 'least_squares'\], got 'random'$"),
    (LearngenePoolConfig, {"kind": "learngene_pool", "distill_run": "/d", "students": "tiny"},
     r"^run config f\.json: field 'students': expected a list, got 'tiny'$"),
    (LearngeneDistillRunConfig, {"kind": "learngene_distill", "teacher": ANCHORS_JSON[0],
                                 "distill": {**distill_config().to_json(), "matches": [[0, 0, 1]]}},
     r"^run config f\.json: field 'distill\.matches': expected str or tuple"),
    (LearngeneDistillRunConfig, {"kind": "learngene_distill", "teacher": ANCHORS_JSON[0],
                                 "distill": {**distill_config().to_json(), "students": [{"name": "x"}]}},
     r"^run config f\.json: missing field 'distill\.students\[0\]\.embed_dim'$"),
])
def test_bad_configs_fail_in_one_line_naming_the_field(cls, data, message):
    assert one_line(cls.from_json, data, "run config f.json")
    with pytest.raises(ValueError, match=message):
        cls.from_json(data, "run config f.json")


def test_method_from_run_names_the_file(tmp_path):
    (tmp_path / "run_config.json").write_text(json.dumps({**POOLING_JSON, "colour": "red"}))
    with pytest.raises(ValueError, match=rf"^run config {tmp_path / 'run_config.json'}: unknown field 'colour' "):
        method_from_run(tmp_path)


# --------------------------------------------------------------------------- the codec's extensions
@dataclass(frozen=True)
class Inner:
    n: int = 0


@dataclass(frozen=True)
class Tagged:
    mode: Literal["a", "b"] = "a"
    table: dict = field(default_factory=dict)
    pair: tuple[int, str] = (0, "x")
    inners: tuple[Inner, ...] = ()
    note: str | None = None
    space: PoolingSpace | None = field(default=None, metadata=OWN_JSON)

    json_kind: ClassVar[str] = "tagged"
    json_keep_none: ClassVar[bool] = True


def test_codec_kind_literal_mapping_pair_and_own_json():
    record = Tagged("b", {"x": [1, {"y": None}]}, (3, "z"), (Inner(1), Inner()), space=SPACE)
    data = to_json(record)
    assert data == {"kind": "tagged", "mode": "b", "table": {"x": [1, {"y": None}]}, "pair": [3, "z"],
                    "inners": [{"n": 1}, {"n": 0}], "note": None, "space": SPACE_JSON}
    assert from_json(Tagged, through_a_file(data), "t") == record
    assert to_json(Tagged()) == {"kind": "tagged", "mode": "a", "table": {}, "pair": [0, "x"], "inners": [],
                                 "note": None, "space": None}
    assert from_json(Tagged, {"kind": "tagged"}, "t") == Tagged()
    for bad, message in [
        ({"kind": "tagged", "mode": "c"}, r"^t: field 'mode': expected one of \['a', 'b'\], got 'c'$"),
        ({"kind": "tagged", "pair": [1]}, r"^t: field 'pair': expected a list of 2, got \[1\]$"),
        ({"kind": "tagged", "pair": [1, 2]}, r"^t: field 'pair\[1\]': expected a string, got 2$"),
        ({"kind": "tagged", "table": []}, r"^t: field 'table': expected an object, got \[\]$"),
        ({"kind": "tagged", "inners": [{"n": True}]}, r"^t: field 'inners\[0\]\.n': expected an integer, got True$"),
        ({"kind": "other"}, r"^t: field 'kind': expected 'tagged', got 'other'$"),
        ({"kind": "tagged", "space": {"name": "s"}}, r"^t: field 'space': pooling space: missing fields"),
    ]:
        assert one_line(from_json, Tagged, bad, "t")
        with pytest.raises(ValueError, match=message):
            from_json(Tagged, bad, "t")


def test_configs_built_in_code_keep_their_values():
    """Decoding converts JSON ints of float fields to floats; the values stay equal."""
    cfg = StitchTrainConfig.from_json({"lr": 1, "lr_min": 0, "augment": "auto"}, "t")
    assert cfg == StitchTrainConfig(lr=1, lr_min=0) and isinstance(cfg.lr, float)
    assert replace(cfg, epochs=2).to_json()["epochs"] == 2
