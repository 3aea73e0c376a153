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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

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
        if abar == 0:
            raise GenevalError("an ε-prediction model cannot be sampled at zero SNR (ᾱ = 0); zero-terminal-SNR schedules need v-prediction")
        return pred, math.sqrt(1.0 / abar) * x_t - math.sqrt(1.0 / abar - 1.0) * pred
    if prediction_type == "x0":
        return eps_from_x0(x_t, pred, abar), pred
    if prediction_type == "v":
        return sa * pred + s1a * x_t, sa * x_t - s1a * pred
    raise GenevalError(f"unknown prediction type {prediction_type!r}")


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, abar: float) -> torch.Tensor:
    """ε implied by x_t and x̂0 (guided-diffusion's _predict_eps_from_xstart)."""
    if abar == 0:  # zero terminal SNR: x_t is pure noise
        return x_t
    return (math.sqrt(1.0 / abar) * x_t - x0) / math.sqrt(1.0 / abar - 1.0)


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022) as diffusers does it, per sample:
    s = clamp(quantile(|x̂0|, ratio), 1, max_value); x̂0 → clamp(x̂0, −s, s)/s."""
    flat = x0.reshape(x0.shape[0], -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape)


def process_x0(x0: torch.Tensor, clip: bool, clip_range: float = 1.0, threshold: float | None = None, threshold_max: float = 1.0) -> torch.Tensor:
    """x̂0 after dynamic thresholding (if `threshold`, a quantile ratio) or else clipping to ±clip_range."""
    if threshold is not None:
        return dynamic_threshold(x0, threshold, threshold_max)
    return x0.clamp(-clip_range, clip_range) if clip else x0


def _denoise(
    model_fn: ModelFn,
    x_t: torch.Tensor,
    t: torch.Tensor,
    abar: float,
    schedule: Schedule,
    clip: bool,
    clip_range: float = 1.0,
    threshold: float | None = None,
    threshold_max: float = 1.0,
):
    out = model_fn(x_t, t).float()
    pred, var = split_output(out, x_t.shape[1])
    eps, x0 = eps_and_x0(pred, x_t, abar, schedule.config.prediction_type)
    return eps, process_x0(x0, clip, clip_range, threshold, threshold_max), var


# ---------------------------------------------------------------- discrete-time samplers


def ddpm(
    model_fn: ModelFn,
    x: torch.Tensor,
    schedule: Schedule,
    noise: NoiseSource,
    *,
    variance: str | None = None,
    clip_denoised: bool = True,
    clip_range: float = 1.0,
    threshold: float | None = None,
    threshold_max: float = 1.0,
    cond_fn: CondFn | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Ancestral DDPM (Ho et al. 2020; learned range: Nichol & Dhariwal 2021), guided-diffusion's p_sample.

    Noise is added at every step whose original timestep is > 0 (diffusers' rule; with ADM
    respacing the last step is t = 0, so that is guided-diffusion's "all but the last").

    Args:
        variance: "fixed_small", "fixed_large" or "learned_range"; default: the model's.
        clip_denoised: clip x̂0 to [−clip_range, clip_range].
        clip_range: diffusers' clip_sample_range.
        threshold: dynamic-thresholding quantile (diffusers' dynamic_thresholding_ratio); None: off.
        threshold_max: its sample_max_value.
        cond_fn: classifier guidance: returns g = s·∇ log p(y|x_t); the mean moves by Σ_t g.
    """
    var_type = variance or schedule.config.variance_type
    ac, acp, betas = schedule.alphas_cumprod, schedule.alphas_cumprod_prev, schedule.betas
    post_var, post_logvar = schedule.posterior_variance, schedule.posterior_log_variance_clipped
    coef1 = betas * np.sqrt(acp) / (1.0 - ac)
    coef2 = (1.0 - acp) * np.sqrt(1.0 - betas) / (1.0 - ac)
    large_var = np.append(post_var[1], betas[1:]) if len(betas) > 1 else betas
    if schedule.timesteps[0] > 0:
        # The last step starts at t > 0 and draws noise; its variance is diffusers' (β̃ floored at
        # 1e-20, not replaced by β̃ of the next step as guided-diffusion does for t = 0).
        post_var = post_var.copy()
        post_var[0] = max(post_var[0], 1e-20)
        post_logvar = np.append(math.log(post_var[0]), post_logvar[1:])
        large_var = np.append(betas[0], large_var[1:])
    n = schedule.num_steps
    for i in reversed(range(n)):
        t = schedule.model_timestep(i, x.shape[0], x.device)
        _, x0, v = _denoise(model_fn, x, t, ac[i], schedule, clip_denoised, clip_range, threshold, threshold_max)
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
        if schedule.timesteps[i] > 0:
            std = torch.exp(0.5 * log_var) if torch.is_tensor(log_var) else math.exp(0.5 * log_var)
            x = mean + std * noise.randn_like(x)
        else:
            x = mean
        if callback:
            callback(n - i, n)
    return x


