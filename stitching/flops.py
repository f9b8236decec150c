"""FLOPs of stitched configurations in fvcore's convention (one multiply-add = one FLOP), the
convention of SN-Net's published numbers (``evaluate_snnet`` counts each configuration with
``fvcore.nn.FlopCountAnalysis`` on a 1x3x224x224 input).

What fvcore counts (``fvcore/nn/jit_handles.py``, ``flop_count.py``), and so what the analytic
count below adds up:

* convolution: ``C_out * H_out * W_out * C_in * k * k`` (bias ignored);
* ``aten::linear`` / ``matmul``: input numel x output features, i.e. ``q @ k^T`` and
  ``attn @ v`` cost ``heads * N * N * head_dim`` each (bias ignored);
* LayerNorm with affine: ``5 * numel``; eval-mode affine BatchNorm: ``2 * numel``;
* adaptive average pooling: input numel;
* zero: add, mul (the attention scale), softmax, GELU, ReLU, max pooling (the timm ResNet
  stem's), cat, slicing (unsupported or ignored operators).

Our stitched ViT paths apply the last anchor's final norm. SN-Net's DeiT code calls timm's
``forward_head`` without ``norm`` on stitched paths, so its published figures for stitched
configurations are ``5 * tokens * dim`` below ours (e.g. 378,240 FLOPs for a DeiT-S end);
anchors agree exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from searchspace.stitch import StitchConfig
from stitching.cnn import RESNET_FAMILY
from stitching.vit import VIT_FAMILY
from stitchnas.core.flops import fvcore_flops  # noqa: F401  (re-exported: one fvcore wrapper for all models)

if TYPE_CHECKING:
    from stitching.snnet import SNNet


@dataclass(frozen=True)
class AnchorFlops:
    """Per-part FLOPs of one anchor at batch 1.

    ``positions[i]`` is the number of tokens (or spatial positions) at block boundary ``i``
    (0 = embedding output), which a stitching layer entering/leaving there multiplies.
    """

    embed: int
    blocks: tuple[int, ...]
    tail: int
    positions: tuple[int, ...]
    dims: tuple[int, ...]

    @property
    def total(self) -> int:
        return self.embed + sum(self.blocks) + self.tail


def vit_block_flops(tokens: int, dim: int, hidden: int) -> int:
    """One pre-norm transformer block: qkv, q@k^T, attn@v, proj, fc1, fc2, two LayerNorms."""
    attention = tokens * dim * 3 * dim + 2 * tokens * tokens * dim + tokens * dim * dim
    return attention + 2 * tokens * dim * hidden + 2 * 5 * tokens * dim


def _config_of(anchor: nn.Module | dict[str, Any]) -> dict[str, Any]:
    config = anchor if isinstance(anchor, dict) else getattr(anchor, "config", None)
    if not isinstance(config, dict) or "family" not in config:
        raise ValueError(
            f"flops: expected an anchor (or its config dict) with a 'family', got {type(anchor).__name__}"
        )
    return config


def _vit_flops(c: dict[str, Any]) -> AnchorFlops:
    grid = c["img_size"] // c["patch_size"]
    patches, dim = grid * grid, c["embed_dim"]
    tokens = patches + 1
    embed = patches * dim * c["in_chans"] * c["patch_size"] ** 2
    block = vit_block_flops(tokens, dim, int(dim * c["mlp_ratio"]))
    tail = 5 * tokens * dim + dim * c["num_classes"]
    depth = c["depth"]
    return AnchorFlops(embed, (block,) * depth, tail, (tokens,) * (depth + 1), (dim,) * (depth + 1))


def _conv_side(side: int, stride: int) -> int:
    """Output side of a ``k x k`` conv with padding ``k // 2`` (odd ``k``), or of the stem's
    3x3 max pool with padding 1: ``(side - 1) // stride + 1`` either way."""
    return (side - 1) // stride + 1


