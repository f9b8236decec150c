"""The typed records and their strict JSON codec (stitchnas.core.records), and the two files
decoded through them: an exported model's ``model.json`` and an ``anchors.json`` manifest."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch

import stitchnas
from stitching.anchors import read_anchor_folder, read_anchor_manifest
from stitchnas.core.io import atomic_write_json, file_sha256
from stitchnas.core.records import (
    AnchorDigest,
    AnchorEntry,
    AnchorManifest,
    ModelCard,
    Provenance,
    ResultRow,
    from_json,
    to_json,
)
from stitchnas.core.version import __version__
from stitchnas.search.export import (
    BUILDERS,
    export_model,
    read_model_card,
    read_model_record,
)

# model.json files as the code before ModelCard wrote them (sha256 values are replaced by the tests).
OLD_POOLING_JSON = """{"config": {"positions": [1, 2]}, "flops": 21040, "format": "stitchnas.model",
 "format_version": 1, "kind": "pooling", "metrics": {"search_val_acc": 11.333333333333334,
 "test_acc": 11.11111111111111, "val_acc": 11.333333333333334}, "model": {"input_size": 8,
 "spec": {"in_chans": 1, "num_classes": 10}}, "notation": [1, 1, 3], "params": 3750, "provenance": {
 "checkpoint_sha256": "f03a6d1e6f1722e440a91e983a5eaf2a8f68361e3166b3d61f353325b7a2215e",
 "created": "2026-11-30T12:24:46+00:00", "data_dir": null, "dataset": "digits", "input_size": 8,
 "run_dir": "/tmp/bms0/run", "seed": 1, "source": "supernet", "stitchnas_version": "0.1.0",
 "torch_version": "2.13.0+cpu"}, "space": {"block": "basic", "default": null, "downsample": "maxpool",
 "first_position": 1, "format_version": 1, "kind": "pooling", "name": "small", "num_downsamples": 2,
 "widths": [4, 4, 8, 8, 8]}, "weights": "model.pt", "weights_sha256": "x"}"""

OLD_STITCH_JSON = """{"config": {"id": 0, "route": [[0, 0, 1]], "windows": []}, "flops": 132448,
 "format": "stitchnas.model", "format_version": 1, "kind": "stitch", "label": "vit_digits_tiny[0-1]",
 "metrics": {"search_val_acc": 12.0, "test_acc": 11.38888888888889, "val_acc": 12.0}, "model": {
 "config_id": 0, "description": "vit_digits_tiny[0-1]", "family": "vit", "format_version": 1,
 "kind": "stitch", "segments": [{"anchor": 0, "first": 0, "last": 1, "model": {"depth": 2,
 "drop_path_rate": 0.0, "embed_dim": 32, "family": "vit", "img_size": 8, "in_chans": 1, "mlp_ratio": 4.0,
 "num_classes": 10, "num_heads": 2, "patch_size": 4, "qkv_bias": true}, "name": "vit_digits_tiny"}],
 "space": "snnet_vit", "stitches": []}, "params": 26538, "provenance": {"anchors": [
 {"name": "vit_digits_tiny", "sha256": "586dc17b2d46e8f034a4662bfe1db2670a32b4c523937fcabba9016266974e0d"},
 {"name": "vit_digits_small", "sha256": "bf5b2fe1940618f26606e5c260504e31319f8dc1654c9c7b056fb269ad0c8920"}],
 "checkpoint_sha256": "05c9e0becf20ee311081201ba01ffc28dd5df43830b8d717fc8c2da6b69a55d3",
 "created": "2026-11-30T12:24:25+00:00", "data_dir": null, "dataset": "digits", "input_size": 8,
 "max_test_samples": null, "max_train_samples": 200, "run_dir": "/tmp/stitch_cli0/run", "seed": 0,
 "source": "snnet", "stitchnas_version": "0.1.0", "torch_version": "2.13.0+cpu"}, "space": {
 "depths": [2, 2, 2], "format_version": 1, "kernel_size": 2, "kind": "stitch", "name": "snnet_vit",
 "names": ["vit_digits_tiny", "vit_digits_small", "vit_digits_base"], "nearest": true,
 "stage_depths": null, "stride": 1}, "weights": "model.pt", "weights_sha256": "x"}"""

PROVENANCE = Provenance(
    source="snnet", run_dir="/runs/a", checkpoint_sha256="c" * 64, dataset="digits", input_size=8, seed=3,
    max_train_samples=200, anchors=(AnchorDigest("tiny", "a" * 64), AnchorDigest("base")),
)


def roundtrip(record: Any) -> Any:
    """``record`` through JSON text and back (as a file would carry it)."""
    return from_json(type(record), json.loads(json.dumps(to_json(record))), "test")


def old_model_folder(folder: Path, text: str) -> Path:
    """A model folder holding an old-format ``model.json`` and weights that fit it."""
    folder.mkdir(parents=True, exist_ok=True)
    record = json.loads(text)
    torch.manual_seed(0)
    torch.save(BUILDERS[record["kind"]](record).state_dict(), folder / "model.pt")
    record["weights_sha256"] = file_sha256(folder / "model.pt")
    (folder / "model.json").write_text(json.dumps(record))
    return folder


def one_line_error(call: Any, *args: Any) -> str:
    with pytest.raises(ValueError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- codec
@pytest.mark.parametrize("record", [
    ResultRow("3", "[1,1,3]", "1,2", 21040, 3750, 91.5, seconds=1.25),
    ResultRow("4", "x", "", 1, 2, 0.0, status="failed", error="boom"),
    AnchorDigest("tiny", "a" * 64),
    AnchorDigest("tiny"),
    Provenance(source="supernet", run_dir="/r", checkpoint_sha256="c", dataset="digits"),
    PROVENANCE,
    Provenance(source="learngene_pool", run_dir="/r", checkpoint_sha256="c", dataset="digits",
               teacher=AnchorDigest("t", "d"), distill_run="/d", learngene_sha256="e", stitch_init="ones",
               stitchnas_version="0.1.0", torch_version="2.0", created="2026-01-01T00:00:00+00:00"),
    AnchorEntry(name="tiny", config={"family": "vit", "depth": 2}, file="tiny.pth"),
    AnchorEntry(name="tiny", config={"family": "vit"}, file="tiny.pth", preset="vit_digits_tiny", sha256="a",
                flops=10, params=20, val_acc=50.0, test_acc=49.5, train_seconds=1.5),
    AnchorManifest(anchors=(AnchorEntry(name="a", config={}, file="a.pth"),)),
    AnchorManifest(family="vit_digits", data={"name": "digits"}, train={"epochs": 1}, overrides={}, anchors=(
        AnchorEntry(name="a", config={"k": [1, 2]}, file="a.pth"), AnchorEntry(name="b", config={}, file="/x/b.pth"))),
], ids=lambda r: type(r).__name__)
def test_every_record_survives_a_json_round_trip(record):
    assert roundtrip(record) == record


@pytest.mark.parametrize("text", [OLD_POOLING_JSON, OLD_STITCH_JSON], ids=["pooling", "stitch"])
def test_model_card_round_trip_keeps_todays_file(text):
    data = json.loads(text)
    card = from_json(ModelCard, data, "model.json")
    assert roundtrip(card) == card
    # The file's keys and values come back; only explicit nulls of optional fields are left out.
    expected = copy.deepcopy(data)
    expected["provenance"] = {k: v for k, v in data["provenance"].items() if v is not None}
    assert to_json(card) == expected
    assert isinstance(card.provenance, Provenance) and card.provenance.torch_version == "2.13.0+cpu"


def test_optional_fields_left_at_none_are_left_out():
    entry = AnchorEntry(name="a", config={}, file="a.pth")
    assert to_json(entry) == {"name": "a", "config": {}, "file": "a.pth"}
    assert "data_dir" not in to_json(PROVENANCE) and to_json(PROVENANCE)["anchors"][1] == {"name": "base", "sha256": ""}
    # model.json always carries the data fields (data_dir: null for embedded data, as before records)
    assert PROVENANCE.to_json() == {**to_json(PROVENANCE), "data_dir": None, "max_test_samples": None}
    row = ResultRow("1", "l", "c", 1, 2, math.nan)
    assert math.isnan(roundtrip(row).val_acc)


@pytest.mark.parametrize("cls, data, message", [
    (AnchorDigest, {"name": "a", "sha": "x"}, r"^f\.json: unknown field 'sha' \(expected some of \['name', 'sha256'\]\)$"),
    (AnchorDigest, {"sha256": "x"}, r"^f\.json: missing field 'name'$"),
    (AnchorDigest, {"name": 3}, r"^f\.json: field 'name': expected a string, got 3$"),
    (AnchorDigest, ["a"], r"^f\.json: record: expected an object, got \['a'\]$"),
    (ResultRow, {"candidate": "1", "label": "", "config": "", "flops": True, "params": 1, "val_acc": 1.0},
     r"^f\.json: field 'flops': expected an integer, got True$"),
    (ResultRow, {"candidate": "1", "label": "", "config": "", "flops": 1, "params": 1, "val_acc": "high"},
     r"^f\.json: field 'val_acc': expected a number, got 'high'$"),
    (Provenance, {"source": "s", "run_dir": "r", "checkpoint_sha256": "c", "dataset": "d", "seed": "x"},
     r"^f\.json: field 'seed': expected an integer, got 'x'$"),
    (Provenance, {"source": "s", "run_dir": "r", "checkpoint_sha256": "c", "dataset": "d",
                  "teacher": {"name": "t", "sha256": 5}}, r"^f\.json: field 'teacher\.sha256': expected a string, got 5$"),
    (Provenance, {"source": "s", "run_dir": "r", "checkpoint_sha256": "c", "dataset": "d",
                  "anchors": [{"name": "a"}, {"nme": "b"}]}, r"^f\.json: unknown field 'anchors\[1\]\.nme'"),
    (Provenance, {"source": "s", "run_dir": "r", "checkpoint_sha256": "c", "dataset": "d", "anchors": {}},
     r"^f\.json: field 'anchors': expected a list, got \{\}$"),
    (AnchorManifest, {"format": "stitchnas.anchors", "format_version": 1, "anchors": [
        {"name": "a", "config": {}, "file": "a.pth"}, {"name": "b", "config": {}}]},
     r"^f\.json: missing field 'anchors\[1\]\.file'$"),
    (AnchorManifest, {"format": "stitchnas.anchors", "format_version": 1, "anchors": [
        {"name": "a", "config": [], "file": "a.pth"}]}, r"^f\.json: field 'anchors\[0\]\.config': expected an object"),
    (AnchorManifest, {"format": "other", "format_version": 1, "anchors": []},
     r"^f\.json: AnchorManifest: field 'format': expected 'stitchnas\.anchors', got 'other'$"),
    (AnchorManifest, {"format": "stitchnas.anchors", "format_version": 1, "anchors": [],
                      "data": {"name": "digits"}, "train": 3}, r"^f\.json: field 'train': expected an object, got 3$"),
])
def test_decoding_is_strict_and_names_the_file_and_field(cls, data, message):
    one_line_error(from_json, cls, data, "f.json")
    with pytest.raises(ValueError, match=message):
        from_json(cls, data, "f.json")


def test_model_card_errors_name_nested_fields():
    data = json.loads(OLD_STITCH_JSON)
    data["provenance"]["anchors"][0]["sha256"] = None
    with pytest.raises(ValueError, match=r"^m\.json: field 'provenance\.anchors\[0\]\.sha256': expected a string, got None$"):
        from_json(ModelCard, data, "m.json")
    data = json.loads(OLD_POOLING_JSON)
    data["metrics"]["test_acc"] = "90%"
    with pytest.raises(ValueError, match=r"^m\.json: field 'metrics\.test_acc': expected a number, got '90%'$"):
        from_json(ModelCard, data, "m.json")
    data = json.loads(OLD_POOLING_JSON)
    data["notation"] = [1, "1", 3]
    with pytest.raises(ValueError, match=r"^m\.json: field 'notation\[1\]': expected an integer, got '1'$"):
        from_json(ModelCard, data, "m.json")


# --------------------------------------------------------------------------- model.json
@pytest.mark.parametrize("text", [OLD_POOLING_JSON, OLD_STITCH_JSON], ids=["pooling", "stitch"])
def test_a_model_json_written_by_the_previous_code_loads(tmp_path, text):
    folder = old_model_folder(tmp_path / "m", text)
    model, record = stitchnas.load_model(folder, return_record=True)
    assert not model.training
    assert record == json.loads((folder / "model.json").read_text())  # the record as a dict, as written
    assert record["metrics"]["test_acc"] == json.loads(text)["metrics"]["test_acc"]
    card = read_model_card(folder / "model.json")
    assert card.kind == record["kind"] and card.provenance.created == record["provenance"]["created"]
    assert read_model_record(folder) == (folder, record)


def _pooling_body() -> dict[str, Any]:
    old = json.loads(OLD_POOLING_JSON)
    return {k: old[k] for k in ("space", "config", "notation", "model", "flops", "params", "metrics")}


def test_export_writes_todays_json_from_a_dict_or_a_record(tmp_path):
    body = _pooling_body()
    model = BUILDERS["pooling"](body)
    prov = {"dataset": "digits", "data_dir": None, "input_size": 8, "seed": 1, "source": "supernet",
            "run_dir": "/r", "checkpoint_sha256": "c" * 64}
    exported = export_model(tmp_path / "a", model, "pooling", body, prov, formats=["pt"])  # no input spec
    written = json.loads((tmp_path / "a" / "model.json").read_text())
    assert written == exported.record and to_json(exported.card) == {
        **written, "provenance": {k: v for k, v in written["provenance"].items() if v is not None}}
    assert set(written) == {"format", "format_version", "kind", *body, "provenance", "weights", "weights_sha256"}
    extra = {"stitchnas_version", "torch_version", "created"}
    assert written["provenance"].keys() == prov.keys() | extra and written["provenance"]["data_dir"] is None
    assert written["provenance"]["stitchnas_version"] == __version__
    assert written["provenance"]["torch_version"] == torch.__version__
    assert written["weights"] == "model.pt" and written["weights_sha256"] == file_sha256(tmp_path / "a" / "model.pt")
    assert {k: written[k] for k in body} == body and written["kind"] == "pooling"

    record = Provenance(**prov)
    export_model(tmp_path / "b", model, "pooling", body, record, formats="pt")
    from_record = json.loads((tmp_path / "b" / "model.json").read_text())
    assert from_record["provenance"] == {**record.to_json(), **{k: from_record["provenance"][k] for k in extra}}
    assert from_record["provenance"]["data_dir"] is None
    assert {k: v for k, v in from_record.items() if k != "provenance"} == {
        k: v for k, v in written.items() if k != "provenance"}
    _, rec = stitchnas.load_model(tmp_path / "b", return_record=True)
    assert rec["provenance"]["source"] == "supernet"
    assert read_model_card(tmp_path / "b").provenance == Provenance(**{**prov, **{k: rec["provenance"][k] for k in extra}})


def test_export_rejects_a_bad_body_or_provenance_before_writing(tmp_path):
    body = _pooling_body()
    model = BUILDERS["pooling"](body)
    prov = {"dataset": "digits", "source": "supernet", "run_dir": "/r", "checkpoint_sha256": "c"}
    with pytest.raises(ValueError, match=r"model\.json: unknown field 'provenance\.datset'"):
        export_model(tmp_path / "a", model, "pooling", body, {**prov, "datset": "x"})
    with pytest.raises(ValueError, match=r"model\.json: field 'flops': expected an integer, got 1\.5"):
        export_model(tmp_path / "a", model, "pooling", {**body, "flops": 1.5}, prov)
    with pytest.raises(ValueError, match=r"model kind 'nope'"):
        export_model(tmp_path / "a", model, "nope", body, prov)
    assert not (tmp_path / "a").exists()


def _break(folder: Path, change: Any) -> Path:
    record = json.loads((folder / "model.json").read_text())
    change(record)
    atomic_write_json(folder / "model.json", record)
    return folder


@pytest.mark.parametrize("case, change, message", [
    ("sha_not_a_string", lambda r: r.update(weights_sha256=3),
     r"^model config .*/m/model\.json: field 'weights_sha256': expected a string, got 3$"),
    ("no_provenance", lambda r: r.pop("provenance"), r"^model config .*/m/model\.json: missing field 'provenance'$"),
    ("weights_folder", lambda r: r.update(weights="sub"),
     r"^model config .*/m/model\.json: field 'weights': 'sub' is a folder, expected the weights file$"),
    ("weights_missing", lambda r: r.update(weights="gone.pt"),
     r"^model weights .*/m/gone\.pt: file not found \(field 'weights' of .*/m/model\.json\)$"),
    ("sha_mismatch", lambda r: r.update(weights_sha256="0" * 64),
     r"^model weights .*/m/model\.pt: SHA-256 .* does not match .*field 'weights_sha256'"),
    ("bad_provenance", lambda r: r["provenance"].update(seed="one"),
     r"^model config .*/m/model\.json: field 'provenance\.seed': expected an integer, got 'one'$"),
    ("unknown_field", lambda r: r.update(color="red"), r"^model config .*/m/model\.json: unknown field 'color'"),
    ("unknown_kind", lambda r: r.update(kind="rnn"),
     r"^model config .*/m/model\.json: field 'kind': 'rnn' is unknown, expected one of \['pooling', 'stitch'\]$"),
    ("wrong_format", lambda r: r.update(format="other"), r"^model config .*/m/model\.json: 'format' must be"),
])
def test_a_bad_model_json_fails_with_one_line_naming_file_and_field(tmp_path, case, change, message):
    folder = old_model_folder(tmp_path / "m", OLD_POOLING_JSON)
    (folder / "sub").mkdir()
    _break(folder, change)
    text = one_line_error(stitchnas.load_model, folder)
    assert json.loads((folder / "model.json").read_text())  # still JSON: the codec, not the parser, complains
    assert re.search(message, text), text


# --------------------------------------------------------------------------- anchors.json
def _anchor_files(folder: Path) -> list[AnchorEntry]:
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for name in ("tiny", "base"):
        (folder / f"{name}.pth").write_bytes(name.encode())
        entries.append(AnchorEntry(name=name, preset=f"vit_digits_{name}", config={"family": "vit", "embed_dim": 32},
                                   file=f"{name}.pth", sha256=file_sha256(folder / f"{name}.pth"), flops=100,
                                   params=10, val_acc=50.0, test_acc=48.5, train_seconds=1.0))
    return entries


def test_anchor_manifest_round_trip_through_the_folder(tmp_path):
    folder = tmp_path / "anchors"
    manifest = AnchorManifest(family="vit_digits", data={"name": "digits", "input_size": 8}, train={"epochs": 1},
                              overrides={"depth": 2}, anchors=tuple(_anchor_files(folder)))
    atomic_write_json(folder / "anchors.json", to_json(manifest))
    written = json.loads((folder / "anchors.json").read_text())
    assert written["format"] == "stitchnas.anchors" and written["format_version"] == 1
    assert set(written) == {"format", "format_version", "family", "data", "train", "overrides", "anchors"}
    assert set(written["anchors"][0]) == {"name", "preset", "config", "file", "sha256", "flops", "params",
                                          "val_acc", "test_acc", "train_seconds"}
    assert read_anchor_manifest(folder / "anchors.json") == manifest
    refs = read_anchor_folder(folder)
    assert [r.name for r in refs] == ["tiny", "base"]
    assert refs[0].path == str((folder / "tiny.pth").resolve()) and refs[0].sha256 == manifest.anchors[0].sha256
    assert dict(refs[1].config) == {"family": "vit", "embed_dim": 32}


def test_hand_written_and_bench_manifests_still_load(tmp_path):
    folder = tmp_path / "hand"
    entries = [{"name": e.name, "config": e.config, "file": e.file} for e in _anchor_files(folder)]
    (folder / "anchors.json").write_text(json.dumps({"format": "stitchnas.anchors", "format_version": 1,
                                                     "anchors": entries}))
    assert [r.name for r in read_anchor_folder(folder)] == ["tiny", "base"]
    (folder / "anchors.json").write_text(json.dumps({"format": "stitchnas.anchors", "format_version": 1,
                                                     "family": "vit_digits", "bench": {"presets": ["a"]},
                                                     "anchors": entries}))
    assert read_anchor_manifest(folder / "anchors.json").bench == {"presets": ["a"]}


@pytest.mark.parametrize("change, message", [
    (lambda m: m["anchors"].pop(),
     r"anchors manifest .*/anchors\.json: field 'anchors': expected at least 2 anchors to stitch, got 1$"),
    (lambda m: m["anchors"][1].pop("file"), r"anchors manifest .*/anchors\.json: missing field 'anchors\[1\]\.file'$"),
    (lambda m: m["anchors"][0].update(flops="many"),
     r"anchors manifest .*/anchors\.json: field 'anchors\[0\]\.flops': expected an integer, got 'many'$"),
    (lambda m: m.update(anchors=None), r"anchors manifest .*/anchors\.json: field 'anchors': expected a list, got None$"),
    (lambda m: m.pop("anchors"), r"anchors manifest .*/anchors\.json: missing field 'anchors'$"),
    (lambda m: m.update(format_version=2), r"anchors manifest .*/anchors\.json: 'format_version' 2 is not supported"),
])
def test_a_bad_anchor_manifest_fails_with_one_line(tmp_path, change, message):
    folder = tmp_path / "anchors"
    data = to_json(AnchorManifest(anchors=tuple(_anchor_files(folder))))
    change(data)
    (folder / "anchors.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        read_anchor_folder(folder)
    assert "\n" not in one_line_error(read_anchor_folder, folder)
