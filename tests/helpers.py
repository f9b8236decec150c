"""Small helpers shared by test modules (imported as ``helpers``: pytest puts tests/ on the path)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def perturb_batchnorm(model: torch.nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affines (from torch's global RNG), so that eval mode
    differs from the identity and a wrong slice or copy shows in the outputs."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)


def assert_bad_option(capsys: pytest.CaptureFixture[str], argv: list[str], message: str, out: Path) -> None:
    """``stitchnas ARGV --out OUT`` fails as bad input must: exit 2, ``message`` in the last
    stderr line, no traceback, and nothing written at ``out``."""
    from stitchnas.cli import main

    code = main([*argv, "--out", str(out), "--no-progress"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in lines[-1], lines
    assert not any(line.startswith("Traceback") for line in lines)
    assert not out.exists()
