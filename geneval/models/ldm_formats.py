"""CompVis latent-diffusion checkpoints: a Lightning `.ckpt` plus its YAML → denoiser, first stage, schedule.

`load_ldm(ckpt, config)` reads the YAML with yaml.safe_load (model.target LatentDiffusion;
model.params: linear_start, linear_end, timesteps, beta_schedule, parameterization,
scale_factor, scale_by_std, conditioning_key, unet_config, first_stage_config, cond_stage_config)
and the checkpoint with geneval.models.safe_load (weights only; Lightning callback objects are
inert). Every tensor in the state dict is accounted for, or the load fails naming the leftovers:
- model.diffusion_model.* → the LDMUNet (strict: names and shapes);
- model_ema.* (LitEma: dots removed, plus decay and num_updates) → checked one to one against
  the UNet; used instead of the raw weights when the YAML's use_ema is on (CompVis samples
  inside ema_scope), else unused but checked;
- first_stage_model.* → the VQ or KL autoencoder (geneval.models.autoencoder*, strict);
- cond_stage_model.* → the ClassEmbedder (cin256) — text encoders are not supported;
- the schedule buffers (betas, alphas_cumprod, ...) → compared with the YAML's schedule;
- scale_factor → the latent scale when scale_by_std is on (the buffer wins over the YAML).
CompVis' "linear" β schedule is linspace(√β_start, √β_end)², i.e. DiffusionConfig "scaled_linear".

CLI mapping: `geneval run --model ldm.ckpt --config model.yaml` → `load_ldm_generator(model,
config, device=..., weights=--ldm-weights (auto|ema|raw), quantize=--quantize, decode_dtype=...)`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from geneval.errors import GenevalError
from geneval.models.ae_formats import LoadedAE, first_stage_config, load_checked
from geneval.models.autoencoder import build_autoencoder
from geneval.models.native import mismatch_parts, short_list
from geneval.models.ldm_unet import ClassEmbedder, LDMDenoiser, LDMUNet, LDMUNetConfig
from geneval.sampling.schedules import DiffusionConfig

LDM_TARGETS = ("ldm.models.diffusion.ddpm.LatentDiffusion",)
UNET_TARGET = "ldm.modules.diffusionmodules.openaimodel.UNetModel"
CLASS_EMBEDDER = "ldm.modules.encoders.modules.ClassEmbedder"
WEIGHT_CHOICES = ("auto", "ema", "raw")
# Buffers DDPM.register_schedule writes into the state dict (lvlb_weights only in old versions).
SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "lvlb_weights",
)
# LatentDiffusion / DDPM params that do not change sampling (training, logging, data keys).
_INERT_PARAMS = (
    "num_timesteps_cond",
    "log_every_t",
    "first_stage_key",
    "cond_stage_key",
    "cond_stage_trainable",
    "monitor",
    "loss_type",
    "scheduler_config",
    "ckpt_path",
    "ignore_keys",
    "load_only_unet",
    "original_elbo_weight",
    "l_simple_weight",
    "logvar_init",
    "learn_logvar",
    "clip_denoised",
    "use_ema",
    "concat_mode",
    "image_size",
    "channels",
    "unet_trainable",
)
# Params accepted only at their default (anything else changes the model in ways geneval does not reproduce).
_DEFAULT_ONLY = {
    "v_posterior": 0.0,
    "given_betas": None,
    "use_positional_encodings": False,
    "cond_stage_forward": None,
    "cosine_s": 8e-3,
}
_SCHEDULE_PARAMS = (
    "linear_start",
    "linear_end",
    "timesteps",
    "beta_schedule",
    "parameterization",
    "scale_factor",
    "scale_by_std",
    "conditioning_key",
    "unet_config",
    "first_stage_config",
    "cond_stage_config",
)
CONVENTIONS = {
    "ddim": "LDM DDIM 'uniform': c = T // N, timesteps range(0, T, c) + 1; alpha_prev = [abar[0]] + abar[steps[:-1]] "
    "(make_schedule convention 'ldm'); eta as given, noise also at the last step when eta > 0",
    "clip_denoised": "no x0 clipping in latent space",
    "cfg": "eps_u + s (eps_c - eps_u) (the s convention); null class = n_classes - 1; LDM batches [uncond, cond], "
    "geneval [cond | null]: the same per-sample values",
    "decode": "first_stage.decode(z / scale_factor); VQ latents are quantised to the nearest code first (VQModelInterface)",
    "quantisation": "truncate: uint8(255 * clamp((x + 1) / 2, 0, 1)) as LDM's sample scripts",
}


@dataclass
class LoadedLDM:
    """A CompVis latent diffusion model ready to sample, and where every part came from.

    Args:
        denoiser: net(x, t, y) → ε (y None when unconditional); eval mode.
        first_stage: the autoencoder as a LoadedAE; decode with `decode_latents` (or the
            LatentGenerator's FirstStage), i.e. first_stage.decode(z / scale_factor).
        diffusion: the training schedule (β, T, prediction type).
        scale_factor: latent scale; scale_factor_source: where it came from.
        latent_shape: (C, h, w) of the latents the denoiser works on.
        num_classes: real classes (None when unconditional); null_class: the CFG null label.
        unet_config: the UNet's architecture; conditioning_key: None or "crossattn".
        weights: "ema" or "raw" UNet weights used.
        path, sha256: the checkpoint; config_path, config_sha256: the YAML.
        info: tensor accounting and other provenance.
    """

    denoiser: LDMDenoiser
    first_stage: LoadedAE
    diffusion: DiffusionConfig
    scale_factor: float
    scale_factor_source: str
    latent_shape: tuple[int, int, int]
    num_classes: int | None
    null_class: int | None
    unet_config: LDMUNetConfig
    conditioning_key: str | None
    weights: str
    path: str
    sha256: str
    config_path: str
    config_sha256: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return self.latent_shape[1] * self.first_stage.config.downsample_factor

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Latents as the denoiser makes them → images in about [-1, 1] (LDM's decode_first_stage)."""
        ae = self.first_stage.model
        z = z / self.scale_factor
        if self.first_stage.config.kind == "vq":
            z = ae.quantize.lookup(ae.quantize.codes(z))
        return ae.decode(z)

    def describe(self) -> dict[str, Any]:
        """Provenance: both files with sha256, scale factor (+ source), weights, conditioning and conventions."""
        return {
            "format": "compvis-ldm",
            "checkpoint": self.path,
            "checkpoint_sha256": self.sha256,
            "config": self.config_path,
            "config_sha256": self.config_sha256,
            "weights": self.weights,
            "scale_factor": self.scale_factor,
            "scale_factor_source": self.scale_factor_source,
            "latent_shape": list(self.latent_shape),
            "image_size": self.image_size,
            "conditioning_key": self.conditioning_key,
            "num_classes": self.num_classes,
            "null_class": self.null_class,
            "diffusion": self.diffusion.to_dict(),
            "unet": self.unet_config.to_dict(),
            "first_stage": self.first_stage.config.to_dict(),
            "conventions": dict(CONVENTIONS),
            "tensors": self.info.get("tensors", {}),
        }


# ---------------------------------------------------------------- YAML


def read_ldm_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The YAML's `model` mapping (yaml.safe_load), checked to be a CompVis LatentDiffusion config."""
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise GenevalError(f"cannot read LDM config {path}: {' '.join(str(e).split())[:200]}") from None
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("params"), dict):
        raise GenevalError(f"{path}: no model.params section (not a CompVis latent-diffusion config)")
    target = str(model.get("target", ""))
    if target not in LDM_TARGETS:
        raise GenevalError(f"{path}: model.target {target!r} is not a latent diffusion model ({', '.join(LDM_TARGETS)})")
    return model


