"""Scheduler conventions: parity with diffusers' own pipelines/schedulers on the same random UNet
and noise, respacing timesteps against diffusers' set_timesteps, LDM's uniform DDIM in closed form."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch

from geneval.errors import GenevalError
from geneval.models.formats import diffusion_from_scheduler_config, load_model
from geneval.sampling.conventions import CLASS_DEFAULTS, SchedulerConvention, convention_for, plan_for
from geneval.sampling.generate import SamplingConfig
from geneval.sampling.samplers import SAMPLERS
from geneval.sampling.schedules import RESPACING_CONVENTIONS, DiffusionConfig, make_schedule, respaced_timesteps

pytestmark = pytest.mark.usefixtures("one_thread")

LINEAR = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 2e-2}
# Stable-Diffusion-style scheduler fields (its scheduler_config.json), on a pixel-space net here.
SD_STYLE = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
BATCH, SHAPE = 2, (3, 8, 8)


@pytest.fixture(scope="module")
def unet():
    """A tiny random diffusers UNet2DModel. Its output layer is scaled down so that the sampling
    map is not chaotic (default init amplifies 1e-7 float differences ~1.4× per clipped DDIM step),
    while x̂0 still hits the clip at most steps (checked by the tests that depend on it)."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    net = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()
    with torch.no_grad():
        net.conv_out.weight.mul_(0.03)
        net.conv_out.bias.mul_(0.03)
    return net


class Replay:
    """One torch.Generator drawn in the order diffusers' pipelines draw (x_T, then each step's noise)."""

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)

    def randn(self, shape) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.g)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=self.g, dtype=x.dtype)


def ours(unet, sc: dict, sampler: str, steps: int, seed: int = 5, **plan_kw) -> torch.Tensor:
    plan = SchedulerConvention("model", sc).plan(diffusion_from_scheduler_config(sc), sampler, steps, **plan_kw)
    noise = Replay(seed)
    x = noise.randn((BATCH, *SHAPE))
    with torch.no_grad():
        return SAMPLERS[sampler].fn(lambda a, t: unet(a, t).sample, x, plan.schedule, noise, **plan.knobs)


def ddim_pipeline(unet, sc: dict, steps: int, eta: float = 0.0, ucmo: bool = False, seed: int = 5):
    """diffusers' DDIMPipeline output image in [0, 1] and its last unclamped scheduler sample."""
    from diffusers import DDIMPipeline, DDIMScheduler

    pipe = DDIMPipeline(unet, DDIMScheduler.from_config(sc))
    pipe.set_progress_bar_config(disable=True)
    raw = _capture_last_step(pipe.scheduler)
    img = pipe(
        batch_size=BATCH,
        generator=torch.Generator().manual_seed(seed),
        eta=eta,
        num_inference_steps=steps,
        use_clipped_model_output=ucmo,
        output_type="pt",
        return_dict=False,
    )[0]
    return img, raw[-1]


def _capture_last_step(scheduler) -> list[torch.Tensor]:
    """Record each prev_sample the pipeline's scheduler returns (the pipeline clamps only its output)."""
    seen: list[torch.Tensor] = []
    step = scheduler.step

    def recording(*args, **kwargs):
        out = step(*args, **kwargs)
        seen.append(out.prev_sample.clone())
        return out

    scheduler.step = recording
    return seen


def image_err(ours_x: torch.Tensor, img: torch.Tensor) -> float:
    """Max abs difference of the pipeline's (x/2 + 0.5).clamp(0, 1) image, in [-1, 1] units."""
    return 2 * ((ours_x / 2 + 0.5).clamp(0, 1) - img).abs().max().item()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference in units of the larger of 1 and the reference's magnitude."""
    return (a - b).abs().max().item() / max(1.0, b.abs().max().item())


# ---------------------------------------------------------------- DDIM


