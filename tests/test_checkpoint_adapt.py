"""Checkpoints from other tasks: timm-format ViT/DeiT and ResNet files adapted on load the way
timm does (unwrapping, new head, input channels, position embeddings), with one-line refusals.

Every file here is written by the test in the real formats (``torch.save`` of timm-style dicts,
``.safetensors``); the references (interpolation, channel adaptation, a ResNet forward) are
written out independently of ``stitching.checkpoint``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from stitching import checkpoint as ckpt
from stitching.anchors import (
    anchor_refs_from_files,
    check_anchor_data,
    create_anchor,
    load_anchors_with_reports,
    pretrained_cfg,
)
from stitching.checkpoint import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    AdaptationReport,
    adapt_input_conv,
    anchor_to_timm_resnet,
    checkpoint_filter_fn,
    load_checkpoint,
    resample_abs_pos_embed,
)
from stitching.cnn import RESNET_FAMILY, RESNET_PRESETS, TIMM_RESNET_PRESETS
from stitching.snnet import build_anchor
from stitching.vit import VIT_FAMILY, VIT_PRESETS, VisionTransformer

TINY = dict(patch_size=16, embed_dim=32, depth=2, num_heads=2)


def _vit(seed: int = 0, **kwargs) -> VisionTransformer:
    torch.manual_seed(seed)
    model = VisionTransformer(**{**dict(img_size=32, in_chans=3, num_classes=1000), **TINY, **kwargs})
    with torch.no_grad():  # make every tensor distinctive (pos_embed is not all that random at init)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def _same_weights(a: dict, b: dict, skip: tuple[str, ...] = ()) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if not k.startswith(skip):
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------- references
def reference_resample(posemb, new_hw, old_hw, prefix):
    """timm's rule written out: prefix kept, grid bicubic + antialias in float32, cast back."""
    tok, grid = posemb[:, :prefix], posemb[:, prefix:]
    grid = grid.float().reshape(1, old_hw[0], old_hw[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_hw, mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_hw[0] * new_hw[1], -1).to(posemb.dtype)
    return torch.cat([tok, grid], dim=1)


def timm_resnet_state_dict(layers, bottleneck=False, in_chans=3, num_classes=1000, seed=0):
    """Random weights under timm's ResNet names and shapes (``timm/models/resnet.py``)."""
    g = torch.Generator().manual_seed(seed)

    def conv(o, i, k):
        return torch.randn(o, i, k, k, generator=g) * math.sqrt(2.0 / (i * k * k))

    def bn(prefix, c, sd):
        sd[f"{prefix}.weight"] = torch.rand(c, generator=g) * 0.5 + 0.5
        sd[f"{prefix}.bias"] = torch.randn(c, generator=g) * 0.1
        sd[f"{prefix}.running_mean"] = torch.randn(c, generator=g) * 0.1
        sd[f"{prefix}.running_var"] = torch.rand(c, generator=g) + 0.5
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(100)

    sd: dict[str, torch.Tensor] = {"conv1.weight": conv(64, in_chans, 7)}
    bn("bn1", 64, sd)
    expansion = 4 if bottleneck else 1
    inplanes = 64
    for s, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
        for i in range(n):
            p = f"layer{s + 1}.{i}"
            stride = 2 if s > 0 and i == 0 else 1
            if bottleneck:
                sd[f"{p}.conv1.weight"] = conv(planes, inplanes, 1)
                bn(f"{p}.bn1", planes, sd)
                sd[f"{p}.conv2.weight"] = conv(planes, planes, 3)
                bn(f"{p}.bn2", planes, sd)
                sd[f"{p}.conv3.weight"] = conv(planes * 4, planes, 1)
                bn(f"{p}.bn3", planes * 4, sd)
            else:
                sd[f"{p}.conv1.weight"] = conv(planes, inplanes, 3)
                bn(f"{p}.bn1", planes, sd)
                sd[f"{p}.conv2.weight"] = conv(planes, planes, 3)
                bn(f"{p}.bn2", planes, sd)
            if i == 0 and (stride != 1 or inplanes != planes * expansion):
                sd[f"{p}.downsample.0.weight"] = conv(planes * expansion, inplanes, 1)
                bn(f"{p}.downsample.1", planes * expansion, sd)
            inplanes = planes * expansion
    sd["fc.weight"] = torch.randn(num_classes, inplanes, generator=g) / math.sqrt(inplanes)
    sd["fc.bias"] = torch.randn(num_classes, generator=g) * 0.1
    return sd


def reference_resnet_forward(sd, x, layers):
    """timm's ResNet forward as plain functional ops over a timm-named state dict (eval mode)."""

    def bn(t, p):
        return F.batch_norm(t, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                            sd[f"{p}.bias"], training=False, eps=1e-5)

    x = F.conv2d(x, sd["conv1.weight"], stride=2, padding=3)
    x = F.max_pool2d(F.relu(bn(x, "bn1")), kernel_size=3, stride=2, padding=1)
    for s, n in enumerate(layers):
        for i in range(n):
            p = f"layer{s + 1}.{i}"
            stride = 2 if s > 0 and i == 0 else 1
            shortcut = x
            if f"{p}.downsample.0.weight" in sd:
                shortcut = bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
            if f"{p}.conv3.weight" in sd:  # bottleneck: the stride on the 3x3 conv
                out = F.relu(bn(F.conv2d(x, sd[f"{p}.conv1.weight"]), f"{p}.bn1"))
                out = F.relu(bn(F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=1), f"{p}.bn2"))
                out = bn(F.conv2d(out, sd[f"{p}.conv3.weight"]), f"{p}.bn3")
            else:
                out = F.relu(bn(F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
                out = bn(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            x = F.relu(out + shortcut)
    return F.linear(x.mean(dim=(2, 3)), sd["fc.weight"], sd["fc.bias"])


# --------------------------------------------------------------------------- ViT: head + channels
def test_imagenet_vit_loads_into_a_one_channel_ten_class_model(tmp_path, caplog):
    src = _vit(seed=1)
    sd = src.state_dict()
    path = tmp_path / "deit_like.pth"
    torch.save(sd, path)
    dst = _vit(seed=2, in_chans=1, num_classes=10)
    fresh_head = {k: v.clone() for k, v in dst.state_dict().items() if k.startswith("head.")}
    with caplog.at_level(logging.INFO, logger="stitching.checkpoint"):
        report = load_checkpoint(dst, path)
    got = dst.state_dict()
    torch.testing.assert_close(got["patch_embed.proj.weight"], sd["patch_embed.proj.weight"].sum(1, keepdim=True))
    _same_weights({k: v for k, v in got.items() if k.startswith("head.")}, fresh_head)
    _same_weights(got, sd, skip=("head.", "patch_embed.proj.weight"))
    assert report == AdaptationReport(source=str(path), head=(1000, 10), input_chans=(3, 1),
                                      input_conv_method="sum")
    assert report.adapted and report.describe() == [
        "head replaced by a fresh one (from 1000 to 10 classes)",
        "input channels adapted (from 3 to 1, summed over the RGB filters)",
    ]
    assert json.loads(json.dumps(report.to_json()))["head"] == {"from_classes": 1000, "to_classes": 10}
    head_lines = [r.getMessage() for r in caplog.records if "classifier" in r.getMessage()]
    assert len(head_lines) == 1 and str(path) in head_lines[0]
    assert "(1000, 32)" in head_lines[0] and "(10, 32)" in head_lines[0]
    assert dst(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_headless_checkpoint_and_headless_model(tmp_path):
    src = _vit(seed=1, num_classes=0)
    path = tmp_path / "headless.pth"
    torch.save(src.state_dict(), path)
    dst = _vit(seed=2, num_classes=7)
    assert load_checkpoint(dst, path).head == (0, 7)
    full = tmp_path / "full.pth"
    torch.save(_vit(seed=3).state_dict(), full)
    assert load_checkpoint(_vit(seed=4, num_classes=0), full).head == (1000, 0)
    same = _vit(seed=5)
    report = load_checkpoint(same, full)
    assert report == AdaptationReport(source=str(full)) and not report.adapted and report.describe() == []


def test_two_deit_tiny_checkpoints_stitch_on_digits(tmp_path):
    """The issue's case: ImageNet DeiT-tiny files given as --anchor for 16x16 one-channel digits."""
    items = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        path = tmp_path / f"deit_tiny_{seed}.pth"
        torch.save({"model": create_anchor("deit_tiny_patch16_224").state_dict()}, path)  # DeiT's own format
        items.append(("deit_tiny_patch16_224", str(path)))
    refs = anchor_refs_from_files(items, input_size=16, in_chans=1, num_classes=10)
    anchors, reports = load_anchors_with_reports(refs)
    data = SimpleNamespace(name="digits", in_chans=1, input_size=16, num_classes=10)
    check_anchor_data(anchors, [r.name for r in refs], data)
    for report in reports:
        assert report.wrapper == "model" and report.head == (1000, 10) and report.input_chans == (3, 1)
        assert report.pos_embed == ((14, 14), (1, 1))
    assert anchors[0](torch.randn(2, 1, 16, 16)).shape == (2, 10)


# --------------------------------------------------------------------------- pos_embed
@pytest.mark.parametrize("old_hw, new_hw, prefix, given", [
    ((4, 4), (8, 8), 1, False),   # grow
    ((8, 8), (4, 4), 1, False),   # shrink
    ((6, 6), (3, 5), 1, False),   # to a non-square grid
    ((2, 8), (3, 3), 1, True),    # from a non-square grid (old size given)
    ((2, 8), (4, 6), 1, True),    # non-square to non-square, growing
    ((3, 5), (7, 2), 2, True),    # two prefix tokens (cls + dist)
    ((5, 5), (3, 3), 0, False),   # no prefix token
])
def test_resample_abs_pos_embed_matches_timms_rule(old_hw, new_hw, prefix, given):
    pos = torch.randn(1, prefix + old_hw[0] * old_hw[1], 12)
    out = resample_abs_pos_embed(pos, new_hw, old_hw if given else None, num_prefix_tokens=prefix)
    assert out.shape == (1, prefix + new_hw[0] * new_hw[1], 12)
    torch.testing.assert_close(out, reference_resample(pos, new_hw, old_hw, prefix))
    torch.testing.assert_close(out[:, :prefix], pos[:, :prefix], rtol=0, atol=0)


def test_resample_abs_pos_embed_dtype_identity_and_errors():
    pos = torch.randn(1, 17, 8).to(torch.bfloat16)
    out = resample_abs_pos_embed(pos, (2, 2))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, reference_resample(pos, (2, 2), (4, 4), 1), rtol=0, atol=0)
    assert resample_abs_pos_embed(pos, (4, 4)) is pos  # timm returns it as is
    # timm's shortcut looks at the token count and a square new size only (even for another old grid)
    assert resample_abs_pos_embed(pos, (4, 4), (2, 8)) is pos
    assert resample_abs_pos_embed(pos, (8, 2), (4, 4)).shape == (1, 17, 8)
    with pytest.raises(ValueError, match="square grid"):
        resample_abs_pos_embed(torch.zeros(1, 7, 4), (2, 2))
    with pytest.raises(ValueError, match="3x3 grid"):
        resample_abs_pos_embed(torch.zeros(1, 7, 4), (2, 2), (3, 3))


@pytest.mark.parametrize("src_img, dst_img", [(224, 32), (32, 64)])
def test_pos_embed_is_resized_on_load(tmp_path, src_img, dst_img):
    src = _vit(seed=1, img_size=src_img)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    dst = _vit(seed=2, img_size=dst_img)
    report = load_checkpoint(dst, path)
    old, new = src_img // 16, dst_img // 16
    assert report.pos_embed == ((old, old), (new, new)) and report.head is None
    assert dst.pos_embed.shape == (1, 1 + new * new, 32)
    ref = reference_resample(src.pos_embed.detach(), (new, new), (old, old), 1)
    torch.testing.assert_close(dst.pos_embed.detach(), ref)


# --------------------------------------------------------------------------- wrappers
@pytest.mark.parametrize("fmt", ["state_dict", "model", "state_dict_ema", "model_ema", "module.", "_orig_mod.",
                                 "module+state_dict", "train_args", "safetensors", "safetensors_module."])
def test_wrappers_load_the_same_weights_as_the_plain_file(tmp_path, fmt):
    src = _vit(seed=1)
    sd = src.state_dict()
    plain = tmp_path / "plain.pth"
    torch.save(sd, plain)
    path = tmp_path / "w.pth"
    if fmt in ("state_dict", "model", "state_dict_ema", "model_ema"):
        torch.save({fmt: sd, "epoch": 3}, path)
    elif fmt in ("module.", "_orig_mod."):
        torch.save({fmt + k: v for k, v in sd.items()}, path)
    elif fmt == "module+state_dict":
        torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    elif fmt == "train_args":  # what timm's train.py saves (args is an argparse Namespace)
        torch.save({"epoch": 1, "arch": "deit_tiny", "state_dict": sd, "args": argparse.Namespace(lr=0.1),
                    "version": 2}, path)
    else:
        path = tmp_path / "w.safetensors"
        prefix = "module." if fmt.endswith("module.") else ""
        save_file({prefix + k: v.contiguous() for k, v in sd.items()}, str(path))
    a, b = _vit(seed=2), _vit(seed=2)
    plain_report = load_checkpoint(a, plain)
    report = load_checkpoint(b, path)
    _same_weights(b.state_dict(), a.state_dict())
    _same_weights(b.state_dict(), sd)
    assert plain_report.wrapper == "" and plain_report.prefixes_removed == ()
    wrapper = {"module+state_dict": "state_dict", "train_args": "state_dict"}.get(fmt, fmt)
    assert report.wrapper == (wrapper if wrapper in ckpt.WRAPPER_KEYS else "")
    assert report.prefixes_removed == (("module.",) if "module" in fmt else ("_orig_mod.",) if "orig" in fmt else ())


def test_wrapper_precedence_is_timms(tmp_path):
    a, b, c = (_vit(seed=s).state_dict() for s in (1, 2, 3))
    path = tmp_path / "w.pth"
    torch.save({"model": a, "state_dict": b, "state_dict_ema": c, "model_ema": a}, path)
    model = _vit(seed=9)
    assert load_checkpoint(model, path).wrapper == "state_dict_ema"
    _same_weights(model.state_dict(), c)
    assert load_checkpoint(model, path, use_ema=False).wrapper == "state_dict"
    _same_weights(model.state_dict(), b)
    torch.save({"model": a, "state_dict_ema": None, "model_ema": c}, path)  # None: not an EMA
    assert load_checkpoint(model, path).wrapper == "model_ema"
    torch.save({"model": a, "state_dict": b}, path)
    assert load_checkpoint(model, path).wrapper == "state_dict"
    assert ckpt.clean_state_dict({"module._orig_mod.x": 1, "_orig_mod.module.y": 2, "z": 3}) == {
        "x": 1, "module.y": 2, "z": 3}


def test_filter_fn_is_pure_and_keeps_untouched_tensors():
    src = _vit(seed=1)
    sd = {"module." + k: v for k, v in src.state_dict().items()}
    before = {k: v.clone() for k, v in sd.items()}
    dst = _vit(seed=2, in_chans=1, num_classes=10, img_size=64)
    out = checkpoint_filter_fn(sd, dst)
    _same_weights(sd, before)  # the input is not changed
    assert out["blocks.0.attn.qkv.weight"] is sd["module.blocks.0.attn.qkv.weight"]
    assert out["pos_embed"].shape == (1, 17, 32) and out["patch_embed.proj.weight"].shape == (32, 1, 16, 16)
    assert out["head.weight"].shape == (10, 32)


# --------------------------------------------------------------------------- adapt_input_conv
def test_adapt_input_conv_math_by_hand():
    r, g, b = torch.full((2, 1, 2, 2), 1.0), torch.full((2, 1, 2, 2), 2.0), torch.full((2, 1, 2, 2), 4.0)
    r[1], g[1], b[1] = -1.0, 3.0, 0.5
    w = torch.cat([r, g, b], dim=1)  # (2, 3, 2, 2)
    torch.testing.assert_close(adapt_input_conv(1, w), r + g + b)  # 3 -> 1: the sum
    torch.testing.assert_close(adapt_input_conv(2, w), torch.cat([r, g], 1) * 1.5)  # first 2, x 3/2
    torch.testing.assert_close(adapt_input_conv(4, w), torch.cat([r, g, b, r], 1) * 0.75)  # x 3/4
    torch.testing.assert_close(adapt_input_conv(6, w), torch.cat([r, g, b, r, g, b], 1) * 0.5)  # x 3/6
    torch.testing.assert_close(adapt_input_conv(3, w), w, rtol=0, atol=0)
    assert adapt_input_conv(1, w)[1, 0, 0, 0].item() == -1.0 + 3.0 + 0.5
    half = adapt_input_conv(4, w.half())
    assert half.dtype == torch.float16
    torch.testing.assert_close(half, (torch.cat([r, g, b, r], 1) * 0.75).half())
    six = torch.arange(2 * 6 * 1 * 1, dtype=torch.float32).reshape(2, 6, 1, 1)  # space-to-depth stem
    torch.testing.assert_close(adapt_input_conv(1, six), six.reshape(2, 2, 3, 1, 1).sum(2))
    with pytest.raises(NotImplementedError):
        adapt_input_conv(4, torch.zeros(2, 2, 3, 3))


@pytest.mark.parametrize("chans", [2, 4, 6])
def test_input_channels_adapted_on_load(tmp_path, chans):
    src = _vit(seed=1)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    dst = _vit(seed=2, in_chans=chans)
    report = load_checkpoint(dst, path)
    assert report.input_chans == (3, chans) and report.input_conv_method == "repeat" and report.head is None
    w = src.patch_embed.proj.weight.detach()
    want = torch.cat([w] * 2, dim=1)[:, :chans] * (3 / chans)
    torch.testing.assert_close(dst.patch_embed.proj.weight.detach(), want)


# --------------------------------------------------------------------------- DeiT distilled
def test_distilled_deit_checkpoint_is_refused_in_one_line(tmp_path):
    sd = _vit(seed=1).state_dict()
    sd["dist_token"] = torch.zeros(1, 1, 32)
    sd["pos_embed"] = torch.zeros(1, 2 + 4, 32)
    sd["head_dist.weight"], sd["head_dist.bias"] = torch.zeros(1000, 32), torch.zeros(1000)
    path = tmp_path / "deit_tiny_distilled.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(ValueError) as err:
        load_checkpoint(_vit(seed=2), path)
    msg = _one_line(err)
    assert str(path) in msg and "'dist_token'" in msg and "(1, 1, 32)" in msg and "distilled" in msg


# --------------------------------------------------------------------------- refusals
def test_refusals_are_one_line_naming_file_key_and_shapes(tmp_path):
    sd = _vit(seed=1).state_dict()
    path = tmp_path / "a.pth"

    def refused(state, model=None) -> str:
        torch.save(state, path)
        with pytest.raises(ValueError) as err:
            load_checkpoint(model if model is not None else _vit(seed=2), path)
        msg = _one_line(err)
        assert msg.startswith(f"checkpoint {path}: ")
        return msg

    other = _vit(seed=3, embed_dim=48, num_heads=3).state_dict()
    msg = refused({**sd, "blocks.0.attn.qkv.weight": other["blocks.0.attn.qkv.weight"]})
    assert "key 'blocks.0.attn.qkv.weight' has shape (144, 48), model expects (96, 32) (another architecture?)" in msg
    msg = refused(other)
    assert "key 'cls_token' has shape (1, 1, 48), model expects (1, 1, 32)" in msg
    patch8 = _vit(seed=3, patch_size=8).state_dict()
    msg = refused(patch8)
    assert "'patch_embed.proj.weight' has shape (32, 3, 8, 8)" in msg and "(32, 3, 16, 16)" in msg
    assert "patch size mismatch" in msg
    msg = refused({k: v for k, v in sd.items() if k != "norm.bias"})
    assert "missing key 'norm.bias' (model expects shape (32,))" in msg
    msg = refused({**sd, "head_dist.weight": torch.zeros(5, 32)})
    assert "unexpected key 'head_dist.weight' with shape (5, 32)" in msg
    msg = refused({**sd, "pos_embed": torch.zeros(1, 7, 32)})
    assert "'pos_embed' has shape (1, 7, 32), model expects (1, 5, 32)" in msg and "square" in msg
    msg = refused({**sd, "patch_embed.proj.weight": torch.zeros(32, 2, 16, 16)}, _vit(seed=2, in_chans=4))
    assert "'patch_embed.proj.weight' has shape (32, 2, 16, 16), model expects (32, 4, 16, 16)" in msg
    with pytest.raises(ValueError, match="file not found"):
        load_checkpoint(_vit(), tmp_path / "nope.pth")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="junk.safetensors: not a readable safetensors file"):
        load_checkpoint(_vit(), junk)
    torch.save([1, 2], path)
    with pytest.raises(ValueError, match="expected a state dict, got list"):
        load_checkpoint(_vit(), path)


def test_resnet_refusals_name_the_files_timm_keys(tmp_path):
    path = tmp_path / "r18.pth"
    sd = timm_resnet_state_dict((2, 2, 2, 2))
    torch.save(sd, path)
    with pytest.raises(ValueError) as err:
        load_checkpoint(create_anchor("resnet_digits_tiny"), path)
    assert _one_line(err) == (f"checkpoint {path}: key 'conv1.weight' has shape (64, 3, 7, 7), model expects "
                              "(8, 1, 3, 3) (another architecture?)")
    torch.save(timm_resnet_state_dict((3, 4, 6, 3), bottleneck=True), path)
    with pytest.raises(ValueError) as err:
        load_checkpoint(create_anchor("resnet18", img_size=32), path)
    assert "key 'layer1.0.conv1.weight' has shape (64, 64, 1, 1), model expects (64, 64, 3, 3)" in _one_line(err)
    torch.save({**sd, "layer5.0.conv1.weight": torch.zeros(2, 2, 1, 1)}, path)
    with pytest.raises(ValueError) as err:
        load_checkpoint(create_anchor("resnet18", img_size=32), path)
    assert "unexpected key 'layer5.0.conv1.weight' with shape (2, 2, 1, 1)" in _one_line(err)
    torch.save({k: v for k, v in sd.items() if k != "layer3.1.bn2.running_var"}, path)
    with pytest.raises(ValueError) as err:
        load_checkpoint(create_anchor("resnet18", img_size=32), path)
    assert "missing key 'layer3.1.bn2.running_var' (model expects shape (256,))" in _one_line(err)


# --------------------------------------------------------------------------- timm ResNets
def test_timm_resnet18_matches_a_functional_reference(tmp_path):
    layers = (2, 2, 2, 2)
    sd = timm_resnet_state_dict(layers, seed=1)
    path = tmp_path / "resnet18.safetensors"
    save_file(sd, str(path))
    model = create_anchor("resnet18", img_size=32).eval()
    report = load_checkpoint(model, path)
    assert report.key_format == "timm_resnet" and not report.adapted
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = model(x), reference_resnet_forward(sd, x, layers)
    assert got.shape == (2, 1000)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    _same_weights(anchor_to_timm_resnet(model.state_dict(), model.stage_depths), sd)  # names map back one to one


def test_timm_resnet18_adapted_to_digits(tmp_path):
    layers = (2, 2, 2, 2)
    sd = timm_resnet_state_dict(layers, seed=2)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items() if "num_batches" not in k}}, path)
    model = create_anchor("resnet18", img_size=32, in_chans=1, num_classes=10).eval()
    fresh_fc = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("fc.")}
    report = load_checkpoint(model, path)
    assert (report.head, report.input_chans, report.input_conv_method) == ((1000, 10), (3, 1), "sum")
    assert report.wrapper == "state_dict" and report.prefixes_removed == ("module.",)
    ref_sd = {**sd, "conv1.weight": sd["conv1.weight"].sum(1, keepdim=True), **fresh_fc}
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_resnet_forward(ref_sd, x, layers), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset, layers, bottleneck", [("resnet34", (3, 4, 6, 3), False),
                                                         ("resnet50", (3, 4, 6, 3), True)])
