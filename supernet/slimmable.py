"""Channel-sliced layers for supernets whose widths change with the configuration.

A placement of an equal-FLOPs space (``PoolingSpace.stage_widths``) gives a layer the width of
its resolution stage, so one layer runs at different widths under different placements. The
supernet keeps each layer at its widest and a configuration uses the first ``k`` channels of
every weight, BatchNorm affine and running statistic (Once-for-All's channel slicing, Cai et
al., ICLR 2020, Sec. 3.2; official code ``ofa/utils/layers.py`` ``DynamicConv2d`` /
``DynamicBatchNorm2d``). Input widths are read from the input; output widths are set per
configuration. Parameter names equal the standalone modules', so
:func:`sliced_state_dict` turns the supernet's ``state_dict`` into a standalone network's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from supernet.layers import StridedBlock
from supernet.ops import subsample


class SlicedConv2d(nn.Conv2d):
    """A convolution using the first ``active_out`` filters over the input's channels.

    ``active_stride`` switches the stride (1 or 2) as
    :class:`~supernet.ops.SwitchableStrideConv2d` does. Input ``(N, c_in, H, W)`` with
    ``c_in <= in_channels``; output ``(N, active_out, H', W')``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.active_out = out_channels
        self.active_stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight[: self.active_out, : x.shape[1]]
        bias = None if self.bias is None else self.bias[: self.active_out]
        return F.conv2d(x, weight, bias, self.active_stride, self.padding, self.dilation, self.groups)


class SlicedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the input's first ``c`` channels, updating the first ``c`` running
    statistics in place (views), exactly as ``nn.BatchNorm2d.forward`` does at full width."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        mean = self.running_mean[:c] if track and self.running_mean is not None else None
        var = self.running_var[:c] if track and self.running_var is not None else None
        weight = None if self.weight is None else self.weight[:c]
        bias = None if self.bias is None else self.bias[:c]
        return F.batch_norm(x, mean, var, weight, bias, use_batch, factor, self.eps)


class SlimmableBasicBlock(StridedBlock):
    """:class:`~supernet.layers.BasicBlock` at its widest, run at the active output width.

    The projection shortcut (1x1 conv + BN) exists whenever some configuration changes the
    width here and runs only when the active input and output widths differ, as the
    standalone block of that configuration has it.
    """

    def __init__(self, in_chs: int, out_chs: int, project: bool) -> None:
        super().__init__(stride=1)
        self.conv1 = SlicedConv2d(in_chs, out_chs, 3, padding=1)
        self.bn1 = SlicedBatchNorm2d(out_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = SlicedConv2d(out_chs, out_chs, 3, padding=1)
        self.bn2 = SlicedBatchNorm2d(out_chs)
        self.act2 = nn.ReLU(inplace=True)
        if project:
            self.downsample = nn.Sequential(SlicedConv2d(in_chs, out_chs, 1), SlicedBatchNorm2d(out_chs))
        self.active_out = out_chs

    def set_out_width(self, width: int) -> None:
        self.active_out = width
        for m in self.modules():
            if isinstance(m, SlicedConv2d):
                m.active_out = width

    def set_stride(self, stride: int) -> None:
        self.stride = stride
        for m in self.modules():  # conv1 and the projection's 1x1 conv carry the stride
            if isinstance(m, SlicedConv2d) and m is not self.conv2:
                m.active_stride = stride

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if x.shape[1] != self.active_out:
            assert self.downsample is not None, "a width change needs the projection shortcut"
            shortcut = self.downsample(x)
        else:
            shortcut = subsample(x, self.stride)
        return self.act2(out + shortcut)


def leading(tensor: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The first entries of ``tensor`` along every dimension, ``shape`` in all (a view)."""
    return tensor[tuple(slice(0, n) for n in shape)]


def sliced_state_dict(source: dict[str, torch.Tensor], target: nn.Module) -> dict[str, torch.Tensor]:
    """``target``'s state dict filled from ``source`` (a wider supernet's), each tensor cut to
    the target's shape by taking the leading entries of every dimension (first-k channels).

    Raises:
        KeyError: a target entry missing from ``source``.
        ValueError: a target tensor larger than its source in some dimension.
    """
    out = {}
    for name, ref in target.state_dict().items():
        src = source[name]
        if src.dim() != ref.dim() or any(s < r for s, r in zip(src.shape, ref.shape)):
            raise ValueError(f"{name}: cannot slice {tuple(src.shape)} to {tuple(ref.shape)}")
        out[name] = leading(src, ref.shape).clone()
    return out


__all__ = ["SlicedBatchNorm2d", "SlicedConv2d", "SlimmableBasicBlock", "leading", "sliced_state_dict"]