def _resnet_flops(c: dict[str, Any]) -> AnchorFlops:
    """Stem (3x3 conv, or timm's 7x7 conv + 3x3 stride-2 max pool, which fvcore counts as 0),
    then basic blocks (two 3x3 convs) or bottlenecks (1x1, 3x3 with the stride, 1x1 to
    ``4 * width``), each conv followed by an eval-mode BatchNorm (``2 * numel``), plus a 1x1
    projection shortcut with its BatchNorm where the shape changes."""
    widths, stages, in_chans = c["widths"], c["stage_depths"], c["in_chans"]
    stem, bottleneck = c.get("stem", "conv3x3"), c.get("block", "basic") == "bottleneck"
    kernel = 7 if stem == "conv7x7_maxpool" else 3
    side = _conv_side(c["img_size"], c["stem_stride"])
    w0 = widths[0]
    embed = side * side * w0 * (in_chans * kernel * kernel + 2)
    if stem == "conv7x7_maxpool":
        side = _conv_side(side, 2)
    blocks, positions, dims = [], [side * side], [w0]
    in_ch = w0
    for stage, (width, n) in enumerate(zip(widths, stages)):
        out_ch = 4 * width if bottleneck else width
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            in_hw = side * side
            side = _conv_side(side, stride)
            hw = side * side
            if bottleneck:  # 1x1 at the input resolution, 3x3 (stride), 1x1 expansion
                flops = in_hw * width * (in_ch + 2) + hw * width * (width * 9 + 2) + hw * out_ch * (width + 2)
            else:
                flops = hw * width * (in_ch * 9 + 2) + hw * width * (width * 9 + 2)
            if stride != 1 or in_ch != out_ch:
                flops += hw * out_ch * (in_ch + 2)
            blocks.append(flops)
            positions.append(hw)
            dims.append(out_ch)
            in_ch = out_ch
    tail = in_ch * side * side + in_ch * c["num_classes"]
    return AnchorFlops(embed, tuple(blocks), tail, tuple(positions), tuple(dims))


def anchor_flops(anchor: nn.Module | dict[str, Any]) -> AnchorFlops:
    """Analytic per-part FLOPs of an anchor (module or its ``config`` dict) at batch 1."""
    config = _config_of(anchor)
    if config["family"] == VIT_FAMILY:
        return _vit_flops(config)
    if config["family"] == RESNET_FAMILY:
        return _resnet_flops(config)
    raise ValueError(f"flops: no analytic count for anchor family {config['family']!r}")


def route_flops(anchors: Sequence[nn.Module | dict[str, Any]], config: StitchConfig, batch_size: int = 1) -> int:
    """Analytic FLOPs of one configuration's path through ``anchors``."""
    parts = {a: anchor_flops(anchors[a]) for a in set(config.anchors)}
    route = config.route
    total = parts[route[0].anchor].embed + parts[route[-1].anchor].tail
    for seg in route:
        total += sum(parts[seg.anchor].blocks[seg.first:seg.last + 1])
    for a, b, j, k, _ in config.junctions():
        front, end = parts[a], parts[b]
        if front.positions[j + 1] != end.positions[k]:
            raise ValueError(
                f"flops: junction {a}[{j}] -> {b}[{k}] joins {front.positions[j + 1]} positions "
                f"to {end.positions[k]}"
            )
        total += front.positions[j + 1] * front.dims[j + 1] * end.dims[k]
    return total * batch_size


def config_flops(snnet: SNNet, config: StitchConfig | int | None = None, batch_size: int = 1) -> int:
    """Analytic FLOPs of a configuration of an :class:`~stitching.snnet.SNNet` (default: active)."""
    return route_flops(list(snnet.anchors), snnet.resolve(config), batch_size)


def flops_table(snnet: SNNet, batch_size: int = 1) -> list[int]:
    """Analytic FLOPs of every configuration, indexed by configuration id (microseconds each)."""
    anchors = [snnet.anchor(i).config for i in range(len(snnet.anchors))]
    return [route_flops(anchors, c, batch_size) for c in snnet.space]


