"""The command line: outputs, and one clear line for each kind of bad input."""

import json

import pytest

from stitchnas.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_flops_command_lists_all_configurations_and_checks_fvcore(capsys):
    code, out, _ = run_cli(capsys, "flops", "--json", "--input-size", "8")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 36
    assert rows[0]["config"] == "[1,1,8]" and rows[0]["flops"] < rows[-1]["flops"]
    code, out, _ = run_cli(capsys, "flops", "--json", "--check-fvcore", "--input-size", "8", "--config", "4,3,3")
    (row,) = json.loads(out)
    assert code == 0 and row["flops"] == row["fvcore_flops"] == rows[23]["flops"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["search", "pooling", "--dataset", "mnist"], "mnist"),
        (["search", "pooling", "--dataset", "cifar10"], "data_dir"),
        (["search", "pooling", "--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "/nonexistent/cifar"),
        # an embedded set never reads files: a --data-dir for it is a mistake, not ignored
        (["search", "pooling", "--data-dir", "/nonexistent/mine"], "--data-dir): data set 'digits' is embedded"),
        (["truth", "pooling", "--dataset", "cluttered_digits", "--data-dir", "."], "'cluttered_digits' is embedded"),
        (["search", "pooling", "--input-size", "3"], "input_size 3 is too small for 2 downsamplings"),
        (["search", "pooling", "--space", "resnet20", "--num-downsamples", "10"], "10 downsamplings do not fit in 9 positions"),
        (["search", "pooling", "--epochs", "0"], "'epochs'"),
        (["flops", "--config", "9,9,9"], "3 positive layer counts summing to 10"),
        (["evaluate", "/nonexistent/model"], "/nonexistent/model"),
    ],
)
def test_bad_input_gets_one_clear_line(capsys, tmp_path, argv, message):
    if argv[0] in ("search", "truth"):
        argv = argv + ["--out", str(tmp_path / "run"), "--no-progress"]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stitchnas: error:"), err
    assert message in lines[0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["search", "pooling", "--space", "resnet21"], "stitchnas search pooling: error: argument --space: invalid choice: 'resnet21'"),
        (["truth", "pooling", "--epochs", "x"], "stitchnas truth pooling: error: argument --epochs: invalid int value: 'x'"),
        (["search", "pooling", "--no-such-option"],
         "stitchnas search pooling: error: unrecognized arguments: --no-such-option (see stitchnas search pooling --help)"),
    ],
)
def test_option_syntax_errors_are_one_line_too(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    (line,) = err.strip().splitlines()  # no usage block above it
    assert line.startswith(message) and line.endswith(f"(see {message.split(': error')[0]} --help)"), err


def test_malformed_and_wrong_version_model_configs(capsys, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.json").write_text("{not json")
    code, _, err = run_cli(capsys, "evaluate", str(folder))
    assert code == 2 and "model.json" in err and "JSON" in err
    (folder / "model.json").write_text(json.dumps({"format": "stitchnas.model", "format_version": 99, "kind": "pooling"}))
    code, _, err = run_cli(capsys, "evaluate", str(folder))
    assert code == 2 and "'format_version' 99 is not supported" in err
    (folder / "model.json").write_text(json.dumps({"format": "other"}))
    code, _, err = run_cli(capsys, "evaluate", str(folder))
    assert code == 2 and "'format' must be 'stitchnas.model'" in err


def test_train_then_evaluate_and_tampered_weights(capsys, tmp_path):
    out = tmp_path / "train"
    code, stdout, _ = run_cli(capsys, "train", "--config", "4,3,3", "--epochs", "1", "--input-size", "8",
                              "--out", str(out), "--no-progress", "--device", "cpu")
    assert code == 0 and "[4,3,3]: test accuracy" in stdout
    code, stdout, _ = run_cli(capsys, "evaluate", str(out / "model"))
    report = json.loads(stdout)
    assert code == 0 and report["measured"]["test_acc"] == report["recorded"]["test_acc"]
    weights = out / "model" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:-10])
    code, _, err = run_cli(capsys, "evaluate", str(out / "model"))
    assert code == 2 and "SHA-256" in err


def test_export_command_from_a_search_run(capsys, tmp_path):
    run = tmp_path / "run"
    code, stdout, _ = run_cli(capsys, "search", "pooling", "--epochs", "1", "--input-size", "8", "--candidates", "3",
                              "--no-export", "--out", str(run), "--no-progress", "--device", "cpu")
    assert code == 0 and "Pareto front" in stdout
    code, stdout, _ = run_cli(capsys, "export", "--run", str(run), "--config", "[5,3,2]", "--out", str(tmp_path / "m"))
    assert code == 0
    record = json.loads((tmp_path / "m" / "model.json").read_text())
    assert record["notation"] == [5, 3, 2] and record["provenance"]["source"] == "supernet"
