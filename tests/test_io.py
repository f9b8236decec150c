from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import pytest
import torch

from stitchnas.core.io import (
    ResultsTable,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    load_checkpoint,
    read_json,
    save_checkpoint,
)


def test_atomic_writes_replace_content_and_leave_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    atomic_write_text(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "t.txt"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_atomic_write_gives_normal_permissions(tmp_path: Path) -> None:
    # A new file gets the mode open() would give it (mkstemp alone would give 0600).
    (tmp_path / "plain").write_bytes(b"")
    atomic_write_bytes(tmp_path / "new", b"x")
    assert (tmp_path / "new").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
    # A replaced file keeps its mode.
    (tmp_path / "kept").write_bytes(b"")
    os.chmod(tmp_path / "kept", 0o640)
    atomic_write_bytes(tmp_path / "kept", b"y")
    assert (tmp_path / "kept").stat().st_mode & 0o777 == 0o640


def test_atomic_write_json_format_and_failure_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert target.read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=2) + "\n"
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_failed_write_removes_temp_file(tmp_path: Path) -> None:
    class Boom:
        def __bytes__(self) -> bytes:
            raise RuntimeError("boom")

    with pytest.raises(TypeError):
        atomic_write_bytes(tmp_path / "x", Boom())  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_write_into_missing_folder_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="folder .*missing.* does not exist"):
        atomic_write_bytes(tmp_path / "missing" / "x.bin", b"")


def test_read_json_errors_name_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text('{"x": 1}')
    assert read_json(good, "run config") == {"x": 1}
    with pytest.raises(ValueError, match=r"^run config .*nope\.json: file not found$"):
        read_json(tmp_path / "nope.json", "run config")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    pattern = r"^search state .*bad\.json: not valid JSON \(JSONDecodeError: "
    with pytest.raises(ValueError, match=pattern):
        read_json(bad, "search state")
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_json(binary, "x")
    with pytest.raises(ValueError, match="is a folder"):
        read_json(tmp_path, "x")


def test_file_sha256(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)  # spans several read chunks
    target = tmp_path / "blob"
    target.write_bytes(data)
    assert file_sha256(target) == hashlib.sha256(data).hexdigest()
    with pytest.raises(ValueError, match="not found"):
        file_sha256(tmp_path / "absent")


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"version": 1, "model": model.state_dict(), "epoch": 3,
                           "arch": {"positions": [1, 4]}, "history": [{"loss": 0.5}]})
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and loaded["arch"] == {"positions": [1, 4]}
    assert torch.equal(loaded["model"]["weight"], model.weight.detach())
    # atomic_torch_save files load the same way.
    atomic_torch_save({"w": torch.ones(2)}, tmp_path / "plain.pt")
    assert torch.equal(load_checkpoint(tmp_path / "plain.pt")["w"], torch.ones(2))
    with pytest.raises(TypeError, match="must be a mapping"):
        save_checkpoint(path, [1, 2])  # type: ignore[arg-type]


def test_load_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^checkpoint .*missing\.pt: file not found$"):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"definitely not a torch file")
    with pytest.raises(ValueError, match=r"checkpoint .*corrupt\.pt: cannot be loaded") as info:
        load_checkpoint(corrupt)
    assert "\n" not in str(info.value)
    # Truncated real checkpoint.
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"w": torch.arange(1000.0)})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ValueError, match="truncated.pt: cannot be loaded"):
        load_checkpoint(truncated)
    # Arbitrary objects are refused by weights_only=True.
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"obj": Path("x")}, unsafe)
    with pytest.raises(ValueError, match="unsafe.pt: cannot be loaded"):
        load_checkpoint(unsafe)
    not_dict = tmp_path / "list.pt"
    torch.save([torch.ones(1)], not_dict)
    with pytest.raises(ValueError, match="list.pt: expected a dict, got list"):
        load_checkpoint(not_dict)


COLUMNS = ("candidate", "label", "flops", "val_acc", "status", "error")


def test_results_table_append_and_resume(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    table = ResultsTable(path, COLUMNS)
    assert path.read_text() == "candidate,label,flops,val_acc,status,error\n"
    table.append({"candidate": 3, "label": "[4, 3, 3]", "flops": 41_000_000, "val_acc": 0.1 + 0.2,
                  "status": "ok", "error": None})
    table.append({"candidate": 7, "label": "a,b \"quoted\"", "flops": 12, "val_acc": float("nan"),
                  "status": "failed", "error": "line one\nline two"})
    rows = table.rows()
    assert rows[0] == {"candidate": 3, "label": "[4, 3, 3]", "flops": 41_000_000,
                       "val_acc": 0.1 + 0.2, "status": "ok", "error": None}
    assert math.isnan(rows[1]["val_acc"]) and rows[1]["error"] == "line one\nline two"
    assert rows[1]["label"] == 'a,b "quoted"'

    reopened = ResultsTable(path, COLUMNS)
    assert len(reopened) == 2
    assert reopened.rows()[0] == rows[0]  # exact float round trip
    assert reopened.done_keys("candidate") == {"3", "7"}
    reopened.append({"candidate": 9, "label": "x", "flops": 1.5, "val_acc": 0.5, "status": "ok",
                     "error": ""})
    assert ResultsTable(path, COLUMNS).done_keys("candidate") == {"3", "7", "9"}
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_results_table_numpy_values(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    table = ResultsTable(tmp_path / "r.csv", ("a", "b"))
    table.append({"a": np.float64(0.25), "b": np.int64(4)})
    assert table.rows() == [{"a": 0.25, "b": 4}]


def test_results_table_errors(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    table = ResultsTable(path, COLUMNS)
    with pytest.raises(ValueError, match=r"missing columns \['error'\]"):
        table.append({c: 1 for c in COLUMNS[:-1]})
    with pytest.raises(ValueError, match=r"unknown keys \['extra'\]"):
        table.append({**{c: 1 for c in COLUMNS}, "extra": 2})
    assert len(table) == 0 and len(ResultsTable(path, COLUMNS)) == 0
    with pytest.raises(ValueError, match="key_column 'nope' is not one of"):
        table.done_keys("nope")
    with pytest.raises(ValueError, match=r"header \['candidate'.*does not match"):
        ResultsTable(path, ("candidate", "acc"))
    with pytest.raises(ValueError, match="columns must not be empty"):
        ResultsTable(tmp_path / "e.csv", ())
    with pytest.raises(ValueError, match="duplicate column"):
        ResultsTable(tmp_path / "d.csv", ("a", "a"))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.csv: empty file"):
        ResultsTable(empty, ("a",))
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b\n1,2\n3\n")
    with pytest.raises(ValueError, match="ragged.csv: line 3 has 1 cells, expected 2"):
        ResultsTable(ragged, ("a", "b"))


def test_read_versioned_json_checks_format_and_version(tmp_path):
    from stitchnas.core.io import read_versioned_json

    path = tmp_path / "thing.json"
    path.write_text(json.dumps({"format": "demo", "format_version": 2, "x": 1}))
    assert read_versioned_json(path, "demo file", "demo", 2)["x"] == 1
    with pytest.raises(ValueError, match=r"demo file .*thing.json: 'format_version' 2 is not supported \(this stitchnas reads version 3\)"):
        read_versioned_json(path, "demo file", "demo", 3)
    with pytest.raises(ValueError, match="'format' must be 'other', got 'demo'"):
        read_versioned_json(path, "demo file", "other", 2)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="'format' must be 'demo', got \\[1, 2\\]"):
        read_versioned_json(path, "demo file", "demo", 2)
