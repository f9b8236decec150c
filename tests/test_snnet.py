from __future__ import annotations

import json
import random

import pytest
import torch

from searchspace.stitch import StitchSpace
from stitching.cnn import RESNET_PRESETS, create_resnet
from stitching.layers import least_squares_fit
from stitching.snnet import (
    SNNet,
    StitchedModel,
    anchor_space,
    build_anchor,
    build_stitched_model,
    stitched_model_config,
)
from stitching.vit import VisionTransformer, create_vit


def _vit(dim: int, heads: int, depth: int = 12, seed: int = 0, **kw) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(**dict(dict(img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=dim,
                                         depth=depth, num_heads=heads), **kw))


@pytest.fixture(scope="module")
def digits_net() -> SNNet:
    torch.manual_seed(0)
    anchors = [create_vit(n) for n in ("vit_digits_tiny", "vit_digits_small", "vit_digits_base")]
    net = SNNet.from_anchors(anchors, names=["tiny", "small", "base"])
    net.init_stitching_layers(torch.randn(16, 1, 16, 16))
    return net.eval()


X = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(9))


def test_layers_and_space(digits_net):
    assert len(digits_net.space) == 71
    assert len(digits_net.stitch_layers) == 22
    assert digits_net.stitching_layer(0, 1, 6).transform.weight.shape == (48, 32)
    assert digits_net.stitching_layer(1, 2, 10).transform.weight.shape == (64, 48)


def test_anchor_configs_run_the_anchor(digits_net):
    for a in range(3):
        digits_net.set_active(a)
        torch.testing.assert_close(digits_net(X), digits_net.anchors[a](X), rtol=0, atol=0)


def test_forward_runs_the_route(digits_net):
    config = digits_net.set_active(24)  # tiny blocks 0..7 -> layer 6 -> small blocks 7..11
    tiny, small = digits_net.anchors[0], digits_net.anchors[1]
    x = tiny.forward_blocks(tiny.embed(X), 0, 8)
    x = digits_net.stitching_layer(0, 1, 6)(x)
    expected = small.forward_norm_head(small.forward_blocks(x, 7, 12))
    torch.testing.assert_close(digits_net(X), expected, rtol=0, atol=0)
    assert digits_net.active == config
    assert digits_net.active_config() == {"id": 24, "route": [[0, 0, 7], [1, 7, 11]], "windows": [6]}


def test_set_active_rejects_unknown_ids(digits_net):
    with pytest.raises(ValueError, match=r"71.*0\.\.70"):
        digits_net.set_active(71)
    with pytest.raises(ValueError, match="None"):
        digits_net.set_active(None)  # type: ignore[arg-type]


def test_sample_active_is_seeded(digits_net):
    ids1 = [digits_net.sample_active(r).id for r in [random.Random(5)] for _ in range(20)]
    rng = random.Random(5)
    ids2 = [digits_net.sample_active(rng).id for _ in range(20)]
    assert ids1 == ids2 and len(set(ids1)) > 5


def test_least_squares_init_averages_over_the_window():
    torch.manual_seed(1)
    anchors = [_vit(16, 2, depth=4, seed=1), _vit(24, 2, depth=4, seed=2)]
    net = SNNet.from_anchors(anchors)
    batch = torch.randn(8, 1, 16, 16)
    net.init_stitching_layers(batch)
    with torch.no_grad():
        f0, f1 = anchors[0].block_features(batch), anchors[1].block_features(batch)
    positions = [(0, 0), (0, 1), (1, 0), (1, 1)]  # window 0 of a depth-4 pair
    fits = [least_squares_fit(f0[j + 1], f1[k]) for j, k in positions]
    w = torch.stack([f[0] for f in fits]).mean(0).float()
    b = torch.stack([f[1] for f in fits]).mean(0).float()
    layer = net.stitching_layer(0, 1, 0).transform
    torch.testing.assert_close(layer.weight.data, w, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer.bias.data, b, atol=1e-5, rtol=1e-4)
    # a well-initialised layer maps front tokens close to what the end anchor expects
    net.set_active(net.space.index(next(c for c in net.space if c.route == ((0, 0, 1), (1, 2, 3)))))
    with torch.no_grad():
        mapped = net.stitching_layer(0, 1, 1)(f0[2])
    assert (mapped - f1[2]).pow(2).mean() < f1[2].pow(2).mean()