@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("ucmo", [False, True])
def test_ddim_pipeline_parity(unet, steps, clip, ucmo):
    sc = {**LINEAR, "clip_sample": clip}
    img, raw = ddim_pipeline(unet, sc, steps, ucmo=ucmo)
    mine = ours(unet, sc, "ddim", steps, use_clipped_model_output=ucmo)
    assert image_err(mine, img) < 1e-4
    # Unclamped too: without clip_sample most pixels of these random-net images saturate.
    assert rel_err(mine, raw) < 1e-4


@pytest.mark.parametrize("sc", [{**LINEAR, "clip_sample": True}, SD_STYLE], ids=["clip", "sd-style"])
@pytest.mark.parametrize("steps", [10, pytest.param(50, marks=pytest.mark.slow)])
def test_ddim_eta_parity(unet, sc, steps):
    """η > 0 with the pipeline's own generator order (x_T, then one draw per step)."""
    for ucmo in (False, True):
        img, raw = ddim_pipeline(unet, sc, steps, eta=0.7, ucmo=ucmo)
        mine = ours(unet, sc, "ddim", steps, eta=0.7, use_clipped_model_output=ucmo)
        assert image_err(mine, img) < 1e-4 and rel_err(mine, raw) < 1e-4, ucmo


@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_sd_style_parity(unet, steps):
    img, raw = ddim_pipeline(unet, SD_STYLE, steps)
    mine = ours(unet, SD_STYLE, "ddim", steps)
    assert image_err(mine, img) < 1e-4 and rel_err(mine, raw) < 1e-4


def test_the_knobs_matter(unet):
    """The parity above is not vacuous: each knob changes the result on this net."""
    clip = {**LINEAR, "clip_sample": True}
    a = ours(unet, clip, "ddim", 10, use_clipped_model_output=False)
    b = ours(unet, clip, "ddim", 10, use_clipped_model_output=True)
    assert (a - b).abs().max() > 0.05
    assert (a - ours(unet, {**LINEAR, "clip_sample": False}, "ddim", 10)).abs().max() > 0.05
    sd_one = ours(unet, {**SD_STYLE, "set_alpha_to_one": True}, "ddim", 10)
    assert rel_err(sd_one, ours(unet, SD_STYLE, "ddim", 10)) > 3e-4  # only the last step differs
    # Under "adm" the same folder is sampled the guided-diffusion way (ADM respacing, ε from clipped x̂0).
    adm = SchedulerConvention("adm", SD_STYLE).plan(diffusion_from_scheduler_config(SD_STYLE, "adm"), "ddim", 10)
    assert adm.schedule.timesteps.tolist() == list(range(0, 1000, 100)) and adm.knobs["use_clipped_model_output"]
    assert adm.knobs["clip_denoised"] and adm.record["scheduler_class"] is None


def test_ddim_trailing_and_linspace_use_diffusers_stride_rule(unet):
    for spacing in ("trailing", "linspace"):
        sc = {**SD_STYLE, "timestep_spacing": spacing, "steps_offset": 0}
        assert rel_err(ours(unet, sc, "ddim", 15), ddim_pipeline(unet, sc, 15)[1]) < 1e-4