@dataclass
class LDMSpec:
    """Everything the YAML says about an LDM (parsed and validated before any tensor is read)."""

    unet: LDMUNetConfig
    first_stage_target: str
    first_stage_params: dict[str, Any]
    cond_stage: dict[str, Any] | None
    conditioning_key: str | None
    diffusion: DiffusionConfig
    scale_factor: float
    scale_by_std: bool
    use_ema: bool


def parse_ldm_config(model: dict[str, Any], where: str = "config") -> LDMSpec:
    """Validate model.params: unknown or unsupported keys are errors naming them."""
    p = model["params"]
    known = set(_INERT_PARAMS) | set(_DEFAULT_ONLY) | set(_SCHEDULE_PARAMS)
    unknown = sorted(str(k) for k in p if k not in known)
    if unknown:
        raise GenevalError(f"{where}: unknown model.params key(s) {unknown}")
    for k, default in _DEFAULT_ONLY.items():
        if k in p and p[k] != default:
            raise GenevalError(f"{where}: model.params.{k}: {p[k]!r} is not supported (only {default!r})")
    unet_cfg = p.get("unet_config")
    if not isinstance(unet_cfg, dict) or str(unet_cfg.get("target")) != UNET_TARGET:
        raise GenevalError(f"{where}: unet_config.target must be {UNET_TARGET}")
    unet = LDMUNetConfig.from_params(unet_cfg.get("params") or {}, f"{where}: unet_config")
    fs = p.get("first_stage_config")
    if not isinstance(fs, dict):
        raise GenevalError(f"{where}: model.params.first_stage_config missing")
    cond = p.get("cond_stage_config")
    ck = p.get("conditioning_key")
    if ck is None:  # LatentDiffusion.__init__'s defaults
        ck = "concat" if p.get("concat_mode", True) else "crossattn"
    if cond == "__is_unconditional__":
        ck, cond = None, None
    elif not isinstance(cond, dict):
        raise GenevalError(f"{where}: cond_stage_config {cond!r} is not supported (__is_unconditional__ or a ClassEmbedder)")
    elif str(cond.get("target")) != CLASS_EMBEDDER:
        raise GenevalError(
            f"{where}: cond stage {cond.get('target')!r} is not supported (only {CLASS_EMBEDDER}: class-conditional or unconditional LDMs)"
        )
    if ck not in (None, "crossattn"):
        raise GenevalError(f"{where}: conditioning_key {ck!r} is not supported (unconditional or crossattn)")
    if cond is not None:
        cp = cond.get("params") or {}
        bad = sorted(str(k) for k in cp if k not in ("embed_dim", "n_classes", "key"))
        if bad or "embed_dim" not in cp:
            raise GenevalError(f"{where}: ClassEmbedder params need embed_dim (n_classes, key optional); unknown {bad}")
        if unet.context_dim != int(cp["embed_dim"]):
            raise GenevalError(f"{where}: ClassEmbedder embed_dim {cp['embed_dim']} != UNet context_dim {unet.context_dim}")
    elif unet.use_spatial_transformer:
        raise GenevalError(f"{where}: an unconditional LDM with a spatial transformer has no context to attend to")
    for key, attr in (("channels", "in_channels"), ("image_size", "image_size")):
        if key in p and int(p[key]) != getattr(unet, attr):
            raise GenevalError(f"{where}: model.params.{key} {p[key]} != unet_config {attr} {getattr(unet, attr)}")
    diffusion = _diffusion(p, where)
    scale = p.get("scale_factor", 1.0)
    if not isinstance(scale, (int, float)) or not scale > 0:
        raise GenevalError(f"{where}: scale_factor must be a positive number, got {scale!r}")
    return LDMSpec(
        unet,
        str(fs.get("target", "")),
        fs.get("params") or {},
        cond,
        ck,
        diffusion,
        float(scale),
        bool(p.get("scale_by_std", False)),
        bool(p.get("use_ema", True)),
    )


