"""Small helpers shared by test modules (imported as ``helpers``: pytest puts tests/ on the path)."""

from __future__ import annotations

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
