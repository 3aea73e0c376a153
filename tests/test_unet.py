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


def _res_shapes(prefix: str, ch_in: int, ch_out: int, emb: int, scale_shift: bool = True) -> dict[str, tuple[int, ...]]:
    out = {
        f"{prefix}.in_layers.0.weight": (ch_in,),
        f"{prefix}.in_layers.0.bias": (ch_in,),
        f"{prefix}.in_layers.2.weight": (ch_out, ch_in, 3, 3),
        f"{prefix}.in_layers.2.bias": (ch_out,),
        f"{prefix}.emb_layers.1.weight": ((2 if scale_shift else 1) * ch_out, emb),
        f"{prefix}.emb_layers.1.bias": ((2 if scale_shift else 1) * ch_out,),
        f"{prefix}.out_layers.0.weight": (ch_out,),
        f"{prefix}.out_layers.0.bias": (ch_out,),
        f"{prefix}.out_layers.3.weight": (ch_out, ch_out, 3, 3),
        f"{prefix}.out_layers.3.bias": (ch_out,),
    }
    if ch_in != ch_out:
        out |= {f"{prefix}.skip_connection.weight": (ch_out, ch_in, 1, 1), f"{prefix}.skip_connection.bias": (ch_out,)}
    return out


def _attn_shapes(prefix: str, ch: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.norm.weight": (ch,),
        f"{prefix}.norm.bias": (ch,),
        f"{prefix}.qkv.weight": (3 * ch, ch, 1),
        f"{prefix}.qkv.bias": (3 * ch,),
        f"{prefix}.proj_out.weight": (ch, ch, 1),
        f"{prefix}.proj_out.bias": (ch,),
    }


def guided_diffusion_shapes(
    mc: int,
    mult: tuple[float, ...],
    blocks: int,
    attn_levels: set[int],
    updown: bool,
    classes: int | None,
    decoder: bool = True,
    in_ch: int = 3,
    out_ch: int = 6,
    scale_shift: bool = True,
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of guided-diffusion's UNetModel / SuperResModel / EncoderUNetModel trunk, written out
    from its documented construction loop (guided_diffusion/unet.py), not from geneval's modules.
    Widths are int(mult·mc) as there; in_ch is 6 for SuperResModel (x_t and the upsampled low-res)."""
    emb = 4 * mc
    sh = {"time_embed.0.weight": (emb, mc), "time_embed.0.bias": (emb,), "time_embed.2.weight": (emb, emb), "time_embed.2.bias": (emb,)}
    if classes is not None:
        sh["label_emb.weight"] = (classes, emb)
    ch0 = int(mult[0] * mc)
    sh |= {"input_blocks.0.0.weight": (ch0, in_ch, 3, 3), "input_blocks.0.0.bias": (ch0,)}
    n, ch, chans = 1, ch0, [ch0]
    for level, m in enumerate(mult):
        for _ in range(blocks):
            sh |= _res_shapes(f"input_blocks.{n}.0", ch, int(m * mc), emb, scale_shift)
            ch = int(m * mc)
            if level in attn_levels:
                sh |= _attn_shapes(f"input_blocks.{n}.1", ch)
            chans.append(ch)
            n += 1
        if level != len(mult) - 1:
            if updown:
                sh |= _res_shapes(f"input_blocks.{n}.0", ch, ch, emb, scale_shift)
            else:
                sh |= {f"input_blocks.{n}.0.op.weight": (ch, ch, 3, 3), f"input_blocks.{n}.0.op.bias": (ch,)}
            chans.append(ch)
            n += 1
    sh |= _res_shapes("middle_block.0", ch, ch, emb, scale_shift) | _attn_shapes("middle_block.1", ch)
    sh |= _res_shapes("middle_block.2", ch, ch, emb, scale_shift)
    if not decoder:
        return sh
    n = 0
    for level in reversed(range(len(mult))):
        for i in range(blocks + 1):
            sh |= _res_shapes(f"output_blocks.{n}.0", ch + chans.pop(), int(mc * mult[level]), emb, scale_shift)
            ch = int(mc * mult[level])
            j = 1
            if level in attn_levels:
                sh |= _attn_shapes(f"output_blocks.{n}.1", ch)
                j = 2
            if level and i == blocks:
                if updown:
                    sh |= _res_shapes(f"output_blocks.{n}.{j}", ch, ch, emb, scale_shift)
                else:
                    sh |= {f"output_blocks.{n}.{j}.conv.weight": (ch, ch, 3, 3), f"output_blocks.{n}.{j}.conv.bias": (ch,)}
            n += 1
    return sh | {"out.0.weight": (ch,), "out.0.bias": (ch,), "out.2.weight": (out_ch, ch0, 3, 3), "out.2.bias": (out_ch,)}


def guided_diffusion_keys(
    mc: int, mult: tuple[float, ...], blocks: int, attn_levels: set[int], updown: bool, classes: bool, decoder: bool = True
) -> set[str]:
    """The state-dict keys of guided_diffusion_shapes (kept for tests that only compare key sets)."""
    return set(guided_diffusion_shapes(mc, mult, blocks, attn_levels, updown, 1000 if classes else None, decoder))


def state_shapes(net: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.parametrize("updown", [True, False])
def test_unet_keys_match_guided_diffusion_structure(updown):
    cfg = UNetConfig(
        image_size=16,
        model_channels=32,
        out_channels=6,
        num_res_blocks=2,
        attention_resolutions=(8,),
        channel_mult=(1, 2),
        num_classes=10,
        num_head_channels=32,
        use_scale_shift_norm=True,
        resblock_updown=updown,
    )
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
    expected = guided_diffusion_shapes(
        c.model_channels,
        c.channel_mult,
        c.num_res_blocks,
        attn_levels,
        c.resblock_updown,
        c.num_classes,
        in_ch=6 if c.super_res else 3,
        out_ch=c.out_channels,
        scale_shift=c.use_scale_shift_norm,
    )
    assert state_shapes(net) == expected
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
    expected = set(guided_diffusion_shapes(c.model_channels, c.channel_mult, c.num_res_blocks, attn_levels, c.resblock_updown, None, decoder=False))
    expected |= {
        "out.0.weight",
        "out.0.bias",
        "out.2.positional_embedding",
        "out.2.qkv_proj.weight",
        "out.2.qkv_proj.bias",
        "out.2.c_proj.weight",
        "out.2.c_proj.bias",
    }
    assert set(net.state_dict()) == expected
    assert count_parameters(net) == p.num_parameters
    final = c.image_size // 2 ** (len(c.channel_mult) - 1)
    assert tuple(net.state_dict()["out.2.positional_embedding"].shape) == (int(c.model_channels * c.channel_mult[-1]), final**2 + 1)


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
    cfg = UNetConfig(
        image_size=8,
        model_channels=32,
        out_channels=6,
        num_res_blocks=1,
        attention_resolutions=(4,),
        channel_mult=(1, 2),
        num_classes=5,
        num_heads=2,
        use_scale_shift_norm=True,
        resblock_updown=True,
    )
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
    cfg = ClassifierConfig(
        image_size=16, model_channels=32, out_channels=7, num_res_blocks=1, attention_resolutions=(8,), channel_mult=(1, 2), num_head_channels=32
    )
    net = init_random_(EncoderUNet(cfg).eval(), seed=0)
    with torch.no_grad():
        logits = net(torch.randn(2, 3, 16, 16), torch.tensor([5, 50]))
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
