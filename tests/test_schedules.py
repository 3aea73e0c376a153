"""Noise schedules and guided-diffusion respacing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geneval.errors import GenevalError
from geneval.sampling.schedules import DiffusionConfig, karras_sigmas, make_schedule, named_betas, space_timesteps


def test_linear_is_scaled_by_1000_over_T():
    b = named_betas("linear", 1000)
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(2e-2) and b.dtype == np.float64
    b4 = named_betas("linear", 4000)
    assert b4[0] == pytest.approx(2.5e-5) and b4[-1] == pytest.approx(5e-3)


def test_cosine_matches_closed_form_and_caps():
    T = 1000
    b = named_betas("cosine", T)
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    abar = np.cumprod(1 - b)
    # Away from the capped end, ᾱ_t equals f((t+1)/T)/f(0).
    np.testing.assert_allclose(abar[:900], [f((t + 1) / T) / f(0) for t in range(900)], rtol=1e-10)
    assert b.max() == pytest.approx(0.999) and (b <= 0.999).all()


def test_scaled_linear_matches_diffusers():
    from diffusers import DDPMScheduler

    sch = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    np.testing.assert_allclose(named_betas("scaled_linear", 1000), sch.betas.double().numpy(), rtol=1e-6)


def test_respacing_strings():
    assert space_timesteps(1000, "ddim25") == list(range(0, 1000, 40))
    s250 = space_timesteps(1000, "250")
    assert len(s250) == 250 and s250[0] == 0 and s250[-1] == 999
    # "a,b": two sections [0,50) and [50,100) with a and b evenly strided steps each.
    assert space_timesteps(100, "2,3") == [0, 49, 50, 74, 99]
    assert space_timesteps(10, [10]) == list(range(10))
    assert space_timesteps(1000, "1") == [0]
    with pytest.raises(GenevalError, match="no integer stride"):
        space_timesteps(1000, "ddim37")
    with pytest.raises(GenevalError, match="cannot take"):
        space_timesteps(10, "11")
    with pytest.raises(GenevalError):
        space_timesteps(10, "abc")


def test_respaced_betas_from_kept_alphas():
    cfg = DiffusionConfig(1000, "linear")
    full = make_schedule(cfg)
    sp = make_schedule(cfg, "ddim10")
    kept = sp.timesteps
    np.testing.assert_array_equal(sp.alphas_cumprod, full.alphas_cumprod[kept])
    prev = np.append(1.0, full.alphas_cumprod[kept][:-1])
    np.testing.assert_allclose(sp.betas, 1 - full.alphas_cumprod[kept] / prev, rtol=1e-12)
    np.testing.assert_allclose(np.cumprod(1 - sp.betas), sp.alphas_cumprod, rtol=1e-12)
    np.testing.assert_allclose(full.betas, cfg.betas(), rtol=1e-9)


def test_model_receives_original_or_rescaled_t():
    sp = make_schedule(DiffusionConfig(4000, "cosine"), "ddim4")
    t = sp.model_timestep(2, batch=3, device="cpu")
    assert t.dtype == torch.long and t.tolist() == [2000] * 3
    sp_r = make_schedule(DiffusionConfig(4000, "cosine", rescale_timesteps=True), "ddim4")
    t = sp_r.model_timestep(2, batch=1, device="cpu")
    assert t.dtype == torch.float32 and t.item() == pytest.approx(500.0)


def test_sigma_to_t_inverts_the_schedule():
    sp = make_schedule(DiffusionConfig(1000, "linear"))
    sig = sp.base_sigmas()
    for t in (0, 17, 500, 999):
        assert sp.sigma_to_t(float(sig[t])) == pytest.approx(t, abs=1e-6)
    mid = math.exp((math.log(sig[10]) + math.log(sig[11])) / 2)
    assert sp.sigma_to_t(mid) == pytest.approx(10.5, abs=1e-9)


def test_karras_sigmas():
    s = karras_sigmas(5, 0.1, 80.0)
    assert len(s) == 6 and s[0] == pytest.approx(80.0) and s[4] == pytest.approx(0.1) and s[5] == 0
    assert (np.diff(s) < 0).all()
    i = 2
    want = (80 ** (1 / 7) + i / 4 * (0.1 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert s[i] == pytest.approx(want)


def test_bad_config_is_a_user_error():
    with pytest.raises(GenevalError, match="beta schedule"):
        DiffusionConfig(1000, "quadratic")
    with pytest.raises(GenevalError, match="prediction type"):
        DiffusionConfig(1000, "linear", prediction_type="score")


def test_zero_terminal_snr_matches_diffusers():
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr

    cfg = DiffusionConfig(1000, "scaled_linear", 0.00085, 0.012, rescale_betas_zero_snr=True)
    abar = np.cumprod(1 - cfg.betas())
    assert abar[-1] == 0.0 and abar[0] == pytest.approx(1 - 0.00085)
    want = rescale_zero_terminal_snr(torch.from_numpy(named_betas("scaled_linear", 1000, 0.00085, 0.012)))
    np.testing.assert_allclose(cfg.betas(), want.numpy(), rtol=1e-9, atol=1e-12)
    # The flag is recorded only when set, so older records and cache keys keep their form.
    assert "rescale_betas_zero_snr" not in DiffusionConfig(1000).to_dict()
    assert DiffusionConfig.from_dict(cfg.to_dict()) == cfg


def test_adm_convention_is_the_old_schedule():
    cfg = DiffusionConfig(1000, "linear")
    for spec in ("ddim25", "250", "10,20"):
        s = make_schedule(cfg, spec)
        assert s.convention == "adm" and s.timesteps.tolist() == space_timesteps(1000, spec)
        np.testing.assert_array_equal(s.alphas_cumprod_prev, np.append(1.0, s.alphas_cumprod[:-1]))


def test_final_alpha_and_stride_rules():
    cfg = DiffusionConfig(1000, "linear")
    abar = np.cumprod(1 - cfg.betas())
    s = make_schedule(cfg, 10, "linspace", final_alpha="first", prev_rule="stride")
    # diffusers' DDIMScheduler steps from t to t − T//N whatever the spacing: 999 → 899, not 888.
    assert s.timesteps.tolist()[-2:] == [888, 999] and s.alphas_cumprod_prev[-1] == abar[899]
    assert s.timesteps[0] == 0 and s.alphas_cumprod_prev[0] == abar[0]
    with pytest.raises(GenevalError, match="final alpha"):
        make_schedule(cfg, 10, "linspace", final_alpha="zero")
