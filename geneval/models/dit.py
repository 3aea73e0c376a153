"""DiT (Peebles & Xie 2023): a patchified latent transformer with adaLN-Zero, in the OFFICIAL key layout.

Parameter names follow facebookresearch/DiT `models.py`, so the released `DiT-XL-2-256x256.pt`
loads with no renaming: `x_embedder.proj`, `pos_embed` (fixed 2-D sin-cos, saved in the state
dict), `t_embedder.mlp.{0,2}`, `y_embedder.embedding_table` (num_classes + 1 rows; the last is the
CFG null class), `blocks.N.{attn.qkv, attn.proj, mlp.fc1, mlp.fc2, adaLN_modulation.1}`,
`final_layer.{linear, adaLN_modulation.1}` (the LayerNorms carry no parameters).

Two numerical details differ between the official code and diffusers' DiTTransformer2DModel and
are configuration here, recorded with the model:
- timestep frequencies: official exp(−ln(10⁴)·i/half) (`time_freq_shift=0`); diffusers divides by
  half − 1 (`downscale_freq_shift=1`). Both emit [cos | sin].
- the LayerNorm before the MLP: official eps 1e-6; diffusers uses its `norm_eps` (default 1e-5).

Loading (`load_dit`): an official `.pt` (plain state dict; or train.py's {model, ema, opt, args},
whose `ema` is used), an official-layout `.safetensors`, or a diffusers DiTTransformer2DModel
folder (or a DiTPipeline folder with `transformer/`), whose keys are MAPPED to this layout so one
network serves both (diffusers' per-block copies of the timestep/label embedders must be equal, as
in every converted checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geneval.errors import GenevalError
from geneval.models.native import short_list, write_config, write_weights

# name → (depth, hidden_size, num_heads), from the official models.py.
DIT_ARCHS: dict[str, tuple[int, int, int]] = {"XL": (28, 1152, 16), "L": (24, 1024, 16), "B": (12, 768, 12), "S": (12, 384, 6)}
PATCH_SIZES = (2, 4, 8)
# The official DiT checkpoints: latents of the SD VAE (f8), scaled by 0.18215.
DIT_LATENT_SCALE = 0.18215
DIT_VAE_DOWNSAMPLE = 8


@dataclass(frozen=True)
class DiTConfig:
    """Shape of a DiT.

    Args:
        input_size: latent side length (image_size / 8 for the official models).
        patch_size: patch side (2, 4, 8).
        in_channels: latent channels.
        hidden_size, depth, num_heads, mlp_ratio: transformer width, blocks, heads, MLP expansion.
        num_classes: real classes; the embedding table has one more row (the null class) when
            class_dropout_prob > 0.
        class_dropout_prob: label dropout used in training (only decides whether a null row exists).
        learn_sigma: 2C output channels (ε and the learned-range variance values).
        time_freq_shift: 0 = official timestep frequencies (/half); 1 = diffusers' (/(half − 1)).
        mlp_norm_eps: eps of the LayerNorm before the MLP (official 1e-6; diffusers' norm_eps).
        frequency_embedding_size: width of the sinusoidal timestep features.
        name: the official config name ("DiT-XL/2") when known.
    """

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    class_dropout_prob: float = 0.1
    learn_sigma: bool = True
    time_freq_shift: float = 0.0
    mlp_norm_eps: float = 1e-6
    frequency_embedding_size: int = 256
    name: str | None = None

    def __post_init__(self) -> None:
        if self.input_size % self.patch_size:
            raise GenevalError(f"DiT input size {self.input_size} is not a multiple of patch size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise GenevalError(f"DiT hidden size {self.hidden_size} is not divisible by {self.num_heads} heads")
        if self.hidden_size % 4:
            raise GenevalError(f"DiT hidden size {self.hidden_size} must be a multiple of 4 (2-D sin-cos position embedding)")

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def num_patches(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    @property
    def null_class(self) -> int | None:
        """Label index of the unconditional embedding (num_classes), or None without one."""
        return self.num_classes if self.class_dropout_prob > 0 else None

    @property
    def image_size(self) -> int:
        """The side of the network's input (latent) — named so generic code can read it."""
        return self.input_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DiTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise GenevalError(f"unknown DiT config keys: {', '.join(unknown)}")
        return cls(**d)


def dit_config(name: str, image_size: int = 256, **overrides: Any) -> DiTConfig:
    """The official config for "DiT-XL/2" (also "XL/2", "DiT-XL-2") at image_size 256 or 512.

    Args:
        name: architecture and patch size: XL, L, B, S with /2, /4, /8.
        image_size: pixels; the latent side is image_size // 8 (the SD VAE is f8).
        overrides: other DiTConfig fields (num_classes, learn_sigma, ...).
    """
    m = re.fullmatch(r"(?:DiT-)?(XL|L|B|S)[/-](\d+)", name.strip())
    if not m or m.group(1) not in DIT_ARCHS or int(m.group(2)) not in PATCH_SIZES:
        known = ", ".join(f"DiT-{a}/{p}" for a in DIT_ARCHS for p in PATCH_SIZES)
        raise GenevalError(f"unknown DiT architecture {name!r}; known: {known}")
    if image_size % DIT_VAE_DOWNSAMPLE:
        raise GenevalError(f"DiT image size must be a multiple of {DIT_VAE_DOWNSAMPLE}, got {image_size}")
    depth, hidden, heads = DIT_ARCHS[m.group(1)]
    kw: dict[str, Any] = dict(
        input_size=image_size // DIT_VAE_DOWNSAMPLE,
        patch_size=int(m.group(2)),
        depth=depth,
        hidden_size=hidden,
        num_heads=heads,
        name=f"DiT-{m.group(1)}/{m.group(2)}",
    )
    kw.update(overrides)
    return DiTConfig(**kw)


# ---------------------------------------------------------------- embeddings


def timestep_embedding(t: torch.Tensor, dim: int, freq_shift: float = 0.0, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features [cos | sin] of (possibly fractional) timesteps t (N,) → (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift))
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def sincos_pos_embed_2d(dim: int, grid: int) -> np.ndarray:
    """MAE's fixed 2-D sin-cos position embedding (grid², dim) in float64: first half encodes the
    column (w) coordinate, second half the row; each half is [sin | cos] with ω_i = 10000^(−i/(dim/4))."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    ww, hh = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))

    def one(pos: np.ndarray) -> np.ndarray:
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one(ww), one(hh)], axis=1)


class PatchEmbed(nn.Module):
    """timm's PatchEmbed as DiT uses it: a p×p stride-p conv, flattened to (N, T, D)."""

    def __init__(self, patch: int, in_channels: int, hidden: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden, kernel_size=patch, stride=patch, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """t → MLP(sinusoid(t)) (official `t_embedder`)."""

    def __init__(self, hidden: int, freq_dim: int, freq_shift: float):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.freq_dim, self.freq_shift = freq_dim, freq_shift

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim, self.freq_shift).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class label → vector; row num_classes is the null class (label dropout happens in training code)."""

    def __init__(self, rows: int, hidden: int):
        super().__init__()
        self.embedding_table = nn.Embedding(rows, hidden)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class Attention(nn.Module):
    """timm Attention (fused qkv with bias, scaled dot product, output projection)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, T, D))


