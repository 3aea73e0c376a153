"""Latent generation: DiTPipeline parity, the two CFG channel rules, batch invariance, provenance, the demo."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geneval.errors import GenevalError
from geneval.models.ae_formats import load_autoencoder
from geneval.sampling.generate import SamplingConfig, quantize
from geneval.sampling.guidance import cfg_model_fn
from geneval.sampling.latent import (
    CFG_CHANNELS,
    FirstStage,
    LatentGenerator,
    guided_channels,
    load_dit_generator,
)
from geneval.sampling.noise import NoiseSource
from geneval.sampling.samplers import ddpm
from geneval.sampling.schedules import DiffusionConfig, make_schedule

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_diffusers(tmp_path, seed=0):
    """Random-weight DiTTransformer2DModel (8×8×4 latents, 1000 classes: DiTPipeline's null is 1000)
    and AutoencoderKL (f2, 16 px), saved as diffusers folders."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    dit = diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=1000,
    )
    with torch.no_grad():
        for p in dit.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
        first = dict(dit.transformer_blocks[0].norm1.emb.named_parameters())
        for b in dit.transformer_blocks[1:]:
            for k, p in b.norm1.emb.named_parameters():
                p.copy_(first[k])
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    dit.eval().save_pretrained(tmp_path / "transformer")
    vae.eval().save_pretrained(tmp_path / "vae")
    return diffusers, dit.eval(), vae.eval()


