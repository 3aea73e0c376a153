"""VQ-Diffusion as a geneval generator: token transformer + mask-and-replace sampler + VQ decoder.

`load_vqdiffusion(model, vq=..., ...)` reads, and returns a `DiscreteGenerator`:
  - ``demo-vqd``: the shipped Fashion-MNIST demo (geneval/zoo/checkpoints/demo-vqd, tokenizer demo-vq);
  - a native folder (config.json ``"format": "geneval-vqdiffusion"`` + model.safetensors);
  - an official microsoft/VQ-Diffusion checkpoint (``.pth``: {"model", "ema", ...}; the EMA copy
    is used), shape read off the tensors, with ``vq`` the taming VQGAN it was trained on
    (``.ckpt``/``.pth``, read by geneval.models.ae_formats) and, for the ImageNet model, its
    ``token_map`` (help_folder/statistics/taming_vqvae_974.pt: full code → one of 974 tokens);
  - a diffusers pipeline folder (model_index.json with transformer/ = discrete Transformer2DModel,
    keys MAPPED onto geneval's network; vqvae/ = VQModel, WRAPPED (diffusers decodes); scheduler/
    = VQDiffusionScheduler, its alpha/gamma endpoints rebuild the schedule). Text-conditional
    (cross-attention) models load but cannot `generate`: geneval run has no prompts.

CLI flags → arguments: --model → model, --vq → vq, --vq-token-map → token_map, --truncation-rate →
truncation_rate, --skip (or --steps via geneval.sampling.discrete.skip_for_steps) → skip;
--guidance/--convention/--seed/--quantize come in through the SamplingConfig passed to `generate`.
Guidance convention (VQ-Diffusion's improved classifier-free guidance, as diffusers'
VQDiffusionPipeline): log p = u + s(c − u) over the content classes, renormalised by logsumexp,
clamped to [−70, 0]; s = 1 is the plain conditional model (w = s − 1); the unconditional branch
is the learned null class (a table row) or, without one, the mean class embedding; guidance is
applied before truncation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from geneval.errors import GenevalError
from geneval.models.vqdiffusion import (
    VQDiffusionConfig,
    VQDiffusionTransformer,
    config_from_diffusers,
    config_from_official_state,
    from_diffusers_state,
    official_transformer_state,
)
from geneval.models.native import read_json_object, write_config, write_weights
from geneval.sampling import discrete as D

FORMAT = "geneval-vqdiffusion"
FORMAT_VERSION = 1
ZOO = Path(__file__).resolve().parent.parent / "zoo" / "checkpoints"
DEMO = "demo-vqd"
TRUNCATION_RULE = (
    "official: keep sorted classes while the cumulative probability before them is < r "
    "(top-1 and the crossing class kept), others set to log-prob -70, no renormalisation"
)
GUIDANCE_CONVENTION = (
    "s (VQ-Diffusion/diffusers): log p = u + s(c - u), minus logsumexp, clamp [-70, 0]; s = 1 unguided, w = s - 1; before truncation"
)


def _sha(path: Path) -> str:
    from geneval.weights import sha256_file

    return sha256_file(path)


# ---------------------------------------------------------------- token decoders


class TokenDecoder:
    """tokens (B, h, w) in the network's vocabulary → images (B, C, H, W) in about [−1, 1]."""

    grid: tuple[int, int]
    image_size: int
    channels: int
    info: dict[str, Any]

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def to(self, device: torch.device) -> "TokenDecoder":  # pragma: no cover - interface
        raise NotImplementedError