class Mlp(nn.Module):
    """fc1 → GELU(tanh) → fc2 (timm Mlp with DiT's approximate GELU)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class DiTBlock(nn.Module):
    """Attention + MLP, each behind adaLN-Zero modulation (shift, scale, gate) from the conditioning c."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        D = cfg.hidden_size
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(D, cfg.num_heads)
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=cfg.mlp_norm_eps)
        self.mlp = Mlp(D, int(D * cfg.mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_a.unsqueeze(1) * self.attn(_modulate(self.norm1(x), shift_a, scale_a))
        return x + gate_m.unsqueeze(1) * self.mlp(_modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) → linear to p²·C_out per token."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        D = cfg.hidden_size
        self.norm_final = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(D, cfg.patch_size**2 * cfg.out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """The DiT network: forward(x (N, C, H, W), t (N,), y (N,)) → (N, C_out, H, W).

    Args:
        cfg: the DiTConfig.
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.config = cfg
        D = cfg.hidden_size
        self.x_embedder = PatchEmbed(cfg.patch_size, cfg.in_channels, D)
        self.t_embedder = TimestepEmbedder(D, cfg.frequency_embedding_size, cfg.time_freq_shift)
        self.y_embedder = LabelEmbedder(cfg.num_classes + (1 if cfg.class_dropout_prob > 0 else 0), D)
        # A buffer (not a Parameter) so it can never be trained; persistent so the state dict
        # holds `pos_embed` exactly as the official checkpoints do.
        pe = torch.from_numpy(sincos_pos_embed_2d(D, cfg.input_size // cfg.patch_size)).float().unsqueeze(0)
        self.register_buffer("pos_embed", pe, persistent=True)
        self.blocks = nn.ModuleList([DiTBlock(cfg) for _ in range(cfg.depth)])
        self.final_layer = FinalLayer(cfg)

    def initialize_weights(self) -> None:
        """The official initialisation (xavier linears, zeroed adaLN and output) — for training."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for lin in [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, p²·C) → (N, C, H, W) with the official (h, w, p, q, c) token layout."""
        c, p = self.config.out_channels, self.config.patch_size
        h = w = int(round(x.shape[1] ** 0.5))
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None:
            if self.config.null_class is None:
                raise GenevalError("this DiT has no null class: class labels are required")
            y = torch.full((x.shape[0],), self.config.null_class, dtype=torch.long, device=x.device)
        h = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final_layer(h, c))


def count_parameters(net: nn.Module) -> int:
    """Trainable-size parameter count (buffers excluded)."""
    return sum(p.numel() for p in net.parameters())


# ---------------------------------------------------------------- diffusers ↔ official key mapping

_DIFFUSERS_BLOCK = {
    "norm1.linear": "adaLN_modulation.1",
    "attn1.to_out.0": "attn.proj",
    "ff.net.0.proj": "mlp.fc1",
    "ff.net.2": "mlp.fc2",
}
_DIFFUSERS_TOP = {
    "pos_embed.proj": "x_embedder.proj",
    "proj_out_1": "final_layer.adaLN_modulation.1",
    "proj_out_2": "final_layer.linear",
}
_DIFFUSERS_EMB = {
    "norm1.emb.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "norm1.emb.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "norm1.emb.class_embedder.embedding_table": "y_embedder.embedding_table",
}


def official_from_diffusers(sd: dict[str, torch.Tensor], where: str = "diffusers DiT") -> dict[str, torch.Tensor]:
    """Rename a DiTTransformer2DModel state dict to the official layout (every tensor used once).

    q/k/v are concatenated into qkv; the per-block copies of the timestep and label embedders must
    be identical (diffusers' conversion copies the official single embedder into every block).
    Raises GenevalError for leftover or inconsistent tensors.
    """
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(k: str) -> torch.Tensor:
        if k not in sd:
            raise GenevalError(f"{where}: tensor {k} is missing (not a DiTTransformer2DModel state dict?)")
        used.add(k)
        return sd[k]

    for src, dst in _DIFFUSERS_TOP.items():
        for s in ("weight", "bias"):
            out[f"{dst}.{s}"] = take(f"{src}.{s}")
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"transformer_blocks\.(\d+)\.", k))})
    if blocks != list(range(len(blocks))) or not blocks:
        raise GenevalError(f"{where}: transformer_blocks are missing or not numbered 0..N-1")
    for n in blocks:
        pre = f"transformer_blocks.{n}."
        for src, dst in _DIFFUSERS_BLOCK.items():
            for s in ("weight", "bias"):
                out[f"blocks.{n}.{dst}.{s}"] = take(f"{pre}{src}.{s}")
        for s in ("weight", "bias"):
            out[f"blocks.{n}.attn.qkv.{s}"] = torch.cat([take(f"{pre}attn1.to_{q}.{s}") for q in "qkv"])
        for src, dst in _DIFFUSERS_EMB.items():
            for s in ("weight", "bias") if "embedding_table" not in src else ("weight",):
                v = take(f"{pre}{src}.{s}")
                key = f"{dst}.{s}"
                if key not in out:
                    out[key] = v
                elif not (v.is_meta or torch.equal(out[key], v)):  # meta: shape-only mapping checks
                    raise GenevalError(
                        f"{where}: block {n}'s {src} differs from block 0's; geneval's DiT (official layout) has one "
                        f"timestep/label embedder, so per-block embedders cannot be represented"
                    )
    left = sorted(set(sd) - used)
    if left:
        raise GenevalError(f"{where}: {len(left)} tensors not understood: {', '.join(left[:5])}")
    return out


