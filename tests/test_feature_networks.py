"""Feature networks of issue 14: registry, DINOv2 (timm) and CLIP (open_clip) loaders of the official
weight layouts, parity on random weights, preprocessing paths, offline weight errors.

What is compared (all on random weights, tiny widths/depths unless said):
- DINOv2: a random state dict in the OFFICIAL layout (key list written here from
  facebookresearch/dinov2 vision_transformer.py: cls_token, pos_embed, mask_token, patch_embed.proj,
  blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}, norm) →
  geneval's loader → final-norm CLS token, against (a) timm's own ``checkpoint_filter_fn`` load of
  the same dict at the native 37×37 grid, and (b) an official-forward oracle written here at 224 px
  (official pos-embed interpolation with the 0.1 offset). The full-size official code (git mirror)
  was also run once against this loader on random ViT-L/14 and ViT-B/14 weights: max abs diff 0.0.
- CLIP: a random state dict in OpenAI's layout (keys from openai/CLIP model.py) → geneval's loader →
  L2-normalised embedding, against open_clip's ``build_model_from_openai_state_dict`` +
  ``encode_image(normalize=True)`` on the same dict.
"""

from __future__ import annotations

import hashlib
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("timm")
pytest.importorskip("open_clip")

from geneval import weights as W  # noqa: E402
from geneval.errors import GenevalError, MissingWeightsError  # noqa: E402
from geneval.features import clip as C  # noqa: E402
from geneval.features import dinov2 as D  # noqa: E402
from geneval.features.bicubic import resize_bicubic  # noqa: E402
from geneval.features.networks import NETWORKS, get_network, network_for_feature, parse_features  # noqa: E402

TINY = {"embed_dim": 64, "depth": 2, "num_heads": 4}


# ---------------------------------------------------------------- official layouts, written from the sources


def official_dinov2_shapes(dim: int, depth: int, grid: int = 37, patch: int = 14) -> dict[str, tuple]:
    """facebookresearch/dinov2 DinoVisionTransformer (block_chunks=0, ffn 'mlp', no registers)."""
    s = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, grid * grid + 1, dim),
        "mask_token": (1, dim),
        "patch_embed.proj.weight": (dim, 3, patch, patch),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        s.update({
            b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
            b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
            b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
            b + "ls1.gamma": (dim,),
            b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
            b + "mlp.fc1.weight": (4 * dim, dim), b + "mlp.fc1.bias": (4 * dim,),
            b + "mlp.fc2.weight": (dim, 4 * dim), b + "mlp.fc2.bias": (dim,),
            b + "ls2.gamma": (dim,),
        })  # fmt: skip
    return s


