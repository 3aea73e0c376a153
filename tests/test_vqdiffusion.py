"""VQ-Diffusion's token transformer and generator: the official checkpoint layout (key for key),
numerical parity with the official modules (tiny random fixture) and with diffusers' discrete
Transformer2DModel / AdaLayerNorm on the same random weights, and the generator contract."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from geneval.errors import GenevalError
from geneval.models import vqdiffusion as V
from geneval.models.autoencoder import AEConfig
from geneval.models.autoencoder_vq import VQAutoencoder
from geneval.models.discrete_generator import load_token_map, load_vqdiffusion
from geneval.sampling import discrete as D

DATA = Path(__file__).parent / "data"


# ---------------------------------------------------------------- official layout and forward


@pytest.mark.parametrize("class_number", [1000, 1001])
def test_official_imagenet_layout_maps_one_to_one(class_number):
    layout = json.loads((DATA / "vqdiffusion_imagenet_layout.json").read_text())["layouts"][str(class_number)]
    cfg = dataclasses.replace(V.IMAGENET, class_number=class_number)
    with torch.device("meta"):
        net = V.VQDiffusionTransformer(cfg)
    ours = {k: list(v.shape) for k, v in net.state_dict().items()}
    theirs = {k[len("transformer.") :]: v for k, v in layout.items() if k.startswith("transformer.")}
    assert ours == theirs  # same names, same shapes, nothing left over on either side
    buffers = sorted(k for k in layout if not k.startswith("transformer."))
    assert {"log_at", "log_cumprod_at", "log_cumprod_ct"} <= set(buffers)
    # The shape is read back from the tensors alone (+ the tokenizer's 16×16 grid).
    meta_sd = {k: torch.empty(v, device="meta") for k, v in theirs.items()}
    assert V.config_from_official_state(meta_sd, (16, 16)) == dataclasses.replace(cfg, num_classes=1000)
    # The official `model` and `ema` wrappers both unwrap to the same tensors.
    for raw in ({"ema": dict(meta_sd.items())}, {"model": {"transformer." + k: v for k, v in meta_sd.items()}}):
        wrapped = (
            {"ema": {"transformer." + k: v for k, v in meta_sd.items()}}
            if "ema" in raw
            else {"model": {"transformer." + k: v for k, v in raw["model"].items()}}
        )
        net_sd, _, part = V.official_transformer_state(wrapped)
        assert set(net_sd) == set(theirs) and part in ("ema", "model")


def _official_tiny():
    z = np.load(DATA / "vqdiffusion_official_tiny.npz")
    sd = {k[3:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("sd/")}
    net_sd, buffers, _ = V.official_transformer_state(sd)
    cfg = V.config_from_official_state(net_sd, (4, 4), n_head=4)
    net = V.VQDiffusionTransformer(cfg)
    net.load_state_dict(net_sd, strict=True)
    return z, net.eval()


def test_forward_matches_the_official_modules(one_thread):
    z, net = _official_tiny()
    x, t, y = (torch.from_numpy(z[k]) for k in ("x", "t", "y"))
    assert net.config.pos == (8, 8) and net.config.content_hw == (4, 4)  # pos tables larger than the grid
    with torch.no_grad():
        logits = net(x, t, y)  # y = 5 and 7 are beyond the 5-row class table: mean class embedding
    assert (logits - torch.from_numpy(z["logits"])).abs().max() < 1e-5
    assert (D.log_x0_from_logits(logits) - torch.from_numpy(z["log_x0"])).abs().max() < 1e-5


# ---------------------------------------------------------------- diffusers parity

diffusers = pytest.importorskip("diffusers")


def _tiny_diffusers_transformer(cross: bool, seed: int = 0):
    from diffusers import Transformer2DModel

    torch.manual_seed(seed)
    tr = Transformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        num_vector_embeds=10,
        sample_size=4,
        num_layers=2,
        cross_attention_dim=12 if cross else None,
        activation_fn="geglu-approximate",
        num_embeds_ada_norm=20,
        norm_type="ada_norm",
        attention_bias=True,
    ).eval()
    with torch.no_grad():
        for p in tr.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return tr


@pytest.mark.parametrize("cross", [True, False])
def test_network_matches_diffusers_discrete_transformer(cross, one_thread):
    tr = _tiny_diffusers_transformer(cross)
    cfg = V.config_from_diffusers(tr.config)
    assert cfg.attn_type == ("selfcross" if cross else "self") and cfg.mlp_type == "fc" and cfg.activation == "GELU2"
    net = V.VQDiffusionTransformer(cfg).eval()
    mapped = V.from_diffusers_state(tr.state_dict(), cfg)
    assert len(mapped) == len(tr.state_dict())  # one to one
    net.load_state_dict(mapped, strict=True)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 10, (3, 16), generator=g)
    ctx = torch.randn(3, 5, 12, generator=g) if cross else None
    for t in (0, 7, 19):
        with torch.no_grad():
            ref = tr(x, encoder_hidden_states=ctx, timestep=torch.tensor(t)).sample
            ours = torch.log_softmax(net(x, torch.full((3,), t), ctx).double(), 1).float()
        assert ref.shape == ours.shape == (3, 9, 16)
        assert (ref - ours).abs().max() < 1e-5


def test_class_adalayernorm_matches_diffusers_and_the_mean_null():
    from diffusers.models.normalization import AdaLayerNorm as DAdaLN

    torch.manual_seed(0)
    ref = DAdaLN(16, num_embeddings=7)
    ours = V.AdaLayerNorm(16, 7)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 5, 16)
    for label in range(7):
        assert torch.allclose(ours(x, torch.tensor([label])), ref(x, torch.tensor(label)), atol=1e-6)
    # A label beyond the table is the official unconditional: the mean class embedding.
    mean = ref.emb.weight.mean(0)
    scale, shift = ref.linear(torch.nn.functional.silu(mean)).chunk(2)
    expect = torch.nn.functional.layer_norm(x, (16,)) * (1 + scale) + shift
    assert torch.allclose(ours(x, torch.tensor([7])), expect, atol=1e-6)
    both = ours(x.expand(2, -1, -1), torch.tensor([3, 9]))  # rows decide for themselves
    assert torch.allclose(both[0], ours(x, torch.tensor([3]))[0], atol=1e-6) and torch.allclose(both[1], expect[0], atol=1e-6)


# ---------------------------------------------------------------- the generator


K, GRID = 16, 4
TINY_AE = AEConfig(
    kind="vq",
    ch=8,
    ch_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(),
    in_channels=3,
    out_ch=3,
    resolution=8,
    z_channels=4,
    embed_dim=4,
    n_embed=K,
    num_groups=4,
)
TINY_NET = V.VQDiffusionConfig(
    num_tokens=K,
    content_hw=(GRID, GRID),
    pos_hw=(6, 6),
    n_embd=16,
    n_head=2,
    n_layer=2,
    mlp_hidden_times=2,
    mlp_type="conv_mlp",
    attn_type="selfcondition",
    class_number=4,
    num_classes=3,
    diffusion_step=12,
)


@pytest.fixture
def official_files(tmp_path):
    torch.manual_seed(0)
    ae = VQAutoencoder(TINY_AE)
    vq = tmp_path / "taming-vqgan.ckpt"
    torch.save({"state_dict": {**ae.state_dict(), "loss.discriminator.w": torch.zeros(1)}}, vq)
    net = V.VQDiffusionTransformer(TINY_NET)
    with torch.no_grad():  # off the N(0, 0.02) init, so classes and guidance matter
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    sched = D.mask_schedule(12, K)
    buffers = {k: getattr(sched, k) for k in ("log_at", "log_bt", "log_ct", "log_cumprod_at", "log_cumprod_bt", "log_cumprod_ct")}
    ema = {**{"transformer." + k: v for k, v in net.state_dict().items()}, **buffers}
    model = tmp_path / "vqdiff.pth"
    torch.save({"model": {"transformer." + k: torch.zeros_like(v) for k, v in ema.items()}, "ema": ema, "last_epoch": 3}, model)
    return model, vq, net


def _cfg(**kw):
    from geneval.sampling.generate import SamplingConfig

    return SamplingConfig(n=8, seed=kw.pop("seed", 5), **kw)


def test_official_checkpoint_loads_and_generates(official_files, one_thread):
    model, vq, net = official_files
    gen = load_vqdiffusion(model, vq=vq, vq_config=TINY_AE, n_head=2, num_classes=3, truncation_rate=0.9, skip=1)
    assert gen.kind == "discrete" and gen.num_classes == 3 and gen.null_label == 3
    assert gen.image_size == 8 and gen.image_channels == 3 and gen.steps == 7
    assert all(torch.equal(a, b) for a, b in zip(gen.net.state_dict().values(), net.state_dict().values()))  # the EMA copy
    d = gen.describe()
    assert d["model"]["sha256"] and d["tokenizer"]["sha256"] and d["model"]["part"] == "ema"
    assert d["truncation_rate"] == 0.9 and d["skip"] == 1 and "u + s(c - u)" in d["guidance_convention"]
    assert d["null_embedding"] == "learned row"
    imgs = gen.generate(np.arange(3), np.array([0, 1, 2]), _cfg(guidance=2.0, convention="s"), torch.device("cpu"))
    assert imgs.shape == (3, 8, 8, 3) and imgs.dtype == np.uint8


def test_samples_do_not_depend_on_the_batch(official_files, one_thread):
    model, vq, _ = official_files
    gen = load_vqdiffusion(model, vq=vq, vq_config=TINY_AE, n_head=2, num_classes=3, truncation_rate=0.8, skip=2)
    cfg = _cfg(guidance=1.5, convention="w", align=4)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    full = gen.generate_tokens(np.arange(8), labels, cfg, torch.device("cpu"))
    part = gen.generate_tokens(np.arange(2, 6), labels[2:6], cfg, torch.device("cpu"))
    assert torch.equal(full[2:6], part)
    other = gen.generate_tokens(np.arange(8), labels, _cfg(guidance=1.5, convention="w", align=4, seed=6), torch.device("cpu"))
    assert not torch.equal(full, other)
    unguided = gen.generate_tokens(np.arange(8), labels, _cfg(align=4), torch.device("cpu"))
    assert not torch.equal(full, unguided)  # guidance changes the chain


def test_guidance_uses_the_null_label_and_guide(official_files, one_thread):
    model, vq, _ = official_files
    gen = load_vqdiffusion(model, vq=vq, vq_config=TINY_AE, n_head=2, num_classes=3, truncation_rate=None)
    x = torch.randint(0, K + 1, (2, GRID * GRID))
    t = torch.tensor([5, 5])
    y = torch.tensor([1, 2])
    fn = gen.log_x0_fn(torch.arange(2), y, 3.0, align=0)
    with torch.no_grad():
        c = D.log_x0_from_logits(gen.net(x, t, y))
        u = D.log_x0_from_logits(gen.net(x, t, torch.full((2,), 3)))
        assert torch.allclose(fn(x, t), D.guide(c, u, 3.0), atol=1e-5)
        assert torch.allclose(gen.log_x0_fn(torch.arange(2), y, 1.0, align=0)(x, t), c)


def test_loader_errors_are_one_line(official_files, tmp_path):
    model, vq, _ = official_files
    with pytest.raises(GenevalError, match="needs its VQ tokenizer"):
        load_vqdiffusion(model)
    with pytest.raises(GenevalError, match="not found"):
        load_vqdiffusion(tmp_path / "nope.pth", vq=vq)
    junk = tmp_path / "junk.pth"
    torch.save({"model": {"foo": torch.zeros(1)}}, junk)
    with pytest.raises(GenevalError, match="not a microsoft/VQ-Diffusion checkpoint"):
        load_vqdiffusion(junk, vq=vq, vq_config=TINY_AE)
    big = dataclasses.replace(TINY_AE, n_embed=K + 1)
    torch.save({"state_dict": VQAutoencoder(big).state_dict()}, tmp_path / "big.ckpt")
    with pytest.raises(GenevalError, match="predicts 16 tokens, the tokenizer has 17"):
        load_vqdiffusion(model, vq=tmp_path / "big.ckpt", vq_config=big, n_head=2, num_classes=3)
    with pytest.raises(GenevalError, match="truncation rate"):
        load_vqdiffusion(model, vq=vq, vq_config=TINY_AE, n_head=2, num_classes=3, truncation_rate=1.5)
    gen = load_vqdiffusion(model, vq=vq, vq_config=TINY_AE, n_head=2, num_classes=3)
    with pytest.raises(GenevalError, match="labels"):
        gen.generate(np.arange(2), np.array([0, 3]), _cfg(), torch.device("cpu"))


def test_token_map_decodes_through_the_first_code(tmp_path, official_files):
    # VQ-Diffusion's ImageNet model predicts 974 tokens; a table maps every VQGAN code to one of them.
    full_to_token = torch.tensor([2, 0, 1, 1, 0, 2, 3, 3])
    torch.save(full_to_token, tmp_path / "map.pt")
    table, info = load_token_map(tmp_path / "map.pt")
    assert table.tolist() == [1, 2, 0, 6] and info["n_tokens"] == 4 and info["sha256"]
    torch.save(torch.rand(3), tmp_path / "bad.pt")
    with pytest.raises(GenevalError, match="integer"):
        load_token_map(tmp_path / "bad.pt")


def test_diffusers_pipeline_folder_loads_mapped_and_wrapped(tmp_path, one_thread):
    from diffusers import VQDiffusionScheduler, VQModel

    tr = _tiny_diffusers_transformer(cross=False)
    torch.manual_seed(1)
    vq = VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=4,
        num_vq_embeddings=9,
        vq_embed_dim=4,
        norm_num_groups=4,
        sample_size=8,
    )
    tr.save_pretrained(tmp_path / "transformer")
    vq.save_pretrained(tmp_path / "vqvae")
    VQDiffusionScheduler(num_vec_classes=10, num_train_timesteps=20).save_pretrained(tmp_path / "scheduler")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "VQDiffusionPipeline"}))
    gen = load_vqdiffusion(tmp_path, skip=3)
    assert gen.num_classes is None and gen.image_size == 8 and gen.steps == len(D.fast_timesteps(20, 3))
    assert "mapped" in gen.describe()["model"]["format"] and "wrapped" in gen.describe()["tokenizer"]["format"]
    imgs = gen.generate(np.arange(2), None, _cfg(), torch.device("cpu"))
    assert imgs.shape == (2, 8, 8, 3)
    # The wrapped decoder is diffusers' own codebook lookup + decode.
    tokens = torch.randint(0, 9, (2, 4, 4))
    with torch.no_grad():
        emb = vq.quantize.get_codebook_entry(tokens.reshape(2, -1), shape=(2, 4, 4, 4))
        ref = vq.decode(emb, force_not_quantize=True).sample
        assert (gen.decoder.decode(tokens) - ref).abs().max() < 1e-5, (gen.decoder.decode(tokens) - ref).abs().max()


def test_demo_vqd_resolves_and_generates(one_thread):
    from geneval.zoo import CHECKPOINT_DIR

    if not (CHECKPOINT_DIR / "demo-vqd" / "config.json").exists():
        pytest.fail("the shipped demo-vqd checkpoint is missing")
    gen = load_vqdiffusion("demo-vqd", skip=9)
    d = gen.describe()
    assert gen.num_classes == 10 and gen.image_size == 32 and d["tokenizer"]["name"] == "ae-vq-fmnist"
    assert d["training"]["steps"] > 0 and d["model"]["sha256"]
    imgs = gen.generate(np.arange(2), np.array([1, 7]), SimpleNamespace(seed=0, cfg_s=None, align=0, quantize="truncate"), torch.device("cpu"))
    assert imgs.shape == (2, 32, 32, 3)
