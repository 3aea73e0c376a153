"""CompVis LDM: key layout of the official configs, loading a Lightning .ckpt + YAML, parity with diffusers.

Independent references:
- cin256-v2: diffusers' own LDM→diffusers converter (`convert_ldm_unet_checkpoint`, config from
  `create_unet_diffusers_config_from_ldm` on the official YAML) and its UNet2DConditionModel;
- LSUN churches / CelebA-HQ UNets (plain AttentionBlock, not handled by that converter): diffusers'
  UNet2DModel built to the same shape, its keys renamed by `to_diffusers_unet` below (the renaming
  of diffusers' scripts/convert_ldm_original_checkpoint_to_diffusers.py, legacy qkv split per head),
  which the DDIM parity test proves numerically;
- first stages: diffusers' `convert_ldm_vae_checkpoint` and its VQModel / AutoencoderKL.
The YAMLs in tests/data/ldm_configs are CompVis/latent-diffusion@a506df5 configs/latent-diffusion/*.
"""

from __future__ import annotations

import copy
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from geneval.errors import GenevalError
from geneval.models.ldm_formats import (
    SCHEDULE_BUFFERS,
    build_ldm_modules,
    ema_name,
    load_ldm,
    parse_ldm_config,
    read_ldm_yaml,
    split_state_dict,
)
from geneval.models.ldm_unet import LDMUNetConfig

diffusers = pytest.importorskip("diffusers")
CONFIGS = Path(__file__).parent / "data" / "ldm_configs"


# ---------------------------------------------------------------- helpers


def compvis_schedule_buffers(linear_start: float, linear_end: float, T: int) -> dict[str, torch.Tensor]:
    """What DDPM.register_schedule stores (make_beta_schedule 'linear' in float64, then float32 buffers)."""
    betas = (torch.linspace(linear_start**0.5, linear_end**0.5, T, dtype=torch.float64) ** 2).numpy()
    ac = np.cumprod(1.0 - betas)
    acp = np.append(1.0, ac[:-1])
    pv = betas * (1.0 - acp) / (1.0 - ac)
    arrays = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": acp,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - ac),
        "log_one_minus_alphas_cumprod": np.log(1 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / ac - 1),
        "posterior_variance": pv,
        "posterior_log_variance_clipped": np.log(np.maximum(pv, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(acp) / (1 - ac),
        "posterior_mean_coef2": (1 - acp) * np.sqrt(1 - betas) / (1 - ac),
    }
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in arrays.items()}


def _res(sd: dict, out: dict, old: str, new: str) -> None:
    for a, b in (
        ("in_layers.0", "norm1"),
        ("in_layers.2", "conv1"),
        ("emb_layers.1", "time_emb_proj"),
        ("out_layers.0", "norm2"),
        ("out_layers.3", "conv2"),
        ("skip_connection", "conv_shortcut"),
    ):
        for p in ("weight", "bias"):
            if f"{old}.{a}.{p}" in sd:
                out[f"{new}.{b}.{p}"] = sd.pop(f"{old}.{a}.{p}")


