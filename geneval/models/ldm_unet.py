"""The CompVis latent-diffusion UNet (ldm/modules/diffusionmodules/openaimodel.py) and its ClassEmbedder.

Parameter names equal CompVis' so `model.diffusion_model.*` and `cond_stage_model.*` load with no
renaming: the ADM trunk (time_embed, input_blocks, middle_block, output_blocks, out; ResBlock,
Downsample, Upsample and AttentionBlock come from geneval.models.nn, which has the same layers)
plus SpatialTransformer blocks (norm, proj_in, transformer_blocks.N.{attn1,attn2}.{to_q,to_k,
to_v,to_out.0}, ff.net.0.proj, ff.net.2, norm1..3, proj_out) for cross-attention on a context.
Head counts follow CompVis' rules, `legacy` flag included (they shape no tensor, only the math).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geneval.errors import GenevalError
from geneval.models.nn import (
    AttentionBlock,
    Downsample,
    ResBlock,
    TimestepBlock,
    Upsample,
    normalization,
    timestep_embedding,
    zero_module,
)


@dataclass(frozen=True)
class LDMUNetConfig:
    """CompVis openaimodel.UNetModel params (the YAML's unet_config.params), 2-D only.

    Args:
        image_size: latent side (informational, as in CompVis).
        in_channels, out_channels: latent channels in and out.
        model_channels: base width; channel_mult: width multiplier per level.
        num_res_blocks: ResBlocks per level (the decoder side has one more).
        attention_resolutions: downsampling factors (1, 2, 4, ...) whose levels get attention.
        num_heads, num_head_channels, num_heads_upsample: CompVis' head rules (-1 = unset).
        use_scale_shift_norm, resblock_updown, conv_resample, use_new_attention_order: as in ADM.
        use_spatial_transformer: SpatialTransformer (cross-attention on `context`) instead of AttentionBlock.
        transformer_depth: BasicTransformerBlocks per SpatialTransformer; context_dim: context width.
        num_classes: ADM-style label embedding (label_emb), or None.
        legacy: CompVis' legacy head-size rule.
        dropout, dims, use_checkpoint, use_fp16, n_embed: accepted at their inference-neutral
            values only (dims 2, use_fp16 false, n_embed None).
    """

    image_size: int
    in_channels: int
    model_channels: int
    out_channels: int
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    dropout: float = 0.0
    channel_mult: tuple[int, ...] = (1, 2, 4, 8)
    conv_resample: bool = True
    dims: int = 2
    num_classes: int | None = None
    use_checkpoint: bool = False
    use_fp16: bool = False
    num_heads: int = -1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    use_spatial_transformer: bool = False
    transformer_depth: int = 1
    context_dim: int | None = None
    n_embed: int | None = None
    legacy: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        if self.dims != 2:
            raise GenevalError(f"LDM UNet dims={self.dims}: only 2-D models are supported")
        if self.use_fp16:
            raise GenevalError("LDM UNet use_fp16: true is not supported (load fp32 weights; use --bf16 for speed)")
        if self.n_embed is not None:
            raise GenevalError("LDM UNet n_embed (codebook-id prediction) is not supported")
        if self.use_spatial_transformer and self.context_dim is None:
            raise GenevalError("LDM UNet use_spatial_transformer needs context_dim")
        if self.context_dim is not None and not self.use_spatial_transformer:
            raise GenevalError("LDM UNet context_dim needs use_spatial_transformer: true")
        if self.num_heads == -1 and self.num_head_channels == -1:
            raise GenevalError("LDM UNet needs num_heads or num_head_channels")
        if not self.channel_mult or min(self.channel_mult) < 1 or self.num_res_blocks < 1 or self.model_channels < 1:
            raise GenevalError(f"invalid LDM UNet config: {self}")

    @classmethod
    def from_params(cls, params: dict[str, Any], where: str = "unet_config") -> LDMUNetConfig:
        """From the YAML's unet_config.params; a key geneval does not know is an error naming it."""
        if not isinstance(params, dict):
            raise GenevalError(f"{where}.params must be a mapping")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in params if k not in known)
        if unknown:
            raise GenevalError(f"{where}: unknown UNet param(s) {unknown}; known: {', '.join(sorted(known))}")
        d = dict(params)
        if isinstance(d.get("context_dim"), (list, tuple)):
            if len(set(d["context_dim"])) != 1:
                raise GenevalError(f"{where}: per-level context_dim {d['context_dim']} is not supported")
            d["context_dim"] = d["context_dim"][0]
        try:
            return cls(**d)
        except TypeError as e:
            raise GenevalError(f"{where}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


# ---------------------------------------------------------------- SpatialTransformer (ldm/modules/attention.py)


class CrossAttention(nn.Module):
    """Multi-head attention of x on a context (self-attention without one); to_q/k/v have no bias."""

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head**-0.5
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        ctx = x if context is None else context
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2) for t in (self.to_q(x), self.to_k(ctx), self.to_v(ctx)))
        attn = (torch.einsum("bhid,bhjd->bhij", q, k) * self.scale).softmax(dim=-1)
        out = torch.einsum("bhij,bhjd->bhid", attn, v).transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


