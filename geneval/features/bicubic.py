"""Bicubic resizing of uint8 image batches for the ViT feature networks (DINOv2, CLIP).

Two paths, recorded in every result as ``resize``:

- ``pil`` (exact): each image through ``PIL.Image.resize(BICUBIC)`` on its uint8 RGB form, the
  result is uint8 again. This is what dgm-eval does (torchvision ``Resize`` on PIL images),
  EDM2's ``resize_mode='pil'`` (its "reference implementation that matches dgm-eval exactly")
  and google-research/cmmd (``_center_crop_and_resize`` with PIL BICUBIC before the model).
- ``torch`` (fast): ``F.interpolate(x.float(), mode='bicubic', antialias=True)`` on the batch, left
  in float (neither rounded nor clamped), as EDM2's default ``resize_mode='torch'``. PyTorch's
  antialiased bicubic uses the same a = −0.5 kernel and support scaling as PIL, so the two differ
  by PIL's uint8 rounding and its fixed-point weights; the measured difference is in the
  docstring of `geneval.features.networks`.

torch-fidelity's ``dinov2-vit-*`` extractors instead resize with TF1 legacy bilinear (the
Inception resize): their FD-DINOv2 numbers are not comparable with these.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from geneval.errors import GenevalError

RESIZE_MODES = ("pil", "torch")


def center_crop_square(x: torch.Tensor) -> torch.Tensor:
    """The central square of an N×C×H×W batch (cmmd's crop: top = (H−L)//2, left = (W−L)//2).

    Args:
        x: N×C×H×W images.
    """
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return x[..., top : top + side, left : left + side]


def resize_bicubic(x: torch.Tensor, size: int, mode: str = "pil") -> torch.Tensor:
    """Resize uint8 N×3×H×W images to N×3×size×size float32 in [0, 255] (see module docstring).

    Args:
        x: uint8 N×3×H×W tensor (any device; ``pil`` works on CPU and returns to x's device).
        size: output side in pixels.
        mode: ``pil`` (exact, per image, uint8 output) or ``torch`` (fast, batched, float output).
    """
    if mode not in RESIZE_MODES:
        raise GenevalError(f"unknown resize {mode!r}: choose one of {', '.join(RESIZE_MODES)}")
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
        raise GenevalError(f"bicubic resize needs uint8 N×3×H×W images, got {x.dtype} {tuple(x.shape)}")
    if mode == "torch":
        return F.interpolate(x.to(torch.float32), size=(size, size), mode="bicubic", antialias=True)
    from PIL import Image

    arr = x.permute(0, 2, 3, 1).cpu().numpy()
    out = np.stack([np.asarray(Image.fromarray(a, "RGB").resize((size, size), Image.Resampling.BICUBIC)) for a in arr])
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(x.device, torch.float32)


def normalize(x: torch.Tensor, mean: tuple[float, float, float], std: tuple[float, float, float]) -> torch.Tensor:
    """(x/255 − mean)/std per channel, in float32, the order EDM2 and torchvision apply it.

    Args:
        x: N×3×H×W float in [0, 255].
        mean: per-channel mean of [0, 1] images.
        std: per-channel standard deviation.
    """
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).reshape(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).reshape(1, 3, 1, 1)
    return (x.to(torch.float32) / 255 - m) / s
