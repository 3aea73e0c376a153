"""Autoencoders: LDM key layout, checkpoint formats, parity with diffusers, VQ quantizer, bad files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from geneval.errors import GenevalError
from geneval.models.ae_formats import ZOO, infer_config, load_autoencoder, save_native_autoencoder
from geneval.models.autoencoder import AEConfig, build_autoencoder

# A small LDM ddconfig: two levels, attention at 16 px (level 1), 32 → 64 channels.
DDCONFIG = dict(
    double_z=True, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[16], dropout=0.0
)
SMALL = AEConfig.from_ddconfig(DDCONFIG, embed_dim=4)


def _wb(prefix: str, names: list[str]) -> list[str]:
    return [f"{prefix}.{n}.{p}" for n in names for p in ("weight", "bias")]


def _resblock(prefix: str, shortcut: bool) -> list[str]:
    return _wb(prefix, ["norm1", "conv1", "norm2", "conv2"] + (["nin_shortcut"] if shortcut else []))


def _attn(prefix: str) -> list[str]:
    return _wb(prefix, ["norm", "q", "k", "v", "proj_out"])


def ldm_expected_keys() -> set[str]:
    """The LDM (ldm/modules/diffusionmodules/model.py) parameter names for DDCONFIG, written out by hand."""
    k = _wb("encoder", ["conv_in", "norm_out", "conv_out"])
    k += _resblock("encoder.down.0.block.0", False) + _wb("encoder.down.0.downsample", ["conv"])
    k += _resblock("encoder.down.1.block.0", True) + _attn("encoder.down.1.attn.0")
    for side in ("encoder", "decoder"):
        k += _resblock(f"{side}.mid.block_1", False) + _attn(f"{side}.mid.attn_1") + _resblock(f"{side}.mid.block_2", False)
    k += _wb("decoder", ["conv_in", "norm_out", "conv_out"])
    k += _resblock("decoder.up.1.block.0", False) + _resblock("decoder.up.1.block.1", False)
    k += _attn("decoder.up.1.attn.0") + _attn("decoder.up.1.attn.1") + _wb("decoder.up.1.upsample", ["conv"])
    k += _resblock("decoder.up.0.block.0", True) + _resblock("decoder.up.0.block.1", False)
    k += _wb("", ["quant_conv", "post_quant_conv"])
    return {x.lstrip(".") for x in k}


def _randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (GroupNorm affine included) non-trivial random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / max(1, p[0].numel()) ** 0.5))
    return model.eval()


def test_kl_keys_match_the_ldm_layout():
    model = build_autoencoder(SMALL)
    own = set(model.state_dict())
    expected = ldm_expected_keys()
    assert own == expected, (sorted(own - expected)[:5], sorted(expected - own)[:5])
    sd = model.state_dict()
    assert sd["encoder.conv_out.weight"].shape == (8, 64, 3, 3)  # 2 * z_channels: mean and log-variance
    assert sd["quant_conv.weight"].shape == (8, 8, 1, 1)
    assert sd["post_quant_conv.weight"].shape == (4, 4, 1, 1)
    assert sd["decoder.conv_in.weight"].shape == (64, 4, 3, 3)


def test_ldm_ckpt_round_trip_through_first_stage_prefix(tmp_path):
    src = _randomised(build_autoencoder(SMALL))
    state = {f"first_stage_model.{k}": v.clone() for k, v in src.state_dict().items()}
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(8, 4, 3, 3)  # the UNet: not ours
    state["scale_factor"] = torch.tensor(0.25)
    path = tmp_path / "ldm.ckpt"
    torch.save({"state_dict": state, "global_step": 7}, path)
    loaded = load_autoencoder(path)  # shape read off the tensors
    assert loaded.format == "ldm"
    assert loaded.config == AEConfig.from_dict(
        {**SMALL.to_dict(), "resolution": 256, "attn_resolutions": (128,), "ch_mult": (1, 2), "scale_factor": 0.25}
    )
    assert loaded.info["ignored_other_tensors"] == 2  # the UNet tensor and the scale_factor buffer
    for k, v in src.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(loaded.model.reconstruct(x).recon, src.reconstruct(x).recon, atol=1e-6)


def test_ldm_yaml_and_standalone_with_loss_tensors(tmp_path):
    yaml = pytest.importorskip("yaml")
    src = _randomised(build_autoencoder(SMALL))
    state = dict(src.state_dict())
    state["loss.logvar"] = torch.zeros(())  # LDM's training loss lives in standalone autoencoder ckpts
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": state}, path)
    cfg_path = tmp_path / "ldm.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
                    "params": {
                        "scale_factor": 0.18215,
                        "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {"embed_dim": 4, "ddconfig": DDCONFIG}},
                    },
                }
            }
        )
    )
    loaded = load_autoencoder(path, config=cfg_path)
    assert loaded.format == "ldm-standalone" and loaded.info["ignored_training_tensors"] == 1
    assert loaded.config.attn_resolutions == (16,) and loaded.config.scale_factor == 0.18215


def test_wrong_checkpoints_are_named_and_listed(tmp_path):
    unet = tmp_path / "unet.pt"
    torch.save({"input_blocks.0.0.weight": torch.zeros(4, 3, 3, 3), "out.2.weight": torch.zeros(3, 4, 3, 3)}, unet)
    with pytest.raises(GenevalError, match="not an autoencoder checkpoint.*diffusion UNet"):
        load_autoencoder(unet)
    partial = dict(build_autoencoder(SMALL).state_dict())
    del partial["decoder.conv_out.bias"]
    partial["encoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pt"
    torch.save(partial, path)
    cfg = tmp_path / "small.json"
    cfg.write_text(json.dumps(SMALL.to_dict()))
    with pytest.raises(GenevalError) as e:
        load_autoencoder(path, config=cfg)
    msg = str(e.value)
    assert "1 missing (decoder.conv_out.bias)" in msg and "1 unexpected (encoder.extra.weight)" in msg
    with pytest.raises(GenevalError, match="other shapes"):
        load_autoencoder(path.parent / "partial.pt", config="sd-vae")


def test_cli_wrong_checkpoint_exits_2(tmp_path):
    bad = tmp_path / "unet.pt"
    torch.save({"input_blocks.0.0.weight": torch.zeros(4, 3, 3, 3)}, bad)
    r = subprocess.run([sys.executable, "-m", "geneval", "recon", "--ae", str(bad), "--metrics", "psnr", "--n", "2"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error:") and "not an autoencoder checkpoint" in r.stderr
    assert r.stdout == ""


def test_native_round_trip_and_infer(tmp_path):
    cfg = AEConfig(kind="vq", ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=32, z_channels=4, embed_dim=3, n_embed=16)
    src = _randomised(build_autoencoder(cfg), seed=1)
    save_native_autoencoder(src, tmp_path / "vq", training={"steps": 0})
    loaded = load_autoencoder(tmp_path / "vq")
    assert loaded.format == "native" and loaded.config == cfg
    assert infer_config(src.state_dict(), resolution=32) == cfg
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        a, b = loaded.model.reconstruct(x), src.reconstruct(x)
    assert torch.equal(a.indices, b.indices) and torch.allclose(a.recon, b.recon)


def test_vq_picks_the_nearest_code_by_l2():
    cfg = AEConfig(kind="vq", ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=32, z_channels=4, embed_dim=3, n_embed=16)
    q = build_autoencoder(cfg).quantize
    z = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(0))
    idx = q.codes(z)
    brute = torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, 3), q.embedding.weight).argmin(1).reshape(2, 5, 4)
    assert torch.equal(idx, brute)
    zq, _, _ = q(z)
    assert torch.allclose(zq, q.lookup(idx), atol=1e-6)  # straight-through: z + (zq - z) rounds


def test_kl_matches_diffusers_after_its_own_ldm_conversion():
    """Independent implementation: diffusers' LDM→diffusers VAE converter + its AutoencoderKL."""
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKL as DAutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    dd = {**DDCONFIG, "attn_resolutions": []}  # diffusers' VAE has attention only in the middle block
    cfg = AEConfig.from_ddconfig(dd, embed_dim=4)
    ours = _randomised(build_autoencoder(cfg), seed=2)
    dcfg = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[32, 64],
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=32,
    )
    theirs = DAutoencoderKL(**dcfg).eval()
    conv = convert_ldm_vae_checkpoint({f"first_stage_model.{k}": v for k, v in ours.state_dict().items()}, dcfg)
    missing, unexpected = theirs.load_state_dict(conv, strict=False)
    assert not missing and not unexpected
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        post_o, post_t = ours.encode(x), theirs.encode(x).latent_dist
        assert torch.allclose(post_o.mean, post_t.mean, atol=1e-5)
        assert torch.allclose(post_o.logvar, post_t.logvar, atol=1e-5)
        # The decoder stacks ~20 float32 layers (diffusers runs attention as linear layers): 1e-4 on outputs ~1.
        diff = (ours.decode(post_o.mean) - theirs.decode(post_t.mean).sample).abs().max()
        assert diff < 1e-4, float(diff)