def test_thresholding_and_clip_range(unet):
    for extra in ({"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5}, {"clip_sample_range": 0.5}):
        sc = {**LINEAR, "clip_sample": True, **extra}
        assert rel_err(ours(unet, sc, "ddim", 10), ddim_pipeline(unet, sc, 10)[1]) < 1e-4
        assert rel_err(ours(unet, sc, "ddim", 10), ours(unet, {**LINEAR, "clip_sample": True}, "ddim", 10)) > 1e-3


@pytest.mark.parametrize("pred", ["v_prediction", "sample"])
def test_ddim_prediction_types(unet, pred):
    sc = {**LINEAR, "prediction_type": pred, "clip_sample": False, "timestep_spacing": "trailing"}
    if pred == "v_prediction":
        sc["rescale_betas_zero_snr"] = True  # zero terminal SNR: ᾱ = 0 at the first (trailing) step
    assert rel_err(ours(unet, sc, "ddim", 10), ddim_pipeline(unet, sc, 10)[1]) < 1e-4


# ---------------------------------------------------------------- DDPM


@pytest.mark.parametrize(
    "sc",
    [
        {**LINEAR, "clip_sample": True},
        {**LINEAR, "clip_sample": True, "variance_type": "fixed_large", "steps_offset": 1},
        {**SD_STYLE, "timestep_spacing": "trailing", "variance_type": "fixed_small_log"},
    ],
    ids=["default", "large-offset", "trailing"],
)
def test_ddpm_pipeline_parity(unet, sc):
    from diffusers import DDPMPipeline, DDPMScheduler

    pipe = DDPMPipeline(unet, DDPMScheduler.from_config(sc))
    pipe.set_progress_bar_config(disable=True)
    raw = _capture_last_step(pipe.scheduler)
    img = pipe(batch_size=BATCH, generator=torch.Generator().manual_seed(9), num_inference_steps=20, output_type="pt", return_dict=False)[0]
    mine = ours(unet, sc, "ddpm", 20, seed=9)
    assert image_err(mine, img) < 1e-4 and rel_err(mine, raw[-1]) < 1e-4


# ---------------------------------------------------------------- Euler / DPM++(2M) / Heun


def sigma_loop(unet, cls_name: str, sc: dict, steps: int, seed: int = 5) -> torch.Tensor:
    import diffusers

    sch = getattr(diffusers, cls_name).from_config(sc)
    sch.set_timesteps(steps)
    x = torch.randn((BATCH, *SHAPE), generator=torch.Generator().manual_seed(seed)) * sch.init_noise_sigma
    with torch.no_grad():
        for t in sch.timesteps:
            out = unet(sch.scale_model_input(x, t), t).sample
            x = sch.step(out, t, x).prev_sample
    return x


@pytest.mark.parametrize(
    "sampler,cls_name", [("euler", "EulerDiscreteScheduler"), ("dpmpp_2m", "DPMSolverMultistepScheduler"), ("heun", "HeunDiscreteScheduler")]
)
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"timestep_spacing": "leading", "steps_offset": 1},
        {"timestep_spacing": "trailing"},
        {"use_karras_sigmas": True},
        {"final_sigmas_type": "sigma_min"},
    ],
    ids=["linspace", "leading", "trailing", "karras", "sigma-min"],
)
def test_sigma_solvers_match_diffusers(unet, sampler, cls_name, extra):
    sc = {**SD_STYLE, **extra}
    steps = 12  # < 15: DPM-Solver's lower_order_final applies
    err = rel_err(ours(unet, sc, sampler, steps), sigma_loop(unet, cls_name, sc, steps))
    assert err < 1e-4, err