class GEGLU(nn.Module):
    """Linear to 2·inner, then value · gelu(gate)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    """CompVis' gated feed-forward (glu=True in BasicTransformerBlock): net.0 GEGLU, net.1 dropout, net.2 Linear."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention on the context, gated feed-forward; each residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None, dropout: float = 0.0):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """GroupNorm (eps 1e-6) → 1×1 proj_in → transformer blocks on (B, HW, C) → 1×1 proj_out, residual."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int | None, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(32, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(inner, heads, dim_head, context_dim, dropout) for _ in range(depth)])
        self.proj_out = zero_module(nn.Conv2d(inner, channels, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        b, _, h, w = x.shape
        y = self.proj_in(self.norm(x))
        y = y.reshape(b, y.shape[1], h * w).transpose(1, 2)
        for block in self.transformer_blocks:
            y = block(y, context)
        y = y.transpose(1, 2).reshape(b, -1, h, w)
        return self.proj_out(y) + x


class LDMSequential(nn.Sequential):
    """CompVis' TimestepEmbedSequential: ResBlocks get the embedding, SpatialTransformers the context."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


# ---------------------------------------------------------------- the UNet


class LDMUNet(nn.Module):
    """CompVis openaimodel.UNetModel: forward(x, timesteps, context=None, y=None) → ε (or x0).

    Args:
        cfg: the LDMUNetConfig.
    """

    def __init__(self, cfg: LDMUNetConfig):
        super().__init__()
        self.config = cfg
        mc, drop, ssn = cfg.model_channels, cfg.dropout, cfg.use_scale_shift_norm
        emb_dim = mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.num_classes is not None:
            self.label_emb = nn.Embedding(cfg.num_classes, emb_dim)
        heads = cfg.num_heads  # CompVis rebinds num_heads as it goes; the rebinding carries over
        heads_up = cfg.num_heads_upsample if cfg.num_heads_upsample != -1 else cfg.num_heads

        def attention(ch: int, upsampling: bool = False) -> nn.Module:
            nonlocal heads
            if cfg.num_head_channels == -1:
                dim_head = ch // heads
            else:
                heads = ch // cfg.num_head_channels
                dim_head = cfg.num_head_channels
            if cfg.legacy:
                dim_head = ch // heads if cfg.use_spatial_transformer else cfg.num_head_channels
            if cfg.use_spatial_transformer:
                return SpatialTransformer(ch, heads, dim_head, cfg.transformer_depth, cfg.context_dim)
            return AttentionBlock(
                ch,
                num_heads=heads_up if upsampling else heads,
                num_head_channels=dim_head,
                use_new_attention_order=cfg.use_new_attention_order,
            )

        def res(ch: int, out: int | None = None, up: bool = False, down: bool = False) -> ResBlock:
            return ResBlock(ch, emb_dim, drop, out_channels=out, use_scale_shift_norm=ssn, up=up, down=down)

        self.input_blocks = nn.ModuleList([LDMSequential(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))])
        chans, ch, ds = [mc], mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(attention(ch))
                self.input_blocks.append(LDMSequential(*layers))
                chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                down = res(ch, ch, down=True) if cfg.resblock_updown else Downsample(ch, cfg.conv_resample, ch)
                self.input_blocks.append(LDMSequential(down))
                chans.append(ch)
                ds *= 2
        self.middle_block = LDMSequential(res(ch), attention(ch), res(ch))
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + chans.pop(), mc * mult)]
                ch = mc * mult
                if ds in cfg.attention_resolutions:
                    layers.append(attention(ch, upsampling=True))
                if level and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if cfg.resblock_updown else Upsample(ch, cfg.conv_resample, ch))
                    ds //= 2
                self.output_blocks.append(LDMSequential(*layers))
        self.out = nn.Sequential(normalization(ch), nn.SiLU(), zero_module(nn.Conv2d(mc, cfg.out_channels, 3, padding=1)))

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Noisy latents x (B, C, h, w) at timesteps (B,) [with context (B, L, D) / labels y (B,)] → output."""
        if (y is not None) != (self.config.num_classes is not None):
            raise GenevalError("the LDM UNet takes labels y if and only if it has num_classes")
        if (context is not None) != self.config.use_spatial_transformer:
            raise GenevalError("the LDM UNet takes a context if and only if it uses the spatial transformer")
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels))
        if y is not None:
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h.type(x.dtype))


