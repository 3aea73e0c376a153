"""Named datasets that exist offline, as uint8 NHWC arrays + labels.

- ``fashion-mnist`` / ``fashion-mnist-test``: Debian's ``dataset-fashion-mnist`` (IDX files),
  28x28 grayscale, optionally zero-padded to 32x32 as the demo models use.
- ``digits``: scikit-learn's bundled 8x8 digits (0..16 scaled to 0..255).
- ``skimage``: scikit-image's colour sample images (astronaut, coffee, chelsea, rocket, ...).

Spelled as ``name`` or ``name:split`` on the command line, e.g. ``fashion-mnist:test``.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from geneval.errors import GenevalError

FASHION_MNIST_DIRS = (
    os.environ.get("GENEVAL_FASHION_MNIST", ""),
    "/usr/share/datasets/fashion-mnist",
)
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
SKIMAGE_COLOR_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "retina", "immunohistochemistry")


@dataclass(frozen=True)
class Dataset:
    """An in-memory dataset: uint8 images (N, H, W, C) and integer labels (N,) or None."""

    name: str
    images: np.ndarray
    labels: np.ndarray | None
    source: str


def _read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file as written by LeCun's MNIST format."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise GenevalError(f"cannot read IDX file {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise GenevalError(f"{path} is not an IDX file (bad magic)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = int(np.prod(dims))
    if data[2] != 0x08 or len(data) - offset != count:
        raise GenevalError(f"{path}: truncated or non-uint8 IDX file")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def fashion_mnist_dir() -> Path:
    for d in FASHION_MNIST_DIRS:
        if d and (Path(d) / "train-images-idx3-ubyte.gz").exists():
            return Path(d)
    raise GenevalError(
        "Fashion-MNIST not found: install Debian's package (apt-get install dataset-fashion-mnist) "
        "or point GENEVAL_FASHION_MNIST at a folder holding train-images-idx3-ubyte.gz"
    )


def load_fashion_mnist(split: str = "train", pad_to: int | None = 32) -> Dataset:
    """Fashion-MNIST as uint8 (N, H, W, 1); zero-padded to `pad_to` (None keeps 28x28)."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise GenevalError(f"unknown Fashion-MNIST split {split!r}: use train or test")
    root = fashion_mnist_dir()
    images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    if pad_to is not None and pad_to != images.shape[1]:
        p = pad_to - images.shape[1]
        if p < 0:
            raise GenevalError(f"pad_to={pad_to} is smaller than the 28x28 images")
        images = np.pad(images, ((0, 0), (p // 2, p - p // 2), (p // 2, p - p // 2)))
    return Dataset(f"fashion-mnist:{split}", images[..., None], labels, str(root))


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits as uint8 (1797, 8, 8, 1)."""
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return Dataset("digits", images, d.target.astype(np.int64), "sklearn.datasets.load_digits")


def load_skimage(names: tuple[str, ...] = SKIMAGE_COLOR_IMAGES) -> list[np.ndarray]:
    """scikit-image's colour sample images, each uint8 (H, W, 3), sizes differ."""
    from skimage import data

    out = []
    for n in names:
        img = np.asarray(getattr(data, n)())
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        out.append(img[..., :3].astype(np.uint8))
    return out


DATASETS: dict[str, Callable[[], Dataset]] = {
    "fashion-mnist": lambda: load_fashion_mnist("train"),
    "fashion-mnist:train": lambda: load_fashion_mnist("train"),
    "fashion-mnist:test": lambda: load_fashion_mnist("test"),
    "digits": load_digits,
}


def load_dataset(name: str) -> Dataset:
    """Load a named offline dataset (see module docstring)."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise GenevalError(f"unknown dataset {name!r}: known are {', '.join(sorted(DATASETS))}") from None
    return loader()
