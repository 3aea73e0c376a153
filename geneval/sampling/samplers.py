"""Reference samplers: one registry of same-signature pure functions (k-diffusion style).

Every sampler is `fn(model_fn, x, schedule, noise, **knobs) -> x0` where
- `model_fn(x_t, t)` returns the raw network output for noisy images x_t at the network
  timestep t (the ORIGINAL index, or t·1000/T for rescale_timesteps models — the schedule
  makes that tensor); guidance is applied by wrapping model_fn (see guidance.py);
- `x` is the initial standard Gaussian noise (N, C, H, W);
- `schedule` is the respaced `Schedule`; `noise` the per-sample `NoiseSource` for later draws.
The output is the final sample in [-1, 1] data space (not yet quantised).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch

from geneval.errors import GenevalError
from geneval.sampling.noise import NoiseSource
from geneval.sampling.schedules import Schedule, karras_sigmas

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
CondFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int], None]


class Sampler(Protocol):
    def __call__(self, model_fn: ModelFn, x: torch.Tensor, schedule: Schedule, noise: NoiseSource, **knobs) -> torch.Tensor: ...


# ---------------------------------------------------------------- prediction conversions (one place)


def split_output(out: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Split a raw output into (prediction, variance values or None) for C or 2C channels."""
    if out.shape[1] == channels:
        return out, None
    if out.shape[1] == 2 * channels:
        return out[:, :channels], out[:, channels:]
    raise GenevalError(f"model returned {out.shape[1]} channels for {channels}-channel images (expected {channels} or {2 * channels})")


