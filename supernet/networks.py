"""Pooling-placement CNNs: a plain standalone network and the weight-sharing supernet.

Both are built from a :class:`~searchspace.pooling.PoolingSpace`. Layer ``i`` of either network
is ``layers.i`` with a ``pool`` (pooling downsampling) and a ``block``; the stem is layer 0.
Parameter and buffer names are identical, so :meth:`PoolingSuperNet.export_active` is a plain
``load_state_dict`` into :func:`build_model`'s network (Once-for-All's ``get_active_subnet``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from searchspace.pooling import PoolingConfig, PoolingSpace
from supernet.layers import BLOCKS, ConvStem, StridedBlock
from supernet.ops import SwitchablePool, SwitchableStrideConv2d, make_pool
from supernet.slimmable import SlimmableBasicBlock, sliced_state_dict


@dataclass(frozen=True)
class ModelSpec:
    """What a network needs to know about its data."""

    in_chans: int = 1
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.in_chans < 1:
            raise ValueError(f"model 'in_chans': expected >= 1, got {self.in_chans}")
        if self.num_classes < 2:
            raise ValueError(f"model 'num_classes': expected >= 2, got {self.num_classes}")


class _PoolingCNNBase(nn.Module):
    """Shared stem / head plumbing with timm's forward split."""

    def __init__(self, space: PoolingSpace, spec: ModelSpec, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.space = space
        self.spec = spec
        self.num_classes = spec.num_classes
        self.stem = ConvStem(spec.in_chans, widths[0])  # the stem is always in stage 0
        self.layers = nn.ModuleList()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = widths[-1]  # the last layer is always in the last stage
        self.fc = nn.Linear(self.num_features, spec.num_classes)

    def init_weights(self) -> None:
        """Kaiming-normal convolutions (fan-out, as timm's ResNet) and zero-initialised last
        BatchNorm of every residual block."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for layer in self.layers:
            cast(PoolingLayer, layer).block.zero_init_last()  # layers holds PoolingLayers only

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class PoolingLayer(nn.Module):
    """One layer: an optional pooling downsampling, then a residual block."""

    def __init__(self, pool: nn.Module, block: StridedBlock) -> None:
        super().__init__()
        self.pool = pool
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.pool(x))


class PoolingNet(_PoolingCNNBase):
    """A standalone network for one placement: only the chosen path, no switching logic."""

    def __init__(self, space: PoolingSpace, config: PoolingConfig, spec: ModelSpec = ModelSpec()) -> None:
        widths = space.layer_widths(config)
        super().__init__(space, spec, widths)
        self.config = config
        block_cls = BLOCKS[space.block]
        for i in range(1, space.num_layers):
            downsampled = i in config.positions
            pooled = downsampled and space.downsample != "conv"
            stride = 2 if downsampled and space.downsample == "conv" else 1
            pool = make_pool(space.downsample) if pooled else nn.Identity()
            block = block_cls(widths[i - 1], widths[i], stride=stride)
            self.layers.append(PoolingLayer(pool, block))
        self.init_weights()


class _SwitchablePoolingLayer(PoolingLayer):
    def set_width(self, width: int) -> None:
        """Run at ``width`` output channels (sliced blocks of equal-FLOPs spaces only)."""
        if isinstance(self.block, SlimmableBasicBlock):
            self.block.set_out_width(width)

    def set_downsampled(self, downsampled: bool, op: str) -> None:
        if op == "conv":
            self.block.set_stride(2 if downsampled else 1)
        elif isinstance(self.pool, SwitchablePool):  # as PoolingSuperNet builds it for pooling ops
            self.pool.active = downsampled


class PoolingSuperNet(_PoolingCNNBase):
    """One set of weights that runs every placement of its space (SPOS-style one-shot).

    ``set_active(config)`` switches the path; the forward pass then runs only that path, so a
    training step costs what the standalone network's step costs. In a space with
    ``stage_widths`` every layer is built at its widest and runs the placement's width on the
    first channels (:mod:`supernet.slimmable`).
    """

    def __init__(self, space: PoolingSpace, spec: ModelSpec = ModelSpec()) -> None:
        widths = space.max_layer_widths()
        super().__init__(space, spec, widths)
        block_cls = BLOCKS[space.block]
        conv_cls = SwitchableStrideConv2d if space.downsample == "conv" else nn.Conv2d
        transitions = _width_changes(space) if space.stage_widths is not None else set()
        for i in range(1, space.num_layers):
            pool: nn.Module = SwitchablePool(space.downsample) if space.downsample != "conv" else nn.Identity()
            block: StridedBlock
            if space.stage_widths is not None:
                block = SlimmableBasicBlock(widths[i - 1], widths[i], project=i in transitions)
            else:
                block = block_cls(widths[i - 1], widths[i], stride=1, conv=conv_cls)
            self.layers.append(_SwitchablePoolingLayer(pool, block))
        self.init_weights()
        self.active: PoolingConfig | None = None
        self.set_active(space.default_config())

    def set_active(self, config: PoolingConfig) -> None:
        """Activate one placement for the following forward passes."""
        widths = self.space.layer_widths(config)
        for i, layer in enumerate(self.layers, start=1):
            # __init__ appends only _SwitchablePoolingLayers
            switchable = cast(_SwitchablePoolingLayer, layer)
            switchable.set_downsampled(i in config.positions, self.space.downsample)
            switchable.set_width(widths[i])
        self.active = config

    def sample_active(self, rng: random.Random) -> PoolingConfig:
        """Activate a uniformly random placement and return it."""
        config = self.space.sample(rng)
        self.set_active(config)
        return config

    def active_config(self) -> dict[str, Any]:
        assert self.active is not None
        return self.active.to_json()

    def export_active(self, preserve_weight: bool = True) -> PoolingNet:
        """A standalone network for the active placement, with the supernet's weights copied."""
        assert self.active is not None
        model = build_model(self.space, self.active, self.spec)
        if preserve_weight:
            state = self.state_dict()
            model.load_state_dict(sliced_state_dict(state, model) if self.space.stage_widths is not None else state)
        return model.to(next(self.parameters()).device)


def _width_changes(space: PoolingSpace) -> set[int]:
    """Layers where some placement changes the width: they carry the projection shortcut."""
    return {i for c in space for w in [space.layer_widths(c)] for i in range(1, space.num_layers) if w[i - 1] != w[i]}


def build_model(space: PoolingSpace, config: PoolingConfig, spec: ModelSpec = ModelSpec()) -> PoolingNet:
    """The plain ``nn.Module`` for one placement (ground truth training and deployment)."""
    return PoolingNet(space, config, spec)


def build_supernet(space: PoolingSpace, spec: ModelSpec = ModelSpec()) -> PoolingSuperNet:
    return PoolingSuperNet(space, spec)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
