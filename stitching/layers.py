"""Stitching layers and their least-squares initialisation (SN-Net's ``StitchingLayer`` and
``ps_inv``, after Csiszarik et al., "Similarity and Matching of Neural Network
Representations", NeurIPS 2021).

Given front-anchor activations A ((N*T) x D1) and the activations the end anchor expects
B ((N*T) x D2), the layer solves ``X = pinv([A | 1]) B`` and uses ``W = X[:-1]^T``,
``b = X[-1]``: the affine map with the least squared error. SN-Net shares one layer among the
positions of a window and averages W and b over them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

LayerKind = Literal["linear", "conv"]


def flatten_positions(x: torch.Tensor) -> torch.Tensor:
    """(B, T, D) tokens or (B, C, H, W) maps -> (positions, channels)."""
    if x.dim() == 4:
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    if x.dim() < 2:
        raise ValueError(f"activations: expected (B, T, D) or (B, C, H, W), got shape {tuple(x.shape)}")
    return x.reshape(-1, x.shape[-1])


def augmented_pinv(a: torch.Tensor) -> torch.Tensor:
    """``pinv([A | 1])`` in float64; reusable for every target sharing the same A."""
    a = flatten_positions(a).double()
    ones = torch.ones(a.shape[0], 1, dtype=a.dtype, device=a.device)
    return torch.linalg.pinv(torch.cat([a, ones], dim=1))


def least_squares_fit(
    a: torch.Tensor, b: torch.Tensor, pinv: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine map ``b ~ a @ W^T + bias`` by least squares; returns float64 ``(W, bias)``.

    ``W`` has shape (D2, D1) like ``nn.Linear.weight``. Pass ``pinv`` from
    :func:`augmented_pinv` to skip recomputing it.
    """
    a2, b2 = flatten_positions(a), flatten_positions(b).double()
    if a2.shape[0] != b2.shape[0]:
        raise ValueError(
            f"least squares: front activations have {a2.shape[0]} positions, end activations {b2.shape[0]} "
            "(batch and token/spatial sizes must match)"
        )
    if pinv is None:
        pinv = augmented_pinv(a)
    x = pinv @ b2  # (D1 + 1) x D2
    return x[:-1].T.contiguous(), x[-1].contiguous()


def average_fits(fits: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean weight and bias over the positions that share one layer (SN-Net's averaging)."""
    if not fits:
        raise ValueError("least squares: no positions to average")
    return torch.stack([w for w, _ in fits]).mean(0), torch.stack([b for _, b in fits]).mean(0)


class StitchingLayer(nn.Module):
    """Affine map between two anchors: linear on tokens, 1x1 convolution on feature maps."""

    def __init__(self, in_dim: int, out_dim: int, kind: LayerKind = "linear") -> None:
        super().__init__()
        if kind not in ("linear", "conv"):
            raise ValueError(f"stitching layer 'kind': expected 'linear' or 'conv', got {kind!r}")
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"stitching layer dims: expected positive ints, got {in_dim} -> {out_dim}")
        self.in_dim, self.out_dim, self.kind = in_dim, out_dim, kind
        self.transform: nn.Linear | nn.Conv2d = (nn.Linear(in_dim, out_dim) if kind == "linear"
                                                 else nn.Conv2d(in_dim, out_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x)

    @torch.no_grad()
    def set_weight_bias(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Copy a (D2, D1) weight and (D2,) bias into the layer."""
        if tuple(weight.shape) != (self.out_dim, self.in_dim) or tuple(bias.shape) != (self.out_dim,):
            raise ValueError(
                f"stitching layer weight: expected ({self.out_dim}, {self.in_dim}) and ({self.out_dim},), "
                f"got {tuple(weight.shape)} and {tuple(bias.shape)}"
            )
        w, b = self.transform.weight, self.transform.bias
        assert b is not None  # both transforms are built with a bias
        w.copy_(weight.reshape(w.shape).to(w.dtype))
        b.copy_(bias.to(w.dtype))

    def init_least_squares(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Fit the layer so that ``layer(a) ~ b`` (a: front activations, b: end-anchor input)."""
        self.set_weight_bias(*least_squares_fit(a, b))

    def extra_repr(self) -> str:
        return f"{self.kind}: {self.in_dim} -> {self.out_dim}"
