"""DINOv2 ViT features for FD-DINOv2 (Stein et al., dgm-eval; EDM2), on timm's VisionTransformer.

Recipe (dgm-eval / EDM2 ``DINOv2Detector``): uint8 images → bicubic resize to 224×224 (``pil``
exact or ``torch`` fast, see `geneval.features.bicubic`) → x/255 → ImageNet mean/std → the
official facebookresearch/dinov2 backbone → final CLS token after the last LayerNorm
(``x_norm_clstoken``; 1024-d for ViT-L/14, 768-d for ViT-B/14).

Network: timm ``vit_large_patch14_dinov2`` / ``vit_base_patch14_dinov2`` built at img_size=224
(num_classes=0, global_pool='token'), loaded from the OFFICIAL state dict
(``dinov2_vitl14_pretrain.pth``) whose names are timm's names one to one: cls_token, pos_embed,
patch_embed.proj, blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2,
ls2.gamma}, norm. Two official tensors are not copied verbatim:

- ``mask_token`` (used only for masked training) is dropped, as timm's ``_convert_dinov2`` does;
- ``pos_embed`` is stored for the 37×37 grid of 518 px. The official model re-interpolates it on
  every forward with ``interpolate_pos_encoding``: bicubic, antialias=False, scale factor
  (16 + 0.1)/37 (the "interpolate_offset" kludge). We compute exactly that once for the 16×16
  grid of 224 px. timm's own ``checkpoint_filter_fn`` would resample with size=(16, 16) and
  antialias=True instead, which does not reproduce the official features (tested).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geneval.errors import GenevalError
from geneval.features.bicubic import normalize, resize_bicubic
from geneval.features.resize import to_nchw_uint8

INPUT_SIZE = 224
PATCH = 14
PRETRAIN_GRID = 37  # official img_size 518 = 37 × 14
INTERPOLATE_OFFSET = 0.1  # dinov2 hub default (interpolate_offset=0.1, interpolate_antialias=False)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ARCHS: dict[str, dict[str, Any]] = {
    "vitl14": {
        "timm": "vit_large_patch14_dinov2",
        "embed_dim": 1024,
        "depth": 24,
        "num_heads": 16,
        "weights": "dinov2-vitl14",
    },
    "vitb14": {
        "timm": "vit_base_patch14_dinov2",
        "embed_dim": 768,
        "depth": 12,
        "num_heads": 12,
        "weights": "dinov2-vitb14",
    },
}


def _timm():
    try:
        import timm
    except ImportError:
        raise GenevalError("DINOv2 features need timm: pip install 'timm>=1.0'") from None
    return timm


def build_vit(arch: str = "vitl14", **overrides: Any) -> nn.Module:
    """An untrained timm DINOv2 ViT for 224 px input, frozen (eval, no grad).

    Args:
        arch: ``vitl14`` or ``vitb14``.
        overrides: timm constructor arguments (tests shrink embed_dim / depth / num_heads).
    """
    if arch not in ARCHS:
        raise GenevalError(f"unknown DINOv2 architecture {arch!r}: choose one of {', '.join(ARCHS)}")
    kwargs = {"pretrained": False, "num_classes": 0, "img_size": INPUT_SIZE}
    kwargs.update(overrides)
    vit = _timm().create_model(ARCHS[arch]["timm"], **kwargs)
    return vit.eval().requires_grad_(False)


def official_layout(vit: nn.Module, pretrain_grid: int = PRETRAIN_GRID) -> dict[str, tuple[int, ...]]:
    """Names and shapes the official dinov2 state dict has for this network (mask_token included).

    Args:
        vit: a model from `build_vit`.
        pretrain_grid: the patch grid side of the official pos_embed (37 for 518 px).
    """
    shapes = {k: tuple(v.shape) for k, v in vit.state_dict().items()}
    dim = shapes["cls_token"][-1]
    shapes["pos_embed"] = (1, 1 + pretrain_grid * pretrain_grid, dim)
    shapes["mask_token"] = (1, dim)
    return shapes


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: int, offset: float = INTERPOLATE_OFFSET) -> torch.Tensor:
    """The official ``interpolate_pos_encoding`` for a square grid, in float32.

    Args:
        pos_embed: (1, 1 + M², D) official positional embedding (class token first).
        grid: target patch grid side (16 for 224 px).
        offset: the official interpolate_offset (0.1); 0 means size=(grid, grid).
    """
    pos = pos_embed.to(torch.float32)
    n = pos.shape[1] - 1
    m = math.isqrt(n)
    if m * m != n:
        raise GenevalError(f"DINOv2 pos_embed has {n} patch positions, not a square grid")
    if m == grid:
        return pos.clone()  # the official model uses it unchanged on its own grid
    dim = pos.shape[-1]
    patch = pos[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if offset:
        scale = float(grid + offset) / m
        patch = F.interpolate(patch, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    else:
        patch = F.interpolate(patch, size=(grid, grid), mode="bicubic", antialias=False)
    if patch.shape[-2:] != (grid, grid):
        raise GenevalError(f"DINOv2 pos_embed interpolation gave {tuple(patch.shape[-2:])}, expected {grid}×{grid}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)
    return torch.cat([pos[:, :1], patch], dim=1)


def convert_official_state(state: Mapping[str, torch.Tensor], vit: nn.Module) -> dict[str, torch.Tensor]:
    """Map an official dinov2 state dict onto `vit` (see module docstring); exact key set required.

    Args:
        state: the official state dict (e.g. torch.load of dinov2_vitl14_pretrain.pth).
        vit: the target from `build_vit`, whose patch grid sets the pos_embed interpolation.
    """
    if "register_tokens" in state:
        raise GenevalError(
            "this is a DINOv2 checkpoint with registers (…_reg4_pretrain.pth); FD-DINOv2 uses the plain backbone (dinov2_vitl14_pretrain.pth)"
        )
    grid = vit.patch_embed.grid_size[0]
    m = math.isqrt(max(state["pos_embed"].shape[1] - 1, 0)) if "pos_embed" in state else PRETRAIN_GRID
    expected = official_layout(vit, m)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise GenevalError(
            f"not an official DINOv2 {_arch_text(vit)} state dict: missing {missing[:3]}"
            f"{'…' if len(missing) > 3 else ''}, unexpected {extra[:3]}{'…' if len(extra) > 3 else ''}"
        )
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise GenevalError(f"DINOv2 tensor {k} has shape {tuple(state[k].shape)}, expected {shape}")
    out = {k: v.to(torch.float32) for k, v in state.items() if k != "mask_token"}
    out["pos_embed"] = interpolate_pos_embed(state["pos_embed"], grid)
    return out


def _arch_text(vit: nn.Module) -> str:
    return f"(dim {vit.embed_dim}, depth {len(vit.blocks)})"


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a state-dict file: safetensors, or torch.load(weights_only=True).

    Args:
        path: the weight file.
    """
    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(p), device="cpu"))
    from geneval.models.safe_load import torch_load

    state = torch_load(p, what="state dict")  # pickled code is refused in one line, never run
    for key in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise GenevalError(f"{p} does not hold a state dict")
    return state


