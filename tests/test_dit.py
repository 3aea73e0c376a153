"""geneval's DiT: parity with diffusers' DiTTransformer2DModel, the official key layout, and loading."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

from geneval.errors import GenevalError
from geneval.models.dit import (
    DiT,
    DiTConfig,
    _infer_config,
    check_state_dict,
    count_parameters,
    dit_config,
    load_dit,
    official_from_diffusers,
    sincos_pos_embed_2d,
)

pytestmark = pytest.mark.usefixtures("one_thread")

diffusers = pytest.importorskip("diffusers")

TINY = DiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=1000)


def tiny_diffusers_dit(seed: int = 0, same_embedders: bool = True):
    """A random-weight DiTTransformer2DModel (all tensors ~N(0, 0.1²), not the zero adaLN init).

    Every converted checkpoint has identical per-block timestep/label embedders; `same_embedders`
    reproduces that."""
    torch.manual_seed(seed)
    m = diffusers.DiTTransformer2DModel(
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
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
        if same_embedders:
            first = dict(m.transformer_blocks[0].norm1.emb.named_parameters())
            for b in m.transformer_blocks[1:]:
                for k, p in b.norm1.emb.named_parameters():
                    p.copy_(first[k])
    return m.eval()


def test_forward_matches_diffusers_dit(tmp_path):
    ref = tiny_diffusers_dit()
    ref.save_pretrained(tmp_path / "transformer")
    loaded = load_dit(tmp_path / "transformer")
    assert loaded.format == "diffusers"
    # diffusers' conventions are carried as config: /(half-1) frequencies and norm_eps=1e-5 before the MLP.
    assert loaded.config.time_freq_shift == 1.0 and loaded.config.mlp_norm_eps == 1e-5
    assert (loaded.config.learn_sigma, loaded.config.num_classes, loaded.config.null_class) == (True, 1000, 1000)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 4, 8, 8, generator=g)
    t = torch.tensor([0, 1, 250, 777, 999])
    y = torch.tensor([0, 3, 999, 1000, 17])  # 1000 = the null class
    with torch.no_grad():
        want = ref(x, timestep=t, class_labels=y).sample
        got = loaded.net(x, t, y)
    assert got.shape == want.shape == (5, 8, 8, 8)
    assert (got - want).abs().max().item() < 1e-5
    assert want.abs().max().item() > 0.1  # a real signal, not zeros
    # Fractional timesteps (ODE samplers) go through the same embedding.
    tf = torch.tensor([0.5, 10.25, 500.5, 998.9, 3.3])
    with torch.no_grad():
        assert (loaded.net(x, tf, y) - ref(x, timestep=tf, class_labels=y).sample).abs().max().item() < 1e-5


def test_pos_embed_matches_diffusers():
    ref = tiny_diffusers_dit()
    pe = torch.from_numpy(sincos_pos_embed_2d(32, 4)).float()
    assert (pe - ref.pos_embed.pos_embed[0]).abs().max().item() < 1e-6


def test_official_timestep_frequencies_differ_from_diffusers():
    # The official model divides by half (time_freq_shift=0): a different network function from
    # diffusers' on the same weights, which is why the shift is configuration and recorded.
    ref = tiny_diffusers_dit()
    sd = official_from_diffusers(ref.state_dict())
    sd["pos_embed"] = DiT(TINY).pos_embed
    official = DiT(dataclasses.replace(TINY, time_freq_shift=0.0, mlp_norm_eps=1e-5)).eval()
    official.load_state_dict(sd)
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([500, 900]), torch.tensor([1, 2])
    with torch.no_grad():
        assert (official(x, t, y) - ref(x, timestep=t, class_labels=y).sample).abs().max().item() > 1e-3


def _official_xl2_256_keys() -> dict[str, tuple[int, ...]]:
    """Key → shape of DiT-XL-2-256x256.pt, written from facebookresearch/DiT models.py (fetched):
    DiT(input_size=32, patch 2, in 4, hidden 1152, depth 28, heads 16, mlp 4, 1000 classes +
    CFG row, learn_sigma): PatchEmbed conv, pos_embed Parameter (1, 256, D), TimestepEmbedder
    mlp {0: Linear(256, D), 2: Linear(D, D)}, LabelEmbedder table (1001, D), per block timm
    Attention qkv/proj, Mlp fc1/fc2, adaLN_modulation[1] Linear(D, 6D) (LayerNorms have no
    affine), FinalLayer linear (p²·8 = 32 outputs) and adaLN_modulation[1] Linear(D, 2D)."""
    D = 1152
    keys: dict[str, tuple[int, ...]] = {
        "pos_embed": (1, 256, D),
        "x_embedder.proj.weight": (D, 4, 2, 2),
        "x_embedder.proj.bias": (D,),
        "t_embedder.mlp.0.weight": (D, 256),
        "t_embedder.mlp.0.bias": (D,),
        "t_embedder.mlp.2.weight": (D, D),
        "t_embedder.mlp.2.bias": (D,),
        "y_embedder.embedding_table.weight": (1001, D),
        "final_layer.linear.weight": (32, D),
        "final_layer.linear.bias": (32,),
        "final_layer.adaLN_modulation.1.weight": (2 * D, D),
        "final_layer.adaLN_modulation.1.bias": (2 * D,),
    }
    for n in range(28):
        b = f"blocks.{n}."
        keys.update(
            {
                b + "attn.qkv.weight": (3 * D, D),
                b + "attn.qkv.bias": (3 * D,),
                b + "attn.proj.weight": (D, D),
                b + "attn.proj.bias": (D,),
                b + "mlp.fc1.weight": (4 * D, D),
                b + "mlp.fc1.bias": (4 * D,),
                b + "mlp.fc2.weight": (D, 4 * D),
                b + "mlp.fc2.bias": (D,),
                b + "adaLN_modulation.1.weight": (6 * D, D),
                b + "adaLN_modulation.1.bias": (6 * D,),
            }
        )
    return keys


def test_official_xl2_key_layout_maps_one_to_one():
    want = _official_xl2_256_keys()
    with torch.device("meta"):
        net = DiT(dit_config("DiT-XL/2", 256))
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert got == want  # every key and shape, none missing, none extra
    # 675M parameters (the paper's DiT-XL/2 figure; pos_embed is a buffer here, a frozen Parameter there).
    assert round(count_parameters(net) / 1e6) == 675
    # Reading the config back off the official shapes gives XL/2 at 256 (heads from the official table).
    sd = {k: torch.empty(s, device="meta") for k, s in want.items()}
    cfg = _infer_config(sd, "XL/2")
    assert cfg == dit_config("DiT-XL/2", 256)
    check_state_dict(net, sd, "XL/2")  # no missing/unexpected/mis-shaped tensor
    with pytest.raises(GenevalError, match="not DiT-L/2"):
        _infer_config(sd, "XL/2", name="DiT-L/2")


@pytest.mark.parametrize(
    "name,size,tokens,hidden,depth",
    [("DiT-XL/2", 512, 1024, 1152, 28), ("DiT-L/4", 256, 64, 1024, 24), ("DiT-B/8", 256, 16, 768, 12), ("S/2", 512, 1024, 384, 12)],
)
def test_official_configs(name, size, tokens, hidden, depth):
    cfg = dit_config(name, size)
    assert (cfg.num_patches, cfg.hidden_size, cfg.depth, cfg.input_size) == (tokens, hidden, depth, size // 8)
    assert cfg.null_class == 1000 and cfg.out_channels == 8


def test_diffusers_xl2_layout_maps_one_to_one_to_official():
    # Build diffusers' XL/2 on the meta device: its 28×(q,k,v,…) + per-block embedder tensors
    # must all be consumed and produce exactly the official key/shape set.
    with torch.device("meta"):
        ref = diffusers.DiTTransformer2DModel(
            num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28, sample_size=32, patch_size=2
        )
    mapped = official_from_diffusers(ref.state_dict())
    want = _official_xl2_256_keys()
    del want["pos_embed"]  # diffusers recomputes it (non-persistent buffer)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == want


def test_unequal_block_embedders_are_refused(tmp_path):
    tiny_diffusers_dit(same_embedders=False).save_pretrained(tmp_path / "t")
    with pytest.raises(GenevalError, match="differs from block 0"):
        load_dit(tmp_path / "t")


def test_official_pt_and_train_checkpoint(tmp_path):
    torch.manual_seed(0)
    net = DiT(TINY)
    ema = DiT(TINY)
    for p in list(net.parameters()) + list(ema.parameters()):
        torch.nn.init.normal_(p, std=0.05)
    torch.save(net.state_dict(), tmp_path / "plain.pt")
    opt = torch.optim.AdamW(net.parameters())
    torch.save(
        {"model": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "args": argparse.Namespace(model="DiT-XL/2", image_size=256)},
        tmp_path / "0001000.pt",
    )
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 600]), torch.tensor([5, 1000])
    with pytest.raises(GenevalError, match="not an official DiT width"):
        load_dit(tmp_path / "plain.pt")
    plain = load_dit(tmp_path / "plain.pt", num_heads=2)
    assert plain.format == "dit-official" and plain.config.time_freq_shift == 0.0 and plain.config.mlp_norm_eps == 1e-6
    train = load_dit(tmp_path / "0001000.pt", num_heads=2)
    assert train.format == "dit-train"
    with torch.no_grad():
        assert torch.equal(plain.net(x, t, y), net.eval()(x, t, y))
        assert torch.equal(train.net(x, t, y), ema.eval()(x, t, y))  # the EMA weights, not `model`
    assert len(plain.sha256) == 64


class _Marker:
    def __reduce__(self):
        return (print, ("should never run",))


def test_bad_files_are_one_line_errors(tmp_path):
    torch.save({"x_embedder.proj.weight": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(GenevalError, match="not an official-layout DiT"):
        load_dit(tmp_path / "bad.pt")
    torch.save({"x_embedder.proj.weight": torch.zeros(3, 4, 2, 2)}, tmp_path / "bad2.pt")
    with pytest.raises(GenevalError, match="is missing"):
        load_dit(tmp_path / "bad2.pt")
    torch.save({"ema": {"a": 1}, "evil": _Marker()}, tmp_path / "evil.pt")
    with pytest.raises(GenevalError, match="weights-only") as e:
        load_dit(tmp_path / "evil.pt")
    assert "\n" not in str(e.value)
    with pytest.raises(GenevalError, match="not found"):
        load_dit(tmp_path / "nope.pt")
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(GenevalError):
        load_dit(tmp_path / "x.pt")
    with pytest.raises(GenevalError, match="unknown DiT architecture"):
        dit_config("DiT-M/2")
