"""LPIPS through the `lpips` package: reconstruction distance and within-class sample diversity.

The v0.1 linear heads ship inside the `lpips` wheel. The backbone (torchvision's ImageNet
AlexNet / VGG16 / SqueezeNet 1.1 features) does not: `lpips.LPIPS(pnet_rand=True)` builds it
untrained, and we load the torchvision file that `geneval.weights` resolves (hub cache,
geneval cache or an explicit path) into it, strictly. `random_backbone=True` keeps the random
trunk (seeded) — for testing mechanics only; its numbers mean nothing perceptually.

Inputs are uint8 NHWC (or float NCHW in [-1, 1]); grayscale is repeated to three channels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from geneval.errors import GenevalError
from geneval.metrics.registry import MetricSpec, register

LPIPS_NETS = ("alex", "vgg", "squeeze")
DEFAULT_PAIRS_PER_CLASS = 200


def resolve_backbone(net: str, path: str | Path | None = None) -> Path:
    """The torchvision backbone file for `net`; raises MissingWeightsError naming file, hash and place."""
    if net not in LPIPS_NETS:
        raise GenevalError(f"unknown LPIPS net {net!r}: use one of {', '.join(LPIPS_NETS)}")
    from geneval.weights import resolve_torchvision_backbone

    return resolve_torchvision_backbone(net, path)


def load_backbone_state(pnet: nn.Module, tv_state: dict[str, torch.Tensor], where: str) -> None:
    """Copy torchvision `features.{i}.*` tensors into lpips' sliced trunk (`slice{k}.{i}.*`), strictly.

    Args:
        pnet: the `net` attribute of an lpips.LPIPS model.
        tv_state: a torchvision AlexNet / VGG16 / SqueezeNet 1.1 state dict.
        where: the file, for messages.
    """
    own = pnet.state_dict()
    mapped, missing, reshaped = {}, [], []
    for key, t in own.items():
        _, idx, rest = key.split(".", 2)  # slice{k}.{i}.{param...}
        src = f"features.{idx}.{rest}"
        if src not in tv_state:
            missing.append(src)
        elif tuple(tv_state[src].shape) != tuple(t.shape):
            reshaped.append(src)
        else:
            mapped[key] = tv_state[src]
    if missing or reshaped:
        raise GenevalError(f"{where} does not fit the LPIPS backbone: missing {missing[:4]}, other shapes {reshaped[:4]}")
    pnet.load_state_dict(mapped, strict=True)


def build_lpips(
    net: str = "alex", backbone: str | Path | None = None, random_backbone: bool = False, device: torch.device | str = "cpu", seed: int = 0
) -> nn.Module:
    """A frozen lpips.LPIPS (v0.1 heads) with its torchvision backbone loaded from a resolved file.

    Args:
        net: alex | vgg | squeeze.
        backbone: explicit backbone weight file; None looks in torch's hub cache and geneval's cache.
        random_backbone: keep a seeded random trunk (tests of mechanics only).
        device: torch device.
        seed: seed of the random trunk (used only with random_backbone).
    """
    import lpips

    if net not in LPIPS_NETS:
        raise GenevalError(f"unknown LPIPS net {net!r}: use one of {', '.join(LPIPS_NETS)}")
    path = None if random_backbone else resolve_backbone(net, backbone)
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")  # torchvision's `pretrained=` deprecation inside lpips
        torch.manual_seed(seed)  # the random trunk is drawn from the global RNG: pin it, then restore
        model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
    if path is not None:
        from geneval.models.safe_load import torch_load

        state = torch_load(path, what="LPIPS backbone")  # one line naming the file; never torch's advice to unpickle code
        load_backbone_state(model.net, state, str(path))
    model.eval().requires_grad_(False)
    return model.to(device)


def _to_pm1(images: Any, device: torch.device) -> torch.Tensor:
    """uint8 NHWC (numpy/tensor) or float NCHW in [-1, 1] → float32 NCHW in [-1, 1] with 3 channels."""
    t = torch.as_tensor(images)
    if t.dtype == torch.uint8:
        if t.ndim != 4:
            raise GenevalError(f"LPIPS needs N x H x W x C uint8 images, got shape {tuple(t.shape)}")
        t = t.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    t = t.to(device, torch.float32)
    if t.shape[1] == 1:
        t = t.repeat(1, 3, 1, 1)
    elif t.shape[1] == 4:
        t = t[:, :3]
    if t.shape[1] != 3:
        raise GenevalError(f"LPIPS needs 1, 3 or 4 channel images, got {t.shape[1]}")
    return t


@torch.inference_mode()
def lpips_distance(model: nn.Module, x: Any, y: Any, batch_size: int = 64) -> np.ndarray:
    """LPIPS of each pair (N,), float64.

    Args:
        model: from `build_lpips`.
        x: images, uint8 NHWC or float NCHW in [-1, 1].
        y: images of the same shape.
        batch_size: pairs per forward pass.
    """
    if tuple(np.shape(x)) != tuple(np.shape(y)):
        raise GenevalError(f"LPIPS: image sets differ in size: {tuple(np.shape(x))} vs {tuple(np.shape(y))}")
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(x), batch_size):
        a, b = _to_pm1(x[s : s + batch_size], device), _to_pm1(y[s : s + batch_size], device)
        try:
            out.append(model(a, b).flatten().double().cpu())
        except RuntimeError as e:
            if "too small" not in str(e):
                raise
            # AlexNet's stride-4 stem and two pools need about 31 px per side.
            raise GenevalError(
                f"images of {a.shape[2]}x{a.shape[3]} are too small for the LPIPS "
                f"{getattr(model, 'pnet_type', '')} backbone; pad or resize them (alex needs >= 31 px)"
            ) from None
    return torch.cat(out).numpy() if out else np.zeros(0)


def sample_pairs(labels: np.ndarray, pairs_per_class: int, seed: int) -> dict[int, np.ndarray]:
    """Per class, `pairs_per_class` random ordered pairs (i, j), i ≠ j, drawn with replacement.

    Args:
        labels: (N,) integer labels.
        pairs_per_class: pairs drawn in every class that has at least two images.
        seed: seed of the numpy Generator (classes visited in sorted order).
    """
    rng = np.random.default_rng(seed)
    out = {}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if idx.size < 2:
            continue
        i = rng.integers(0, idx.size, pairs_per_class)
        j = rng.integers(0, idx.size - 1, pairs_per_class)
        j = j + (j >= i)  # skip i itself, keeping j uniform over the others
        out[int(c)] = np.stack([idx[i], idx[j]], axis=1)
    return out


@dataclass(frozen=True)
class LpipsDiversity:
    """Mean pairwise LPIPS within classes (higher = more diverse samples).

    Args:
        value: mean over classes of each class's mean pair distance.
        std: std (ddof 0) of the per-class means.
        n_pairs: pairs evaluated in total.
        per_class: class → mean distance.
        skipped_classes: classes with fewer than two images.
    """

    value: float
    std: float
    n_pairs: int
    pairs_per_class: int
    seed: int
    net: str
    per_class: dict[int, float] = field(default_factory=dict)
    skipped_classes: list[int] = field(default_factory=list)


def lpips_diversity(
    images: np.ndarray,
    labels: np.ndarray | None,
    model: nn.Module,
    net: str,
    pairs_per_class: int = DEFAULT_PAIRS_PER_CLASS,
    seed: int = 0,
    batch_size: int = 64,
) -> LpipsDiversity:
    """Sample diversity: mean LPIPS between random pairs of images of the same class.

    Args:
        images: uint8 (N, H, W, C) samples.
        labels: (N,) class labels; None treats all samples as one class (unconditional models).
        model: from `build_lpips`; `net` names its backbone for the record.
        net: alex | vgg | squeeze.
        pairs_per_class: random ordered pairs (i ≠ j, with replacement) per class; 200 by default,
            i.e. 2000 LPIPS evaluations for 10 classes.
        seed: seed of the pair draw.
        batch_size: pairs per forward pass.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise GenevalError(f"lpips_div needs uint8 N x H x W x C samples, got {images.dtype} {images.shape}")
    lab = np.zeros(len(images), np.int64) if labels is None else np.asarray(labels).astype(np.int64).reshape(-1)
    if lab.shape[0] != images.shape[0]:
        raise GenevalError(f"lpips_div: {images.shape[0]} images but {lab.shape[0]} labels")
    if pairs_per_class < 1:
        raise GenevalError(f"pairs_per_class must be >= 1, got {pairs_per_class}")
    pairs = sample_pairs(lab, pairs_per_class, seed)
    if not pairs:
        raise GenevalError("lpips_div needs at least one class with two or more samples")
    allp = np.concatenate(list(pairs.values()))
    d = lpips_distance(model, images[allp[:, 0]], images[allp[:, 1]], batch_size)
    per_class, start = {}, 0
    for c, p in pairs.items():
        per_class[c] = float(d[start : start + len(p)].mean())
        start += len(p)
    means = np.array(list(per_class.values()))
    skipped = sorted(int(c) for c in np.unique(lab) if int(c) not in pairs)
    return LpipsDiversity(float(means.mean()), float(means.std()), len(allp), pairs_per_class, seed, net, per_class, skipped)


for _spec in (
    MetricSpec("lpips", False, (), True, "lpips", "LPIPS (v0.1) between originals and reconstructions, per image, mean"),
    MetricSpec("lpips_div", True, (), False, "lpips_div", "Sample diversity: mean LPIPS between random same-class sample pairs"),
):
    register(_spec)
del _spec


def lpips_div(
    images: np.ndarray,
    labels: np.ndarray | None = None,
    net: str = "alex",
    backbone: str | Path | None = None,
    pairs_per_class: int = DEFAULT_PAIRS_PER_CLASS,
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> LpipsDiversity:
    """`lpips_div` for pipelines: resolve the backbone (MissingWeightsError if absent), build LPIPS, score diversity.

    Args:
        images: uint8 (N, H, W, C) samples (H, W >= 31 for alex).
        labels: (N,) class labels or None (one class).
        net: alex | vgg | squeeze; backbone: explicit torchvision weight file.
        pairs_per_class: random same-class pairs per class (default 200).
        seed: seed of the pair draw.
        device: torch device.
        batch_size: pairs per forward pass.
    """
    model = build_lpips(net, backbone, device=device)
    return lpips_diversity(images, labels, model, net, pairs_per_class, seed, batch_size)
