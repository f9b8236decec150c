"""Small ResNet-style CNN anchors for stitching with 1x1 convolutions (SN-Net stitches
ResNet-18/50 the same way, inside a stage; He et al., arXiv 1512.03385).

An anchor is a stem (3x3 conv, BN, ReLU), then stages of basic blocks held in one flat
``blocks`` list (the first block of every stage after the first halves the resolution), then
global average pooling and a linear classifier. The stem keeps ``widths[0]`` channels, so the
input of block 0 has the width of stage 0 and a stitch may enter there.

Presets ``resnet_digits_{tiny,small,base}`` (widths 8/16/32, 16/32/64, 24/48/96; two blocks in
each of three stages) suit 16x16 one-channel digits.

Presets ``resnet18``, ``resnet34`` (basic blocks, [2, 2, 2, 2] / [3, 4, 6, 3]) and ``resnet50``
(bottlenecks of expansion 4, [3, 4, 6, 3]), widths 64..512, are timm's default ResNets
(``timm/models/resnet.py``): a 7x7 stride-2 stem conv, BN, ReLU and a 3x3 stride-2 max pool
(``stem="conv7x7_maxpool"``), the stride of a stage's first block on its 3x3 conv, 1x1
projection shortcuts, average pooling and ``fc``. Their state dicts use SN-Net's flat names
(``stem.conv``, ``blocks.N``); timm's (``conv1``, ``layerS.I``) are mapped on load
(:func:`stitching.checkpoint.timm_resnet_to_anchor`). They live in :data:`TIMM_RESNET_PRESETS`
(3 channels, 1000 classes, 224x224 by default), apart from the digits presets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from stitching.checkpoint import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PretrainedCfg
from stitching.layers import LayerKind
from stitching.presets import Presets

RESNET_FAMILY = "resnet"
#: Stems: a 3x3 conv (the digits presets) or timm's default 7x7 conv + 3x3 stride-2 max pool.
STEMS = ("conv3x3", "conv7x7_maxpool")
BLOCKS = ("basic", "bottleneck")



def shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    """A residual block's shortcut: identity, or timm's ``downsample.0/1`` (1x1 conv + BN) when
    the shape changes."""
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class Bottleneck(nn.Module):
    """timm's ``Bottleneck`` (cardinality 1, base width 64): 1x1 -> 3x3 (the stride) -> 1x1 to
    ``planes * 4`` channels, with a 1x1 projection shortcut when the shape changes."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


