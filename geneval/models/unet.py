"""geneval's ADM / IDDPM UNet, state-dict compatible with guided-diffusion and improved-diffusion.

The module tree mirrors openai/guided-diffusion `UNetModel` (which is a superset of
improved-diffusion's), so their `.pt` files load with `load_state_dict(strict=True)`:
time_embed.{0,2}, label_emb, input_blocks.N.M..., middle_block.{0,1,2}, output_blocks.N.M...,
out.{0,2}. Class-conditional models for classifier-free guidance reserve one extra "null" class:
build them with `num_classes = K + 1` and `null_class = K` (the native format records both).

Super-resolution models (guided-diffusion's `SuperResModel`, config `low_res_size` set) take a
`low_res` image in [-1, 1] (ADM: uint8/127.5 − 1), upsample it bilinearly (align_corners False,
no antialias) to the model resolution and concatenate it after x_t, so `input_blocks.0.0` has
2·in_channels inputs. The low-res image is never noised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from geneval.errors import GenevalError
from geneval.models.nn import (
    AttentionBlock,
    Downsample,
    JSONConfig,
    ResBlock,
    TimestepEmbedSequential,
    Upsample,
    normalization,
    timestep_embedding,
    zero_module,
)


def default_channel_mult(image_size: int) -> tuple[float, ...]:
    """guided-diffusion's channel multipliers for a given resolution (IDDPM's for 32 px)."""
    table = {
        512: (0.5, 1, 1, 2, 2, 4, 4),
        256: (1, 1, 2, 2, 4, 4),
        128: (1, 1, 2, 3, 4),
        64: (1, 2, 3, 4),
        32: (1, 2, 2, 2),
    }
    if image_size not in table:
        raise ValueError(f"no default channel_mult for image size {image_size}; pass channel_mult")
    return table[image_size]


def default_super_res_channel_mult(large_size: int) -> tuple[float, ...]:
    """guided-diffusion's sr_create_model multipliers (512 uses the 256 table, not the 0.5 one)."""
    table = {512: (1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}
    if large_size not in table:
        raise ValueError(f"no default super-resolution channel_mult for large size {large_size}; pass channel_mult")
    return table[large_size]


@dataclass(frozen=True)
class UNetConfig(JSONConfig):
    """Architecture of an ADM/IDDPM UNet (the flags of guided-diffusion's script_util).

    Args:
        image_size: input height = width in pixels.
        in_channels: image channels.
        model_channels: base width ("num_channels").
        out_channels: output channels; 2·in_channels for learned-sigma models.
        num_res_blocks: residual blocks per level.
        attention_resolutions: feature-map sizes in PIXELS at which attention is used (as the
            command-line flag "32,16,8"), not downsampling factors.
        dropout: dropout probability (inactive in eval mode).
        channel_mult: width multiplier per level.
        num_classes: number of label embeddings (None: unconditional). For CFG models this
            includes the null class slot.
        num_heads: attention heads when num_head_channels == -1.
        num_head_channels: channels per head (overrides num_heads) or -1.
        num_heads_upsample: heads in the decoder attention; -1 means num_heads.
        use_scale_shift_norm: FiLM-style timestep conditioning.
        resblock_updown: resample with ResBlocks instead of Upsample/Downsample.
        use_new_attention_order: split q,k,v before heads (ADM 64×64) vs legacy per-head order.
        conv_resample: learned conv in Upsample/Downsample.
        low_res_size: for super-resolution models (SuperResModel), the size of the low-res
            conditioning image they were trained on ("small_size"); None for plain UNets.
    """

    _what = "UNet config"

    image_size: int
    in_channels: int = 3
    model_channels: int = 128
    out_channels: int = 3
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16, 8)
    dropout: float = 0.0
    channel_mult: tuple[float, ...] = (1, 2, 2, 2)
    num_classes: int | None = None
    num_heads: int = 1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    conv_resample: bool = True
    low_res_size: int | None = None

    @property
    def super_res(self) -> bool:
        """True for an ADM SuperResModel (low-res image concatenated to x_t)."""
        return self.low_res_size is not None

    @property
    def learn_sigma(self) -> bool:
        """True when the net also predicts the variance interpolation (2C outputs)."""
        return self.out_channels == 2 * self.in_channels


class UNetModel(nn.Module):
    """The ADM UNet (and SuperResModel): forward(x, t, y=None, low_res=None) -> (N, out_channels, H, W)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        heads_up = c.num_heads if c.num_heads_upsample == -1 else c.num_heads_upsample
        attn_ds = {c.image_size // r for r in c.attention_resolutions}
        emb_dim = c.model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(c.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if c.num_classes is not None:
            self.label_emb = nn.Embedding(c.num_classes, emb_dim)

        def res(ch_in: int, ch_out: int, **kw: bool) -> ResBlock:
            return ResBlock(ch_in, emb_dim, c.dropout, out_channels=ch_out, use_scale_shift_norm=c.use_scale_shift_norm, **kw)

        def attn(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, heads, c.num_head_channels, c.use_new_attention_order)

        ch = input_ch = int(c.channel_mult[0] * c.model_channels)
        net_in = 2 * c.in_channels if c.super_res else c.in_channels
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(net_in, ch, 3, padding=1))])
        skip_chans, ds = [ch], 1
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * c.model_channels))]
                ch = int(mult * c.model_channels)
                if ds in attn_ds:
                    layers.append(attn(ch, c.num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(c.channel_mult) - 1:
                down = res(ch, ch, down=True) if c.resblock_updown else Downsample(ch, c.conv_resample)
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch, c.num_heads), res(ch, ch))
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(c.channel_mult))[::-1]:
            for i in range(c.num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), int(c.model_channels * mult))]
                ch = int(c.model_channels * mult)
                if ds in attn_ds:
                    layers.append(attn(ch, heads_up))
                if level and i == c.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if c.resblock_updown else Upsample(ch, c.conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(normalization(ch), nn.SiLU(), zero_module(nn.Conv2d(input_ch, c.out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None, low_res: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the model output for noisy images x at (original, possibly rescaled) timesteps.

        Args:
            x: x_t (N, in_channels, H, W).
            timesteps: network timesteps (N,).
            y: class labels (N,) for class-conditional models.
            low_res: super-resolution models only: the low-res images in [-1, 1] (N, C, h, w).
        """
        if (y is not None) != (self.config.num_classes is not None):
            raise ValueError("pass class labels y if and only if the model is class-conditional")
        if self.config.super_res:
            if low_res is None:
                raise GenevalError(
                    "this is a super-resolution model (ADM upsampler): it needs low-res images; use it as the "
                    "upsampler of a cascade (--upsampler), not as a base model"
                )
            up = F.interpolate(low_res.to(x.dtype), size=x.shape[-2:], mode="bilinear", align_corners=False, antialias=False)
            x = torch.cat([x, up], dim=1)
        elif low_res is not None:
            raise ValueError("low_res given to a model that is not a super-resolution model")
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels))
        if y is not None:
            emb = emb + self.label_emb(y)
        hs = []
        h = x
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (works on meta-device modules)."""
    return sum(p.numel() for p in module.parameters())


def init_random_(module: nn.Module, seed: int, std: float = 0.05) -> nn.Module:
    """Fill every parameter with seeded Gaussian noise (norm weights around 1).

    ADM zero-initialises its output convs, which makes a fresh net predict exactly 0; tests and
    benchmarks use this instead so that every layer affects the output.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32) * std
            if name.endswith("weight") and p.ndim == 1:  # norm scales
                noise += 1.0
            p.copy_(noise.to(p.dtype))
    return module
