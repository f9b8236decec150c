#!/usr/bin/env python
"""Fuzz the ``stitchnas`` command line with bad invocations and bad files ("Fail loudly, lose nothing").

Every case runs the real ``stitchnas`` console script in a fresh temporary folder, after an
optional setup step that writes a bad input *in the real format with one thing wrong* (most
start from a copy of a shared fixture: a tiny pooling run, a BMS run, a trained model, an
anchor family, a stitch run, a learngene distillation and pool, a ground-truth folder, valid
.npz and CIFAR pickle data). Each run is classified:

``one-line error``
    exit code 2, the last non-empty line of stderr starts with ``stitchnas: error:`` (or
    argparse's ``stitchnas <command>: error:``) and stderr holds no ``Traceback``; for cases
    that start from existing files, no file that was there before was changed or deleted.
``correct run``
    exit 0 where the case is a legitimately valid control (its outputs are finite and loadable),
    or a diverging-but-valid run that still produced a sane result.
``clean interrupt``
    Ctrl-C cases: SIGINT mid-run gives exit 130, the one-line ``stitchnas: interrupted ...
    --resume`` message, no ``pareto.json``, no temp files left, the checkpoint kept; and rerunning
    with ``--resume`` then finishes with exit 0 and no duplicated results.
``bad``
    anything else: a traceback, a hang (per-case timeout, the process group is killed), exit 0
    for an invalid input, a silently wrong result (NaN model on the front, unloadable outputs),
    a wrong exit code, a multi-line error, a pre-existing file changed by a failing command.

Usage::

    python scripts/fuzz_cli.py                 # build fixtures, run every case on 2 workers
    python scripts/fuzz_cli.py --list          # the table
    python scripts/fuzz_cli.py --only 'npz|cifar' --json out.json --jobs 2
    python scripts/fuzz_cli.py --fixtures /tmp/fz-fixtures   # build once, reuse on later runs
    git archive 54337e0 | tar -x -C /tmp/old && python scripts/fuzz_cli.py --repo /tmp/old   # another commit

The read-only and disk-full cases need root (``chattr +i``, a read-only or 48 KiB tmpfs mount,
all undone after the case); without it they are reported as ``skipped``. Nothing touches the
network; no case starts Ray.

Exit status: 0 when no case is bad, 1 otherwise (3 when the fixtures cannot be built).
Run it with ``OMP_NUM_THREADS=1`` (it sets that for every child anyway).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import datetime as _dt
import hashlib
import io
import json
import math
import multiprocessing
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: The package tree the CLI runs from (``--repo``; default this checkout). Set before the workers fork.
CODE_ROOT = REPO
DEFAULT_TIMEOUT = 120
EXC_RE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Diverged|Failure|Warning)\b(:.*)?$")
RUNTIME_FAILURE_RE = re.compile(r"training diverged|non-finite logits")
ERROR_RE = re.compile(r"^stitchnas( [a-z][a-z-]*)*: error: ")
INTERRUPT_RE = re.compile(r"^stitchnas: interrupted")

# Tiny settings shared by the fixtures and most cases.
CPU = ["--device", "cpu", "--no-progress"]
TINY_POOL = ["--epochs", "1", "--input-size", "8", "--width-scale", "0.25", "--candidates", "4", *CPU]
TINY_BMS = ["-M", "2", "--epochs", "1", "--input-size", "8", "--width-scale", "0.25", "--candidates", "4", *CPU]
TINY_TRAIN = ["--config", "4,3,3", "--epochs", "1", "--input-size", "8", "--width-scale", "0.25", *CPU]
TINY_TRUTH = ["--configs", "4,3,3;1,3,6;5,1,4;4,4,2", "--seeds", "0", "--epochs", "1", "--input-size", "8",
              "--width-scale", "0.25", *CPU]
TINY_ANCHORS = ["--depth", "2", "--epochs", "1", "--max-train-samples", "120", "--input-size", "8", *CPU]
TINY_STITCH = ["--epochs", "1", "--max-train-samples", "120", "--input-size", "8", "--init-samples", "20", *CPU]
TINY_LGD = ["--matches", "end", "--epochs", "1", "--max-train-samples", "120", "--input-size", "8", *CPU]
TINY_LGP = ["--epochs", "1", *CPU]

# Issue items a case covers.
COVERS = {
    "CONTROL": "valid invocation (control)",
    "OPT": "bad option value rejected up front (non-finite, out of range, unknown device)",
    "DIVERGE": "diverging / non-finite training must not end in a traceback or a NaN model",
    "OUT": "unusable output folder (a file, under a file, dangling symlink, read-only, disk full)",
    "RUNCFG": "run_config.json wrong (valid JSON of the wrong shape, bad fields)",
    "RESULTS": "results.csv / accuracy_matrix.csv wrong (duplicates, unknown candidates, bad cells)",
    "CKPT": "checkpoint wrong (supernet.pt, snnet.pt, pool.pt, model_checkpoint.pt)",
    "MODEL": "exported model wrong (model.json fields, model.pt bytes)",
    "ANCHORS": "anchors wrong (anchors.json, .pth, .safetensors, another architecture)",
    "LEARNGENE": "learngene distillation files wrong (learngene.json, learngene.pt, students, matches)",
    "NPZ": ".npz data wrong (empty, zero-sized images, bad arrays)",
    "CIFAR": "CIFAR pickle folder wrong",
    "TRUTH": "ground-truth folder wrong (truth.csv, its run_config.json)",
    "MISMATCH": "data that does not fit the model (classes, channels)",
    "SIGINT": "Ctrl-C mid-run: exit 130, one line, checkpoint kept, --resume finishes",
}


# --------------------------------------------------------------------------- the table
@dataclass
class Interrupt:
    """SIGINT the run once ``trigger(ctx)`` holds, then (``resume``) rerun it with --resume."""

    trigger: Callable[[Ctx], bool]
    keep: str  # a file (relative to the case folder) that must survive the interrupt
    resume: bool = True
    after_resume: Callable[[Ctx], list[str]] | None = None  # extra checks, return problems


@dataclass
class Case:
    id: str
    expect: str  # "error", "ok", "sane" (one-line error, or exit 0 with finite, loadable outputs), "interrupt"
    covers: str
    setup: Callable[[Ctx], list[str]]
    note: str = ""
    timeout: int = DEFAULT_TIMEOUT
    interrupt: Interrupt | None = None
    guard: bool = True  # error cases: files present before the run must be unchanged after it
    check: Callable[[Ctx], list[str]] | None = None  # extra checks for exit-0 runs
    static: list[str] | None = None  # the argv, when it needs no setup


CASES: list[Case] = []


def add(id: str, expect: str, covers: str, argv: list[str] | Callable[[Ctx], list[str]], note: str = "",
        **kw: Any) -> None:
    assert covers in COVERS, covers
    assert expect in ("error", "ok", "sane", "interrupt"), expect
    assert all(c.id != id for c in CASES), id
    setup = argv if callable(argv) else (lambda ctx, a=list(argv): list(a))
    CASES.append(Case(id, expect, covers, setup, note, static=None if callable(argv) else list(argv), **kw))


def case(id: str, expect: str, covers: str, note: str = "", **kw: Any):
    def deco(fn: Callable[[Ctx], list[str]]) -> Callable[[Ctx], list[str]]:
        add(id, expect, covers, fn, note, **kw)
        return fn
    return deco


def command_of(argv: list[str]) -> str:
    if not argv:
        return "?"
    if argv[0] in ("search", "truth", "anchors", "stitch", "learngene") and len(argv) > 1:
        return f"{argv[0]} {argv[1]}"
    return argv[0]


# --------------------------------------------------------------------------- case context
class Ctx:
    """A case's folder (the CLI's working directory) and helpers to write bad files."""

    def __init__(self, folder: Path, fixtures: Path) -> None:
        self.dir, self.fx = folder, fixtures
        self.immutable: list[Path] = []
        self.mounts: list[Path] = []

    def p(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    # -- fixtures
    def copy(self, name: str, dest: str | None = None) -> str:
        dest = dest or name
        src = self.fx / name
        if src.is_dir():
            shutil.copytree(src, self.p(dest), symlinks=True)
        else:
            shutil.copy2(src, self.p(dest))
        return dest

    def copy_stitch(self, anchors: bool = False) -> str:
        """The stitch run; with ``anchors`` also a private copy of the anchor family, which the
        run's config then points at (so a case can break the anchors)."""
        self.copy("stitch")
        if anchors:
            self.copy("anchors")
            self.jedit("stitch/run_config.json", lambda d: [a.update(path=str(self.p("anchors", Path(a["path"]).name)))
                                                            for a in d["anchors"]])
        return "stitch"

    def copy_lg(self) -> None:
        """Private copies of the anchors, the distillation run and the pool run, relinked."""
        self.copy("anchors")
        self.copy("lgd")
        self.copy("lgp")
        teacher = str(self.p("anchors", "vit_digits_base.pth"))
        self.jedit("lgd/run_config.json", lambda d: d["teacher"].update(path=teacher))
        self.jedit("lgd/learngene.json", lambda d: d["teacher"].update(path=teacher))
        self.jedit("lgp/run_config.json", lambda d: d.update(distill_run=str(self.p("lgd"))))

    # -- files
    def write(self, rel: str, data: bytes | str) -> str:
        path = self.p(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return rel

    def jload(self, rel: str) -> Any:
        return json.loads(self.p(rel).read_text())

    def jdump(self, rel: str, obj: Any) -> None:
        self.write(rel, json.dumps(obj, indent=2))

    def jedit(self, rel: str, fn: Callable[[Any], Any]) -> None:
        """Edit a JSON file in place: ``fn`` mutates the decoded object (its return value is ignored)."""
        data = self.jload(rel)
        fn(data)
        self.jdump(rel, data)

    def truncate(self, rel: str, keep: float = 0.5) -> None:
        data = self.p(rel).read_bytes()
        self.p(rel).write_bytes(data[: int(len(data) * keep)])

    def randbytes(self, rel: str, n: int = 4096) -> None:
        self.write(rel, random.Random(rel).randbytes(n))

    def tload(self, rel: str) -> Any:
        import torch

        return torch.load(self.p(rel), map_location="cpu", weights_only=True)

    def tsave(self, obj: Any, rel: str) -> None:
        import torch

        self.p(rel).parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, self.p(rel))

    def tedit(self, rel: str, fn: Callable[[Any], Any]) -> None:
        """Edit a torch file in place: ``fn`` mutates the loaded object (its return value is ignored)."""
        obj = self.tload(rel)
        fn(obj)
        self.tsave(obj, rel)

    def tmap(self, rel: str, fn: Callable[[Any], Any]) -> None:
        """Replace a torch file's content with ``fn(content)``."""
        self.tsave(fn(self.tload(rel)), rel)

    def fix_sha(self, model_dir: str) -> None:
        """Make model.json's weights_sha256 match a tampered model.pt (so the hash check passes
        and the weights themselves are what gets tested)."""
        digest = hashlib.sha256(self.p(model_dir, "model.pt").read_bytes()).hexdigest()
        self.jedit(f"{model_dir}/model.json", lambda d: d.update(weights_sha256=digest))

    def npz(self, rel: str, **arrays: Any) -> str:
        import numpy as np

        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        self.write(rel, buffer.getvalue())
        return rel

    # -- hostile file systems (root only; undone after the case)
    def make_immutable(self, rel: str) -> bool:
        path = self.p(rel)
        if shutil.which("chattr") is None:
            return False
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            return False
        self.immutable.append(path)
        return True

    def mount_tmpfs(self, rel: str, size: str, read_only: bool = False) -> bool:
        path = self.p(rel)
        path.mkdir(parents=True, exist_ok=True)
        opts = f"size={size}" + (",ro" if read_only else "")
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                                               capture_output=True).returncode != 0:
            return False
        self.mounts.append(path)
        return True

    def cleanup(self) -> None:
        for path in self.immutable:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        for path in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
        self.immutable, self.mounts = [], []


class Skip(Exception):
    """The case's setup cannot be done on this machine (e.g. no chattr, not root)."""


# --------------------------------------------------------------------------- tensor helpers
def _map_tensors(obj: Any, fn: Callable[[Any], Any]) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_tensors(v, fn) for v in obj]
    return obj


def nan_tensors(obj: Any) -> Any:
    return _map_tensors(obj, lambda t: t.float().fill_(float("nan")).to(t.dtype) if t.is_floating_point() else t)


def reshape_first(state: dict[str, Any]) -> dict[str, Any]:
    """The state dict with its first floating tensor given one extra row (a wrong shape)."""
    import torch

    out = dict(state)
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() >= 1:
            out[key] = torch.cat([value, value[:1]])
            return out
    raise AssertionError("no tensor to reshape")


def refused_object() -> Any:
    """A dict torch.load(weights_only=True) refuses (a Fraction inside)."""
    import fractions

    return {"model": {"w": fractions.Fraction(1, 3)}}


