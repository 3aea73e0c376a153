"""Diffusion noise schedules and timestep respacing conventions, in float64 numpy.

A `DiffusionConfig` describes how a model was trained (β schedule, T, prediction type, variance
type, timestep rescaling). `make_schedule(config, respacing, convention)` returns the `Schedule` a
sampler walks: the kept original timesteps, the ᾱ at them and the ᾱ each step moves to. The
model always receives the ORIGINAL timestep index (or t·1000/T as a float for IDDPM models
trained with rescale_timesteps).

Respacing conventions (RESPACING_CONVENTIONS), i.e. which timesteps N steps visit:
- "adm": guided-diffusion's space_timesteps ("250", "ddim25", "10,20,30"); the default.
- "leading", "trailing", "linspace": diffusers' `timestep_spacing` (with `steps_offset` for leading).
- "ldm": CompVis LDM DDIM "uniform": c = T//N, steps = range(0, T, c) + 1.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from geneval import vocab
from geneval.errors import GenevalError

BETA_SCHEDULES = ("linear", "cosine", "scaled_linear")
PREDICTION_TYPES = ("eps", "x0", "v")
VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range")
RESPACING_CONVENTIONS = tuple(vocab.RESPACING_CONVENTIONS)  # the one list lives in geneval.vocab
# ᾱ after the last step: "one" (guided-diffusion; diffusers set_alpha_to_one=True) or "first", ᾱ[0]
# (diffusers set_alpha_to_one=False; LDM's DDIM).
FINAL_ALPHAS = ("one", "first")
# Which ᾱ a step moves to: "next" kept timestep (guided-diffusion, DDPMScheduler, LDM) or
# "stride", t − T//N (diffusers' DDIMScheduler, whatever its spacing).
PREV_RULES = ("next", "stride")


@dataclass(frozen=True)
class DiffusionConfig:
    """How a diffusion model was trained.

    Args:
        num_timesteps: T, the number of training timesteps.
        beta_schedule: "linear" (ADM, β 1e-4→2e-2 scaled by 1000/T), "cosine" (IDDPM) or
            "scaled_linear" (LDM/SD: linspace(√β_start, √β_end)²).
        beta_start, beta_end: endpoints for "scaled_linear" (and "linear" if given explicitly).
        prediction_type: what the net predicts: "eps", "x0" or "v".
        variance_type: "learned_range" for 2C-output models, else the fixed DDPM variance.
        rescale_timesteps: feed t·1000/T (float) instead of t (IDDPM's flag).
        rescale_betas_zero_snr: rescale β to zero terminal SNR (Lin et al. 2024; diffusers' flag).
    """

    num_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float | None = None
    beta_end: float | None = None
    prediction_type: str = "eps"
    variance_type: str = "fixed_small"
    rescale_timesteps: bool = False
    rescale_betas_zero_snr: bool = False

    def __post_init__(self) -> None:
        if self.beta_schedule not in BETA_SCHEDULES:
            raise GenevalError(f"unknown beta schedule {self.beta_schedule!r}; known: {', '.join(BETA_SCHEDULES)}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise GenevalError(f"unknown prediction type {self.prediction_type!r}; known: {', '.join(PREDICTION_TYPES)}")
        if self.variance_type not in VARIANCE_TYPES:
            raise GenevalError(f"unknown variance type {self.variance_type!r}; known: {', '.join(VARIANCE_TYPES)}")
        if self.num_timesteps < 1:
            raise GenevalError(f"num_timesteps must be >= 1, got {self.num_timesteps}")

    def betas(self) -> np.ndarray:
        """The training β_t, float64, length T."""
        betas = named_betas(self.beta_schedule, self.num_timesteps, self.beta_start, self.beta_end)
        return rescale_zero_terminal_snr(betas) if self.rescale_betas_zero_snr else betas

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not d["rescale_betas_zero_snr"]:
            del d["rescale_betas_zero_snr"]  # records (and cache keys) of older configs stay unchanged
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiffusionConfig:
        return cls(**d)


def named_betas(name: str, T: int, beta_start: float | None = None, beta_end: float | None = None) -> np.ndarray:
    """β_1..β_T for a named schedule, in float64."""
    if name == "linear":
        scale = 1000.0 / T  # keeps the total noise level when T != 1000 (guided-diffusion)
        lo = beta_start if beta_start is not None else scale * 1e-4
        hi = beta_end if beta_end is not None else scale * 2e-2
        return np.linspace(lo, hi, T, dtype=np.float64)
    if name == "scaled_linear":
        lo = 0.00085 if beta_start is None else beta_start
        hi = 0.012 if beta_end is None else beta_end
        return np.linspace(lo**0.5, hi**0.5, T, dtype=np.float64) ** 2
    if name == "cosine":

        def abar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)], dtype=np.float64)
    raise GenevalError(f"unknown beta schedule {name!r}; known: {', '.join(BETA_SCHEDULES)}")


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """β rescaled so that ᾱ_T = 0 while ᾱ_1 is kept (Lin et al. 2024, Algorithm 1)."""
    sq = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sq[0], sq[-1]
    sq = (sq - last) * (first / (first - last))
    abar = sq**2
    return 1.0 - np.append(abar[0], abar[1:] / abar[:-1])


class StepCountError(GenevalError):
    """A step count the schedule cannot take (ddimN without an integer stride, or N > T).

    The message advises the option that sets the count: `--steps` by default (run, sweep and
    sample all have it); `for_option` rephrases it for `--respacing` or `--upsampler-steps`.
    """

    def __init__(self, respacing: str, want: int, T: int, ddim: bool, option: str = "--steps") -> None:
        self.respacing, self.want, self.T, self.ddim, self.option = respacing, want, T, ddim, option
        super().__init__(self._message())

    def for_option(self, option: str) -> StepCountError:
        return StepCountError(self.respacing, self.want, self.T, self.ddim, option)

    def _message(self) -> str:
        spec = "ddim" if self.ddim and self.option == "--respacing" else ""
        head = f"respacing {self.respacing!r}: "
        if self.want > self.T:
            return head + f"cannot take {self.want} steps from the model's {self.T} timesteps; use {self.option} {spec}{self.T} or fewer"
        counts = stride_counts_near(self.T, self.want)
        fix = f"use {self.option} " + " or ".join(f"{spec}{c}" for c in counts)
        if self.option == "--respacing":
            fix = f"use --respacing {' or '.join(f'ddim{c}' for c in counts)}, or --respacing {self.want} (evenly spread)"
        elif len(counts) == 2:
            fix = f"use {self.option} {counts[0]} or {self.option} {counts[1]}"
        return head + f"no integer stride gives exactly {self.want} of {self.T} steps; {fix}"


def stride_counts_near(T: int, want: int) -> tuple[int, ...]:
    """The step counts next to `want` (below, above) that "ddimN" can take from T timesteps."""
    counts = {len(range(0, T, stride)) for stride in range(1, T)} | {T}
    below = [c for c in counts if c < want]
    above = [c for c in counts if c > want]
    return tuple(([max(below)] if below else []) + ([min(above)] if above else []))


def space_timesteps(T: int, respacing: str | list[int]) -> list[int]:
    """The original timesteps kept by a guided-diffusion respacing spec, sorted ascending.

    "ddimN": stride s from 0 with exactly N steps; "N": N steps evenly spread over [0, T−1]
    (including both ends); "a,b,c": the range split into equal sections with a, b, c steps
    each; a list of ints: the section counts.
    """
    if isinstance(respacing, str):
        spec = respacing.strip()
        if spec.startswith("ddim"):
            try:
                want = int(spec[4:])
            except ValueError:
                raise GenevalError(f"bad respacing {respacing!r}: expected ddimN") from None
            if want < 1:
                raise GenevalError(f"respacing {respacing!r}: step counts must be >= 1")
            for stride in range(1, T):
                if len(range(0, T, stride)) == want:
                    return list(range(0, T, stride))
            if want == T:
                return list(range(T))
            raise StepCountError(respacing, want, T, ddim=True)
        try:
            counts = [int(x) for x in spec.split(",")]
        except ValueError:
            raise GenevalError(f"bad respacing {respacing!r}: expected 'N', 'ddimN' or 'a,b,c'") from None
    else:
        counts = [int(x) for x in respacing]
    if any(c < 1 for c in counts):
        raise GenevalError(f"respacing {respacing!r}: step counts must be >= 1")
    if len(counts) == 1 and counts[0] > T:
        raise StepCountError(str(respacing), counts[0], T, ddim=False)
    size_per, extra = divmod(T, len(counts))
    start, steps = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise GenevalError(f"respacing {respacing!r}: cannot take {count} steps from a section of {size}")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):  # accumulate the stride exactly as guided-diffusion does (float sums)
            steps.append(start + round(cur))
            cur += stride
        start += size
    return sorted(set(steps))


def _step_count(respacing: str | int | list[int]) -> int:
    """N from an int, "N" or "ddimN" (the diffusers/LDM conventions take only a step count)."""
    if isinstance(respacing, (int, np.integer)):
        return int(respacing)
    spec = str(respacing).strip()
    spec = spec.removeprefix("ddim")
    try:
        return int(spec)
    except ValueError:
        raise GenevalError(f"bad respacing {respacing!r}: this respacing convention takes a step count N") from None


def respaced_timesteps(T: int, respacing: str | int | list[int], convention: str = "adm", steps_offset: int = 0) -> list[int]:
    """The original timesteps N steps visit under a respacing convention, sorted ascending.

    Args:
        T: training timesteps.
        respacing: a guided-diffusion spec for "adm"; a step count N (int, "N" or "ddimN") otherwise.
        convention: one of RESPACING_CONVENTIONS.
        steps_offset: diffusers' steps_offset, added to "leading" timesteps.
    """
    if convention not in RESPACING_CONVENTIONS:
        raise GenevalError(f"unknown respacing convention {convention!r}; known: {', '.join(RESPACING_CONVENTIONS)}")
    if convention == "adm":
        return space_timesteps(T, respacing)
    n = _step_count(respacing)
    if n > T:
        raise StepCountError(str(respacing), n, T, ddim=False)
    if n < 1:
        raise GenevalError(f"respacing {respacing!r}: the step count must lie in [1, {T}]")
    # The expressions below are diffusers' set_timesteps / LDM's make_ddim_timesteps verbatim in
    # numpy, including float arange and rounding, so that edge cases pick the same integers.
    if convention == "leading":
        ts = (np.arange(0, n) * (T // n)).round().astype(np.int64) + int(steps_offset)
    elif convention == "trailing":
        ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    elif convention == "linspace":
        ts = np.linspace(0, T - 1, n).round().astype(np.int64)
    else:  # ldm
        ts = np.asarray(range(0, T, T // n), dtype=np.int64) + 1
    ts = np.unique(ts)
    if ts.min() < 0 or ts.max() > T - 1:
        raise GenevalError(
            f"respacing {respacing!r} under convention {convention!r}"
            f"{f' with steps_offset {steps_offset}' if steps_offset else ''} reaches timestep {int(ts.max())}, "
            f"outside the model's [0, {T - 1}]"
        )
    return ts.tolist()


@dataclass(frozen=True, eq=False)
class Schedule:
    """A (possibly respaced) discrete schedule, ready for sampling. Arrays are float64.

    Args:
        config: the training DiffusionConfig.
        timesteps: original timestep index for each kept step, ascending (length S).
        alphas_cumprod: ᾱ at the kept steps (length S).
        base_alphas_cumprod: ᾱ of the full training schedule (length T), for σ↔t conversion.
        respacing: the spec that produced it.
        prev_alphas_cumprod: the ᾱ each kept step moves to (length S); None: the previous kept
            step's, and 1.0 after the last (guided-diffusion).
        convention: the respacing convention (RESPACING_CONVENTIONS).
        steps_offset: diffusers' steps_offset that shifted "leading" timesteps.
        final_alpha: ᾱ after the last step, "one" or "first" (FINAL_ALPHAS).
        prev_rule: how the step targets were chosen, "next" or "stride" (PREV_RULES).
    """

    config: DiffusionConfig
    timesteps: np.ndarray
    alphas_cumprod: np.ndarray
    base_alphas_cumprod: np.ndarray
    respacing: str = ""
    prev_alphas_cumprod: np.ndarray | None = None
    convention: str = "adm"
    steps_offset: int = 0
    final_alpha: str = "one"
    prev_rule: str = "next"

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def alphas_cumprod_prev(self) -> np.ndarray:
        """ᾱ that each kept step moves to."""
        if self.prev_alphas_cumprod is not None:
            return self.prev_alphas_cumprod
        return np.append(1.0, self.alphas_cumprod[:-1])

    def to_dict(self) -> dict[str, Any]:
        """Provenance: the convention and the timesteps it chose."""
        return {
            "respacing": self.respacing,
            "convention": self.convention,
            "steps_offset": self.steps_offset,
            "final_alpha": self.final_alpha,
            "prev_rule": self.prev_rule,
            "timesteps": [int(t) for t in self.timesteps],
        }

    @property
    def betas(self) -> np.ndarray:
        """Respaced β, recomputed from the kept ᾱ (β_i = 1 − ᾱ_i/ᾱ_{i−1})."""
        return 1.0 - self.alphas_cumprod / self.alphas_cumprod_prev

    @property
    def posterior_variance(self) -> np.ndarray:
        """β̃ = β(1−ᾱ_prev)/(1−ᾱ) (the "fixed small" variance)."""
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_log_variance_clipped(self) -> np.ndarray:
        """log β̃ with the t=0 entry (which is 0) replaced by β̃_1, as guided-diffusion does."""
        pv = self.posterior_variance
        if len(pv) == 1:
            return np.log(np.maximum(pv, 1e-20))
        return np.log(np.append(pv[1], pv[1:]))

    def model_timestep(self, i: int, batch: int, device: torch.device | str) -> torch.Tensor:
        """The timestep tensor the NETWORK receives at kept step i (original or rescaled t)."""
        t = int(self.timesteps[i])
        if self.config.rescale_timesteps:
            return torch.full((batch,), t * (1000.0 / self.config.num_timesteps), dtype=torch.float32, device=device)
        return torch.full((batch,), t, dtype=torch.long, device=device)

    def base_sigmas(self) -> np.ndarray:
        """σ_t = √((1−ᾱ)/ᾱ) over the full training schedule (ascending)."""
        a = self.base_alphas_cumprod
        return np.sqrt((1.0 - a) / a)

    def sigma_to_t(self, sigma: float) -> float:
        """Fractional original timestep for σ by linear interpolation of log σ (k-diffusion style)."""
        log_sigmas = np.log(self.base_sigmas())
        ts = np.arange(len(log_sigmas), dtype=np.float64)
        return float(np.interp(math.log(sigma), log_sigmas, ts))

    def model_timestep_from_sigma(self, sigma: float, batch: int, device: torch.device | str) -> torch.Tensor:
        """The (float) timestep tensor the network receives for a continuous σ."""
        t = self.sigma_to_t(sigma)
        if self.config.rescale_timesteps:
            t *= 1000.0 / self.config.num_timesteps
        return torch.full((batch,), t, dtype=torch.float32, device=device)


def make_schedule(
    config: DiffusionConfig,
    respacing: str | int | list[int] | None = None,
    convention: str = "adm",
    *,
    steps_offset: int = 0,
    final_alpha: str | None = None,
    prev_rule: str = "next",
) -> Schedule:
    """Build the Schedule for a training config, a respacing and its convention (None: all T steps).

    Args:
        config: the training DiffusionConfig.
        respacing: guided-diffusion spec ("adm") or step count N (other conventions); None: all T.
        convention: one of RESPACING_CONVENTIONS.
        steps_offset: diffusers' steps_offset (shifts "leading" timesteps).
        final_alpha: ᾱ after the last step, "one" or "first"; default "first" for "ldm", else "one".
        prev_rule: "next" (the next kept step) or "stride" (t − T//N, diffusers' DDIMScheduler).
    """
    final_alpha = final_alpha or ("first" if convention == "ldm" else "one")
    if final_alpha not in FINAL_ALPHAS:
        raise GenevalError(f"unknown final alpha rule {final_alpha!r}; known: {', '.join(FINAL_ALPHAS)}")
    if prev_rule not in PREV_RULES:
        raise GenevalError(f"unknown step rule {prev_rule!r}; known: {', '.join(PREV_RULES)}")
    T = config.num_timesteps
    abar = np.cumprod(1.0 - config.betas())
    if respacing is None or respacing == "":
        kept = list(range(T)) if convention == "adm" else respaced_timesteps(T, T, convention, steps_offset)
        spec, n = str(T), T
    else:
        kept = respaced_timesteps(T, respacing, convention, steps_offset)
        spec = respacing if isinstance(respacing, str) else ",".join(map(str, respacing)) if isinstance(respacing, list) else str(respacing)
        n = len(kept) if convention == "adm" else _step_count(respacing)
    idx = np.asarray(kept, dtype=np.int64)
    final = 1.0 if final_alpha == "one" else float(abar[0])
    if prev_rule == "next":
        prev = np.append(final, abar[idx[:-1]])
    else:
        prev_t = idx - T // n
        prev = np.where(prev_t >= 0, abar[np.maximum(prev_t, 0)], final)
    return Schedule(config, idx, abar[idx].copy(), abar, spec, prev, convention, int(steps_offset), final_alpha, prev_rule)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) σ_0 > … > σ_{n−1} followed by a final 0 (length n+1)."""
    ramp = np.linspace(0, 1, n) if n > 1 else np.zeros(1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return np.append((hi + ramp * (lo - hi)) ** rho, 0.0)