class DINOv2Features(nn.Module):
    """Frozen DINOv2 feature network: uint8 images in, {feature: N×D float32 CLS tokens} out.

    Args:
        vit: a loaded model from `build_vit`.
        arch: ``vitl14`` or ``vitb14``.
        resize: ``pil`` (exact) or ``torch`` (fast).
        provenance: weight file facts for `describe` (name, path, sha256…).
    """

    def __init__(
        self,
        vit: nn.Module,
        arch: str,
        resize: str = "pil",
        provenance: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.vit = vit
        self.arch = arch
        self.resize = resize
        self.feature = "dinov2_cls" if arch == "vitl14" else f"dinov2_{arch[3:]}_cls"
        self.dims = int(vit.embed_dim)
        self.provenance = dict(provenance or {})
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> DINOv2Features:
        """Always stays in eval mode: a feature network defines the metric."""
        return super().train(False)

    def preprocess(self, images: Any) -> torch.Tensor:
        """uint8 images (NHWC numpy or NCHW/NHWC tensor) → N×3×224×224 normalised float32 on the model's device.

        Args:
            images: uint8 batch; grayscale is repeated to RGB.
        """
        device = self.vit.cls_token.device
        x = to_nchw_uint8(images)
        if self.resize == "torch":
            x = x.to(device)  # resize where the network runs; PIL works on the CPU copy
        x = resize_bicubic(x, INPUT_SIZE, self.resize)
        return normalize(x.to(device), IMAGENET_MEAN, IMAGENET_STD)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """CLS token after the final norm of a preprocessed batch.

        Args:
            x: N×3×224×224 normalised float32.
        """
        return self.vit(x)

    def forward(self, images: Any) -> dict[str, torch.Tensor]:
        """{feature name: N×D float32 features} of a uint8 batch."""
        return {self.feature: self.embed(self.preprocess(images)).float()}

    def describe(self) -> dict[str, Any]:
        """What shapes these features, for results."""
        return {
            "network": "dinov2" if self.arch == "vitl14" else f"dinov2-{self.arch[3:]}",
            "feature": self.feature,
            "dims": self.dims,
            "arch": f"DINOv2 {self.arch}",
            "library": f"timm {_timm().__version__} ({ARCHS[self.arch]['timm']})",
            "resize": self.resize,
            "input_size": INPUT_SIZE,
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "pos_embed": f"official bicubic interpolation 37→16, offset {INTERPOLATE_OFFSET}, no antialias",
            **self.provenance,
        }


def build_dinov2(
    arch: str = "vitl14",
    weights: str | Path | Mapping[str, torch.Tensor] | None = None,
    resize: str = "pil",
    device: str | torch.device = "cpu",
    allow_download: bool = False,
    **overrides: Any,
) -> DINOv2Features:
    """DINOv2 features from the official weights (resolved through geneval.weights when not given).

    Args:
        arch: ``vitl14`` (FD-DINOv2) or ``vitb14``.
        weights: a path to the official .pth / .safetensors, an official-layout state dict, or None.
        resize: ``pil`` (exact, dgm-eval) or ``torch`` (fast, EDM2 default).
        device: where the network runs.
        allow_download: let weight resolution download the official file when online.
        overrides: timm constructor overrides (tests only).
    Raises:
        MissingWeightsError: weights not given and not found (names file, hash, URL, destination).
    """
    from geneval.features.bicubic import RESIZE_MODES
    from geneval.weights import resolve_weight_file

    if resize not in RESIZE_MODES:
        raise GenevalError(f"unknown resize {resize!r}: choose one of {', '.join(RESIZE_MODES)}")
    if arch not in ARCHS:
        raise GenevalError(f"unknown DINOv2 architecture {arch!r}: choose one of {', '.join(ARCHS)}")
    if isinstance(weights, Mapping):
        state, provenance = weights, {"weights": "state dict given in memory"}
    else:
        resolved = resolve_weight_file(ARCHS[arch]["weights"], weights, allow_download=allow_download)
        state, provenance = load_state_file(resolved.path), resolved.describe()
    vit = build_vit(arch, **overrides)
    vit.load_state_dict(convert_official_state(state, vit), strict=True)
    return DINOv2Features(vit.to(device), arch, resize, provenance)