def _attn(sd: dict, out: dict, old: str, new: str, heads: int) -> None:
    out[f"{new}.group_norm.weight"] = sd.pop(f"{old}.norm.weight")
    out[f"{new}.group_norm.bias"] = sd.pop(f"{old}.norm.bias")
    w, b = sd.pop(f"{old}.qkv.weight"), sd.pop(f"{old}.qkv.bias")
    c = w.shape[1]
    # QKVAttentionLegacy: channel index = head·3ch + {q,k,v}·ch + i.
    w, b = w[:, :, 0].reshape(heads, 3, c // heads, c), b.reshape(heads, 3, c // heads)
    for j, name in enumerate(("to_q", "to_k", "to_v")):
        out[f"{new}.{name}.weight"] = w[:, j].reshape(c, c)
        out[f"{new}.{name}.bias"] = b[:, j].reshape(c)
    out[f"{new}.to_out.0.weight"] = sd.pop(f"{old}.proj_out.weight")[:, :, 0]
    out[f"{new}.to_out.0.bias"] = sd.pop(f"{old}.proj_out.bias")


def to_diffusers_unet(state: dict[str, torch.Tensor], cfg: LDMUNetConfig, head_channels: int) -> dict[str, torch.Tensor]:
    """CompVis openaimodel keys (AttentionBlock variant) → diffusers UNet2DModel keys; every key used once."""
    sd, out = dict(state), {}
    for a, b in (
        ("time_embed.0", "time_embedding.linear_1"),
        ("time_embed.2", "time_embedding.linear_2"),
        ("input_blocks.0.0", "conv_in"),
        ("out.0", "conv_norm_out"),
        ("out.2", "conv_out"),
    ):
        for p in ("weight", "bias"):
            out[f"{b}.{p}"] = sd.pop(f"{a}.{p}")
    n, levels = cfg.num_res_blocks, len(cfg.channel_mult)
    for lvl in range(levels):
        attn = 2**lvl in cfg.attention_resolutions
        heads = cfg.model_channels * cfg.channel_mult[lvl] // head_channels
        for j in range(n):
            i = 1 + lvl * (n + 1) + j
            _res(sd, out, f"input_blocks.{i}.0", f"down_blocks.{lvl}.resnets.{j}")
            if attn:
                _attn(sd, out, f"input_blocks.{i}.1", f"down_blocks.{lvl}.attentions.{j}", heads)
        if lvl < levels - 1:
            i = 1 + lvl * (n + 1) + n
            if cfg.resblock_updown:
                _res(sd, out, f"input_blocks.{i}.0", f"down_blocks.{lvl}.downsamplers.0")
            else:
                for p in ("weight", "bias"):
                    out[f"down_blocks.{lvl}.downsamplers.0.conv.{p}"] = sd.pop(f"input_blocks.{i}.0.op.{p}")
    mid_heads = cfg.model_channels * cfg.channel_mult[-1] // head_channels
    _res(sd, out, "middle_block.0", "mid_block.resnets.0")
    _attn(sd, out, "middle_block.1", "mid_block.attentions.0", mid_heads)
    _res(sd, out, "middle_block.2", "mid_block.resnets.1")
    for u in range(levels):
        lvl = levels - 1 - u
        attn = 2**lvl in cfg.attention_resolutions
        heads = cfg.model_channels * cfg.channel_mult[lvl] // head_channels
        for j in range(n + 1):
            i = u * (n + 1) + j
            _res(sd, out, f"output_blocks.{i}.0", f"up_blocks.{u}.resnets.{j}")
            if attn:
                _attn(sd, out, f"output_blocks.{i}.1", f"up_blocks.{u}.attentions.{j}", heads)
            if lvl and j == n:
                k = 2 if attn else 1
                if cfg.resblock_updown:
                    _res(sd, out, f"output_blocks.{i}.{k}", f"up_blocks.{u}.upsamplers.0")
                else:
                    for p in ("weight", "bias"):
                        out[f"up_blocks.{u}.upsamplers.0.conv.{p}"] = sd.pop(f"output_blocks.{i}.{k}.conv.{p}")
    assert not sd, f"CompVis keys the renaming did not use: {sorted(sd)[:5]}"
    return out


def diffusers_unet2d(cfg: LDMUNetConfig, head_channels: int) -> dict:
    """UNet2DModel kwargs with the same structure as an AttentionBlock-variant CompVis UNet."""
    levels = len(cfg.channel_mult)
    attn = [2**lvl in cfg.attention_resolutions for lvl in range(levels)]
    down = ["AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" if cfg.resblock_updown else "DownBlock2D" for a in attn]
    up = ["AttnUpBlock2D" if a else "ResnetUpsampleBlock2D" if cfg.resblock_updown else "UpBlock2D" for a in attn[::-1]]
    return {
        "sample_size": cfg.image_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "block_out_channels": [cfg.model_channels * m for m in cfg.channel_mult],
        "layers_per_block": cfg.num_res_blocks,
        "down_block_types": down,
        "up_block_types": up,
        "attention_head_dim": head_channels,
        "resnet_time_scale_shift": "scale_shift" if cfg.use_scale_shift_norm else "default",
        "downsample_type": "resnet" if cfg.resblock_updown else "conv",
        "upsample_type": "resnet" if cfg.resblock_updown else "conv",
        "attn_norm_num_groups": 32,
    }  # else diffusers drops the mid attention's norm under scale_shift


def diffusers_first_stage(ae_cfg) -> tuple[type, dict]:
    widths = [ae_cfg.ch * m for m in ae_cfg.ch_mult]
    common = {
        "in_channels": ae_cfg.in_channels,
        "out_channels": ae_cfg.out_ch,
        "block_out_channels": widths,
        "down_block_types": ["DownEncoderBlock2D"] * len(widths),
        "up_block_types": ["UpDecoderBlock2D"] * len(widths),
        "layers_per_block": ae_cfg.num_res_blocks,
        "latent_channels": ae_cfg.z_channels,
        "norm_num_groups": 32,
        "sample_size": ae_cfg.resolution,
    }
    if ae_cfg.kind == "vq":
        return diffusers.VQModel, {**common, "num_vq_embeddings": ae_cfg.n_embed, "vq_embed_dim": ae_cfg.embed_dim}
    assert ae_cfg.embed_dim == ae_cfg.z_channels
    return diffusers.AutoencoderKL, common


def _first_stage_to_diffusers(ae_sd: dict[str, torch.Tensor], dcfg: dict) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    out = convert_ldm_vae_checkpoint({f"first_stage_model.{k}": v for k, v in ae_sd.items()}, dcfg)
    if "quantize.embedding.weight" in ae_sd:  # the converter covers the trunk; the codebook keeps its name
        out["quantize.embedding.weight"] = ae_sd["quantize.embedding.weight"]
    return out


def _same_layout(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], what: str) -> None:
    assert set(ours) == set(theirs), (what, sorted(set(ours) - set(theirs))[:5], sorted(set(theirs) - set(ours))[:5])
    bad = [k for k in ours if tuple(ours[k].shape) != tuple(theirs[k].shape)]
    assert not bad, (what, bad[:5])


