"""The benchmark commands the docs give still work.

Benchmarks are not run by CI, so their options and the library functions they wrap can drift
from what BENCHMARKS.md and README.md print: the issue-3 ranking command kept ``--gm`` and
``--epochs`` after both were renamed, and ``bench_transfer.py`` called the cluttered-digits
renderer with its old signature. Every documented ``python scripts/bench_*.py ...`` command is
parsed by its script's own parser here (no benchmark runs), and the transfer bench's renderer
is called on real digits.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("BENCHMARKS.md", "README.md")
COMMAND = re.compile(r"python (scripts/bench_\w+\.py)([^`#\n]*)")

# Runs each script as ``__main__`` until its parser has parsed the arguments, then stops it.
PARSE_ONLY = r"""
import argparse, io, json, runpy, sys
from contextlib import redirect_stderr

class Parsed(Exception):
    pass

original = argparse.ArgumentParser.parse_args
def parse_args(self, args=None, namespace=None):
    original(self, args, namespace)
    raise Parsed

argparse.ArgumentParser.parse_args = parse_args
sys.path.insert(0, "scripts")  # where ``python scripts/x.py`` finds benchlib
results = []
for script, argv in json.loads(sys.argv[1]):
    sys.argv = [script, *argv]
    err = io.StringIO()
    try:
        with redirect_stderr(err):
            runpy.run_path(script, run_name="__main__")
        results.append("returned before parsing its arguments")
    except Parsed:
        results.append(None)
    except SystemExit as exc:
        results.append(f"exit {exc.code}: {err.getvalue().strip().splitlines()[-1:]}")
print(json.dumps(results))
"""


def documented_commands() -> list[tuple[str, list[str], str]]:
    """``(script, argv, doc)`` of every bench command in a code block or inline code span."""
    found = []
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        blocks = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
        inline = re.findall(r"`([^`\n][^`]*)`", re.sub(r"```.*?```", "", text, flags=re.S))
        snippets = [b.replace("\\\n", " ") for b in blocks] + [s.replace("\n", " ") for s in inline]
        for snippet in snippets:
            for script, rest in COMMAND.findall(snippet):
                found.append((script, shlex.split(rest), doc))
    return found


def test_every_documented_bench_command_parses():
    commands = documented_commands()
    scripts = {script for script, _, _ in commands}
    # the docs cover the benches (a regex that stopped matching would make this test vacuous)
    assert len(commands) >= 15 and {"scripts/bench_ranking.py", "scripts/bench_transfer.py",
                                    "scripts/bench_mainjob.py"} <= scripts
    payload = json.dumps([(script, argv) for script, argv, _ in commands])
    out = subprocess.run([sys.executable, "-c", PARSE_ONLY, payload], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    failures = [f"{doc}: python {script} {shlex.join(argv)} -> {problem}"
                for (script, argv, doc), problem in zip(commands, results) if problem is not None]
    assert not failures, "\n".join(failures)


def test_parse_only_runner_reports_an_unknown_option():
    """The check above can fail: a renamed option is reported with argparse's message."""
    payload = json.dumps([("scripts/bench_ranking.py", ["--truth", "x", "--gm", "--epochs", "120"])])
    out = subprocess.run([sys.executable, "-c", PARSE_ONLY, payload], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    (problem,) = json.loads(out.stdout.strip().splitlines()[-1])
    assert problem is not None and problem.startswith("exit 2") and "--gm" in problem


def test_transfer_bench_renders_disjoint_tasks():
    spec = importlib.util.spec_from_file_location("bench_transfer", ROOT / "scripts" / "bench_transfer.py")
    bench = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    bench.ARGS = bench.parse_args(["--renders", "2", "--clutter", "0"])
    task = bench.render_task((5, 6, 7), 16, seed=0, stream=1)
    for split in ("train", "test"):
        x, y, src = task[f"x_{split}"], task[f"y_{split}"], task[f"src_{split}"]
        assert x.shape == (len(y), 1, 16, 16) and x.dtype == np.float32
        assert len(y) == 2 * len(set(src.tolist()))  # two renderings per source image
        assert set(y.tolist()) == {0, 1, 2}  # classes 5-7 relabelled 0-2
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
    assert not set(task["src_train"].tolist()) & set(task["src_test"].tolist())
