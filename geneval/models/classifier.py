"""The ADM noisy classifier: the UNet's encoder half plus a pooling head.

Module names follow guided-diffusion's `EncoderUNetModel`, so its `.pt` files load strictly:
time_embed.{0,2}, input_blocks..., middle_block.{0,1,2}, then the head of each `pool`:

- "attention" (the released classifiers): out.0 norm, out.2.{positional_embedding, qkv_proj, c_proj};
- "adaptive": out.0 norm, SiLU, global average pool, out.3 zero-initialised 1×1 conv, flatten;
- "spatial": the spatial means of every input block's output and of the middle block,
  concatenated (feature size = the sum of their widths), then out.0 Linear(·, 2048), ReLU,
  out.2 Linear(2048, classes);
- "spatial_v2": the same features, out.0 Linear(·, 2048), out.1 GroupNorm32(32, 2048), SiLU,
  out.3 Linear(2048, classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from geneval.models.nn import (
    AttentionBlock,
    AttentionPool2d,
    Downsample,
    JSONConfig,
    ResBlock,
    TimestepEmbedSequential,
    normalization,
    timestep_embedding,
    zero_module,
)

POOLS = ("attention", "adaptive", "spatial", "spatial_v2")


@dataclass(frozen=True)
class ClassifierConfig(JSONConfig):
    """Architecture of an ADM classifier (guided-diffusion's classifier_* flags).

    Args:
        image_size: input resolution.
        in_channels: image channels.
        model_channels: "classifier_width".
        out_channels: number of classes.
        num_res_blocks: "classifier_depth".
        attention_resolutions: feature-map sizes in pixels with attention.
        channel_mult: width multiplier per level.
        num_head_channels: channels per attention head (ADM uses 64).
        use_scale_shift_norm, resblock_updown, use_new_attention_order: as in UNetConfig.
        pool: the head ("classifier_pool"): attention, adaptive, spatial or spatial_v2.
    """

    _what = "classifier config"

    image_size: int
    in_channels: int = 3
    model_channels: int = 128
    out_channels: int = 1000
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    channel_mult: tuple[float, ...] = (1, 2, 3, 4)
    num_heads: int = 1
    num_head_channels: int = 64
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    use_new_attention_order: bool = False
    conv_resample: bool = True
    pool: str = "attention"

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"unknown classifier pool {self.pool!r}; known: {', '.join(POOLS)}")
        if self.pool == "attention" and self.num_head_channels == -1:
            raise ValueError("the attention pool needs num_head_channels (guided-diffusion asserts it)")


class EncoderUNet(nn.Module):
    """ADM noisy classifier: forward(x_t, t) -> class logits (N, out_channels)."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = c = config
        attn_ds = {c.image_size // r for r in c.attention_resolutions}
        emb_dim = c.model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(c.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def res(ch_in: int, ch_out: int, **kw: bool) -> ResBlock:
            return ResBlock(ch_in, emb_dim, 0.0, out_channels=ch_out, use_scale_shift_norm=c.use_scale_shift_norm, **kw)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, c.num_heads, c.num_head_channels, c.use_new_attention_order)

        ch = int(c.channel_mult[0] * c.model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(c.in_channels, ch, 3, padding=1))])
        feature_size = ch  # widths of all pooled features for the spatial heads
        ds = 1
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * c.model_channels))]
                ch = int(mult * c.model_channels)
                if ds in attn_ds:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                feature_size += ch
            if level != len(c.channel_mult) - 1:
                down = res(ch, ch, down=True) if c.resblock_updown else Downsample(ch, c.conv_resample)
                self.input_blocks.append(TimestepEmbedSequential(down))
                feature_size += ch
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch), res(ch, ch))
        feature_size += ch
        self.feature_size = feature_size
        if c.pool == "attention":
            self.out = nn.Sequential(normalization(ch), nn.SiLU(), AttentionPool2d(c.image_size // ds, ch, c.num_head_channels, c.out_channels))
        elif c.pool == "adaptive":
            self.out = nn.Sequential(
                normalization(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)), zero_module(nn.Conv2d(ch, c.out_channels, 1)), nn.Flatten()
            )
        elif c.pool == "spatial":
            self.out = nn.Sequential(nn.Linear(feature_size, 2048), nn.ReLU(), nn.Linear(2048, c.out_channels))
        else:  # spatial_v2
            self.out = nn.Sequential(nn.Linear(feature_size, 2048), normalization(2048), nn.SiLU(), nn.Linear(2048, c.out_channels))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Class logits for noisy images x at network timesteps t."""
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels))
        spatial = self.config.pool.startswith("spatial")
        pooled = []
        h = x
        for module in self.input_blocks:
            h = module(h, emb)
            if spatial:
                pooled.append(h.to(x.dtype).mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        if spatial:
            pooled.append(h.to(x.dtype).mean(dim=(2, 3)))
            return self.out(torch.cat(pooled, dim=-1))
        return self.out(h)