def eps_and_x0(pred: torch.Tensor, x_t: torch.Tensor, abar: float, prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ε, x̂0) from the network prediction (ε, x0 or v) at cumulative alpha ᾱ."""
    sa, s1a = math.sqrt(abar), math.sqrt(1.0 - abar)
    if prediction_type == "eps":
        return pred, math.sqrt(1.0 / abar) * x_t - math.sqrt(1.0 / abar - 1.0) * pred
    if prediction_type == "x0":
        return eps_from_x0(x_t, pred, abar), pred
    if prediction_type == "v":
        return sa * pred + s1a * x_t, sa * x_t - s1a * pred
    raise GenevalError(f"unknown prediction type {prediction_type!r}")


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, abar: float) -> torch.Tensor:
    """ε implied by x_t and x̂0 (guided-diffusion's _predict_eps_from_xstart)."""
    return (math.sqrt(1.0 / abar) * x_t - x0) / math.sqrt(1.0 / abar - 1.0)


def _denoise(model_fn: ModelFn, x_t: torch.Tensor, t: torch.Tensor, abar: float, schedule: Schedule, clip: bool):
    out = model_fn(x_t, t).float()
    pred, var = split_output(out, x_t.shape[1])
    eps, x0 = eps_and_x0(pred, x_t, abar, schedule.config.prediction_type)
    if clip:
        x0 = x0.clamp(-1, 1)
    return eps, x0, var


# ---------------------------------------------------------------- discrete-time samplers


def ddpm(model_fn: ModelFn, x: torch.Tensor, schedule: Schedule, noise: NoiseSource, *, variance: str | None = None,
         clip_denoised: bool = True, cond_fn: CondFn | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Ancestral DDPM (Ho et al. 2020; learned range: Nichol & Dhariwal 2021), guided-diffusion's p_sample.

    Args:
        variance: "fixed_small", "fixed_large" or "learned_range"; default: the model's.
        clip_denoised: clip x̂0 to [-1, 1].
        cond_fn: classifier guidance: returns g = s·∇ log p(y|x_t); the mean moves by Σ_t g.
    """
    var_type = variance or schedule.config.variance_type
    ac, acp, betas = schedule.alphas_cumprod, schedule.alphas_cumprod_prev, schedule.betas
    post_var, post_logvar = schedule.posterior_variance, schedule.posterior_log_variance_clipped
    coef1 = betas * np.sqrt(acp) / (1.0 - ac)
    coef2 = (1.0 - acp) * np.sqrt(1.0 - betas) / (1.0 - ac)
    large_var = np.append(post_var[1], betas[1:]) if len(betas) > 1 else betas
    n = schedule.num_steps
    for i in reversed(range(n)):
        t = schedule.model_timestep(i, x.shape[0], x.device)
        _, x0, v = _denoise(model_fn, x, t, ac[i], schedule, clip_denoised)
        mean = coef1[i] * x0 + coef2[i] * x
        if var_type == "learned_range":
            if v is None:
                raise GenevalError("variance 'learned_range' needs a model with 2C output channels")
            frac = (v + 1) / 2
            log_var = frac * math.log(betas[i]) + (1 - frac) * post_logvar[i]
            var_t = torch.exp(log_var)
        elif var_type == "fixed_large":
            var_t, log_var = large_var[i], math.log(large_var[i])
        elif var_type == "fixed_small":
            var_t, log_var = post_var[i], post_logvar[i]
        else:
            raise GenevalError(f"unknown variance {var_type!r}; known: fixed_small, fixed_large, learned_range")
        if cond_fn is not None:
            mean = mean + var_t * cond_fn(x, t).float()
        if i > 0:
            std = torch.exp(0.5 * log_var) if torch.is_tensor(log_var) else math.exp(0.5 * log_var)
            x = mean + std * noise.randn_like(x)
        else:
            x = mean
        if callback:
            callback(n - i, n)
    return x


def ddim(model_fn: ModelFn, x: torch.Tensor, schedule: Schedule, noise: NoiseSource, *, eta: float = 0.0,
         clip_denoised: bool = True, cond_fn: CondFn | None = None, callback: Callback | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2021) with stochasticity η; ε is recomputed from the clipped x̂0.

    Args:
        eta: 0 is deterministic DDIM, 1 matches DDPM's fixed-small variance.
        cond_fn: classifier guidance in score form: ε' = ε − √(1−ᾱ_t)·g (Dhariwal & Nichol 2021).
    """
    ac, acp = schedule.alphas_cumprod, schedule.alphas_cumprod_prev
    n = schedule.num_steps
    for i in reversed(range(n)):
        t = schedule.model_timestep(i, x.shape[0], x.device)
        _, x0, _ = _denoise(model_fn, x, t, ac[i], schedule, clip_denoised)
        eps = eps_from_x0(x, x0, ac[i])
        if cond_fn is not None:
            eps = eps - math.sqrt(1.0 - ac[i]) * cond_fn(x, t).float()
            x0 = math.sqrt(1.0 / ac[i]) * x - math.sqrt(1.0 / ac[i] - 1.0) * eps
        sigma = eta * math.sqrt((1 - acp[i]) / (1 - ac[i])) * math.sqrt(1 - ac[i] / acp[i])
        x = math.sqrt(acp[i]) * x0 + math.sqrt(max(1 - acp[i] - sigma**2, 0.0)) * eps
        if i > 0 and sigma > 0:
            x = x + sigma * noise.randn_like(x)
        if callback:
            callback(n - i, n)
    return x


# ---------------------------------------------------------------- σ-space (Karras) samplers


def _sigmas(schedule: Schedule, karras: bool, rho: float) -> np.ndarray:
    """Descending σ's ending in 0: Karras spacing over the model's range, or the kept timesteps'."""
    if karras:
        base = schedule.base_sigmas()
        return karras_sigmas(schedule.num_steps, float(base[0]), float(base[-1]), rho)
    ac = schedule.alphas_cumprod[::-1]
    return np.append(np.sqrt((1.0 - ac) / ac), 0.0)


def _sigma_denoiser(model_fn: ModelFn, schedule: Schedule, clip: bool) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """D(x, σ) for a discrete VP model, k-diffusion's DiscreteEpsDDPMDenoiser idea: x = x_t/√ᾱ,
    the network sees x_t = x/√(σ²+1) at the fractional t where log σ_t interpolates to log σ."""

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        abar = 1.0 / (sigma**2 + 1.0)
        x_t = x * math.sqrt(abar)
        t = schedule.model_timestep_from_sigma(sigma, x.shape[0], x.device)
        return _denoise(model_fn, x_t, t, abar, schedule, clip)[1]

    return denoise


def euler(model_fn: ModelFn, x: torch.Tensor, schedule: Schedule, noise: NoiseSource, *, karras: bool = True, rho: float = 7.0,
          clip_denoised: bool = True, callback: Callback | None = None) -> torch.Tensor:
    """Euler on the probability-flow ODE (Karras et al. 2022, Alg. 2 without the 2nd order step)."""
    sigmas = _sigmas(schedule, karras, rho)
    D = _sigma_denoiser(model_fn, schedule, clip_denoised)
    x = x * sigmas[0]
    for i in range(len(sigmas) - 1):
        d = (x - D(x, sigmas[i])) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
        if callback:
            callback(i + 1, len(sigmas) - 1)
    return x


def heun(model_fn: ModelFn, x: torch.Tensor, schedule: Schedule, noise: NoiseSource, *, karras: bool = True, rho: float = 7.0,
         clip_denoised: bool = True, callback: Callback | None = None) -> torch.Tensor:
    """Heun's 2nd-order method (Karras et al. 2022, Alg. 1); final step to σ=0 is Euler (NFE 2n−1)."""
    sigmas = _sigmas(schedule, karras, rho)
    D = _sigma_denoiser(model_fn, schedule, clip_denoised)
    x = x * sigmas[0]
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = (x - D(x, s)) / s
        x_next = x + d * (s_next - s)
        if s_next > 0:
            d_next = (x_next - D(x_next, s_next)) / s_next
            x_next = x + (d + d_next) / 2 * (s_next - s)
        x = x_next
        if callback:
            callback(i + 1, len(sigmas) - 1)
    return x


def dpmpp_2m(model_fn: ModelFn, x: torch.Tensor, schedule: Schedule, noise: NoiseSource, *, karras: bool = True, rho: float = 7.0,
             clip_denoised: bool = True, callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022) in λ = −log σ, multistep on the denoised estimates."""
    sigmas = _sigmas(schedule, karras, rho)
    D = _sigma_denoiser(model_fn, schedule, clip_denoised)
    x = x * sigmas[0]
    old = None
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        den = D(x, s)
        if s_next == 0:
            x = den  # the limit of the update as σ' → 0
        else:
            h = math.log(s) - math.log(s_next)
            if old is None:
                d = den
            else:
                r = (math.log(sigmas[i - 1]) - math.log(s)) / h
                d = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old
            x = (s_next / s) * x - math.expm1(-h) * d
        old = den
        if callback:
            callback(i + 1, len(sigmas) - 1)
    return x


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler and what it supports."""

    name: str
    fn: Sampler
    summary: str
    stochastic: bool
    supports_classifier_guidance: bool
    nfe_per_step: float
    default_respacing: str  # format string applied to the step count for the discrete schedule

    def nfe(self, steps: int) -> int:
        """Network evaluations for `steps` steps (before CFG doubling)."""
        return 2 * steps - 1 if self.name == "heun" else steps


SAMPLERS: dict[str, SamplerSpec] = {
    s.name: s
    for s in (
        SamplerSpec("ddpm", ddpm, "ancestral DDPM (fixed small/large or learned-range variance)", True, True, 1, "{steps}"),
        SamplerSpec("ddim", ddim, "DDIM(eta); eta=0 deterministic", False, True, 1, "ddim{steps}"),
        SamplerSpec("dpmpp_2m", dpmpp_2m, "DPM-Solver++(2M), Karras sigmas", False, False, 1, "{steps}"),
        SamplerSpec("euler", euler, "Euler ODE, Karras sigmas", False, False, 1, "{steps}"),
        SamplerSpec("heun", heun, "Heun ODE (EDM), Karras sigmas, NFE 2n-1", False, False, 2, "{steps}"),
    )
}


def get_sampler(name: str) -> SamplerSpec:
    """Look up a sampler by name, or raise a GenevalError listing the known ones."""
    if name not in SAMPLERS:
        raise GenevalError(f"unknown sampler {name!r}; known samplers: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