def _diffusion(p: dict[str, Any], where: str) -> DiffusionConfig:
    schedule = p.get("beta_schedule", "linear")
    lo, hi = float(p.get("linear_start", 1e-4)), float(p.get("linear_end", 2e-2))
    names = {"linear": "scaled_linear", "sqrt_linear": "linear", "cosine": "cosine"}
    if schedule not in names:
        raise GenevalError(f"{where}: beta_schedule {schedule!r} is not supported ({', '.join(names)})")
    pred = {"eps": "eps", "x0": "x0"}.get(p.get("parameterization", "eps"))
    if pred is None:
        raise GenevalError(f"{where}: parameterization {p.get('parameterization')!r} is not supported (eps, x0)")
    return DiffusionConfig(
        num_timesteps=int(p.get("timesteps", 1000)),
        beta_schedule=names[schedule],
        beta_start=None if schedule == "cosine" else lo,
        beta_end=None if schedule == "cosine" else hi,
        prediction_type=pred,
        variance_type="fixed_small",
    )


# ---------------------------------------------------------------- modules and state dicts


def build_ldm_modules(spec: LDMSpec, where: str = "config") -> tuple[LDMUNet, nn.Module, ClassEmbedder | None]:
    """Untrained UNet, first stage and cond stage for `spec` (build under torch.device('meta') to skip allocation)."""
    ae_cfg = first_stage_config(spec.first_stage_target, spec.first_stage_params, None, f"{where}: first_stage_config")
    if ae_cfg.embed_dim != spec.unet.in_channels:
        raise GenevalError(f"{where}: the first stage has {ae_cfg.embed_dim} latent channels, the UNet {spec.unet.in_channels}")
    cond = None
    if spec.cond_stage is not None:
        cp = spec.cond_stage.get("params") or {}
        cond = ClassEmbedder(int(cp["embed_dim"]), int(cp.get("n_classes", 1000)), str(cp.get("key", "class")))
    return LDMUNet(spec.unet), build_autoencoder(ae_cfg), cond


