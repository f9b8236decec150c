from __future__ import annotations

import copy
import functools
import math

import pytest
import torch

from searchspace.stitch_v2 import StitchSpaceV2
from stitching.flops import config_flops, fvcore_flops
from stitching.layers import StitchingLayer, least_squares_fit
from stitching.lowrank import LowRankStitchingLayer
from stitching.snnet import SNNet, StitchedModel, build_stitched_model
from stitching.vit import VisionTransformer

GEN = torch.Generator().manual_seed(0)


def _acts(kind: str, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 10, dim, generator=g) if kind == "linear" else torch.randn(4, dim, 3, 3, generator=g)


def _perturb(layer: LowRankStitchingLayer, seed: int = 1) -> None:
    """Training-like update of the trainable parts (A, B, bias)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora_a.add_(0.3 * torch.randn(layer.lora_a.shape, generator=g))
        layer.lora_b.copy_(0.3 * torch.randn(layer.lora_b.shape, generator=g))
        layer.transform.bias.add_(0.1 * torch.randn(layer.transform.bias.shape, generator=g))


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_equals_least_squares_map_at_init(kind):
    a, b = _acts(kind, 12, 1), _acts(kind, 20, 2)
    low, plain = LowRankStitchingLayer(12, 20, kind, rank=4), StitchingLayer(12, 20, kind)
    low.init_least_squares(a, b)
    plain.init_least_squares(a, b)
    x = _acts(kind, 12, 3)
    assert torch.count_nonzero(low.lora_b) == 0 and torch.count_nonzero(low.lora_a) > 0
    torch.testing.assert_close(low(x), plain(x), rtol=0, atol=0)
    low.eval(), plain.eval()
    torch.testing.assert_close(low(x), plain(x), rtol=0, atol=0)
    w, bias = least_squares_fit(a, b)
    torch.testing.assert_close(low.merged_weight(), w.float(), rtol=0, atol=0)
    torch.testing.assert_close(low.transform.bias, bias.float(), rtol=0, atol=0)


def test_parameters_and_init():
    layer = LowRankStitchingLayer(16, 24, rank=8)
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"lora_a", "lora_b", "transform.bias"}
    assert layer.lora_a.shape == (8, 16) and layer.lora_b.shape == (24, 8)
    bound = 1 / math.sqrt(16)  # kaiming_uniform(a=sqrt(5)) on fan_in 16, as nn.Linear
    assert layer.lora_a.abs().max() <= bound and layer.lora_a.abs().max() > bound / 2
    assert layer.scaling == 1 / 8
    assert set(layer.state_dict()) == {"lora_a", "lora_b", "merged", "transform.weight", "transform.bias"}


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_forward_is_w_x_plus_b_plus_ba_over_r(kind):
    layer = LowRankStitchingLayer(6, 5, kind, rank=3)
    _perturb(layer)
    x = _acts(kind, 6, 4)
    w = layer.transform.weight.reshape(5, 6) + layer.lora_b @ layer.lora_a / 3
    flat = x if kind == "linear" else x.permute(0, 2, 3, 1)
    expected = flat @ w.T + layer.transform.bias
    if kind == "conv":
        expected = expected.permute(0, 3, 1, 2)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_merged_equals_unmerged_after_training_like_updates(kind):
    layer = LowRankStitchingLayer(12, 20, kind, rank=6)
    layer.init_least_squares(_acts(kind, 12, 1), _acts(kind, 20, 2))
    base = layer.transform.weight.detach().clone()
    _perturb(layer)
    x = _acts(kind, 12, 5)
    unmerged = layer(x)
    layer.eval()
    assert layer.is_merged and bool(layer.merged)
    merged = layer(x)
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)
    torch.testing.assert_close(layer.to_plain()(x), unmerged, rtol=0, atol=1e-5)
    assert type(layer.to_plain()) is StitchingLayer
    layer.train()
    assert not layer.is_merged
    torch.testing.assert_close(layer.transform.weight, base, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer(x), unmerged, rtol=0, atol=1e-5)


def test_gradients_reach_a_b_and_bias_only():
    layer = LowRankStitchingLayer(8, 8, rank=2)
    _perturb(layer)
    layer(torch.randn(3, 5, 8, generator=GEN)).square().sum().backward()
    assert layer.transform.weight.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in (layer.lora_a, layer.lora_b, layer.transform.bias))


def test_state_dict_saved_merged_loads_consistently():
    layer = LowRankStitchingLayer(10, 7, rank=3)
    _perturb(layer)
    x = torch.randn(2, 4, 10, generator=GEN)
    expected = layer(x).detach()
    layer.eval()
    state = layer.state_dict()  # W holds the update, merged = True
    fresh = LowRankStitchingLayer(10, 7, rank=3)  # train mode
    fresh.load_state_dict(state)
    assert fresh.is_merged
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=1e-5)  # unmerges itself for training
    assert not fresh.is_merged


def test_set_weight_bias_resets_the_update():
    layer = LowRankStitchingLayer(4, 3, rank=2)
    _perturb(layer)
    layer.eval()
    w, b = torch.randn(3, 4, generator=GEN), torch.randn(3, generator=GEN)
    layer.set_weight_bias(w, b)
    assert not layer.is_merged and torch.count_nonzero(layer.lora_b) == 0
    x = torch.randn(5, 4, generator=GEN)
    torch.testing.assert_close(layer(x), x @ w.T + b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rank", [0, -1, 9, 2.0, True])
def test_bad_rank(rank):
    with pytest.raises(ValueError, match="'rank': expected an int in 1..8"):
        LowRankStitchingLayer(8, 16, rank=rank)


# --------------------------------------------------------------------------- SNNet with v2 routes
def _vit(dim: int, heads: int, depth: int, seed: int) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=5, embed_dim=dim,
                             depth=depth, num_heads=heads)


@pytest.fixture(scope="module")
def v2_nets() -> tuple[SNNet, SNNet]:
    space = StitchSpaceV2((3, 6), names=("s", "l"))
    x = torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    plain = SNNet([_vit(16, 2, 3, 0), _vit(24, 2, 6, 1)], space)
    low = SNNet([_vit(16, 2, 3, 0), _vit(24, 2, 6, 1)], space,
                layer_factory=functools.partial(LowRankStitchingLayer, rank=4))
    plain.init_stitching_layers(x)
    low.init_stitching_layers(x)
    return plain.eval(), low.eval()


X = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(9))


def test_snnet_runs_v2_routes_with_low_rank_layers(v2_nets):
    plain, low = v2_nets
    assert len(low.space) == 8  # b = 2 boundaries: 2 + 2 + 2 + 1 + 1
    assert sorted(low.stitch_layers) == ["0_1_0", "0_1_1", "1_0_0", "1_0_1"]
    assert all(isinstance(m, LowRankStitchingLayer) and m.rank == 4 for m in low.stitch_layers.values())
    for config in low.space:  # least-squares start: identical to plain stitching layers
        torch.testing.assert_close(low.forward_route(X, config), plain.forward_route(X, config), rtol=0, atol=0)
    fsf = low.space.find([(0, 0, 0), (1, 2, 3), (0, 2, 2)])  # small 0 -> large 2..3 -> small 2
    s, l = low.anchors
    h = low.stitching_layer(0, 1, 0)(s.forward_blocks(s.embed(X), 0, 1))
    h = low.stitching_layer(1, 0, 1)(l.forward_blocks(h, 2, 4))
    torch.testing.assert_close(low.forward_route(X, fsf), s.forward_norm_head(s.forward_blocks(h, 2, 3)))


def test_export_of_trained_low_rank_path_is_plain(v2_nets):
    low = copy.deepcopy(v2_nets[1]).train()
    for i, layer in enumerate(low.stitch_layers.values()):
        _perturb(layer, seed=10 + i)
    fsf = low.space.find([(0, 0, 0), (1, 2, 3), (0, 2, 2)])
    low.set_active(fsf)
    with torch.no_grad():
        unmerged = low(X)
        low.eval()
        merged = low(X)
        exported = low.export_active()
        rebuilt = build_stitched_model(exported.config)
        rebuilt.load_state_dict(exported.state_dict())
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)
    assert isinstance(exported, StitchedModel)
    assert all(type(m) is StitchingLayer for m in exported.stitch_layers)
    with torch.no_grad():
        torch.testing.assert_close(exported.eval()(X), unmerged, rtol=0, atol=1e-5)
        torch.testing.assert_close(rebuilt.eval()(X), unmerged, rtol=0, atol=1e-5)


def test_low_rank_path_costs_what_a_plain_path_costs():
    space = StitchSpaceV2((3, 6))
    low = SNNet([_vit(16, 2, 3, 0), _vit(24, 2, 6, 1)], space,
                layer_factory=functools.partial(LowRankStitchingLayer, rank=4))
    low.set_active(space.find([(0, 0, 0), (1, 2, 3), (0, 2, 2)]))
    for layer in low.stitch_layers.values():
        _perturb(layer)
    # fvcore runs in eval mode, where the update is merged: one linear per stitch, no A/B matmuls
    assert fvcore_flops(low, X[:1]) == config_flops(low) == 113_184
    assert low.training and not any(m.is_merged for m in low.stitch_layers.values())