# ---------------------------------------------------------------- loading


def _infer_config(sd: dict[str, torch.Tensor], where: str, name: str | None = None, num_heads: int | None = None, **extra: Any) -> DiTConfig:
    """A DiTConfig read off official-layout tensor shapes (heads from the official table or `num_heads`)."""
    try:
        w = sd["x_embedder.proj.weight"]
        hidden, in_ch, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
        out_dim = int(sd["final_layer.linear.weight"].shape[0])
        rows = int(sd["y_embedder.embedding_table.weight"].shape[0])
        mlp_hidden = int(sd["blocks.0.mlp.fc1.weight"].shape[0])
    except KeyError as e:
        raise GenevalError(f"{where} is not an official-layout DiT state dict: tensor {e} is missing") from None
    except IndexError:
        raise GenevalError(f"{where} is not an official-layout DiT state dict: x_embedder/final_layer tensors have the wrong rank") from None
    depth = len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    if "pos_embed" in sd:
        grid = int(round(sd["pos_embed"].shape[1] ** 0.5))
    elif "input_size" in extra:
        grid = int(extra["input_size"]) // patch
    else:
        raise GenevalError(f"{where}: no pos_embed tensor and no input size given")
    if out_dim % (patch * patch):
        raise GenevalError(f"{where}: final_layer.linear has {out_dim} outputs, not a multiple of {patch}²")
    out_ch = out_dim // (patch * patch)
    if out_ch not in (in_ch, 2 * in_ch):
        raise GenevalError(f"{where}: {out_ch} output channels for {in_ch} input channels (expected C or 2C)")
    heads = num_heads
    if heads is None:
        match = [a for a, (d, h, _) in DIT_ARCHS.items() if h == hidden]
        if not match:
            raise GenevalError(f"{where}: hidden size {hidden} is not an official DiT width; give the number of attention heads")
        heads = DIT_ARCHS[match[0]][2]
    arch = next((a for a, (d, h, _) in DIT_ARCHS.items() if (d, h) == (depth, hidden)), None)
    guessed = f"DiT-{arch}/{patch}" if arch and patch in PATCH_SIZES else None
    if name is not None:
        want = dit_config(name, grid * patch * DIT_VAE_DOWNSAMPLE)
        if (want.depth, want.hidden_size, want.patch_size) != (depth, hidden, patch):
            raise GenevalError(f"{where} holds a {guessed or f'depth-{depth} width-{hidden} patch-{patch}'} DiT, not {want.name}")
    kw = dict(
        input_size=grid * patch,
        patch_size=patch,
        in_channels=in_ch,
        hidden_size=hidden,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp_hidden / hidden,
        num_classes=rows - 1,
        class_dropout_prob=0.1,
        learn_sigma=out_ch == 2 * in_ch,
        name=guessed,
    )
    kw.update({k: v for k, v in extra.items() if k != "input_size"})
    return DiTConfig(**kw)


