"""ADM UNet / classifier: guided-diffusion key structure, attention orders, presets, fp32 norms."""

from __future__ import annotations

import math

import pytest
import torch

from geneval.models.classifier import ClassifierConfig, EncoderUNet
from geneval.models.nn import AttentionBlock, GroupNorm32
from geneval.models.presets import PRESETS
from geneval.models.unet import UNetConfig, UNetModel, count_parameters, init_random_


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- independent key structure


def _res_keys(prefix: str, ch_in: int, ch_out: int) -> set[str]:
    keys = {f"{prefix}.in_layers.0.weight", f"{prefix}.in_layers.0.bias", f"{prefix}.in_layers.2.weight",
            f"{prefix}.in_layers.2.bias", f"{prefix}.emb_layers.1.weight", f"{prefix}.emb_layers.1.bias",
            f"{prefix}.out_layers.0.weight", f"{prefix}.out_layers.0.bias", f"{prefix}.out_layers.3.weight",
            f"{prefix}.out_layers.3.bias"}
    if ch_in != ch_out:
        keys |= {f"{prefix}.skip_connection.weight", f"{prefix}.skip_connection.bias"}
    return keys


def _attn_keys(prefix: str) -> set[str]:
    return {f"{prefix}.{n}.{p}" for n in ("norm", "qkv", "proj_out") for p in ("weight", "bias")}


def guided_diffusion_keys(mc: int, mult: tuple[int, ...], blocks: int, attn_levels: set[int], updown: bool,
                          classes: bool, decoder: bool = True) -> set[str]:
    """The state-dict keys guided-diffusion's UNetModel/EncoderUNetModel would have, written out
    from its documented structure (not from geneval's modules)."""
    keys = {"time_embed.0.weight", "time_embed.0.bias", "time_embed.2.weight", "time_embed.2.bias",
            "input_blocks.0.0.weight", "input_blocks.0.0.bias"}
    if classes:
        keys.add("label_emb.weight")
    n, ch, chans = 1, mc * mult[0], [mc * mult[0]]
    for level, m in enumerate(mult):
        for _ in range(blocks):
            keys |= _res_keys(f"input_blocks.{n}.0", ch, mc * m)
            ch = mc * m
            if level in attn_levels:
                keys |= _attn_keys(f"input_blocks.{n}.1")
            chans.append(ch)
            n += 1
        if level != len(mult) - 1:
            keys |= _res_keys(f"input_blocks.{n}.0", ch, ch) if updown else {f"input_blocks.{n}.0.op.weight", f"input_blocks.{n}.0.op.bias"}
            chans.append(ch)
            n += 1
    keys |= _res_keys("middle_block.0", ch, ch) | _attn_keys("middle_block.1") | _res_keys("middle_block.2", ch, ch)
    if not decoder:
        return keys
    n = 0
    for level in reversed(range(len(mult))):
        for i in range(blocks + 1):
            keys |= _res_keys(f"output_blocks.{n}.0", ch + chans.pop(), mc * mult[level])
            ch = mc * mult[level]
            j = 1
            if level in attn_levels:
                keys |= _attn_keys(f"output_blocks.{n}.1")
                j = 2
            if level and i == blocks:
                keys |= _res_keys(f"output_blocks.{n}.{j}", ch, ch) if updown else {f"output_blocks.{n}.{j}.conv.weight", f"output_blocks.{n}.{j}.conv.bias"}
            n += 1
    return keys | {"out.0.weight", "out.0.bias", "out.2.weight", "out.2.bias"}


@pytest.mark.parametrize("updown", [True, False])
def test_unet_keys_match_guided_diffusion_structure(updown):
    cfg = UNetConfig(image_size=16, model_channels=32, out_channels=6, num_res_blocks=2, attention_resolutions=(8,),
                     channel_mult=(1, 2), num_classes=10, num_head_channels=32, use_scale_shift_norm=True, resblock_updown=updown)
    with torch.device("meta"):
        net = UNetModel(cfg)
    expected = guided_diffusion_keys(32, (1, 2), 2, {1}, updown, classes=True)
    assert set(net.state_dict()) == expected
    sd = net.state_dict()
    assert tuple(sd["out.2.weight"].shape) == (6, 32, 3, 3)
    assert tuple(sd["input_blocks.4.1.qkv.weight"].shape) == (3 * 64, 64, 1)  # level 1 (8 px), Conv1d
    assert tuple(sd["input_blocks.1.0.emb_layers.1.weight"].shape) == (2 * 32, 128)  # scale and shift


