"""Small ResNet-style CNN anchors for stitching with 1x1 convolutions (SN-Net stitches
ResNet-18/50 the same way, inside a stage; He et al., arXiv 1512.03385).

An anchor is a stem (3x3 conv, BN, ReLU), then stages of basic blocks held in one flat
``blocks`` list (the first block of every stage after the first halves the resolution), then
global average pooling and a linear classifier. The stem keeps ``widths[0]`` channels, so the
input of block 0 has the width of stage 0 and a stitch may enter there.

Presets ``resnet_digits_{tiny,small,base}`` (widths 8/16/32, 16/32/64, 24/48/96; two blocks in
each of three stages) suit 16x16 one-channel digits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from stitching.layers import LayerKind
from stitching.presets import Presets

RESNET_FAMILY = "resnet"


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class ResNetStem(nn.Module):
    def __init__(self, in_chans: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, width, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class ResNetTail(nn.Module):
    """Pooling + classifier on its own (used by exported stitched models); no final norm."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()

    def forward_norm(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x).flatten(1)
        return x if pre_logits else self.fc(x)


class ResNetAnchor(nn.Module):
    """ResNet-style anchor with the partial forwards SN-Net needs."""

    family = RESNET_FAMILY
    stitch_layer_kind: LayerKind = "conv"  # 1x1 convolution between anchors

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64),
        stage_depths: Sequence[int] = (2, 2, 2),
        in_chans: int = 1,
        num_classes: int = 10,
        img_size: int = 16,
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        widths, stage_depths = tuple(widths), tuple(stage_depths)
        if not widths or len(widths) != len(stage_depths):
            raise ValueError(
                f"resnet 'widths': expected one width per stage ({len(stage_depths)}), got {list(widths)}"
            )
        for key, values in (("widths", widths), ("stage_depths", stage_depths), ("in_chans", (in_chans,)),
                            ("img_size", (img_size,)), ("stem_stride", (stem_stride,))):
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"resnet '{key}': expected positive ints, got {values!r}")
        if num_classes < 0:
            raise ValueError(f"resnet 'num_classes': expected >= 0, got {num_classes}")
        self._config: dict[str, Any] = dict(
            family=RESNET_FAMILY, widths=list(widths), stage_depths=list(stage_depths), in_chans=in_chans,
            num_classes=num_classes, img_size=img_size, stem_stride=stem_stride,
        )
        self.widths = widths
        self.stage_depths = stage_depths
        self.num_classes = num_classes
        self.depth = sum(stage_depths)
        self.stem = ResNetStem(in_chans, widths[0], stem_stride)
        blocks: list[nn.Module] = []
        in_ch = widths[0]
        for stage, (width, n) in enumerate(zip(widths, stage_depths)):
            for i in range(n):
                blocks.append(BasicBlock(in_ch, width, 2 if stage > 0 and i == 0 else 1))
                in_ch = width
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    # ----------------------------------------------------------------- description
    @property
    def config(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._config.items()}

    @property
    def block_stages(self) -> tuple[int, ...]:
        return tuple(s for s, n in enumerate(self.stage_depths) for _ in range(n))

    @property
    def feature_dims(self) -> tuple[int, ...]:
        """Width at every block boundary: index 0 is the stem, ``i + 1`` block ``i``'s output."""
        return (self.widths[0],) + tuple(self.widths[s] for s in self.block_stages)

    def feature_sizes(self) -> tuple[int, ...]:
        """Spatial side at every block boundary, for the configured ``img_size``."""
        side = (self.img_size + 2 - 3) // self._config["stem_stride"] + 1
        sizes = [side]
        for i, stage in enumerate(self.block_stages):
            if stage > 0 and (i == 0 or self.block_stages[i - 1] != stage):
                side = (side - 1) // 2 + 1
            sizes.append(side)
        return tuple(sizes)

    @property
    def img_size(self) -> int:
        return int(self._config["img_size"])

    def stitch_signature(self) -> dict[str, Any]:
        c = self._config
        return {"family": RESNET_FAMILY, "in_chans": c["in_chans"], "num_classes": c["num_classes"],
                "img_size": c["img_size"], "stem_stride": c["stem_stride"], "num_stages": len(self.widths)}

    # ----------------------------------------------------------------- forward pieces
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def forward_blocks(self, x: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Run blocks ``start .. end - 1`` (Python slice semantics)."""
        for blk in self.blocks[start:end]:
            x = blk(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_blocks(self.embed(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward_norm_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def block_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.embed(x)]
        for blk in self.blocks:
            feats.append(blk(feats[-1]))
        return feats

    def forward_intermediates(
        self, x: torch.Tensor, indices: list[int] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        wanted = set(range(self.depth) if indices is None else indices)
        bad = sorted(i for i in wanted if not 0 <= i < self.depth)
        if bad:
            raise ValueError(f"forward_intermediates 'indices': {bad} outside 0..{self.depth - 1}")
        feats = self.block_features(x)
        return feats[-1], [feats[i + 1] for i in sorted(wanted)]

    # ----------------------------------------------------------------- export parts
    def export_embed(self) -> ResNetStem:
        c = self._config
        part = ResNetStem(c["in_chans"], self.widths[0], c["stem_stride"])
        part.load_state_dict(self.stem.state_dict())
        return part

    def export_tail(self) -> ResNetTail:
        part = ResNetTail(self.widths[-1], self.num_classes)
        part.fc.load_state_dict(self.fc.state_dict())
        return part


RESNET_PRESETS: Presets[ResNetAnchor] = Presets()
register_resnet = RESNET_PRESETS.register


@register_resnet
def resnet_digits_tiny(**kwargs: Any) -> ResNetAnchor:
    return ResNetAnchor(**dict(dict(widths=(8, 16, 32), stage_depths=(2, 2, 2)), **kwargs))


@register_resnet
def resnet_digits_small(**kwargs: Any) -> ResNetAnchor:
    return ResNetAnchor(**dict(dict(widths=(16, 32, 64), stage_depths=(2, 2, 2)), **kwargs))


@register_resnet
def resnet_digits_base(**kwargs: Any) -> ResNetAnchor:
    return ResNetAnchor(**dict(dict(widths=(24, 48, 96), stage_depths=(2, 2, 2)), **kwargs))


def create_resnet(name: str, **overrides: Any) -> ResNetAnchor:
    """Build a preset by name; an unknown name lists the known ones."""
    if name not in RESNET_PRESETS:
        raise ValueError(f"resnet model {name!r}: unknown, expected one of {sorted(RESNET_PRESETS)}")
    return RESNET_PRESETS[name](**overrides)
