"""CLIP ViT-L/14@336px image embeddings for CMMD (Jayasumana et al. 2024), on open_clip's vision tower.

Recipe (google-research/cmmd): centre crop to a square, PIL bicubic resize to 336×336
(``io_util._center_crop_and_resize``; the ``pil`` path here, or the fast ``torch`` path), x/255,
CLIP mean/std (0.48145466, 0.4578275, 0.40821073) / (0.26862954, 0.26130258, 0.27577711), the
image tower of OpenAI's ViT-L/14@336px (QuickGELU), then the embedding divided by its L2 norm:
768-d unit vectors. cmmd runs the same OpenAI weights through scenic (JAX); we run them
through open_clip's ``VisionTransformer``.

Weights: OpenAI's ``ViT-L-14-336px.pt`` (a TorchScript archive, fp16 weights, sha256 in its URL),
or any state dict in the OpenAI key layout (open_clip's ``open_clip_pytorch_model.bin`` for
``ViT-L-14-336``/``openai`` uses it too). Only the ``visual.*`` tensors are used, renamed one to
one by dropping the ``visual.`` prefix: conv1, class_embedding, positional_embedding, ln_pre,
transformer.resblocks.N.{ln_1, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, ln_2,
mlp.c_fc, mlp.c_proj}, ln_post, proj. fp16 tensors are cast to float32 (open_clip's
``load_openai_model(precision='fp32')`` does the same).
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geneval.errors import GenevalError
from geneval.features.bicubic import (
    RESIZE_MODES,
    center_crop_square,
    normalize,
    resize_bicubic,
)
from geneval.features.resize import to_nchw_uint8

MODEL = "ViT-L-14-336"
WEIGHTS = "clip-vit-l14-336"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_NON_TENSOR_KEYS = (
    "input_resolution",
    "context_length",
    "vocab_size",
)  # ints in OpenAI's JIT state


def _open_clip():
    try:
        import open_clip
    except ImportError:
        raise GenevalError("CLIP features need open_clip: pip install 'open_clip_torch>=2.24'") from None
    return open_clip


def vision_config(**overrides: Any) -> dict[str, Any]:
    """open_clip's ViT-L-14-336 vision config (+ embed_dim), with test overrides.

    Args:
        overrides: ``embed_dim`` and/or vision_cfg fields (``width``, ``layers``, ``patch_size``, ``image_size``).
    """
    cfg = _open_clip().get_model_config(MODEL)
    vision = dict(cfg["vision_cfg"])
    embed_dim = overrides.pop("embed_dim", cfg["embed_dim"])
    vision.update(overrides)
    return {"embed_dim": embed_dim, **vision}


def build_visual(**overrides: Any) -> nn.Module:
    """An untrained open_clip vision tower of ViT-L/14@336 with QuickGELU, frozen.

    Args:
        overrides: see `vision_config` (tests shrink width / layers).
    """
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    cfg = vision_config(**overrides)
    embed_dim = cfg.pop("embed_dim")
    visual = _build_vision_tower(embed_dim, CLIPVisionCfg(**cfg), quick_gelu=True)
    return visual.eval().requires_grad_(False)


def official_visual_layout(visual: nn.Module) -> dict[str, tuple[int, ...]]:
    """Names (with ``visual.``) and shapes of the OpenAI state dict's image-tower tensors for `visual`.

    Args:
        visual: a tower from `build_visual`.
    """
    return {f"visual.{k}": tuple(v.shape) for k, v in visual.state_dict().items()}


def convert_openai_state(state: Mapping[str, Any], visual: nn.Module) -> dict[str, torch.Tensor]:
    """The ``visual.*`` tensors of an OpenAI-layout CLIP state dict, renamed for `visual`, in float32.

    Args:
        state: the full OpenAI CLIP state dict (text tower and logit_scale are ignored).
        visual: the target tower.
    """
    if "visual.proj" not in state and "visual.class_embedding" not in state:
        if any(k.startswith("visual.trunk.") for k in state):
            raise GenevalError("this is an open_clip checkpoint with a timm vision trunk, not the OpenAI CLIP layout")
        raise GenevalError("not an OpenAI-layout CLIP state dict (no visual.class_embedding / visual.proj)")
    expected = official_visual_layout(visual)
    got = {k for k in state if k.startswith("visual.")}
    missing, extra = sorted(set(expected) - got), sorted(got - set(expected))
    if missing or extra:
        raise GenevalError(f"CLIP image tower does not match ViT-L/14@336: missing {missing[:3]}, unexpected {extra[:3]}")
    out = {}
    for k, shape in expected.items():
        v = state[k]
        if tuple(v.shape) != shape:
            raise GenevalError(f"CLIP tensor {k} has shape {tuple(v.shape)}, expected {shape}")
        out[k[len("visual.") :]] = v.to(torch.float32)
    return out


def load_openai_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of an OpenAI CLIP file: TorchScript archive (the official .pt), safetensors or a state dict.

    Args:
        path: the weight file. TorchScript is read with torch.jit.load, which rebuilds modules
            without running Python pickles; plain state dicts go through torch.load(weights_only=True).
    """
    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(p), device="cpu"))
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            scripted = any("/code/" in n for n in z.namelist())
        if scripted:
            try:
                module = torch.jit.load(str(p), map_location="cpu")
            except RuntimeError as e:
                raise GenevalError(f"cannot load {p} as TorchScript: {e}") from None
            return {k: v for k, v in module.state_dict().items() if k not in _NON_TENSOR_KEYS}
    from geneval.models.safe_load import torch_load

    state = torch_load(p, what="state dict")  # pickled code is refused in one line, never run
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise GenevalError(f"{p} does not hold a state dict")
    return state


