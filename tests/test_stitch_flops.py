from __future__ import annotations

import pytest
import torch

from searchspace.stitch import StitchSpace
from stitching.cnn import ResNetAnchor, create_resnet
from stitching.flops import anchor_flops, config_flops, flops_table, fvcore_flops, route_flops, vit_block_flops
from stitching.snnet import SNNet, anchor_space, build_stitched_model
from stitching.vit import VisionTransformer, create_vit

# ziplab/SN-Net stitching_deit/results/stitches_res.txt: fvcore FLOPs of the 71 DeiT-Ti/S/B
# configurations at 1x3x224x224, in configuration-id order.
SNNET_DEIT_FLOPS = [
    1258411200, 4608338304, 17582740224, 4696010496, 4316862720, 4798437888, 4419290112, 4040142336,
    4521717504, 4142569728, 3763421952, 4244997120, 3865849344, 3486701568, 3968276736, 3589128960,
    3209981184, 3691556352, 3312408576, 2933260800, 3414835968, 3035688192, 2656540416, 3138115584,
    2758967808, 2379820032, 2861395200, 2482247424, 2103099648, 2584674816, 2205527040, 1826379264,
    2307954432, 1928806656, 1549658880, 2031234048, 1652086272, 17961426432, 16505958912, 18340574208,
    16885106688, 15429639168, 17264254464, 15808786944, 14353319424, 16187934720, 14732467200,
    13276999680, 15111614976, 13656147456, 12200679936, 14035295232, 12579827712, 11124360192,
    12958975488, 11503507968, 10048040448, 11882655744, 10427188224, 8971720704, 10806336000,
    9350868480, 7895400960, 9730016256, 8274548736, 6819081216, 8653696512, 7198228992, 5742761472,
    7577376768, 6121909248,
]
DEIT_CONFIGS = [
    dict(family="vit", img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=d, depth=12,
         num_heads=h, mlp_ratio=4.0, qkv_bias=True, drop_path_rate=0.0)
    for d, h in ((192, 3), (384, 6), (768, 12))
]


def _vit(dim: int, depth: int, seed: int) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(
        img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=dim, depth=depth, num_heads=2
    )


def test_block_formula():
    # DeiT-Ti block at 197 tokens: qkv 21.8M + attention 2 x 7.45M + proj 7.26M + MLP 58.1M + norms
    assert vit_block_flops(197, 192, 768) == 102_427_392


def test_analytic_matches_every_published_snnet_deit_figure():
    space = StitchSpace((12, 12, 12))
    ends = {1: 5 * 197 * 384, 2: 5 * 197 * 768}  # final norm of the end anchor: see stitching/flops.py
    for config in space:
        ours = route_flops(DEIT_CONFIGS, config)
        published = SNNET_DEIT_FLOPS[config.id]
        missing_norm = 0 if config.is_anchor else ends[config.route[-1].anchor]
        assert ours - missing_norm == published, config
    assert abs(route_flops(DEIT_CONFIGS, space.config(24)) / 1e9 - 2.76) < 0.005  # README: id 24 = 2.76G
    assert abs(route_flops(DEIT_CONFIGS, space.config(56)) / 1e9 - 10.05) < 0.005  # README: id 56 = 10.05G


def test_deit_presets_against_fvcore_and_published_numbers():
    x = torch.randn(1, 3, 224, 224)
    published_g = {"deit_tiny_patch16_224": 1.26, "deit_small_patch16_224": 4.6, "deit_base_patch16_224": 17.58}
    published_params = {"deit_tiny_patch16_224": 5_717_416, "deit_small_patch16_224": 22_050_664,
                        "deit_base_patch16_224": 86_567_656}
    for i, (name, gflops) in enumerate(published_g.items()):
        model = create_vit(name)
        measured = fvcore_flops(model, x)
        assert abs(measured / 1e9 - gflops) / gflops < 0.01, (name, measured)
        assert measured == SNNET_DEIT_FLOPS[i] == anchor_flops(model).total
        assert sum(p.numel() for p in model.parameters()) == published_params[name]
        del model


def _check_all_configs(net: SNNet, x: torch.Tensor) -> None:
    table = flops_table(net)
    assert len(table) == len(net.space)
    for config in net.space:
        net.set_active(config)
        assert fvcore_flops(net, x) == table[config.id] == config_flops(net), net.space.describe(config)


def test_analytic_equals_fvcore_on_every_vit_config():
    anchors = [_vit(8, 3, 0), _vit(12, 3, 1), _vit(16, 3, 2)]
    net = SNNet.from_anchors(anchors)
    assert len(net.space) == 17
    x = torch.randn(1, 1, 16, 16)
    _check_all_configs(net, x)
    # exported models count the same, and batch size scales linearly
    net.set_active(8)
    exported = net.export_active()
    assert fvcore_flops(exported, x) == config_flops(net, 8)
    assert fvcore_flops(exported, x.repeat(3, 1, 1, 1)) == config_flops(net, 8, batch_size=3)