_BLOCK_TYPES: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNetStem(nn.Module):
    """Conv, BN, ReLU (keys ``conv``, ``bn``); ``kind="conv7x7_maxpool"`` is timm's default stem
    (7x7 conv, padding 3, then a 3x3 stride-2 max pool)."""

    def __init__(self, in_chans: int, width: int, stride: int = 1, kind: str = "conv3x3") -> None:
        super().__init__()
        if kind not in STEMS:
            raise ValueError(f"resnet 'stem': expected one of {list(STEMS)}, got {kind!r}")
        kernel = 7 if kind == "conv7x7_maxpool" else 3
        self.conv = nn.Conv2d(in_chans, width, kernel, stride, kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.pool: nn.Module = nn.MaxPool2d(3, 2, 1) if kind == "conv7x7_maxpool" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.relu(self.bn(self.conv(x))))


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
        stem: str = "conv3x3",
        block: str = "basic",
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
        if stem not in STEMS:
            raise ValueError(f"resnet 'stem': expected one of {list(STEMS)}, got {stem!r}")
        if block not in BLOCKS:
            raise ValueError(f"resnet 'block': expected one of {list(BLOCKS)}, got {block!r}")
        self._config: dict[str, Any] = dict(
            family=RESNET_FAMILY, widths=list(widths), stage_depths=list(stage_depths), in_chans=in_chans,
            num_classes=num_classes, img_size=img_size, stem_stride=stem_stride,
        )
        # only when not the default, so the digits presets' configs stay as they were
        if stem != "conv3x3":
            self._config["stem"] = stem
        if block != "basic":
            self._config["block"] = block
        block_type = _BLOCK_TYPES[block]
        self.widths = widths
        self.out_widths = tuple(w * block_type.expansion for w in widths)
        self.stage_depths = stage_depths
        self.num_classes = num_classes
        self.depth = sum(stage_depths)
        self.stem = ResNetStem(in_chans, widths[0], stem_stride, stem)
        blocks: list[nn.Module] = []
        in_ch = widths[0]
        for stage, (width, n) in enumerate(zip(widths, stage_depths)):
            for i in range(n):
                blocks.append(block_type(in_ch, width, 2 if stage > 0 and i == 0 else 1))
                in_ch = width * block_type.expansion
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes) if num_classes > 0 else nn.Identity()
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
        return (self.widths[0],) + tuple(self.out_widths[s] for s in self.block_stages)

    @property
    def stem_kind(self) -> str:
        return str(self._config.get("stem", "conv3x3"))

    def feature_sizes(self) -> tuple[int, ...]:
        """Spatial side at every block boundary, for the configured ``img_size``."""
        kernel = 7 if self.stem_kind == "conv7x7_maxpool" else 3
        side = (self.img_size + 2 * (kernel // 2) - kernel) // self._config["stem_stride"] + 1
        if self.stem_kind == "conv7x7_maxpool":
            side = (side + 2 - 3) // 2 + 1
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
                "img_size": c["img_size"], "stem_stride": c["stem_stride"], "stem": self.stem_kind,
                "num_stages": len(self.widths)}

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
        part = ResNetStem(c["in_chans"], self.widths[0], c["stem_stride"], self.stem_kind)
        part.load_state_dict(self.stem.state_dict())
        return part

    def export_tail(self) -> ResNetTail:
        part = ResNetTail(self.out_widths[-1], self.num_classes)
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


#: timm's default ResNets (ImageNet: 3 channels, 1000 classes, 224x224), kept apart from the
#: digits presets above (whose every preset takes 16x16 one-channel digits).
TIMM_RESNET_PRESETS: Presets[ResNetAnchor] = Presets()
_TIMM_RESNET: dict[str, Any] = dict(widths=(64, 128, 256, 512), in_chans=3, num_classes=1000, img_size=224,
                                    stem_stride=2, stem="conv7x7_maxpool")


@TIMM_RESNET_PRESETS.register
def resnet18(**kwargs: Any) -> ResNetAnchor:
    return ResNetAnchor(**{**_TIMM_RESNET, "stage_depths": (2, 2, 2, 2), "block": "basic", **kwargs})


@TIMM_RESNET_PRESETS.register
def resnet34(**kwargs: Any) -> ResNetAnchor:
    return ResNetAnchor(**{**_TIMM_RESNET, "stage_depths": (3, 4, 6, 3), "block": "basic", **kwargs})


@TIMM_RESNET_PRESETS.register
def resnet50(**kwargs: Any) -> ResNetAnchor:
    return ResNetAnchor(**{**_TIMM_RESNET, "stage_depths": (3, 4, 6, 3), "block": "bottleneck", **kwargs})


#: Each preset's pretrained weights' settings: timm's ResNets use ``IMAGENET_DEFAULT_MEAN/STD``
#: (``timm/models/resnet.py`` ``_cfg``); the digits presets the data's own statistics (None).
RESNET_PRETRAINED_CFGS: dict[str, PretrainedCfg] = {
    **{name: PretrainedCfg(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, (3, 224, 224), 1000, "conv1", "fc")
       for name in TIMM_RESNET_PRESETS},
    **{name: PretrainedCfg(None, None, (1, 16, 16), 10, "stem.conv", "fc") for name in RESNET_PRESETS},
}


def create_resnet(name: str, **overrides: Any) -> ResNetAnchor:
    """Build a preset by name (digits or timm); an unknown name lists the known ones."""
    for presets in (RESNET_PRESETS, TIMM_RESNET_PRESETS):
        if name in presets:
            return presets[name](**overrides)
    raise ValueError(f"resnet model {name!r}: unknown, expected one of "
                     f"{sorted(RESNET_PRESETS) + sorted(TIMM_RESNET_PRESETS)}")