class GenevalVQDecoder(TokenDecoder):
    """geneval's VQ autoencoder (native / taming / LDM checkpoints), with an optional token → code map."""

    def __init__(self, loaded: Any, token_to_code: torch.Tensor | None = None, token_map_info: dict[str, Any] | None = None):
        self.model = loaded.model
        cfg = loaded.config
        if cfg.kind != "vq":
            raise GenevalError(f"--vq {loaded.path} is a {cfg.kind} autoencoder, not a VQ one")
        f = 2 ** (len(cfg.ch_mult) - 1)
        self.grid = (cfg.resolution // f, cfg.resolution // f)
        self.image_size = cfg.resolution
        self.channels = cfg.out_ch
        self.n_codes = int(cfg.n_embed)
        self.token_to_code = token_to_code
        self.info = {
            "path": loaded.path,
            "sha256": loaded.sha256,
            "format": loaded.format,
            "name": loaded.name,
            "n_embed": self.n_codes,
            "token_map": token_map_info,
        }

    def vocabulary(self) -> int:
        return self.n_codes if self.token_to_code is None else int(self.token_to_code.numel())

    def to(self, device: torch.device) -> "GenevalVQDecoder":
        self.model.to(device)
        if self.token_to_code is not None:
            self.token_to_code = self.token_to_code.to(device)
        return self

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        codes = tokens if self.token_to_code is None else self.token_to_code[tokens]
        return self.model.decode_codes(codes)


class DiffusersVQDecoder(TokenDecoder):
    """A diffusers VQModel, wrapped: codebook lookup then `decode(force_not_quantize=True)` as VQDiffusionPipeline."""

    def __init__(self, vqvae: nn.Module, grid: tuple[int, int], info: dict[str, Any]):
        self.vqvae = vqvae.eval().requires_grad_(False)
        c = vqvae.config
        self.grid = grid
        self.image_size = grid[0] * 2 ** (len(c.block_out_channels) - 1)
        self.channels = int(c.out_channels)
        self.info = info

    def vocabulary(self) -> int:
        return int(self.vqvae.config.num_vq_embeddings)

    def to(self, device: torch.device) -> "DiffusersVQDecoder":
        self.vqvae.to(device)
        return self

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        b, h, w = tokens.shape
        emb = self.vqvae.quantize.get_codebook_entry(tokens.reshape(b, -1), shape=(b, h, w, self.vqvae.config.vq_embed_dim))
        return self.vqvae.decode(emb, force_not_quantize=True).sample


def load_token_map(path: str | os.PathLike) -> tuple[torch.Tensor, dict[str, Any]]:
    """Token → code table from VQ-Diffusion's full_to_quantize file (e.g. taming_vqvae_974.pt).

    The file maps every VQGAN code to a token; like the official codec, token k decodes to the first
    code that maps to k. Returns (token_to_code (n_tokens,), provenance).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise GenevalError(f"token map not found: {p}")
    from geneval.models.safe_load import torch_load

    full_to_token = torch_load(p, what="token map")
    if not isinstance(full_to_token, torch.Tensor) or full_to_token.ndim != 1 or full_to_token.dtype.is_floating_point:
        raise GenevalError(f"{p} is not a 1-D integer code → token table")
    full_to_token = full_to_token.long()
    n_tokens = int(full_to_token.max()) + 1
    token_to_code = torch.full((n_tokens,), -1, dtype=torch.long)
    for code in range(full_to_token.numel() - 1, -1, -1):  # descending, so the first code wins
        token_to_code[full_to_token[code]] = code
    if bool((token_to_code < 0).any()):
        raise GenevalError(f"{p}: tokens {torch.nonzero(token_to_code < 0).flatten()[:5].tolist()} have no code")
    return token_to_code, {"path": str(p), "sha256": _sha(p), "n_codes": full_to_token.numel(), "n_tokens": n_tokens}


# ---------------------------------------------------------------- the generator


@dataclass
class DiscreteGenerator:
    """VQ-Diffusion generator per the execution-core contract (kind "discrete").

    Args:
        net: the token transformer (eval mode).
        schedule: its MaskSchedule.
        decoder: tokens → images.
        truncation_rate: r of the truncation trick (None: off).
        skip: 0 = the full T-step chain; s > 0 = official fast skipping (see discrete.fast_timesteps).
        source: provenance of the model file (path, sha256, format, ...).
        extra: more provenance (class names, training record, sampling defaults).
    """

    net: VQDiffusionTransformer
    schedule: D.MaskSchedule
    decoder: TokenDecoder
    truncation_rate: float | None = None
    skip: int = 0
    source: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    kind: str = "discrete"

    def __post_init__(self) -> None:
        cfg = self.net.config
        if tuple(cfg.content_hw) != tuple(self.decoder.grid):
            raise GenevalError(
                f"the transformer expects a {cfg.content_hw[0]}x{cfg.content_hw[1]} token grid, "
                f"the tokenizer makes {self.decoder.grid[0]}x{self.decoder.grid[1]}"
            )
        if cfg.num_tokens != self.decoder.vocabulary():
            hint = " (the ImageNet model needs --vq-token-map taming_vqvae_974.pt)" if cfg.num_tokens == 974 else ""
            raise GenevalError(f"the transformer predicts {cfg.num_tokens} tokens, the tokenizer has {self.decoder.vocabulary()}{hint}")
        if self.schedule.num_classes != cfg.num_tokens or self.schedule.num_timesteps != cfg.diffusion_step:
            raise GenevalError(
                f"schedule ({self.schedule.num_timesteps} steps, {self.schedule.num_classes} classes) does not "
                f"fit the transformer ({cfg.diffusion_step}, {cfg.num_tokens})"
            )
        if self.truncation_rate is not None and not 0 < self.truncation_rate <= 1:
            raise GenevalError(f"truncation rate must lie in (0, 1], got {self.truncation_rate}")
        D.fast_timesteps(self.schedule.num_timesteps, self.skip)  # validates skip

    @property
    def num_classes(self) -> int | None:
        return self.net.config.real_classes

    @property
    def null_label(self) -> int | None:
        return self.num_classes  # label num_classes: the learned row, or beyond the table (mean embedding)

    @property
    def image_size(self) -> int:
        return self.decoder.image_size

    @property
    def image_channels(self) -> int:
        return self.decoder.channels

    @property
    def steps(self) -> int:
        return len(D.fast_timesteps(self.schedule.num_timesteps, self.skip))

    def with_options(self, truncation_rate: float | None | str = "keep", skip: int | None = None) -> "DiscreteGenerator":
        """A copy with another truncation rate ("keep": unchanged; None: off) and/or skip."""
        tr = self.truncation_rate if truncation_rate == "keep" else truncation_rate
        return DiscreteGenerator(
            self.net,
            self.schedule,
            self.decoder,
            tr,
            self.skip if skip is None else skip,  # type: ignore[arg-type]
            self.source,
            self.extra,
        )

    def describe(self) -> dict[str, Any]:
        """Provenance: model + tokenizer files and sha256, network, schedule, truncation, guidance, steps."""
        cfg = self.net.config
        null = None
        if cfg.attn_type == "selfcondition":
            null = "learned row" if cfg.class_number > (cfg.num_classes or cfg.class_number) else "mean class embedding"
        from geneval.sampling.generate import QUANTISATIONS

        return {
            "kind": self.kind,
            "family": "vq-diffusion",
            "model": self.source,
            "tokenizer": self.decoder.info,
            "network": cfg.to_dict(),
            "schedule": self.schedule.describe(),
            "truncation_rate": self.truncation_rate,
            "truncation_rule": TRUNCATION_RULE,
            "skip": self.skip,
            "network_evaluations": self.steps,
            "timesteps_rule": "t = T-1, T-2-skip, ..., 0; q_posterior at t - skip while t > skip (official sample_fast)",
            "guidance_convention": GUIDANCE_CONVENTION,
            "null_class": self.null_label,
            "null_embedding": null,
            "noise": "per-sample Gumbel from torch.Generator(seed + index), one U[0,1) block (K+1, L) per step",
            "quantisation_default": QUANTISATIONS["truncate"],
            "image_size": self.image_size,
            "image_channels": self.image_channels,
            **self.extra,
        }

    def log_x0_fn(self, index: torch.Tensor, y: torch.Tensor | None, scale_s: float | None, align: int) -> D.LogX0Fn:
        """(x_t, t) → guided, truncated log p(x0 | x_t, y), batch-invariant through aligned chunks."""
        from geneval.sampling.aligned import aligned_call

        net = self.net

        def call(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
            if c is None:
                return aligned_call(lambda a, b: net(a, b, None), index, align, x, t)
            return aligned_call(net, index, align, x, t, c)

        if scale_s is None or abs(scale_s - 1.0) < 1e-3:  # the official threshold for "no guidance"

            def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return D.log_x0_from_logits(call(x, t, y))
        else:
            assert y is not None
            y_null = torch.full_like(y, self.null_label)  # type: ignore[arg-type]

            def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                out = D.log_x0_from_logits(call(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y_null])))
                cond, uncond = out.chunk(2)
                return D.guide(cond, uncond, scale_s)

        return D.truncated(fn, self.truncation_rate)

    @torch.no_grad()
    def generate_tokens(self, indices: np.ndarray, labels: np.ndarray | None, cfg: Any, device: torch.device) -> torch.Tensor:
        """Content tokens (B, h, w) for global sample indices (sample i: Gumbel noise from seed + i only)."""
        from geneval.sampling.noise import NoiseSource

        idx = np.asarray(indices, dtype=np.int64)
        ncls = self.num_classes
        if self.net.config.attn_type == "selfcross":
            raise GenevalError("this VQ-Diffusion model is text-conditional (cross-attention); geneval run has no prompts")
        if ncls is None and labels is not None:
            raise GenevalError("class labels given for an unconditional VQ-Diffusion model")
        if ncls is not None:
            if labels is None:
                raise GenevalError("a class-conditional VQ-Diffusion model needs labels")
            labels = np.asarray(labels, dtype=np.int64)
            if labels.shape != idx.shape or (labels.size and (labels.min() < 0 or labels.max() >= ncls)):
                raise GenevalError(f"labels must be {len(idx)} class indices in [0, {ncls})")
        scale_s = cfg.cfg_s
        if scale_s is not None and abs(scale_s - 1.0) >= 1e-3 and ncls is None:
            raise GenevalError("classifier-free guidance needs a class-conditional model")
        self.net.to(device)
        y = None if labels is None else torch.from_numpy(labels).to(device)
        fn = self.log_x0_fn(torch.from_numpy(idx), y, scale_s, cfg.align)
        noise = NoiseSource((cfg.seed + idx).tolist(), device)
        h, w = self.net.config.content_hw
        tokens = D.sample_tokens(fn, self.schedule, noise.rand, len(idx), h * w, skip=self.skip, device=device)
        return tokens.view(len(idx), h, w)

    @torch.no_grad()
    def generate(self, indices: np.ndarray, labels: np.ndarray | None, cfg: Any, device: torch.device) -> np.ndarray:
        """uint8 NHWC images for global sample indices `indices` and their labels (contract: CONTRACT.md)."""
        from geneval.sampling.generate import quantize

        tokens = self.generate_tokens(indices, labels, cfg, device)
        self.decoder.to(device)
        return quantize(self.decoder.decode(tokens).float(), getattr(cfg, "quantize", "truncate"))


# ---------------------------------------------------------------- native format


def save_native_vqdiffusion(
    net: VQDiffusionTransformer,
    schedule: D.MaskSchedule,
    out: str | os.PathLike,
    tokenizer: str,
    class_names: list[str] | None = None,
    training: dict[str, Any] | None = None,
    sampling_defaults: dict[str, Any] | None = None,
) -> Path:
    """Write a native folder: config.json (shape, schedule, tokenizer name + sha256, training) + model.safetensors.

    Args:
        net: the transformer; schedule: its MaskSchedule.
        out: destination folder.
        tokenizer: the VQ autoencoder to decode with: an ae_formats demo name or a path relative to `out`.
        class_names: names of the real classes.
        training: how it was trained (stored verbatim).
        sampling_defaults: truncation_rate / skip / guidance_s the author recommends (recorded only).
    """
    import hashlib

    from geneval.models.ae_formats import load_autoencoder

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in net.state_dict().items()}
    data = write_weights(out, state, metadata={"format": FORMAT})
    ae = load_autoencoder(tokenizer if tokenizer.startswith("demo") else out / tokenizer)
    a1, aT, c1, cT = schedule.params
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": out.name,
        "config": net.config.to_dict(),
        "schedule": {"num_timesteps": schedule.num_timesteps, "att_1": a1, "att_T": aT, "ctt_1": c1, "ctt_T": cT},
        "tokenizer": {"name": tokenizer, "sha256": ae.sha256},
        "class_names": class_names,
        "sampling_defaults": sampling_defaults or {},
        "weights_sha256": hashlib.sha256(data).hexdigest(),
        "training": training or {},
    }
    write_config(out, doc)
    return out


def _strict_load(net: nn.Module, sd: dict[str, torch.Tensor], where: str) -> None:
    own = net.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    reshaped = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or reshaped:
        parts = [
            f"{len(missing)} missing ({', '.join(missing[:3])})" if missing else "",
            f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})" if unexpected else "",
            f"{len(reshaped)} reshaped (e.g. {reshaped[0]}: file {tuple(sd[reshaped[0]].shape)} vs model {tuple(own[reshaped[0]].shape)})"
            if reshaped
            else "",
        ]
        raise GenevalError(f"{where} does not fit the VQ-Diffusion transformer: " + "; ".join(p for p in parts if p))
    net.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)


def _finish(net: nn.Module, device: torch.device | str) -> nn.Module:
    return net.eval().requires_grad_(False).to(device)


def _vq_decoder(vq: str | os.PathLike | None, token_map: str | os.PathLike | None, vq_config: Any, device) -> GenevalVQDecoder:
    from geneval.models.ae_formats import load_autoencoder

    if vq is None:
        raise GenevalError("an official VQ-Diffusion checkpoint needs its VQ tokenizer: pass --vq (e.g. vqgan_imagenet_f16_16384.pth)")
    loaded = load_autoencoder(vq, config=vq_config, device=device)
    tmap, tinfo = load_token_map(token_map) if token_map is not None else (None, None)
    return GenevalVQDecoder(loaded, tmap, tinfo)


def _load_native(folder: Path, vq, token_map, device) -> DiscreteGenerator:
    from geneval.models.ae_formats import load_autoencoder
    from safetensors.torch import load_file

    doc = read_json_object(folder / "config.json")
    if doc.get("format_version", 0) > FORMAT_VERSION:
        raise GenevalError(f"{folder}: native format version {doc.get('format_version')} is newer than this geneval reads")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise GenevalError(f"{folder}: native VQ-Diffusion folder lacks model.safetensors")
    try:
        cfg = VQDiffusionConfig.from_dict(doc["config"])
        sched_doc = dict(doc.get("schedule") or {})
        schedule = D.mask_schedule(int(sched_doc.pop("num_timesteps", cfg.diffusion_step)), cfg.num_tokens, **sched_doc)
    except (KeyError, TypeError, ValueError) as e:
        raise GenevalError(f"{folder}/config.json: bad VQ-Diffusion config ({e})") from None
    net = VQDiffusionTransformer(cfg)
    try:
        sd = load_file(str(weights), device="cpu")
    except Exception as e:  # safetensors raises its own error types
        raise GenevalError(f"cannot read {weights} as safetensors: {' '.join(str(e).split())[:160]}") from None
    _strict_load(net, sd, str(weights))
    tok = doc.get("tokenizer") or {}
    if vq is None:
        name = tok.get("name")
        if not name:
            raise GenevalError(f"{folder}/config.json names no tokenizer; pass --vq")
        loaded = load_autoencoder(name if name.startswith("demo") else folder / name, device=device)
        if tok.get("sha256") and loaded.sha256 != tok["sha256"]:
            raise GenevalError(f"tokenizer {name} has sha256 {loaded.sha256[:12]}…, {folder} was trained on {tok['sha256'][:12]}…")
        decoder = GenevalVQDecoder(loaded)
    else:
        decoder = _vq_decoder(vq, token_map, None, device)
    defaults = doc.get("sampling_defaults") or {}
    source = {"path": str(folder), "sha256": _sha(weights), "format": "native", "name": doc.get("name")}
    extra = {"class_names": doc.get("class_names"), "sampling_defaults": defaults, "training": doc.get("training") or {}}
    return DiscreteGenerator(
        _finish(net, device),
        schedule,
        decoder,
        defaults.get("truncation_rate"),  # type: ignore[arg-type]
        int(defaults.get("skip", 0)),
        source,
        extra,
    )


def _load_official(path: Path, vq, token_map, vq_config, n_head: int, num_classes: int | None, device) -> DiscreteGenerator:
    from geneval.models.safe_load import torch_load

    raw = torch_load(path)
    if not isinstance(raw, dict):
        raise GenevalError(f"{path} holds a {type(raw).__name__}, not a VQ-Diffusion checkpoint")
    sd, buffers, part = official_transformer_state(raw)
    if "to_logits.1.weight" not in sd or "content_emb.emb.weight" not in sd:
        raise GenevalError(f"{path} is not a microsoft/VQ-Diffusion checkpoint (no transformer.content_emb / to_logits tensors)")
    decoder = _vq_decoder(vq, token_map, vq_config, device)
    cfg = config_from_official_state(sd, decoder.grid, n_head=n_head, num_classes=num_classes)
    if cfg.attn_type == "selfcondition" and not 0 < (cfg.num_classes or 0) <= cfg.class_number:
        raise GenevalError(f"--num-classes {cfg.num_classes} does not fit the {cfg.class_number}-row class table of {path}")
    net = VQDiffusionTransformer(cfg)
    _strict_load(net, sd, f"{path} ({part})")
    schedule = D.mask_schedule(cfg.diffusion_step, cfg.num_tokens)
    # The file's own log buffers must be the schedule we rebuild (alpha1, released endpoints).
    for k in ("log_cumprod_at", "log_cumprod_ct", "log_at", "log_ct"):
        if k in buffers and not torch.allclose(buffers[k].float(), getattr(schedule, k), atol=1e-5, equal_nan=True):
            raise GenevalError(f"{path}: its {k} buffer is not VQ-Diffusion's alpha1 schedule for T={cfg.diffusion_step}")
    source = {"path": str(path), "sha256": _sha(path), "format": "vq-diffusion-official", "part": part, "n_head": n_head}
    return DiscreteGenerator(_finish(net, device), schedule, decoder, None, 0, source, {})


def _load_diffusers(folder: Path, device) -> DiscreteGenerator:
    try:
        from diffusers import Transformer2DModel, VQDiffusionScheduler, VQModel
    except ImportError:
        raise GenevalError(f"{folder} is a diffusers pipeline: install the extra (pip install 'geneval[diffusers]')") from None
    try:
        tr = Transformer2DModel.from_pretrained(str(folder / "transformer"), local_files_only=True)
        vqvae = VQModel.from_pretrained(str(folder / "vqvae"), local_files_only=True)
        sc = VQDiffusionScheduler.from_pretrained(str(folder / "scheduler"), local_files_only=True)
    except Exception as e:  # diffusers raises OSError/ValueError variants
        raise GenevalError(f"cannot load a diffusers VQ-Diffusion pipeline from {folder}: {' '.join(str(e).split())[:200]}") from None
    try:
        cfg = config_from_diffusers(tr.config)
    except ValueError as e:
        raise GenevalError(f"{folder}/transformer: {e}") from None
    net = VQDiffusionTransformer(cfg)
    _strict_load(net, from_diffusers_state(tr.state_dict(), cfg), f"{folder}/transformer")
    c = sc.config
    if int(c.num_vec_classes) != cfg.num_tokens + 1:
        raise GenevalError(f"{folder}: scheduler has {c.num_vec_classes} classes, the transformer {cfg.num_tokens + 1}")
    schedule = D.mask_schedule(int(c.num_train_timesteps), cfg.num_tokens, c.alpha_cum_start, c.alpha_cum_end, c.gamma_cum_start, c.gamma_cum_end)
    weights = [p for p in (folder / "transformer").glob("diffusion_pytorch_model*") if p.is_file()]
    vq_weights = [p for p in (folder / "vqvae").glob("diffusion_pytorch_model*") if p.is_file()]
    decoder = DiffusersVQDecoder(
        vqvae.to(device),
        cfg.content_hw,
        {"path": str(folder / "vqvae"), "format": "diffusers VQModel (wrapped)", "sha256": _sha(vq_weights[0]) if len(vq_weights) == 1 else None},
    )
    source = {"path": str(folder), "format": "diffusers (transformer keys mapped)", "sha256": _sha(weights[0]) if len(weights) == 1 else None}
    return DiscreteGenerator(_finish(net, device), schedule, decoder, None, 0, source, {})


def load_vqdiffusion(
    model: str | os.PathLike,
    vq: str | os.PathLike | None = None,
    token_map: str | os.PathLike | None = None,
    vq_config: Any = None,
    n_head: int = 16,
    num_classes: int | None = None,
    truncation_rate: float | None | str = "default",
    skip: int | None = None,
    device: torch.device | str = "cpu",
) -> DiscreteGenerator:
    """Load a VQ-Diffusion generator (see module docstring for the accepted inputs).

    Args:
        model: ``demo-vqd``, a native folder, an official ``.pth``, or a diffusers pipeline folder (--model).
        vq: the VQ tokenizer (--vq): taming/LDM ``.ckpt``/``.pth``, native folder; required for official files.
        token_map: VQ-Diffusion's code → token table (--vq-token-map), e.g. taming_vqvae_974.pt.
        vq_config: shape of the VQ file when it cannot be inferred (preset name or taming YAML, --vq-config).
        n_head: attention heads of an official checkpoint (not visible in the weights; 16 in every release).
        num_classes: real classes of an official class-conditional checkpoint (default: 1000 for a 1001-row
            table, whose last row is the learned null, else the table size; labels beyond use the mean).
        truncation_rate: r in (0, 1] (--truncation-rate); None: off; "default": the checkpoint's recorded default.
        skip: fast-sampling skip (None: the checkpoint's default, else 0).
        device: where to run.
    Raises:
        GenevalError: missing/foreign files, shapes that do not fit, a tokenizer that does not match.
    """
    text = os.fspath(model)
    if text == DEMO:
        folder = ZOO / DEMO
        if not (folder / "config.json").is_file():
            raise GenevalError(
                f"the demo VQ-Diffusion model is not installed (expected {folder}); train it with python -m geneval.zoo.train_vqd_demo"
            )
        gen = _load_native(folder, vq, token_map, device)
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise GenevalError(f"VQ-Diffusion model not found: {text} (not a file, a folder, or {DEMO})")
        if path.is_dir():
            if (path / "model_index.json").is_file():
                gen = _load_diffusers(path, device)
            elif (path / "config.json").is_file() and read_json_object(path / "config.json").get("format") == FORMAT:
                gen = _load_native(path, vq, token_map, device)
            else:
                raise GenevalError(
                    f"{path}: neither a geneval VQ-Diffusion folder (config.json format {FORMAT!r}) nor a diffusers pipeline (model_index.json)"
                )
        else:
            gen = _load_official(path, vq, token_map, vq_config, n_head, num_classes, device)
    tr = gen.truncation_rate if truncation_rate == "default" else truncation_rate
    return gen.with_options(truncation_rate=tr, skip=skip)


LoaderFn = Callable[..., DiscreteGenerator]
