"""Guidance wrappers: CFG conventions (w vs s) and classifier guidance (DDPM mean shift, DDIM score)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geneval.errors import GenevalError
from geneval.models.classifier import ClassifierConfig, EncoderUNet
from geneval.models.formats import LoadedModel
from geneval.models.unet import UNetConfig, UNetModel, init_random_
from geneval.sampling.generate import sample
from geneval.sampling.guidance import cfg_model_fn, cfg_scale, classifier_cond_fn
from geneval.sampling.noise import NoiseSource
from geneval.sampling.samplers import SAMPLERS
from geneval.sampling.schedules import DiffusionConfig, make_schedule

T = 100


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cond_model() -> LoadedModel:
    # 3 real classes + null slot 3; learned sigma so the extra channels are exercised too.
    cfg = UNetConfig(
        image_size=8,
        model_channels=32,
        out_channels=6,
        num_res_blocks=1,
        attention_resolutions=(4,),
        channel_mult=(1, 1),
        num_classes=4,
        num_heads=2,
        use_scale_shift_norm=True,
    )
    net = init_random_(UNetModel(cfg).eval(), seed=3, std=0.03)
    return LoadedModel(net, cfg, DiffusionConfig(T, "linear", variance_type="learned_range"), "unet", "native", 3, 3)


def _images(m, **kw):
    return np.concatenate([b.images for b in sample(m, 6, steps=4, seed=1, batch_size=6, **kw)])


def test_conventions_w_and_s_give_identical_samples(cond_model):
    for w in (0.5, 3.0):
        a = _images(cond_model, sampler="ddim", guidance=w, convention="w")
        b = _images(cond_model, sampler="ddim", guidance=1 + w, convention="s")
        assert np.array_equal(a, b)
    plain = _images(cond_model, sampler="ddim")
    assert not np.array_equal(a, plain)  # guidance 3 (w) really changes the samples


def test_unguided_values_equal_the_plain_conditional_model(cond_model):
    plain = _images(cond_model, sampler="ddpm")
    assert np.array_equal(_images(cond_model, sampler="ddpm", guidance=0.0, convention="w"), plain)
    assert np.array_equal(_images(cond_model, sampler="ddpm", guidance=1.0, convention="s"), plain)


def test_cfg_wrapper_matches_both_published_formulas(cond_model):
    net = cond_model.net
    calls = []

    def net_call(x, t, y):
        calls.append(x.shape[0])
        return net(x, t, y)

    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.full((4,), 40)
    y = torch.tensor([0, 1, 2, 0])
    w = 2.5
    with torch.no_grad():
        out = cfg_model_fn(net_call, y, 3, cfg_scale(w, "w"), channels=3)(x, t)
        cond, uncond = net(x, t, y), net(x, t, torch.full_like(y, 3))
    assert calls == [8]  # one batched 2N forward
    torch.testing.assert_close(out[:, :3], (1 + w) * cond[:, :3] - w * uncond[:, :3], atol=1e-5, rtol=1e-5)  # Ho & Salimans
    torch.testing.assert_close(out[:, :3], uncond[:, :3] + (1 + w) * (cond[:, :3] - uncond[:, :3]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, 3:], cond[:, 3:])  # learned variance from the conditional half


def test_cfg_refuses_models_without_null_class():
    cfg = UNetConfig(image_size=8, model_channels=32, out_channels=3, num_res_blocks=1, attention_resolutions=(), channel_mult=(1,))
    uncond = LoadedModel(UNetModel(cfg).eval(), cfg, DiffusionConfig(T), "unet", "native", source="u.safetensors")
    with pytest.raises(GenevalError, match="unconditional"):
        next(sample(uncond, 2, guidance=1.0))
    with pytest.raises(GenevalError, match="convention"):
        cfg_scale(1.0, "x")


# ---------------------------------------------------------------- classifier guidance


def _toy_classifier(x, t):
    """Two classes scored by mean brightness: class 0 = bright, class 1 = dark."""
    m = x.mean(dim=(1, 2, 3))
    return torch.stack([4 * m, -4 * m], dim=1)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_classifier_guidance_raises_target_log_prob_with_scale(sampler):
    cfg = UNetConfig(image_size=8, model_channels=32, out_channels=3, num_res_blocks=1, attention_resolutions=(4,), channel_mult=(1, 1), num_heads=2)
    net = init_random_(UNetModel(cfg).eval(), seed=5, std=0.03)
    schedule = make_schedule(DiffusionConfig(T, "linear"), "ddim10")
    y = torch.zeros(8, dtype=torch.long)  # target: bright
    log_probs = []
    for scale in (0.0, 2.0, 8.0):
        noise = NoiseSource(range(8))
        x = noise.randn((3, 8, 8))
        knobs = {"cond_fn": classifier_cond_fn(_toy_classifier, y, scale)} if scale else {}
        with torch.no_grad():
            x0 = SAMPLERS[sampler].fn(lambda a, t: net(a, t), x, schedule, noise, **knobs)
        lp = torch.log_softmax(_toy_classifier(x0, None), dim=1)[:, 0].mean().item()
        log_probs.append(lp)
    assert log_probs[0] < log_probs[1] < log_probs[2], log_probs


def test_classifier_cond_fn_is_scaled_log_softmax_gradient():
    x = torch.randn(3, 3, 8, 8)
    y = torch.tensor([0, 1, 0])
    g = classifier_cond_fn(_toy_classifier, y, 2.0)(x, None)
    # d/dx log softmax([4m, -4m])[0] = 8·σ(-8m)·∂m/∂x, with ∂m/∂x = 1/192; sign flips for class 1.
    m = x.mean(dim=(1, 2, 3))
    want = torch.stack([8 * torch.sigmoid(-8 * m[0]), -8 * torch.sigmoid(8 * m[1]), 8 * torch.sigmoid(-8 * m[2])]) / 192
    torch.testing.assert_close(g[:, 0, 0, 0], 2.0 * want, atol=1e-6, rtol=1e-5)


def test_classifier_guidance_end_to_end_with_adm_classifier():
    """Through sample(): an ADM EncoderUNet guiding an unconditional UNet; its log-prob rises with the scale."""
    ucfg = UNetConfig(image_size=8, model_channels=32, out_channels=3, num_res_blocks=1, attention_resolutions=(4,), channel_mult=(1, 1), num_heads=2)
    unet = LoadedModel(init_random_(UNetModel(ucfg).eval(), seed=2, std=0.03), ucfg, DiffusionConfig(T, "linear"), "unet", "native")
    ccfg = ClassifierConfig(
        image_size=8, model_channels=32, out_channels=3, num_res_blocks=1, attention_resolutions=(4,), channel_mult=(1, 1), num_head_channels=32
    )
    clf_net = init_random_(EncoderUNet(ccfg).eval(), seed=4, std=0.1)
    with torch.no_grad():
        clf_net.out[2].c_proj.weight.mul_(30)  # a confident random classifier: non-vanishing gradients
    clf = LoadedModel(clf_net, ccfg, None, "classifier", "native", num_classes=3)
    scores = []
    for scale in (0.0, 5.0, 20.0):
        batches = list(sample(unet, 8, sampler="ddim", steps=5, classes=1, classifier=clf, classifier_scale=scale, batch_size=8))
        imgs = torch.from_numpy(np.concatenate([b.images for b in batches])).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            scores.append(torch.log_softmax(clf_net(imgs, torch.zeros(8)), dim=1)[:, 1].mean().item())
    assert scores[0] < scores[1] < scores[2] and scores[2] - scores[0] > 0.01, scores  # measured -0.374, -0.362, -0.342
