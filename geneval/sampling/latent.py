"""Latent diffusion generators: a latent denoiser sampled with geneval's samplers, then a first-stage decoder.

`LatentGenerator` follows the generator contract of the execution core (kind, num_classes,
image_size, image_channels, describe(), generate(indices, labels, cfg, device) → uint8 NHWC):
- sample i's initial latent and every later draw come from seed cfg.seed + i (NoiseSource), and
  both the denoiser and the decoder run through index-aligned chunks (aligned_call), so an
  image does not depend on the batch it was generated in;
- classifier-free guidance wraps the denoiser (guidance.cfg_model_fn) with the scale in the
  run's convention ("w" or "s"; official DiT's 1.5 is "s") and a channel rule: "all" latent
  channels (diffusers' DiTPipeline) or "official" = the first 3 (facebookresearch/DiT's
  forward_with_cfg); the rule is explicit and recorded;
- decoding is `first_stage.decode(z / scale_factor)` in a recorded dtype;
- x̂0 is never clipped in latent space (official DiT clip_denoised=False; LDM likewise);
- quantisation follows the family (DiT/EDM round, ADM/LDM truncate) unless overridden, recorded.

The denoiser is any callable net(x, t, y) → ε (C or 2C channels), so geneval's DiT, ADM UNet or
the LDM UNet all plug in.

Loaders (CLI flags in brackets):
    load_dit_generator(model [--model], vae [--vae], arch [--arch], vae_config [--ae-config],
                       scale_factor [--scale-factor], cfg_channels [--cfg-channels], quantize [--quantize])
    load_latent_native(folder)        a geneval DiT folder with a "latent" section (the demo)
    load_demo_ldm()                   `--model demo-ldm`
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geneval.errors import GenevalError
from geneval.sampling.aligned import aligned_call
from geneval.sampling.guidance import cfg_model_fn
from geneval.sampling.noise import NoiseSource
from geneval.sampling.samplers import get_sampler
from geneval.sampling.schedules import DiffusionConfig, make_schedule

NetCall = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]

# Which output channels CFG guides: the `channels` argument of guidance.cfg_model_fn.
CFG_CHANNELS: dict[str, str] = {
    "all": "guide all C latent channels (diffusers DiTPipeline, LDM)",
    "official": "guide channels [:3] only; channel 3 and the sigma channels stay conditional (facebookresearch/DiT forward_with_cfg)",
}
# The quantisation each model family's own evaluation used (REFERENCE §3).
QUANTIZE_BY_FAMILY: dict[str, str] = {"dit": "round", "edm": "round", "adm": "truncate", "ldm": "truncate"}
DECODE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def guided_channels(rule: str, channels: int) -> int:
    """Leading output channels CFG guides under `rule` ("all" or "official") for C latent channels."""
    if rule not in CFG_CHANNELS:
        raise GenevalError(f"unknown CFG channel rule {rule!r}; choose one of {', '.join(CFG_CHANNELS)}")
    return channels if rule == "all" else min(3, channels)


# ---------------------------------------------------------------- first stage


class FirstStage:
    """A first-stage decoder z ↦ images, with the latent scale: decode(z) = ae.decode(z / scale_factor).

    Args:
        ae: a geneval.models.ae_formats.LoadedAE (native, LDM, SD .safetensors/.ckpt, diffusers).
        scale_factor: the latent scale the denoiser was trained with.
        scale_source: where scale_factor came from (recorded).
        dtype: decode dtype name (float32; float16/bfloat16 on GPUs).
    """

    def __init__(self, ae: Any, scale_factor: float, scale_source: str, dtype: str = "float32"):
        if dtype not in DECODE_DTYPES:
            raise GenevalError(f"unknown decode dtype {dtype!r}; choose one of {', '.join(DECODE_DTYPES)}")
        if not scale_factor > 0:
            raise GenevalError(f"latent scale factor must be > 0, got {scale_factor}")
        self.ae, self.scale_factor, self.scale_source, self.dtype = ae, float(scale_factor), scale_source, dtype
        self.module = ae.model
        kind = ae.config.kind
        if ae.format == "diffusers":
            self._decode = lambda z: self.module.vae.decode(z).sample
        elif kind == "vq":
            # LDM's VQModelInterface.decode quantises the latent first.
            q = self.module.quantize
            self._decode = lambda z: self.module.decode(q.lookup(q.codes(z)))
        else:
            self._decode = self.module.decode
        self.module.to(DECODE_DTYPES[dtype])

    @property
    def latent_channels(self) -> int:
        return int(self.ae.config.embed_dim)

    @property
    def downsample(self) -> int:
        return int(self.ae.config.downsample_factor)

    @property
    def image_channels(self) -> int:
        return int(self.ae.config.out_ch)

    def to(self, device: torch.device | str) -> FirstStage:
        self.module.to(device)
        return self

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, h, w) → float32 images in about [-1, 1] (not clamped)."""
        with torch.no_grad():
            return self._decode((z / self.scale_factor).to(DECODE_DTYPES[self.dtype])).float()

    def describe(self) -> dict[str, Any]:
        """Autoencoder file + sha256, format, kind, scale factor (+ source) and decode dtype."""
        return {
            "autoencoder": self.ae.path,
            "autoencoder_sha256": self.ae.sha256,
            "autoencoder_format": self.ae.format,
            "autoencoder_kind": self.ae.config.kind,
            "autoencoder_name": self.ae.name,
            "scale_factor": self.scale_factor,
            "scale_factor_source": self.scale_source,
            "decode_dtype": self.dtype,
            "decode_rule": "ae.decode(z / scale_factor)" + (" after VQ quantisation" if self.ae.config.kind == "vq" else ""),
        }


