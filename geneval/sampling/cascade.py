"""ADM cascades (ADM-G+U): a base model samples at low resolution, an upsampler refines it.

Stage 1 is ordinary sampling of the base model with the run's SamplingConfig (its sampler,
steps, guidance and classifier guidance), done by `generate.generate_range`, so a cascade's base
images equal `geneval sample` of the base model with the same config. Between the stages the
images are quantised exactly as guided-diffusion's image_sample.py writes them
(((x+1)·127.5).clamp(0,255) → uint8) and read back as super_res_sample.py does (uint8/127.5 − 1).
Stage 2 samples the super-resolution model conditioned on them (the model upsamples them
bilinearly itself) with its own settings, `UpsamplerSampling`; super_res_sample.py uses DDPM with
the README's 250 respaced steps, which is the default here.

Randomness: sample i's base noise comes from seed s = cfg.seed + i (as everywhere in geneval);
its upsampler noise from a second stream seeded with `stage_seed(s, 1)`, a 64-bit word drawn from
numpy's SeedSequence(entropy=s, spawn_key=(1,)). Both depend on i alone, so images are identical
whatever the batch composition, and the two stages never share a stream.

CLI mapping (the lead wires it): `geneval run --model base.pt --upsampler up.pt` → `load_cascade`
(base/upsampler = --model/--upsampler; base_preset/upsampler_preset = --preset/--upsampler-preset;
base_flags/upsampler_flags = --model-flags/--upsampler-flags; classifier/classifier_preset =
--classifier/--classifier-preset); --steps/--sampler/--guidance/--classifier-scale drive the base
stage; --upsampler-sampler/--upsampler-steps/--upsampler-respacing/--upsampler-guidance → `UpsamplerSampling`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from geneval.errors import GenevalError
from geneval.sampling.aligned import aligned_call
from geneval.sampling.generate import QUANTISATIONS, SamplingConfig, check_models, generate_range, quantize
from geneval.sampling.guidance import cfg_model_fn
from geneval.sampling.noise import NoiseSource
from geneval.sampling.samplers import get_sampler
from geneval.sampling.schedules import StepCountError, make_schedule

LOW_RES_RULE = "low_res = uint8/127.5 - 1, bilinear upsampling (align_corners=False, no antialias), concatenated after x_t; never noised"
BETWEEN_STAGES = QUANTISATIONS["truncate"] + ", then /127.5 - 1 (guided-diffusion image_sample.py -> super_res_sample.py)"
NOISE_RULE = "base: seed+i; upsampler: SeedSequence(entropy=seed+i, spawn_key=(1,)).generate_state(1, uint64)[0]"


def stage_seed(seed: int, stage: int) -> int:
    """The seed of a sample's noise stream for cascade stage `stage` (0 = base: the seed itself)."""
    if stage == 0:
        return int(seed)
    if seed < 0:
        raise GenevalError(f"cascade seeds must be >= 0, got {seed}")
    return int(np.random.SeedSequence(int(seed), spawn_key=(stage,)).generate_state(1, np.uint64)[0])