def test_diffusers_folder_loads_through_the_extra(tmp_path):
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKL as DAutoencoderKL

    torch.manual_seed(0)
    vae = DAutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[32, 64],
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=32,
    ).eval()
    vae.save_pretrained(tmp_path / "vae")
    loaded = load_autoencoder(tmp_path / "vae")
    assert loaded.format == "diffusers" and loaded.config.downsample_factor == 2 and loaded.sha256
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        out = loaded.model.reconstruct(x)
        assert torch.allclose(out.recon, vae.decode(vae.encode(x).latent_dist.mode()).sample, atol=1e-6)


@pytest.mark.parametrize("name,kind", [("ae-kl-fmnist", "kl"), ("ae-vq-fmnist", "vq")])
def test_shipped_demo_checkpoints(name, kind):
    folder = ZOO / name
    assert (folder / "model.safetensors").stat().st_size < 2_000_000
    doc = json.loads((folder / "config.json").read_text())
    assert doc["training"]["steps"] > 0 and doc["training"]["final_l1_last100"] is not None
    loaded = load_autoencoder("demo-vq" if kind == "vq" else "demo")
    assert loaded.config.kind == kind and loaded.config.downsample_factor == 4


# ---------------------------------------------------------------- ddconfig items LDM reads (attn_type, tanh_out, ...)

