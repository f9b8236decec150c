"""Low-rank (LoRA) stitching layers of SN-Netv2 (He et al., "Stitched ViTs are Flexible Vision
Backbones", arXiv 2307.00154; ziplab/SN-Netv2 ``StitchingLayer(..., r=lora_r)`` built on
loralib's ``Linear``; LoRA: Hu et al., arXiv 2106.09685).

The least-squares map ``W, b`` stays the base of the layer. ``W`` is frozen
(``requires_grad=False``); the bias and a rank-``r`` update ``B A`` are trained:

    y = W x + b + (B (A x)) / r      (loralib scaling alpha / r with alpha = 1)

``A`` (r x in) gets nn.Linear's Kaiming-uniform init and ``B`` (out x r) starts at zero, so a
freshly initialised layer is exactly the least-squares map. Switching to eval mode (or calling
:meth:`merge`) folds ``B A / r`` into ``W`` in place, so inference -- and fvcore's FLOPs count --
sees one plain linear / 1x1 convolution; train mode unfolds it again. Whether ``W`` currently
holds the update is the persistent ``merged`` buffer, so a state dict saved in either mode loads
back consistently. :meth:`to_plain` returns a plain :class:`~stitching.layers.StitchingLayer`
with the merged weights for export. Each fold / unfold round trip rounds ``W`` once (float
rounding of ``W + dW - dW``), as in loralib.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stitching.layers import LayerKind, StitchingLayer


class LowRankStitchingLayer(StitchingLayer):
    """A :class:`StitchingLayer` whose frozen least-squares map is trained through a rank-``r``
    update (linear on tokens, 1x1 convolution on feature maps).

    Args:
        in_dim, out_dim: widths of the front and end anchor at the stitch.
        kind: ``"linear"`` (tokens) or ``"conv"`` (feature maps, 1x1).
        rank: ``r``, between 1 and ``min(in_dim, out_dim)`` (SN-Netv2: 64 on ImageNet).
    """

    merged: torch.Tensor  # bool buffer, registered in __init__

    def __init__(self, in_dim: int, out_dim: int, kind: LayerKind = "linear", rank: int = 64) -> None:
        super().__init__(in_dim, out_dim, kind)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(in_dim, out_dim):
            raise ValueError(
                f"low-rank stitching layer 'rank': expected an int in 1..{min(in_dim, out_dim)} "
                f"(min of {in_dim} -> {out_dim}), got {rank!r}"
            )
        self.rank = rank
        self.scaling = 1.0 / rank
        self.transform.weight.requires_grad_(False)
        weight = self.transform.weight
        self.lora_a = nn.Parameter(weight.new_empty(rank, in_dim))
        self.lora_b = nn.Parameter(weight.new_zeros(out_dim, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        # persistent flag (saved in state dicts) mirrored by a Python bool, read on every forward
        # without a device sync
        self.register_buffer("merged", torch.zeros((), dtype=torch.bool))
        self._merged = False

    # ----------------------------------------------------------------- weights
    @property
    def is_merged(self) -> bool:
        return self._merged

    def _set_merged(self, value: bool) -> None:
        self.merged.fill_(value)
        self._merged = value

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._merged = bool(self.merged)

    def delta_weight(self) -> torch.Tensor:
        """``B A / r`` as a (out, in) matrix."""
        return (self.lora_b @ self.lora_a) * self.scaling

    def merged_weight(self) -> torch.Tensor:
        """``W + B A / r`` as a (out, in) matrix, whatever the merge state (no autograd)."""
        with torch.no_grad():
            weight = self.transform.weight.reshape(self.out_dim, self.in_dim)
            return weight.clone() if self.is_merged else weight + self.delta_weight()

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ``B A / r`` into ``W`` (no-op when already merged)."""
        if not self.is_merged:
            w = self.transform.weight
            w.add_(self.delta_weight().reshape(w.shape).to(w.dtype))
            self._set_merged(True)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take ``B A / r`` back out of ``W`` (no-op when not merged)."""
        if self.is_merged:
            w = self.transform.weight
            w.sub_(self.delta_weight().reshape(w.shape).to(w.dtype))
            self._set_merged(False)

    def train(self, mode: bool = True) -> LowRankStitchingLayer:
        """Train mode unmerges (the update gets gradients again), eval mode merges."""
        super().train(mode)
        if mode:
            self.unmerge()
        else:
            self.merge()
        return self

    @torch.no_grad()
    def set_weight_bias(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Set the base map to ``(weight, bias)`` and zero ``B``, so the layer computes exactly
        that affine map (``A`` keeps its values); the layer is left unmerged."""
        super().set_weight_bias(weight, bias)
        self.lora_b.zero_()
        self._set_merged(False)

    # ----------------------------------------------------------------- forward / export
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.is_merged:  # e.g. a state dict saved in eval mode, loaded for training
            self.unmerge()
        out = self.transform(x)
        if self.is_merged:
            return out
        if self.kind == "linear":
            update = F.linear(F.linear(x, self.lora_a), self.lora_b)
        else:
            update = F.conv2d(F.conv2d(x, self.lora_a[:, :, None, None]), self.lora_b[:, :, None, None])
        return out + update * self.scaling

    def to_plain(self) -> StitchingLayer:
        """A plain :class:`StitchingLayer` computing the merged map (for export)."""
        weight = self.transform.weight
        plain = StitchingLayer(self.in_dim, self.out_dim, self.kind).to(device=weight.device, dtype=weight.dtype)
        bias = self.transform.bias
        assert bias is not None  # both transforms are built with a bias
        plain.set_weight_bias(self.merged_weight(), bias.detach())
        return plain.train(self.training)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"


__all__ = ["LowRankStitchingLayer"]