def test_ten_step_cfg_sample_matches_diffusers_dit_pipeline(tmp_path):
    diffusers, dit, vae = _tiny_diffusers(tmp_path)
    # DDIM "leading" with 10 steps (900, 800, …, 0), final ᾱ = 1, no clipping = geneval's ddim10 with clip off.
    sched = diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing="leading",
    )
    pipe = diffusers.DiTPipeline(transformer=dit, vae=vae, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    labels, seed, scale = [3, 999, 0, 512], 7, 2.5
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(labels))]  # per-sample seeds, as geneval's NoiseSource
    want = pipe(class_labels=labels, guidance_scale=scale, generator=gens, num_inference_steps=10, output_type="np").images

    gen = load_dit_generator(tmp_path, None)  # a pipeline-style folder: transformer/ + vae/
    assert gen.describe()["autoencoder"] == str(tmp_path / "vae")
    assert gen.cfg_channels == "all"  # a diffusers folder defaults to diffusers' rule
    cfg = SamplingConfig(n=4, sampler="ddim", steps=10, guidance=scale, convention="s", seed=seed)
    got = gen.generate_float(np.arange(4), np.array(labels), cfg, "cpu")
    got = (got / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert got.shape == want.shape == (4, 16, 16, 3)
    assert np.abs(got - want).max() < 1e-4
    assert want.std() > 1e-3  # not a constant image
    # Guidance matters (so the parity covers it): the unguided sample differs.
    plain = gen.generate_float(np.arange(4), np.array(labels), SamplingConfig(n=4, sampler="ddim", steps=10, seed=seed), "cpu")
    assert np.abs((plain / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy() - want).max() > 1e-3


class _Toy(torch.nn.Module):
    """A closed-form conditional net: out[:, k] = tanh(x[:, k % C] · (1 + k/10)) + a_k(y)/4 + t/1000 (bounded,
    so the learned-range σ channels stay in a sane range)."""

    def __init__(self, channels=4, out=8, classes=5):
        super().__init__()
        self.C, self.out = channels, out
        self.table = torch.randn(classes + 1, out, generator=torch.Generator().manual_seed(3))

    def forward(self, x, t, y):
        k = torch.arange(self.out)
        base = torch.tanh(x[:, k % self.C] * (1 + k.view(1, -1, 1, 1) / 10))
        return base + self.table[y].view(-1, self.out, 1, 1) / 4 + t.float().view(-1, 1, 1, 1) / 1000


def test_cfg_channel_rules_closed_form():
    toy, s = _Toy(), 3.0
    x, t, y = torch.randn(2, 4, 2, 2), torch.tensor([10, 20]), torch.tensor([1, 4])
    c, u = toy(x, t, y), toy(x, t, torch.full_like(y, 5))
    official = cfg_model_fn(toy, y, 5, s, guided_channels("official", 4))(x, t)
    everything = cfg_model_fn(toy, y, 5, s, guided_channels("all", 4))(x, t)
    g = u + s * (c - u)
    # official (forward_with_cfg): channels 0..2 guided; ε channel 3 and the σ channels conditional.
    assert torch.allclose(official[:, :3], g[:, :3]) and torch.equal(official[:, 3:], c[:, 3:])
    # all (DiTPipeline): the 4 ε channels guided, σ conditional.
    assert torch.allclose(everything[:, :4], g[:, :4]) and torch.equal(everything[:, 4:], c[:, 4:])
    assert not torch.allclose(official[:, 3], everything[:, 3])
    assert set(CFG_CHANNELS) == {"official", "all"}
    with pytest.raises(GenevalError, match="CFG channel rule"):
        guided_channels("some", 4)


def _tiny_native_ae():
    ae = load_autoencoder("demo-kl")  # the shipped 4-channel f4 KL demo autoencoder (small)
    return ae


def _toy_generator(cfg_channels="official", quantize_rule=None):
    toy = _Toy(classes=5)
    stage = FirstStage(_tiny_native_ae(), 0.5, "test")
    diffusion = DiffusionConfig(num_timesteps=100, beta_schedule="linear", variance_type="learned_range")
    return LatentGenerator(
        toy,
        diffusion,
        (4, 8, 8),
        stage,
        family="dit",
        num_classes=5,
        null_class=5,
        cfg_channels=cfg_channels,
        quantize=quantize_rule,
        denoiser_info={"toy": True},
    )


def test_official_rule_equals_forward_with_cfg_transcription():
    # facebookresearch/DiT sample.py: z = cat([z, z]), y = cat([y, null]); forward_with_cfg runs the
    # first half twice, guides channels [:3], and p_sample (learned range, clip_denoised=False)
    # steps the whole 2N batch; the first N rows are kept. Transcribed here with the same noise.
    gen = _toy_generator("official")
    cfg = SamplingConfig(n=3, sampler="ddpm", steps=5, respacing="5", guidance=2.0, convention="s", seed=11, align=0)
    labels = np.array([0, 2, 4])
    got = gen.sample_latents(np.arange(3), labels, cfg, "cpu")

    toy, n = gen.net, 3
    y2 = torch.cat([torch.from_numpy(labels), torch.full((n,), 5)])

    def forward_with_cfg(x, t):
        half = x[: len(x) // 2]
        out = toy(torch.cat([half, half]), t, y2)
        eps, rest = out[:, :3], out[:, 3:]
        ce, ue = torch.split(eps, len(eps) // 2)
        he = ue + 2.0 * (ce - ue)
        return torch.cat([torch.cat([he, he]), rest], dim=1)

    noise = NoiseSource([11, 12, 13])
    z = noise.randn((4, 8, 8))

    class Twice:  # both halves of the official batch draw the same per-sample noise rows
        def randn_like(self, x):
            d = noise.randn_like(x[:n])
            return torch.cat([d, d])

    schedule = make_schedule(gen.diffusion, "5")
    want = ddpm(forward_with_cfg, torch.cat([z, z]), schedule, Twice(), clip_denoised=False)[:n]
    assert torch.allclose(got, want, atol=1e-5)
    gen_all = _toy_generator("all")
    assert not torch.allclose(gen_all.sample_latents(np.arange(3), labels, cfg, "cpu"), want, atol=1e-3)


def test_batch_composition_invariance():
    gen = _toy_generator()
    cfg = SamplingConfig(n=8, sampler="ddpm", steps=4, guidance=1.5, convention="s", seed=5)
    labels = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    full = gen.generate(np.arange(8), labels, cfg, "cpu")
    part = gen.generate(np.arange(2, 6), labels[2:6], cfg, "cpu")
    assert np.array_equal(full[2:6], part)
    f_full = gen.generate_float(np.arange(8), labels, cfg, "cpu")
    f_part = gen.generate_float(np.arange(2, 6), labels[2:6], cfg, "cpu")
    assert torch.equal(f_full[2:6], f_part)
    assert full.dtype == np.uint8 and full.shape == (8, 32, 32, 3)


def test_quantisation_rule_by_family_and_provenance():
    gen = _toy_generator()
    cfg = SamplingConfig(n=2, sampler="ddim", steps=3, seed=0)
    x = gen.generate_float(np.arange(2), np.array([1, 2]), cfg, "cpu")
    assert np.array_equal(gen.generate(np.arange(2), np.array([1, 2]), cfg, "cpu"), quantize(x, "round"))
    trunc = _toy_generator(quantize_rule="truncate")
    assert trunc.quantize_rule == "truncate"
    d = gen.describe()
    ae = _tiny_native_ae()
    assert d["autoencoder_sha256"] == ae.sha256 and len(d["autoencoder_sha256"]) == 64
    assert (d["scale_factor"], d["decode_dtype"], d["cfg_channels"], d["quantisation"]) == (0.5, "float32", "official", "round")
    assert d["clip_denoised"] is False and d["image_size"] == 32


def test_decode_divides_by_scale_factor():
    ae = _tiny_native_ae()
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        want = ae.model.decode(z / 0.25)
    assert torch.equal(FirstStage(ae, 0.25, "test").decode(z), want)


def test_loader_errors(tmp_path):
    with pytest.raises(GenevalError, match="--vae"):
        load_dit_generator(tmp_path / "x.pt", None)
    with pytest.raises(GenevalError, match="CFG channel rule"):
        load_dit_generator(tmp_path / "x.pt", "demo-kl", cfg_channels="three")
    with pytest.raises(GenevalError, match="not found"):
        load_dit_generator(tmp_path / "x.pt", "demo-kl")
    vq = load_autoencoder("demo-vq")
    if vq.config.embed_dim != 4:
        with pytest.raises(GenevalError, match="latent channels"):
            LatentGenerator(_Toy(), DiffusionConfig(), (4, 8, 8), FirstStage(vq, 1.0, "t"), family="dit")
    gen = _toy_generator()
    with pytest.raises(GenevalError, match="labels are required"):
        gen.generate(np.arange(2), None, SamplingConfig(n=2, steps=2), "cpu")


def test_demo_ldm_loads_and_samples():
    from geneval.sampling.latent import load_demo_ldm

    gen = load_demo_ldm()
    d = gen.describe()
    assert gen.num_classes == 10 and gen.null_class == 10 and gen.image_size == 32 and gen.image_channels == 3
    assert d["autoencoder_name"] == "ae-kl-fmnist" and math.isfinite(d["scale_factor"])
    assert gen.sampling_defaults["sampler"] == "ddim"
    cfg = SamplingConfig(n=2, sampler="ddim", steps=3, guidance=2.0, convention="s", seed=0)
    img = gen.generate(np.arange(2), np.array([1, 7]), cfg, "cpu")
    assert img.shape == (2, 32, 32, 3) and img.dtype == np.uint8 and img.std() > 0


def test_load_latent_generator_dispatch_and_untrained_baseline(tmp_path):
    from geneval.sampling.latent import load_latent_generator
    from geneval.zoo.train_latent_demo import save_untrained

    demo = load_latent_generator("demo-ldm", cfg_channels=None, scale_factor=None, arch=None)
    with pytest.raises(GenevalError, match="drop --vae"):
        load_latent_generator("demo-ldm", "demo-kl")
    with pytest.raises(GenevalError, match="DiT checkpoints only"):
        load_latent_generator("demo-ldm", scale_factor=1.0)
    untrained = load_latent_generator(save_untrained(tmp_path / "u"))
    assert untrained.describe()["latent_shape"] == demo.describe()["latent_shape"]
    assert untrained.first_stage.scale_factor == demo.first_stage.scale_factor
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([5, 500]), torch.tensor([1, 10])
    with torch.no_grad():
        assert not torch.allclose(untrained.net(x, t, y), demo.net(x, t, y))


def test_dit_with_ldm_layout_vae_files(tmp_path):
    # --vae as an SD-style standalone .safetensors (LDM key names) and as an LDM .ckpt with a
    # scale_factor buffer: the scale comes from DiT's constant resp. the checkpoint, and is recorded.
    from safetensors.torch import save_file

    from geneval.models.autoencoder import AEConfig, build_autoencoder
    from geneval.models.dit import DiT, DiTConfig

    torch.manual_seed(0)
    ae = build_autoencoder(AEConfig(kind="kl", ch=32, ch_mult=(1, 1), num_res_blocks=1, z_channels=4, embed_dim=4, resolution=16)).eval()
    sd = {k: v.contiguous() for k, v in ae.state_dict().items()}
    save_file(sd, str(tmp_path / "vae.safetensors"))
    torch.save({"state_dict": {**{f"first_stage_model.{k}": v for k, v in sd.items()}, "scale_factor": torch.tensor(0.3)}}, tmp_path / "ldm.ckpt")
    dit = DiT(DiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=384, depth=1, num_heads=6, num_classes=1000))
    torch.save(dit.state_dict(), tmp_path / "dit.pt")
    a = load_dit_generator(tmp_path / "dit.pt", tmp_path / "vae.safetensors")
    b = load_dit_generator(tmp_path / "dit.pt", tmp_path / "ldm.ckpt", cfg_channels="all", quantize="truncate")
    da, db = a.describe(), b.describe()
    assert (da["scale_factor"], da["scale_factor_source"], da["cfg_channels"], da["quantisation"]) == (
        0.18215,
        "model family default",
        "official",
        "round",
    )
    assert (db["scale_factor"], db["cfg_channels"], db["quantisation"]) == (pytest.approx(0.3), "all", "truncate")
    assert da["autoencoder_format"] == "ldm-standalone" and db["autoencoder_format"] == "ldm" and len(db["autoencoder_sha256"]) == 64
    assert da["denoiser"]["format"] == "dit-official" and a.image_size == 16 and a.sampling_defaults["steps"] == 250
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(b.first_stage.decode(z), ae.decode(z / 0.3))
