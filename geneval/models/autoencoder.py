"""The LDM / taming-transformers autoencoder trunk (Encoder, Decoder) and its frozen config.

Module and parameter names follow LDM's `ldm/modules/diffusionmodules/model.py` so that its
checkpoints (and Stable Diffusion's VAE) load with no renaming: `conv_in`,
`down.{i}.block.{j}.{norm1,conv1,norm2,conv2,nin_shortcut}`, `down.{i}.attn.{j}.{norm,q,k,v,proj_out}`,
`down.{i}.downsample.conv`, `mid.{block_1,attn_1,block_2}`, `norm_out`, `conv_out`; the
decoder's `up.{i}` levels hold `num_res_blocks + 1` blocks and `upsample.conv`.
The KL and VQ models built on this trunk live in autoencoder_kl.py and autoencoder_vq.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geneval.errors import GenevalError

KINDS = ("kl", "vq")
ATTN_TYPES = ("vanilla", "linear", "none")
# Every ddconfig key LDM's Encoder/Decoder read (ldm/modules/diffusionmodules/model.py). LDM
# silently ignores any other key (**ignore_kwargs); geneval refuses it instead.
DDCONFIG_KEYS = (
    "double_z",
    "z_channels",
    "resolution",
    "in_channels",
    "out_ch",
    "ch",
    "ch_mult",
    "num_res_blocks",
    "attn_resolutions",
    "dropout",
    "resamp_with_conv",
    "use_linear_attn",
    "attn_type",
    "tanh_out",
    "give_pre_end",
)


@dataclass(frozen=True)
class AEConfig:
    """Shape of an autoencoder: LDM's `ddconfig` plus embed_dim (and n_embed for VQ).

    Args:
        kind: ``kl`` (AutoencoderKL, diagonal Gaussian posterior) or ``vq`` (VQGAN quantizer).
        ch: base channel count.
        ch_mult: channel multiplier per resolution level; the image is downsampled
            2**(len(ch_mult)-1) times.
        num_res_blocks: residual blocks per encoder level (the decoder has one more).
        attn_resolutions: feature-map sizes (in pixels, relative to `resolution`) with attention.
        in_channels: image channels in; out_ch: image channels out.
        resolution: the nominal image size the attention placement refers to.
        z_channels: channels of the encoder output (x2 for KL's mean and log-variance).
        embed_dim: latent channels after quant_conv (what a diffusion model sees).
        n_embed: codebook size (VQ only).
        dropout: dropout in residual blocks (0 at inference).
        num_groups: GroupNorm groups (LDM uses 32).
        scale_factor: the latent scale an LDM uses with this autoencoder, when known.
        attn_type: LDM's attention blocks: ``vanilla`` (single-head softmax, residual),
            ``linear`` (LinAttnBlock: to_qkv/to_out, no norm, no residual) or ``none`` (identity).
        tanh_out: the decoder ends with tanh.
        resamp_with_conv: down/upsampling by strided/3x3 convolutions (False: 2x2 average
            pooling and plain nearest upsampling, with no weights).
    """

    kind: str = "kl"
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    in_channels: int = 3
    out_ch: int = 3
    resolution: int = 256
    z_channels: int = 4
    embed_dim: int = 4
    n_embed: int | None = None
    dropout: float = 0.0
    num_groups: int = 32
    scale_factor: float | None = None
    attn_type: str = "vanilla"
    tanh_out: bool = False
    resamp_with_conv: bool = True

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        if self.kind not in KINDS:
            raise GenevalError(f"unknown autoencoder kind {self.kind!r}: use kl or vq")
        if self.attn_type not in ATTN_TYPES:
            raise GenevalError(f"unknown autoencoder attn_type {self.attn_type!r}; known: {', '.join(ATTN_TYPES)}")
        for name in ("tanh_out", "resamp_with_conv"):
            if not isinstance(getattr(self, name), bool):
                raise GenevalError(f"autoencoder {name} must be true or false, got {getattr(self, name)!r}")
        if not self.ch_mult or self.ch < 1 or self.num_res_blocks < 1 or self.z_channels < 1 or self.embed_dim < 1:
            raise GenevalError(f"invalid autoencoder config: {self}")
        if self.kind == "vq" and not self.n_embed:
            raise GenevalError("a VQ autoencoder config needs n_embed (codebook size)")
        widths = {self.ch * m for m in (1, *self.ch_mult)}
        bad = sorted(w for w in widths if w % self.num_groups)
        if bad:
            raise GenevalError(f"GroupNorm with {self.num_groups} groups cannot normalise {bad} channels")

    @property
    def downsample_factor(self) -> int:
        """Image pixels per latent pixel along each side."""
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        d["attn_resolutions"] = list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AEConfig:
        """Build from a JSON/YAML mapping; unknown keys are an error (they would be silently ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise GenevalError(f"unknown autoencoder config key(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_ddconfig(
        cls, ddconfig: dict[str, Any], embed_dim: int, kind: str = "kl", n_embed: int | None = None, scale_factor: float | None = None
    ) -> AEConfig:
        """Translate LDM's `ddconfig` (as in its YAML files) into an AEConfig; an unknown key is an error.

        Args:
            ddconfig: mapping with ch, ch_mult, num_res_blocks, z_channels and optionally
                attn_resolutions, in_channels, out_ch, resolution, double_z (KL: true), dropout,
                attn_type, use_linear_attn, tanh_out, resamp_with_conv, give_pre_end (false only).
            embed_dim: the model's embed_dim.
            kind: ``kl`` or ``vq``.
            n_embed: VQ codebook size.
            scale_factor: LDM's latent scale factor, when known.
        """
        if not isinstance(ddconfig, dict):
            raise GenevalError(f"ddconfig must be a mapping, got {type(ddconfig).__name__}")
        unknown = sorted(str(k) for k in ddconfig if k not in DDCONFIG_KEYS)
        if unknown:
            raise GenevalError(f"unknown ddconfig key(s) {unknown}: geneval would ignore them and decode wrongly; known: {', '.join(DDCONFIG_KEYS)}")
        need = ("ch", "ch_mult", "num_res_blocks", "z_channels")
        missing = [k for k in need if k not in ddconfig]
        if missing:
            raise GenevalError(f"ddconfig lacks {missing}")
        double_z = bool(ddconfig.get("double_z", kind == "kl"))
        if double_z != (kind == "kl"):
            raise GenevalError(f"ddconfig double_z={double_z} does not fit a {kind} autoencoder")
        if ddconfig.get("give_pre_end", False):
            raise GenevalError("ddconfig give_pre_end: true makes the decoder return features, not images; unsupported")
        # LDM: use_linear_attn=True overrides attn_type (Encoder/Decoder.__init__).
        attn_type = "linear" if ddconfig.get("use_linear_attn", False) else ddconfig.get("attn_type", "vanilla")
        return cls(
            kind=kind,
            ch=int(ddconfig["ch"]),
            ch_mult=tuple(ddconfig["ch_mult"]),
            num_res_blocks=int(ddconfig["num_res_blocks"]),
            attn_resolutions=tuple(ddconfig.get("attn_resolutions", ()) or ()),
            in_channels=int(ddconfig.get("in_channels", 3)),
            out_ch=int(ddconfig.get("out_ch", 3)),
            resolution=int(ddconfig.get("resolution", 256)),
            z_channels=int(ddconfig["z_channels"]),
            embed_dim=int(embed_dim),
            n_embed=None if n_embed is None else int(n_embed),
            dropout=float(ddconfig.get("dropout", 0.0)),
            scale_factor=scale_factor,
            attn_type=str(attn_type),
            tanh_out=_flag(ddconfig, "tanh_out", False),
            resamp_with_conv=_flag(ddconfig, "resamp_with_conv", True),
        )


def _flag(d: dict[str, Any], key: str, default: bool) -> bool:
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise GenevalError(f"ddconfig {key} must be true or false, got {v!r}")
    return v


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    # LDM's Normalize: GroupNorm(32, eps=1e-6, affine=True).
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm → swish → conv, twice, plus a (1x1 when widths differ) shortcut; no time embedding."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1 q/k/v/proj_out convolutions (scale c^-1/2)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q, k, v = (m(h).reshape(b, 1, c, hh * ww).transpose(2, 3) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / √c) v, as LDM's bmm form
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, hh, ww))