# --------------------------------------------------------------------------- checks of outputs
def _finite_tensors(obj: Any) -> bool:
    import torch

    if isinstance(obj, torch.Tensor):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, dict):
        return all(_finite_tensors(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_finite_tensors(v) for v in obj)
    return True


def _num(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def sanity_problems(out: Path) -> list[str]:
    """What is wrong with a run folder that claims success: failed or non-finite results, an
    empty or NaN front, weights files that do not load or hold NaN/inf."""
    import torch

    problems: list[str] = []
    if not out.is_dir():
        return [f"{out.name}: no output folder"]
    results = out / "results.csv"
    if results.is_file():
        with results.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        bad = [r.get("candidate") for r in rows if r.get("status") != "ok" or not math.isfinite(_num(r.get("val_acc")))]
        if bad:
            problems.append(f"results.csv: {len(bad)} of {len(rows)} candidates failed or non-finite ({bad[:4]})")
        keys = Counter(r.get("candidate") for r in rows)
        dups = [k for k, n in keys.items() if n > 1]
        if dups:
            problems.append(f"results.csv: duplicated candidates {dups[:4]}")
        pareto = out / "pareto.json"
        if not pareto.is_file():
            problems.append("no pareto.json")
        else:
            front = json.loads(pareto.read_text()).get("front", [])
            if not front:
                problems.append("pareto.json: empty front")
            if any(not math.isfinite(_num(m.get("val_acc"))) for m in front):
                problems.append("pareto.json: non-finite accuracy on the front")
    truth = out / "truth.csv"
    if truth.is_file():
        with truth.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        if any(not math.isfinite(_num(r.get("test_acc"))) for r in rows):
            problems.append("truth.csv: non-finite test accuracy")
    for path in sorted([*out.rglob("*.pt"), *out.rglob("*.pth")]):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{path.relative_to(out)}: does not load ({type(exc).__name__})")
            continue
        if not _finite_tensors(obj):
            problems.append(f"{path.relative_to(out)}: NaN/inf weights")
    for path in sorted(out.rglob("model.json")):
        metrics = json.loads(path.read_text()).get("metrics", {})
        if any(isinstance(v, float) and not math.isfinite(v) for v in metrics.values()):
            problems.append(f"{path.relative_to(out)}: non-finite metrics")
    return problems


def out_of(argv: list[str]) -> str | None:
    for i, a in enumerate(argv[:-1]):
        if a == "--out":
            return argv[i + 1]
    return None


def snapshot(folder: Path) -> dict[str, str]:
    state = {}
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink() and path.stat().st_size < 64 << 20:
                state[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


# ============================================================================ the cases
# Paths in argv are relative to the case folder (the CLI's working directory); fixtures are
# copied in by the setup. ``ctx.copy("pool")`` gives the tiny pooling run, ``"bms"`` the BMS run,
# ``"train"`` a `stitchnas train` run (its model in train/model), ``"model"`` an exported pooling
# model, ``"smodel"`` an exported stitch model, ``"anchors"``, ``"stitch"``, ``"lgd"``, ``"lgp"``,
# ``"truth"``, ``"npz_ok.npz"`` and ``"cifar_ok"``.

def _pool(ctx: Ctx) -> str:
    return ctx.copy("pool")


POOL_RESUME = ["search", "pooling", *TINY_POOL, "--out", "pool", "--resume"]
BMS_RESUME = ["search", "bms", *TINY_BMS, "--out", "bms", "--resume"]
STITCH_RESUME = ["stitch", "train", "--anchors", "ANCHORS", *TINY_STITCH, "--out", "stitch", "--resume"]


def stitch_resume_argv(ctx: Ctx) -> list[str]:
    return [a if a != "ANCHORS" else str(ctx.fx / "anchors") for a in STITCH_RESUME]


def lgp_resume_argv() -> list[str]:
    return ["learngene", "pool", "--distill", "lgd", *TINY_LGP, "--out", "lgp", "--resume"]


# ---------------------------------------------------------------- controls
add("ctl-search-pooling", "ok", "CONTROL", ["search", "pooling", *TINY_POOL, "--out", "out"])
add("ctl-search-pooling-npz", "ok", "CONTROL",
    lambda c: [*(c.copy("npz_ok.npz") and []), "search", "pooling", *TINY_POOL, "--dataset", "npz",
               "--data-dir", "npz_ok.npz", "--out", "out"])
add("ctl-search-pooling-cifar", "ok", "CONTROL",
    lambda c: [*(c.copy("cifar_ok") and []), "search", "pooling", *TINY_POOL, "--dataset", "cifar10",
               "--data-dir", "cifar_ok", "--out", "out"])
add("ctl-resume-finished", "ok", "CONTROL", lambda c: [*(_pool(c) and []), *POOL_RESUME],
    note="--resume of a finished run re-uses every result")
add("ctl-resume-no-results", "ok", "CONTROL",
    lambda c: [*(_pool(c) and []), *(c.p("pool/results.csv").unlink() or []), *POOL_RESUME],
    note="results.csv deleted: --resume scores again")
add("ctl-export", "ok", "CONTROL", lambda c: [*(_pool(c) and []), "export", "--run", "pool", "--config", "4,3,3",
                                              "--out", "m"])
add("ctl-evaluate", "ok", "CONTROL", lambda c: ["evaluate", c.copy("model")])
add("ctl-flops", "ok", "CONTROL", ["flops", "--config", "4,3,3", "--input-size", "8", "--check-fvcore"])
add("ctl-rank-partial", "ok", "CONTROL",
    lambda c: ["rank", "--run", _pool(c), "--truth", c.copy("truth"), "--partial"])
add("ctl-stitch-export", "ok", "CONTROL",
    lambda c: ["stitch", "export", "--run", c.copy("stitch"), "--config", "0", "--out", "m"])
add("ctl-learngene-export", "ok", "CONTROL",
    lambda c: [*(c.copy_lg() or []), "learngene", "export", "--run", "lgp", "--config", "0", "--out", "m"])

# ---------------------------------------------------------------- search pooling: options
SP = ["search", "pooling", *TINY_POOL, "--out", "out"]
for cid, extra, expect, cov, note in [
    ("sp-lr-nan", ["--lr", "nan"], "error", "OPT", ""),
    ("sp-lr-inf", ["--lr", "inf"], "error", "OPT", ""),
    ("sp-lr-1e6", ["--lr", "1e6"], "sane", "DIVERGE", "valid but diverges: one-line error or a sane front"),
    ("sp-lr-negative", ["--lr", "-0.1"], "error", "OPT", ""),
    ("sp-weight-decay-nan", ["--weight-decay", "nan"], "error", "OPT", ""),
    ("sp-weight-decay-negative", ["--weight-decay", "-1"], "error", "OPT", ""),
    ("sp-width-scale-inf", ["--width-scale", "inf"], "error", "OPT", ""),
    ("sp-width-scale-nan", ["--width-scale", "nan"], "error", "OPT", ""),
    ("sp-width-scale-tiny", ["--width-scale", "1e-9"], "sane", "OPT",
     "widths round to zero channels: a one-line error, or (clamped to 1 channel) a sane run"),
    ("sp-device-garbage", ["--device", "garbage"], "error", "OPT", ""),
    ("sp-device-cuda-missing", ["--device", "cuda:7"], "error", "OPT", "no such GPU here"),
    ("sp-batch-size-zero", ["--batch-size", "0"], "error", "OPT", ""),
    ("sp-epochs-negative", ["--epochs", "-1"], "error", "OPT", ""),
    ("sp-input-size-zero", ["--input-size", "0"], "error", "OPT", ""),
    ("sp-seed-negative", ["--seed", "-1"], "error", "OPT", ""),
    ("sp-candidates-zero", ["--candidates", "0"], "error", "OPT", ""),
    ("sp-calib-batches-zero", ["--calib-batches", "0"], "error", "OPT", "BatchNorm recalibration from no batch"),
    ("sp-calib-batches-negative", ["--calib-batches", "-3"], "error", "OPT", ""),
    ("sp-num-downsamples-zero", ["--num-downsamples", "0"], "sane", "OPT", "a one-placement space: error or sane run"),
    ("sp-random-no-budget", ["--search", "random"], "error", "OPT", ""),
    ("sp-num-workers-zero", ["--num-workers", "0"], "error", "OPT", ""),
    ("sp-lr-text", ["--lr", "fast"], "error", "OPT", "argparse's own error line"),
    ("sp-data-option-no-equals", ["--data-option", "canvas_size"], "error", "OPT", ""),
    ("sp-data-option-unknown", ["--data-option", "canvas_size=24"], "error", "OPT", "digits takes no options"),
]:
    add(cid, expect, cov, SP[:2] + TINY_POOL + extra + ["--out", "out"], note)
add("sp-cluttered-canvas-negative", "error", "OPT",
    ["search", "pooling", *TINY_POOL, "--dataset", "cluttered_digits", "--data-option", "canvas_size=-5",
     "--out", "out"])
add("sp-cluttered-canvas-text", "error", "OPT",
    ["search", "pooling", *TINY_POOL, "--dataset", "cluttered_digits", "--data-option", "canvas_size=big",
     "--out", "out"])

# ---------------------------------------------------------------- output folders
add("out-is-file", "error", "OUT", lambda c: [*(c.write("f", "x") and []), *SP[:-1], "f"])
add("out-under-file", "error", "OUT", lambda c: [*(c.write("f", "x") and []), *SP[:-1], "f/run"])
add("out-dangling-symlink", "error", "OUT",
    lambda c: [*(os.symlink("missing-target", c.p("link")) or []), *SP[:-1], "link"])


@case("out-read-only-parent", "error", "OUT", note="chattr +i on the parent folder")
def _(c: Ctx) -> list[str]:
    c.p("ro").mkdir()
    if not c.make_immutable("ro"):
        raise Skip("chattr +i not available")
    return [*SP[:-1], "ro/run"]


@case("out-read-only-empty", "error", "OUT", note="--out is an existing empty folder made immutable")
def _(c: Ctx) -> list[str]:
    c.p("ro").mkdir()
    if not c.make_immutable("ro"):
        raise Skip("chattr +i not available")
    return [*SP[:-1], "ro"]


@case("out-read-only-mount", "error", "OUT", note="--out under a read-only tmpfs")
def _(c: Ctx) -> list[str]:
    if not c.mount_tmpfs("rofs", "1m", read_only=True):
        raise Skip("cannot mount a read-only tmpfs")
    return [*SP[:-1], "rofs/run"]


@case("out-disk-full", "error", "OUT", note="--out on a 48 KiB tmpfs: the checkpoint write hits ENOSPC")
def _(c: Ctx) -> list[str]:
    if not c.mount_tmpfs("small", "48k"):
        raise Skip("cannot mount a tmpfs")
    return ["search", "pooling", "--epochs", "1", "--input-size", "8", "--width-scale", "0.5", "--candidates", "4",
            *CPU, "--out", "small/run"]


add("out-holds-other-run", "error", "OUT", lambda c: [*(c.copy("stitch", "out") and []), *SP])
add("out-not-empty", "error", "OUT", lambda c: [*(c.write("out/notes.txt", "mine") and []), *SP])
add("out-resume-other-options", "error", "RUNCFG",
    lambda c: [*(_pool(c) and []), "search", "pooling", *TINY_POOL, "--lr", "0.05", "--out", "pool", "--resume"])
add("export-out-is-file", "error", "OUT",
    lambda c: [*(_pool(c) and []), *(c.write("f", "x") and []), "export", "--run", "pool", "--config", "4,3,3",
               "--out", "f"])
add("export-out-under-file", "error", "OUT",
    lambda c: [*(_pool(c) and []), *(c.write("f", "x") and []), "export", "--run", "pool", "--config", "4,3,3",
               "--out", "f/m"])
add("train-out-is-file", "error", "OUT", lambda c: [*(c.write("f", "x") and []), "train", *TINY_TRAIN, "--out", "f"])
add("anchors-out-dangling-symlink", "error", "OUT",
    lambda c: [*(os.symlink("missing-target", c.p("link")) or []), "anchors", "train", *TINY_ANCHORS, "--out",
               "link"])
add("stitch-export-out-under-file", "error", "OUT",
    lambda c: [*(c.copy("stitch") and []), *(c.write("f", "x") and []), "stitch", "export", "--run", "stitch",
               "--config", "0", "--out", "f/m"])
add("stitch-evaluate-out-is-file", "error", "OUT",
    lambda c: [*(c.copy("stitch") and []), *(c.write("f", "x") and []), "stitch", "evaluate", "--run", "stitch",
               "--out", "f"])
add("learngene-export-out-dangling", "error", "OUT",
    lambda c: [*(c.copy_lg() or []), *(os.symlink("missing-target", c.p("link")) or []), "learngene", "export",
               "--run", "lgp", "--config", "0", "--out", "link"])
add("learngene-distill-out-is-file", "error", "OUT",
    lambda c: [*(c.write("f", "x") and []), "learngene", "distill", "--anchors", str(c.fx / "anchors"), *TINY_LGD,
               "--out", "f"])
add("truth-out-under-file", "error", "OUT",
    lambda c: [*(c.write("f", "x") and []), "truth", "pooling", *TINY_TRUTH, "--out", "f/t"])


@case("rank-run-read-only", "error", "OUT", note="rank writes ranking.json into an immutable run folder")
def _(c: Ctx) -> list[str]:
    _pool(c)
    c.copy("truth")
    if not c.make_immutable("pool"):
        raise Skip("chattr +i not available")
    return ["rank", "--run", "pool", "--truth", "truth", "--partial"]


# ---------------------------------------------------------------- run_config.json
add("runcfg-list-resume", "error", "RUNCFG",
    lambda c: [*(_pool(c) and []), *(c.jdump("pool/run_config.json", [1, 2, 3]) or []), *POOL_RESUME],
    note="valid JSON, but a list")
add("runcfg-null-resume", "error", "RUNCFG",
    lambda c: [*(_pool(c) and []), *(c.jdump("pool/run_config.json", None) or []), *POOL_RESUME])
add("runcfg-invalid-json-resume", "error", "RUNCFG",
    lambda c: [*(_pool(c) and []), *(c.write("pool/run_config.json", '{"kind": "pooling_search",') and []),
               *POOL_RESUME])
add("runcfg-binary-resume", "error", "RUNCFG",
    lambda c: [*(_pool(c) and []), *(c.randbytes("pool/run_config.json", 300) or []), *POOL_RESUME])
add("runcfg-folder-resume", "error", "RUNCFG",
    lambda c: [*(_pool(c) and []), *(c.p("pool/run_config.json").unlink() or []),
               *(c.p("pool/run_config.json").mkdir() or []), *POOL_RESUME])
add("runcfg-list-export", "error", "RUNCFG",
    lambda c: [*(_pool(c) and []), *(c.jdump("pool/run_config.json", []) or []), "export", "--run", "pool",
               "--config", "4,3,3", "--out", "m"])
add("runcfg-space-string-export", "error", "RUNCFG",
    lambda c: [*(_pool(c) and []), *(c.jedit("pool/run_config.json", lambda d: d.update(space="resnet20")) or []),
               "export", "--run", "pool", "--config", "4,3,3", "--out", "m"])
add("runcfg-widths-negative-export", "error", "RUNCFG",
    lambda c: [*(_pool(c) and []),
               *(c.jedit("pool/run_config.json", lambda d: d["space"].update(widths=[-4] * 10)) or []),
               "export", "--run", "pool", "--config", "4,3,3", "--out", "m"])
add("runcfg-input-size-impossible-export", "error", "RUNCFG",
    lambda c: [*(_pool(c) and []), *(c.jedit("pool/run_config.json", lambda d: d["data"].update(input_size=3)) or []),
               "export", "--run", "pool", "--config", "4,3,3", "--out", "m"])
add("runcfg-train-lr-text-export", "error", "RUNCFG",
    lambda c: [*(_pool(c) and []), *(c.jedit("pool/run_config.json", lambda d: d["train"].update(lr="fast")) or []),
               "export", "--run", "pool", "--config", "4,3,3", "--out", "m"])
add("runcfg-mixture-list-export", "error", "RUNCFG",
    lambda c: [*(c.copy("bms") and []), *(c.jedit("bms/run_config.json", lambda d: d.update(mixture=[2])) or []),
               "export", "--run", "bms", "--config", "4,3,3", "--out", "m"])
add("runcfg-stitch-anchors-number", "error", "RUNCFG",
    lambda c: [*(c.copy("stitch") and []), *(c.jedit("stitch/run_config.json", lambda d: d.update(anchors=5)) or []),
               "stitch", "export", "--run", "stitch", "--config", "0", "--out", "m"])
add("runcfg-stitch-list-evaluate", "error", "RUNCFG",
    lambda c: [*(c.copy("stitch") and []), *(c.jdump("stitch/run_config.json", ["stitch_search"]) or []),
               "stitch", "evaluate", "--run", "stitch"])
add("runcfg-lgp-distill-run-missing", "error", "RUNCFG",
    lambda c: [*(c.copy_lg() or []),
               *(c.jedit("lgp/run_config.json", lambda d: d.update(distill_run=str(c.p("gone")))) or []),
               "learngene", "evaluate", "--run", "lgp"])
add("runcfg-lgp-students-string", "error", "RUNCFG",
    lambda c: [*(c.copy_lg() or []), *(c.jedit("lgp/run_config.json", lambda d: d.update(students="tiny")) or []),
               "learngene", "export", "--run", "lgp", "--config", "0", "--out", "m"])
add("runcfg-lgd-list-pool", "error", "RUNCFG",
    lambda c: [*(c.copy_lg() or []), *(c.jdump("lgd/run_config.json", [0]) or []),
               "learngene", "pool", "--distill", "lgd", *TINY_LGP, "--out", "out"])
add("runcfg-train-list-resume", "error", "RUNCFG",
    lambda c: [*(c.copy("train") and []), *(c.jdump("train/run_config.json", ["pooling_train"]) or []),
               "train", *TINY_TRAIN, "--out", "train", "--resume"])

# ---------------------------------------------------------------- results.csv


def _results(c: Ctx, run: str, edit: Callable[[list[list[str]]], list[list[str]]]) -> None:
    path = c.p(run, "results.csv")
    rows = list(csv.reader(io.StringIO(path.read_text())))
    rows = edit(rows)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    path.write_text(buffer.getvalue())


def _dup_row(rows: list[list[str]]) -> list[list[str]]:
    bad = list(rows[1])
    bad[5] = "99.5"  # the same candidate again, with another accuracy
    return [*rows, bad]


def _set_cell(row: int, col: int, value: str) -> Callable[[list[list[str]]], list[list[str]]]:
    def edit(rows: list[list[str]]) -> list[list[str]]:
        rows[row][col] = value
        return rows
    return edit


add("results-duplicate-resume", "error", "RESULTS",
    lambda c: [*(_pool(c) and []), *(_results(c, "pool", _dup_row) or []), *POOL_RESUME],
    note="one candidate twice, with different accuracies")
add("results-duplicate-export", "error", "RESULTS",
    lambda c: [*(_pool(c) and []), *(_results(c, "pool", _dup_row) or []), "export", "--run", "pool",
               "--config", "1,3,6", "--out", "m"])
add("results-duplicate-rank", "error", "RESULTS",
    lambda c: [*(_pool(c) and []), *(_results(c, "pool", _dup_row) or []), "rank", "--run", "pool",
               "--truth", c.copy("truth"), "--partial"])
add("results-unknown-candidate-resume", "error", "RESULTS",
    lambda c: [*(_pool(c) and []), *(_results(c, "pool", _set_cell(1, 0, "999")) or []), *POOL_RESUME],
    note="candidate 999 of a 36-placement space, with the best accuracy")
add("results-negative-candidate-resume", "error", "RESULTS",
    lambda c: [*(_pool(c) and []), *(_results(c, "pool", _set_cell(1, 0, "-3")) or []), *POOL_RESUME])
add("results-flops-text-resume", "error", "RESULTS",
    lambda c: [*(_pool(c) and []), *(_results(c, "pool", _set_cell(1, 3, "many")) or []), *POOL_RESUME])
add("results-valacc-text-resume", "error", "RESULTS",
    lambda c: [*(_pool(c) and []), *(_results(c, "pool", _set_cell(1, 5, "high")) or []), *POOL_RESUME])
add("results-header-wrong-resume", "error", "RESULTS",
    lambda c: [*(_pool(c) and []), *(_results(c, "pool", _set_cell(0, 5, "accuracy")) or []), *POOL_RESUME])
add("results-short-row-resume", "error", "RESULTS",
    lambda c: [*(_pool(c) and []), *(_results(c, "pool", lambda r: [*r, r[1][:4]]) or []), *POOL_RESUME])
add("results-empty-file-resume", "error", "RESULTS",
    lambda c: [*(_pool(c) and []), *(c.write("pool/results.csv", "") and []), *POOL_RESUME])
add("results-binary-resume", "error", "RESULTS",
    lambda c: [*(_pool(c) and []), *(c.randbytes("pool/results.csv", 500) or []), *POOL_RESUME])
add("results-folder-resume", "error", "RESULTS",
    lambda c: [*(_pool(c) and []), *(c.p("pool/results.csv").unlink() or []), *(c.p("pool/results.csv").mkdir() or []),
               *POOL_RESUME])
add("results-duplicate-stitch-resume", "error", "RESULTS",
    lambda c: [*(c.copy_stitch() and []), *(_results(c, "stitch", _dup_row) or []), *stitch_resume_argv(c)])
add("results-duplicate-lgp-resume", "error", "RESULTS",
    lambda c: [*(c.copy_lg() or []), *(_results(c, "lgp", _dup_row) or []), *lgp_resume_argv()])
add("results-bms-matrix-text-export", "error", "RESULTS",
    lambda c: [*(c.copy("bms") and []), *(c.write("bms/accuracy_matrix.csv", "candidate,label,m0,m1\n23,\"[4,3,3]\",abc,1\n") and []),
               "export", "--run", "bms", "--config", "4,3,3", "--out", "m"],
    note="accuracy_matrix.csv with a text accuracy")
add("results-bms-matrix-unknown-export", "error", "RESULTS",
    lambda c: [*(c.copy("bms") and []), *(c.write("bms/accuracy_matrix.csv", "candidate,label,m0,m1\n999,x,0.5,0.4\n") and []),
               "export", "--run", "bms", "--config", "4,3,3", "--out", "m"],
    note="accuracy_matrix.csv naming candidate 999")

# ---------------------------------------------------------------- checkpoints
EXPORT_POOL = ["export", "--run", "pool", "--config", "4,3,3", "--out", "m"]


def _ck(edit: Callable[[Ctx], Any], argv: list[str] | Callable[[Ctx], list[str]], run: str = "pool"):
    def setup(c: Ctx) -> list[str]:
        if run == "stitch":
            c.copy_stitch()
        elif run in ("lgp", "lgd"):
            c.copy_lg()
        else:
            c.copy(run)
        edit(c)
        return argv(c) if callable(argv) else list(argv)
    return setup


SUP = "pool/supernet.pt"
add("ckpt-supernet-random-export", "error", "CKPT", _ck(lambda c: c.randbytes(SUP), EXPORT_POOL))
add("ckpt-supernet-truncated-export", "error", "CKPT", _ck(lambda c: c.truncate(SUP), EXPORT_POOL))
add("ckpt-supernet-list-export", "error", "CKPT", _ck(lambda c: c.tsave([1, 2], SUP), EXPORT_POOL))
add("ckpt-supernet-refused-pickle-export", "error", "CKPT", _ck(lambda c: c.tsave(refused_object(), SUP), EXPORT_POOL),
    note="torch.load(weights_only=True) refuses it")
add("ckpt-supernet-folder-export", "error", "CKPT",
    _ck(lambda c: (c.p(SUP).unlink(), c.p(SUP).mkdir()), EXPORT_POOL))
add("ckpt-supernet-no-model-export", "error", "CKPT", _ck(lambda c: c.tedit(SUP, lambda d: d.pop("model")), EXPORT_POOL))
add("ckpt-supernet-wrong-shape-export", "error", "CKPT",
    _ck(lambda c: c.tedit(SUP, lambda d: d.update(model=reshape_first(d["model"]))), EXPORT_POOL))
add("ckpt-supernet-extra-key-export", "error", "CKPT",
    _ck(lambda c: c.tedit(SUP, lambda d: d["model"].update(bogus=d["model"][next(iter(d["model"]))])), EXPORT_POOL))
add("ckpt-supernet-nan-export", "error", "CKPT",
    _ck(lambda c: c.tedit(SUP, lambda d: d.update(model=nan_tensors(d["model"]))), EXPORT_POOL),
    note="NaN weights must not be exported as a model")
add("ckpt-supernet-nan-resume", "sane", "CKPT",
    _ck(lambda c: c.tedit(SUP, lambda d: d.update(model=nan_tensors(d["model"]))), POOL_RESUME),
    note="finished run, NaN supernet: --resume re-exports the front")
add("ckpt-supernet-no-model-resume", "error", "CKPT", _ck(lambda c: c.tedit(SUP, lambda d: d.pop("model")), POOL_RESUME))
add("ckpt-supernet-no-history-resume", "error", "CKPT",
    _ck(lambda c: c.tedit(SUP, lambda d: d.pop("history")), POOL_RESUME))
add("ckpt-supernet-no-optimizer-resume", "error", "CKPT",
    _ck(lambda c: c.tedit(SUP, lambda d: d.pop("optimizer")), POOL_RESUME))
add("ckpt-supernet-epoch-text-resume", "error", "CKPT",
    _ck(lambda c: c.tedit(SUP, lambda d: d.update(epoch="one")), POOL_RESUME))
add("ckpt-supernet-wrong-shape-resume", "error", "CKPT",
    _ck(lambda c: c.tedit(SUP, lambda d: d.update(model=reshape_first(d["model"]))), POOL_RESUME))
add("ckpt-supernet-random-resume", "error", "CKPT", _ck(lambda c: c.randbytes(SUP), POOL_RESUME))
add("ckpt-bms-no-optimizers-resume", "error", "CKPT",
    _ck(lambda c: c.tedit("bms/supernet.pt", lambda d: d.pop("optimizers")), BMS_RESUME, run="bms"))
add("ckpt-bms-one-optimizer-resume", "error", "CKPT",
    _ck(lambda c: c.tedit("bms/supernet.pt", lambda d: d.update(optimizers=d["optimizers"][:1])), BMS_RESUME, run="bms"))
TRAIN_RESUME = ["train", *TINY_TRAIN, "--out", "train", "--resume"]
add("ckpt-train-no-history-resume", "error", "CKPT",
    _ck(lambda c: c.tedit("train/model_checkpoint.pt", lambda d: d.pop("history")), TRAIN_RESUME, run="train"))
add("ckpt-train-random-resume", "error", "CKPT",
    _ck(lambda c: c.randbytes("train/model_checkpoint.pt"), TRAIN_RESUME, run="train"))
SN = "stitch/snnet.pt"
STITCH_EXPORT = ["stitch", "export", "--run", "stitch", "--config", "0", "--out", "m"]
add("ckpt-snnet-random-export", "error", "CKPT", _ck(lambda c: c.randbytes(SN), STITCH_EXPORT, run="stitch"))
add("ckpt-snnet-list-evaluate", "error", "CKPT",
    _ck(lambda c: c.tsave([0], SN), ["stitch", "evaluate", "--run", "stitch"], run="stitch"))
add("ckpt-snnet-wrong-shape-evaluate", "error", "CKPT",
    _ck(lambda c: c.tedit(SN, lambda d: d.update(model=reshape_first(d["model"]))),
        ["stitch", "evaluate", "--run", "stitch"], run="stitch"))
add("ckpt-snnet-no-model-resume", "error", "CKPT",
    _ck(lambda c: c.tedit(SN, lambda d: d.pop("model")), stitch_resume_argv, run="stitch"))
add("ckpt-snnet-wrong-shape-resume", "error", "CKPT",
    _ck(lambda c: c.tedit(SN, lambda d: d.update(model=reshape_first(d["model"]))), stitch_resume_argv, run="stitch"))
add("ckpt-snnet-nan-export", "error", "CKPT",
    _ck(lambda c: c.tedit(SN, lambda d: d.update(model=nan_tensors(d["model"]))), STITCH_EXPORT, run="stitch"),
    note="NaN weights must not be exported as a model")
PP = "lgp/pool.pt"
add("ckpt-pool-truncated-export", "error", "CKPT",
    _ck(lambda c: c.truncate(PP), ["learngene", "export", "--run", "lgp", "--config", "0", "--out", "m"], run="lgp"))
add("ckpt-pool-wrong-shape-evaluate", "error", "CKPT",
    _ck(lambda c: c.tedit(PP, lambda d: d.update(model=reshape_first(d["model"]))),
        ["learngene", "evaluate", "--run", "lgp"], run="lgp"))
add("ckpt-pool-no-history-resume", "error", "CKPT",
    _ck(lambda c: c.tedit(PP, lambda d: d.pop("history")), lambda c: lgp_resume_argv(), run="lgp"))

# ---------------------------------------------------------------- exported models: model.json / model.pt


def _model(edit: Callable[[Ctx], Any], kind: str = "model", extra: list[str] | None = None):
    def setup(c: Ctx) -> list[str]:
        c.copy(kind)
        edit(c)
        return ["evaluate", kind, *(extra or [])]
    return setup


MJ, MP = "model/model.json", "model/model.pt"
add("model-pt-random-bytes", "error", "MODEL", _model(lambda c: (c.randbytes(MP), c.fix_sha("model"))),
    note="hash fixed up so the bytes themselves are tested")
add("model-pt-truncated", "error", "MODEL", _model(lambda c: (c.truncate(MP), c.fix_sha("model"))))
add("model-pt-refused-pickle", "error", "MODEL",
    _model(lambda c: (c.tsave(refused_object(), MP), c.fix_sha("model"))))
add("model-pt-list", "error", "MODEL", _model(lambda c: (c.tsave([1.0, 2.0], MP), c.fix_sha("model"))))
add("model-pt-wrong-shape", "error", "MODEL",
    _model(lambda c: (c.tmap(MP, reshape_first), c.fix_sha("model"))))
add("model-pt-nan", "error", "MODEL", _model(lambda c: (c.tmap(MP, nan_tensors), c.fix_sha("model"))),
    note="a NaN model must not be measured as if it were one")
add("model-pt-missing", "error", "MODEL", _model(lambda c: c.p(MP).unlink()))
add("model-pt-hash-mismatch", "error", "MODEL", _model(lambda c: c.truncate(MP, 0.9)))
add("model-json-sha-number", "error", "MODEL", _model(lambda c: c.jedit(MJ, lambda d: d.update(weights_sha256=123))),
    note="weights_sha256 not a string")
add("model-json-weights-folder", "error", "MODEL",
    _model(lambda c: (c.p("model/w").mkdir(), c.jedit(MJ, lambda d: d.update(weights="w")))))
add("model-json-weights-outside", "error", "MODEL",
    _model(lambda c: c.jedit(MJ, lambda d: d.update(weights="../../../../../../../../etc/hostname"))),
    note="weights path escaping the model folder")
add("model-json-no-provenance", "error", "MODEL", _model(lambda c: c.jedit(MJ, lambda d: d.pop("provenance"))))
add("model-json-provenance-no-seed", "error", "MODEL",
    _model(lambda c: c.jedit(MJ, lambda d: d["provenance"].pop("seed"))))
add("model-json-provenance-list", "error", "MODEL",
    _model(lambda c: c.jedit(MJ, lambda d: d.update(provenance=["digits"]))))
add("model-json-input-size-impossible", "error", "MODEL",
    _model(lambda c: c.jedit(MJ, lambda d: d["model"].update(input_size=3))),
    note="3x3 inputs cannot take 2 downsamplings")
add("model-json-input-size-zero", "error", "MODEL",
    _model(lambda c: c.jedit(MJ, lambda d: d["model"].update(input_size=0))))
add("model-json-input-size-text", "error", "MODEL",
    _model(lambda c: c.jedit(MJ, lambda d: d["model"].update(input_size="eight"))))
add("model-json-no-model-field", "error", "MODEL", _model(lambda c: c.jedit(MJ, lambda d: d.pop("model"))))
add("model-json-positions-out-of-range", "error", "MODEL",
    _model(lambda c: c.jedit(MJ, lambda d: d["config"].update(positions=[4, 99]))))
add("model-json-widths-short", "error", "MODEL",
    _model(lambda c: c.jedit(MJ, lambda d: d["space"].update(widths=[4, 8, 16]))))
add("model-json-num-classes-zero", "error", "MODEL",
    _model(lambda c: c.jedit(MJ, lambda d: d["model"]["spec"].update(num_classes=0))))
add("model-json-kind-stitch-body-pooling", "error", "MODEL", _model(lambda c: c.jedit(MJ, lambda d: d.update(kind="stitch"))))
add("model-json-list", "error", "MODEL", _model(lambda c: c.jdump(MJ, [])))
add("model-json-empty", "error", "MODEL", _model(lambda c: c.write(MJ, "")))
add("model-json-dataset-unknown", "error", "MODEL",
    _model(lambda c: c.jedit(MJ, lambda d: d["provenance"].update(dataset="mnist"))))
add("model-json-stitch-segment-out-of-range", "error", "MODEL",
    _model(lambda c: c.jedit("smodel/model.json", lambda d: d["model"]["segments"][0].update(last=99)), kind="smodel"))
add("model-json-stitch-segments-empty", "error", "MODEL",
    _model(lambda c: c.jedit("smodel/model.json", lambda d: d["model"].update(segments=[])), kind="smodel"))
add("model-path-is-results-csv", "error", "MODEL", lambda c: ["evaluate", f"{_pool(c)}/results.csv"])
add("model-path-dangling-symlink", "error", "MODEL",
    lambda c: [*(os.symlink("missing-target", c.p("link")) or []), "evaluate", "link"])

# ---------------------------------------------------------------- data that does not fit the model


def _npz_digits_like(c: Ctx, rel: str, classes: int = 10, chans: int = 1, n: int = 200) -> str:
    import numpy as np

    rng = np.random.default_rng(0)
    shape = (n, 8, 8) if chans == 1 else (n, chans, 8, 8)
    return c.npz(rel, x=rng.random(shape, dtype=np.float32), y=np.arange(n) % classes)


add("mismatch-npz-4-classes", "error", "MISMATCH",
    lambda c: [*(_npz_digits_like(c, "d.npz", classes=4) and []), "evaluate", c.copy("model"), "--dataset", "npz",
               "--data-dir", "d.npz"], note="a 10-class model measured on 4-class data")
add("mismatch-npz-12-classes", "error", "MISMATCH",
    lambda c: [*(_npz_digits_like(c, "d.npz", classes=12) and []), "evaluate", c.copy("model"), "--dataset", "npz",
               "--data-dir", "d.npz"])
add("mismatch-npz-3-channels", "error", "MISMATCH",
    lambda c: [*(_npz_digits_like(c, "d.npz", chans=3) and []), "evaluate", c.copy("model"), "--dataset", "npz",
               "--data-dir", "d.npz"], note="3-channel images, the model takes 1")
add("mismatch-npz-3-channels-stitch", "error", "MISMATCH",
    lambda c: [*(_npz_digits_like(c, "d.npz", chans=3) and []), "evaluate", c.copy("smodel"), "--dataset", "npz",
               "--data-dir", "d.npz"])
add("mismatch-cifar-vs-digits-model", "error", "MISMATCH",
    lambda c: ["evaluate", c.copy("model"), "--dataset", "cifar10", "--data-dir", c.copy("cifar_ok")])
add("mismatch-stitch-input-size", "error", "MISMATCH",
    lambda c: ["stitch", "train", "--anchors", c.copy("anchors"), *TINY_STITCH, "--input-size", "16", "--out", "out"],
    note="anchors trained at 8x8, data at 16x16")

# ---------------------------------------------------------------- .npz data
NPZ_RUN = ["search", "pooling", *TINY_POOL, "--dataset", "npz", "--data-dir", "d.npz", "--out", "out"]


def _npz_case(cid: str, note: str = "", expect: str = "error", **make: Any) -> None:
    def setup(c: Ctx) -> list[str]:
        import numpy as np

        rng = np.random.default_rng(0)
        arrays = {k: (v(np, rng) if callable(v) else v) for k, v in make.items()}
        c.npz("d.npz", **arrays)
        return list(NPZ_RUN)
    add(cid, expect, "NPZ", setup, note)


def _y(n: int, k: int = 10):
    return lambda np, rng: np.arange(n) % k


_npz_case("npz-zero-height", "images of height 0", x=lambda np, rng: np.zeros((200, 0, 8), np.float32), y=_y(200))
_npz_case("npz-zero-width", "images of width 0", x=lambda np, rng: np.zeros((200, 8, 0), np.float32), y=_y(200))
_npz_case("npz-zero-channels", "NCHW with 0 channels", x=lambda np, rng: np.zeros((200, 0, 8, 8), np.float32),
          y=_y(200))
_npz_case("npz-zero-samples", "no samples at all", x=lambda np, rng: np.zeros((0, 8, 8), np.float32),
          y=lambda np, rng: np.zeros(0, np.int64))
_npz_case("npz-zero-test-samples", "x_test with no samples",
          x_train=lambda np, rng: rng.random((200, 8, 8), dtype=np.float32), y_train=_y(200),
          x_test=lambda np, rng: np.zeros((0, 8, 8), np.float32), y_test=lambda np, rng: np.zeros(0, np.int64))
_npz_case("npz-one-sample-per-class", "10 samples, 10 classes: no stratified split",
          x=lambda np, rng: rng.random((10, 8, 8), dtype=np.float32), y=_y(10))
_npz_case("npz-nan-pixels", x=lambda np, rng: np.full((200, 8, 8), np.nan, np.float32), y=_y(200))
_npz_case("npz-inf-float64", x=lambda np, rng: np.full((200, 8, 8), 1e300), y=_y(200))
_npz_case("npz-complex-images", x=lambda np, rng: np.ones((200, 8, 8), np.complex64), y=_y(200))
_npz_case("npz-labels-fractional", x=lambda np, rng: rng.random((200, 8, 8), dtype=np.float32),
          y=lambda np, rng: np.arange(200) % 10 + 0.5)
_npz_case("npz-labels-negative", x=lambda np, rng: rng.random((200, 8, 8), dtype=np.float32),
          y=lambda np, rng: np.arange(200) % 10 - 1)
_npz_case("npz-labels-2d", x=lambda np, rng: rng.random((200, 8, 8), dtype=np.float32),
          y=lambda np, rng: np.zeros((200, 3), np.int64))
_npz_case("npz-length-mismatch", x=lambda np, rng: rng.random((200, 8, 8), dtype=np.float32), y=_y(150))
_npz_case("npz-x-only", x=lambda np, rng: rng.random((200, 8, 8), dtype=np.float32))
_npz_case("npz-x-test-without-y-test", x_train=lambda np, rng: rng.random((200, 8, 8), dtype=np.float32),
          y_train=_y(200), x_test=lambda np, rng: rng.random((50, 8, 8), dtype=np.float32))
_npz_case("npz-test-channels-differ", x_train=lambda np, rng: rng.random((200, 8, 8), dtype=np.float32),
          y_train=_y(200), x_test=lambda np, rng: rng.random((50, 3, 8, 8), dtype=np.float32), y_test=_y(50))
_npz_case("npz-5d-images", x=lambda np, rng: rng.random((200, 1, 1, 8, 8), dtype=np.float32), y=_y(200))
_npz_case("npz-ambiguous-channels", x=lambda np, rng: rng.random((200, 8, 8, 8), dtype=np.float32), y=_y(200))
add("npz-object-array", "error", "NPZ",
    lambda c: [*(c.write("d.npz", _object_npz()) and []), *NPZ_RUN], note="needs pickle, which is refused")
add("npz-random-bytes", "error", "NPZ", lambda c: [*(c.randbytes("d.npz") or []), *NPZ_RUN])
add("npz-truncated", "error", "NPZ", lambda c: [*(c.copy("npz_ok.npz", "d.npz") and []), *(c.truncate("d.npz") or []),
                                                *NPZ_RUN])
add("npz-single-npy", "error", "NPZ", lambda c: [*(c.write("d.npz", _npy_bytes()) and []), *NPZ_RUN],
    note="a .npy array saved under a .npz name")
add("npz-is-folder", "error", "NPZ", lambda c: [*(c.p("d.npz").mkdir() or []), *NPZ_RUN])
add("npz-missing", "error", "NPZ", list(NPZ_RUN))
add("npz-evaluate-zero-samples", "error", "NPZ",
    lambda c: [*(c.npz("d.npz", x=_np().zeros((0, 8, 8), _np().float32), y=_np().zeros(0, _np().int64)) and []),
               "evaluate", c.copy("model"), "--dataset", "npz", "--data-dir", "d.npz"])
add("npz-stitch-zero-height", "error", "NPZ",
    lambda c: [*(c.npz("d.npz", x=_np().zeros((200, 0, 8), _np().float32), y=_np().arange(200) % 10) and []),
               "stitch", "train", "--anchors", c.copy("anchors"), *TINY_STITCH, "--dataset", "npz", "--data-dir",
               "d.npz", "--out", "out"])


def _np():
    import numpy as np

    return np


def _object_npz() -> bytes:
    np = _np()
    buffer = io.BytesIO()
    x = np.empty(200, dtype=object)
    x[:] = [{"pixel": i} for i in range(200)]
    np.savez(buffer, x=x, y=np.arange(200) % 10)
    return buffer.getvalue()


def _npy_bytes() -> bytes:
    np = _np()
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((200, 8, 8), np.float32))
    return buffer.getvalue()


# ---------------------------------------------------------------- CIFAR pickle folders
CIFAR_RUN = ["search", "pooling", *TINY_POOL, "--dataset", "cifar10", "--data-dir", "c", "--out", "out"]
BATCH = "c/cifar-10-batches-py/data_batch_1"


def _cifar(edit: Callable[[Ctx], Any], argv: list[str] | None = None):
    def setup(c: Ctx) -> list[str]:
        c.copy("cifar_ok", "c")
        edit(c)
        return list(argv or CIFAR_RUN)
    return setup


def _pickle(c: Ctx, rel: str, obj: Any, protocol: int = 2) -> None:
    c.write(rel, pickle.dumps(obj, protocol=protocol))


def _batch(c: Ctx) -> dict:
    with c.p(BATCH).open("rb") as handle:
        return pickle.load(handle, encoding="bytes")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


add("cifar-missing-folder", "error", "CIFAR", ["search", "pooling", *TINY_POOL, "--dataset", "cifar10", "--data-dir",
                                                 "nowhere", "--out", "out"])
add("cifar-empty-folder", "error", "CIFAR", lambda c: [*(c.p("c").mkdir() or []), *CIFAR_RUN])
add("cifar-batch-truncated", "error", "CIFAR", _cifar(lambda c: c.truncate(BATCH)))
add("cifar-batch-random", "error", "CIFAR", _cifar(lambda c: c.randbytes(BATCH)))
add("cifar-batch-code-pickle", "error", "CIFAR", _cifar(lambda c: _pickle(c, BATCH, {b"data": _Evil()})),
    note="a pickle that would run code")
add("cifar-batch-list", "error", "CIFAR", _cifar(lambda c: _pickle(c, BATCH, [1, 2, 3])))
add("cifar-batch-no-labels", "error", "CIFAR", _cifar(lambda c: _pickle(c, BATCH, {b"data": _batch(c)[b"data"]})))
add("cifar-batch-wrong-width", "error", "CIFAR",
    _cifar(lambda c: _pickle(c, BATCH, {**_batch(c), b"data": _batch(c)[b"data"][:, :100]})))
add("cifar-batch-labels-out-of-range", "error", "CIFAR",
    _cifar(lambda c: _pickle(c, BATCH, {**_batch(c), b"labels": [50] * len(_batch(c)[b"labels"])})))
add("cifar-batch-labels-text", "error", "CIFAR",
    _cifar(lambda c: _pickle(c, BATCH, {**_batch(c), b"labels": ["cat"] * len(_batch(c)[b"labels"])})))
add("cifar-batch-zero-samples", "error", "CIFAR",
    _cifar(lambda c: [_pickle(c, f"c/cifar-10-batches-py/{n}", {b"data": _np().zeros((0, 3072), _np().uint8),
                                                                  b"labels": []}, protocol=4)
                      for n in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]]))
add("cifar-batch-is-folder", "error", "CIFAR", _cifar(lambda c: (c.p(BATCH).unlink(), c.p(BATCH).mkdir())))
add("cifar-meta-wrong-count", "error", "CIFAR",
    _cifar(lambda c: _pickle(c, "c/cifar-10-batches-py/batches.meta", {b"label_names": [b"a", b"b"]})))
add("cifar-evaluate-truncated", "error", "CIFAR",
    lambda c: [*(c.copy("cifar_ok", "c") and []), *(c.truncate(BATCH) or []), "evaluate", c.copy("model"),
               "--dataset", "cifar10", "--data-dir", "c"])

# ---------------------------------------------------------------- train
add("train-config-bad", "error", "OPT", ["train", *TINY_TRAIN, "--config", "9,9,9", "--out", "out"])
add("train-lr-nan", "error", "OPT", ["train", *TINY_TRAIN, "--lr", "nan", "--out", "out"])
add("train-lr-1e6", "sane", "DIVERGE", ["train", *TINY_TRAIN, "--lr", "1e6", "--out", "out"])
add("train-input-size-3", "error", "OPT", ["train", *TINY_TRAIN, "--input-size", "3", "--out", "out"])
add("train-device-garbage", "error", "OPT", ["train", *TINY_TRAIN, "--device", "gpu0", "--out", "out"])

# ---------------------------------------------------------------- flops
for cid, extra in [
    ("flops-input-size-zero", ["--input-size", "0"]),
    ("flops-input-size-negative", ["--input-size", "-8"]),
    ("flops-in-chans-zero", ["--in-chans", "0"]),
    ("flops-in-chans-zero-fvcore", ["--in-chans", "0", "--config", "4,3,3", "--check-fvcore"]),
    ("flops-num-classes-zero", ["--num-classes", "0"]),
    ("flops-num-classes-negative", ["--num-classes", "-10"]),
    ("flops-width-scale-inf", ["--width-scale", "inf"]),
    ("flops-width-scale-negative", ["--width-scale", "-1"]),
    ("flops-config-index-999", ["--config", "999"]),
    ("flops-config-index-negative", ["--config", "-1"]),
    ("flops-config-positions-text", ["--config", "p:x,y"]),
    ("flops-config-positions-repeated", ["--config", "p:4,4"]),
    ("flops-num-downsamples-negative", ["--num-downsamples", "-1"]),
]:
    add(cid, "error", "OPT", ["flops", "--input-size", "8", *extra])

# ---------------------------------------------------------------- export / evaluate of runs
add("export-run-missing", "error", "RUNCFG", ["export", "--run", "nowhere", "--config", "4,3,3"])
add("export-run-is-file", "error", "RUNCFG", lambda c: [*(c.write("f", "x") and []), "export", "--run", "f",
                                                        "--config", "1"])
add("export-config-999", "error", "OPT", lambda c: ["export", "--run", _pool(c), "--config", "999", "--out", "m"])
add("export-config-garbage", "error", "OPT", lambda c: ["export", "--run", _pool(c), "--config", "a,b", "--out", "m"])
add("export-run-is-anchors", "error", "RUNCFG", lambda c: ["export", "--run", c.copy("anchors"), "--config", "0"])
add("export-supernet-missing", "error", "CKPT",
    lambda c: [*(_pool(c) and []), *(c.p(SUP).unlink() or []), *EXPORT_POOL])
add("stitch-export-config-999", "error", "OPT",
    lambda c: ["stitch", "export", "--run", c.copy("stitch"), "--config", "999", "--out", "m"])
add("stitch-export-route-out-of-range", "error", "OPT",
    lambda c: ["stitch", "export", "--run", c.copy("stitch"), "--config", "a0.0-9_a1.10-11", "--out", "m"])
add("learngene-export-config-999", "error", "OPT",
    lambda c: [*(c.copy_lg() or []), "learngene", "export", "--run", "lgp", "--config", "999", "--out", "m"])
add("learngene-export-config-negative", "error", "OPT",
    lambda c: [*(c.copy_lg() or []), "learngene", "export", "--run", "lgp", "--config", "-1", "--out", "m"])

# ---------------------------------------------------------------- search bms
BMS = ["search", "bms", *TINY_BMS]
for cid, extra, expect, cov in [
    ("bms-t-max-nan", ["--t-max", "nan"], "error", "OPT"),
    ("bms-t-max-inf", ["--t-max", "inf"], "error", "OPT"),
    ("bms-score-batch-size-zero", ["--score-batch-size", "0"], "error", "OPT"),
    ("bms-score-batch-size-negative", ["--score-batch-size", "-4"], "error", "OPT"),
    ("bms-lr-nan", ["--lr", "nan"], "error", "OPT"),
    ("bms-lr-1e6", ["--lr", "1e6"], "sane", "DIVERGE"),
    ("bms-M-100", ["-M", "100"], "error", "OPT"),
]:
    add(cid, expect, cov, [*BMS, *extra, "--out", "out"])
add("bms-M-zero", "error", "OPT", ["search", "bms", *TINY_BMS[2:], "-M", "0", "--out", "out"])

# ---------------------------------------------------------------- truth pooling / rank
TR = ["truth", "pooling", *TINY_TRUTH]
add("truth-seeds-text", "error", "OPT", [*TR, "--seeds", "a,b", "--out", "out"])
add("truth-seeds-empty", "error", "OPT", [*TR, "--seeds", "", "--out", "out"])
add("truth-configs-bad", "error", "OPT", [*TR, "--configs", "4,3,3;9,9,9", "--out", "out"])
add("truth-lr-nan", "error", "OPT", [*TR, "--lr", "nan", "--out", "out"])
add("truth-lr-1e6", "sane", "DIVERGE", [*TR, "--lr", "1e6", "--out", "out"])
add("truth-csv-header-wrong-resume", "error", "TRUTH",
    lambda c: [*(c.copy("truth") and []), *(c.write("truth/truth.csv", "a,b\n1,2\n") and []), *TR, "--out", "truth",
               "--resume"])
add("rank-truth-missing", "error", "TRUTH", lambda c: ["rank", "--run", _pool(c), "--truth", "nowhere"])
add("rank-truth-csv-empty", "error", "TRUTH",
    lambda c: ["rank", "--run", _pool(c), "--truth", c.copy("truth"), "--partial",
               *(c.write("truth/truth.csv", "") and [])])
add("rank-truth-csv-garbage", "error", "TRUTH",
    lambda c: ["rank", "--run", _pool(c), "--truth", c.copy("truth"), "--partial",
               *(c.randbytes("truth/truth.csv", 800) or [])])
add("rank-truth-csv-no-test-acc", "error", "TRUTH",
    lambda c: ["rank", "--run", _pool(c), "--truth", c.copy("truth"), "--partial",
               *(c.write("truth/truth.csv", "key,candidate,label,seed,flops\n23:0,23,x,0,1\n") and [])])
add("rank-truth-acc-text", "error", "TRUTH",
    lambda c: ["rank", "--run", _pool(c), "--truth", c.copy("truth"), "--partial",
               *(c.write("truth/truth.csv", "key,candidate,label,seed,flops,test_acc,train_acc,seconds\n"
                                            "23:0,23,x,0,1,high,1,1\n2:0,2,x,0,1,low,1,1\n") and [])])
add("rank-truth-runcfg-list", "error", "TRUTH",
    lambda c: ["rank", "--run", _pool(c), "--truth", c.copy("truth"),
               *(c.jdump("truth/run_config.json", []) or [])])
add("rank-truth-runcfg-no-space", "error", "TRUTH",
    lambda c: ["rank", "--run", _pool(c), "--truth", c.copy("truth"),
               *(c.jedit("truth/run_config.json", lambda d: d.pop("space")) or [])])
add("rank-truth-other-space", "error", "TRUTH",
    lambda c: ["rank", "--run", _pool(c), "--truth", c.copy("truth"),
               *(c.jedit("truth/run_config.json", lambda d: d["space"].update(name="resnet20_x")) or [])])
add("rank-top-k-zero", "error", "OPT",
    lambda c: ["rank", "--run", _pool(c), "--truth", c.copy("truth"), "--partial", "--top-k", "0"])
add("rank-top-k-text", "error", "OPT",
    lambda c: ["rank", "--run", _pool(c), "--truth", c.copy("truth"), "--partial", "--top-k", "a"])
add("rank-run-is-stitch", "error", "RUNCFG",
    lambda c: ["rank", "--run", c.copy("stitch"), "--truth", c.copy("truth"), "--partial"])
add("rank-run-config-list", "error", "RUNCFG",
    lambda c: ["rank", "--run", _pool(c), "--truth", c.copy("truth"), "--partial",
               *(c.jdump("pool/run_config.json", ["pooling_search"]) or [])])

# ---------------------------------------------------------------- anchors train
AT = ["anchors", "train", *TINY_ANCHORS]
add("anchors-depth-zero", "error", "OPT", [*AT, "--depth", "0", "--out", "out"])
add("anchors-depth-negative", "error", "OPT", [*AT, "--depth", "-2", "--out", "out"])
add("anchors-input-size-3", "error", "OPT", [*AT, "--input-size", "3", "--out", "out"], note="smaller than a patch")
add("anchors-input-size-10", "error", "OPT", [*AT, "--input-size", "10", "--out", "out"],
    note="not a multiple of the patch size 4")
add("anchors-lr-nan", "error", "OPT", [*AT, "--lr", "nan", "--out", "out"])
add("anchors-lr-1e6", "sane", "DIVERGE", [*AT, "--lr", "1e6", "--optimizer", "sgd", "--out", "out"])
add("anchors-max-train-samples-zero", "error", "OPT", [*AT, "--max-train-samples", "0", "--out", "out"])
add("anchors-warmup-negative", "error", "OPT", [*AT, "--warmup-epochs", "-1", "--out", "out"])
add("anchors-resume-pth-truncated", "sane", "ANCHORS",
    lambda c: [*(c.copy("anchors") and []), *(c.truncate("anchors/vit_digits_tiny.pth") or []), *AT, "--out",
               "anchors", "--resume"],
    note="a finished family whose .pth was truncated: --resume must not keep a broken anchor")
add("anchors-resume-manifest-list", "error", "ANCHORS",
    lambda c: [*(c.copy("anchors") and []), *(c.jdump("anchors/anchors.json", []) or []), *AT, "--out", "anchors",
               "--resume"])

# ---------------------------------------------------------------- stitch train: options and anchors
ST = ["stitch", "train", *TINY_STITCH]


def _st(extra: list[str], anchors_copy: bool = True):
    return lambda c: [*ST, "--anchors", c.copy("anchors") if anchors_copy else str(c.fx / "anchors"), *extra,
                      "--out", "out"]


add("stitch-lr-nan", "error", "OPT", _st(["--lr", "nan"], False))
add("stitch-lr-inf", "error", "OPT", _st(["--lr", "inf"], False))
add("stitch-lr-1e6", "sane", "DIVERGE", _st(["--lr", "1e6", "--optimizer", "sgd"], False))
add("stitch-weight-decay-nan", "error", "OPT", _st(["--weight-decay", "nan"], False))
add("stitch-anchor-lr-scale-nan", "error", "OPT", _st(["--anchor-lr-scale", "nan"], False))
add("stitch-distill-nan", "error", "OPT", _st(["--distill", "nan"], False))
add("stitch-distill-temperature-inf", "error", "OPT", _st(["--distill", "0.5", "--distill-temperature", "inf"], False))
add("stitch-init-samples-zero", "error", "OPT", _st(["--init-samples", "0"], False))
add("stitch-warmup-negative", "error", "OPT", _st(["--warmup-epochs", "-1"], False))
add("stitch-device-garbage", "error", "OPT", _st(["--device", "tpu"], False))
add("stitch-v2-routes-bogus", "error", "OPT", _st(["--version", "v2", "--routes", "fs,xyz"], False))
add("stitch-v2-flops-gap-nan", "error", "OPT", _st(["--version", "v2", "--flops-gap", "nan"], False))
add("stitch-max-train-samples-5", "error", "OPT", _st(["--max-train-samples", "5"], False),
    note="fewer samples than classes")
A0 = "anchors/vit_digits_tiny.pth"
for cid, edit, note in [
    ("anchors-pth-random", lambda c: c.randbytes(A0), ""),
    ("anchors-pth-truncated", lambda c: c.truncate(A0), ""),
    ("anchors-pth-list", lambda c: c.tsave([1, 2], A0), ""),
    ("anchors-pth-refused-pickle", lambda c: c.tsave(refused_object(), A0), ""),
    ("anchors-pth-missing", lambda c: c.p(A0).unlink(), ""),
    ("anchors-pth-other-anchor", lambda c: shutil.copy(c.p("anchors/vit_digits_small.pth"), c.p(A0)),
     "the small anchor's weights in the tiny anchor's file"),
    ("anchors-pth-nan", lambda c: c.tmap(A0, nan_tensors), "NaN anchor weights"),
    ("anchors-json-list", lambda c: c.jdump("anchors/anchors.json", []), ""),
    ("anchors-json-one-anchor", lambda c: c.jedit("anchors/anchors.json", lambda d: d.update(anchors=d["anchors"][:1])),
     ""),
    ("anchors-json-no-file-field", lambda c: c.jedit("anchors/anchors.json", lambda d: d["anchors"][0].pop("file")), ""),
    ("anchors-json-file-is-folder", lambda c: c.jedit("anchors/anchors.json",
                                                      lambda d: d["anchors"][0].update(file=".")), ""),
    ("anchors-json-depth-text", lambda c: c.jedit("anchors/anchors.json",
                                                  lambda d: d["anchors"][0]["config"].update(depth="two")), ""),
    ("anchors-json-depth-zero", lambda c: c.jedit("anchors/anchors.json",
                                                  lambda d: d["anchors"][0]["config"].update(depth=0)), ""),
    ("anchors-json-heads-not-dividing", lambda c: c.jedit("anchors/anchors.json",
                                                          lambda d: d["anchors"][0]["config"].update(num_heads=3)),
     "embed_dim 32 with 3 heads"),
    ("anchors-json-family-unknown", lambda c: c.jedit("anchors/anchors.json",
                                                      lambda d: d["anchors"][0]["config"].update(family="mlp")), ""),
    ("anchors-json-config-missing-key", lambda c: c.jedit("anchors/anchors.json",
                                                          lambda d: d["anchors"][0]["config"].pop("embed_dim")), ""),
    ("anchors-json-sha-stale", lambda c: c.tmap(A0, lambda sd: {k: v.clone().zero_() if v.is_floating_point() else v
                                                                 for k, v in sd.items()}),
     "the .pth was replaced after anchors.json recorded its SHA-256"),
]:
    expect = "sane" if cid == "anchors-pth-nan" else "error"
    def setup(c: Ctx, e: Callable[[Ctx], Any] = edit) -> list[str]:
        c.copy("anchors")
        e(c)
        return [*ST, "--anchors", "anchors", "--out", "out"]
    add(cid, expect, "ANCHORS", setup, note)


@case("anchors-other-architecture", "error", "ANCHORS", note="a ResNet state dict given as a ViT preset")
def _(c: Ctx) -> list[str]:
    import torch

    sys.path.insert(0, str(CODE_ROOT))
    from stitching.cnn import RESNET_PRESETS, create_resnet

    torch.manual_seed(0)
    preset = "resnet_digits_tiny" if "resnet_digits_tiny" in RESNET_PRESETS else sorted(RESNET_PRESETS)[0]
    try:
        model = create_resnet(preset, in_chans=1, num_classes=10)
    except TypeError:
        model = create_resnet(preset)
    c.tsave(model.state_dict(), "resnet.pth")
    return [*ST, "--anchor", f"vit_digits_tiny={c.p('resnet.pth')}", "--anchor",
            f"vit_digits_small={c.fx / 'anchors' / 'vit_digits_small.pth'}", "--out", "out"]


add("anchors-deit-preset-on-digit-vit", "error", "ANCHORS",
    lambda c: [*ST, "--anchor", f"deit_tiny_patch16_224={c.fx / 'anchors' / 'vit_digits_tiny.pth'}",
               "--anchor", f"deit_small_patch16_224={c.fx / 'anchors' / 'vit_digits_small.pth'}", "--out", "out"],
    note="timm DeiT presets with the digit ViTs' weights")


@case("anchors-safetensors-random", "error", "ANCHORS")
def _(c: Ctx) -> list[str]:
    c.randbytes("a.safetensors", 2048)
    return [*ST, "--anchor", f"vit_digits_tiny={c.p('a.safetensors')}",
            "--anchor", f"vit_digits_small={c.fx / 'anchors' / 'vit_digits_small.pth'}", "--out", "out"]


@case("anchors-safetensors-wrong-shapes", "error", "ANCHORS",
      note="a valid .safetensors of the small anchor given as the tiny one")
def _(c: Ctx) -> list[str]:
    from safetensors.torch import save_file

    state = c.tload(str(c.fx / "anchors" / "vit_digits_small.pth"))
    save_file({k: v.contiguous() for k, v in state.items()}, str(c.p("a.safetensors")))
    return [*ST, "--anchor", f"vit_digits_tiny={c.p('a.safetensors')}",
            "--anchor", f"vit_digits_base={c.fx / 'anchors' / 'vit_digits_base.pth'}", "--out", "out"]


@case("anchors-safetensors-truncated", "error", "ANCHORS")
def _(c: Ctx) -> list[str]:
    from safetensors.torch import save_file

    state = c.tload(str(c.fx / "anchors" / "vit_digits_tiny.pth"))
    save_file({k: v.contiguous() for k, v in state.items()}, str(c.p("a.safetensors")))
    c.truncate("a.safetensors", 0.6)
    return [*ST, "--anchor", f"vit_digits_tiny={c.p('a.safetensors')}",
            "--anchor", f"vit_digits_small={c.fx / 'anchors' / 'vit_digits_small.pth'}", "--out", "out"]


add("anchors-path-is-csv", "error", "ANCHORS", lambda c: [*ST, "--anchors", f"{_pool(c)}/results.csv", "--out", "out"])
add("anchors-flag-no-equals", "error", "ANCHORS", [*ST, "--anchor", "vit_digits_tiny", "--anchor", "x=y", "--out", "out"])
def _zeroed(sd: dict) -> dict:
    return {k: v.clone().zero_() if v.is_floating_point() else v for k, v in sd.items()}


add("stitch-evaluate-anchor-deleted-no-train", "error", "ANCHORS",
    lambda c: [*(c.copy_stitch(anchors=True) and []), *(c.p(A0).unlink() or []), "stitch", "evaluate", "--run",
               "stitch", "--no-train"], note="an anchor of the run deleted; --no-train rebuilds from the anchors")
add("stitch-evaluate-anchor-changed-no-train", "error", "ANCHORS",
    lambda c: [*(c.copy_stitch(anchors=True) and []), *(c.tmap(A0, _zeroed) or []), "stitch", "evaluate", "--run",
               "stitch", "--no-train"], note="an anchor's weights changed after the run")
add("stitch-evaluate-anchor-deleted-checkpoint", "ok", "ANCHORS",
    lambda c: [*(c.copy_stitch(anchors=True) and []), *(c.p(A0).unlink() or []), "stitch", "evaluate", "--run",
               "stitch", "--out", "ev"],
    note="valid: snnet.pt holds every anchor's weights, so re-scoring it needs no anchor file")

# ---------------------------------------------------------------- learngene distill / pool
LD = ["learngene", "distill", *TINY_LGD]


def _ld(extra: list[str]):
    return lambda c: [*LD, "--anchors", str(c.fx / "anchors"), *extra, "--out", "out"]


add("learngene-teacher-unknown", "error", "LEARNGENE", _ld(["--teacher", "vit_giant"]))
add("learngene-teacher-path-missing", "error", "LEARNGENE",
    ["learngene", "distill", *TINY_LGD, "--teacher", "vit_digits_base=missing.pth", "--out", "out"])
add("learngene-student-text-dim", "error", "LEARNGENE", _ld(["--student", "tiny:abc:2:1"]))
add("learngene-student-heads-not-dividing", "error", "LEARNGENE", _ld(["--student", "odd:30:4:1"]))
add("learngene-student-depth-zero", "error", "LEARNGENE", _ld(["--student", "flat:32:2:0"]))
add("learngene-student-too-deep", "error", "LEARNGENE", _ld(["--student", "deep:32:2:9"]),
    note="deeper than the teacher")
add("learngene-matches-out-of-range", "error", "LEARNGENE", _ld(["--matches", "99:0"]))
add("learngene-matches-garbage", "error", "LEARNGENE", _ld(["--matches", "a:b"]))
add("learngene-alpha-nan", "error", "OPT", _ld(["--alpha", "nan"]))
add("learngene-temperature-zero", "error", "OPT", _ld(["--temperature", "0"]))
add("learngene-lr-1e6", "sane", "DIVERGE", _ld(["--lr", "1e6", "--optimizer", "sgd"]))
add("learngene-json-list-resume", "error", "LEARNGENE",
    lambda c: [*(c.copy_lg() or []), *(c.jdump("lgd/learngene.json", []) or []), *LD, "--anchors", "anchors",
               "--out", "lgd", "--resume"])
LGPOOL = ["learngene", "pool", "--distill", "lgd", *TINY_LGP, "--out", "out"]
for cid, edit, note in [
    ("learngene-json-list-pool", lambda c: c.jdump("lgd/learngene.json", []), ""),
    ("learngene-json-no-format-pool", lambda c: c.jedit("lgd/learngene.json", lambda d: d.pop("format")), ""),
    ("learngene-json-sha-number-pool", lambda c: c.jedit("lgd/learngene.json", lambda d: d.update(sha256=5)), ""),
    ("learngene-pt-truncated-pool", lambda c: c.truncate("lgd/learngene.pt"), ""),
    ("learngene-pt-random-sha-fixed-pool",
     lambda c: (c.randbytes("lgd/learngene.pt"),
                c.jedit("lgd/learngene.json", lambda d: d.update(
                    sha256=hashlib.sha256(c.p("lgd/learngene.pt").read_bytes()).hexdigest()))),
     "random bytes, hash fixed up"),
    ("learngene-pt-wrong-shape-sha-fixed-pool",
     lambda c: (c.tmap("lgd/learngene.pt", reshape_first),
                c.jedit("lgd/learngene.json", lambda d: d.update(
                    sha256=hashlib.sha256(c.p("lgd/learngene.pt").read_bytes()).hexdigest()))), ""),
    ("learngene-pt-missing-pool", lambda c: c.p("lgd/learngene.pt").unlink(), ""),
    ("learngene-pt-folder-pool", lambda c: (c.p("lgd/learngene.pt").unlink(), c.p("lgd/learngene.pt").mkdir()), ""),
    ("learngene-teacher-deleted-pool", lambda c: c.p("anchors/vit_digits_base.pth").unlink(),
     "the teacher is needed for fine-tuning distillation"),
]:
    def setup(c: Ctx, e: Callable[[Ctx], Any] = edit) -> list[str]:
        c.copy_lg()
        e(c)
        return list(LGPOOL)
    add(cid, "error", "LEARNGENE", setup, note)
add("learngene-pool-student-unknown", "error", "OPT",
    lambda c: [*(c.copy_lg() or []), *LGPOOL[:-2], "--student", "huge", "--out", "out"])
add("learngene-pool-student-duplicate", "error", "OPT",
    lambda c: [*(c.copy_lg() or []), *LGPOOL[:-2], "--student", "tiny", "--student", "tiny", "--out", "out"])
add("learngene-pool-lr-nan", "error", "OPT", lambda c: [*(c.copy_lg() or []), *LGPOOL[:-2], "--lr", "nan", "--out", "out"])
add("learngene-pool-distill-weight-nan", "error", "OPT",
    lambda c: [*(c.copy_lg() or []), *LGPOOL[:-2], "--distill-weight", "nan", "--out", "out"])
add("learngene-pool-init-samples-zero", "error", "OPT",
    lambda c: [*(c.copy_lg() or []), *LGPOOL[:-2], "--init", "least-squares", "--init-samples", "0", "--out", "out"])
add("learngene-pool-distill-is-anchors", "error", "RUNCFG",
    lambda c: ["learngene", "pool", "--distill", c.copy("anchors"), *TINY_LGP, "--out", "out"])
add("learngene-evaluate-learngene-changed", "error", "LEARNGENE",
    lambda c: [*(c.copy_lg() or []),
               *(c.tmap("lgd/learngene.pt", lambda sd: {k: v.clone().zero_() if v.is_floating_point() else v
                                                         for k, v in sd.items()}) or []),
               *(c.jedit("lgd/learngene.json", lambda d: d.update(
                   sha256=hashlib.sha256(c.p("lgd/learngene.pt").read_bytes()).hexdigest())) or []),
               "learngene", "evaluate", "--run", "lgp"], note="learngene.pt replaced after the pool run")

# ---------------------------------------------------------------- Ctrl-C


def exists(rel: str) -> Callable[[Ctx], bool]:
    return lambda c: c.p(rel).exists()


def csv_rows(rel: str, n: int) -> Callable[[Ctx], bool]:
    def trigger(c: Ctx) -> bool:
        try:
            return len(c.p(rel).read_text().strip().splitlines()) > n
        except OSError:
            return False
    return trigger


def unique_rows(rel: str, key: str, n: int | None = None) -> Callable[[Ctx], list[str]]:
    def check(c: Ctx) -> list[str]:
        with c.p(rel).open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        keys = Counter(r[key] for r in rows)
        problems = [f"{rel}: {k} appears {v} times" for k, v in keys.items() if v > 1]
        if n is not None and len(keys) != n:
            problems.append(f"{rel}: {len(keys)} distinct rows after --resume, expected {n}")
        return problems
    return check


def add_interrupt(cid: str, argv: list[str] | Callable[[Ctx], list[str]], trigger: Callable[[Ctx], bool], keep: str,
                  note: str = "", after: Callable[[Ctx], list[str]] | None = None) -> None:
    add(cid, "interrupt", "SIGINT", argv, note, interrupt=Interrupt(trigger, keep, True, after), timeout=180)


add_interrupt("sigint-pooling-training",
              ["search", "pooling", "--epochs", "6", "--input-size", "16", "--width-scale", "0.5", "--candidates", "4",
               *CPU, "--out", "out"], exists("out/supernet.pt"), "out/supernet.pt", "after the first checkpoint",
              after=unique_rows("out/results.csv", "candidate", 4))
add_interrupt("sigint-pooling-scoring",
              ["search", "pooling", "--epochs", "1", "--input-size", "16", "--width-scale", "0.5", *CPU,
               "--out", "out"], csv_rows("out/results.csv", 2), "out/results.csv",
              "while candidates are scored (2 rows written)", after=unique_rows("out/results.csv", "candidate", 36))
add_interrupt("sigint-bms-training",
              ["search", "bms", "-M", "2", "--epochs", "6", "--input-size", "16", "--width-scale", "0.5",
               "--candidates", "4", *CPU, "--out", "out"], exists("out/supernet.pt"), "out/supernet.pt",
              after=unique_rows("out/results.csv", "candidate", 4))
add_interrupt("sigint-train",
              ["train", "--config", "4,3,3", "--epochs", "8", "--input-size", "16", "--width-scale", "0.5", *CPU,
               "--out", "out"], exists("out/model_checkpoint.pt"), "out/model_checkpoint.pt")
add_interrupt("sigint-truth",
              ["truth", "pooling", "--configs", "4,3,3;1,3,6;5,1,4;4,4,2", "--seeds", "0,1", "--epochs", "2",
               "--input-size", "8", "--width-scale", "0.25", *CPU, "--out", "out"], csv_rows("out/truth.csv", 1),
              "out/truth.csv", after=unique_rows("out/truth.csv", "key", 8))
add_interrupt("sigint-anchors",
              ["anchors", "train", "--depth", "2", "--epochs", "6", "--max-train-samples", "400", "--input-size", "8",
               *CPU, "--out", "out"], exists("out/vit_digits_tiny.train.pt"), "out/run_config.json")
add_interrupt("sigint-stitch",
              lambda c: ["stitch", "train", "--anchors", str(c.fx / "anchors"), "--epochs", "8", "--max-train-samples",
                         "400", "--input-size", "8", "--init-samples", "20", *CPU, "--out", "out"],
              exists("out/snnet.pt"), "out/snnet.pt")
add_interrupt("sigint-learngene-distill",
              lambda c: ["learngene", "distill", "--anchors", str(c.fx / "anchors"), "--matches", "end", "--epochs",
                         "8", "--max-train-samples", "400", "--input-size", "8", *CPU, "--out", "out"],
              exists("out/distill.pt"), "out/distill.pt")
add_interrupt("sigint-learngene-pool",
              lambda c: ["learngene", "pool", "--distill", str(c.fx / "lgd"), "--epochs", "30", *CPU, "--out", "out"],
              exists("out/pool.pt"), "out/pool.pt")


# ============================================================================ fixtures
FIXTURE_RUNS: list[tuple[str, list[list[str]]]] = [
    # (chain name, commands run in order; chains run in parallel)
    ("pooling", [
        ["search", "pooling", *TINY_POOL, "--out", "pool"],
        ["search", "bms", *TINY_BMS, "--out", "bms"],
        ["train", *TINY_TRAIN, "--out", "train"],
        ["truth", "pooling", *TINY_TRUTH, "--out", "truth"],
    ]),
    ("stitching", [
        ["anchors", "train", *TINY_ANCHORS, "--out", "anchors"],
        ["stitch", "train", "--anchors", "anchors", *TINY_STITCH, "--out", "stitch"],
        ["learngene", "distill", "--anchors", "anchors", *TINY_LGD, "--out", "lgd"],
        ["learngene", "pool", "--distill", "lgd", *TINY_LGP, "--out", "lgp"],
    ]),
]
FIXTURE_MARK = ".fuzz_fixtures_ok"


def cli_command() -> list[str]:
    script = Path(sys.executable).parent / "stitchnas"
    if script.exists():
        return [str(script)]
    found = shutil.which("stitchnas")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from stitchnas.cli import main; sys.exit(main())"]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", MPLBACKEND="Agg",
               PYTHONDONTWRITEBYTECODE="1", TQDM_DISABLE="1", PYTHONFAULTHANDLER="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CODE_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def write_data_fixtures(root: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    n = 300
    buffer = io.BytesIO()
    np.savez(buffer, x=rng.random((n, 8, 8), dtype=np.float32), y=np.arange(n) % 10)
    (root / "npz_ok.npz").write_bytes(buffer.getvalue())
    folder = root / "cifar_ok" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    per = 40
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": [int(i % 10) for i in range(per)],
                 b"data": rng.integers(0, 256, (per, 3072), dtype=np.uint8),
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(per)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=2))