def check_state_dict(net: nn.Module, sd: dict[str, torch.Tensor], where: str) -> None:
    """Raise one GenevalError listing missing, unexpected and mis-shaped tensors (strict loading)."""
    own = net.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    reshaped = [f"{k} {tuple(sd[k].shape)}≠{tuple(own[k].shape)}" for k in sorted(set(own) & set(sd)) if sd[k].shape != own[k].shape]
    if missing or unexpected or reshaped:
        raise GenevalError(
            f"{where} does not fit the DiT: missing [{short_list(missing)}]; unexpected [{short_list(unexpected)}]; other shapes [{short_list(reshaped, 2)}]"
        )


def _torch_load(path: Path) -> Any:
    """weights_only load; train.py checkpoints pickle their argparse.Namespace, allowed as plain data."""
    import argparse

    from geneval.models.safe_load import torch_load

    return torch_load(path, allow=[argparse.Namespace])


def _read_tensors(path: Path) -> dict[str, Any]:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors has its own error types
            raise GenevalError(f"cannot read {path} as safetensors: {' '.join(str(e).split())[:200]}") from None
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise GenevalError(f"{path} holds a {type(obj).__name__}, not a DiT state dict")
    return obj


@dataclass
class LoadedDiT:
    """A DiT ready for sampling plus its provenance.

    Args:
        net: eval-mode DiT.
        config: its DiTConfig.
        format: "dit-official" (.pt / .safetensors state dict), "dit-train" (train.py's ema) or "diffusers".
        path: file or folder read.
        sha256: hash of the weights file.
        info: extra provenance (native training record, diffusers config).
    """

    net: DiT
    config: DiTConfig
    format: str
    path: str
    sha256: str
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """Provenance record (file, sha256, format, architecture incl. the timestep/eps conventions)."""
        return {
            "source": self.path,
            "format": self.format,
            "weights_sha256": self.sha256,
            "arch": self.config.name,
            "config": self.config.to_dict(),
            **({"info": self.info} if self.info else {}),
        }


def _diffusers_folder(path: Path) -> Path | None:
    for folder in (path, path / "transformer"):
        cfg = folder / "config.json"
        if cfg.is_file():
            try:
                doc = json.loads(cfg.read_text(encoding="utf-8"))
            except ValueError:
                continue
            if isinstance(doc, dict) and doc.get("_class_name") == "DiTTransformer2DModel":
                return folder
    return None


