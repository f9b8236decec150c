from __future__ import annotations

import pytest
import torch

from stitching.layers import (
    StitchingLayer,
    augmented_pinv,
    average_fits,
    flatten_positions,
    least_squares_fit,
)


def _known_map(d1: int = 16, d2: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d2, d1, generator=g), torch.randn(d2, generator=g)


def test_least_squares_recovers_a_known_linear_map_on_tokens():
    w, b = _known_map()
    a = torch.randn(10, 50, 16, generator=torch.Generator().manual_seed(1))  # (N, T, D1)
    target = a @ w.T + b
    w_fit, b_fit = least_squares_fit(a, target)
    assert w_fit.dtype == torch.float64 and w_fit.shape == (24, 16) and b_fit.shape == (24,)
    torch.testing.assert_close(w_fit.float(), w, atol=1e-5, rtol=0)
    torch.testing.assert_close(b_fit.float(), b, atol=1e-5, rtol=0)


def test_least_squares_on_feature_maps_and_conv_layer():
    w, b = _known_map(8, 12)
    a = torch.randn(4, 8, 5, 5, generator=torch.Generator().manual_seed(2))  # (N, C, H, W)
    target = torch.einsum("oc,nchw->nohw", w, a) + b[None, :, None, None]
    layer = StitchingLayer(8, 12, "conv")
    layer.init_least_squares(a, target)
    torch.testing.assert_close(layer.transform.weight[:, :, 0, 0], w, atol=1e-5, rtol=0)
    torch.testing.assert_close(layer(a), target, atol=1e-4, rtol=1e-4)
    assert flatten_positions(a).shape == (100, 8)
    # channel-last flattening: row n*H*W + h*W + w holds a[n, :, h, w]
    torch.testing.assert_close(flatten_positions(a)[7], a[0, :, 1, 2])


def test_linear_layer_init_fits_noisy_targets_in_least_squares_sense():
    w, b = _known_map(6, 5)
    g = torch.Generator().manual_seed(3)
    a = torch.randn(200, 6, generator=g)
    target = a @ w.T + b + 0.01 * torch.randn(200, 5, generator=g)
    layer = StitchingLayer(6, 5)
    layer.init_least_squares(a, target)
    residual = layer(a) - target
    # optimality: the residual is orthogonal to the inputs and to the constant column
    assert (a.T @ residual).abs().max() < 1e-3
    assert residual.sum(0).abs().max() < 1e-3


def test_shared_pinv_and_averaging():
    w1, b1 = _known_map(seed=4)
    w2, b2 = _known_map(seed=5)
    a = torch.randn(300, 16, generator=torch.Generator().manual_seed(6))
    pinv = augmented_pinv(a)
    assert pinv.shape == (17, 300)
    fits = [least_squares_fit(a, a @ w1.T + b1, pinv=pinv), least_squares_fit(a, a @ w2.T + b2, pinv=pinv)]
    w, b = average_fits(fits)
    torch.testing.assert_close(w.float(), (w1 + w2) / 2, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.float(), (b1 + b2) / 2, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="no positions"):
        average_fits([])


def test_bad_inputs():
    with pytest.raises(ValueError, match="positions"):
        least_squares_fit(torch.randn(10, 4), torch.randn(12, 3))
    with pytest.raises(ValueError, match="kind"):
        StitchingLayer(4, 3, "attention")  # type: ignore[arg-type]
    layer = StitchingLayer(4, 3)
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        layer.set_weight_bias(torch.zeros(4, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="activations"):
        flatten_positions(torch.zeros(5))