def build_fixtures(root: Path, timeout: int) -> None:
    """The shared fixtures (~1 minute on 2 cores): each chain of commands in its own thread."""
    if (root / FIXTURE_MARK).exists():
        print(f"fixtures: reusing {root}")
        return
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    start = time.time()
    errors: list[str] = []

    def chain(name: str, commands: list[list[str]]) -> None:
        for argv in commands:
            proc = subprocess.run([*cli_command(), *argv], cwd=root, env=child_env(), capture_output=True, text=True,
                                  timeout=timeout * 3)
            if proc.returncode != 0:
                errors.append(f"fixture command failed ({proc.returncode}): stitchnas {' '.join(argv)}\n"
                              + "\n".join(proc.stderr.strip().splitlines()[-15:]))
                return

    threads = [threading.Thread(target=chain, args=c) for c in FIXTURE_RUNS]
    for t in threads:
        t.start()
    write_data_fixtures(root)
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("\n".join(errors))
    # the exported model: the cheapest member of the tiny run's front (which one depends on the recipe)
    shutil.copytree(sorted((root / "pool" / "exports").iterdir())[0], root / "model")
    stitch_exports = sorted((root / "stitch" / "exports").iterdir())
    shutil.copytree(stitch_exports[0], root / "smodel")
    (root / FIXTURE_MARK).write_text(_dt.datetime.now().isoformat())
    print(f"fixtures: built in {time.time() - start:.0f} s in {root}")