def _load_diffusers(folder: Path, name: str | None) -> tuple[dict[str, torch.Tensor], DiTConfig, Path, dict[str, Any]]:
    doc = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    weights = next((folder / n for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin") if (folder / n).is_file()), None)
    if weights is None:
        raise GenevalError(f"{folder}: diffusers DiT folder without diffusion_pytorch_model.safetensors or .bin")
    if doc.get("norm_type", "ada_norm_zero") != "ada_norm_zero" or doc.get("activation_fn", "gelu-approximate") != "gelu-approximate":
        raise GenevalError(f"{folder}: only ada_norm_zero DiTs with gelu-approximate are supported")
    sd = official_from_diffusers(_read_tensors(weights), str(weights))
    heads = int(doc.get("num_attention_heads", 16))
    cfg = _infer_config(
        sd,
        str(weights),
        name,
        num_heads=heads,
        input_size=int(doc.get("sample_size", 32)),
        time_freq_shift=1.0,
        mlp_norm_eps=float(doc.get("norm_eps", 1e-5)),
    )
    if cfg.num_heads * int(doc.get("attention_head_dim", cfg.hidden_size // heads)) != cfg.hidden_size:
        raise GenevalError(f"{folder}: heads × head dim in config.json does not match the tensors' width {cfg.hidden_size}")
    grid = cfg.input_size // cfg.patch_size
    sd["pos_embed"] = torch.from_numpy(sincos_pos_embed_2d(cfg.hidden_size, grid)).float().unsqueeze(0)  # not stored by diffusers
    return sd, cfg, weights, {"diffusers_config": {k: v for k, v in doc.items() if not k.startswith("_")}}


def load_dit(
    path: str | os.PathLike,
    arch: str | None = None,
    device: torch.device | str | None = "cpu",
    dtype: torch.dtype = torch.float32,
    num_heads: int | None = None,
) -> LoadedDiT:
    """Load a DiT from an official .pt / .safetensors state dict, a train.py checkpoint, a native
    folder (config.json + model.safetensors, as the demo ships) or a diffusers folder.

    Args:
        path: the file or folder (CLI: --model).
        arch: optional official name ("DiT-XL/2") checked against the tensors (CLI: --arch).
        device: where to put it.
        dtype: parameter dtype (float32; float16/bfloat16 for GPUs).
        num_heads: attention heads of a state dict whose width is not an official one (the
            tensors do not show it).
    Raises:
        GenevalError: missing file, unreadable file, or tensors that do not form a DiT.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise GenevalError(f"DiT checkpoint not found: {p}")
    info: dict[str, Any] = {}
    if p.is_dir():
        native = p / "config.json"
        folder = _diffusers_folder(p)
        if folder is not None:
            sd, cfg, weights, info = _load_diffusers(folder, arch)
            fmt = "diffusers"
        elif native.is_file() and (p / "model.safetensors").is_file():
            doc = json.loads(native.read_text(encoding="utf-8"))
            if doc.get("format") != NATIVE_FORMAT:
                raise GenevalError(f"{native}: not a geneval DiT folder (format {doc.get('format')!r})")
            weights = p / "model.safetensors"
            sd = _read_tensors(weights)
            cfg = DiTConfig.from_dict(doc["config"])
            info = {k: v for k, v in doc.items() if k not in ("config", "format")}
            fmt = "native"
        else:
            raise GenevalError(
                f"{p}: a folder, but neither a diffusers DiTTransformer2DModel (config.json with "
                f"_class_name DiTTransformer2DModel, or transformer/) nor a geneval DiT folder"
            )
    else:
        weights = p
        raw = _read_tensors(p)
        fmt = "dit-official"
        if "ema" in raw and isinstance(raw["ema"], dict):  # train.py's {model, ema, opt, args}: sample with the EMA
            raw, fmt = raw["ema"], "dit-train"
        sd = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
        if len(sd) != len(raw):
            raise GenevalError(f"{p}: holds non-tensor entries ({short_list(sorted(k for k in raw if k not in sd))}); not a DiT state dict")
        cfg = _infer_config(sd, str(p), arch, num_heads=num_heads)
    with torch.device("meta"):
        net = DiT(cfg)
    check_state_dict(net, sd, str(weights))
    net.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True, assign=True)
    net = net.to(device or "cpu").eval().requires_grad_(False)
    from geneval.models.formats import file_sha256

    return LoadedDiT(net, cfg, fmt, str(p), file_sha256(weights), info)


NATIVE_FORMAT = "geneval-dit"


def save_native_dit(net: DiT, out: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write a DiT as a folder: model.safetensors (official key names) + config.json (config and `extra`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_weights(out, {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()})
    write_config(out, {"format": NATIVE_FORMAT, "config": net.config.to_dict(), **(extra or {})})
    os.chmod(out / "model.safetensors", 0o644)
    return out