class LinAttnBlock(nn.Module):
    """LDM's LinAttnBlock (LinearAttention, 1 head of width C): softmax over positions of k,
    context = k vᵀ, out = to_out(contextᵀ q). As in LDM it has no norm and no residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.to_qkv = nn.Conv2d(channels, channels * 3, 1, bias=False)
        self.to_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        q, k, v = self.to_qkv(x).reshape(b, 3, c, hh * ww).unbind(1)
        k = k.softmax(dim=-1)
        context = torch.bmm(k, v.transpose(1, 2))  # (b, c_k, c_v)
        out = torch.bmm(context.transpose(1, 2), q)  # (b, c_v, hw)
        return self.to_out(out.reshape(b, c, hh, ww))


def make_attn(channels: int, cfg: AEConfig) -> nn.Module:
    """LDM's make_attn: the block for cfg.attn_type (``none`` is an identity with no weights)."""
    if cfg.attn_type == "vanilla":
        return AttnBlock(channels, cfg.num_groups)
    if cfg.attn_type == "linear":
        return LinAttnBlock(channels)
    return nn.Identity()


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding right/bottom by one (LDM's asymmetric padding), or 2x2 average pooling."""

    def __init__(self, channels: int, with_conv: bool = True):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "conv"):
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv when `with_conv`."""

    def __init__(self, channels: int, with_conv: bool = True):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class Encoder(nn.Module):
    """Image → z (2·z_channels for KL: mean and log-variance; z_channels for VQ)."""

    def __init__(self, cfg: AEConfig):
        super().__init__()
        g = cfg.num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, 1, 1)
        in_mult = (1, *cfg.ch_mult)
        res = cfg.resolution
        self.down = nn.ModuleList()
        block_in = cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            block_in = cfg.ch * in_mult[i]
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(block_in, cfg.ch * mult, cfg.dropout, g))
                block_in = cfg.ch * mult
                if res in cfg.attn_resolutions:
                    level.attn.append(make_attn(block_in, cfg))
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(block_in, cfg.resamp_with_conv)
                res //= 2
            self.down.append(level)
        self.mid = _mid(block_in, cfg)
        self.norm_out = _norm(block_in, g)
        z_out = 2 * cfg.z_channels if cfg.kind == "kl" else cfg.z_channels
        self.conv_out = nn.Conv2d(block_in, z_out, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = _run_mid(self.mid, h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """z (z_channels) → image (out_ch), mirroring the encoder with one extra block per level."""

    def __init__(self, cfg: AEConfig):
        super().__init__()
        g = cfg.num_groups
        n_levels = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (n_levels - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, 1, 1)
        self.mid = _mid(block_in, cfg)
        levels: list[nn.Module] = []
        for i in reversed(range(n_levels)):
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, cfg.ch * cfg.ch_mult[i], cfg.dropout, g))
                block_in = cfg.ch * cfg.ch_mult[i]
                if res in cfg.attn_resolutions:
                    level.attn.append(make_attn(block_in, cfg))
            if i != 0:
                level.upsample = Upsample(block_in, cfg.resamp_with_conv)
                res *= 2
            levels.insert(0, level)  # keep LDM's indexing: up.0 is the full-resolution level
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, 1, 1)
        self.tanh_out = cfg.tanh_out

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_mid(self.mid, self.conv_in(z))
        for level in reversed(self.up):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        h = self.conv_out(F.silu(self.norm_out(h)))
        return torch.tanh(h) if self.tanh_out else h


def _mid(channels: int, cfg: AEConfig) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, cfg.dropout, cfg.num_groups)
    mid.attn_1 = make_attn(channels, cfg)
    mid.block_2 = ResnetBlock(channels, channels, cfg.dropout, cfg.num_groups)
    return mid


def _run_mid(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


def build_autoencoder(cfg: AEConfig) -> nn.Module:
    """An untrained (randomly initialised) AutoencoderKL or VQAutoencoder for `cfg`."""
    if cfg.kind == "kl":
        from geneval.models.autoencoder_kl import AutoencoderKL

        return AutoencoderKL(cfg)
    from geneval.models.autoencoder_vq import VQAutoencoder

    return VQAutoencoder(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
