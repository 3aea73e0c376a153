"""ADM upsamplers, 512 models, classifier pools, --model-flags, release detection and cascades.

Key/shape references: `guided_diffusion_shapes` (tests/test_unet.py) enumerates the state dict of
guided-diffusion's UNetModel / SuperResModel / EncoderUNetModel by following the construction loop
of guided_diffusion/unet.py (22e0df8); the architecture numbers below are typed from the README
flags and script_util's channel_mult tables, not read from geneval's presets.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geneval.errors import GenevalError
from geneval.models import presets as presets_mod
from geneval.models.classifier import ClassifierConfig, EncoderUNet
from geneval.models.formats import LoadedModel, load_model
from geneval.models.model_flags import parse_model_flags
from geneval.models.presets import PRESETS, Preset, match_release, preset_table
from geneval.models.unet import UNetConfig, UNetModel, count_parameters, init_random_
from geneval.sampling.cascade import CascadeGenerator, UpsamplerSampling, load_cascade, stage_seed
from geneval.sampling.generate import SamplingConfig, generate_range
from geneval.sampling.schedules import DiffusionConfig

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_unet import guided_diffusion_shapes, state_shapes

pytestmark = pytest.mark.usefixtures("one_thread")


def _levels(size: int, attn_px: tuple[int, ...], n_levels: int) -> set[int]:
    return {lvl for lvl in range(n_levels) if size // 2**lvl in attn_px}


# ---------------------------------------------------------------- published architectures

# name: (model_channels, channel_mult, res blocks, size, attention px, resblock_updown, in_ch, heads rule)
# heads rule: ("heads", n) for --num_heads n, ("head_channels", c) for --num_head_channels c.
PUBLISHED = {
    "adm-upsampler-64-256": (192, (1, 1, 2, 2, 4, 4), 2, 256, (32, 16, 8), True, 6, ("heads", 4)),
    "adm-upsampler-128-512": (192, (1, 1, 2, 2, 4, 4), 2, 512, (32, 16), True, 6, ("head_channels", 64)),
    "adm-512": (256, (0.5, 1, 1, 2, 2, 4, 4), 2, 512, (32, 16, 8), True, 3, ("head_channels", 64)),
    "iddpm-upsampler-64-256": (192, (1, 1, 2, 2, 4, 4), 2, 256, (16, 8), False, 6, ("heads", 4)),
}
# Parameter counts the authors quote: ADM paper hyperparameter table (512: 559M, 64->256: 312M,
# 128->512: 309M); improved-diffusion README ("280M parameters" upsampler).
QUOTED_M = {"adm-512": 559, "adm-upsampler-64-256": 312, "adm-upsampler-128-512": 309, "iddpm-upsampler-64-256": 280}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_upsampler_and_512_keys_shapes_heads_match_published_flags(name):
    mc, mult, blocks, size, attn_px, updown, in_ch, heads = PUBLISHED[name]
    p = PRESETS[name]
    with torch.device("meta"):
        net = UNetModel(p.config)
    expected = guided_diffusion_shapes(mc, mult, blocks, _levels(size, attn_px, len(mult)), updown, 1000, in_ch=in_ch, out_ch=6)
    assert state_shapes(net) == expected  # every key and every shape
    n_params = sum(math.prod(s) for s in expected.values())
    assert count_parameters(net) == n_params == p.num_parameters
    assert round(n_params / 1e6) == QUOTED_M[name]
    attn = [m for m in net.modules() if type(m).__name__ == "AttentionBlock"]
    assert attn and all(a.legacy_order for a in attn)  # use_new_attention_order is only set for 64x64
    for a in attn:
        ch = a.qkv.weight.shape[1]
        assert a.num_heads == (heads[1] if heads[0] == "heads" else ch // heads[1])
    assert p.config.super_res == (in_ch == 6)
    if p.config.super_res:
        assert p.config.low_res_size == {"adm-upsampler-128-512": 128}.get(name, 64)


def test_512_classifier_keys_match_published_flags():
    p = PRESETS["adm-classifier-512"]
    with torch.device("meta"):
        net = EncoderUNet(p.config)
    mult = (0.5, 1, 1, 2, 2, 4, 4)
    expected = guided_diffusion_shapes(128, mult, 2, _levels(512, (32, 16, 8), 7), True, None, decoder=False)
    expected |= {
        "out.0.weight": (512,),
        "out.0.bias": (512,),
        "out.2.positional_embedding": (512, 8 * 8 + 1),
        "out.2.qkv_proj.weight": (1536, 512, 1),
        "out.2.qkv_proj.bias": (1536,),
        "out.2.c_proj.weight": (1000, 512, 1),
        "out.2.c_proj.bias": (1000,),
    }
    assert state_shapes(net) == expected
    assert count_parameters(net) == p.num_parameters


def test_presets_reproduce_the_earlier_hand_written_configs():
    """The presets that existed before were written by hand from REFERENCE §5; the flag
    parser must rebuild them (num_heads is irrelevant where num_head_channels is set)."""
    common = dict(in_channels=3, out_channels=6, attention_resolutions=(32, 16, 8), num_classes=1000, use_scale_shift_norm=True, resblock_updown=True)
    want = {
        "adm-64": UNetConfig(
            image_size=64,
            model_channels=192,
            num_res_blocks=3,
            channel_mult=(1, 2, 3, 4),
            num_head_channels=64,
            use_new_attention_order=True,
            dropout=0.1,
            num_heads=4,
            **common,
        ),
        "adm-128": UNetConfig(image_size=128, model_channels=256, num_res_blocks=2, channel_mult=(1, 1, 2, 3, 4), num_heads=4, **common),
        "adm-256": UNetConfig(
            image_size=256, model_channels=256, num_res_blocks=2, channel_mult=(1, 1, 2, 2, 4, 4), num_head_channels=64, num_heads=4, **common
        ),
        "iddpm-cifar10": UNetConfig(
            image_size=32,
            model_channels=128,
            out_channels=6,
            num_res_blocks=3,
            attention_resolutions=(16, 8),
            dropout=0.3,
            channel_mult=(1, 2, 2, 2),
            num_heads=4,
            use_scale_shift_norm=True,
        ),
    }
    for name, cfg in want.items():
        assert PRESETS[name].config == cfg, name
    assert PRESETS["iddpm-cifar10"].diffusion == DiffusionConfig(4000, "cosine", variance_type="learned_range", rescale_timesteps=True)
    assert PRESETS["adm-64"].diffusion == DiffusionConfig(1000, "cosine", variance_type="learned_range")
    # improved-diffusion models whose README sets --rescale_timesteps False, and those that keep its default True
    assert not PRESETS["iddpm-imagenet64-cond"].diffusion.rescale_timesteps
    assert PRESETS["iddpm-imagenet64-uncond"].diffusion.rescale_timesteps
    assert PRESETS["iddpm-lsun-bedroom"].config.use_scale_shift_norm is False
    assert PRESETS["adm-lsun-horse-nodropout"].config.dropout == 0.0 and PRESETS["adm-lsun-horse"].config.dropout == 0.1
    assert PRESETS["adm-lsun-bedroom"].default_respacing == "1000"
    assert round(PRESETS["iddpm-imagenet64-cond"].num_parameters / 1e7) * 10 == 270  # README: "270M parameters"


# ---------------------------------------------------------------- release file names / hashes


def test_every_release_file_name_selects_its_preset():
    names = {
        "64x64_diffusion.pt": "adm-64",
        "128x128_diffusion.pt": "adm-128",
        "256x256_diffusion.pt": "adm-256",
        "256x256_diffusion_uncond.pt": "adm-256-uncond",
        "512x512_diffusion.pt": "adm-512",
        "64_256_upsampler.pt": "adm-upsampler-64-256",
        "128_512_upsampler.pt": "adm-upsampler-128-512",
        "64x64_classifier.pt": "adm-classifier-64",
        "128x128_classifier.pt": "adm-classifier-128",
        "256x256_classifier.pt": "adm-classifier-256",
        "512x512_classifier.pt": "adm-classifier-512",
        "lsun_bedroom.pt": "adm-lsun-bedroom",
        "lsun_cat.pt": "adm-lsun-cat",
        "lsun_horse.pt": "adm-lsun-horse",
        "lsun_horse_nodropout.pt": "adm-lsun-horse-nodropout",
        "imagenet64_uncond_100M_1500K.pt": "iddpm-imagenet64-uncond",
        "imagenet64_uncond_vlb_100M_1500K.pt": "iddpm-imagenet64-uncond-vlb",
        "imagenet64_cond_270M_250K.pt": "iddpm-imagenet64-cond",
        "cifar10_uncond_50M_500K.pt": "iddpm-cifar10",
        "cifar10_uncond_vlb_50M_500K.pt": "iddpm-cifar10-vlb",
        "upsample_cond_500K.pt": "iddpm-upsampler-64-256",
        "lsun_uncond_100M_1200K_bs128.pt": "iddpm-lsun-bedroom",
        "lsun_uncond_100M_2400K_bs64.pt": "iddpm-lsun-bedroom-2400k",
    }
    for file, preset in names.items():
        m = match_release(file)
        assert m is not None and m.preset.name == preset and m.matched_by == "file name", file
    assert {p.name for p in PRESETS.values()} == set(names.values())  # every preset is a release
    assert match_release("model.pt") is None and match_release("64x64_diffusion (1).pt") is None
    sha = PRESETS["adm-256-uncond"].sha256
    m = match_release("renamed.pt", sha)
    assert m.preset.name == "adm-256-uncond" and m.matched_by == "sha256" and m.sha256_verified
    assert match_release("256x256_diffusion_uncond.pt", "0" * 64).sha256_verified is False
    rows = preset_table()
    assert [r["name"] for r in rows] == list(PRESETS)
    assert {r["kind"] for r in rows} == {"unet", "upsampler", "classifier"}


def _tiny_release(monkeypatch, tmp_path, file_name: str, **cfg_kw):
    """Register a tiny architecture as if it were a published release, and write its checkpoint."""
    flags = (
        "--image_size 8 --num_channels 32 --channel_mult 1,2 --num_res_blocks 1 --attention_resolutions 4 "
        "--num_heads 2 --learn_sigma True --diffusion_steps 50"
    )
    parsed = parse_model_flags(flags)
    preset = Preset("tiny-release", "unet", parsed.config, parsed.diffusion, "tiny", 0, files=(file_name,), flags=flags)
    monkeypatch.setitem(presets_mod.PRESETS, "tiny-release", preset)
    monkeypatch.setitem(presets_mod._BY_FILE, file_name, preset)
    net = init_random_(UNetModel(parsed.config), seed=3)
    torch.save(net.state_dict(), tmp_path / file_name)
    return net, flags


def test_release_file_selects_preset_and_refuses_contradicting_flags(monkeypatch, tmp_path):
    net, flags = _tiny_release(monkeypatch, tmp_path, "tiny_release.pt")
    path = tmp_path / "tiny_release.pt"
    lm = load_model(path)  # no preset, no flags: the file name says which release it is
    assert lm.preset == "tiny-release" and lm.info["release"] == {"preset": "tiny-release", "matched_by": "file name", "sha256_verified": None}
    assert lm.net.input_blocks[3][1].num_heads == 2
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 40])
    with torch.no_grad():
        assert torch.equal(lm.net(x, t), net(x, t))
    # Head count and attention order are not in the state dict: only the release check catches them.
    with pytest.raises(GenevalError, match=r"contradict the published tiny-release checkpoint tiny_release.pt: num_heads: flags give 4"):
        load_model(path, model_flags=flags.replace("--num_heads 2", "--num_heads 4"))
    with pytest.raises(GenevalError, match="use_new_attention_order: flags give True"):
        load_model(path, model_flags=flags + " --use_new_attention_order True")
    with pytest.raises(GenevalError, match="overrides .*num_heads.* contradict the published tiny-release"):
        load_model(path, num_heads=1)
    assert load_model(path, model_flags=flags).preset == "tiny-release"  # agreeing flags are fine
    assert load_model(path, model_flags=flags.replace("--channel_mult 1,2", "--channel_mult 1,2.0")).preset == "tiny-release"
    with pytest.raises(GenevalError, match="is the published tiny-release checkpoint .*not adm-64"):
        load_model(path, preset="adm-64")
    # The same bytes under another name are found by a pinned sha256.
    renamed = tmp_path / "whatever.pt"
    renamed.write_bytes(path.read_bytes())
    monkeypatch.setitem(presets_mod._BY_SHA, load_model(path).weights_sha256, presets_mod.PRESETS["tiny-release"])
    lm2 = load_model(renamed)
    assert lm2.preset == "tiny-release" and lm2.info["release"]["matched_by"] == "sha256"


def test_real_release_names_pick_real_presets(tmp_path):
    """A (tiny) file carrying a published name is checked against that release's architecture."""
    net = UNetModel(UNetConfig(image_size=8, model_channels=32, channel_mult=(1,), attention_resolutions=()))
    torch.save(net.state_dict(), tmp_path / "64_256_upsampler.pt")
    with pytest.raises(GenevalError, match="does not match preset adm-upsampler-64-256"):
        load_model(tmp_path / "64_256_upsampler.pt")


