"""Preprocessing modes: uint8 images of any size → N×3×299×299 float32 in TF-Inception's input range.

- ``tf`` (default, ADM / TF reference): [0,255] floats → TF1 legacy ``resize_bilinear``
  (align_corners=False: source = dst·scale, no half-pixel offset, no antialias) → (x−128)/128.
- ``pytorch`` (pytorch-fid): x/255 → ``F.interpolate(bilinear, align_corners=False)`` → 2x−1.
- ``clean`` (clean-fid): PIL bicubic on float32 per channel (mode "F"), clipped to [0,255],
  never quantised → (x−128)/128. Per-image PIL is inherent to this mode.

Numbers from different modes are not comparable: every result records its mode.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from geneval.errors import GenevalError
from geneval.vocab import MODES

SIZE = 299


def to_nchw_uint8(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images as an N×3×H×W tensor: grayscale repeated to RGB, alpha dropped.

    Args:
        images: numpy arrays are NHWC (or N×H×W grayscale); tensors are NCHW when dim 1 has
            1, 3 or 4 channels, else NHWC when the last dim does (or N×H×W grayscale).
    """
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise GenevalError(f"images must be uint8 (0..255), got {images.dtype}")
        arr = np.ascontiguousarray(images)
        x = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
        channels_last = True
    elif isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise GenevalError(f"images must be uint8 (0..255), got {images.dtype}")
        x = images
        channels_last = not (x.ndim == 4 and x.shape[1] in (1, 3, 4))
    else:
        raise GenevalError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")
    if x.ndim == 3:  # N×H×W grayscale
        x = x.unsqueeze(-1) if channels_last else x.unsqueeze(1)
    if x.ndim != 4:
        raise GenevalError(f"images must be N×H×W×C (or N×C×H×W), got shape {tuple(images.shape)}")
    if channels_last:
        x = x.permute(0, 3, 1, 2)
    c = x.shape[1]
    if c == 1:
        x = x.expand(-1, 3, -1, -1)
    elif c == 4:
        x = x[:, :3]
    elif c != 3:
        raise GenevalError(f"images must have 1, 3 or 4 channels, got {c} (shape {tuple(images.shape)})")
    if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise GenevalError(f"empty image batch: shape {tuple(images.shape)}")
    return x


def _tf1_axis(in_size: int, out_size: int, device: torch.device):
    """Source indices and lerp weights of TF1's legacy bilinear resize along one axis."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)  # TF computes the scale in float
    src = torch.arange(out_size, dtype=torch.float32) * scale
    lo = src.floor().long()
    hi = (lo + 1).clamp_max(in_size - 1)
    frac = src - lo.float()
    return lo.to(device), hi.to(device), frac.to(device)


def resize_tf1_bilinear(x: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """TF1 ``resize_bilinear(align_corners=False)`` of a float N×C×H×W batch (gather + lerp)."""
    _, _, h, w = x.shape
    ylo, yhi, yf = _tf1_axis(h, size, x.device)
    xlo, xhi, xf = _tf1_axis(w, size, x.device)
    # Same operation order as TF's kernel: lerp along x on both rows, then along y. A row's
    # x-lerp does not depend on which output row reads it, so every input row is lerped once
    # (h rows, not 2·size) and the rows are gathered after: the same bits, ~10× less work
    # than gathering four size×size corner images along the innermost axis.
    left = x.index_select(3, xlo)
    rows = x.index_select(3, xhi).sub_(left).mul_(xf).add_(left)
    top = rows.index_select(2, ylo)
    return rows.index_select(2, yhi).sub_(top).mul_(yf.view(size, 1)).add_(top)


def _preprocess_tf(x: torch.Tensor) -> torch.Tensor:
    return resize_tf1_bilinear(x.float()).sub_(128.0).div_(128.0)


def _preprocess_pytorch(x: torch.Tensor) -> torch.Tensor:
    x = F.interpolate(x.float() / 255.0, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return 2.0 * x - 1.0


def _preprocess_clean(x: torch.Tensor) -> torch.Tensor:
    from PIL import Image

    arr = x.cpu().numpy().astype(np.float32)
    out = np.empty((arr.shape[0], 3, SIZE, SIZE), dtype=np.float32)
    for i in range(arr.shape[0]):
        for c in range(3):
            img = Image.fromarray(arr[i, c])  # float32 2-D → PIL mode "F": no quantisation
            out[i, c] = np.asarray(img.resize((SIZE, SIZE), resample=Image.BICUBIC))
    # clean-fid clips the bicubic overshoot back into the pixel range.
    out = np.clip(out, 0.0, 255.0)
    return (torch.from_numpy(out) - 128.0) / 128.0


_MODES = {"tf": _preprocess_tf, "pytorch": _preprocess_pytorch, "clean": _preprocess_clean}


def preprocess(images: np.ndarray | torch.Tensor, mode: str = "tf", device: torch.device | str | None = None) -> torch.Tensor:
    """Resize and scale uint8 images for TF-Inception: N×3×299×299 float32 on `device`.

    Args:
        images: uint8 batch, NHWC numpy / tensor or NCHW tensor, any size, 1/3/4 channels.
        mode: ``tf`` (ADM reference), ``pytorch`` (pytorch-fid) or ``clean`` (clean-fid).
        device: where to compute; defaults to the batch's device.
    """
    if mode not in _MODES:
        raise GenevalError(f"unknown resize mode {mode!r}: choose one of {', '.join(MODES)}")
    x = to_nchw_uint8(images)
    device = torch.device(device) if device is not None else x.device
    if mode == "clean":  # PIL runs on the CPU; only the result moves
        return _preprocess_clean(x.cpu()).to(device)
    return _MODES[mode](x.to(device, non_blocking=True)).contiguous()