# ============================================================================ running a case
def _run(argv: list[str], cwd: Path, timeout: int, interrupt: Interrupt | None = None,
         ctx: Ctx | None = None) -> dict[str, Any]:
    """Run the CLI in its own process group; kill the group on timeout. With ``interrupt``,
    SIGINT the group (as a terminal's Ctrl-C does) once the trigger holds."""
    start = time.time()
    proc = subprocess.Popen([*cli_command(), *argv], cwd=cwd, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    result: dict[str, Any] = {"timed_out": False, "interrupted": False}
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []
    readers = [threading.Thread(target=lambda s, b: b.append(s.read()), args=(proc.stdout, out_chunks), daemon=True),
               threading.Thread(target=lambda s, b: b.append(s.read()), args=(proc.stderr, err_chunks), daemon=True)]
    for r in readers:
        r.start()
    deadline = start + timeout
    if interrupt is not None and ctx is not None:
        while proc.poll() is None and time.time() < deadline:
            if interrupt.trigger(ctx):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGINT)
                result["interrupted"] = True
                result["interrupted_after"] = round(time.time() - start, 1)
                deadline = min(deadline, time.time() + 60)
                break
            time.sleep(0.05)
    try:
        proc.wait(timeout=max(0.1, deadline - time.time()))
    except subprocess.TimeoutExpired:
        result["timed_out"] = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for r in readers:
        r.join(timeout=10)
    result.update(rc=proc.returncode, seconds=round(time.time() - start, 1),
                  stdout=b"".join(out_chunks).decode("utf-8", "replace"),
                  stderr=b"".join(err_chunks).decode("utf-8", "replace"))
    return result


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def traceback_summary(stderr: str) -> tuple[str, str]:
    """(exception line, innermost frame inside the repository) of the last traceback."""
    if "Traceback (most recent call last)" not in stderr:
        return "", ""
    blocks = stderr.split("Traceback (most recent call last):")
    frame_re = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S+)')
    where = ""
    for block in reversed(blocks[1:]):
        frames = [m for m in (frame_re.match(line) for line in block.splitlines()) if m]
        ours = [m for m in frames if str(CODE_ROOT) in m.group(1) and ".venv" not in m.group(1)
                and "fuzz_cli" not in m.group(1)]
        if ours:
            m = ours[-1]
            where = f"{Path(m.group(1)).relative_to(CODE_ROOT)}:{m.group(2)} in {m.group(3)}"
            break
    exc = ""
    for line in blocks[-1].splitlines():
        if EXC_RE.match(line):
            exc = line.strip()
    return exc or _last_line(stderr), where