# ---------------------------------------------------------------- --model-flags


def test_flag_string_and_toml_table_agree_and_bad_names_fail():
    text = (
        "--attention_resolutions 32,16 --class_cond True --diffusion_steps 1000 --large_size 512 --small_size 128 "
        "--learn_sigma True --noise_schedule linear --num_channels 192 --num_head_channels 64 --num_res_blocks 2 "
        "--resblock_updown True --use_fp16 True --use_scale_shift_norm True"
    )
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (the TOML-table form of --model-flags)
    table = tomllib.loads("""
        attention_resolutions = "32,16"
        class_cond = true
        diffusion_steps = 1000
        large_size = 512
        small_size = 128
        learn_sigma = true
        noise_schedule = "linear"
        num_channels = 192
        num_head_channels = 64
        num_res_blocks = 2
        resblock_updown = true
        use_fp16 = true
        use_scale_shift_norm = true
    """)
    a, b = parse_model_flags(text), parse_model_flags(table)
    assert a.config == b.config == PRESETS["adm-upsampler-128-512"].config and a.diffusion == b.diffusion
    assert a.diffusion == DiffusionConfig(1000, "linear", variance_type="learned_range")
    assert parse_model_flags("--image_size 64").diffusion.variance_type == "fixed_large"  # guided-diffusion without learn_sigma
    assert parse_model_flags("--image_size 64 --sigma_small True").diffusion.variance_type == "fixed_small"
    assert parse_model_flags("--image_size 64 --defaults improved-diffusion").diffusion.rescale_timesteps
    assert parse_model_flags("--image_size=64 --predict_xstart yes").diffusion.prediction_type == "x0"
    with pytest.raises(GenevalError, match="unknown model flag --num_chanels"):
        parse_model_flags("--num_chanels 64")
    with pytest.raises(GenevalError, match="--timestep_respacing is a sampling option.*--steps/--respacing"):
        parse_model_flags("--timestep_respacing 250")
    with pytest.raises(GenevalError, match="expected a boolean"):
        parse_model_flags("--learn_sigma maybe")
    with pytest.raises(GenevalError, match="not --image_size"):
        parse_model_flags("--image_size 64 --large_size 256")
    with pytest.raises(GenevalError, match="has no value"):
        parse_model_flags("--image_size")