# ---------------------------------------------------------------- timesteps


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_respaced_timesteps_equal_diffusers(spacing):
    from diffusers import DDIMScheduler, DDPMScheduler

    for T in (1000, 4000):
        for offset in (0, 1) if spacing == "leading" else (0,):
            for n in (10, 15, 25, 30, 50, 250):
                ours_ts = respaced_timesteps(T, n, spacing, steps_offset=offset)
                for cls in (DDIMScheduler, DDPMScheduler):
                    sch = cls(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
                    sch.set_timesteps(n)
                    assert ours_ts == sorted(sch.timesteps.tolist()), (cls.__name__, T, n, offset)


def test_adm_respacing_differs_from_leading_where_the_issue_saw_it():
    # guided-diffusion's "ddimN" has no integer stride for 15 or 30 of 1000 steps; "N" spreads evenly.
    assert respaced_timesteps(1000, "15", "adm") != respaced_timesteps(1000, 15, "leading")
    assert respaced_timesteps(1000, "ddim25", "adm") == respaced_timesteps(1000, 25, "leading")


def test_ldm_uniform_ddim_closed_form():
    cfg = DiffusionConfig(1000, "scaled_linear", 0.00085, 0.012)
    s = make_schedule(cfg, 10, "ldm")
    assert s.timesteps.tolist() == [1, 101, 201, 301, 401, 501, 601, 701, 801, 901]
    abar = np.cumprod(1 - cfg.betas())
    np.testing.assert_array_equal(s.alphas_cumprod, abar[[1, 101, 201, 301, 401, 501, 601, 701, 801, 901]])
    # α_prev = [ᾱ[0]] + ᾱ[steps[:-1]] — not 1.0 after the last step.
    np.testing.assert_array_equal(s.alphas_cumprod_prev, np.append(abar[0], abar[[1, 101, 201, 301, 401, 501, 601, 701, 801]]))
    assert s.final_alpha == "first" and s.to_dict()["convention"] == "ldm"
    # T % N != 0 keeps LDM's range(0, T, T//N): 16 steps for N = 15.
    assert respaced_timesteps(1000, 15, "ldm") == [1 + 66 * i for i in range(16)]
    with pytest.raises(GenevalError, match="outside the model"):
        respaced_timesteps(1000, 1000, "ldm")


def test_ldm_ddim_eta_adds_noise_at_the_last_step():
    """With ᾱ_prev = ᾱ[0] the last step has σ > 0 (LDM), unlike ADM's ᾱ_prev = 1."""
    draws = []

    class Counting(Replay):
        def randn_like(self, x):
            draws.append(1)
            return super().randn_like(x)

    cfg = DiffusionConfig(1000, "scaled_linear", 0.00085, 0.012)
    x = torch.zeros(1, 1, 2, 2)
    SAMPLERS["ddim"].fn(lambda a, t: torch.zeros_like(a), x, make_schedule(cfg, 10, "ldm"), Counting(0), eta=1.0, clip_denoised=False)
    assert len(draws) == 10
    draws.clear()
    SAMPLERS["ddim"].fn(lambda a, t: torch.zeros_like(a), x, make_schedule(cfg, "ddim10"), Counting(0), eta=1.0, clip_denoised=False)
    assert len(draws) == 9


def test_all_conventions_build_schedules():
    cfg = DiffusionConfig(1000, "linear")
    for conv in RESPACING_CONVENTIONS:
        s = make_schedule(cfg, "ddim10" if conv == "adm" else 10, conv)
        assert s.num_steps == 10 and s.convention == conv
        assert (np.diff(s.timesteps) > 0).all()
    with pytest.raises(GenevalError, match="respacing convention"):
        make_schedule(cfg, 10, "uniform")
    with pytest.raises(GenevalError, match="step count"):
        make_schedule(cfg, "10,20", "leading")


# ---------------------------------------------------------------- config handling and loading


def test_class_defaults_match_installed_diffusers():
    import diffusers

    for cls_name, fields in CLASS_DEFAULTS.items():
        params = inspect.signature(getattr(diffusers, cls_name).__init__).parameters
        for k, v in fields.items():
            assert k in params and params[k].default == v, (cls_name, k, v, params.get(k))


def test_unsupported_scheduler_settings_are_one_line_errors():
    with pytest.raises(GenevalError, match="solver_order"):
        SchedulerConvention("model", {**LINEAR, "solver_order": 3}).plan(DiffusionConfig(1000, "linear", 1e-4, 2e-2), "dpmpp_2m", 10)
    with pytest.raises(GenevalError, match="convention source"):
        SchedulerConvention("diffusers", LINEAR)
    with pytest.raises(GenevalError, match="prediction_type"):
        diffusion_from_scheduler_config({**LINEAR, "prediction_type": "flow"})


def test_loaded_diffusers_folder_carries_its_convention(unet, tmp_path):
    unet.save_pretrained(tmp_path / "unet")
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDIMScheduler", **SD_STYLE}))
    (tmp_path / "model_index.json").write_text("{}")
    m = load_model(tmp_path)
    assert m.info["convention_source"] == "model" and convention_for(m).uses_scheduler
    cfg = SamplingConfig(n=BATCH, sampler="ddim", steps=10)
    plan = plan_for(m, cfg)
    assert plan.schedule.timesteps.tolist() == list(range(1, 1000, 100)) and plan.knobs["clip_denoised"] is False
    assert plan.record["scheduler_fields"]["set_alpha_to_one"] is False
    noise = Replay(5)
    x = noise.randn((BATCH, *SHAPE))
    with torch.no_grad():
        mine = SAMPLERS["ddim"].fn(lambda a, t: m.net(a, t), x, plan.schedule, noise, **plan.knobs)
    img, raw = ddim_pipeline(unet, SD_STYLE, 10)
    assert image_err(mine, img) < 1e-4 and rel_err(mine, raw) < 1e-4
    # --convention-source adm: today's behaviour (ADM respacing from 0, ε from the clipped x̂0).
    m_adm = load_model(tmp_path, convention_source="adm")
    plan_adm = plan_for(m_adm, cfg)
    assert plan_adm.schedule.timesteps.tolist() == list(range(0, 1000, 100)) and plan_adm.record["source"] == "adm"


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_adm_plan_is_what_sampling_did_before(sampler):
    """A checkpoint without a scheduler config (native / guided-diffusion) plans exactly the
    schedule and knobs geneval used before conventions existed."""
    from geneval.models.formats import LoadedModel

    diffusion = DiffusionConfig(1000, "linear", variance_type="learned_range")
    m = LoadedModel(torch.nn.Identity(), {}, diffusion, "unet", "native")
    cfg = SamplingConfig(n=1, sampler=sampler, steps=25, eta=0.3, variance="fixed_large" if sampler == "ddpm" else None)
    plan = plan_for(m, cfg)
    old = make_schedule(diffusion, cfg.resolved_respacing())
    assert plan.schedule.timesteps.tolist() == old.timesteps.tolist()
    np.testing.assert_array_equal(plan.schedule.alphas_cumprod_prev, old.alphas_cumprod_prev)
    want = {"clip_denoised": True}
    if sampler == "ddim":
        want.update(eta=0.3, use_clipped_model_output=True)
    if sampler == "ddpm":
        want["variance"] = "fixed_large"
    assert plan.knobs == want and plan.record["source"] == "model" and plan.record["scheduler_class"] is None


def test_ddpm_learned_range_parity():
    """A 2C-output net with DDPMScheduler's learned_range, ending at t = 1 (steps_offset 1), so
    the last step draws noise with diffusers' floored β̃ in the interpolation."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(1)
    net = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=6,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()
    with torch.no_grad():
        net.conv_out.weight.mul_(0.03)
        net.conv_out.bias.mul_(0.03)
    sc = {**LINEAR, "clip_sample": True, "variance_type": "learned_range", "steps_offset": 1}
    pipe = DDPMPipeline(net, DDPMScheduler.from_config(sc))
    pipe.set_progress_bar_config(disable=True)
    raw = _capture_last_step(pipe.scheduler)
    img = pipe(batch_size=BATCH, generator=torch.Generator().manual_seed(3), num_inference_steps=10, output_type="pt", return_dict=False)[0]
    mine = ours(net, sc, "ddpm", 10, seed=3)
    assert image_err(mine, img) < 1e-4 and rel_err(mine, raw[-1]) < 1e-4


def test_dpm_solver_thresholding_and_v_prediction(unet):
    for extra in ({"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 2.0}, {"prediction_type": "v_prediction"}):
        sc = {**LINEAR, **extra}
        assert rel_err(ours(unet, sc, "dpmpp_2m", 10), sigma_loop(unet, "DPMSolverMultistepScheduler", sc, 10)) < 1e-4
    sc = {**LINEAR, "prediction_type": "v_prediction"}
    assert rel_err(ours(unet, sc, "euler", 10), sigma_loop(unet, "EulerDiscreteScheduler", sc, 10)) < 1e-4