# ---------------------------------------------------------------- official configs: key layout one to one


def _official(name: str):
    path = CONFIGS / f"{name}.yaml"
    spec = parse_ldm_config(read_ldm_yaml(path), str(path))
    with torch.device("meta"):
        unet, ae, cond = build_ldm_modules(spec, str(path))
    return path, spec, unet, ae, cond


@pytest.mark.parametrize("name", ["cin256-v2", "lsun_churches-ldm-kl-8", "celebahq-ldm-vq-4", "ffhq-ldm-vq-4"])
def test_official_configs_map_one_to_one(name):
    path, spec, unet, ae, cond = _official(name)
    usd, asd = unet.state_dict(), ae.state_dict()
    # UNet against diffusers.
    if name == "cin256-v2":
        from diffusers.loaders.single_file_utils import (
            convert_ldm_unet_checkpoint,
            create_unet_diffusers_config_from_ldm,
        )

        full = {f"model.diffusion_model.{k}": v for k, v in usd.items()}
        dcfg = create_unet_diffusers_config_from_ldm(yaml.safe_load(path.read_text()), {})  # {}: skips a slow key scan
        converted = convert_ldm_unet_checkpoint(full, dcfg)
        assert {id(v) for v in converted.values()} == {id(v) for v in usd.values()}  # each of ours used once
        with torch.device("meta"):
            theirs = diffusers.UNet2DConditionModel(**dcfg).state_dict()
        assert len(theirs) == len(usd) == 688
        assert sum(v.numel() for v in usd.values()) == 400_920_579  # the paper's ~400M cin256 LDM-4
    else:
        head_ch = 24 if name.startswith("lsun") else 32  # any divisor: heads shape no tensor
        converted = to_diffusers_unet(usd, spec.unet, head_ch)
        with torch.device("meta"):
            theirs = diffusers.UNet2DModel(**diffusers_unet2d(spec.unet, head_ch)).state_dict()
    _same_layout(converted, theirs, f"{name} UNet")
    # First stage against diffusers' converter and model.
    cls, dcfg = diffusers_first_stage(ae.config)
    with torch.device("meta"):
        theirs = cls(**dcfg).state_dict()
    _same_layout(_first_stage_to_diffusers(asd, dcfg), theirs, f"{name} first stage")
    assert len(theirs) == len(asd)
    # Cond stage: ClassEmbedder(embed_dim=512, n_classes=1001) → one embedding table.
    if name == "cin256-v2":
        assert {k: tuple(v.shape) for k, v in cond.state_dict().items()} == {"embedding.weight": (1001, 512)}
    else:
        assert cond is None
    # A checkpoint laid out this way is consumed completely; one tensor more or less is named.
    p = spec
    sd = {f"model.diffusion_model.{k}": v for k, v in usd.items()}
    sd.update({f"first_stage_model.{k}": v for k, v in asd.items()})
    if cond is not None:
        sd.update({f"cond_stage_model.{k}": v for k, v in cond.state_dict().items()})
    sd.update(compvis_schedule_buffers(p.diffusion.beta_start, p.diffusion.beta_end, p.diffusion.num_timesteps))
    sd["scale_factor"] = torch.tensor(0.22)
    parts = split_state_dict(sd, spec, unet, cond, "test")
    assert sum(parts["counts"].values()) == len(sd) and parts["counts"]["unet"] == len(usd)
    with pytest.raises(GenevalError, match="model.diffusion_model.input_blocks.1.0.in_layers.0.weight"):
        split_state_dict(
            {k: v for k, v in sd.items() if k != "model.diffusion_model.input_blocks.1.0.in_layers.0.weight"},
            spec,
            unet,
            cond,
            "test",
        )
    with pytest.raises(GenevalError, match="belong to no part.*model.extra_head.weight"):
        split_state_dict({**sd, "model.extra_head.weight": torch.zeros(1)}, spec, unet, cond, "test")


