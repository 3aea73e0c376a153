"""Batched, streaming TF-Inception feature extraction: device, precision, progress.

`FeatureExtractor(...).extract(batch)` gives float32 CPU tensors for one uint8 batch;
`.extract_all(batches)` streams an iterable of batches into numpy arrays with a progress bar
on stderr. Precision modes:

- ``exact``: fp32 with TF32 disabled (inside a scope; the global flags are restored after).
- ``tf32``: fp32 storage, TF32 matmuls/convolutions allowed (CUDA; identical to exact on CPU).
- ``fast``: fp16 autocast + channels_last + torch.compile (CUDA only; on CPU falls back to
  exact with a warning).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from geneval.errors import GenevalError
from geneval.features.inception import FEATURES_NAME, TFInception, build_inception
from geneval.features.resize import MODES, preprocess, to_nchw_uint8
from geneval.vocab import PRECISIONS
from geneval.weights import ResolvedWeights, resolve_inception

DEFAULT_BATCH_SIZE = 64

# Built models keyed by (weights file, hash, device, fast): building costs ~1 s (compiling far
# more), so extractors share them; the models are frozen and stateless.
_MODELS: dict[tuple[str, str, str, bool], torch.nn.Module] = {}


@contextlib.contextmanager
def tf32_scope(enabled: bool) -> Iterator[None]:
    """Allow or forbid reduced-precision fp32 (TF32 matmuls/convolutions) inside the block only."""
    precision = torch.get_float32_matmul_precision()
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    # "highest" also keeps CPU matmuls off bf16 paths that "medium" would allow.
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _model_for(weights: ResolvedWeights, device: torch.device, fast: bool = False) -> torch.nn.Module:
    key = (str(weights.path), weights.sha256, str(device), fast)
    model = _MODELS.get(key)
    if model is None:
        model = build_inception(weights.load_state_dict())
        if fast:
            model = torch.compile(model.to(device, memory_format=torch.channels_last))
        else:
            model = model.to(device)
        _MODELS[key] = model
    return model


class FeatureExtractor:
    """TF-Inception features (pool3, spatial, logits when available) of uint8 image batches.

    Args:
        mode: preprocessing: ``tf`` (ADM reference), ``pytorch`` (pytorch-fid), ``clean`` (clean-fid).
        device: torch device; default CUDA when available, else CPU.
        precision: ``exact``, ``tf32`` or ``fast`` (see module docstring).
        weights: a weight file path or a `ResolvedWeights`; None resolves the default chain.
        need_logits: require the 1008-way logits (Inception Score); raises MissingWeightsError if absent.
        batch_size: images per forward pass; larger inputs to `extract` are split.
        allow_download: let weight resolution download pytorch-fid's file when online.
    """

    def __init__(
        self,
        mode: str = "tf",
        device: torch.device | str | None = None,
        precision: str = "exact",
        weights: str | ResolvedWeights | None = None,
        need_logits: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        allow_download: bool = False,
    ):
        if mode not in MODES:
            raise GenevalError(f"unknown resize mode {mode!r}: choose one of {', '.join(MODES)}")
        if precision not in PRECISIONS:
            raise GenevalError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        if batch_size < 1:
            raise GenevalError(f"batch_size must be ≥ 1, got {batch_size}")
        self.device = torch.device(device) if device is not None else _default_device()
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise GenevalError(f"device {self.device} requested but CUDA is not available")
        if precision == "fast" and self.device.type != "cuda":
            warnings.warn("precision 'fast' needs CUDA; using 'exact' on " + str(self.device), stacklevel=2)
            precision = "exact"
        if isinstance(weights, ResolvedWeights):
            resolved = weights
        else:
            resolved = resolve_inception(weights, need_logits=need_logits, allow_download=allow_download)
        if need_logits and not resolved.has_logits:
            raise GenevalError(f"weights {resolved.path} have no logits layer, which was requested")
        self.mode = mode
        self.precision = precision
        self.batch_size = batch_size
        self.weights = resolved
        self.model: TFInception = _model_for(resolved, self.device)
        self._forward = _model_for(resolved, self.device, fast=True) if precision == "fast" else self.model
        self.info: dict[str, Any] = {
            "features": FEATURES_NAME,
            "weights_sha256": resolved.sha256,
            "weights_source": resolved.source,
            "weights_path": str(resolved.path),
            "mode": mode,
            "precision": precision,
            "has_logits": resolved.has_logits,
            "device": str(self.device),
        }

    @property
    def outputs(self) -> tuple[str, ...]:
        """Names of the feature arrays `extract` returns."""
        return ("pool3", "spatial", "logits") if self.weights.has_logits else ("pool3", "spatial")

    def _run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.precision == "fast":
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.float16):
                out = self._forward(x)
        else:
            with tf32_scope(self.precision == "tf32"):
                out = self._forward(x)
        return {k: v.float().cpu() for k, v in out.items()}

    def extract(self, images: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of one uint8 batch (NHWC numpy/tensor or NCHW tensor, any size) as float32 CPU tensors."""
        x = to_nchw_uint8(images)
        parts: list[dict[str, torch.Tensor]] = []
        with torch.inference_mode():
            for start in range(0, x.shape[0], self.batch_size):
                chunk = preprocess(x[start : start + self.batch_size], self.mode, device=self.device)
                parts.append(self._run(chunk))
        if len(parts) == 1:
            return parts[0]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def extract_all(
        self,
        batches: Iterable[np.ndarray | torch.Tensor],
        progress: str | bool = True,
        total: int | None = None,
        *,
        initial: int = 0,
        on_batch: Callable[[dict[str, np.ndarray]], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Stream batches through `extract`; returns float32 numpy arrays (N×D) per output.

        Args:
            batches: iterable of uint8 batches.
            progress: auto | always | never (geneval.progress; True/False = auto/never).
            total: number of images expected, for the progress bar.
            initial: images already extracted elsewhere (a resumed checkpoint): the bar starts
                there, and no new images is then not an error (returns {}).
            on_batch: called with each batch's features once extracted (checkpointing).
        """
        from geneval.progress import Progress

        chunks: dict[str, list[np.ndarray]] = {}
        n = 0
        with Progress(total, "inception", "img", progress, initial=initial) as bar:
            for batch in batches:
                feats = {k: v.numpy() for k, v in self.extract(batch).items()}
                for k, v in feats.items():
                    chunks.setdefault(k, []).append(v)
                if on_batch is not None:
                    on_batch(feats)
                count = next(iter(feats.values())).shape[0]
                n += count
                bar.update(count)
        if n == 0 and initial == 0:
            raise GenevalError("no images to extract features from (the input yielded 0 images)")
        return {k: np.concatenate(v, axis=0) for k, v in chunks.items()}