@pytest.mark.parametrize("name", [n for n, p in PRESETS.items() if p.kind == "unet"])
def test_preset_keys_and_parameter_counts(name):
    p = PRESETS[name]
    c = p.config
    with torch.device("meta"):
        net = UNetModel(c)
    attn_levels = {lvl for lvl in range(len(c.channel_mult)) if c.image_size // 2**lvl in c.attention_resolutions}
    expected = guided_diffusion_keys(c.model_channels, tuple(int(m) for m in c.channel_mult), c.num_res_blocks,
                                     attn_levels, c.resblock_updown, c.num_classes is not None)
    assert set(net.state_dict()) == expected
    assert count_parameters(net) == p.num_parameters
    if name == "adm-64":
        assert round(p.num_parameters / 1e6) == 296  # the figure quoted for ADM 64x64


@pytest.mark.parametrize("name", [n for n, p in PRESETS.items() if p.kind == "classifier"])
def test_classifier_preset_keys_and_counts(name):
    p = PRESETS[name]
    c = p.config
    with torch.device("meta"):
        net = EncoderUNet(c)
    attn_levels = {lvl for lvl in range(len(c.channel_mult)) if c.image_size // 2**lvl in c.attention_resolutions}
    expected = guided_diffusion_keys(c.model_channels, tuple(int(m) for m in c.channel_mult), c.num_res_blocks,
                                     attn_levels, c.resblock_updown, classes=False, decoder=False)
    expected |= {"out.0.weight", "out.0.bias", "out.2.positional_embedding", "out.2.qkv_proj.weight",
                 "out.2.qkv_proj.bias", "out.2.c_proj.weight", "out.2.c_proj.bias"}
    assert set(net.state_dict()) == expected
    assert count_parameters(net) == p.num_parameters
    final = c.image_size // 2 ** (len(c.channel_mult) - 1)
    assert tuple(net.state_dict()["out.2.positional_embedding"].shape) == (c.model_channels * c.channel_mult[-1], final**2 + 1)


# ---------------------------------------------------------------- attention orders


def _direct_attention(x: torch.Tensor, block: AttentionBlock, heads: int, legacy: bool) -> torch.Tensor:
    """Textbook multi-head attention with the channel layout of each order, via SDPA."""
    b, c, hgt, wid = x.shape
    h = block.norm(x.reshape(b, c, -1))
    qkv = torch.nn.functional.conv1d(h, block.qkv.weight, block.qkv.bias)  # (b, 3c, T)
    d = c // heads
    if legacy:
        per_head = qkv.reshape(b, heads, 3, d, -1)  # per head [q|k|v]
        q, k, v = per_head[:, :, 0], per_head[:, :, 1], per_head[:, :, 2]
    else:
        q, k, v = (z.reshape(b, heads, d, -1) for z in qkv.chunk(3, dim=1))
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
    out = out.transpose(-1, -2).reshape(b, c, -1)
    out = torch.nn.functional.conv1d(out, block.proj_out.weight, block.proj_out.bias)
    return (x.reshape(b, c, -1) + out).reshape(b, c, hgt, wid)


def test_attention_orders_differ_and_match_direct_computation():
    legacy = init_random_(AttentionBlock(64, num_heads=4, use_new_attention_order=False), seed=1, std=0.2)
    new = AttentionBlock(64, num_heads=4, use_new_attention_order=True)
    new.load_state_dict(legacy.state_dict())
    x = torch.randn(2, 64, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out_legacy, out_new = legacy(x), new(x)
        assert (out_legacy - out_new).abs().max() > 1e-2  # same weights, different head layout
        torch.testing.assert_close(out_legacy, _direct_attention(x, legacy, 4, legacy=True), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out_new, _direct_attention(x, new, 4, legacy=False), atol=1e-5, rtol=1e-5)


def test_head_channels_override_num_heads():
    assert AttentionBlock(128, num_heads=1, num_head_channels=64).num_heads == 2
    assert AttentionBlock(128, num_heads=4).num_heads == 4


# ---------------------------------------------------------------- forward behaviour


def test_forward_shapes_learned_sigma_and_labels_matter():
    cfg = UNetConfig(image_size=8, model_channels=32, out_channels=6, num_res_blocks=1, attention_resolutions=(4,),
                     channel_mult=(1, 2), num_classes=5, num_heads=2, use_scale_shift_norm=True, resblock_updown=True)
    net = init_random_(UNetModel(cfg).eval(), seed=0)
    assert cfg.learn_sigma
    x = torch.randn(3, 3, 8, 8)
    t = torch.tensor([0, 10, 99])
    with torch.no_grad():
        a = net(x, t, torch.tensor([0, 1, 2]))
        b = net(x, t, torch.tensor([4, 1, 2]))  # 4 = a null slot: just another embedding row
    assert a.shape == (3, 6, 8, 8)
    assert (a[0] - b[0]).abs().max() > 1e-4 and torch.equal(a[1:], b[1:])
    with pytest.raises(ValueError):
        net(x, t)  # class-conditional nets need labels


def test_groupnorm32_computes_in_float32():
    gn = GroupNorm32(32, 64)
    x = (torch.randn(2, 64, 4, 4) * 100 + 1000).to(torch.bfloat16)
    ref = torch.nn.functional.group_norm(x.float(), 32, gn.weight, gn.bias, gn.eps).to(torch.bfloat16)
    out = gn(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ref)


def test_timestep_embedding_is_cos_then_sin():
    from geneval.models.nn import timestep_embedding

    emb = timestep_embedding(torch.tensor([3.0]), 8)
    freqs = [math.exp(-math.log(10000) * i / 4) for i in range(4)]
    want = [math.cos(3 * f) for f in freqs] + [math.sin(3 * f) for f in freqs]
    torch.testing.assert_close(emb[0], torch.tensor(want), atol=1e-6, rtol=0)


def test_classifier_forward():
    cfg = ClassifierConfig(image_size=16, model_channels=32, out_channels=7, num_res_blocks=1, attention_resolutions=(8,),
                           channel_mult=(1, 2), num_head_channels=32)
    net = init_random_(EncoderUNet(cfg).eval(), seed=0)
    with torch.no_grad():
        logits = net(torch.randn(2, 3, 16, 16), torch.tensor([5, 50]))
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