class ClassEmbedder(nn.Module):
    """CompVis ClassEmbedder: {key: LongTensor[B]} → (B, 1, embed_dim) context (key `embedding.weight`).

    Args:
        n_classes: embedding rows (cin256: 1001, the last being the null class for CFG).
        embed_dim: context width.
        key: the batch key it reads ("class_label" for cin256).
    """

    def __init__(self, embed_dim: int, n_classes: int = 1000, key: str = "class"):
        super().__init__()
        self.key = key
        self.embedding = nn.Embedding(n_classes, embed_dim)

    def forward(self, batch: dict[str, torch.Tensor], key: str | None = None) -> torch.Tensor:
        return self.embedding(batch[key or self.key][:, None])


class LDMDenoiser(nn.Module):
    """The latent denoiser as a generator calls it: net(x, t, y) → ε, like CompVis' DiffusionWrapper.

    Args:
        unet: the LDMUNet.
        conditioning_key: None (unconditional), "crossattn" (context = cond_stage(y)) or "adm"
            (y → the UNet's label_emb).
        cond_stage: the ClassEmbedder for "crossattn".
    """

    def __init__(self, unet: LDMUNet, conditioning_key: str | None, cond_stage: ClassEmbedder | None = None):
        super().__init__()
        if conditioning_key not in (None, "crossattn", "adm"):
            raise GenevalError(f"LDM conditioning_key {conditioning_key!r} is not supported (None, crossattn, adm)")
        if (conditioning_key == "crossattn") != (cond_stage is not None):
            raise GenevalError("crossattn conditioning needs a ClassEmbedder cond stage (and only it uses one)")
        self.unet, self.conditioning_key, self.cond_stage = unet, conditioning_key, cond_stage

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.conditioning_key is None:
            if y is not None:
                raise GenevalError("an unconditional LDM takes no labels")
            return self.unet(x, t)
        if y is None:
            raise GenevalError("this LDM is class-conditional: labels are required")
        if self.conditioning_key == "adm":
            return self.unet(x, t, y=y)
        return self.unet(x, t, context=self.cond_stage({self.cond_stage.key: y}))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