def test_timm_resnet34_and_50_load_and_match(tmp_path, preset, layers, bottleneck):
    sd = timm_resnet_state_dict(layers, bottleneck=bottleneck, num_classes=10, seed=3)
    path = tmp_path / f"{preset}.pth"
    torch.save(sd, path)
    model = create_anchor(preset, img_size=32, num_classes=10).eval()
    assert not load_checkpoint(model, path).adapted
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_resnet_forward(sd, x, layers), rtol=1e-5, atol=1e-5)


def test_resnet_presets_configs_and_stitch_api():
    for name in RESNET_PRESETS:  # the digits presets' configs keep their keys
        assert set(create_anchor(name).config) == {"family", "widths", "stage_depths", "in_chans", "num_classes",
                                                   "img_size", "stem_stride"}
    r50 = create_anchor("resnet50", img_size=64, in_chans=1, num_classes=10).eval()
    assert r50.config["stem"] == "conv7x7_maxpool" and r50.config["block"] == "bottleneck"
    assert r50.feature_dims == (64,) + (256,) * 3 + (512,) * 4 + (1024,) * 6 + (2048,) * 3
    x = torch.randn(2, 1, 64, 64)
    feats = r50.block_features(x)
    assert [f.shape[1] for f in feats] == list(r50.feature_dims)
    assert [f.shape[-1] for f in feats] == list(r50.feature_sizes())
    rebuilt = build_anchor(json.loads(json.dumps(r50.config))).eval()
    rebuilt.load_state_dict(r50.state_dict())
    torch.testing.assert_close(rebuilt(x), r50(x), rtol=0, atol=0)
    embed, tail = r50.export_embed().eval(), r50.export_tail().eval()
    torch.testing.assert_close(tail.forward_head(r50.forward_blocks(embed(x))), r50(x))
    r18 = create_anchor("resnet18")
    assert r18.config["in_chans"] == 3 and r18.config["num_classes"] == 1000 and r18.config["img_size"] == 224
    assert r18.stitch_signature()["stem"] == "conv7x7_maxpool"
    assert create_anchor("resnet_digits_tiny").stitch_signature()["stem"] == "conv3x3"


