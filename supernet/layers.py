"""Residual blocks shared by the standalone networks and the supernet.

A block is built with a convolution class: ``nn.Conv2d`` for a standalone model (fixed
stride) or :class:`~supernet.ops.SwitchableStrideConv2d` for the supernet (stride set per
configuration). Parameter names are identical either way.
"""

from __future__ import annotations

import torch
from torch import nn

from supernet.ops import SwitchableStrideConv2d, subsample


class StridedBlock(nn.Module):
    """Base for residual blocks whose stride may be switched (supernet) or fixed (standalone)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.downsample: nn.Module | None = None

    def zero_init_last(self) -> None:
        """Start each residual branch at zero (timm's ``zero_init_last``): early training is
        then stable at SGD learning rates around 0.1 even for the deepest placements."""
        raise NotImplementedError

    def set_stride(self, stride: int) -> None:
        """Switch every strided convolution of the block (supernet only)."""
        self.stride = stride
        for module in self.modules():
            if isinstance(module, SwitchableStrideConv2d):
                module.active_stride = stride

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            return self.downsample(x)
        return subsample(x, self.stride)


def projection(in_chs: int, out_chs: int, stride: int, conv: type[nn.Conv2d]) -> nn.Module | None:
    """timm-style ``downsample`` shortcut (1x1 conv + BN), only where the width changes."""
    if in_chs == out_chs:
        return None
    return nn.Sequential(conv(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs))


class BasicBlock(StridedBlock):
    """Two 3x3 convolutions with a residual connection (ResNet-20 / ResNet-18 style)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, conv: type[nn.Conv2d] = nn.Conv2d) -> None:
        super().__init__(stride)
        self.conv1 = conv(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = projection(in_chs, out_chs, stride, conv)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class Bottleneck(StridedBlock):
    """1x1 - 3x3 - 1x1 bottleneck, expansion 4 (ResNet-50 style); stride on the 3x3."""

    expansion = 4

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, conv: type[nn.Conv2d] = nn.Conv2d) -> None:
        super().__init__(stride)
        mid = max(1, out_chs // self.expansion)
        self.conv1 = nn.Conv2d(in_chs, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = conv(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(mid, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = projection(in_chs, out_chs, stride, conv)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act3(out + self.shortcut(x))


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ConvStem(nn.Module):
    """3x3 stride-1 stem (CIFAR-style: small inputs, no early downsampling)."""

    def __init__(self, in_chans: int, out_chs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chs, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))