def ddim(
    model_fn: ModelFn,
    x: torch.Tensor,
    schedule: Schedule,
    noise: NoiseSource,
    *,
    eta: float = 0.0,
    clip_denoised: bool = True,
    clip_range: float = 1.0,
    threshold: float | None = None,
    threshold_max: float = 1.0,
    use_clipped_model_output: bool = True,
    cond_fn: CondFn | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021) with stochasticity η; x_prev = √ᾱ_prev x̂0 + √(1−ᾱ_prev−σ²) ε + σz.

    Args:
        eta: 0 is deterministic DDIM, 1 matches DDPM's fixed-small variance.
        clip_denoised, clip_range, threshold, threshold_max: x̂0 processing (see ddpm).
        use_clipped_model_output: ε recomputed from the processed x̂0 (guided-diffusion; True) or
            the network's ε (diffusers' DDIMPipeline default, False).
        cond_fn: classifier guidance in score form: ε' = ε − √(1−ᾱ_t)·g (Dhariwal & Nichol 2021).
    """
    ac, acp = schedule.alphas_cumprod, schedule.alphas_cumprod_prev
    n = schedule.num_steps
    for i in reversed(range(n)):
        t = schedule.model_timestep(i, x.shape[0], x.device)
        eps, x0, _ = _denoise(model_fn, x, t, ac[i], schedule, clip_denoised, clip_range, threshold, threshold_max)
        if use_clipped_model_output:
            eps = eps_from_x0(x, x0, ac[i])
        if cond_fn is not None:
            eps = eps - math.sqrt(1.0 - ac[i]) * cond_fn(x, t).float()
            x0 = math.sqrt(1.0 / ac[i]) * x - math.sqrt(1.0 / ac[i] - 1.0) * eps
        sigma = eta * math.sqrt((1 - acp[i]) / (1 - ac[i])) * math.sqrt(1 - ac[i] / acp[i])
        x = math.sqrt(acp[i]) * x0 + math.sqrt(max(1 - acp[i] - sigma**2, 0.0)) * eps
        # σ = 0 at the last step when ᾱ_prev = 1; with ᾱ_prev = ᾱ[0] (LDM, set_alpha_to_one=False)
        # the last step adds noise too, as those implementations do.
        if sigma > 0:
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


def _grid(schedule: Schedule, karras: bool, rho: float, sigmas, sigma_timesteps) -> tuple[np.ndarray, np.ndarray | None]:
    """(σ's, network timesteps or None) from explicit knobs, else from the schedule (k-diffusion style)."""
    if sigmas is None:
        return _sigmas(schedule, karras, rho), None
    sig = np.asarray(sigmas, dtype=np.float64)
    ts = None if sigma_timesteps is None else np.asarray(sigma_timesteps, dtype=np.float64)
    if ts is not None and len(ts) < len(sig) - 1:
        raise GenevalError(f"{len(ts)} sigma timesteps for {len(sig) - 1} sampling sigmas")
    return sig, ts


def _sigma_denoiser(
    model_fn: ModelFn, schedule: Schedule, clip: bool, clip_range: float = 1.0, threshold: float | None = None, threshold_max: float = 1.0
) -> Callable[..., torch.Tensor]:
    """D(x, σ[, t]) for a discrete VP model, k-diffusion's DiscreteEpsDDPMDenoiser idea: x = x_t/√ᾱ,
    the network sees x_t = x/√(σ²+1) at timestep t, by default the fractional t where log σ_t
    interpolates to log σ (diffusers' schedulers give t explicitly)."""

    def denoise(x: torch.Tensor, sigma: float, t_value: float | None = None) -> torch.Tensor:
        abar = 1.0 / (sigma**2 + 1.0)
        x_t = x * math.sqrt(abar)
        if t_value is None:
            t = schedule.model_timestep_from_sigma(sigma, x.shape[0], x.device)
        else:
            scale = 1000.0 / schedule.config.num_timesteps if schedule.config.rescale_timesteps else 1.0
            t = torch.full((x.shape[0],), t_value * scale, dtype=torch.float32, device=x.device)
        return _denoise(model_fn, x_t, t, abar, schedule, clip, clip_range, threshold, threshold_max)[1]

    return denoise


class SigmaRun:
    """What the σ-space samplers (euler, heun, dpmpp_2m) share: their knobs, the σ grid, the denoiser
    at σ_i, the initial x and the step loop with its progress callback.

    Args (the knobs every σ sampler takes):
        karras: Karras σ spacing over the model's σ range (else the kept timesteps' σ's).
        rho: Karras ρ.
        clip_denoised, clip_range, threshold, threshold_max: x̂0 processing (see ddpm).
        sigmas: explicit descending σ's (length n+1, ending in 0 or σ_min), replacing the above
            (diffusers' scheduler rules, see geneval.sampling.conventions).
        sigma_timesteps: the network timestep for each of those σ's (default: log-σ interpolation).
        init_sigma: scale of the initial noise (default σ_0; diffusers: its init_noise_sigma).
        callback: called with (steps done, n) after each step.
    """

    def __init__(
        self,
        model_fn: ModelFn,
        x: torch.Tensor,
        schedule: Schedule,
        *,
        karras: bool = True,
        rho: float = 7.0,
        clip_denoised: bool = True,
        clip_range: float = 1.0,
        threshold: float | None = None,
        threshold_max: float = 1.0,
        sigmas=None,
        sigma_timesteps=None,
        init_sigma: float | None = None,
        callback: Callback | None = None,
    ) -> None:
        self.sig, self.ts = _grid(schedule, karras, rho, sigmas, sigma_timesteps)
        self.n = len(self.sig) - 1
        self.denoise = _sigma_denoiser(model_fn, schedule, clip_denoised, clip_range, threshold, threshold_max)
        self.x = x * (self.sig[0] if init_sigma is None else init_sigma)  # the initial noise at its σ
        self.callback = callback

    def D(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """The denoised estimate of x at σ_i (at its explicit network timestep when one is given)."""
        return self.denoise(x, self.sig[i], None if self.ts is None else self.ts[i])

    def steps(self) -> Iterator[int]:
        """The step indices 0 … n−1; the callback hears of each step once its body has run."""
        for i in range(self.n):
            yield i
            if self.callback:
                self.callback(i + 1, self.n)


def euler(model_fn: ModelFn, x: torch.Tensor, schedule: Schedule, noise: NoiseSource, **knobs) -> torch.Tensor:
    """Euler on the probability-flow ODE (Karras et al. 2022, Alg. 2 without the 2nd order step).

    Knobs: those of SigmaRun.
    """
    run = SigmaRun(model_fn, x, schedule, **knobs)
    sig, x = run.sig, run.x
    for i in run.steps():
        d = (x - run.D(x, i)) / sig[i]
        x = x + d * (sig[i + 1] - sig[i])
    return x


def heun(model_fn: ModelFn, x: torch.Tensor, schedule: Schedule, noise: NoiseSource, **knobs) -> torch.Tensor:
    """Heun's 2nd-order method (Karras et al. 2022, Alg. 1); final step to σ=0 is Euler (NFE 2n−1).

    Knobs: those of SigmaRun.
    """
    run = SigmaRun(model_fn, x, schedule, **knobs)
    sig, x = run.sig, run.x
    for i in run.steps():
        s, s_next = sig[i], sig[i + 1]
        d = (x - run.D(x, i)) / s
        x_next = x + d * (s_next - s)
        if s_next > 0:
            d_next = (x_next - run.D(x_next, i + 1)) / s_next
            x_next = x + (d + d_next) / 2 * (s_next - s)
        x = x_next
    return x


def dpmpp_2m(
    model_fn: ModelFn, x: torch.Tensor, schedule: Schedule, noise: NoiseSource, *, lower_order_final: bool = False, vp_output: bool = False, **knobs
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022) in λ = −log σ, multistep on the denoised estimates.

    Args:
        lower_order_final: first order at the last step even when it ends at σ_min > 0
            (diffusers' euler_at_final, or lower_order_final with fewer than 15 steps); the
            step to σ = 0 is always first order.
        vp_output: return x/√(σ²+1) at the final σ, the VP sample diffusers' DPM-Solver returns
            (the same as x when the final σ is 0).
        **knobs: those of SigmaRun.
    """
    run = SigmaRun(model_fn, x, schedule, **knobs)
    sig, x, n = run.sig, run.x, run.n
    old = None
    for i in run.steps():
        s, s_next = sig[i], sig[i + 1]
        den = run.D(x, i)
        if s_next == 0:
            x = den  # the limit of the update as σ' → 0
        else:
            h = math.log(s) - math.log(s_next)
            if old is None or (lower_order_final and i == n - 1):
                d = den
            else:
                r = (math.log(sig[i - 1]) - math.log(s)) / h
                d = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old
            x = (s_next / s) * x - math.expm1(-h) * d
        old = den
    if vp_output:
        x = x / math.sqrt(sig[-1] ** 2 + 1.0)
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
