from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from stitching.vit import (
    VIT_PRESETS,
    Attention,
    VisionTransformer,
    checkpoint_filter_fn,
    create_vit,
    load_checkpoint,
    resample_pos_embed,
)


def _tiny(**kw) -> VisionTransformer:
    torch.manual_seed(kw.pop("seed", 0))
    return VisionTransformer(**dict(dict(img_size=16, patch_size=4, in_chans=1, num_classes=5, embed_dim=12,
                                         depth=2, num_heads=3), **kw)).eval()


def test_state_dict_keys_match_timm():
    keys = list(_tiny().state_dict())
    block = [
        "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
        "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
    ]
    expected = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    expected += [f"blocks.{i}.{k}" for i in range(2) for k in block]
    expected += ["norm.weight", "norm.bias", "head.weight", "head.bias"]
    assert keys == expected
    m = _tiny()
    assert m.pos_embed.shape == (1, 17, 12)
    assert m.blocks[0].norm1.eps == 1e-6
    assert isinstance(m.blocks[0].mlp.act, torch.nn.GELU)


def test_attention_matches_scaled_dot_product_attention():
    torch.manual_seed(1)
    attn = Attention(12, 3).eval()
    x = torch.randn(2, 7, 12)
    qkv = attn.qkv(x).reshape(2, 7, 3, 3, 4).permute(2, 0, 3, 1, 4)
    ref = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(2, 7, 12)
    torch.testing.assert_close(attn(x), attn.proj(ref), atol=1e-6, rtol=1e-5)


def test_partial_forwards_compose_to_forward():
    m = _tiny(depth=4)
    x = torch.randn(3, 1, 16, 16)
    logits = m(x)
    assert logits.shape == (3, 5)
    torch.testing.assert_close(m.forward_head(m.forward_features(x)), logits)
    t = m.forward_blocks(m.embed(x), 0, 2)
    t = m.forward_blocks(t, 2, 4)
    torch.testing.assert_close(m.forward_norm_head(t), logits)
    assert m.forward_head(m.forward_features(x), pre_logits=True).shape == (3, 12)
    feats = m.block_features(x)
    assert len(feats) == 5
    torch.testing.assert_close(feats[2], m.forward_blocks(m.embed(x), 0, 2))
    final, inter = m.forward_intermediates(x, indices=[1, 3])
    assert len(inter) == 2
    torch.testing.assert_close(inter[0], feats[2])
    torch.testing.assert_close(final, m.forward_features(x))
    with pytest.raises(ValueError, match="indices"):
        m.forward_intermediates(x, indices=[4])


def test_bad_construction_and_input():
    with pytest.raises(ValueError, match="patch_size"):
        VisionTransformer(img_size=16, patch_size=5)
    with pytest.raises(ValueError, match="num_heads"):
        VisionTransformer(img_size=16, patch_size=4, embed_dim=10, num_heads=3)
    with pytest.raises(ValueError, match="depth"):
        VisionTransformer(img_size=16, patch_size=4, depth=0)
    with pytest.raises(ValueError, match=r"\(B, C, 16, 16\)"):
        _tiny()(torch.randn(1, 1, 8, 8))


def test_presets_and_factory():
    assert {"deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"} <= set(VIT_PRESETS)
    m = create_vit("vit_digits_tiny", num_classes=3)
    assert m.config["embed_dim"] == 32 and m.config["num_heads"] == 2 and m.config["depth"] == 12
    assert m.num_tokens == 17 and m.head.out_features == 3
    assert create_vit("vit_digits_base").config["embed_dim"] == 64
    with pytest.raises(ValueError, match="deit_tiny_patch16_224"):
        create_vit("deit_huge")


def test_config_rebuilds_the_same_architecture():
    m = _tiny()
    cfg = m.config
    rebuilt = VisionTransformer(**{k: v for k, v in cfg.items() if k != "family"})
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}


@pytest.mark.parametrize("fmt", ["pth", "pth_wrapped", "safetensors"])
def test_checkpoint_round_trip(tmp_path, fmt):
    src, dst = _tiny(seed=1), _tiny(seed=2)
    x = torch.randn(2, 1, 16, 16)
    assert not torch.allclose(src(x), dst(x))
    sd = src.state_dict()
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        path = tmp_path / "w.pth"
        torch.save({"model": sd} if fmt == "pth_wrapped" else sd, path)
    load_checkpoint(dst, path)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_pos_embed_is_resized_bicubically(tmp_path):
    src = _tiny(seed=1)
    big = _tiny(seed=2, img_size=32)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    load_checkpoint(big, path)
    pos = big.pos_embed.detach()
    assert pos.shape == (1, 65, 12)
    torch.testing.assert_close(pos[:, :1], src.pos_embed.detach()[:, :1])  # class token kept
    grid = src.pos_embed.detach()[:, 1:].reshape(1, 4, 4, 12).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(8, 8), mode="bicubic", antialias=True, align_corners=False).permute(0, 2, 3, 1).reshape(1, 64, 12)
    torch.testing.assert_close(pos[:, 1:], ref)
    torch.testing.assert_close(big.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)
    assert big(torch.randn(1, 1, 32, 32)).shape == (1, 5)
    # the filter is pure and leaves matching shapes alone
    sd = src.state_dict()
    out = checkpoint_filter_fn(sd, src)
    assert out["pos_embed"] is sd["pos_embed"] and out is not sd
    with pytest.raises(ValueError, match="square"):
        resample_pos_embed(torch.zeros(1, 6, 4), 17)


def test_wrong_shape_missing_and_unexpected_keys(tmp_path):
    model = _tiny()
    sd = model.state_dict()
    bad = dict(sd)
    bad["blocks.1.attn.qkv.weight"] = torch.zeros(30, 12)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(ValueError, match=r"bad\.pth.*blocks\.1\.attn\.qkv\.weight.*\(30, 12\).*\(36, 12\)"):
        load_checkpoint(model, path)
    missing = {k: v for k, v in sd.items() if k != "norm.bias"}
    torch.save(missing, path)
    with pytest.raises(ValueError, match=r"missing key 'norm\.bias'.*\(12,\)"):
        load_checkpoint(model, path)
    torch.save({**sd, "head_dist.weight": torch.zeros(5, 12)}, path)
    with pytest.raises(ValueError, match=r"unexpected key 'head_dist\.weight'.*\(5, 12\)"):
        load_checkpoint(model, path)
    with pytest.raises(ValueError, match="not found"):
        load_checkpoint(model, tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_checkpoint(model, junk)
    junk_st = tmp_path / "junk.safetensors"
    junk_st.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="junk.safetensors.*safetensors"):
        load_checkpoint(model, junk_st)


@pytest.mark.parametrize("name", sorted(n for n in VIT_PRESETS if n.startswith("vit_digits")))
def test_every_digits_preset_runs_and_rebuilds_from_its_config(name):
    from stitching.snnet import build_anchor

    model = create_vit(name).eval()
    x = torch.randn(2, 1, 16, 16)
    assert model(x).shape == (2, 10)
    rebuilt = build_anchor(model.config)
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt.eval()(x), model(x), rtol=0, atol=0)
