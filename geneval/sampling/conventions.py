"""Scheduler conventions: sample a model with its OWN scheduler's semantics, or with ADM's.

A diffusers folder's scheduler_config.json fixes more than the β schedule: which timesteps N
steps visit (timestep_spacing, steps_offset), the ᾱ after the last step (set_alpha_to_one),
x̂0 clipping or dynamic thresholding, zero-terminal-SNR betas, and for the σ-space solvers the
σ grid and the initial noise scale. `SchedulerConvention.plan(...)` turns those fields, read as
diffusers' DDIMScheduler / DDPMScheduler / EulerDiscreteScheduler / DPMSolverMultistepScheduler
(2M) / HeunDiscreteScheduler would read them (`from_config`: class defaults for absent keys),
into a `Schedule` and the sampler knobs of geneval.sampling.samplers, plus a record of both.

Sources (CONVENTION_SOURCES): "model" (the checkpoint's own scheduler; for native and
guided-diffusion checkpoints that is ADM) or "adm" (guided-diffusion semantics: ADM respacing,
ε recomputed from the clipped x̂0, k-diffusion Karras σ's for the ODE solvers).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geneval import vocab
from geneval.errors import GenevalError
from geneval.sampling.samplers import get_sampler
from geneval.sampling.schedules import (
    RESPACING_CONVENTIONS,
    DiffusionConfig,
    Schedule,
    StepCountError,
    make_schedule,
)

CONVENTION_SOURCES = tuple(vocab.CONVENTION_SOURCES)
CONVENTION_SOURCE_HELP = vocab.CONVENTION_SOURCES  # the vocabularies live in geneval.vocab
RESPACING_CONVENTION_HELP = vocab.RESPACING_CONVENTIONS

# The diffusers scheduler each geneval sampler follows, and that class's defaults (diffusers
# 0.3x/0.4x) for the fields that shape sampling; tests/test_conventions.py checks them against
# the installed diffusers' signatures.
SCHEDULER_CLASSES = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "heun": "HeunDiscreteScheduler",
}
_THRESH = {"thresholding": False, "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0}
_CLIP = {"clip_sample": True, "clip_sample_range": 1.0}
CLASS_DEFAULTS: dict[str, dict[str, Any]] = {
    "DDIMScheduler": {
        **_CLIP,
        **_THRESH,
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "timestep_spacing": "leading",
        "rescale_betas_zero_snr": False,
        "prediction_type": "epsilon",
    },
    "DDPMScheduler": {
        **_CLIP,
        **_THRESH,
        "steps_offset": 0,
        "timestep_spacing": "leading",
        "rescale_betas_zero_snr": False,
        "prediction_type": "epsilon",
        "variance_type": "fixed_small",
    },
    "EulerDiscreteScheduler": {
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "sigma_min": None,
        "sigma_max": None,
        "interpolation_type": "linear",
        "timestep_type": "discrete",
        "final_sigmas_type": "zero",
        "rescale_betas_zero_snr": False,
        "prediction_type": "epsilon",
    },
    "DPMSolverMultistepScheduler": {
        **_THRESH,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_lu_lambdas": False,
        "use_flow_sigmas": False,
        "algorithm_type": "dpmsolver++",
        "solver_order": 2,
        "solver_type": "midpoint",
        "lower_order_final": True,
        "euler_at_final": False,
        "final_sigmas_type": "zero",
        "lambda_min_clipped": -math.inf,
        "variance_type": None,
        "rescale_betas_zero_snr": False,
        "prediction_type": "epsilon",
    },
    "HeunDiscreteScheduler": {
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "clip_sample": False,
        "clip_sample_range": 1.0,
        "prediction_type": "epsilon",
    },
}
# Settings geneval does not implement: (field, the only supported value(s)).
_UNSUPPORTED = {
    "use_exponential_sigmas": (False,),
    "use_beta_sigmas": (False,),
    "use_lu_lambdas": (False,),
    "use_flow_sigmas": (False,),
    "interpolation_type": ("linear",),
    "timestep_type": ("discrete",),
    "algorithm_type": ("dpmsolver++",),
    "solver_order": (2,),
    "solver_type": ("midpoint",),
    "lambda_min_clipped": (-math.inf,),
}
_DIFFUSERS_SPACINGS = ("leading", "trailing", "linspace")


@dataclass(frozen=True)
class SamplingPlan:
    """What a sampler needs for one run: its schedule, its knobs, and the record of both."""

    schedule: Schedule
    knobs: dict[str, Any]
    record: dict[str, Any]


@dataclass(frozen=True)
class SchedulerConvention:
    """How a model is sampled: its own diffusers scheduler ("model") or guided-diffusion's ("adm").

    Args:
        source: "model" or "adm" (CONVENTION_SOURCES).
        scheduler_config: the diffusers scheduler_config.json dict, or None (native / guided-diffusion
            checkpoints: their own convention is ADM).
    """

    source: str = "model"
    scheduler_config: dict[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.source not in CONVENTION_SOURCES:
            raise GenevalError(f"unknown convention source {self.source!r}; known: {', '.join(CONVENTION_SOURCES)}")

    @property
    def uses_scheduler(self) -> bool:
        """True when the diffusers scheduler's semantics apply."""
        return self.source == "model" and self.scheduler_config is not None

    def fields(self, sampler: str) -> dict[str, Any]:
        """The scheduler fields `sampler` follows: its diffusers class's defaults updated by the config."""
        cls = SCHEDULER_CLASSES[get_sampler(sampler).name]
        defaults = CLASS_DEFAULTS[cls]
        sc = self.scheduler_config or {}
        out = {k: sc.get(k, v) for k, v in defaults.items()}
        for k, ok in _UNSUPPORTED.items():
            if k in out and out[k] not in ok:
                raise GenevalError(
                    f"scheduler setting {k}={out[k]!r} is not supported for sampler {sampler}; "
                    f"supported: {', '.join(map(repr, ok))} (or sample with --convention-source adm)"
                )
        if out["timestep_spacing"] not in _DIFFUSERS_SPACINGS:
            raise GenevalError(f"scheduler timestep_spacing {out['timestep_spacing']!r} not supported; known: {', '.join(_DIFFUSERS_SPACINGS)}")
        if out.get("variance_type") == "learned":
            raise GenevalError(
                "scheduler variance_type 'learned' (raw predicted variance) is not supported; known: fixed_small, fixed_large, learned_range"
            )
        return out

    def plan(
        self,
        diffusion: DiffusionConfig,
        sampler: str,
        steps: int,
        *,
        respacing: str | None = None,
        respacing_convention: str | None = None,
        eta: float = 0.0,
        clip_denoised: bool | None = None,
        variance: str | None = None,
        use_clipped_model_output: bool | None = None,
    ) -> SamplingPlan:
        """The Schedule, sampler knobs and record for `steps` steps of `sampler` on a model.

        Args:
            diffusion: the model's training DiffusionConfig.
            sampler: a registered sampler name.
            steps: number of sampling steps.
            respacing: explicit spec (guided-diffusion string for "adm"; a count otherwise); None: from steps.
            respacing_convention: override of the timesteps rule (RESPACING_CONVENTIONS); None: the source's.
            eta: DDIM η.
            clip_denoised: override of x̂0 clipping; None: the convention's (diffusers' clip_sample).
            variance: DDPM variance override.
            use_clipped_model_output: DDIM: ε from the clipped x̂0; None: True for adm, False for diffusers.
        """
        spec = get_sampler(sampler)
        if respacing_convention is not None and respacing_convention not in RESPACING_CONVENTIONS:
            raise GenevalError(f"unknown respacing convention {respacing_convention!r}; known: {', '.join(RESPACING_CONVENTIONS)}")
        if self.uses_scheduler:
            fields = self.fields(spec.name)
            diffusion = _with_zero_snr(diffusion, fields)
            if spec.name in ("ddim", "ddpm"):
                schedule, knobs = _discrete_plan(
                    diffusion, spec.name, steps, respacing, respacing_convention, fields, eta, clip_denoised, variance, use_clipped_model_output
                )
            else:
                schedule, knobs = _sigma_plan(diffusion, spec.name, steps, respacing_convention, fields, clip_denoised)
        else:
            fields = {}
            if self.scheduler_config is not None and diffusion.rescale_betas_zero_snr:
                diffusion = dataclasses.replace(diffusion, rescale_betas_zero_snr=False)  # "adm": β as before conventions
            conv = respacing_convention or "adm"
            resp = respacing or (spec.default_respacing.format(steps=steps) if conv == "adm" else str(steps))
            schedule = make_schedule(diffusion, resp, conv)
            knobs = {"clip_denoised": True if clip_denoised is None else clip_denoised}
            if spec.name == "ddim":
                knobs.update(eta=eta, use_clipped_model_output=True if use_clipped_model_output is None else use_clipped_model_output)
            if spec.name == "ddpm" and variance:
                knobs["variance"] = variance
        record = {
            "source": self.source,
            "scheduler_class": SCHEDULER_CLASSES[spec.name] if self.uses_scheduler else None,
            "scheduler_fields": _jsonable(fields),
            "schedule": schedule.to_dict(),
            "knobs": _jsonable(knobs),
        }
        return SamplingPlan(schedule, knobs, record)

    def to_dict(self) -> dict[str, Any]:
        """Provenance: the source and the scheduler config it reads."""
        return {"source": self.source, "scheduler_config": _jsonable(self.scheduler_config)}