def test_official_schedules_and_conditioning():
    _, cin, *_ = _official("cin256-v2")
    assert cin.conditioning_key == "crossattn" and cin.diffusion.beta_schedule == "scaled_linear"
    assert (cin.diffusion.beta_start, cin.diffusion.beta_end, cin.diffusion.num_timesteps) == (0.0015, 0.0195, 1000)
    assert cin.unet.use_spatial_transformer and cin.unet.context_dim == 512 and not cin.use_ema
    _, church, *_ = _official("lsun_churches-ldm-kl-8")
    assert church.conditioning_key is None and church.scale_by_std and church.diffusion.beta_end == 0.0155
    betas = compvis_schedule_buffers(0.0015, 0.0155, 1000)["betas"].double().numpy()
    assert np.allclose(church.diffusion.betas(), betas, rtol=1e-6)  # CompVis "linear" = scaled_linear
    _, celeb, *_ = _official("celebahq-ldm-vq-4")
    assert celeb.conditioning_key is None and celeb.scale_factor == 1.0 and celeb.use_ema


# ---------------------------------------------------------------- a tiny LDM written as a Lightning checkpoint

TINY_UNET = {
    "image_size": 8,
    "in_channels": 3,
    "out_channels": 3,
    "model_channels": 32,
    "attention_resolutions": [2],
    "num_res_blocks": 1,
    "channel_mult": [1, 2],
    "num_head_channels": 8,
    "use_scale_shift_norm": True,
    "resblock_updown": True,
}
TINY_VQ = {
    "embed_dim": 3,
    "n_embed": 64,
    "ddconfig": {
        "double_z": False,
        "z_channels": 3,
        "resolution": 16,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 32,
        "ch_mult": [1, 2],
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "dropout": 0.0,
    },
    "lossconfig": {"target": "torch.nn.Identity"},
}