def ema_name(param: str) -> str:
    """LitEma's buffer name for a parameter of LatentDiffusion.model (dots removed)."""
    return "model_ema." + ("diffusion_model." + param).replace(".", "")


def _check(own: dict[str, torch.Tensor], got: dict[str, torch.Tensor], what: str, where: str, prefix: str = "") -> None:
    parts = mismatch_parts(own, got, prefix, against="config")
    if parts:
        raise GenevalError(f"{where}: the {what} does not fit the YAML: " + "; ".join(parts))


def split_state_dict(sd: dict[str, torch.Tensor], spec: LDMSpec, unet: LDMUNet, cond: ClassEmbedder | None, where: str) -> dict[str, Any]:
    """Assign every tensor to its part, check names and shapes, and fail naming any leftover.

    Returns:
        {"unet", "ema" (or None), "first_stage", "cond_stage", "schedule", "scale_factor", "counts"}.
    """
    groups: dict[str, dict[str, torch.Tensor]] = {
        "unet": {},
        "ema": {},
        "first_stage": {},
        "cond_stage": {},
        "schedule": {},
    }
    scale_buf, leftovers, training = None, [], 0
    for k, v in sd.items():
        if k.startswith("model.diffusion_model."):
            groups["unet"][k[len("model.diffusion_model.") :]] = v
        elif k.startswith("model_ema."):
            groups["ema"][k] = v
        elif k.startswith("first_stage_model."):
            sub = k[len("first_stage_model.") :]
            if sub.startswith("loss."):  # a first stage built with its training loss (LPIPS, discriminator)
                training += 1
            else:
                groups["first_stage"][sub] = v
        elif k.startswith("cond_stage_model."):
            groups["cond_stage"][k[len("cond_stage_model.") :]] = v
        elif k in SCHEDULE_BUFFERS:
            groups["schedule"][k] = v
        elif k == "scale_factor":
            scale_buf = v
        elif k == "logvar":  # learn_logvar's training-only parameter
            training += 1
        else:
            leftovers.append(k)
    if leftovers:
        raise GenevalError(f"{where}: {len(leftovers)} tensor(s) belong to no part of an LDM: {short_list(sorted(leftovers))}")
    _check(unet.state_dict(), groups["unet"], "UNet (model.diffusion_model.*)", where, "model.diffusion_model.")
    ema = None
    if groups["ema"]:
        want = {ema_name(n): p for n, p in unet.named_parameters()}
        want.update({"model_ema.decay": torch.zeros(()), "model_ema.num_updates": torch.zeros((), dtype=torch.int32)})
        _check(want, groups["ema"], "EMA copy (model_ema.*)", where)
        ema = {n: groups["ema"][ema_name(n)] for n, _ in unet.named_parameters()}
    if cond is None and groups["cond_stage"]:
        raise GenevalError(f"{where}: cond_stage_model.* tensors in an unconditional model: {short_list(sorted(groups['cond_stage']))}")
    if cond is not None:
        _check(cond.state_dict(), groups["cond_stage"], "ClassEmbedder (cond_stage_model.*)", where, "cond_stage_model.")
    T = spec.diffusion.num_timesteps
    bad = sorted(k for k, v in groups["schedule"].items() if tuple(v.shape) != (T,))
    if bad:
        raise GenevalError(f"{where}: schedule buffer(s) {bad} are not of length timesteps={T}")
    betas = spec.diffusion.betas()
    expect = {"betas": betas, "alphas_cumprod": np.cumprod(1 - betas)}
    expect["alphas_cumprod_prev"] = np.append(1.0, expect["alphas_cumprod"][:-1])
    for name, want in expect.items():
        if name in groups["schedule"] and not np.allclose(groups["schedule"][name].double().numpy(), want, rtol=1e-5, atol=1e-9):
            raise GenevalError(
                f"{where}: the checkpoint's {name} buffer disagrees with the YAML's schedule "
                f"({spec.diffusion.beta_schedule}, {spec.diffusion.beta_start}..{spec.diffusion.beta_end}, T={T})"
            )
    counts = {g: len(v) for g, v in groups.items()}
    counts.update(training_only=training, scale_factor=int(scale_buf is not None))
    if sum(counts.values()) != len(sd):
        raise GenevalError(f"{where}: internal accounting error ({counts} for {len(sd)} tensors)")
    return {
        "unet": groups["unet"],
        "ema": ema,
        "first_stage": groups["first_stage"],
        "cond_stage": groups["cond_stage"],
        "schedule": groups["schedule"],
        "scale_factor": scale_buf,
        "counts": counts,
    }