TINY_DD = {
    "double_z": False,
    "z_channels": 3,
    "resolution": 16,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [8],
    "dropout": 0.0,
}


def _tiny(kind: str = "vq", **dd) -> torch.nn.Module:
    cfg = AEConfig.from_ddconfig({**TINY_DD, "double_z": kind == "kl", **dd}, embed_dim=3, kind=kind, n_embed=16 if kind == "vq" else None)
    return _randomised(build_autoencoder(cfg))


def test_attn_type_none_is_identity_without_weights(one_thread):
    noattn = _tiny(attn_type="none")
    assert not [k for k in noattn.state_dict() if "attn" in k]
    # LDM's attention block is x + proj_out(...): with proj_out zeroed it is the identity, so a
    # vanilla model carrying the same other weights must give the same images.
    vanilla = _tiny()
    with torch.no_grad():
        for name, p in vanilla.named_parameters():
            if "attn" not in name:
                p.copy_(noattn.state_dict()[name])
            elif "proj_out" in name:
                p.zero_()
    z = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(noattn.decode(z), vanilla.decode(z), atol=1e-6)
        x = torch.rand(2, 3, 16, 16) * 2 - 1
        assert torch.allclose(noattn.encode(x), vanilla.encode(x), atol=1e-6)


def test_zoo_vq_f4_noattn_yaml_loads(tmp_path):
    yaml = pytest.importorskip("yaml")
    # models/first_stage_models/vq-f4-noattn/config.yaml from CompVis/latent-diffusion, at a tiny width.
    dd = {
        "attn_type": "none",
        "double_z": False,
        "z_channels": 3,
        "resolution": 16,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 32,
        "ch_mult": [1, 2, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    doc = {
        "model": {
            "base_learning_rate": 4.5e-06,
            "target": "ldm.models.autoencoder.VQModel",
            "params": {
                "embed_dim": 3,
                "n_embed": 16,
                "monitor": "val/rec_loss",
                "ddconfig": dd,
                "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator", "params": {"disc_start": 11}},
            },
        }
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(doc))
    src = _randomised(build_autoencoder(AEConfig.from_ddconfig(dd, 3, kind="vq", n_embed=16)))
    state = {**src.state_dict(), "loss.discriminator.main.0.weight": torch.zeros(1)}
    torch.save({"state_dict": state}, tmp_path / "model.ckpt")
    loaded = load_autoencoder(tmp_path / "model.ckpt", config=tmp_path / "config.yaml")
    assert loaded.config.attn_type == "none" and "mid.attn_1" not in str(list(loaded.model.state_dict()))
    assert infer_config(src.state_dict(), resolution=16).attn_type == "none"  # and without the YAML too
    assert load_autoencoder(tmp_path / "model.ckpt").config.attn_type == "none"


def test_tanh_out_applies_tanh():
    plain, squashed = _tiny(), _tiny(tanh_out=True)
    squashed.load_state_dict(plain.state_dict())
    z = torch.randn(2, 3, 8, 8) * 3
    with torch.no_grad():
        a, b = plain.decode(z), squashed.decode(z)
    assert torch.allclose(b, torch.tanh(a), atol=1e-6) and not torch.allclose(a, b)
    assert AEConfig.from_dict(squashed.config.to_dict()).tanh_out  # survives the native JSON round trip


def test_resamp_without_conv_pools_and_has_no_weights():
    m = _tiny(resamp_with_conv=False)
    assert not [k for k in m.state_dict() if "downsample" in k or "upsample" in k]
    x = torch.randn(1, 32, 8, 8)
    down, up = m.encoder.down[0].downsample, m.decoder.up[1].upsample
    assert torch.equal(down(x), torch.nn.functional.avg_pool2d(x, 2))
    assert torch.equal(up(x), x.repeat_interleave(2, 2).repeat_interleave(2, 3))
    sd = m.state_dict()
    assert infer_config(sd, resolution=16).resamp_with_conv is False
    assert infer_config(_tiny().state_dict(), resolution=16).resamp_with_conv is True


def test_use_linear_attn_matches_ldm_linear_attention():
    m = _tiny(use_linear_attn=True, attn_type="vanilla")  # LDM: use_linear_attn overrides attn_type
    assert m.config.attn_type == "linear"
    keys = [k for k in m.state_dict() if "mid.attn_1" in k]
    assert sorted(keys) == sorted(f"{s}.mid.attn_1.{n}" for s in ("encoder", "decoder") for n in ("to_qkv.weight", "to_out.weight", "to_out.bias"))
    block = m.decoder.mid.attn_1
    x = torch.randn(2, 64, 4, 4)
    # LDM's LinearAttention(heads=1, dim_head=C) written out: no norm, no residual.
    qkv = torch.nn.functional.conv2d(x, block.to_qkv.weight).reshape(2, 3, 64, 16)
    q, k, v = qkv[:, 0], qkv[:, 1].softmax(dim=-1), qkv[:, 2]
    context = torch.einsum("bdn,ben->bde", k, v)
    out = torch.einsum("bde,bdn->ben", context, q).reshape(2, 64, 4, 4)
    want = torch.nn.functional.conv2d(out, block.to_out.weight, block.to_out.bias)
    assert torch.allclose(block(x), want, atol=1e-5)


@pytest.mark.parametrize("key", ["attn_typo", "use_checkpoint", "z_channel"])
def test_unknown_ddconfig_key_is_an_error(tmp_path, key):
    with pytest.raises(GenevalError, match=f"unknown ddconfig key.*{key}"):
        AEConfig.from_ddconfig({**TINY_DD, key: 1}, embed_dim=3, kind="vq", n_embed=16)
    yaml = pytest.importorskip("yaml")
    cfg = tmp_path / "ae.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"model": {"target": "ldm.models.autoencoder.VQModel", "params": {"embed_dim": 3, "n_embed": 16, "ddconfig": {**TINY_DD, key: 1}}}}
        )
    )
    torch.save(_tiny().state_dict(), tmp_path / "ae.pt")
    r = (
        subprocess.run(
            [sys.executable, "-m", "geneval", "recon", "--ae", str(tmp_path / "ae.pt"), "--ae-config", str(cfg), "--metrics", "psnr", "--n", "2"],
            capture_output=True,
            text=True,
            check=False,
        )
        if key == "attn_typo"
        else None
    )
    if r is not None:  # the exit-2 path once, through the CLI
        assert r.returncode == 2 and key in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_bad_ddconfig_values_are_errors():
    with pytest.raises(GenevalError, match="attn_type"):
        AEConfig.from_ddconfig({**TINY_DD, "attn_type": "flash"}, 3, kind="vq", n_embed=16)
    with pytest.raises(GenevalError, match="tanh_out"):
        AEConfig.from_ddconfig({**TINY_DD, "tanh_out": "yes"}, 3, kind="vq", n_embed=16)
    with pytest.raises(GenevalError, match="give_pre_end"):
        AEConfig.from_ddconfig({**TINY_DD, "give_pre_end": True}, 3, kind="vq", n_embed=16)
    assert AEConfig.from_ddconfig({**TINY_DD, "give_pre_end": False}, 3, kind="vq", n_embed=16).attn_type == "vanilla"