def test_model_flags_load_a_non_preset_checkpoint(tmp_path):
    flags = (
        "--image_size 16 --num_channels 32 --channel_mult 1,2 --num_res_blocks 1 --attention_resolutions 8 "
        "--num_head_channels 16 --class_cond True --num_classes 7 --learn_sigma True --diffusion_steps 100 "
        "--noise_schedule cosine --use_new_attention_order True --resblock_updown True"
    )
    cfg = parse_model_flags(flags).config
    net = init_random_(UNetModel(cfg), seed=1)
    torch.save(net.state_dict(), tmp_path / "my_model.pt")
    lm = load_model(tmp_path / "my_model.pt", model_flags=flags)
    assert lm.preset is None and lm.num_classes == 7 and lm.info["model_flags"]["flags"]["num_channels"] == 32
    assert lm.diffusion == DiffusionConfig(100, "cosine", variance_type="learned_range")
    assert all(not a.legacy_order and a.num_heads == a.qkv.weight.shape[1] // 16 for a in lm.net.modules() if type(a).__name__ == "AttentionBlock")
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([1, 90]), torch.tensor([0, 6])
    with torch.no_grad():
        assert torch.equal(lm.net(x, t, y), net(x, t, y))
    with pytest.raises(GenevalError, match="does not match the architecture given by --model-flags"):
        load_model(tmp_path / "my_model.pt", model_flags=flags.replace("--num_channels 32", "--num_channels 64"))
    with pytest.raises(GenevalError, match="pass a preset .* or the authors' flags"):
        load_model(tmp_path / "my_model.pt")


# ---------------------------------------------------------------- super-resolution forward


def _bilinear_up(img: np.ndarray, out: int) -> np.ndarray:
    """Half-pixel bilinear upsampling (align_corners False, edge clamped), written out in numpy."""
    n = img.shape[-1]
    src = np.clip((np.arange(out) + 0.5) * n / out - 0.5, 0, None)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    w = src - i0
    rows = img[..., i0, :] * (1 - w)[:, None] + img[..., i1, :] * w[:, None]
    return rows[..., i0] * (1 - w) + rows[..., i1] * w


def test_super_res_model_concatenates_bilinear_low_res_after_x_t():
    cfg = UNetConfig(
        image_size=16,
        model_channels=32,
        out_channels=6,
        num_res_blocks=1,
        attention_resolutions=(8,),
        channel_mult=(1, 2),
        num_classes=4,
        num_heads=2,
        use_scale_shift_norm=True,
        resblock_updown=True,
        low_res_size=8,
    )
    net = init_random_(UNetModel(cfg).eval(), seed=0)
    assert tuple(net.input_blocks[0][0].weight.shape) == (32, 6, 3, 3)
    seen = {}
    net.input_blocks[0][0].register_forward_hook(lambda m, inp, out: seen.__setitem__("x", inp[0]))
    g = torch.Generator().manual_seed(0)
    x, low = torch.randn(2, 3, 16, 16, generator=g), torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    with torch.no_grad():
        out = net(x, torch.tensor([5, 500]), torch.tensor([1, 3]), low_res=low)
    assert out.shape == (2, 6, 16, 16)
    assert torch.equal(seen["x"][:, :3], x)
    np.testing.assert_allclose(seen["x"][:, 3:].numpy(), _bilinear_up(low.double().numpy(), 16), atol=1e-6, rtol=0)
    with pytest.raises(GenevalError, match="super-resolution model"):
        net(x, torch.tensor([5, 500]), torch.tensor([1, 3]))


# ---------------------------------------------------------------- classifier pools


def _trunk_widths(mc: int, mult: tuple[int, ...], blocks: int) -> list[int]:
    """Widths of every input block's output then the middle block's (guided-diffusion's _feature_size terms)."""
    widths = [mc * mult[0]]
    for level, m in enumerate(mult):
        widths += [mc * m] * blocks
        if level != len(mult) - 1:
            widths.append(mc * m)
    return widths + [mc * mult[-1]]


HEADS = {
    "attention": lambda ch, fs, k: {
        "out.0.weight": (ch,),
        "out.0.bias": (ch,),
        "out.2.positional_embedding": (ch, 4 * 4 + 1),
        "out.2.qkv_proj.weight": (3 * ch, ch, 1),
        "out.2.qkv_proj.bias": (3 * ch,),
        "out.2.c_proj.weight": (k, ch, 1),
        "out.2.c_proj.bias": (k,),
    },
    "adaptive": lambda ch, fs, k: {"out.0.weight": (ch,), "out.0.bias": (ch,), "out.3.weight": (k, ch, 1, 1), "out.3.bias": (k,)},
    "spatial": lambda ch, fs, k: {"out.0.weight": (2048, fs), "out.0.bias": (2048,), "out.2.weight": (k, 2048), "out.2.bias": (k,)},
    "spatial_v2": lambda ch, fs, k: {
        "out.0.weight": (2048, fs),
        "out.0.bias": (2048,),
        "out.1.weight": (2048,),
        "out.1.bias": (2048,),
        "out.3.weight": (k, 2048),
        "out.3.bias": (k,),
    },
}


@pytest.mark.parametrize("pool", list(HEADS))
def test_classifier_pool_key_layout(pool):
    cfg = ClassifierConfig(
        image_size=16,
        model_channels=32,
        out_channels=7,
        num_res_blocks=1,
        attention_resolutions=(8,),
        channel_mult=(1, 2, 2),
        num_head_channels=32,
        pool=pool,
    )
    with torch.device("meta"):
        net = EncoderUNet(cfg)
    fs = sum(_trunk_widths(32, (1, 2, 2), 1))
    expected = guided_diffusion_shapes(32, (1, 2, 2), 1, {1}, True, None, decoder=False) | HEADS[pool](64, fs, 7)
    assert state_shapes(net) == expected


@pytest.mark.parametrize("pool", ["adaptive", "spatial", "spatial_v2"])
def test_classifier_pool_forward_matches_its_definition(pool):
    cfg = ClassifierConfig(
        image_size=16,
        model_channels=32,
        out_channels=7,
        num_res_blocks=1,
        attention_resolutions=(8,),
        channel_mult=(1, 2),
        num_head_channels=32,
        pool=pool,
    )
    net = init_random_(EncoderUNet(cfg).eval(), seed=2, std=0.1)
    feats = []
    for block in [*net.input_blocks, net.middle_block]:
        block.register_forward_hook(lambda m, inp, out: feats.append(out))
    x, t = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 10, 700])
    with torch.no_grad():
        logits = net(x, t)
        sd = net.state_dict()
        if pool == "adaptive":
            h = F.silu(F.group_norm(feats[-1], 32, sd["out.0.weight"], sd["out.0.bias"], 1e-5))
            want = h.mean(dim=(2, 3)) @ sd["out.3.weight"][:, :, 0, 0].T + sd["out.3.bias"]
        else:
            assert len(feats) == len(net.input_blocks) + 1
            z = torch.cat([f.mean(dim=(2, 3)) for f in feats], dim=1)  # every input block + middle
            assert z.shape[1] == sum(_trunk_widths(32, (1, 2), 1))
            z = z @ sd["out.0.weight"].T + sd["out.0.bias"]
            if pool == "spatial":
                z = F.relu(z)
                want = z @ sd["out.2.weight"].T + sd["out.2.bias"]
            else:
                z = F.silu(F.group_norm(z, 32, sd["out.1.weight"], sd["out.1.bias"], 1e-5))
                want = z @ sd["out.3.weight"].T + sd["out.3.bias"]
    assert logits.shape == (3, 7)
    torch.testing.assert_close(logits, want, atol=1e-4, rtol=1e-4)