# --------------------------------------------------------------------------- normalisation
def test_every_preset_has_a_pretrained_cfg():
    small = {**{n: dict(depth=1) for n in VIT_PRESETS}, **{n: dict(stage_depths=(1,) * 4) for n in TIMM_RESNET_PRESETS}}
    for name in list(VIT_PRESETS) + list(RESNET_PRESETS) + list(TIMM_RESNET_PRESETS):
        cfg = pretrained_cfg(name)
        model = create_anchor(name, **small.get(name, {}))
        assert cfg.input_size[0] == model.config["in_chans"] and cfg.num_classes == model.config["num_classes"]
        json.dumps(cfg.to_json())
    for name in ("deit_tiny_patch16_224", "deit_base_patch16_224", "resnet18", "resnet34", "resnet50"):
        assert pretrained_cfg(name).mean == IMAGENET_DEFAULT_MEAN == (0.485, 0.456, 0.406)
        assert pretrained_cfg(name).std == IMAGENET_DEFAULT_STD == (0.229, 0.224, 0.225)
    for name in ("vit_digits_tiny", "resnet_digits_base"):
        assert pretrained_cfg(name).mean is None and pretrained_cfg(name).std is None
    assert pretrained_cfg("resnet50").first_conv == "conv1" and pretrained_cfg("resnet50").classifier == "fc"
    with pytest.raises(ValueError, match="unknown"):
        pretrained_cfg("vit_huge")


def test_old_names_stay_importable():
    from stitching import vit

    assert vit.load_checkpoint is load_checkpoint and vit.checkpoint_filter_fn is checkpoint_filter_fn
    assert (VIT_FAMILY, RESNET_FAMILY) == ("vit", "resnet")