def classify(case: Case, ctx: Ctx, argv: list[str], run: dict[str, Any], before: dict[str, str] | None) -> dict[str, Any]:
    rc, stderr = run["rc"], run["stderr"]
    last = _last_line(stderr)
    has_tb = "Traceback (most recent call last)" in stderr
    exc, where = traceback_summary(stderr)
    problems: list[str] = []
    klass = "bad"
    out = out_of(argv)

    def changed_files() -> list[str]:
        if before is None:
            return []
        after = snapshot(ctx.dir)
        def folded(keys: list[str]) -> list[str]:  # one entry per export folder
            return sorted({re.sub(r"(exports/[^/]+)/.*", r"\1/", k) for k in keys})

        gone = folded([k for k in before if k not in after])
        diff = folded([k for k in before if k in after and after[k] != before[k]])
        return [f"deleted {k}" for k in gone[:3]] + [f"changed {k}" for k in diff[:3]]

    # Exit 2: bad input; exit 1: the run itself failed (training diverged, a network with
    # non-finite outputs): both are one line and never a result (stitchnas/cli/main.py).
    runtime_failure = rc == 1 and bool(RUNTIME_FAILURE_RE.search(last))
    one_line = (rc == 2 or runtime_failure) and not has_tb and bool(ERROR_RE.match(last))
    if run["timed_out"]:
        problems.append(f"hang: no exit after {case.timeout} s (process group killed)")
    elif case.expect == "interrupt":
        if not run["interrupted"]:
            problems.append(f"the run ended (exit {rc}) before the interrupt point was reached")
        else:
            if rc != 130:
                problems.append(f"exit {rc} after SIGINT, expected 130")
            if has_tb:
                problems.append("traceback after SIGINT")
            if not (INTERRUPT_RE.match(last) and "--resume" in last):
                problems.append(f"last stderr line is not the 'interrupted ... --resume' line: {last[:160]!r}")
            if out and ctx.p(out, "pareto.json").exists():
                problems.append("pareto.json written by an interrupted run")
            if out and ctx.p(out).exists():
                temps = [str(p.relative_to(ctx.dir)) for p in ctx.p(out).rglob("*.tmp")]
                if temps:
                    problems.append(f"temp files left: {temps[:3]}")
            if case.interrupt and not ctx.p(case.interrupt.keep).exists():
                problems.append(f"{case.interrupt.keep} lost after the interrupt")
        if not problems and case.interrupt and case.interrupt.resume:
            again = _run([*argv, "--resume"], ctx.dir, case.timeout)
            run["resume"] = {k: again[k] for k in ("rc", "seconds", "timed_out")}
            run["resume_stderr"] = again["stderr"]
            if again["timed_out"]:
                problems.append("--resume after the interrupt hangs")
            elif again["rc"] != 0:
                rexc, rwhere = traceback_summary(again["stderr"])
                problems.append(f"--resume after the interrupt: exit {again['rc']}: "
                                f"{rexc or _last_line(again['stderr'])[:200]}" + (f" [{rwhere}]" if rwhere else ""))
                exc, where = rexc, rwhere
            else:
                if out:
                    problems += [f"after --resume: {p}" for p in sanity_problems(ctx.p(out))]
                if case.interrupt.after_resume:
                    problems += case.interrupt.after_resume(ctx)
        if not problems:
            klass = "clean interrupt"
    elif case.expect == "ok":
        if rc != 0 or has_tb:
            problems.append(f"exit {rc} for a valid invocation" + (" with a traceback" if has_tb else "")
                            + f": {exc or last[:200]}")
        else:
            if out:
                problems += sanity_problems(ctx.p(out))
            if case.check:
                problems += case.check(ctx)
        if not problems:
            klass = "correct run"
    else:  # "error" or "sane"
        if one_line:
            changed = changed_files() if case.guard else []
            if changed:
                problems.append("one-line error, but pre-existing files were modified: " + ", ".join(changed))
            else:
                klass = "one-line error"
        elif rc == 0 and not has_tb and case.expect == "sane":
            target = ctx.p(out) if out else None
            insane = sanity_problems(target) if target is not None else []
            if insane:
                problems.append("exit 0 with a wrong result: " + "; ".join(insane[:3]))
            else:
                klass = "correct run"
        elif rc == 0 and not has_tb:
            notes = []
            if out and ctx.p(out).exists():
                notes += sanity_problems(ctx.p(out))[:2]
            notes += [c for c in changed_files() if c.startswith("deleted")]
            detail = (" (" + "; ".join(notes) + ")") if notes else ""
            problems.append(f"exit 0 for an invalid input{detail}")
        elif has_tb:
            problems.append(f"traceback (exit {rc}): {exc}" + (f" [{where}]" if where else ""))
        elif rc not in (0, 2) and ERROR_RE.match(last) and not has_tb:
            changed = changed_files() if case.guard else []
            problems.append(f"one-line error, but exit {rc} (the table wants exit 2, or 1 for a diverged run): "
                            f"{last[:200]!r}"
                            + (" and pre-existing files were modified: " + ", ".join(changed) if changed else ""))
        elif rc == 2:
            lines = [line for line in stderr.splitlines() if line.strip()]
            problems.append(f"exit 2 but the last stderr line is not 'stitchnas: error: ...': {last[:200]!r}"
                            + (f" ({len(lines)} lines)" if lines else " (stderr empty)"))
        else:
            problems.append(f"exit {rc} without a one-line error: {last[:200]!r}")
    return {"class": klass, "problems": problems, "exception": exc, "where": where, "last_line": last[:300]}