def resolve_scale_factor(explicit: float | None, ae: Any, family_default: float | None) -> tuple[float, str]:
    """The latent scale: explicit > the autoencoder's own record > the model family's constant."""
    if explicit is not None:
        return float(explicit), "given"
    own = getattr(ae.config, "scale_factor", None)
    if own is not None:
        return float(own), f"autoencoder ({ae.format})"
    if family_default is not None:
        return float(family_default), "model family default"
    raise GenevalError(f"no latent scale factor for autoencoder {ae.path}: pass --scale-factor (0.18215 for the SD VAE)")


# ---------------------------------------------------------------- the generator


class LatentGenerator:
    """Class-conditional or unconditional latent diffusion: denoise latents, then decode.

    Args:
        net: the denoiser, net(x, t, y) → ε (C or 2C output channels); y None for unconditional.
        diffusion: its training DiffusionConfig.
        latent_shape: (C, h, w) of the latents.
        first_stage: the FirstStage decoder (with scale factor).
        family: "dit", "ldm", "adm" or "edm": sets the default quantisation.
        num_classes: real classes, or None if unconditional.
        null_class: label of the unconditional embedding (for CFG), or None.
        cfg_channels: "all" or "official" (see CFG_CHANNELS).
        quantize: "round" or "truncate"; None: the family's rule.
        denoiser_info: provenance of the denoiser (file, sha256, config).
        class_names: optional names of the real classes.
        sampling_defaults: the sampler settings the model's authors used (for the CLI's defaults).
    """

    kind = "latent"

    def __init__(
        self,
        net: NetCall,
        diffusion: DiffusionConfig,
        latent_shape: tuple[int, int, int],
        first_stage: FirstStage,
        *,
        family: str,
        num_classes: int | None = None,
        null_class: int | None = None,
        cfg_channels: str = "all",
        quantize: str | None = None,
        denoiser_info: dict[str, Any] | None = None,
        class_names: list[str] | None = None,
        sampling_defaults: dict[str, Any] | None = None,
    ):
        if family not in QUANTIZE_BY_FAMILY:
            raise GenevalError(f"unknown model family {family!r}; known: {', '.join(QUANTIZE_BY_FAMILY)}")
        guided_channels(cfg_channels, latent_shape[0])  # validates the rule
        rule = quantize or QUANTIZE_BY_FAMILY[family]
        if rule not in ("round", "truncate"):
            raise GenevalError(f"unknown quantisation {rule!r}; choose round or truncate")
        if first_stage.latent_channels != latent_shape[0]:
            raise GenevalError(f"the autoencoder has {first_stage.latent_channels} latent channels, the denoiser {latent_shape[0]}")
        self.net, self.diffusion, self.latent_shape, self.first_stage = net, diffusion, tuple(int(v) for v in latent_shape), first_stage
        self.family, self.num_classes, self.null_class, self.cfg_channels = family, num_classes, null_class, cfg_channels
        self.quantize_rule, self.quantize_source = rule, "given" if quantize else f"family {family}"
        self.denoiser_info, self.class_names = denoiser_info or {}, class_names
        self.sampling_defaults = sampling_defaults or {}
        self.image_size = self.latent_shape[1] * first_stage.downsample
        self.image_channels = first_stage.image_channels

    def describe(self) -> dict[str, Any]:
        """Provenance: denoiser and autoencoder files + sha256, scale factor, decode dtype and every convention."""
        return {
            "kind": self.kind,
            "family": self.family,
            "denoiser": self.denoiser_info,
            "diffusion": self.diffusion.to_dict(),
            "latent_shape": list(self.latent_shape),
            "image_size": self.image_size,
            "image_channels": self.image_channels,
            "num_classes": self.num_classes,
            "null_class": self.null_class,
            **self.first_stage.describe(),
            "cfg_channels": self.cfg_channels,
            "cfg_channels_rule": CFG_CHANNELS[self.cfg_channels],
            "cfg_batch_order": "[conditional | null class]",
            "clip_denoised": False,
            "quantisation": self.quantize_rule,
            "quantisation_source": self.quantize_source,
            "respacing_convention": self.sampling_defaults.get("respacing_convention")
            or "adm (guided-diffusion space_timesteps, DiT's create_diffusion)",
            "sampling_defaults": self.sampling_defaults,
        }

    def _net_call(self, index: torch.Tensor, align: int, bf16: bool, device: torch.device) -> NetCall:
        def call(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
            ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            with ctx:
                if y is None:
                    return aligned_call(lambda a, b: self.net(a, b, None), index, align, x, t)
                return aligned_call(self.net, index, align, x, t, y)

        return call

    def _labels(self, labels: np.ndarray | None, n: int, device: torch.device) -> torch.Tensor | None:
        if self.num_classes is None:
            if labels is not None:
                raise GenevalError("class labels given for an unconditional latent model")
            return None
        if labels is None:
            raise GenevalError("this latent model is class-conditional: labels are required")
        lab = np.asarray(labels, dtype=np.int64)
        if lab.shape != (n,):
            raise GenevalError(f"{lab.size} labels for {n} samples")
        if lab.size and (lab.min() < 0 or lab.max() >= self.num_classes):
            raise GenevalError(f"class labels must lie in [0, {self.num_classes}), got {lab.min()}..{lab.max()}")
        return torch.from_numpy(lab).to(device)

    def sample_latents(self, indices: np.ndarray, labels: np.ndarray | None, cfg: Any, device: torch.device | str) -> torch.Tensor:
        """Final latents z0 (B, C, h, w) for global sample indices (before decoding)."""
        device = torch.device(device)
        cfg.validate()
        if cfg.classifier_scale > 0:
            raise GenevalError("classifier guidance is not supported for latent models; use classifier-free guidance")
        idx = np.asarray(indices, dtype=np.int64)
        y = self._labels(labels, len(idx), device)
        s = cfg.cfg_s
        guided = s is not None and s != 1.0
        if guided and (y is None or self.null_class is None):
            raise GenevalError("classifier-free guidance needs a class-conditional latent model with a null class")
        if isinstance(self.net, torch.nn.Module):
            self.net.to(device)
        self.first_stage.to(device)
        spec = get_sampler(cfg.sampler)
        # The family's own timesteps rule: CompVis LDM's DDIM grid (range(0, T, T//N) + 1, ᾱ_prev from the
        # shifted grid) for LDM checkpoints, guided-diffusion's space_timesteps (DiT's create_diffusion) else.
        conv = getattr(cfg, "respacing_convention", None) or self.sampling_defaults.get("respacing_convention") or "adm"
        schedule = make_schedule(self.diffusion, cfg.resolved_respacing() if conv == "adm" else cfg.steps, conv)
        knobs: dict[str, Any] = {"clip_denoised": False}
        if cfg.sampler == "ddim":
            knobs["eta"] = cfg.eta
        if cfg.sampler == "ddpm" and cfg.variance:
            knobs["variance"] = cfg.variance
        noise = NoiseSource((cfg.seed + idx).tolist(), device)
        z = noise.randn(self.latent_shape)
        net_call = self._net_call(torch.from_numpy(idx), cfg.align, cfg.autocast_bf16, device)
        if guided:
            model_fn = cfg_model_fn(net_call, y, self.null_class, s, guided_channels(self.cfg_channels, self.latent_shape[0]))
        else:
            model_fn = lambda a, t: net_call(a, t, y)  # noqa: E731
        with torch.no_grad():
            return spec.fn(model_fn, z, schedule, noise, **knobs)

    def decode(self, z: torch.Tensor, indices: np.ndarray, align: int = 8) -> torch.Tensor:
        """Decoded float images (B, C, H, W), unclamped, through index-aligned chunks."""
        index = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        return aligned_call(self.first_stage.decode, index, align, z)

    def generate_float(self, indices: np.ndarray, labels: np.ndarray | None, cfg: Any, device: torch.device | str) -> torch.Tensor:
        """Decoded images in about [-1, 1] before quantisation (NCHW float32)."""
        return self.decode(self.sample_latents(indices, labels, cfg, device), indices, cfg.align)

    def generate(self, indices: np.ndarray, labels: np.ndarray | None, cfg: Any, device: torch.device | str) -> np.ndarray:
        """uint8 NHWC images for global sample indices (len B) and their labels, by the recorded quantisation rule."""
        from geneval.sampling.generate import quantize

        return quantize(self.generate_float(indices, labels, cfg, device), self.quantize_rule)


# ---------------------------------------------------------------- loaders


def dit_diffusion(learn_sigma: bool) -> DiffusionConfig:
    """The official DiT diffusion (create_diffusion): linear β over T = 1000, ε prediction, learned
    range if learn_sigma else fixed large (sigma_small=False)."""
    return DiffusionConfig(
        num_timesteps=1000, beta_schedule="linear", prediction_type="eps", variance_type="learned_range" if learn_sigma else "fixed_large"
    )


# Official sample_ddp.py settings behind the FID-50K numbers (DiT-XL/2 256: FID 2.27).
DIT_SAMPLING_DEFAULTS = {"sampler": "ddpm", "steps": 250, "respacing": "250", "guidance": 1.5, "convention": "s"}


def load_dit_generator(
    model: str | os.PathLike,
    vae: str | os.PathLike | None,
    *,
    arch: str | None = None,
    vae_config: str | os.PathLike | None = None,
    scale_factor: float | None = None,
    cfg_channels: str | None = None,
    quantize: str | None = None,
    decode_dtype: str = "float32",
    device: torch.device | str = "cpu",
) -> LatentGenerator:
    """A LatentGenerator for a DiT checkpoint decoded by an autoencoder.

    Args:
        model: official .pt/.safetensors, train.py checkpoint, or diffusers DiT folder (--model).
        vae: diffusers AutoencoderKL folder, SD VAE .safetensors/.ckpt, or an LDM checkpoint (--vae);
            None for a DiTPipeline folder, whose vae/ is used.
        arch: official architecture name to check ("DiT-XL/2") (--arch).
        vae_config: shape for LDM-layout VAE files (preset such as sd-vae, or YAML) (--ae-config).
        scale_factor: latent scale (--scale-factor); default: the VAE's own, else DiT's 0.18215.
        cfg_channels: "official" (first 3 channels) or "all"; default: "official" for official
            checkpoints, "all" for diffusers folders (what each codebase does) (--cfg-channels).
        quantize: "round" (DiT's default) or "truncate" (--quantize).
        decode_dtype: float32 (default), float16 or bfloat16.
        device: where to run.
    """
    from geneval.models.ae_formats import load_autoencoder
    from geneval.models.dit import DIT_LATENT_SCALE, load_dit

    if vae is None and (Path(model) / "vae" / "config.json").is_file():
        vae = Path(model) / "vae"  # a DiTPipeline folder brings its own VAE
    if vae is None:
        raise GenevalError("a DiT samples latents: pass the autoencoder with --vae (e.g. a diffusers sd-vae-ft-ema folder)")
    if cfg_channels is not None and cfg_channels not in CFG_CHANNELS:
        raise GenevalError(f"unknown CFG channel rule {cfg_channels!r}; choose one of {', '.join(CFG_CHANNELS)}")
    dit = load_dit(model, arch, device=device)
    ae = load_autoencoder(vae, vae_config, device=device)
    scale, source = resolve_scale_factor(scale_factor, ae, DIT_LATENT_SCALE)
    c = dit.config
    rule = cfg_channels or ("all" if dit.format == "diffusers" else "official")
    return LatentGenerator(
        dit.net,
        dit_diffusion(c.learn_sigma),
        (c.in_channels, c.input_size, c.input_size),
        FirstStage(ae, scale, source, decode_dtype),
        family="dit",
        num_classes=c.num_classes,
        null_class=c.null_class,
        cfg_channels=rule,
        quantize=quantize,
        denoiser_info=dit.describe(),
        sampling_defaults=DIT_SAMPLING_DEFAULTS,
    )


def load_latent_native(
    folder: str | os.PathLike,
    *,
    cfg_channels: str = "all",
    quantize: str | None = None,
    decode_dtype: str = "float32",
    device: torch.device | str = "cpu",
) -> LatentGenerator:
    """A geneval DiT folder whose config.json names its autoencoder, scale and diffusion (the demo's format).

    Args:
        folder: the folder (config.json + model.safetensors).
        cfg_channels, quantize, decode_dtype, device: as in load_dit_generator.
    """
    from geneval.models.ae_formats import load_autoencoder
    from geneval.models.dit import load_dit

    folder = Path(folder)
    try:
        doc = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        lat = doc["latent"]
        diffusion = DiffusionConfig.from_dict(doc["diffusion"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GenevalError(f"{folder}: not a geneval latent model folder ({type(e).__name__}: {e})") from None
    dit = load_dit(folder, device=device)
    ae = load_autoencoder(lat["autoencoder_spec"], device=device)
    if lat.get("autoencoder_sha256") and ae.sha256 != lat["autoencoder_sha256"]:
        raise GenevalError(
            f"{folder} was trained on autoencoder {lat['autoencoder']} sha256 {lat['autoencoder_sha256'][:12]}…, "
            f"but {ae.path} has {str(ae.sha256)[:12]}…"
        )
    c = dit.config
    return LatentGenerator(
        dit.net,
        diffusion,
        (c.in_channels, c.input_size, c.input_size),
        FirstStage(ae, float(lat["scale_factor"]), "checkpoint config.json", decode_dtype),
        family="dit",
        num_classes=c.num_classes,
        null_class=c.null_class,
        cfg_channels=cfg_channels,
        quantize=quantize or doc.get("quantize"),
        denoiser_info=dit.describe(),
        class_names=doc.get("class_names"),
        sampling_defaults=doc.get("sampling_defaults"),
    )


def is_latent_native(path: str | os.PathLike) -> bool:
    """True for a geneval DiT folder that records its autoencoder (config.json with a "latent" section)."""
    cfg = Path(path) / "config.json"
    try:
        doc = json.loads(cfg.read_text(encoding="utf-8")) if cfg.is_file() else None
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == "geneval-dit" and isinstance(doc.get("latent"), dict)


def load_latent_generator(model: str | os.PathLike, vae: str | os.PathLike | None = None, **kw: Any) -> LatentGenerator:
    """One entry for `geneval run --model X [--vae V]`: "demo-ldm", a geneval latent folder (its own
    autoencoder; --vae is then an error), or a DiT checkpoint decoded by --vae (see load_dit_generator).

    Args:
        model: --model. vae: --vae. kw: load_dit_generator's keyword arguments (or, for native
            folders, cfg_channels / quantize / decode_dtype / device).
    """
    text = os.fspath(model)
    native = text == "demo-ldm" or is_latent_native(text)
    if native:
        if vae is not None:
            raise GenevalError(f"{text} carries its own autoencoder; drop --vae")
        kw = {k: v for k, v in kw.items() if v is not None}  # unset CLI options arrive as None
        bad = sorted(set(kw) - {"cfg_channels", "quantize", "decode_dtype", "device"})
        if bad:
            raise GenevalError(f"{text} is a geneval latent model; option(s) {', '.join(bad)} apply to DiT checkpoints only")
        return load_demo_ldm(**kw) if text == "demo-ldm" else load_latent_native(text, **kw)
    return load_dit_generator(model, vae, **kw)


def load_demo_ldm(device: torch.device | str = "cpu", **kw: Any) -> LatentGenerator:
    """The shipped latent demo (`--model demo-ldm`): a tiny DiT on the KL demo autoencoder's latents."""
    from geneval.zoo import demo_ldm_path

    return load_latent_native(demo_ldm_path(), device=device, **kw)