@pytest.mark.parametrize("config_id", [0, 2, 3, 5, 6, 24, 36, 37, 40, 70])
def test_export_gives_identical_logits(digits_net, config_id):
    digits_net.set_active(config_id)
    exported = digits_net.export_active()
    assert isinstance(exported, StitchedModel)
    assert not exported.training
    expected = digits_net(X)
    torch.testing.assert_close(exported(X), expected, rtol=0, atol=0)
    config = digits_net.active
    assert sum(len(s) for s in exported.segments) == config.num_blocks()
    assert sum(p.numel() for p in exported.parameters()) == digits_net.num_params(config)
    # rebuild from JSON config + state dict
    cfg = json.loads(json.dumps(exported.config))
    assert cfg["kind"] == "stitch" and cfg["config_id"] == config_id
    rebuilt = build_stitched_model(cfg)
    rebuilt.load_state_dict(exported.state_dict())
    torch.testing.assert_close(rebuilt.eval()(X), expected, rtol=0, atol=0)
    torch.testing.assert_close(exported.forward_head(exported.forward_features(X)), expected)


def test_export_covers_k_le_j_positions(digits_net):
    kinds = {c.route[1].first - c.route[0].last for c in digits_net.space if len(c.route) == 2}
    assert kinds == {-1, 0, 1}  # overlapping (k<=j) and contiguous positions all exist
    for config in [c for c in digits_net.space if len(c.route) == 2 and c.route[1].first <= c.route[0].last][:4]:
        digits_net.set_active(config)
        torch.testing.assert_close(digits_net.export_active()(X), digits_net(X), rtol=0, atol=0)


def test_export_without_weights_is_fresh(digits_net):
    digits_net.set_active(24)
    fresh = digits_net.export_active(preserve_weight=False).eval()
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in digits_net.export_active().state_dict().items()
    }
    assert not torch.allclose(fresh(X), digits_net(X))


def test_exported_model_is_independent(digits_net):
    digits_net.set_active(24)
    exported = digits_net.export_active()
    before = exported(X).clone()
    with torch.no_grad():
        digits_net.anchors[0].blocks[0].attn.qkv.weight.add_(1.0)
    try:
        torch.testing.assert_close(exported(X), before, rtol=0, atol=0)
    finally:
        with torch.no_grad():
            digits_net.anchors[0].blocks[0].attn.qkv.weight.sub_(1.0)


def test_param_groups_split_anchors_and_stitching_layers(digits_net):
    groups = digits_net.param_groups(anchor_lr=1e-5, stitch_lr=1e-4)
    assert [g["name"] for g in groups] == ["anchors", "stitch_layers"]
    assert [g["lr"] for g in groups] == [1e-5, 1e-4]
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert not ids[0] & ids[1]
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in digits_net.parameters())
    assert len(groups[1]["params"]) == 2 * 22
    opt = torch.optim.AdamW(groups)
    assert [g["lr"] for g in opt.param_groups] == [1e-5, 1e-4]


def test_training_step_reaches_the_path_only():
    anchors = [_vit(16, 2, depth=3, seed=1), _vit(24, 2, depth=3, seed=2)]
    net = SNNet.from_anchors(anchors).train()
    config = net.set_active(next(c for c in net.space if c.route == ((0, 0, 0), (1, 1, 2))))
    net(torch.randn(2, 1, 16, 16)).sum().backward()
    a, b, _, _, w = config.junctions()[0]
    assert net.stitching_layer(a, b, w).transform.weight.grad is not None
    assert anchors[0].blocks[0].attn.qkv.weight.grad is not None
    assert anchors[0].blocks[1].attn.qkv.weight.grad is None
    assert anchors[1].blocks[0].attn.qkv.weight.grad is None and anchors[1].head.weight.grad is not None