def test_classifier_flags_load_a_spatial_v2_classifier(tmp_path):
    flags = "--image_size 64 --classifier_width 64 --classifier_depth 1 --classifier_pool spatial_v2 --num_channels 999"
    parsed = parse_model_flags(flags, kind="classifier")
    assert parsed.ignored == ("num_channels",)  # model flags given to a classifier are ignored, as in classifier_sample.py
    assert parsed.config.channel_mult == (1, 2, 3, 4) and parsed.config.out_channels == 1000
    net = init_random_(EncoderUNet(parsed.config).eval(), seed=4)
    torch.save(net.state_dict(), tmp_path / "clf.pt")
    lm = load_model(tmp_path / "clf.pt", model_flags=flags)
    assert lm.kind == "classifier" and lm.config.pool == "spatial_v2"
    with pytest.raises(GenevalError, match=r"widths \[96\] are not divisible by the classifier's 64 head channels"):
        parse_model_flags("--image_size 64 --classifier_width 32", kind="classifier")
    x, t = torch.randn(1, 3, 64, 64), torch.tensor([100])
    with torch.no_grad():
        assert torch.equal(lm.net(x, t), net(x, t))


# ---------------------------------------------------------------- cascade

BASE_FLAGS = (
    "--image_size 8 --num_channels 32 --channel_mult 1,2 --num_res_blocks 1 --attention_resolutions 4 --num_heads 2 "
    "--class_cond True --num_classes 5 --learn_sigma True --diffusion_steps 40 --noise_schedule cosine"
)
UP_FLAGS = (
    "--large_size 16 --small_size 8 --num_channels 32 --channel_mult 1,2 --num_res_blocks 1 --attention_resolutions 8 "
    "--num_heads 2 --class_cond True --num_classes 5 --learn_sigma True --diffusion_steps 40 --resblock_updown True"
)