class CLIPFeatures(nn.Module):
    """Frozen CLIP image encoder: uint8 images in, {"clip_embed": N×768 unit vectors} out.

    Args:
        visual: a loaded tower from `build_visual`.
        resize: ``pil`` (exact, cmmd) or ``torch`` (fast).
        provenance: weight file facts for `describe`.
    """

    feature = "clip_embed"

    def __init__(
        self,
        visual: nn.Module,
        resize: str = "pil",
        provenance: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.visual = visual
        self.resize = resize
        size = visual.image_size
        self.input_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.dims = int(visual.output_dim)
        self.provenance = dict(provenance or {})
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> CLIPFeatures:
        """Always stays in eval mode: a feature network defines the metric."""
        return super().train(False)

    def preprocess(self, images: Any) -> torch.Tensor:
        """uint8 images → centre square → N×3×336×336 CLIP-normalised float32 on the model's device.

        Args:
            images: uint8 batch (NHWC numpy or NCHW/NHWC tensor); grayscale is repeated to RGB.
        """
        device = self.visual.class_embedding.device
        x = center_crop_square(to_nchw_uint8(images)).contiguous()
        if self.resize == "torch":
            x = x.to(device)  # resize where the network runs; PIL works on the CPU copy
        x = resize_bicubic(x, self.input_size, self.resize)
        return normalize(x.to(device), CLIP_MEAN, CLIP_STD)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings of a preprocessed batch.

        Args:
            x: N×3×336×336 normalised float32.
        """
        return F.normalize(self.visual(x), dim=-1)

    def forward(self, images: Any) -> dict[str, torch.Tensor]:
        """{"clip_embed": N×768 float32} of a uint8 batch."""
        return {self.feature: self.embed(self.preprocess(images)).float()}

    def describe(self) -> dict[str, Any]:
        """What shapes these features, for results."""
        return {
            "network": "clip",
            "feature": self.feature,
            "dims": self.dims,
            "arch": "CLIP ViT-L/14@336px (OpenAI)",
            "library": f"open_clip {_open_clip().__version__} (VisionTransformer, QuickGELU)",
            "resize": self.resize,
            "crop": "centre square",
            "input_size": self.input_size,
            "mean": CLIP_MEAN,
            "std": CLIP_STD,
            "normalised": "L2",
            **self.provenance,
        }


def build_clip(
    weights: str | Path | Mapping[str, torch.Tensor] | None = None,
    resize: str = "pil",
    device: str | torch.device = "cpu",
    allow_download: bool = False,
    **overrides: Any,
) -> CLIPFeatures:
    """CLIP ViT-L/14@336 image features from OpenAI's weights (resolved through geneval.weights when not given).

    Args:
        weights: a path (official .pt, open_clip .bin, .safetensors), an OpenAI-layout state dict, or None.
        resize: ``pil`` (exact) or ``torch`` (fast).
        device: where the network runs.
        allow_download: let weight resolution download OpenAI's file when online.
        overrides: vision tower overrides (tests only).
    Raises:
        MissingWeightsError: weights not given and not found (names file, hash, URL, destination).
    """
    from geneval.weights import resolve_weight_file

    if resize not in RESIZE_MODES:
        raise GenevalError(f"unknown resize {resize!r}: choose one of {', '.join(RESIZE_MODES)}")
    if isinstance(weights, Mapping):
        state, provenance = weights, {"weights": "state dict given in memory"}
    else:
        resolved = resolve_weight_file(WEIGHTS, weights, allow_download=allow_download)
        state, provenance = load_openai_file(resolved.path), resolved.describe()
    visual = build_visual(**overrides)
    visual.load_state_dict(convert_openai_state(state, visual), strict=True)
    return CLIPFeatures(visual.to(device), resize, provenance)
