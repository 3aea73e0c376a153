"""Samplers: parity with diffusers' DDPM/DDIM schedulers, batch-size invariance, ODE solvers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geneval.errors import GenevalError
from geneval.models.formats import LoadedModel
from geneval.models.unet import UNetConfig, UNetModel, init_random_
from geneval.sampling.generate import sample
from geneval.sampling.noise import NoiseSource
from geneval.sampling.samplers import SAMPLERS, eps_and_x0, get_sampler
from geneval.sampling.schedules import DiffusionConfig, make_schedule

T = 100  # training steps of the toy schedule


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_unet(out_channels: int = 3, num_classes: int | None = None, seed: int = 0) -> UNetModel:
    cfg = UNetConfig(
        image_size=8,
        model_channels=32,
        out_channels=out_channels,
        num_res_blocks=1,
        attention_resolutions=(4,),
        channel_mult=(1, 1),
        num_classes=num_classes,
        num_heads=2,
        use_scale_shift_norm=True,
        resblock_updown=True,
    )
    # Small weights keep the random net's ε in a sane range, so few x̂0 values hit the clip.
    return init_random_(UNetModel(cfg).eval(), seed=seed, std=0.03)


def _replay(noise: NoiseSource):
    """randn_tensor replacement for diffusers that hands out the same per-sample draws."""

    def fake(shape, generator=None, device=None, dtype=None, **kw):
        return noise.randn(shape[1:]).to(dtype=dtype or torch.float32)

    return fake


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range"])
def test_ddpm_matches_diffusers(monkeypatch, variance):
    import diffusers.schedulers.scheduling_ddpm as ddpm_mod
    from diffusers import DDPMScheduler

    learned = variance == "learned_range"
    net = tiny_unet(out_channels=6 if learned else 3)
    steps = 10
    schedule = make_schedule(DiffusionConfig(T, "linear", variance_type=variance), f"ddim{steps}")
    seeds = [11, 12, 13]
    ours_noise = NoiseSource(seeds)
    x = ours_noise.randn((3, 8, 8))
    with torch.no_grad():
        ours = SAMPLERS["ddpm"].fn(lambda a, t: net(a, t), x.clone(), schedule, ours_noise)

    sch = DDPMScheduler(
        num_train_timesteps=T,
        beta_schedule="linear",
        beta_start=1000 / T * 1e-4,
        beta_end=1000 / T * 2e-2,
        variance_type=variance,
        clip_sample=True,
        prediction_type="epsilon",
    )
    sch.set_timesteps(steps)
    theirs_noise = NoiseSource(seeds)
    y = theirs_noise.randn((3, 8, 8))
    monkeypatch.setattr(ddpm_mod, "randn_tensor", _replay(theirs_noise))
    with torch.no_grad():
        for t in sch.timesteps:
            out = net(y, torch.full((3,), int(t)))
            y = sch.step(out, t, y).prev_sample
    assert torch.equal(torch.tensor(schedule.timesteps[::-1].copy()), sch.timesteps.long())
    err = (ours - y).abs().max().item()
    assert err < 1e-5, err


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers(eta):
    from diffusers import DDIMScheduler

    net = tiny_unet()
    steps = 20
    schedule = make_schedule(DiffusionConfig(T, "cosine"), f"ddim{steps}")
    seeds = [5, 6]
    ours_noise = NoiseSource(seeds)
    x = ours_noise.randn((3, 8, 8))
    with torch.no_grad():
        ours = SAMPLERS["ddim"].fn(lambda a, t: net(a, t), x.clone(), schedule, ours_noise, eta=eta)

    sch = DDIMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", clip_sample=True, set_alpha_to_one=True, prediction_type="epsilon")
    sch.set_timesteps(steps)
    theirs_noise = NoiseSource(seeds)
    y = theirs_noise.randn((3, 8, 8))
    with torch.no_grad():
        for t in sch.timesteps:
            out = net(y, torch.full((2,), int(t)))
            # Our ddim draws no noise at the final step (σ = 0 there); diffusers multiplies by 0.
            z = theirs_noise.randn((3, 8, 8)) if eta > 0 and int(t) != int(sch.timesteps[-1]) else torch.zeros_like(y)
            # use_clipped_model_output: ε recomputed from the clipped x̂0, as guided-diffusion does.
            y = sch.step(out, t, y, eta=eta, use_clipped_model_output=True, variance_noise=z).prev_sample
    err = (ours - y).abs().max().item()
    assert err < 1e-5, err


def test_prediction_type_conversions_agree():
    x0 = torch.randn(2, 3, 4, 4)
    eps = torch.randn(2, 3, 4, 4)
    abar = 0.3
    x_t = abar**0.5 * x0 + (1 - abar) ** 0.5 * eps
    v = abar**0.5 * eps - (1 - abar) ** 0.5 * x0
    for pred, kind in ((eps, "eps"), (x0, "x0"), (v, "v")):
        e, x = eps_and_x0(pred, x_t, abar, kind)
        torch.testing.assert_close(e, eps, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x, x0, atol=1e-5, rtol=1e-5)


def _model(net: UNetModel, variance: str = "fixed_small") -> LoadedModel:
    return LoadedModel(
        net,
        net.config,
        DiffusionConfig(T, "linear", variance_type=variance),
        "unet",
        "native",
        num_classes=net.config.num_classes and net.config.num_classes - 1,
        null_class=net.config.num_classes and net.config.num_classes - 1,
    )


@pytest.mark.parametrize("sampler", ["ddpm", "heun"])
def test_bit_identical_across_batch_sizes(sampler):
    m = _model(tiny_unet(out_channels=6, num_classes=4), "learned_range")
    runs = [np.concatenate([b.images for b in sample(m, 10, sampler=sampler, steps=3, seed=7, batch_size=bs, guidance=0.5)]) for bs in (1, 7, 64)]
    assert runs[0].shape == (10, 8, 8, 3) and runs[0].dtype == np.uint8
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2])
    # A different seed gives different samples (the comparison above is not vacuous).
    other = np.concatenate([b.images for b in sample(m, 10, sampler=sampler, steps=3, seed=8, batch_size=64, guidance=0.5)])
    assert not np.array_equal(runs[0], other)


def _gaussian_eps_model(schedule, s: float):
    """The exact ε-predictor for data ~ N(0, s²I), at fractional t (log σ interpolated in t)."""
    log_sig = np.log(schedule.base_sigmas())

    def model_fn(x_t, t):
        sigma = float(np.exp(np.interp(float(t[0]), np.arange(len(log_sig)), log_sig)))
        abar = 1.0 / (1.0 + sigma**2)
        return (1 - abar) ** 0.5 * x_t / (abar * s**2 + 1 - abar)

    return model_fn


def test_ode_samplers_converge_at_their_order_on_an_exact_gaussian_ode():
    """For N(0, s²) data the PF-ODE is solvable: x(σ) ∝ √(s²+σ²), and the final step to σ=0 is
    the denoiser D(x, σ_min) = s²/(s²+σ_min²)·x. Quadrupling the steps cuts Euler's error ~4×
    (1st order) and Heun's / DPM++(2M)'s ~16× (2nd order)."""
    s = 0.5
    errs = {}
    for steps in (16, 64):
        schedule = make_schedule(DiffusionConfig(1000, "linear"), str(steps))
        model_fn = _gaussian_eps_model(schedule, s)
        smax, smin = float(schedule.base_sigmas()[-1]), float(schedule.base_sigmas()[0])
        for name in ("euler", "heun", "dpmpp_2m"):
            noise = NoiseSource([3, 4])
            x = noise.randn((3, 8, 8)).double()
            exact = x * smax * ((s**2 + smin**2) / (s**2 + smax**2)) ** 0.5 * s**2 / (s**2 + smin**2)
            out = SAMPLERS[name].fn(model_fn, x.clone(), schedule, noise, clip_denoised=False)
            errs[name, steps] = ((out - exact).abs().max() / exact.abs().max()).item()
    assert 3 < errs["euler", 16] / errs["euler", 64] < 6  # measured 3.9
    for name in ("heun", "dpmpp_2m"):
        assert errs[name, 16] / errs[name, 64] > 10  # measured 19.8 and 17.9
        assert errs[name, 64] < 0.01


def test_heun_nfe_and_karras_range():
    calls = []
    net = tiny_unet()
    schedule = make_schedule(DiffusionConfig(T, "linear"), "5")

    def model_fn(a, t):
        calls.append(float(t[0]))
        return net(a, t)

    noise = NoiseSource([0])
    with torch.no_grad():
        SAMPLERS["heun"].fn(model_fn, noise.randn((3, 8, 8)), schedule, noise)
    assert len(calls) == 2 * 5 - 1 == SAMPLERS["heun"].nfe(5)
    assert calls[0] == pytest.approx(T - 1, abs=1e-4)  # σ_max is the model's top timestep
    assert min(calls) == pytest.approx(0.0, abs=1e-4)  # σ_min the bottom one


def test_unknown_sampler_lists_known_ones():
    with pytest.raises(GenevalError, match="known samplers: ddpm, ddim"):
        get_sampler("plms")
