"""A DeiT-style Vision Transformer whose state-dict keys and forward pass match timm's
``VisionTransformer`` (Dosovitskiy et al., arXiv 2010.11929; Touvron et al., DeiT, arXiv
2012.12877), so timm/DeiT checkpoints load unchanged.

Written here because timm is not a dependency. Differences from timm kept on purpose:
attention uses explicit matmuls (q @ k^T, softmax, @ v) so fvcore counts both attention
products (it counts ``scaled_dot_product_attention`` as zero), and the model exposes the
partial forwards SN-Net needs: ``embed``, ``forward_blocks``, ``forward_norm_head`` and
``block_features``.

Presets: ``deit_{tiny,small,base}_patch16_224`` (ImageNet, 192/384/768 dims, 3/6/12 heads,
depth 12) and ``vit_digits_{tiny,small,base}`` for 16x16 one-channel digits (patch 4 -> 16
patches + class token; 32/48/64 dims, 2/3/4 heads, depth 12, so three of them give SN-Net's
71-configuration space at toy cost).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from stitching.checkpoint import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PretrainedCfg, resample_abs_pos_embed
from stitching.checkpoint import checkpoint_filter_fn as checkpoint_filter_fn
from stitching.checkpoint import load_checkpoint as load_checkpoint
from stitching.layers import LayerKind
from stitching.presets import Presets

VIT_FAMILY = "vit"


class PatchEmbed(nn.Module):
    """Image -> patch tokens with a strided convolution (timm key ``patch_embed.proj``)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(
                f"vit input: expected (B, C, {self.img_size}, {self.img_size}) images, got {tuple(x.shape)}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        # explicit products (not SDPA) so fvcore counts them: 2 * heads * N^2 * head_dim
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth on the residual branch (identity in eval mode)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _embed(
    x: torch.Tensor, patch_embed: PatchEmbed, cls_token: torch.Tensor, pos_embed: torch.Tensor
) -> torch.Tensor:
    x = patch_embed(x)
    x = torch.cat([cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    return x + pos_embed


class ViTEmbed(nn.Module):
    """The embedding part of a ViT on its own (used by exported stitched models)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _embed(x, self.patch_embed, self.cls_token, self.pos_embed)


class ViTTail(nn.Module):
    """Final norm plus class-token head of a ViT on its own (used by exported stitched models)."""

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0]
        return x if pre_logits else self.head(x)


class VisionTransformer(nn.Module):
    """timm-compatible ViT with class-token pooling (see the module docstring)."""

    family = VIT_FAMILY
    stitch_layer_kind: LayerKind = "linear"  # token-wise linear between anchors

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        for key, value in (("img_size", img_size), ("patch_size", patch_size), ("in_chans", in_chans),
                           ("embed_dim", embed_dim), ("depth", depth), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"vit '{key}': expected a positive int, got {value!r}")
        if img_size % patch_size:
            raise ValueError(f"vit 'patch_size': {patch_size} does not divide img_size {img_size}")
        if embed_dim % num_heads:
            raise ValueError(f"vit 'num_heads': {num_heads} does not divide embed_dim {embed_dim}")
        if num_classes < 0:
            raise ValueError(f"vit 'num_classes': expected >= 0, got {num_classes}")
        self._config: dict[str, Any] = dict(
            family=VIT_FAMILY, img_size=img_size, patch_size=patch_size, in_chans=in_chans,
            num_classes=num_classes, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
            mlp_ratio=float(mlp_ratio), qkv_bias=qkv_bias, drop_path_rate=float(drop_path_rate),
        )
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.depth = depth
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, r) for r in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's defaults: truncated normal (std .02) for linears and pos_embed, tiny cls_token
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    # ----------------------------------------------------------------- description
    @property
    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments (plus ``family``) that rebuild this model."""
        return dict(self._config)

    @property
    def num_tokens(self) -> int:
        return self.patch_embed.num_patches + 1

    @property
    def stage_depths(self) -> tuple[int, ...]:
        return (self.depth,)

    @property
    def feature_dims(self) -> tuple[int, ...]:
        """Width at every block boundary: index 0 is the embedding, ``i + 1`` block ``i``'s output."""
        return (self.embed_dim,) * (self.depth + 1)

    def stitch_signature(self) -> dict[str, Any]:
        """What two anchors must share for a token-level stitch to make sense."""
        c = self._config
        return {"family": VIT_FAMILY, "img_size": c["img_size"], "patch_size": c["patch_size"],
                "in_chans": c["in_chans"], "num_classes": c["num_classes"]}

    # ----------------------------------------------------------------- forward pieces
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding + class token + position embedding."""
        return _embed(x, self.patch_embed, self.cls_token, self.pos_embed)

    def forward_blocks(self, x: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Run blocks ``start .. end - 1`` (Python slice semantics)."""
        for blk in self.blocks[start:end]:
            x = blk(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.forward_blocks(self.embed(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Class-token pooling then the classifier, on ``forward_features`` output."""
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward_norm_head(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm + head on raw block tokens (the end of a stitched path)."""
        return self.forward_head(self.norm(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def block_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Embedding output then every block's output (``depth + 1`` tensors)."""
        feats = [self.embed(x)]
        for blk in self.blocks:
            feats.append(blk(feats[-1]))
        return feats

    def forward_intermediates(
        self, x: torch.Tensor, indices: list[int] | None = None, norm: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Final features plus the outputs of blocks ``indices`` (default: all), timm-style."""
        wanted = set(range(self.depth) if indices is None else indices)
        bad = sorted(i for i in wanted if not 0 <= i < self.depth)
        if bad:
            raise ValueError(f"forward_intermediates 'indices': {bad} outside 0..{self.depth - 1}")
        x = self.embed(x)
        inter = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in wanted:
                inter.append(self.norm(x) if norm else x)
        return self.norm(x), inter

    # ----------------------------------------------------------------- export parts
    def export_embed(self) -> ViTEmbed:
        c = self._config
        part = ViTEmbed(c["img_size"], c["patch_size"], c["in_chans"], c["embed_dim"])
        prefixes = ("patch_embed.", "cls_token", "pos_embed")
        part.load_state_dict({k: v for k, v in self.state_dict().items() if k.startswith(prefixes)})
        return part

    def export_tail(self) -> ViTTail:
        part = ViTTail(self.embed_dim, self.num_classes)
        part.load_state_dict({k: v for k, v in self.state_dict().items() if k.startswith(("norm.", "head."))})
        return part


# --------------------------------------------------------------------------- presets
VIT_PRESETS: Presets[VisionTransformer] = Presets()
register_vit = VIT_PRESETS.register


@register_vit
def deit_tiny_patch16_224(**kwargs: Any) -> VisionTransformer:
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return VisionTransformer(**dict(model_args, **kwargs))


@register_vit
def deit_small_patch16_224(**kwargs: Any) -> VisionTransformer:
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return VisionTransformer(**dict(model_args, **kwargs))


@register_vit
def deit_base_patch16_224(**kwargs: Any) -> VisionTransformer:
    model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return VisionTransformer(**dict(model_args, **kwargs))


_DIGITS = dict(img_size=16, patch_size=4, in_chans=1, num_classes=10, depth=12)


@register_vit
def vit_digits_tiny(**kwargs: Any) -> VisionTransformer:
    return VisionTransformer(**dict(_DIGITS, embed_dim=32, num_heads=2, **kwargs))


@register_vit
def vit_digits_small(**kwargs: Any) -> VisionTransformer:
    return VisionTransformer(**dict(_DIGITS, embed_dim=48, num_heads=3, **kwargs))


@register_vit
def vit_digits_base(**kwargs: Any) -> VisionTransformer:
    return VisionTransformer(**dict(_DIGITS, embed_dim=64, num_heads=4, **kwargs))


#: Each preset's pretrained weights' settings (timm's ``pretrained_cfg``): DeiT's ImageNet weights
#: use timm's ``IMAGENET_DEFAULT_MEAN/STD`` (``timm/models/deit.py`` ``_cfg``); the digits presets
#: are trained here, normalised with the data's own statistics (``mean``/``std`` None).
VIT_PRETRAINED_CFGS: dict[str, PretrainedCfg] = {
    **{name: PretrainedCfg(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, (3, 224, 224), 1000, "patch_embed.proj",
                           "head")
       for name in ("deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224")},
    **{name: PretrainedCfg(None, None, (1, 16, 16), 10, "patch_embed.proj", "head")
       for name in ("vit_digits_tiny", "vit_digits_small", "vit_digits_base")},
}


def create_vit(name: str, **overrides: Any) -> VisionTransformer:
    """Build a preset by name; an unknown name lists the known ones."""
    if name not in VIT_PRESETS:
        raise ValueError(f"vit model {name!r}: unknown, expected one of {sorted(VIT_PRESETS)}")
    return VIT_PRESETS[name](**overrides)


# --------------------------------------------------------------------------- checkpoints
# Loading lives in :mod:`stitching.checkpoint` (timm's unwrapping and adaptations);
# ``load_checkpoint`` and ``checkpoint_filter_fn`` stay importable from here.


def resample_pos_embed(pos_embed: torch.Tensor, num_tokens: int, num_prefix: int = 1) -> torch.Tensor:
    """Resize a square position-embedding grid to ``num_tokens`` (prefix tokens kept), exactly as
    timm's ``resample_abs_pos_embed`` (bicubic, antialias, float32)."""
    old, new = math.isqrt(max(pos_embed.shape[1] - num_prefix, 0)), math.isqrt(max(num_tokens - num_prefix, 0))
    if old * old != pos_embed.shape[1] - num_prefix or new * new != num_tokens - num_prefix:
        raise ValueError(
            f"pos_embed: cannot resize {pos_embed.shape[1] - num_prefix} patch positions to "
            f"{num_tokens - num_prefix} (both must be square grids)"
        )
    return resample_abs_pos_embed(pos_embed, (new, new), (old, old), num_prefix_tokens=num_prefix)