def _jsonable(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _jsonable(v) for k, v in d.items() if not k.startswith("_") or k == "_class_name"}
    if isinstance(d, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in d]
    if isinstance(d, (np.floating, float)):
        return None if math.isinf(float(d)) or math.isnan(float(d)) else float(d)
    if isinstance(d, np.integer):
        return int(d)
    return d


def _with_zero_snr(diffusion: DiffusionConfig, fields: dict[str, Any]) -> DiffusionConfig:
    want = bool(fields.get("rescale_betas_zero_snr", False))
    return dataclasses.replace(diffusion, rescale_betas_zero_snr=want) if want != diffusion.rescale_betas_zero_snr else diffusion


def _x0_knobs(fields: dict[str, Any], clip_denoised: bool | None) -> dict[str, Any]:
    knobs: dict[str, Any] = {
        "clip_denoised": bool(fields.get("clip_sample", False)) if clip_denoised is None else clip_denoised,
        "clip_range": float(fields.get("clip_sample_range", 1.0)),
    }
    if fields.get("thresholding"):
        knobs.update(threshold=float(fields["dynamic_thresholding_ratio"]), threshold_max=float(fields["sample_max_value"]))
    return knobs


def _discrete_plan(
    diffusion, sampler, steps, respacing, respacing_convention, fields, eta, clip_denoised, variance, use_clipped_model_output
) -> tuple[Schedule, dict[str, Any]]:
    conv = respacing_convention or fields["timestep_spacing"]
    resp = respacing or (str(steps) if conv != "adm" else get_sampler(sampler).default_respacing.format(steps=steps))
    knobs = _x0_knobs(fields, clip_denoised)
    if sampler == "ddim":
        # DDIMScheduler steps from t to t − T//N and ends on set_alpha_to_one's ᾱ.
        final = "first" if conv == "ldm" or not fields["set_alpha_to_one"] else "one"
        schedule = make_schedule(
            diffusion,
            resp,
            conv,
            steps_offset=int(fields["steps_offset"]),
            final_alpha=final,
            prev_rule="next" if conv in ("adm", "ldm") else "stride",
        )
        knobs.update(eta=eta, use_clipped_model_output=bool(use_clipped_model_output))
    else:
        # DDPMScheduler steps to the next listed timestep and ends on ᾱ = 1.
        schedule = make_schedule(diffusion, resp, conv, steps_offset=int(fields["steps_offset"]), final_alpha="one")
        var = variance or {"fixed_small_log": "fixed_small", "fixed_large_log": "fixed_large"}.get(fields["variance_type"], fields["variance_type"])
        knobs["variance"] = var
    return schedule, knobs


