"""VQ-Diffusion's token transformer (microsoft/VQ-Diffusion `transformer_utils.py`), key for key.

Module and parameter names follow the official code, so the released class-conditional checkpoint
(configs/imagenet.yaml: Condition2ImageTransformer, 24 blocks of width 512, 16 heads, conv MLP,
GELU2, 974 content tokens + [MASK], positional tables 32×32 for a 16×16 token grid) loads one to
one after stripping its prefix (`transformer.` in `ema`, `transformer.transformer.` in `model`):

    content_emb.{emb, height_emb, width_emb}.weight      DalleMaskImageEmbedding (pos 'embedding')
    blocks.N.ln1.{emb.weight, linear.*}                  AdaLayerNorm over the timestep
    blocks.N.attn.{key, query, value, proj}.*            self-attention ('selfcondition' / 'self')
    blocks.N.ln2.{emb.weight, linear.*}                  AdaLayerNorm over the class ('selfcondition')
    blocks.N.mlp.{conv1, conv2}.* | mlp.{0, 2}.*         conv_mlp | fc MLP
    blocks.N.{attn1, attn2, ln1_1, ln2}.*                'selfcross' (text: cross-attention)
    to_logits.{0, 1}.*                                   LayerNorm + Linear(n_embd, K)

diffusers' discrete `Transformer2DModel` is the 'selfcross' (or 'self') block with an fc MLP;
`diffusers_key_map` renames its keys onto these (latent_image_embedding → content_emb,
transformer_blocks.N.norm1/attn1/norm2/attn2/norm3/ff → blocks.N.ln1/attn1/ln1_1/attn2/ln2/mlp,
norm_out/out → to_logits).

Class conditioning (AdaLayerNorm with a class table): a label ≥ the number of table rows uses
the mean of the table, the official "null" for models trained without one; a table with
num_classes + 1 rows (imagenet_learnable: class_number 1001) holds a learned null at row
num_classes. The official layer decides for the whole batch from its first label; here each row
decides for itself (identical for the homogeneous batches the official sampler uses).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MLP_TYPES = ("conv_mlp", "fc")
ATTN_TYPES = ("selfcondition", "selfcross", "self")
ACTIVATIONS = ("GELU2", "GELU")


@dataclass(frozen=True)
class VQDiffusionConfig:
    """Shape of a VQ-Diffusion token transformer.

    Args:
        num_tokens: K content classes (the network predicts K logits; the mask class K is extra).
        content_hw: the token grid (h, w) the network sees (L = h·w).
        pos_hw: rows/columns of the positional tables (official ImageNet: 32×32 for a 16×16 grid;
            token l gets height_emb[l // pos_w] + width_emb[l % pos_w], as the official code slices).
        n_embd, n_head, n_layer: width, heads, blocks.
        mlp_hidden_times: MLP expansion; mlp_type: conv_mlp (3×3 convs on the grid) or fc.
        activation: GELU2 (x·σ(1.702x)) or GELU.
        attn_type: selfcondition (class AdaLayerNorm), selfcross (cross-attention) or self (unconditional).
        class_number: rows of the class table (selfcondition).
        num_classes: real classes (labels 0..num_classes−1); the null label is num_classes.
        diffusion_step: T (rows of the timestep tables).
        condition_dim: width of encoder_hidden_states (selfcross).
    """

    num_tokens: int
    content_hw: tuple[int, int]
    pos_hw: tuple[int, int] | None = None
    n_embd: int = 512
    n_head: int = 16
    n_layer: int = 24
    mlp_hidden_times: int = 4
    mlp_type: str = "conv_mlp"
    activation: str = "GELU2"
    attn_type: str = "selfcondition"
    class_number: int = 1000
    num_classes: int | None = None
    diffusion_step: int = 100
    condition_dim: int | None = None
    schedule: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mlp_type not in MLP_TYPES or self.attn_type not in ATTN_TYPES or self.activation not in ACTIVATIONS:
            raise ValueError(f"unsupported VQ-Diffusion block: mlp {self.mlp_type}, attn {self.attn_type}, act {self.activation}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")

    @property
    def seq_len(self) -> int:
        return self.content_hw[0] * self.content_hw[1]

    @property
    def pos(self) -> tuple[int, int]:
        return tuple(self.pos_hw or self.content_hw)  # type: ignore[return-value]

    @property
    def real_classes(self) -> int | None:
        if self.attn_type != "selfcondition":
            return None
        return self.num_classes if self.num_classes is not None else self.class_number

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["content_hw"], d["pos_hw"] = list(self.content_hw), list(self.pos)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VQDiffusionConfig":
        d = dict(d)
        d["content_hw"] = tuple(d["content_hw"])
        if d.get("pos_hw") is not None:
            d["pos_hw"] = tuple(d["pos_hw"])
        return cls(**d)


# The released class-conditional model (configs/imagenet.yaml); imagenet_learnable uses class_number 1001.
IMAGENET = VQDiffusionConfig(
    num_tokens=974,
    content_hw=(16, 16),
    pos_hw=(32, 32),
    n_embd=512,
    n_head=16,
    n_layer=24,
    mlp_type="conv_mlp",
    activation="GELU2",
    attn_type="selfcondition",
    class_number=1000,
    num_classes=1000,
    diffusion_step=100,
)


class GELU2(nn.Module):
    """x·σ(1.702x), the sigmoid GELU approximation of VQ-Diffusion (diffusers' ApproximateGELU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ContentEmbedding(nn.Module):
    """Token embedding (K+1 rows incl. [MASK]) plus row + column positional tables."""

    def __init__(self, num_embed: int, pos_hw: tuple[int, int], dim: int):
        super().__init__()
        self.pos_hw = pos_hw
        self.emb = nn.Embedding(num_embed, dim)
        self.height_emb = nn.Embedding(pos_hw[0], dim)
        self.width_emb = nn.Embedding(pos_hw[1], dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.pos_hw
        pos = (self.height_emb.weight[:, None] + self.width_emb.weight[None, :]).reshape(ph * pw, -1)
        return self.emb(x) + pos[: x.shape[1]]


class AdaLayerNorm(nn.Module):
    """LayerNorm (no affine) · (1 + scale) + shift, with (scale, shift) = Linear(SiLU(table[index]))."""

    def __init__(self, dim: int, rows: int):
        super().__init__()
        self.emb = nn.Embedding(rows, dim)
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        rows = self.emb.num_embeddings
        e = self.emb(index.clamp(max=rows - 1))
        null = index >= rows  # beyond the table: the mean class embedding (official unconditional)
        if bool(null.any()):
            e = torch.where(null[:, None], self.emb.weight.mean(0, keepdim=True).expand_as(e), e)
        scale, shift = self.linear(F.silu(e)).unsqueeze(1).chunk(2, dim=2)
        return F.layer_norm(x, x.shape[-1:]) * (1 + scale) + shift


class Attention(nn.Module):
    """Multi-head attention with VQ-Diffusion's names (key/query/value/proj); keys/values from `context`."""

    def __init__(self, dim: int, n_head: int, context_dim: int | None = None):
        super().__init__()
        self.n_head = n_head
        self.key = nn.Linear(context_dim or dim, dim)
        self.query = nn.Linear(dim, dim)
        self.value = nn.Linear(context_dim or dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        ctx = x if context is None else context
        b, n, c = x.shape
        h = self.n_head

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, t.shape[1], h, c // h).transpose(1, 2)

        y = F.scaled_dot_product_attention(heads(self.query(x)), heads(self.key(ctx)), heads(self.value(ctx)))
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class ConvMLP(nn.Module):
    """3×3 conv → act → 3×3 conv over the token grid (official Conv_MLP)."""

    def __init__(self, dim: int, hidden: int, act: nn.Module, hw: tuple[int, int]):
        super().__init__()
        self.hw = hw
        self.conv1 = nn.Conv2d(dim, hidden, 3, padding=1)
        self.act = act
        self.conv2 = nn.Conv2d(hidden, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        g = x.transpose(1, 2).reshape(b, c, *self.hw)
        return self.conv2(self.act(self.conv1(g))).flatten(2).transpose(1, 2)


class Block(nn.Module):
    """One transformer block: AdaLN(t) → self-attention, [AdaLN(t) → cross-attention], norm → MLP."""

    def __init__(self, cfg: VQDiffusionConfig):
        super().__init__()
        d = cfg.n_embd
        self.attn_type = cfg.attn_type
        self.ln1 = AdaLayerNorm(d, cfg.diffusion_step)
        if cfg.attn_type == "selfcross":
            self.attn1 = Attention(d, cfg.n_head)
            self.attn2 = Attention(d, cfg.n_head, cfg.condition_dim or d)
            self.ln1_1 = AdaLayerNorm(d, cfg.diffusion_step)
        else:
            self.attn = Attention(d, cfg.n_head)
        self.ln2: nn.Module = AdaLayerNorm(d, cfg.class_number) if cfg.attn_type == "selfcondition" else nn.LayerNorm(d)
        act = GELU2() if cfg.activation == "GELU2" else nn.GELU()
        hidden = cfg.mlp_hidden_times * d
        if cfg.mlp_type == "conv_mlp":
            self.mlp: nn.Module = ConvMLP(d, hidden, act, cfg.content_hw)
        else:
            self.mlp = nn.Sequential(nn.Linear(d, hidden), act, nn.Linear(hidden, d))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if self.attn_type == "selfcross":
            x = x + self.attn1(self.ln1(x, t))
            x = x + self.attn2(self.ln1_1(x, t), cond)
            return x + self.mlp(self.ln2(x))
        x = x + self.attn(self.ln1(x, t))
        if self.attn_type == "selfcondition":
            return x + self.mlp(self.ln2(x, cond))
        return x + self.mlp(self.ln2(x))


class VQDiffusionTransformer(nn.Module):
    """Token transformer: (x_t tokens (B, L), t (B,), condition) → logits over K content classes (B, K, L).

    Args:
        cfg: the shape; the condition is class labels (B,) for selfcondition, encoder_hidden_states
            (B, Lc, condition_dim) for selfcross, None for self.
    """

    def __init__(self, cfg: VQDiffusionConfig):
        super().__init__()
        self.config = cfg
        self.content_emb = ContentEmbedding(cfg.num_tokens + 1, cfg.pos, cfg.n_embd)
        self.blocks = nn.Sequential(*[Block(cfg) for _ in range(cfg.n_layer)])
        self.to_logits = nn.Sequential(nn.LayerNorm(cfg.n_embd), nn.Linear(cfg.n_embd, cfg.num_tokens))
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.content_emb(x)
        for block in self.blocks:
            h = block(h, t, cond)
        return self.to_logits(h).transpose(1, 2)


def _init_weights(m: nn.Module) -> None:
    # The official initialisation (minGPT): N(0, 0.02) weights, zero biases.
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# ---------------------------------------------------------------- foreign layouts

OFFICIAL_PREFIXES = ("transformer.transformer.", "transformer.")


def official_transformer_state(raw: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], str]:
    """Split an official VQ-Diffusion checkpoint into (network tensors, diffusion buffers, which part).

    The EMA copy (`ema`, keys relative to DiffusionTransformer) wins over `model` (C_DALLE, keys
    under `transformer.`); a bare DiffusionTransformer state dict is accepted too.
    """
    part = "ema" if isinstance(raw.get("ema"), dict) else "model" if isinstance(raw.get("model"), dict) else "state_dict"
    sd = raw[part] if part != "state_dict" else raw
    if part == "model":
        sd = {k[len("transformer.") :]: v for k, v in sd.items() if k.startswith("transformer.")}
    net = {k[len("transformer.") :]: v for k, v in sd.items() if k.startswith("transformer.") and isinstance(v, torch.Tensor)}
    buffers = {k: v for k, v in sd.items() if not k.startswith("transformer.") and isinstance(v, torch.Tensor)}
    return net, buffers, part


def config_from_official_state(
    sd: dict[str, torch.Tensor], content_hw: tuple[int, int], n_head: int = 16, activation: str = "GELU2", num_classes: int | None = None
) -> VQDiffusionConfig:
    """Read the shape of a Condition2Image/Text2Image/UnCondition2Image state dict off its tensors.

    n_head and the activation are not visible in the weights (all released configs: 16, GELU2);
    the token grid comes from the VQ tokenizer.
    """
    n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    b0 = "blocks.0."
    if f"{b0}attn1.key.weight" in sd:
        attn_type = "selfcross"
    elif f"{b0}ln2.emb.weight" in sd:
        attn_type = "selfcondition"
    else:
        attn_type = "self"
    d = sd["to_logits.1.weight"].shape[1]
    if f"{b0}mlp.conv1.weight" in sd:
        mlp_type, hidden = "conv_mlp", sd[f"{b0}mlp.conv1.weight"].shape[0]
    else:
        mlp_type, hidden = "fc", sd[f"{b0}mlp.0.weight"].shape[0]
    class_number = sd[f"{b0}ln2.emb.weight"].shape[0] if attn_type == "selfcondition" else 0
    if num_classes is None and attn_type == "selfcondition":
        num_classes = class_number - 1 if class_number == 1001 else class_number
    return VQDiffusionConfig(
        num_tokens=sd["to_logits.1.weight"].shape[0],
        content_hw=tuple(content_hw),
        pos_hw=(sd["content_emb.height_emb.weight"].shape[0], sd["content_emb.width_emb.weight"].shape[0]),
        n_embd=d,
        n_head=n_head,
        n_layer=n_layer,
        mlp_hidden_times=hidden // d,
        mlp_type=mlp_type,
        activation=activation,
        attn_type=attn_type,
        class_number=class_number or 1,
        num_classes=num_classes,
        diffusion_step=sd[f"{b0}ln1.emb.weight"].shape[0],
        condition_dim=sd[f"{b0}attn2.key.weight"].shape[1] if attn_type == "selfcross" else None,
    )


_DIFFUSERS_BLOCK = {
    "norm1.": "ln1.",
    "norm2.": "ln1_1.",
    "norm3.": "ln2.",
    "ff.net.0.proj.": "mlp.0.",
    "ff.net.2.": "mlp.2.",
}
_DIFFUSERS_ATTN = {"to_q.": "query.", "to_k.": "key.", "to_v.": "value.", "to_out.0.": "proj."}


def diffusers_key_map(keys: list[str], self_only: bool = False) -> dict[str, str]:
    """diffusers discrete Transformer2DModel key → geneval key (one to one).

    Args:
        keys: the diffusers state-dict keys.
        self_only: the model has no cross-attention (attn1 becomes `attn`, norm2 is unused).
    """
    out = {}
    for k in keys:
        g = k.replace("latent_image_embedding.", "content_emb.").replace("norm_out.", "to_logits.0.")
        g = g.replace("out.", "to_logits.1.") if g.startswith("out.") else g
        if g.startswith("transformer_blocks."):
            _, i, rest = g.split(".", 2)
            for a, b in _DIFFUSERS_BLOCK.items():
                if rest.startswith(a):
                    rest = b + rest[len(a) :]
            if rest.startswith(("attn1.", "attn2.")):
                name, sub = rest.split(".", 1)
                for a, b in _DIFFUSERS_ATTN.items():
                    if sub.startswith(a):
                        sub = b + sub[len(a) :]
                rest = f"{'attn' if self_only and name == 'attn1' else name}.{sub}"
            g = f"blocks.{i}.{rest}"
        out[k] = g
    return out


def config_from_diffusers(c: Any) -> VQDiffusionConfig:
    """VQDiffusionConfig of a diffusers discrete Transformer2DModel config (norm_type ada_norm)."""
    act = {"geglu-approximate": "GELU2", "gelu-approximate": "GELU2", "gelu": "GELU"}.get(c.activation_fn)
    if act is None or c.norm_type != "ada_norm" or getattr(c, "num_vector_embeds", None) is None:
        raise ValueError(f"not a VQ-Diffusion style discrete transformer (activation {c.activation_fn}, norm {c.norm_type})")
    d = c.num_attention_heads * c.attention_head_dim
    s = int(c.sample_size)
    return VQDiffusionConfig(
        num_tokens=int(c.num_vector_embeds) - 1,
        content_hw=(s, s),
        pos_hw=(s, s),
        n_embd=d,
        n_head=int(c.num_attention_heads),
        n_layer=int(c.num_layers),
        mlp_hidden_times=4,
        mlp_type="fc",
        activation=act,
        attn_type="selfcross" if c.cross_attention_dim is not None else "self",
        class_number=1,
        diffusion_step=int(c.num_embeds_ada_norm),
        condition_dim=c.cross_attention_dim,
    )


def from_diffusers_state(sd: dict[str, torch.Tensor], cfg: VQDiffusionConfig) -> dict[str, torch.Tensor]:
    """A diffusers Transformer2DModel state dict renamed to geneval's keys."""
    mapping = diffusers_key_map(list(sd), self_only=cfg.attn_type == "self")
    return {mapping[k]: v for k, v in sd.items()}