@pytest.fixture
def cascade_files(tmp_path):
    for name, flags, seed in (("base.pt", BASE_FLAGS, 10), ("up.pt", UP_FLAGS, 11)):
        net = init_random_(UNetModel(parse_model_flags(flags).config), seed=seed, std=0.03)
        torch.save(net.state_dict(), tmp_path / name)
    return tmp_path / "base.pt", tmp_path / "up.pt"


def _cfg(**kw) -> SamplingConfig:
    return SamplingConfig(**{"n": 8, "sampler": "ddim", "steps": 3, "seed": 7, **kw})


def test_cascade_end_to_end_batch_invariant(cascade_files):
    base, up = cascade_files
    gen = load_cascade(base, up, base_flags=BASE_FLAGS, upsampler_flags=UP_FLAGS, upsampler_sampling=UpsamplerSampling(sampler="ddpm", steps=3))
    assert (gen.kind, gen.image_size, gen.image_channels, gen.num_classes) == ("cascade", 16, 3, 5)
    cfg = _cfg()
    labels = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    seen = []
    gen.upsampler.net.register_forward_pre_hook(lambda m, args, kw: seen.append(kw["low_res"]), with_kwargs=True)
    full, low = gen.generate_with_base(np.arange(8), labels, cfg)
    assert full.shape == (8, 16, 16, 3) and full.dtype == np.uint8 and low.shape == (8, 8, 8, 3)
    assert full.std() > 5  # not a constant image
    # the upsampler is conditioned on the quantised base images, read back as uint8/127.5 - 1
    lr = torch.from_numpy(low).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert all(torch.equal(s, lr) for s in seen)
    # batch composition: rows 2..5 alone, and a shuffled non-contiguous subset
    assert np.array_equal(gen.generate(np.arange(2, 6), labels[2:6], cfg), full[2:6])
    assert gen.generate(np.arange(0), np.arange(0), cfg).shape == (0, 16, 16, 3)
    pick = np.array([6, 1, 4])
    assert np.array_equal(gen.generate(pick, labels[pick], cfg), full[pick])
    # stage 1 is plain base-model sampling with the run's config
    plain = np.concatenate([b.images for b in generate_range(gen.base, cfg, labels, None, 0, 8, 8, None)])
    assert np.array_equal(plain, low)
    # the upsampler's noise is its own stream: another upsampler seed namespace changes only the final images
    assert stage_seed(7, 1) != 7 and stage_seed(7, 1) == stage_seed(7, 1) and stage_seed(8, 1) != stage_seed(7, 1)