def test_analytic_equals_fvcore_on_unpaired_and_chained_routes():
    anchors = [_vit(8, 2, 0), _vit(12, 4, 1), _vit(16, 3, 2)]
    _check_all_configs(SNNet.from_anchors(anchors[:2]), torch.randn(1, 1, 16, 16))
    net = SNNet(anchors, anchor_space(anchors, nearest=False))
    chains = [c for c in net.space if len(c.route) == 3]
    for config in chains[:: max(1, len(chains) // 4)]:
        net.set_active(config)
        assert fvcore_flops(net, torch.randn(1, 1, 16, 16)) == config_flops(net)


def test_analytic_equals_fvcore_on_every_cnn_config():
    anchors = [ResNetAnchor(widths=(4, 8, 12), stage_depths=(1, 2, 1)),
               ResNetAnchor(widths=(6, 10, 16), stage_depths=(1, 2, 1)),
               ResNetAnchor(widths=(8, 12, 20), stage_depths=(2, 2, 2), img_size=16)]
    net = SNNet(anchors[:2], anchor_space(anchors[:2]))
    _check_all_configs(net, torch.randn(1, 1, 16, 16))
    assert anchor_flops(anchors[2]).total == fvcore_flops(anchors[2], torch.randn(1, 1, 16, 16))


def test_unknown_family_is_rejected():
    with pytest.raises(ValueError, match="family"):
        anchor_flops({"family": "swin"})
    with pytest.raises(ValueError, match="family"):
        anchor_flops(torch.nn.Linear(2, 2))


# timm's ResNet presets (7x7 stride-2 stem + max pool; basic blocks or bottlenecks). At 224 the
# counts are timm's published GMACs (1.82 / 3.67 / 4.11), pinned to fvcore's exact totals.
TIMM_RESNET_FLOPS_224 = {"resnet18": 1_819_065_856, "resnet34": 3_671_262_720, "resnet50": 4_111_512_576}


@pytest.mark.parametrize("name", sorted(TIMM_RESNET_FLOPS_224))
@pytest.mark.parametrize("img_size", [32, 33, 64])
def test_analytic_equals_fvcore_on_timm_resnet_presets(name, img_size):
    torch.manual_seed(0)
    model = create_resnet(name, img_size=img_size)
    assert anchor_flops(model).total == fvcore_flops(model, torch.randn(1, 3, img_size, img_size))


def test_timm_resnet_presets_at_224_match_published_counts():
    counts = {name: anchor_flops(create_resnet(name).config).total for name in TIMM_RESNET_FLOPS_224}
    assert counts == TIMM_RESNET_FLOPS_224
    # the stem and the blocks are counted: resnet34 and resnet50 (same depths) differ
    parts = {name: anchor_flops(create_resnet(name, img_size=32).config) for name in TIMM_RESNET_FLOPS_224}
    assert parts["resnet50"].blocks != parts["resnet34"].blocks
    assert parts["resnet50"].dims[:2] == (64, 256) and parts["resnet50"].positions[0] == 8 * 8


def _timm_snnet(names: tuple[str, str], img_size: int = 32, **space_kwargs) -> SNNet:
    torch.manual_seed(0)
    anchors = [create_resnet(n, img_size=img_size, num_classes=10) for n in names]
    return SNNet(anchors, anchor_space(anchors, names, **space_kwargs))


@pytest.mark.parametrize("img_size", [32, 64])
def test_analytic_equals_fvcore_on_stitched_resnet18_resnet34(img_size):
    net = _timm_snnet(("resnet18", "resnet34"), img_size)
    x = torch.randn(1, 3, img_size, img_size)
    table = flops_table(net)
    stages = net.anchors[0].block_stages
    by_stage: dict[int, list] = {}
    for config in net.space:
        if not config.is_anchor:
            by_stage.setdefault(stages[config.route[0].last], []).append(config)
    assert sorted(by_stage) == [0, 1, 2, 3]
    # both anchors, plus the first and the last stitch inside every stage
    picks = [net.space.config(0), net.space.config(1)] + [c for cs in by_stage.values() for c in (cs[0], cs[-1])]
    for config in picks:
        net.set_active(config)
        assert fvcore_flops(net, x) == table[config.id] == config_flops(net), net.space.describe(config)


def test_analytic_equals_fvcore_on_stitched_resnet50_pairs():
    # resnet50's stem is 64 wide and its stage-0 blocks 256: window 0 of resnet18 -> resnet50
    # holds entries into both, so it gets one layer per width pair (stitching/snnet.py)
    net = _timm_snnet(("resnet18", "resnet50"))
    assert net.stitching_layer(0, 1, 0, (0, 0)).out_dim == 64
    assert net.stitching_layer(0, 1, 0, (0, 1)).out_dim == 256
    with pytest.raises(ValueError, match=r"0_1_0 has one layer per width pair \[\(64, 64\), \(64, 256\)\]"):
        net.stitching_layer(0, 1, 0)
    x = torch.randn(1, 3, 32, 32)
    _check_all_configs(net, x)
    # the split layers export and rebuild like any other
    net.set_active(next(c for c in net.space if c.junctions() and c.junctions()[0][2:4] == (0, 1)))
    exported = net.export_active().eval()
    rebuilt = build_stitched_model(exported.config).eval()
    rebuilt.load_state_dict(exported.state_dict())
    net.eval()
    torch.testing.assert_close(rebuilt(x), net(x))
    assert fvcore_flops(exported, x) == config_flops(net)
    # the other direction needs no split (resnet50's exits are all 256 wide within stage 0)
    reverse = _timm_snnet(("resnet50", "resnet18"))
    assert len(reverse.stitch_layers) == len(reverse.space.stitching_layers())
    table = flops_table(reverse)
    for config in list(reverse.space)[::3]:
        reverse.set_active(config)
        assert fvcore_flops(reverse, x) == table[config.id], reverse.space.describe(config)
