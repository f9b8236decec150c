"""Portable exports (issue 16): every export also writes a ``torch.export`` program
(``model.pt2``) and, with the onnx extra, an ONNX file, both with a dynamic batch dimension,
and ``model.json`` records the input shape, dtype and normalisation.

The exports are of untrained networks of every kind (their logits are as good a check as a
trained model's, and they take no training time): a pooling configuration, an SN-Net stitch,
an SN-Netv2 three-segment route with low-rank stitching layers (merged on export), and
Learngene descendants of ViT and of ResNet-teacher students. Their portable artifacts must
give the logits of the module ``stitchnas.load_model`` rebuilds within 1e-4 at two batch sizes,
also in a Python process that cannot import stitchnas at all.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import stitchnas
from searchspace.pooling import create_space
from searchspace.stitch_v2 import ROUTE_TYPES, StitchSpaceV2
from stitching.anchors import create_anchor
from stitching.cnn import ResNetAnchor
from stitching.learngene import build_pool, default_students, make_student
from stitching.lowrank import LowRankStitchingLayer
from stitching.snnet import SNNet, anchor_space
from stitchnas.cli import main
from stitchnas.core.io import file_sha256
from stitchnas.core.records import Provenance
from stitchnas.data import DataSpec, load_data
from stitchnas.methods.pooling import PoolingSearchConfig, export_pooling_candidate
from stitchnas.methods.snnet import export_stitch_config
from stitchnas.search.export import BUILDERS, export_formats, export_model
from stitchnas.search.portable import (
    ONNX_FILE,
    PT2_FILE,
    InputSpec,
    PortableExportError,
    missing_onnx_modules,
    parse_formats,
)
from supernet.networks import ModelSpec, build_supernet

from helpers import perturb_batchnorm

TOL = 1e-4
BATCHES = (1, 5)  # other sizes than the export's own checks (1, 3) and its trace (2)
HAS_ONNX = not missing_onnx_modules()
KINDS = ("pooling", "snnet", "snnetv2_lowrank", "learngene_vit", "learngene_resnet")
BLOCKED = ("stitchnas", "searchspace", "supernet", "stitching")


def _provenance(data) -> Provenance:
    return Provenance(source="test", run_dir="/runs/test", checkpoint_sha256="c" * 64, dataset=data.name,
                      input_size=data.input_size, seed=1)


def _vit_anchors(data, names=("vit_digits_tiny", "vit_digits_small"), depth=2):
    return [create_anchor(n, depth=depth, img_size=data.input_size, in_chans=data.in_chans,
                          num_classes=data.num_classes) for n in names]


def _stitched(snnet: SNNet):
    """A configuration with at least one stitching layer (the most segments there are)."""
    return max(snnet.space, key=lambda c: (len(c.route), -c.id))


def _export(kind: str, folder: Path, data8, data16, formats) -> tuple[Path, torch.nn.Module | None]:
    """Export one network of ``kind``; returns the folder and, for stitched networks, the
    search-time network set to the exported configuration (its logits must equal the export's)."""
    torch.manual_seed(0)
    if kind == "pooling":
        return _pooling_export(folder, data8, formats), None
    data = data16 if kind == "learngene_resnet" else data8
    if kind == "snnet":
        anchors = _vit_anchors(data)
        snnet = SNNet(anchors, anchor_space(anchors, ("tiny", "small")))
    elif kind == "snnetv2_lowrank":
        anchors = _vit_anchors(data, depth=3)  # three blocks: the shortest with three-segment routes
        space = StitchSpaceV2((3, 3), names=("tiny", "small"), route_types=ROUTE_TYPES, name="snnetv2_vit")
        snnet = SNNet(anchors, space, layer_factory=functools.partial(LowRankStitchingLayer, rank=2))
        with torch.no_grad():  # a non-zero low-rank update, so merging it matters
            for layer in snnet.stitch_layers.values():
                layer.lora_b.normal_(0, 0.5)
    elif kind == "learngene_vit":
        teacher = _vit_anchors(data, ("vit_digits_base",))[0]
        students = [make_student(teacher.config, s) for s in default_students(teacher.config)]
        snnet = build_pool(students, [s.name for s in default_students(teacher.config)])
    else:
        teacher = ResNetAnchor((8, 16, 32, 64), (2, 2, 2, 2), in_chans=1, num_classes=10, img_size=16, stem_stride=2,
                               stem="conv7x7_maxpool")
        specs = default_students(teacher.config)
        students = [make_student(teacher.config, s) for s in specs]
        for student in students:
            perturb_batchnorm(student)
        snnet = build_pool(students, [s.name for s in specs])
    config = _stitched(snnet)
    with export_formats(formats):
        export_stitch_config(folder, snnet.eval(), config, data, 64, "cpu", _provenance(data))
    snnet.set_active(config)
    return folder, snnet


@pytest.fixture(scope="module")
def data8():
    return load_data(DataSpec(name="digits", input_size=8, seed=1, max_train_samples=240, max_test_samples=60))


@pytest.fixture(scope="module")
def data16():
    return load_data(DataSpec(name="digits", input_size=16, seed=1, max_train_samples=120, max_test_samples=60))


@pytest.fixture(scope="module")
def exports(tmp_path_factory, data8, data16):
    """``{kind: (folder, search network or None)}``; ONNX too where the extra is installed."""
    formats = "pt,pt2,onnx" if HAS_ONNX else "pt,pt2"
    root = tmp_path_factory.mktemp("portable")
    return {kind: _export(kind, root / kind, data8, data16, formats) for kind in KINDS}


def _inputs(record: dict, batch: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *record["input"]["shape"], generator=generator)


def _module_logits(folder: Path) -> tuple[dict, dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    model, record = stitchnas.load_model(folder, return_record=True)
    xs = {b: _inputs(record, b, seed=10 + b) for b in BATCHES}
    with torch.no_grad():
        return record, xs, {b: model(x) for b, x in xs.items()}


# --------------------------------------------------------------------------- model.json
@pytest.mark.parametrize("kind", KINDS)
def test_model_json_records_input_normalisation_and_artifacts(exports, data8, data16, kind):
    folder, _ = exports[kind]
    data = data16 if kind == "learngene_resnet" else data8
    record = json.loads((folder / "model.json").read_text())
    spec = InputSpec.from_json(record["input"])
    assert record["input"]["shape"] == [data.in_chans, data.input_size, data.input_size]
    assert record["input"]["batch"] == "dynamic" and record["input"]["dtype"] == "float32"
    assert spec.mean == data.mean and spec.std == data.std  # what the data pipeline applied
    assert set(record["artifacts"]) == ({"pt2", "onnx"} if HAS_ONNX else {"pt2"})
    for entry in record["artifacts"].values():
        assert entry["sha256"] == file_sha256(folder / entry["file"])
    assert record["artifacts"]["pt2"]["file"] == PT2_FILE
    if kind != "pooling":  # a stitched route: at least one (SN-Netv2: merged, plain) stitching layer
        assert record["model"]["stitches"] and len(record["config"]["route"]) >= 2 + (kind == "snnetv2_lowrank")
    assert stitchnas.read_model_record(folder)[1] == record  # the strict reader takes the new fields


def test_normalisation_recorded_is_the_one_the_data_pipeline_applies(data8):
    """Raw [0, 1] pixels normalised with the recorded mean/std give the tensors the model was
    trained and scored on (digits: 0..16 gray levels, so pixels are value / 16)."""
    from sklearn.datasets import load_digits

    spec = InputSpec.from_json(InputSpec.from_data(data8).to_json())  # as a deployer reads model.json
    raw = torch.as_tensor(load_digits().images / 16.0, dtype=torch.float32)[:, None]  # every image, already 8x8
    normalised = (raw - torch.tensor(spec.mean).view(1, -1, 1, 1)) / torch.tensor(spec.std).view(1, -1, 1, 1)
    for split in (data8.train, data8.test):
        for image in split.tensors[0][:5]:  # each is one of the deployer's normalised images, to float rounding
            assert (normalised - image).abs().flatten(1).max(1).values.min() < 1e-5


# --------------------------------------------------------------------------- logits
@pytest.mark.parametrize("kind", KINDS)
def test_pt2_program_gives_the_module_logits_at_two_batch_sizes(exports, kind):
    folder, network = exports[kind]
    record, xs, want = _module_logits(folder)
    program = torch.export.load(str(folder / PT2_FILE)).module()
    for batch in BATCHES:
        with torch.no_grad():
            got = program(xs[batch])
            assert got.shape == want[batch].shape == (batch, 10)
            assert (got - want[batch]).abs().max() <= TOL
            if network is not None:  # the search network itself (SN-Netv2: low-rank layers unmerged)
                assert (network(xs[batch]) - got).abs().max() <= TOL


@pytest.mark.skipif(not HAS_ONNX, reason="the onnx extra is not installed (pip install 'stitchnas[onnx]')")
@pytest.mark.parametrize("kind", KINDS)
def test_onnx_model_gives_the_module_logits_at_two_batch_sizes(exports, kind):
    import onnx
    import onnxruntime

    folder, _ = exports[kind]
    record, xs, want = _module_logits(folder)
    path = folder / record["artifacts"]["onnx"]["file"]
    assert path.name == ONNX_FILE
    onnx.checker.check_model(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("input", "logits") and isinstance(inp.shape[0], str)  # a dynamic batch axis
    for batch in BATCHES:
        got = torch.from_numpy(session.run(None, {"input": xs[batch].numpy()})[0])
        assert got.shape == want[batch].shape and (got - want[batch]).abs().max() <= TOL


LOADER = """
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is blocked in this process")
        return None

sys.meta_path.insert(0, Block())
sys.path = [p for p in sys.path if p and p.rstrip("/") != {repo!r}]  # the repo's sources (its venv may stay)
try:
    import stitchnas  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("stitchnas is importable")

import torch

inputs = torch.load(sys.argv[1])
outputs = {{}}
for name, (path, xs) in inputs.items():
    program = torch.export.load(path).module()
    with torch.no_grad():
        outputs[name] = {{b: program(x) for b, x in xs.items()}}
torch.save(outputs, sys.argv[2])
print("loaded", len(outputs), "programs; modules:", sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r}))
"""


def test_pt2_loads_in_a_process_that_cannot_import_stitchnas(exports, tmp_path):
    repo = str(Path(__file__).resolve().parents[1])
    want, inputs = {}, {}
    for kind in KINDS:
        _, xs, logits = _module_logits(exports[kind][0])
        inputs[kind] = (str(exports[kind][0] / PT2_FILE), xs)
        want[kind] = logits
    torch.save(inputs, tmp_path / "in.pt")
    (tmp_path / "load.py").write_text(textwrap.dedent(LOADER.format(blocked=BLOCKED, repo=repo)))
    proc = subprocess.run([sys.executable, "-I", str(tmp_path / "load.py"), str(tmp_path / "in.pt"),
                           str(tmp_path / "out.pt")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"loaded {len(KINDS)} programs; modules: []" in proc.stdout
    got = torch.load(tmp_path / "out.pt")
    for kind in KINDS:
        for batch in BATCHES:
            assert (got[kind][batch] - want[kind][batch]).abs().max() <= TOL, (kind, batch)


# --------------------------------------------------------------------------- formats and errors
def _pooling_export(folder: Path, data8, formats) -> Path:
    space = create_space("resnet20", width_scale=0.25)
    supernet = build_supernet(space, ModelSpec(data8.in_chans, data8.num_classes))
    cfg = PoolingSearchConfig(space=space, data=DataSpec(name="digits", input_size=8, seed=1))
    with export_formats(formats):
        export_pooling_candidate(folder, supernet, space, space.default_config(), data8, cfg, _provenance(data8))
    return folder


def test_formats_choose_the_files_and_a_re_export_removes_stale_ones(tmp_path, data8):
    folder = _pooling_export(tmp_path / "m", data8, "pt2")
    assert (folder / PT2_FILE).is_file() and not (folder / ONNX_FILE).exists()
    folder = _pooling_export(tmp_path / "m", data8, "pt")
    record = json.loads((folder / "model.json").read_text())
    assert "artifacts" not in record and "input" in record and not (folder / PT2_FILE).exists()
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.pt"]
    stitchnas.load_model(folder)


class _BatchDependent(torch.nn.Module):
    """A module torch.export cannot trace with a dynamic batch (a branch on the batch size)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x.flatten(1))
        return y * 2 if x.shape[0] > 4 else y


def _pooling_body() -> dict:
    space = create_space("resnet20", width_scale=0.25)
    config = space.default_config()
    return {"space": space.to_json(), "config": config.to_json(), "notation": list(space.notation(config)),
            "model": {"spec": {"in_chans": 1, "num_classes": 10}, "input_size": 8}, "flops": 1, "params": 1,
            "metrics": {}}


def test_a_model_that_cannot_be_exported_fails_in_one_line_naming_it(tmp_path, data8, monkeypatch):
    monkeypatch.setitem(BUILDERS, "pooling", lambda record: _BatchDependent())
    body = _pooling_body()
    label = "[" + ",".join(str(n) for n in body["notation"]) + "]"
    with pytest.raises(PortableExportError) as info:
        export_model(tmp_path / "m", _BatchDependent(), "pooling", body, _provenance(data8),
                     inputs=InputSpec.from_data(data8))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"pooling model {label} ({tmp_path / 'm'}): torch.export")
    assert isinstance(info.value, ValueError)  # the CLI prints it as one line, exit 2
    assert not (tmp_path / "m").exists()  # nothing written


class _TraceBakesState(torch.nn.Module):
    """Traces fine, but the program differs from the module: a Python counter read at trace
    time is baked into the graph as a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(x.flatten(1)) + self.calls


def test_a_program_whose_logits_differ_from_the_module_is_refused(tmp_path, data8, monkeypatch):
    monkeypatch.setitem(BUILDERS, "pooling", lambda record: _TraceBakesState())
    body = _pooling_body()
    with pytest.raises(PortableExportError) as info:
        export_model(tmp_path / "m", _TraceBakesState(), "pooling", body, _provenance(data8),
                     inputs=InputSpec.from_data(data8))
    message = str(info.value)
    assert "\n" not in message and "torch.export program's logits differ from the module's" in message
    assert re.search(r"differ from the module.s by [0-9.e+-]+ at batch size \d \(allowed 0.0001\)$", message)
    assert not (tmp_path / "m").exists()


def test_portable_formats_need_the_input_spec(tmp_path, data8):
    body = _pooling_body()
    with pytest.raises(ValueError, match=r"^export_model: formats \['pt2'\] need 'inputs'"):
        export_model(tmp_path / "m", BUILDERS["pooling"](body), "pooling", body, _provenance(data8))
    assert not (tmp_path / "m").exists()


def test_parse_formats():
    assert parse_formats("pt2") == ("pt", "pt2") and parse_formats(" PT2 , pt ") == ("pt", "pt2")
    assert parse_formats(["pt"]) == ("pt",)
    if HAS_ONNX:
        assert parse_formats("onnx,pt2") == ("pt", "pt2", "onnx")
    for bad, fragment in (("", "expected a comma-separated list"), ("pt2,", "expected a comma-separated list"),
                          ("pt3", "unknown format 'pt3'"), ("pt2,tflite", "unknown format 'tflite'")):
        with pytest.raises(ValueError, match=r"^--format .*" + fragment):
            parse_formats(bad)


@pytest.mark.parametrize("command", [["export"], ["stitch", "export"], ["learngene", "export"]])
@pytest.mark.parametrize("formats, fragment", [
    ("pt3", "--format 'pt3': unknown format 'pt3', expected a comma-separated list of pt, pt2, onnx"),
    ("onnx", "--format onnx: needs the onnx extra (onnxruntime not installed); install it with: "
             "pip install 'stitchnas[onnx]'"),
])
def test_bad_format_option_fails_in_one_line_before_any_work(capsys, monkeypatch, tmp_path, command, formats,
                                                             fragment):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # the extra not installed (import fails)
    code = main([*command, "--run", str(tmp_path / "no_run"), "--config", "0", "--out", str(tmp_path / "m"),
                 "--format", formats])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"stitchnas: error: {fragment}"]
    assert not (tmp_path / "m").exists()


def test_cli_export_writes_the_requested_formats(capsys, tmp_path):
    run = tmp_path / "run"
    assert main(["search", "pooling", "--epochs", "1", "--input-size", "8",
                 "--candidates", "2", "--no-export", "--out", str(run), "--no-progress", "--device", "cpu"]) == 0
    formats = "onnx" if HAS_ONNX else "pt2"  # the fixture's exports check both; here: the option reaches the export
    assert main(["export", "--run", str(run), "--config", "[4,3,3]", "--out", str(tmp_path / "m"),
                 "--format", formats]) == 0
    assert "exported [4,3,3]" in capsys.readouterr().out
    record = json.loads((tmp_path / "m" / "model.json").read_text())
    assert set(record["artifacts"]) == {formats} and record["input"]["shape"] == [1, 8, 8]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(["model.json", "model.pt",
                                                                         record["artifacts"][formats]["file"]])
