"""Analytic FLOPs and parameters of pooling placements, in fvcore's convention (one
multiply-add = one FLOP, batch 1); equal to :func:`stitchnas.core.flops.fvcore_flops` on every
configuration (tested), and fast enough for spaces of hundreds of configurations.

fvcore's rules used here (``fvcore/nn/jit_handles.py``): a convolution costs
``C_out * H_out * W_out * C_in * k * k / groups``; an eval-mode affine BatchNorm costs
``2 * numel``; adaptive average pooling costs its input's ``numel``; a linear layer
``in * out``; max/avg pooling, ReLU and the residual addition count as zero.
"""

from __future__ import annotations

from searchspace.pooling import PoolingConfig, PoolingSpace
from supernet.layers import Bottleneck


def _conv(c_in: int, c_out: int, k: int, h_out: int, w_out: int) -> int:
    return c_out * h_out * w_out * c_in * k * k


def _bn(channels: int, h: int, w: int) -> int:
    return 2 * channels * h * w


def pooling_flops(
    space: PoolingSpace, config: PoolingConfig, input_size: int, in_chans: int, num_classes: int
) -> int:
    """Analytic fvcore-convention FLOPs of :func:`supernet.networks.build_model` at batch 1."""
    return sum(pooling_step_flops(space, config, input_size, in_chans, num_classes))


def pooling_step_flops(
    space: PoolingSpace, config: PoolingConfig, input_size: int, in_chans: int, num_classes: int
) -> list[int]:
    """:func:`pooling_flops` split by step: the stem, every layer ``1..num_layers - 1`` (its
    downsampling and block), then the head (average pooling and classifier); ``num_layers + 1``
    counts at batch 1. A layer's count depends only on the placement up to it."""
    space.check_input_size(input_size)
    widths = space.layer_widths(config)
    h = input_size
    steps = [_conv(in_chans, widths[0], 3, h, h) + _bn(widths[0], h, h)]
    conv_mode = space.downsample == "conv"
    for i in range(1, space.num_layers):
        c_in, c_out = widths[i - 1], widths[i]
        h_in = h  # resolution entering the block's first (un-strided) 1x1 conv
        if i in config.positions:
            if conv_mode:  # padded stride-2 convs round up
                h = (h + 1) // 2
            else:  # 2x2 pooling before the block rounds down
                h = h_in = h // 2
        total = 0
        if space.block == "bottleneck":
            mid = max(1, c_out // Bottleneck.expansion)
            total += _conv(c_in, mid, 1, h_in, h_in) + _bn(mid, h_in, h_in)
            total += _conv(mid, mid, 3, h, h) + _bn(mid, h, h)
            total += _conv(mid, c_out, 1, h, h) + _bn(c_out, h, h)
        else:
            total += _conv(c_in, c_out, 3, h, h) + _bn(c_out, h, h)
            total += _conv(c_out, c_out, 3, h, h) + _bn(c_out, h, h)
        if c_in != c_out:
            total += _conv(c_in, c_out, 1, h, h) + _bn(c_out, h, h)
        steps.append(total)
    # adaptive average pooling, then the classifier (fvcore does not count the bias)
    steps.append(widths[-1] * h * h + widths[-1] * num_classes)
    return steps


def pooling_params(space: PoolingSpace, in_chans: int, num_classes: int,
                   config: PoolingConfig | None = None) -> int:
    """Parameter count of :func:`supernet.networks.build_model` for ``config``. The same for
    every placement when widths are fixed per layer; with ``stage_widths`` it depends on the
    placement, and ``config`` is required.

    Raises:
        ValueError: ``config`` missing in a space whose placements differ in parameters.
    """
    if config is None:
        if space.params_vary:
            raise ValueError(f"pooling_params: space {space.name!r} has per-placement widths: pass a config")
        config = space.default_config()
    widths = space.layer_widths(config)
    total = in_chans * widths[0] * 9 + 2 * widths[0]
    for i in range(1, space.num_layers):
        c_in, c_out = widths[i - 1], widths[i]
        if space.block == "bottleneck":
            mid = max(1, c_out // Bottleneck.expansion)
            total += c_in * mid + 2 * mid + mid * mid * 9 + 2 * mid + mid * c_out + 2 * c_out
        else:
            total += c_in * c_out * 9 + 2 * c_out + c_out * c_out * 9 + 2 * c_out
        if c_in != c_out:
            total += c_in * c_out + 2 * c_out
    return total + widths[-1] * num_classes + num_classes