def test_incompatible_anchors_are_rejected():
    with pytest.raises(ValueError, match=r"anchor 1.*patch_size 8.*4"):
        SNNet.from_anchors([_vit(16, 2, depth=2), _vit(24, 2, depth=2, patch_size=8)])
    with pytest.raises(ValueError, match=r"anchor 1.*img_size"):
        SNNet.from_anchors([_vit(16, 2, depth=2), _vit(24, 2, depth=2, img_size=32)])
    with pytest.raises(ValueError, match=r"anchor 1.*num_classes"):
        SNNet.from_anchors([_vit(16, 2, depth=2), _vit(24, 2, depth=2, num_classes=3)])
    with pytest.raises(ValueError, match=r"anchor 1.*family 'resnet'.*'vit'"):
        SNNet.from_anchors([_vit(16, 2, depth=2), create_resnet("resnet_digits_tiny")])
    with pytest.raises(ValueError, match="not stitchable"):
        SNNet.from_anchors([_vit(16, 2, depth=2), torch.nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="stage depths"):
        SNNet([_vit(16, 2, depth=2), _vit(24, 2, depth=2)], StitchSpace((2, 3)))
    with pytest.raises(ValueError, match="anchors"):
        SNNet([_vit(16, 2, depth=2)], StitchSpace((2, 2)))


def test_cnn_anchors_stitch_with_1x1_convs():
    torch.manual_seed(0)
    anchors = [create_resnet(n) for n in ("resnet_digits_tiny", "resnet_digits_small", "resnet_digits_base")]
    net = SNNet.from_anchors(anchors)
    assert net.space.stage_depths == ((2, 2, 2),) * 3
    assert len(net.space) == 3 + 2 * 8
    assert all(layer.kind == "conv" for layer in net.stitch_layers.values())
    net.init_stitching_layers(torch.randn(8, 1, 16, 16))
    net.eval()
    for config in net.space:
        net.set_active(config)
        exported = net.export_active()
        torch.testing.assert_close(exported(X), net(X), rtol=0, atol=1e-6)
        if config.id % 5:
            continue  # rebuilding is the same code for every config; a few suffice
        rebuilt = build_stitched_model(json.loads(json.dumps(exported.config)))
        rebuilt.load_state_dict(exported.state_dict())
        torch.testing.assert_close(rebuilt.eval()(X), net(X), rtol=0, atol=1e-6)


def test_unpaired_depths_and_three_segment_routes():
    anchors = [_vit(16, 2, depth=2, seed=1), _vit(24, 2, depth=4, seed=2), _vit(32, 2, depth=4, seed=3)]
    net = SNNet(anchors, anchor_space(anchors, nearest=False))
    net.init_stitching_layers(torch.randn(4, 1, 16, 16))
    net.eval()
    chains = [c for c in net.space if len(c.route) == 3]
    assert chains
    for config in [c for c in net.space if c.anchors[:2] == (0, 1)] + chains[:5]:
        net.set_active(config)
        torch.testing.assert_close(net.export_active()(X), net(X), rtol=0, atol=0)


def test_stitched_model_config_and_bad_configs(digits_net):
    cfg = stitched_model_config(digits_net, 40)
    assert cfg["description"] == "small[0-1] -> base[1-11]"
    assert [s["name"] for s in cfg["segments"]] == ["small", "base"]
    assert cfg["stitches"] == [
        {"in_anchor": 1, "out_anchor": 2, "window": 0, "in_dim": 48, "out_dim": 64, "kind": "linear"}
    ]
    with pytest.raises(ValueError, match="'kind'"):
        build_stitched_model({**cfg, "kind": "pooling"})
    with pytest.raises(ValueError, match="format_version"):
        build_stitched_model({**cfg, "format_version": 7})
    with pytest.raises(ValueError, match="'stitches'"):
        build_stitched_model({**cfg, "stitches": []})
    broken = json.loads(json.dumps(cfg))
    broken["segments"][1]["last"] = 12
    with pytest.raises(ValueError, match=r"segments\[1\].*0\.\.11"):
        build_stitched_model(broken)
    broken = json.loads(json.dumps(cfg))
    broken["segments"][0]["model"]["family"] = "swin"
    with pytest.raises(ValueError, match="family"):
        build_stitched_model(broken)


@pytest.mark.parametrize("name", sorted(RESNET_PRESETS))
def test_every_resnet_preset_runs_and_rebuilds_from_its_config(name):
    model = create_resnet(name).eval()
    assert model(X).shape == (4, 10)
    assert len(model.feature_dims) == len(model.blocks) + 1
    t = model.forward_blocks(model.embed(X), 0, 3)
    torch.testing.assert_close(model.forward_norm_head(model.forward_blocks(t, 3)), model(X))
    rebuilt = build_anchor(json.loads(json.dumps(model.config)))
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt.eval()(X), model(X), rtol=0, atol=0)
    with pytest.raises(ValueError, match="resnet_digits_tiny"):
        create_resnet("resnet_huge")
