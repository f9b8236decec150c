"""Primitive operations whose downsampling can be switched on or off per forward pass.

The standalone model uses the plain torch modules; the supernet uses these switchable twins,
which keep the same parameter names so weights move between the two with ``load_state_dict``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def make_pool(op: str) -> nn.Module:
    """The 2x2 pooling placed before a layer ("conv" downsampling has no separate op)."""
    if op == "maxpool":
        return nn.MaxPool2d(kernel_size=2, stride=2)
    if op == "avgpool":
        return nn.AvgPool2d(kernel_size=2, stride=2)
    raise ValueError(f"pooling op: expected 'maxpool' or 'avgpool', got {op!r}")


class SwitchableStrideConv2d(nn.Conv2d):
    """A convolution whose stride (1 or 2) is chosen by the active configuration."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.active_stride = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.active_stride, self.padding, self.dilation, self.groups)


class SwitchablePool(nn.Module):
    """A pooling op that is applied only when the active configuration asks for it."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.pool = make_pool(op)
        self.active = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) if self.active else x


def subsample(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Parameter-free stride-2 shortcut (BMS subsamples the identity shortcut)."""
    return x if stride == 1 else x[:, :, ::stride, ::stride]