def test_cascade_records_both_stages_and_guidance_on_both(cascade_files):
    base_p, up_p = cascade_files
    base = load_model(base_p, model_flags=BASE_FLAGS)
    base.num_classes = 6
    with pytest.raises(GenevalError, match="base model has 6 classes, the upsampler 5"):
        CascadeGenerator(base, load_model(up_p, model_flags=UP_FLAGS))
    base_m = load_model(base_p, model_flags=BASE_FLAGS)
    up_m = load_model(up_p, model_flags=UP_FLAGS)
    # CFG needs a null class: treat class 4 as the null slot of a 4-class model on both stages
    for m in (base_m, up_m):
        m.num_classes, m.null_class = 4, 4
    gen = CascadeGenerator(base_m, up_m, UpsamplerSampling(sampler="ddim", steps=2, guidance=1.5))
    cfg = _cfg(guidance=2.0)
    d = gen.describe(cfg)
    assert d["base_sampling"]["steps"] == 3 and d["base_sampling"]["guidance"] == 2.0
    assert d["upsampler_sampling"]["steps"] == 2 and d["upsampler_sampling"]["guidance"] == 1.5
    assert d["upsampler"]["image_size"] == 16 and "bilinear" in d["conventions"]["low_res_conditioning"]
    assert d["model_sha256"] == f"{base_m.weights_sha256}+{up_m.weights_sha256}" and len(d["model_sha256"]) == 129
    assert gen.describe()["upsampler_sampling"]["steps"] == 2  # without the run's config: the stored stage settings
    labels = np.array([0, 1, 2, 3, 0, 1])
    full = gen.generate(np.arange(6), labels, cfg)
    assert np.array_equal(gen.generate(np.arange(3, 6), labels[3:], cfg), full[3:])
    unguided = CascadeGenerator(base_m, up_m, UpsamplerSampling(sampler="ddim", steps=2)).generate(np.arange(6), labels, cfg)
    assert not np.array_equal(unguided, full)


