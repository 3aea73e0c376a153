"""Where images (or their statistics) come from: `open_source(spec)` → a streaming `Source`.

A spec is one of:
  - a folder of images (recursive) or a `.zip` of images;
  - an ADM sample `.npz` (`arr_0`, optional `arr_1` labels), an ADM reference batch `.npz`
    (`arr_0` + `mu/sigma/mu_s/sigma_s`) or a statistics `.npz` (`mu`, `sigma`: pytorch-fid);
  - a `.npy` image array (NHWC, NCHW or NHW);
  - an offline dataset name, optionally sliced: `fashion-mnist:test`, `digits`,
    `fashion-mnist:test[0:1000]`;
  - an in-memory numpy array or torch tensor (Python API).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from geneval.errors import GenevalError
from geneval.sources.arrays import FLOAT_RANGES, ArraySource, NpySource
from geneval.sources.base import ReadReport, Source
from geneval.sources.images import IMAGE_EXTENSIONS, FolderSource, ZipSource
from geneval.sources.npz import NpzSource

__all__ = ["open_source", "Source", "ReadReport", "ArraySource", "FolderSource", "ZipSource", "NpzSource", "NpySource"]

_SLICE = re.compile(r"^(?P<name>[^\[\]]+)\[(?P<start>\d*):(?P<stop>\d*)\]$")


def open_source(spec: Any, *, labels: Any = None, layout: str = "auto", float_range: str | None = None) -> Source:
    """Open images or statistics for evaluation without decoding anything yet.

    Args:
        spec: a path (folder, .zip, .npz, .npy), a dataset name (`fashion-mnist:test[0:1000]`),
            a numpy array / torch tensor of images, or an already opened `Source`.
        labels: class labels for an in-memory array (ignored otherwise).
        layout: "auto", "nhwc", "nchw" or "nhw" for arrays (auto infers from the shape).
        float_range: "0,1" or "-1,1" to accept float pixel arrays (rejected otherwise).
    """
    if isinstance(spec, Source):
        return spec
    if float_range is not None and float_range not in FLOAT_RANGES:  # a typo fails even where no float array needs it
        raise GenevalError(f"unknown float range {float_range!r}: use '0,1' or '-1,1'")
    if not isinstance(spec, (str, os.PathLike)):
        return ArraySource(spec, labels, layout=layout, float_range=float_range)
    text = os.fspath(spec)
    if not text.strip():  # Path("") is the current folder: never read it by accident
        raise GenevalError("empty path given where images or statistics were expected")
    path = Path(text).expanduser()
    if path.exists():
        return _open_path(path, layout, float_range)
    dataset = _open_dataset(text)
    if dataset is not None:
        return dataset
    raise GenevalError(f"not found: {text} (no such file or folder, and not a dataset name)")


def _open_path(path: Path, layout: str, float_range: str | None) -> Source:
    if path.is_dir():
        return FolderSource(path)
    if not os.access(path, os.R_OK):
        raise GenevalError(f"cannot read {path}: permission denied")
    if path.stat().st_size == 0:
        raise GenevalError(f"{path} is an empty file")
    suffix = path.suffix.lower()
    if suffix == ".zip":
        return ZipSource(path)
    if suffix == ".npz":
        return NpzSource(path, layout=layout, float_range=float_range)
    if suffix == ".npy":
        return NpySource(path, layout=layout, float_range=float_range)
    if suffix in IMAGE_EXTENSIONS:
        raise GenevalError(f"{path} is a single image; pass the folder (or a .zip/.npz) holding the image set")
    raise GenevalError(f"{path}: unsupported input type {suffix or '(no suffix)'}: use a folder, .zip, .npz or .npy")


def _open_dataset(text: str) -> Source | None:
    from geneval.sources.datasets import DATASETS, load_dataset

    m = _SLICE.match(text)
    name = m.group("name") if m else text
    if name not in DATASETS:
        return None
    ds = load_dataset(name)
    images, labels = ds.images, ds.labels
    if m:
        n = len(images)
        start = int(m.group("start") or 0)
        stop = int(m.group("stop") or n)
        if not 0 <= start < stop <= n:
            raise GenevalError(f"{text}: slice [{start}:{stop}] is empty or outside the {n} images of {name}")
        images = images[start:stop]
        labels = None if labels is None else labels[start:stop]
    src = ArraySource(np.ascontiguousarray(images), labels, spec=text, kind="dataset")
    return src