def _diffusers_sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """diffusers' _sigma_to_t: piecewise-linear in log σ over the training table, clamped to it."""
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    dists = log_sigma - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=len(log_sigmas) - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = np.clip((lo - log_sigma) / (lo - hi), 0, 1)
    return (1 - w) * low + w * (low + 1)


def _karras(smin: float, smax: float, n: int, rho: float = 7.0) -> np.ndarray:
    ramp = np.linspace(0, 1, n)
    return (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho


def sigma_grid(
    diffusion: DiffusionConfig, sampler: str, steps: int, fields: dict[str, Any], spacing: str | None = None
) -> tuple[np.ndarray, np.ndarray, float, dict[str, Any]]:
    """(σ's incl. the final one, network timesteps, initial-noise σ, extra knobs) by diffusers' rules.

    Args:
        diffusion: the training config (zero-SNR already applied).
        sampler: "euler", "heun" or "dpmpp_2m".
        steps: N.
        fields: the scheduler fields (SchedulerConvention.fields).
        spacing: override of fields["timestep_spacing"].
    """
    T = diffusion.num_timesteps
    n = int(steps)
    if not 1 <= n <= T:
        raise GenevalError(f"steps must lie in [1, {T}] for this model's scheduler, got {n}")
    spacing = spacing or fields["timestep_spacing"]
    if spacing not in _DIFFUSERS_SPACINGS:
        raise GenevalError(f"the {sampler} scheduler convention takes timestep spacing {', '.join(_DIFFUSERS_SPACINGS)}, got {spacing!r}")
    abar = np.cumprod(1.0 - diffusion.betas())
    if diffusion.rescale_betas_zero_snr:
        abar[-1] = 2.0**-24  # diffusers' Euler/DPM keep σ_max finite this way
    table = np.sqrt((1 - abar) / abar)
    log_table = np.log(table)
    offset = int(fields.get("steps_offset", 0))
    extra: dict[str, Any] = {}
    if sampler == "dpmpp_2m":
        # DPMSolverMultistepScheduler: N+1 points with the last dropped, integer timesteps.
        if spacing == "linspace":
            ts = np.linspace(0, T - 1, n + 1).round()[::-1][:-1].astype(np.int64)
        elif spacing == "leading":
            ts = (np.arange(0, n + 1) * (T // (n + 1))).round()[::-1][:-1].astype(np.int64) + offset
        else:
            ts = np.arange(T, 0, -T / n).round().astype(np.int64) - 1
        ts = ts.astype(np.float64)
        if fields["use_karras_sigmas"]:
            sig = _karras(float(table[0]), float(table[-1]), n)
            ts = _diffusers_sigma_to_t(sig, log_table)
            if diffusion.beta_schedule != "cosine":
                ts = ts.round()
        else:
            sig = np.interp(ts, np.arange(T), table)
        # For order 2 only the last step can drop to first order (lower_order_second picks 2nd over 3rd).
        extra["lower_order_final"] = bool(fields["euler_at_final"] or (fields["lower_order_final"] and n < 15))
        extra["vp_output"] = True
        init = None  # VP solver: x_T = z, i.e. σ-space scale √(σ_0² + 1)
    else:
        # Euler / Heun: float timesteps (linspace is not rounded), σ interpolated linearly in t.
        if spacing == "linspace":
            ts = np.linspace(0, T - 1, n, dtype=np.float32)[::-1].astype(np.float64)
        elif spacing == "leading":
            ts = (np.arange(0, n) * (T // n)).round()[::-1].astype(np.float32).astype(np.float64) + offset
        else:
            ts = np.arange(T, 0, -T / n).round().astype(np.float32).astype(np.float64) - 1
        sig = np.interp(ts, np.arange(T), table)
        if fields["use_karras_sigmas"]:
            smin = fields.get("sigma_min") if fields.get("sigma_min") is not None else float(sig[-1])
            smax = fields.get("sigma_max") if fields.get("sigma_max") is not None else float(sig[0])
            sig = _karras(float(smin), float(smax), n)
            ts = _diffusers_sigma_to_t(sig, log_table)
        init = "spacing"
    last = float(table[0]) if fields.get("final_sigmas_type", "zero") == "sigma_min" else 0.0
    sig = np.append(sig, last)
    if ts.min() < 0 or ts.max() > T - 1:
        raise GenevalError(f"{spacing} spacing with steps_offset {offset} reaches timestep {ts.max():g}, outside [0, {T - 1}]")
    if init is None:
        init_sigma = math.sqrt(float(sig[0]) ** 2 + 1)
    else:
        smax = float(sig.max())
        init_sigma = smax if spacing in ("linspace", "trailing") else math.sqrt(smax**2 + 1)
    return sig, ts, init_sigma, extra


def _sigma_plan(diffusion, sampler, steps, respacing_convention, fields, clip_denoised) -> tuple[Schedule, dict[str, Any]]:
    if respacing_convention not in (None, *_DIFFUSERS_SPACINGS):
        raise GenevalError(
            f"sampler {sampler} under the model's scheduler takes respacing convention {', '.join(_DIFFUSERS_SPACINGS)}, got {respacing_convention!r}"
        )
    sig, ts, init_sigma, extra = sigma_grid(diffusion, sampler, steps, fields, respacing_convention)
    knobs = _x0_knobs(fields, clip_denoised)
    knobs.update(karras=False, sigmas=sig, sigma_timesteps=ts, init_sigma=init_sigma, **extra)
    # The σ solvers take their grid from the knobs; the schedule carries the training ᾱ table.
    return make_schedule(diffusion), knobs


def convention_for(model: Any, source: str = "model") -> SchedulerConvention:
    """The SchedulerConvention to sample `model` (a LoadedModel) with under `source`."""
    if source not in CONVENTION_SOURCES:
        raise GenevalError(f"unknown convention source {source!r}; known: {', '.join(CONVENTION_SOURCES)}")
    sc = (getattr(model, "info", None) or {}).get("scheduler_config")
    return SchedulerConvention(source, sc)


def plan_for(model: Any, cfg: Any) -> SamplingPlan:
    """The SamplingPlan for a LoadedModel and a SamplingConfig (the one call the sampling loop needs).

    Reads cfg.sampler, steps, respacing, eta, variance, clip_denoised and, when the config has
    them, convention_source ("model"/"adm"; default: the model's info["convention_source"], else
    "model"), respacing_convention and use_clipped_model_output (None: the convention's choice).
    clip_denoised None means the convention's (diffusers' clip_sample); while SamplingConfig's
    field defaults to True, a value equal to that default is read as "not chosen".
    """
    source = getattr(cfg, "convention_source", None) or (getattr(model, "info", None) or {}).get("convention_source") or "model"
    clip = getattr(cfg, "clip_denoised", None)
    if dataclasses.is_dataclass(cfg):
        default = next((f.default for f in dataclasses.fields(cfg) if f.name == "clip_denoised"), None)
        if isinstance(default, bool) and clip == default:
            clip = None
    try:
        return convention_for(model, source).plan(
            model.diffusion,
            cfg.sampler,
            cfg.steps,
            respacing=cfg.respacing,
            respacing_convention=getattr(cfg, "respacing_convention", None),
            eta=cfg.eta,
            clip_denoised=clip,
            variance=cfg.variance,
            use_clipped_model_output=getattr(cfg, "use_clipped_model_output", None),
        )
    except StepCountError as e:
        if cfg.respacing is None:  # the count came from --steps, which the message already names
            raise
        raise e.for_option("--respacing") from None