def test_cascade_refuses_mismatched_models(cascade_files):
    base_p, up_p = cascade_files
    base = load_model(base_p, model_flags=BASE_FLAGS)
    up = load_model(up_p, model_flags=UP_FLAGS)
    with pytest.raises(GenevalError, match="not a super-resolution model"):
        CascadeGenerator(base, base)
    with pytest.raises(GenevalError, match="must be a plain diffusion model"):
        CascadeGenerator(up, up)
    up16 = load_model(up_p, model_flags=UP_FLAGS.replace("--small_size 8", "--small_size 16"))
    with pytest.raises(GenevalError, match="takes 16px images but the base model makes 8px"):
        CascadeGenerator(base, up16)
    with pytest.raises(GenevalError, match="respacing '250': cannot take 250 steps"):  # the default: README's 250 DDPM steps
        CascadeGenerator(base, up).generate(np.arange(2), np.array([0, 1]), _cfg())
    gen = CascadeGenerator(base, up, UpsamplerSampling(steps=3))
    with pytest.raises(GenevalError, match="one label per sample"):
        gen.generate(np.arange(2), None, _cfg())
    with pytest.raises(GenevalError, match="unconditional|null class"):
        CascadeGenerator(base, up, UpsamplerSampling(steps=3, guidance=2.0)).generate(np.arange(2), np.array([0, 1]), _cfg())
    assert isinstance(base, LoadedModel)


def test_cascade_with_classifier_guided_unconditional_base(cascade_files, tmp_path):
    """ADM-G+U: an unconditional base steered by a noisy classifier, a class-conditional upsampler."""
    _, up_p = cascade_files
    uncond_flags = BASE_FLAGS.replace("--class_cond True --num_classes 5 ", "")
    init = init_random_(UNetModel(parse_model_flags(uncond_flags).config), seed=12, std=0.03)
    torch.save(init.state_dict(), tmp_path / "base_uncond.pt")
    clf_cfg = ClassifierConfig(
        image_size=8, model_channels=32, out_channels=5, num_res_blocks=1, attention_resolutions=(4,), channel_mult=(1, 2), num_head_channels=32
    )
    clf = init_random_(EncoderUNet(clf_cfg), seed=13, std=0.1)
    from geneval.models.formats import save_native

    save_native(clf, clf_cfg, tmp_path / "clf.safetensors")
    with pytest.raises(GenevalError, match="upsampler is class-conditional but the base model is not"):
        load_cascade(tmp_path / "base_uncond.pt", up_p, base_flags=uncond_flags, upsampler_flags=UP_FLAGS)
    gen = load_cascade(
        tmp_path / "base_uncond.pt",
        up_p,
        base_flags=uncond_flags,
        upsampler_flags=UP_FLAGS,
        classifier=tmp_path / "clf.safetensors",
        upsampler_sampling=UpsamplerSampling(steps=3),
    )
    assert gen.num_classes == 5
    labels = np.array([4, 3, 2, 1])
    guided_full, guided_low = gen.generate_with_base(np.arange(4), labels, _cfg(sampler="ddpm", classifier_scale=10.0))
    _, plain_low = gen.generate_with_base(np.arange(4), labels, _cfg(sampler="ddpm"))
    assert not np.array_equal(guided_low, plain_low)  # the classifier steers the base stage
    assert np.array_equal(gen.generate(np.arange(1, 3), labels[1:3], _cfg(sampler="ddpm", classifier_scale=10.0)), guided_full[1:3])
    assert gen.describe(_cfg(classifier_scale=10.0))["base_sampling"]["classifier_scale"] == 10.0


def test_super_res_state_dict_with_a_plain_architecture_says_so(cascade_files):
    _, up_p = cascade_files
    plain = UP_FLAGS.replace("--large_size 16 --small_size 8", "--image_size 16")
    with pytest.raises(GenevalError, match="looks like a super-resolution model"):
        load_model(up_p, model_flags=plain)


