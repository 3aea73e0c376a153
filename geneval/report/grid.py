"""A samples grid PNG: one row per class for conditional models (labelled), else a square grid."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from geneval.errors import GenevalError


def _tile(images: np.ndarray, rows: int, cols: int, pad: int) -> np.ndarray:
    """Place up to rows*cols NHWC uint8 images on a grid with `pad` white pixels between them."""
    n, h, w, c = images.shape
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(min(n, rows * cols)):
        r, q = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        canvas[y : y + h, x : x + w] = images[i]
    return canvas


def grid_image(
    images: np.ndarray,
    labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    per_class: int = 8,
    max_images: int = 64,
    scale: int | None = None,
) -> Image.Image:
    """Build the grid: rows = classes (first `per_class` samples of each, name on the left) or square.

    Args:
        images: uint8 (N, H, W, C) with C in {1, 3}.
        labels: class per image, or None for an unconditional grid.
        class_names: names for label ids (else "class k").
        per_class: columns per class row.
        max_images: cap for the unconditional square grid.
        scale: nearest-neighbour upscaling factor (default: so a cell is at least 64 px).
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] not in (1, 3):
        raise GenevalError(f"grid needs uint8 (N, H, W, 1|3) images, got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise GenevalError("grid needs at least one image")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    h = images.shape[1]
    scale = scale or max(1, -(-64 // h))
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    pad = 2
    if labels is None:
        n = min(len(images), max_images)
        cols = int(np.ceil(np.sqrt(n)))
        rows = int(np.ceil(n / cols))
        return Image.fromarray(_tile(images[:n], rows, cols, pad))

    labels = np.asarray(labels)
    classes = sorted(int(k) for k in np.unique(labels))
    row_arrays = []
    for k in classes:
        sel = images[labels == k][:per_class]
        row_arrays.append(_tile(sel, 1, per_class, pad))
    body = np.concatenate(row_arrays, axis=0)
    font = ImageFont.load_default()
    names = [str(class_names[k]) if class_names is not None and 0 <= k < len(class_names) else f"class {k}" for k in classes]
    label_w = 8 + max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(s, font=font)) for s in names)
    out = Image.new("RGB", (label_w + body.shape[1], body.shape[0]), "white")
    out.paste(Image.fromarray(body), (label_w, 0))
    draw = ImageDraw.Draw(out)
    row_h = body.shape[0] // len(classes)
    for i, name in enumerate(names):
        draw.text((4, i * row_h + row_h // 2 - 5), name, fill="black", font=font)
    return out


def save_grid(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray | None = None, **kwargs) -> Path:
    """Write `grid_image(images, labels, **kwargs)` to a PNG atomically and return its path.

    Args:
        path: destination .png.
        images: uint8 (N, H, W, C).
        labels: class ids or None.
        kwargs: passed to `grid_image` (class_names, per_class, max_images, scale).
    """
    from geneval.runner.output import atomic_open

    path = Path(path)
    img = grid_image(images, labels, **kwargs)
    with atomic_open(path, "wb") as f:
        img.save(f, format="PNG")
    return path