def official_clip_visual_shapes(width: int, layers: int, embed: int, image: int = 336, patch: int = 14) -> dict:
    """openai/CLIP model.py VisionTransformer under the CLIP model's ``visual.`` prefix."""
    s = {
        "visual.class_embedding": (width,),
        "visual.positional_embedding": ((image // patch) ** 2 + 1, width),
        "visual.proj": (width, embed),
        "visual.conv1.weight": (width, 3, patch, patch),
        "visual.ln_pre.weight": (width,), "visual.ln_pre.bias": (width,),
        "visual.ln_post.weight": (width,), "visual.ln_post.bias": (width,),
    }  # fmt: skip
    for i in range(layers):
        b = f"visual.transformer.resblocks.{i}."
        s.update({
            b + "attn.in_proj_weight": (3 * width, width), b + "attn.in_proj_bias": (3 * width,),
            b + "attn.out_proj.weight": (width, width), b + "attn.out_proj.bias": (width,),
            b + "ln_1.weight": (width,), b + "ln_1.bias": (width,),
            b + "mlp.c_fc.weight": (4 * width, width), b + "mlp.c_fc.bias": (4 * width,),
            b + "mlp.c_proj.weight": (width, 4 * width), b + "mlp.c_proj.bias": (width,),
            b + "ln_2.weight": (width,), b + "ln_2.bias": (width,),
        })  # fmt: skip
    return s


def official_clip_text_shapes(width: int, layers: int, embed: int, vocab: int = 50, ctx: int = 77) -> dict:
    s = {
        "positional_embedding": (ctx, width), "text_projection": (width, embed), "logit_scale": (),
        "token_embedding.weight": (vocab, width), "ln_final.weight": (width,), "ln_final.bias": (width,),
    }  # fmt: skip
    for i in range(layers):
        b = f"transformer.resblocks.{i}."
        for k, v in official_clip_visual_shapes(width, 1, embed).items():
            if ".resblocks.0." in k:
                s[b + k.split(".resblocks.0.")[1]] = v
    return s


def _random_state(shapes: dict, seed: int, fp16_values: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        base = (
            1.0
            if k.endswith(
                ("norm1.weight", "norm2.weight", "norm.weight", "ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")
            )
            else 0.0
        )
        scale = 0.3 if k.endswith(("pos_embed", "positional_embedding", "class_embedding", "cls_token")) else 0.05
        t = base + scale * torch.randn(shape, generator=g)
        out[k] = t.half().float() if fp16_values else t
    return out


# ---------------------------------------------------------------- DINOv2


@pytest.mark.parametrize(("arch", "dim", "depth"), [("vitl14", 1024, 24), ("vitb14", 768, 12)])
def test_dinov2_full_size_layout_is_official(arch, dim, depth):
    with torch.device("meta"):
        vit = D.build_vit(arch)
    assert D.official_layout(vit) == official_dinov2_shapes(dim, depth)
    assert vit.patch_embed.grid_size == (16, 16) and vit.embed_dim == dim


def test_dinov2_loader_equals_timm_filter_at_native_grid(one_thread):
    """Native 518 px grid (no pos-embed interpolation): geneval's loader == timm's checkpoint_filter_fn."""
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    sd = _random_state(official_dinov2_shapes(64, 2), seed=0)
    mine = D.build_dinov2("vitl14", weights=sd, img_size=518, **TINY)
    ref = timm.create_model("vit_large_patch14_dinov2", pretrained=False, num_classes=0, img_size=518, **TINY).eval()
    ref.load_state_dict(checkpoint_filter_fn({k: v.clone() for k, v in sd.items()}, ref), strict=True)
    x = torch.randn(2, 3, 518, 518, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = mine.embed(x), ref(x)
    assert a.shape == (2, 64)
    assert (a - b).abs().max().item() <= 1e-5


def _official_forward(sd: dict, x: torch.Tensor, heads: int) -> torch.Tensor:
    """DinoVisionTransformer.forward (eval) from the official state dict, written from the official source."""
    b, _, h, w = x.shape
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=14).flatten(2).transpose(1, 2)
    t = torch.cat([sd["cls_token"].expand(b, -1, -1), t], dim=1)
    pos = sd["pos_embed"]
    m = int(math.sqrt(pos.shape[1] - 1))
    g = h // 14
    patch = F.interpolate(
        pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2), mode="bicubic", antialias=False, scale_factor=((g + 0.1) / m, (g + 0.1) / m)
    )
    t = t + torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, g * g, -1)], dim=1)
    dim = t.shape[-1]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        p = lambda n, i=i: sd[f"blocks.{i}.{n}"]  # noqa: E731
        y = F.layer_norm(t, (dim,), p("norm1.weight"), p("norm1.bias"), eps=1e-6)
        qkv = F.linear(y, p("attn.qkv.weight"), p("attn.qkv.bias")).reshape(b, -1, 3, heads, dim // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        att = ((q * (dim // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, -1, dim)
        t = t + p("ls1.gamma") * F.linear(y, p("attn.proj.weight"), p("attn.proj.bias"))
        y = F.layer_norm(t, (dim,), p("norm2.weight"), p("norm2.bias"), eps=1e-6)
        y = F.linear(F.gelu(F.linear(y, p("mlp.fc1.weight"), p("mlp.fc1.bias"))), p("mlp.fc2.weight"), p("mlp.fc2.bias"))
        t = t + p("ls2.gamma") * y
    return F.layer_norm(t, (dim,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)[:, 0]


def test_dinov2_equals_official_forward_at_224(one_thread):
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    sd = _random_state(official_dinov2_shapes(64, 2), seed=2)
    mine = D.build_dinov2("vitl14", weights=sd, **TINY)
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, want = mine.embed(x), _official_forward(sd, x, heads=4)
    assert (a - want).abs().max().item() <= 1e-5
    # timm's own filter resamples pos_embed differently (size=(16,16), antialias): not the official features
    ref = timm.create_model("vit_large_patch14_dinov2", pretrained=False, num_classes=0, img_size=224, **TINY).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.load_state_dict(checkpoint_filter_fn({k: v.clone() for k, v in sd.items()}, ref))
    with torch.no_grad():
        assert (ref(x) - want).abs().max().item() > 1e-3


def test_dinov2_loader_rejects_foreign_layouts():
    sd = _random_state(official_dinov2_shapes(64, 2), seed=4)
    vit = D.build_vit("vitl14", **TINY)
    with pytest.raises(GenevalError, match="missing \\['mask_token'\\]"):
        D.convert_official_state({k: v for k, v in sd.items() if k != "mask_token"}, vit)
    with pytest.raises(GenevalError, match="unexpected \\['blocks.2.ls1.gamma'\\]"):
        D.convert_official_state({**sd, "blocks.2.ls1.gamma": sd["blocks.0.ls1.gamma"]}, vit)
    with pytest.raises(GenevalError, match="registers"):
        D.convert_official_state({**sd, "register_tokens": torch.zeros(1, 4, 64)}, vit)
    with pytest.raises(GenevalError, match="shape"):
        D.convert_official_state({**sd, "norm.bias": torch.zeros(65)}, vit)


def test_dinov2_uint8_pipeline_frozen_and_from_file(tmp_path, one_thread):
    sd = _random_state(official_dinov2_shapes(64, 2), seed=5)
    path = tmp_path / "dinov2_vitl14_pretrain.pth"
    torch.save(sd, path)
    net = D.build_dinov2("vitl14", weights=path, resize="torch", **TINY)
    assert net.describe()["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not any(p.requires_grad for p in net.parameters())
    net.train()
    assert not net.training and not net.vit.training
    imgs = np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    fast = net(imgs)["dinov2_cls"]
    net.resize = "pil"
    exact = net(imgs)["dinov2_cls"]
    gray = net(imgs[..., 0])["dinov2_cls"]  # N×H×W grayscale repeated to RGB
    assert fast.shape == exact.shape == gray.shape == (2, 64) and fast.dtype == torch.float32
    assert 0 < (fast - exact).abs().max().item() < 0.05 * exact.abs().max().item()
    x = net.preprocess(imgs)
    assert x.shape == (2, 3, 224, 224)


# ---------------------------------------------------------------- CLIP


def test_clip_full_size_layout_is_openai():
    with torch.device("meta"):
        visual = C.build_visual()
    assert C.official_visual_layout(visual) == official_clip_visual_shapes(1024, 24, 768)


def _tiny_clip_state(seed: int) -> dict[str, torch.Tensor]:
    shapes = {**official_clip_visual_shapes(64, 2, 32), **official_clip_text_shapes(64, 1, 32)}
    return _random_state(shapes, seed, fp16_values=True)  # OpenAI's file holds fp16 values


def test_clip_equals_open_clip_openai_loader(one_thread):
    from open_clip.model import build_model_from_openai_state_dict

    sd = _tiny_clip_state(6)
    mine = C.build_clip(weights=sd, width=64, layers=2, embed_dim=32)
    ref = build_model_from_openai_state_dict({k: v.clone() for k, v in sd.items()}, quick_gelu=True).float().eval()
    x = torch.randn(2, 3, 336, 336, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        a, b = mine.embed(x), ref.encode_image(x, normalize=True)
    assert a.shape == (2, 32)
    assert (a - b).abs().max().item() <= 1e-5
    assert torch.allclose(a.norm(dim=-1), torch.ones(2), atol=1e-6)


class _Root(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _scripted_openai_file(sd: dict, path) -> None:
    """A TorchScript archive whose state dict has OpenAI's names (like ViT-L-14-336px.pt)."""
    root = _Root()
    for k, v in sd.items():
        *parents, leaf = k.split(".")
        mod = root
        for p in parents:
            if not hasattr(mod, p):
                mod.add_module(p, torch.nn.Module())
            mod = getattr(mod, p)
        mod.register_parameter(leaf, torch.nn.Parameter(v.half(), requires_grad=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(root), str(path))


def test_clip_reads_torchscript_archive_and_preprocesses(tmp_path, one_thread):
    sd = _tiny_clip_state(8)
    path = tmp_path / "ViT-L-14-336px.pt"
    _scripted_openai_file(sd, path)
    with pytest.raises(GenevalError, match="sha256"):  # the official name is pinned by the hash in its URL
        C.build_clip(weights=path, width=64, layers=2, embed_dim=32)
    loaded = C.load_openai_file(path)
    assert set(loaded) == set(sd) and loaded["visual.proj"].dtype == torch.float16
    net = C.build_clip(weights=loaded, width=64, layers=2, embed_dim=32)
    imgs = np.random.default_rng(1).integers(0, 256, (2, 30, 50, 3), dtype=np.uint8)  # non-square: centre crop
    out = net(imgs)["clip_embed"]
    assert out.shape == (2, 32) and torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-6)
    x = net.preprocess(imgs)
    assert x.shape == (2, 3, 336, 336)
    sq = net(np.ascontiguousarray(imgs[:, :, 10:40]))["clip_embed"]  # the same centre square given directly
    assert torch.allclose(out, sq, atol=1e-6)
    with pytest.raises(GenevalError, match="OpenAI-layout"):
        C.convert_openai_state({"foo": torch.zeros(1)}, net.visual)


# ---------------------------------------------------------------- weights offline, registry, resize


def test_offline_missing_weights_name_file_hash_source(tmp_path, monkeypatch):
    monkeypatch.setenv("GENEVAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(MissingWeightsError) as e:
        D.build_dinov2("vitl14")
    msg = str(e.value)
    assert "dinov2_vitl14_pretrain.pth" in msg and "unpinned" in msg and "\n" not in msg
    assert "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth" in msg
    assert str(tmp_path / "cache" / "dinov2_vitl14_pretrain.pth") in msg
    with pytest.raises(MissingWeightsError, match="dinov2_vitb14_pretrain.pth"):
        get_network("dinov2-b14").check()
    with pytest.raises(MissingWeightsError) as e:
        get_network("clip").check()
    assert "sha256 3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02" in str(e.value)
    assert "openaipublic.azureedge.net/clip/models/3035c92b" in str(e.value)
    with pytest.raises(GenevalError, match="offline"):
        W.fetch("dinov2-vitl14")


def test_unpinned_weights_recorded_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("GENEVAL_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    f = tmp_path / "dinov2_vitb14_pretrain.pth"
    f.write_bytes(b"first version")
    r = W.resolve_weight_file("dinov2-vitb14")
    assert r.path == f and not r.pinned and r.sha256 == hashlib.sha256(b"first version").hexdigest()
    assert (tmp_path / "dinov2_vitb14_pretrain.pth.sha256").read_text().strip() == r.sha256
    assert W.verify("dinov2-vitb14").status == "present"
    f.write_bytes(b"something else")  # a later change is caught against the recorded hash
    assert W.verify("dinov2-vitb14").status == "corrupt"
    with pytest.warns(UserWarning, match="does not match"), pytest.raises(MissingWeightsError):
        W.resolve_weight_file("dinov2-vitb14")


def test_registry():
    assert [n.name for n in parse_features("inception, dinov2,clip,dinov2")] == ["inception", "dinov2", "clip"]
    with pytest.raises(GenevalError, match="unknown feature network 'dino'"):
        parse_features("dino")
    assert network_for_feature("dinov2_cls").name == "dinov2" and network_for_feature("clip_embed").name == "clip"
    assert NETWORKS["dinov2"].features == {"dinov2_cls": 1024} and NETWORKS["clip"].features == {"clip_embed": 768}
    assert NETWORKS["dinov2-b14"].feature == "dinov2_b14_cls" and NETWORKS["inception"].feature == "pool3"
    for net in NETWORKS.values():
        assert all(w in W.WEIGHTS for w in net.weights)
        assert net.describe()["network"] == net.name


def test_resize_paths_close_and_identity():
    yy, xx = np.meshgrid(np.arange(64), np.arange(80), indexing="ij")
    smooth = 127.5 + 100 * np.sin(yy / 7.0)[None] * np.cos(xx / 5.0 + np.arange(3)[:, None, None])
    for img, bound in ((smooth, 1.0), (np.random.default_rng(2).integers(0, 256, (3, 64, 80)), 12.0)):
        x = torch.from_numpy(np.stack([img, img[:, ::-1]]).astype(np.uint8))
        a, b = resize_bicubic(x, 48, "pil"), resize_bicubic(x, 48, "torch")
        assert a.shape == b.shape == (2, 3, 48, 48) and torch.equal(a, a.round())  # PIL output is uint8
        # same a = −0.5 antialiased filter: within PIL's rounding on smooth images; PIL also clips its
        # uint8 intermediate (horizontal pass), which shows on pixel noise
        assert (a - b).abs().max().item() <= bound and (a - b).abs().mean().item() < 0.6
    same = x[:, :, :48, :48].contiguous()
    assert torch.equal(resize_bicubic(same, 48, "pil"), same.float())
    assert torch.allclose(resize_bicubic(same, 48, "torch"), same.float(), atol=1e-4)
    with pytest.raises(GenevalError, match="unknown resize"):
        resize_bicubic(x, 48, "bilinear")


@pytest.mark.slow  # converts and runs the full TF-Inception twice (~40 s on a loaded 2-core box)
def test_inception_entry_delegates_to_the_existing_extractor(one_thread):
    from geneval.features.extract import FeatureExtractor

    imgs = np.random.default_rng(4).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    net = get_network("inception").build(resize="tf")
    out = net(imgs)
    want = FeatureExtractor(mode="tf", device="cpu").extract(imgs)
    assert set(out) >= {"pool3", "spatial"} and out["pool3"].shape == (2, 2048)
    assert torch.allclose(out["pool3"], want["pool3"], atol=1e-5)
    assert net.describe()["weights_sha256"] == get_network("inception").check()["weights_sha256"]