@pytest.mark.skipif(not os.environ.get("GENEVAL_ADM_REF"), reason="set GENEVAL_ADM_REF to a folder holding guided_diffusion/ and improved_diffusion/")
def test_parity_with_the_authors_code():
    """Opt-in: every preset's keys, shapes, head counts, attention order and β against the authors'
    own script_util (their argparse defaults + the preset's README flags), and the SuperResModel and
    every EncoderUNetModel pool forward on shared random weights. Measured 2026-12-02 with
    guided-diffusion 22e0df8 / improved-diffusion 1bc7bbb: all equal, forward max |diff| = 0."""
    import argparse

    sys.path.insert(0, os.environ["GENEVAL_ADM_REF"])
    from guided_diffusion import gaussian_diffusion as gdd
    from guided_diffusion import script_util as gsu
    from guided_diffusion.unet import EncoderUNetModel, SuperResModel
    from improved_diffusion import script_util as isu

    for p in PRESETS.values():
        flags = p.flags.replace("--defaults improved-diffusion", "").split()
        su = isu if "improved-diffusion" in p.source else gsu
        if p.kind == "classifier":
            d = gsu.classifier_and_diffusion_defaults()
        else:
            d = su.sr_model_and_diffusion_defaults() if p.config.super_res else su.model_and_diffusion_defaults()
        parser = argparse.ArgumentParser()
        su.add_dict_to_argparser(parser, d)
        a = vars(parser.parse_args(flags))
        with torch.device("meta"):
            if p.kind == "classifier":
                ref = gsu.create_classifier(**{k: a[k] for k in gsu.classifier_defaults()})
                ours = EncoderUNet(p.config)
            else:
                create = su.sr_create_model_and_diffusion if p.config.super_res else su.create_model_and_diffusion
                ref, _ = create(**a)
                ours = UNetModel(p.config)
                betas = gdd.get_named_beta_schedule(a["noise_schedule"], a["diffusion_steps"])
                assert np.array_equal(betas, p.diffusion.betas()), p.name
                assert a["rescale_timesteps"] == p.diffusion.rescale_timesteps and a["learn_sigma"] == (p.diffusion.variance_type == "learned_range")
        assert state_shapes(ref) == state_shapes(ours), p.name
        ra = [m for m in ref.modules() if type(m).__name__ == "AttentionBlock"]
        oa = [m for m in ours.modules() if type(m).__name__ == "AttentionBlock"]
        legacy = [type(m.attention).__name__ == "QKVAttentionLegacy" or "improved_diffusion" in type(m.attention).__module__ for m in ra]
        assert [(m.num_heads, lg) for m, lg in zip(ra, legacy, strict=True)] == [(m.num_heads, m.legacy_order) for m in oa], p.name
    g = torch.Generator().manual_seed(0)
    cfg = UNetConfig(
        image_size=16,
        model_channels=32,
        out_channels=6,
        num_res_blocks=1,
        attention_resolutions=(8,),
        channel_mult=(1, 2),
        num_classes=5,
        num_heads=2,
        use_scale_shift_norm=True,
        resblock_updown=True,
        low_res_size=8,
    )
    ours = init_random_(UNetModel(cfg).eval(), seed=1, std=0.1)
    ref = SuperResModel(
        image_size=16,
        in_channels=3,
        model_channels=32,
        out_channels=6,
        num_res_blocks=1,
        attention_resolutions=(2,),
        channel_mult=(1, 2),
        num_classes=5,
        num_heads=2,
        use_scale_shift_norm=True,
        resblock_updown=True,
    ).eval()
    ref.load_state_dict(ours.state_dict())
    x, lr, t, y = (
        torch.randn(3, 3, 16, 16, generator=g),
        torch.rand(3, 3, 8, 8, generator=g) * 2 - 1,
        torch.tensor([0, 300, 999]),
        torch.tensor([0, 2, 4]),
    )
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t, y, low_res=lr), ref(x, t, low_res=lr, y=y), atol=1e-6, rtol=0)
    for pool in HEADS:
        ccfg = ClassifierConfig(
            image_size=16,
            model_channels=32,
            out_channels=7,
            num_res_blocks=1,
            attention_resolutions=(8,),
            channel_mult=(1, 2),
            num_head_channels=32,
            pool=pool,
        )
        ours = init_random_(EncoderUNet(ccfg).eval(), seed=2, std=0.1)
        ref = EncoderUNetModel(
            image_size=16,
            in_channels=3,
            model_channels=32,
            out_channels=7,
            num_res_blocks=1,
            attention_resolutions=(2,),
            channel_mult=(1, 2),
            num_head_channels=32,
            use_scale_shift_norm=True,
            resblock_updown=True,
            pool=pool,
        ).eval()
        ref.load_state_dict(ours.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(ours(x, t), ref(x, t), atol=1e-6, rtol=0)