@dataclass(frozen=True)
class UpsamplerSampling:
    """How the upsampler stage samples (recorded separately from the base stage's SamplingConfig).

    Args:
        sampler: registered sampler; "ddpm" as in super_res_sample.py.
        steps: steps (the guided-diffusion respacing count for ddpm/ddim).
        respacing: explicit respacing spec; None: the sampler's default for `steps`.
        eta: DDIM η.
        variance: DDPM variance override; None: the model's (learned range for ADM-U).
        guidance: classifier-free guidance (needs an upsampler with a null class); None: off.
        convention: "w" or "s" for `guidance`.
        clip_denoised: clip x̂0 to [-1, 1] (super_res_sample.py's default True).
    """

    sampler: str = "ddpm"
    steps: int = 250
    respacing: str | None = None
    eta: float = 0.0
    variance: str | None = None
    guidance: float | None = None
    convention: str = "w"
    clip_denoised: bool = True

    def sampling_config(self, run: SamplingConfig) -> SamplingConfig:
        """The run's SamplingConfig with this stage's knobs (seed, n, align, bf16 and quantisation kept)."""
        return dataclasses.replace(
            run,
            sampler=self.sampler,
            steps=self.steps,
            respacing=self.respacing,
            eta=self.eta,
            variance=self.variance,
            guidance=self.guidance,
            convention=self.convention,
            classifier_scale=0.0,
            clip_denoised=self.clip_denoised,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class CascadeGenerator:
    """Base model → uint8 → super-resolution model, per the generator contract (kind "cascade").

    Args:
        base: LoadedModel of the low-resolution diffusion model.
        upsampler: LoadedModel of the super-resolution model (config.super_res).
        upsampler_sampling: the upsampler stage's settings.
        classifier: optional LoadedModel noisy classifier for the base stage (cfg.classifier_scale).
    """

    kind = "cascade"

    def __init__(self, base: Any, upsampler: Any, upsampler_sampling: UpsamplerSampling | None = None, classifier: Any = None):
        self.base, self.upsampler, self.classifier = base, upsampler, classifier
        self.upsampler_sampling = upsampler_sampling or UpsamplerSampling()
        ucfg = getattr(upsampler, "config", None)
        if upsampler.kind != "unet" or not getattr(ucfg, "super_res", False):
            raise GenevalError(f"--upsampler {upsampler.source} is not a super-resolution model (ADM SuperResModel)")
        if base.kind != "unet" or getattr(base.config, "super_res", False):
            raise GenevalError(f"--model {base.source} must be a plain diffusion model to be the base of a cascade")
        if ucfg.low_res_size is not None and ucfg.low_res_size != base.image_size:
            raise GenevalError(f"the upsampler takes {ucfg.low_res_size}px images but the base model makes {base.image_size}px")
        if base.in_channels != upsampler.in_channels:
            raise GenevalError(f"base model has {base.in_channels} channels, the upsampler {upsampler.in_channels}")
        if base.is_conditional and upsampler.is_conditional and base.num_classes != upsampler.num_classes:
            raise GenevalError(f"base model has {base.num_classes} classes, the upsampler {upsampler.num_classes}")
        label_source = base if base.is_conditional else classifier
        if upsampler.is_conditional and label_source is None:
            raise GenevalError("the upsampler is class-conditional but the base model is not (and no classifier gives labels)")
        self.num_classes: int | None = label_source.num_classes if label_source is not None else upsampler.num_classes
        self.image_size: int = upsampler.image_size
        self.image_channels: int = upsampler.in_channels

    # ---------------------------------------------------------------- contract

    def stage_configs(self, cfg: SamplingConfig) -> tuple[SamplingConfig, SamplingConfig]:
        """(base stage config, upsampler stage config) for a run's SamplingConfig."""
        return dataclasses.replace(cfg, quantize="truncate"), self.upsampler_sampling.sampling_config(cfg)

    def check(self, cfg: SamplingConfig) -> None:
        """Raise GenevalError if either stage cannot run as configured (before any sampling)."""
        base_cfg, up_cfg = self.stage_configs(cfg)
        base_cfg.validate()
        up_cfg.validate()
        check_models(self.base, base_cfg, self.classifier if cfg.classifier_scale > 0 else None)
        try:
            check_models(self.upsampler, up_cfg)
        except StepCountError as e:  # the upsampler's count comes from --upsampler-steps
            raise e.for_option("--upsampler-steps") from None

    def describe(self, cfg: SamplingConfig | None = None) -> dict[str, Any]:
        """Provenance: both models (+ classifier), each stage's sampling, and the cascade's conventions."""
        base_cfg, up_cfg = self.stage_configs(cfg) if cfg is not None else (None, None)
        return {
            "kind": self.kind,
            # both checkpoints identify a cascade: "<base sha256>+<upsampler sha256>"
            "model_sha256": f"{self.base.weights_sha256}+{self.upsampler.weights_sha256}",
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "base": self.base.describe(),
            "upsampler": self.upsampler.describe(),
            "classifier": self.classifier.describe() if self.classifier is not None else None,
            "base_sampling": base_cfg.to_dict() if base_cfg else "the run's SamplingConfig",
            "upsampler_sampling": up_cfg.to_dict() if up_cfg else self.upsampler_sampling.to_dict(),
            "conventions": {
                "low_res_conditioning": LOW_RES_RULE,
                "between_stages": BETWEEN_STAGES,
                "noise_seeds": NOISE_RULE,
                "final_quantisation": QUANTISATIONS[cfg.quantize] if cfg else "the run's quantize rule",
            },
        }

    def generate(self, indices: np.ndarray, labels: np.ndarray | None, cfg: SamplingConfig, device: torch.device | str | None = None) -> np.ndarray:
        """uint8 NHWC images (upsampler resolution) for global sample indices and their labels."""
        images, _ = self.generate_with_base(indices, labels, cfg, device)
        return images

    def generate_with_base(
        self, indices: np.ndarray, labels: np.ndarray | None, cfg: SamplingConfig, device: torch.device | str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(final images, the base stage's uint8 images) for the given indices."""
        self.check(cfg)
        idx = np.asarray(indices, dtype=np.int64)
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
            if labels.shape != idx.shape:
                raise GenevalError(f"{labels.size} labels for {idx.size} samples")
        elif self.num_classes is not None:
            raise GenevalError("this cascade is class-conditional: pass one label per sample")
        if idx.size == 0:
            return np.zeros((0, self.image_size, self.image_size, self.image_channels), np.uint8), np.zeros(
                (0, self.base.image_size, self.base.image_size, self.image_channels), np.uint8
            )
        device = torch.device(device) if device is not None else next(self.base.net.parameters()).device
        low = self._base_stage(idx, labels, cfg, device)
        return self._upsampler_stage(idx, labels, low, cfg, device), low

    # ---------------------------------------------------------------- stages

    def _base_stage(self, idx: np.ndarray, labels: np.ndarray | None, cfg: SamplingConfig, device: torch.device) -> np.ndarray:
        base_cfg, _ = self.stage_configs(cfg)
        base_labels = labels if (self.base.is_conditional or (self.classifier is not None and cfg.classifier_scale > 0)) else None
        out = []
        # generate_range walks contiguous index ranges; split arbitrary indices into such runs.
        cuts = np.flatnonzero(np.diff(idx) != 1) + 1
        for run in np.split(np.arange(len(idx)), cuts):
            lo, hi = int(idx[run[0]]), int(idx[run[-1]]) + 1
            classes = None if base_labels is None else base_labels[run]
            for batch in generate_range(self.base, base_cfg, classes, self.classifier, lo, hi, hi - lo, device):
                out.append(batch.images)
        return np.concatenate(out)

    def _upsampler_stage(
        self, idx: np.ndarray, labels: np.ndarray | None, low_uint8: np.ndarray, cfg: SamplingConfig, device: torch.device
    ) -> np.ndarray:
        _, up_cfg = self.stage_configs(cfg)
        model = self.upsampler
        model.net.to(device)
        spec = get_sampler(up_cfg.sampler)
        schedule = make_schedule(model.diffusion, up_cfg.resolved_respacing())
        knobs: dict[str, Any] = {"clip_denoised": up_cfg.clip_denoised}
        if up_cfg.sampler == "ddim":
            knobs["eta"] = up_cfg.eta
        if up_cfg.sampler == "ddpm" and up_cfg.variance:
            knobs["variance"] = up_cfg.variance
        index = torch.from_numpy(idx)
        n = len(idx)
        low_res = torch.from_numpy(low_uint8).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        noise = NoiseSource([stage_seed(cfg.seed + int(i), 1) for i in idx], device)
        C, H = model.in_channels, model.image_size
        x = noise.randn((C, H, H))
        y = torch.from_numpy(labels).to(device) if (labels is not None and model.is_conditional) else None
        net = model.net

        def net_call(a: torch.Tensor, t: torch.Tensor, yy: torch.Tensor | None = None) -> torch.Tensor:
            lr = low_res.repeat(a.shape[0] // n, 1, 1, 1)  # CFG evaluates 2N rows: both halves see the same low-res image
            ctx = torch.autocast(device.type, dtype=torch.bfloat16) if up_cfg.autocast_bf16 else contextlib.nullcontext()
            with ctx:
                if yy is None:
                    return aligned_call(lambda a_, t_, l_: net(a_, t_, None, low_res=l_), index, up_cfg.align, a, t, lr)
                return aligned_call(lambda a_, t_, y_, l_: net(a_, t_, y_, low_res=l_), index, up_cfg.align, a, t, yy, lr)

        # s = 1 (or no guidance) is the plain conditional/unconditional call, without a null-class pass
        s = up_cfg.cfg_s if up_cfg.cfg_s is not None else 1.0
        model_fn = cfg_model_fn(net_call, y, model.null_class, s, C)
        with torch.no_grad():
            x0 = spec.fn(model_fn, x, schedule, noise, **knobs)
        return quantize(x0, cfg.quantize)


def load_cascade(
    base: Any,
    upsampler: Any,
    *,
    base_preset: str | None = None,
    upsampler_preset: str | None = None,
    base_flags: str | dict[str, Any] | None = None,
    upsampler_flags: str | dict[str, Any] | None = None,
    classifier: Any = None,
    classifier_preset: str | None = None,
    classifier_flags: str | dict[str, Any] | None = None,
    upsampler_sampling: UpsamplerSampling | None = None,
    device: torch.device | str | None = "cpu",
) -> CascadeGenerator:
    """Load a base model and an upsampler (paths or LoadedModels) into a CascadeGenerator.

    Args:
        base: --model: the low-resolution diffusion model.
        upsampler: --upsampler: the super-resolution model (e.g. 64_256_upsampler.pt, preset auto-detected).
        base_preset, upsampler_preset: presets for `.pt` files whose name is not a release's.
        base_flags, upsampler_flags: guided-diffusion flags (`--model-flags`) for other `.pt` files.
        classifier, classifier_preset, classifier_flags: optional noisy classifier for the base stage.
        upsampler_sampling: the upsampler stage's settings (default: DDPM, 250 steps).
        device: where the networks go.
    """
    from geneval.models.formats import load_model

    def load(m: Any, preset: str | None, flags: Any) -> Any:
        if isinstance(m, (str, os.PathLike)):
            return load_model(m, preset=preset, device=device, model_flags=flags)
        return m

    base_m = load(base, base_preset, base_flags)
    up_m = load(upsampler, upsampler_preset, upsampler_flags)
    clf_m = load(classifier, classifier_preset, classifier_flags) if classifier is not None else None
    if clf_m is not None and clf_m.kind != "classifier":
        raise GenevalError(f"--classifier {clf_m.source} is a {clf_m.kind}, not a noisy classifier")
    return CascadeGenerator(base_m, up_m, upsampler_sampling, clf_m)