def tiny_yaml(unet: dict | None = None, cond: dict | str = "__is_unconditional__", **params) -> dict:
    doc = {
        "model": {
            "base_learning_rate": 1e-4,
            "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
            "params": {
                "linear_start": 0.0015,
                "linear_end": 0.0195,
                "timesteps": 1000,
                "first_stage_key": "image",
                "image_size": 8,
                "channels": 3,
                "monitor": "val/loss_simple_ema",
                "scale_factor": 0.7,
                "unet_config": {
                    "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                    "params": unet or TINY_UNET,
                },
                "first_stage_config": {"target": "ldm.models.autoencoder.VQModelInterface", "params": TINY_VQ},
                "cond_stage_config": cond,
                **params,
            },
        }
    }
    return copy.deepcopy(doc)  # the module-level dicts stay untouched by tests that edit a config


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Random non-trivial weights (zero-initialised output convs included); norms near 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            for name, p in m.named_parameters(recurse=False):
                if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                    p.copy_((1.0 if name == "weight" else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * (0.6 / max(1, p[0].numel()) ** 0.5))


def write_tiny_ldm(tmp: Path, doc: dict, monkeypatch=None, ema: bool = False) -> tuple[Path, Path, dict]:
    """Random weights in CompVis layout, saved as Lightning does (callbacks keyed by a ModelCheckpoint class)."""
    cfg = tmp / "model.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    spec = parse_ldm_config(read_ldm_yaml(cfg), str(cfg))
    unet, ae, cond = build_ldm_modules(spec)
    for i, m in enumerate((unet, ae, cond)):
        if m is not None:
            _randomise(m, i)
    sd = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    sd.update({f"first_stage_model.{k}": v for k, v in ae.state_dict().items()})
    if cond is not None:
        sd.update({f"cond_stage_model.{k}": v for k, v in cond.state_dict().items()})
    sd.update(compvis_schedule_buffers(0.0015, 0.0195, 1000))
    if ema:
        g = torch.Generator().manual_seed(9)
        sd.update({ema_name(n): torch.randn(p.shape, generator=g) * 0.05 for n, p in unet.named_parameters()})
        sd.update({"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(5, dtype=torch.int32)})
    ckpt = {"epoch": 3, "global_step": 10, "state_dict": sd}
    if monkeypatch is not None:

        class ModelCheckpoint:
            pass

        for mod in ("pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"):
            monkeypatch.setitem(sys.modules, mod, types.ModuleType(mod))
        ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = (
            "pytorch_lightning.callbacks.model_checkpoint",
            "ModelCheckpoint",
        )
        sys.modules["pytorch_lightning.callbacks.model_checkpoint"].ModelCheckpoint = ModelCheckpoint
        ckpt["callbacks"] = {ModelCheckpoint: {"best_model_score": torch.tensor(0.1)}}
    path = tmp / "model.ckpt"
    torch.save(ckpt, path)
    return path, cfg, {"unet": unet, "ae": ae, "cond": cond}


def test_unconditional_ldm_matches_diffusers_ldm_pipeline(tmp_path, monkeypatch, one_thread):
    """geneval: load_ldm + make_schedule(convention 'ldm') + ddim(clip off) + decode_latents; diffusers:
    LDMPipeline(UNet2DModel, VQModel, DDIMScheduler) with CompVis' DDIM grid (steps_offset=1,
    set_alpha_to_one=False: timesteps 901..1, final ᾱ = ᾱ[0]), the same weights and the same noise."""
    from geneval.sampling.noise import NoiseSource
    from geneval.sampling.samplers import ddim
    from geneval.sampling.schedules import make_schedule

    ckpt, cfg, mods = write_tiny_ldm(tmp_path, tiny_yaml(), monkeypatch)
    ldm = load_ldm(ckpt, cfg)
    assert ldm.scale_factor == 0.7 and ldm.scale_factor_source == "YAML" and ldm.num_classes is None
    assert ldm.describe()["tensors"]["schedule"] == 12
    ucfg = LDMUNetConfig.from_params(TINY_UNET)
    unet = diffusers.UNet2DModel(**diffusers_unet2d(ucfg, 8))
    unet.load_state_dict(to_diffusers_unet(mods["unet"].state_dict(), ucfg, 8), strict=True)
    vq_cls, vq_cfg = diffusers_first_stage(mods["ae"].config)
    vqvae = vq_cls(**vq_cfg, scaling_factor=0.7)
    vqvae.load_state_dict(_first_stage_to_diffusers(mods["ae"].state_dict(), vq_cfg), strict=True)
    sched = diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0015,
        beta_end=0.0195,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = diffusers.LDMPipeline(vqvae=vqvae.eval(), unet=unet.eval(), scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    decoded_latents = []
    decode = vqvae.decode
    vqvae.decode = lambda z, *a, **k: (decoded_latents.append(z.clone()), decode(z, *a, **k))[1]
    seeds, steps = [11, 12], 10
    want = pipe(
        batch_size=2,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        num_inference_steps=steps,
        eta=0.0,
        output_type="np",
    ).images

    def sample(convention: str, respacing) -> torch.Tensor:
        noise = NoiseSource(seeds)
        schedule = make_schedule(ldm.diffusion, respacing, convention=convention)
        with torch.no_grad():
            return ddim(
                lambda x, t: ldm.denoiser(x, t),
                noise.randn(ldm.latent_shape),
                schedule,
                noise,
                eta=0.0,
                clip_denoised=False,
            )

    assert list(make_schedule(ldm.diffusion, steps, convention="ldm").timesteps) == [
        1,
        101,
        201,
        301,
        401,
        501,
        601,
        701,
        801,
        901,
    ]
    z = sample("ldm", steps)
    with torch.no_grad():
        img = ldm.decode_latents(z)
    got = (img / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert got.shape == want.shape == (2, 16, 16, 3)
    diff = float(np.abs(got - want).max())
    assert diff < 1e-4, diff  # measured 7e-6
    assert float(np.abs(want - want[::-1]).max()) > 1e-2  # the two samples differ: not a constant image
    # The latents themselves (random ε nets make them large: compare relative to their scale).
    ref = decoded_latents[0]  # LDMPipeline decodes latents / scaling_factor
    scale = float(ref.abs().max())
    assert float((z / 0.7 - ref).abs().max()) < 1e-5 * scale  # measured 1.4e-4 on a scale of ~500
    # The check can fail: guided-diffusion's DDIM grid (0, 100, ..., 900; final ᾱ = 1) lands elsewhere.
    assert float((sample("adm", f"ddim{steps}") / 0.7 - ref).abs().max()) > 1e-3 * scale


def test_class_conditional_unet_matches_diffusers_conditional_unet(one_thread):
    """cin-style UNet (SpatialTransformer + ClassEmbedder context) vs UNet2DConditionModel after diffusers' converter."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, create_unet_diffusers_config_from_ldm

    unet_p = {
        "image_size": 8,
        "in_channels": 3,
        "out_channels": 3,
        "model_channels": 32,
        "attention_resolutions": [2, 4],
        "num_res_blocks": 1,
        "channel_mult": [1, 2, 2],
        "num_heads": 2,
        "use_spatial_transformer": True,
        "transformer_depth": 1,
        "context_dim": 16,
    }
    doc = tiny_yaml(
        unet_p,
        {
            "target": "ldm.modules.encoders.modules.ClassEmbedder",
            "params": {"n_classes": 11, "embed_dim": 16, "key": "class_label"},
        },
        conditioning_key="crossattn",
        cond_stage_key="class_label",
    )
    spec = parse_ldm_config(doc["model"], "test")
    unet, _, cond = build_ldm_modules(spec)
    _randomise(unet, 3)
    _randomise(cond, 4)
    full = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    dcfg = create_unet_diffusers_config_from_ldm(doc, full)
    theirs = diffusers.UNet2DConditionModel(**dcfg).eval()
    theirs.load_state_dict(convert_ldm_unet_checkpoint(full, dcfg), strict=True)
    g = torch.Generator().manual_seed(0)
    x, t, y = torch.randn(3, 3, 8, 8, generator=g), torch.tensor([1, 500, 999]), torch.tensor([0, 4, 10])
    from geneval.models.ldm_unet import LDMDenoiser

    den = LDMDenoiser(unet, "crossattn", cond).eval()
    with torch.no_grad():
        ours = den(x, t, y)
        ctx = cond({"class_label": y})
        assert ctx.shape == (3, 1, 16)
        ref = theirs(x, t, encoder_hidden_states=ctx).sample
    assert float((ours - ref).abs().max()) < 1e-5, float((ours - ref).abs().max())


def test_ema_scale_factor_and_cond_rules(tmp_path, one_thread):
    # scale_by_std: the checkpoint's buffer wins over the YAML; use_ema (default on) picks model_ema.*.
    doc = tiny_yaml(scale_by_std=True)
    ckpt, cfg, mods = write_tiny_ldm(tmp_path, doc, ema=True)
    state = torch.load(ckpt, weights_only=True)
    state["state_dict"]["scale_factor"] = torch.tensor(0.31)
    torch.save(state, ckpt)
    ldm = load_ldm(ckpt, cfg)
    assert ldm.weights == "ema" and abs(ldm.scale_factor - 0.31) < 1e-6 and "buffer" in ldm.scale_factor_source
    name = "input_blocks.1.0.in_layers.2.weight"
    assert torch.equal(ldm.denoiser.unet.state_dict()[name], state["state_dict"][ema_name(name)])
    raw = load_ldm(ckpt, cfg, weights="raw")
    assert torch.equal(raw.denoiser.unet.state_dict()[name], mods["unet"].state_dict()[name])
    # An EMA copy that does not match the UNet is named.
    del state["state_dict"][ema_name(name)]
    torch.save(state, ckpt)
    with pytest.raises(GenevalError, match="EMA copy.*missing"):
        load_ldm(ckpt, cfg)


def test_class_conditional_ldm_loads_with_null_class(tmp_path, one_thread):
    unet_p = {**TINY_UNET, "use_spatial_transformer": True, "context_dim": 16, "num_heads": 1}
    unet_p.pop("num_head_channels")
    doc = tiny_yaml(
        unet_p,
        {
            "target": "ldm.modules.encoders.modules.ClassEmbedder",
            "params": {"n_classes": 11, "embed_dim": 16, "key": "class_label"},
        },
        conditioning_key="crossattn",
    )
    ckpt, cfg, mods = write_tiny_ldm(tmp_path, doc)
    ldm = load_ldm(ckpt, cfg)
    assert (ldm.num_classes, ldm.null_class, ldm.conditioning_key) == (10, 10, "crossattn")
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([5, 700])
    with torch.no_grad():
        a = ldm.denoiser(x, t, torch.tensor([1, 10]))
        ctx = mods["cond"]({"class_label": torch.tensor([1, 10])})
        b = mods["unet"](x, t, context=ctx)
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"beta_schedule": "sqrt"}, "beta_schedule"),
        ({"parameterization": "v"}, "parameterization"),
        ({"use_positional_encodings": True}, "use_positional_encodings"),
        ({"made_up_param": 1}, "made_up_param"),
        ({"conditioning_key": "concat", "cond_stage_config": "__is_first_stage__"}, "cond_stage_config"),
    ],
)
def test_unsupported_configs_are_named(tmp_path, edit, match):
    doc = tiny_yaml()
    doc["model"]["params"].update(edit)
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(GenevalError, match=match):
        parse_ldm_config(read_ldm_yaml(tmp_path / "m.yaml"), "m.yaml")


def test_bad_files_and_mismatches_are_one_line(tmp_path, one_thread):
    ckpt, cfg, _ = write_tiny_ldm(tmp_path, tiny_yaml())
    state = torch.load(ckpt, weights_only=True)
    # A YAML whose schedule disagrees with the checkpoint's buffers.
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(tiny_yaml(linear_end=0.012)))
    with pytest.raises(GenevalError, match="betas buffer disagrees"):
        load_ldm(ckpt, other)
    # A wider UNet in the YAML than in the file.
    wide = tmp_path / "wide.yaml"
    wide.write_text(yaml.safe_dump(tiny_yaml({**TINY_UNET, "model_channels": 64})))
    with pytest.raises(GenevalError, match="UNet .*other shapes") as info:
        load_ldm(ckpt, wide)
    assert "\n" not in str(info.value)
    # Unknown ddconfig keys in the first stage are named.
    bad_vq = tiny_yaml()
    bad_vq["model"]["params"]["first_stage_config"]["params"]["ddconfig"]["attn_typ"] = "none"
    (tmp_path / "badvq.yaml").write_text(yaml.safe_dump(bad_vq))
    with pytest.raises(GenevalError, match="attn_typ"):
        load_ldm(ckpt, tmp_path / "badvq.yaml")
    with pytest.raises(GenevalError, match="not a latent diffusion model"):
        (tmp_path / "ae.yaml").write_text(yaml.safe_dump({"model": {"target": "ldm.models.autoencoder.VQModel", "params": {}}}))
        load_ldm(ckpt, tmp_path / "ae.yaml")
    assert set(SCHEDULE_BUFFERS) >= {k for k in state["state_dict"] if "." not in k}


def test_ldm_generator_contract(tmp_path, monkeypatch, one_thread):
    """load_ldm_generator → LatentGenerator: uint8 NHWC, per-sample seeds, truncation, provenance recorded."""
    from geneval.models.ldm_formats import load_ldm_generator
    from geneval.sampling.generate import SamplingConfig

    ckpt, cfg, _ = write_tiny_ldm(tmp_path, tiny_yaml(), monkeypatch)
    gen = load_ldm_generator(ckpt, cfg)
    assert (gen.kind, gen.num_classes, gen.image_size, gen.image_channels) == ("latent", None, 16, 3)
    sc = SamplingConfig(n=4, sampler="ddim", steps=4, seed=5, align=1)
    every = gen.generate(np.arange(4), None, sc, "cpu")
    assert every.dtype == np.uint8 and every.shape == (4, 16, 16, 3)
    assert np.array_equal(every[1:3], gen.generate(np.array([1, 2]), None, sc, "cpu"))
    d = gen.describe()
    assert d["respacing_convention"] == "ldm"  # LDM's own DDIM grid, not guided-diffusion's
    assert d["quantisation"] == "truncate" and d["scale_factor"] == 0.7
    assert d["denoiser"]["checkpoint_sha256"] and d["denoiser"]["config_sha256"] and "ddim" in d["denoiser"]["conventions"]


def test_kl_first_stage_decodes_scaled_latents(tmp_path, one_thread):
    doc = tiny_yaml(scale_by_std=True)
    fs = doc["model"]["params"]["first_stage_config"]
    fs["target"] = "ldm.models.autoencoder.AutoencoderKL"
    fs["params"].pop("n_embed")
    fs["params"]["ddconfig"]["double_z"] = True
    ckpt, cfg, mods = write_tiny_ldm(tmp_path, doc)  # no scale_factor buffer: the YAML's value, said so
    ldm = load_ldm(ckpt, cfg)
    assert ldm.first_stage.config.kind == "kl" and ldm.scale_factor == 0.7 and "no scale_factor buffer" in ldm.scale_factor_source
    z = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(ldm.decode_latents(z), mods["ae"].decode(z / 0.7), atol=1e-6)