# ---------------------------------------------------------------- loading


def _float32(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def load_ldm(ckpt: str | os.PathLike, config: str | os.PathLike, device: torch.device | str = "cpu", weights: str = "auto") -> LoadedLDM:
    """Load a CompVis LDM `.ckpt` with its YAML (see module docstring).

    Args:
        ckpt: the Lightning checkpoint (`state_dict` inside) or a bare state dict.
        config: its YAML (configs/latent-diffusion/*.yaml or the one shipped with the model).
        device: where the modules go.
        weights: "auto" (EMA when present and use_ema is on, as CompVis samples), "ema" or "raw".
    Raises:
        GenevalError: a missing or unreadable file, an unsupported config, or tensors that do not fit.
    """
    from geneval.models.formats import file_sha256
    from geneval.models.safe_load import load_checkpoint

    if weights not in WEIGHT_CHOICES:
        raise GenevalError(f"unknown LDM weights choice {weights!r}; use {', '.join(WEIGHT_CHOICES)}")
    ckpt, config = Path(ckpt), Path(config)
    for p in (ckpt, config):
        if not p.is_file():
            raise GenevalError(f"not found: {p}")
    where = str(ckpt)
    model_doc = read_ldm_yaml(config)
    spec = parse_ldm_config(model_doc, str(config))
    with torch.device("meta"):  # shapes only: the real tensors come from the file
        meta_unet, _, meta_cond = build_ldm_modules(spec, str(config))
    raw = load_checkpoint(ckpt)
    sd = raw.get("state_dict", raw) if isinstance(raw, dict) else raw
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise GenevalError(f"{where}: expected a Lightning checkpoint with a state_dict of tensors")
    parts = split_state_dict(sd, spec, meta_unet, meta_cond, where)
    if weights == "ema" and parts["ema"] is None:
        raise GenevalError(f"{where}: --ldm-weights ema, but the checkpoint has no model_ema.* tensors")
    use_ema = parts["ema"] is not None and (weights == "ema" or (weights == "auto" and spec.use_ema))
    # The meta-device UNet/cond stage take the file's tensors as they are (no 400M-parameter random init).
    unet, cond = meta_unet, meta_cond
    unet.load_state_dict(_float32(parts["ema"] if use_ema else parts["unet"]), strict=True, assign=True)
    if cond is not None:
        cond.load_state_dict(_float32(parts["cond_stage"]), strict=True, assign=True)
    if any(t.is_meta for t in (*unet.parameters(), *unet.buffers())):
        raise GenevalError(f"{where}: internal error: UNet tensors left unloaded")
    ae = build_autoencoder(first_stage_config(spec.first_stage_target, spec.first_stage_params, None, str(config)))
    load_checked(ae, parts["first_stage"], f"{where} (first_stage_model.*)", f"{config} first_stage_config")
    if spec.scale_by_std and parts["scale_factor"] is not None:
        scale, source = float(parts["scale_factor"]), "checkpoint buffer (scale_by_std)"
    elif spec.scale_by_std:
        scale, source = spec.scale_factor, "YAML (scale_by_std, but the checkpoint has no scale_factor buffer)"
    else:
        scale, source = spec.scale_factor, "YAML" if "scale_factor" in model_doc["params"] else "LDM default 1.0"
    if not (math.isfinite(scale) and scale > 0):
        raise GenevalError(f"{where}: scale_factor {scale} is not a positive number")
    denoiser = LDMDenoiser(unet, spec.conditioning_key, cond).eval().requires_grad_(False).to(device)
    ae.eval().requires_grad_(False).to(device)
    sha = file_sha256(ckpt)
    first = LoadedAE(
        ae,
        ae.config,
        "ldm",
        str(ckpt),
        sha,
        {"name": f"{ckpt.name}:first_stage_model", "config_source": f"{config} first_stage_config"},
    )
    n_cls = None if cond is None else cond.embedding.num_embeddings
    info = {
        "tensors": parts["counts"],
        "ignored": {"unused_weights": ("raw" if use_ema else "ema") if parts["ema"] else None},
    }
    if not spec.scale_by_std and parts["scale_factor"] is not None:
        info["ignored"]["scale_factor_buffer"] = float(parts["scale_factor"])  # CompVis ignores it too
    return LoadedLDM(
        denoiser,
        first,
        spec.diffusion,
        scale,
        source,
        (spec.unet.in_channels, spec.unet.image_size, spec.unet.image_size),
        None if n_cls is None else n_cls - 1,
        None if n_cls is None else n_cls - 1,
        spec.unet,
        spec.conditioning_key,
        "ema" if use_ema else "raw",
        str(ckpt),
        sha,
        str(config),
        file_sha256(config),
        info,
    )


def load_ldm_generator(
    ckpt: str | os.PathLike,
    config: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    weights: str = "auto",
    quantize: str | None = None,
    decode_dtype: str = "float32",
) -> Any:
    """`geneval run --model ldm.ckpt --config model.yaml`: a LatentGenerator (geneval.sampling.latent) for an LDM.

    Args:
        ckpt, config, device, weights: see load_ldm (--model, --config, --device, --ldm-weights).
        quantize: "truncate" (LDM's own, the default) or "round" (--quantize).
        decode_dtype: the first stage's dtype (float32; float16/bfloat16 on GPUs).
    """
    from geneval.sampling.latent import FirstStage, LatentGenerator

    ldm = load_ldm(ckpt, config, device, weights)
    first = FirstStage(ldm.first_stage, ldm.scale_factor, ldm.scale_factor_source, decode_dtype)
    return LatentGenerator(
        ldm.denoiser,
        ldm.diffusion,
        ldm.latent_shape,
        first,
        family="ldm",
        num_classes=ldm.num_classes,
        null_class=ldm.null_class,
        cfg_channels="all",
        quantize=quantize,
        denoiser_info=ldm.describe(),
        sampling_defaults={"sampler": "ddim", "respacing_convention": "ldm", "clip_denoised": False},
    )