def run_case(case_id: str, fixtures: str, tmp_root: str, timeout: int | None, keep: bool) -> dict[str, Any]:
    case = next(c for c in CASES if c.id == case_id)
    folder = Path(tmp_root) / case.id
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    ctx = Ctx(folder, Path(fixtures))
    if timeout is not None:
        case.timeout = timeout if case.expect != "interrupt" else max(timeout, case.timeout)
    record: dict[str, Any] = {"id": case.id, "expect": case.expect, "covers": case.covers, "note": case.note}
    try:
        try:
            argv = case.setup(ctx)
        except Skip as why:
            record.update({"class": "skipped", "problems": [str(why)], "argv": [], "command": "?"})
            return record
        except Exception:  # noqa: BLE001  (a broken case is the harness's bug: report it as such)
            record.update({"class": "harness error", "problems": ["setup failed: " + traceback.format_exc(limit=3)],
                           "argv": [], "command": "?"})
            return record
        record["argv"] = argv
        record["command"] = command_of(argv)
        guard = case.expect in ("error", "sane") and case.guard
        before = snapshot(folder) if guard else None
        run = _run(argv, folder, case.timeout, case.interrupt, ctx)
        try:
            verdict = classify(case, ctx, argv, run, before)
        except Exception:  # noqa: BLE001
            verdict = {"class": "harness error", "problems": ["classify failed: " + traceback.format_exc(limit=3)],
                       "exception": "", "where": "", "last_line": ""}
        record.update(verdict)
        record.update(rc=run["rc"], seconds=run["seconds"], timed_out=run["timed_out"],
                      interrupted_after=run.get("interrupted_after"), resume=run.get("resume"),
                      stderr_tail="\n".join(run["stderr"].splitlines()[-25:]),
                      stdout_tail="\n".join(run["stdout"].splitlines()[-5:]))
        if run.get("resume_stderr"):
            record["resume_stderr_tail"] = "\n".join(run["resume_stderr"].splitlines()[-15:])
        return record
    finally:
        ctx.cleanup()
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


# ============================================================================ main
def print_table(results: list[dict[str, Any]]) -> None:
    classes = ["one-line error", "correct run", "clean interrupt", "bad", "skipped", "harness error"]
    by_cmd: dict[str, Counter] = defaultdict(Counter)
    for r in results:
        by_cmd[r.get("command", "?")][r["class"]] += 1
    shown = [k for k in classes if any(c[k] for c in by_cmd.values())]
    width = max(len(c) for c in [*by_cmd, "command"]) + 2
    print()
    print(f"{'command':<{width}}{'cases':>6}" + "".join(f"{k:>17}" for k in shown))
    total: Counter = Counter()
    for cmd in sorted(by_cmd):
        counts = by_cmd[cmd]
        total.update(counts)
        print(f"{cmd:<{width}}{sum(counts.values()):>6}" + "".join(f"{counts[k]:>17}" for k in shown))
    print(f"{'total':<{width}}{sum(total.values()):>6}" + "".join(f"{total[k]:>17}" for k in shown))


def summary_line(results: list[dict[str, Any]]) -> str:
    counts = Counter(r["class"] for r in results)
    parts = [f"{len(results)} cases", f"{counts['one-line error']} one-line error",
             f"{counts['correct run']} correct run", f"{counts['clean interrupt']} clean interrupt",
             f"{counts['bad']} bad"]
    for extra in ("skipped", "harness error"):
        if counts[extra]:
            parts.append(f"{counts[extra]} {extra}")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="regular expression: run the cases whose id matches")
    parser.add_argument("--list", action="store_true", help="print the table of cases and exit")
    parser.add_argument("--json", default=None, metavar="OUT", help="write every case's result to this JSON file")
    parser.add_argument("--jobs", type=int, default=2, help="cases run in parallel (default 2)")
    parser.add_argument("--timeout", type=int, default=None,
                        help=f"per-case timeout in seconds (default {DEFAULT_TIMEOUT}; Ctrl-C cases 180)")
    parser.add_argument("--fixtures", default=None,
                        help="folder for the shared fixtures; reused when it already holds them (default: a new "
                             "temporary folder, removed afterwards)")
    parser.add_argument("--keep", action="store_true", help="keep every case's folder (printed at the end)")
    parser.add_argument("--repo", default=None,
                        help="run the CLI from the package tree in this folder (put first on PYTHONPATH), e.g. an "
                             "export of another commit; default: this checkout")
    args = parser.parse_args(argv)
    global CODE_ROOT
    if args.repo:
        CODE_ROOT = Path(args.repo).resolve()
        if not (CODE_ROOT / "stitchnas" / "cli").is_dir():
            print(f"--repo {args.repo}: no stitchnas/cli package there", file=sys.stderr)
            return 2

    selected = [c for c in CASES if args.only is None or re.search(args.only, c.id)]
    if args.list:
        for c in selected:
            cmd = command_of(c.static) if c.static else ""
            print(f"{c.id:<46} {c.expect:<9} {c.covers:<9} {cmd:<18} {c.note}")
        print(f"{len(selected)} cases")
        return 0
    if not selected:
        print(f"no case matches {args.only!r}", file=sys.stderr)
        return 2
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    scratch = Path(tempfile.mkdtemp(prefix="stitchnas-fuzz-"))
    fixtures = Path(args.fixtures).resolve() if args.fixtures else scratch / "fixtures"
    started = time.time()
    started_at = _dt.datetime.now().isoformat(timespec="seconds")
    load_at_start = os.getloadavg()
    try:
        try:
            build_fixtures(fixtures, args.timeout or DEFAULT_TIMEOUT)
        except Exception as exc:  # noqa: BLE001
            print(f"fuzz_cli: cannot build the fixtures:\n{exc}", file=sys.stderr)
            return 3
        cases_root = scratch / "cases"
        cases_root.mkdir()
        results: list[dict[str, Any]] = []
        ctx = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx) as pool:
            futures = {pool.submit(run_case, c.id, str(fixtures), str(cases_root), args.timeout, args.keep): c
                       for c in selected}
            for future in concurrent.futures.as_completed(futures):
                c = futures[future]
                try:
                    r = future.result()
                except Exception:  # noqa: BLE001
                    r = {"id": c.id, "expect": c.expect, "covers": c.covers, "class": "harness error",
                         "problems": [traceback.format_exc(limit=3)], "command": "?"}
                results.append(r)
                mark = {"bad": "BAD ", "harness error": "HARN", "skipped": "skip"}.get(r["class"], "ok  ")
                print(f"[{len(results):>3}/{len(selected)}] {mark} {r['id']:<46} {r['class']:<16} "
                      f"{r.get('seconds', 0):>6}s  {r.get('command', '')}", flush=True)
        order = {c.id: i for i, c in enumerate(CASES)}
        results.sort(key=lambda r: order[r["id"]])
        print_table(results)
        bad = [r for r in results if r["class"] in ("bad", "harness error")]
        if bad:
            print(f"\n{len(bad)} bad cases:")
            for r in bad:
                print(f"- {r['id']} ({r.get('command', '?')}; {r['covers']}): {r['problems'][0] if r['problems'] else ''}")
                for extra in r["problems"][1:3]:
                    print(f"    {extra}")
                if r.get("where") and r["where"] not in (r["problems"][0] if r["problems"] else ""):
                    print(f"    at {r['where']}")
        skipped = [r for r in results if r["class"] == "skipped"]
        for r in skipped:
            print(f"skipped {r['id']}: {r['problems'][0]}")
        elapsed = time.time() - started
        line = summary_line(results)
        load = " ".join(f"{v:.2f}" for v in load_at_start)
        print(f"\nsummary: {line} ({elapsed / 60:.1f} min, --jobs {args.jobs}, {os.cpu_count()} CPUs, "
              f"load average at start {load}, code {CODE_ROOT})")
        if args.json:
            meta = {"started": started_at, "finished": _dt.datetime.now().isoformat(timespec="seconds"),
                    "argv": sys.argv, "summary": line, "code_root": str(CODE_ROOT), "seconds": round(elapsed, 1),
                    "jobs": args.jobs, "cpus": os.cpu_count(), "loadavg_start": load_at_start,
                    "loadavg_end": os.getloadavg()}
            Path(args.json).write_text(json.dumps({"meta": meta, "cases": results}, indent=2, default=str))
            print(f"results: {Path(args.json).resolve()}")
        if args.keep:
            print(f"case folders kept in {cases_root}")
        return 1 if bad else 0
    finally:
        if not args.keep:  # fixtures given with --fixtures live outside scratch and are kept for the next run
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
