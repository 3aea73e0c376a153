"""Registry of feature networks (``--features inception,dinov2,clip``): one entry per network.

Every network takes the same uint8 image batches and returns ``{feature name: N×D float32}``;
each entry says which features it provides, their dims, its preprocessing, its weight files
(names in `geneval.weights.WEIGHTS`), the library it runs on and how to build it. Built
networks are frozen (eval mode, no grad) and have ``describe()`` for provenance.

================  ======================  =====  ==============================================
network           features (dims)         input  preprocessing
================  ======================  =====  ==============================================
inception         pool3 (2048),           299    geneval.features.resize modes (tf default);
                  spatial (2023),                TF-Inception 2015-12-05 (geneval port)
                  logits (1008, if any)
dinov2            dinov2_cls (1024)       224    bicubic (pil | torch) → ImageNet mean/std →
                                                 DINOv2 ViT-L/14 final-norm CLS token (timm)
dinov2-b14        dinov2_b14_cls (768)    224    same, ViT-B/14
clip              clip_embed (768)        336    centre square → bicubic (pil | torch) → CLIP
                                                 mean/std → OpenAI ViT-L/14@336 → L2-normalised
================  ======================  =====  ==============================================

Resize paths, measured (``pil`` − ``torch``; `benchmarks/resize_paths.py`): 6 skimage.data
images (astronaut, chelsea, coffee, rocket, camera, immunohistochemistry), centre-square-cropped
and brought to 512² as uint8. Resized pixels (0..255): at 224 px max |Δ| 14.3, mean |Δ| 0.27;
at 336 px max 12.0, mean 0.28. The mean is PIL's uint8 rounding; the rare large values are PIL
clipping its uint8 intermediate (it resizes horizontally, stores uint8, then vertically) where
bicubic overshoot meets saturated pixels, which the float torch path keeps (checked: PIL on
float32 'F' images, which has no uint8 intermediate, equals the torch path within 0.004). Features, on random
weights only (the trained files are not available offline): per-image relative L2 difference
≤ 1.5e-3 for DINOv2 ViT-L/14 (LayerScale 1, cosine ≥ 0.999998) and ≤ 7.4e-4 for CLIP
ViT-L/14@336 (cosine ≥ 0.9999997). EDM2 calls the torch path one that "yields almost the same
results"; every result records which path made it.
torch-fidelity's DINOv2 extractors resize TF1-bilinear (the Inception resize)
instead of bicubic: their FD-DINOv2 values differ from dgm-eval / EDM2 and from ours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geneval.errors import GenevalError


@dataclass(frozen=True)
class FeatureNetwork:
    """One registered feature network.

    Args:
        name: registry key (``--features`` value).
        features: names of the feature arrays it returns, with their dims.
        input_size: side of the square network input in pixels.
        preprocessing: how uint8 images become network input (for help and results).
        weights: `geneval.weights.WEIGHTS` names of the files it can load (first = default).
        library: what runs the network; ``extra`` is the pip package it needs, if any.
        resize_modes: accepted ``resize`` values (first = default).
        build: ``build(weights=None, resize=..., device=..., allow_download=False)`` → module.
    """

    name: str
    features: dict[str, int]
    input_size: int
    preprocessing: str
    weights: tuple[str, ...]
    library: str
    extra: str | None
    resize_modes: tuple[str, ...]
    build: Callable[..., nn.Module] = field(repr=False)
    description: str = ""

    @property
    def feature(self) -> str:
        """The main feature (the one FD/CMMD/Vendi use by default)."""
        return next(iter(self.features))

    def describe(self) -> dict[str, Any]:
        """Static facts for results and --help (the built module's describe() adds weights provenance)."""
        return {
            "network": self.name,
            "features": dict(self.features),
            "input_size": self.input_size,
            "preprocessing": self.preprocessing,
            "weights": list(self.weights),
            "library": self.library,
            "resize_modes": list(self.resize_modes),
        }

    def check(self, weights: str | Path | None = None) -> dict[str, Any]:
        """Preflight without loading tensors: library importable and weight file found.

        Args:
            weights: an explicit weight file, else the registry's default chain.
        Raises:
            GenevalError: library missing; MissingWeightsError: weights missing (file, hash, URL, destination).
        """
        if self.extra is not None:
            module = self.extra.split(">")[0].split("=")[0].replace("open_clip_torch", "open_clip")
            try:
                __import__(module)
            except ImportError:
                raise GenevalError(f"feature network {self.name} needs {self.extra}: pip install '{self.extra}'") from None
        if self.name == "inception":
            from geneval.weights import resolve_inception

            r = resolve_inception(weights)
            return {
                "weights_path": str(r.path),
                "weights_sha256": r.sha256,
                "weights_source": r.source,
            }
        from geneval.weights import resolve_weight_file

        return resolve_weight_file(self.weights[0], weights).describe()


class InceptionFeatures(nn.Module):
    """The existing TF-Inception behind the common interface: uint8 → {pool3, spatial[, logits]}.

    Args:
        model: a `TFInception` from `geneval.features.inception.build_inception`.
        mode: `geneval.features.resize` mode (``tf``, ``pytorch``, ``clean``).
        provenance: weight facts for `describe`.
    """

    def __init__(
        self,
        model: nn.Module,
        mode: str = "tf",
        provenance: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.model = model
        self.resize = mode
        self.feature = "pool3"
        self.dims = 2048
        self.provenance = dict(provenance or {})

    def preprocess(self, images: Any) -> torch.Tensor:
        """uint8 images → N×3×299×299 in TF-Inception's input range (`geneval.features.resize.preprocess`)."""
        from geneval.features.resize import preprocess

        return preprocess(images, self.resize, device=next(self.model.parameters()).device)

    @torch.no_grad()
    def forward(self, images: Any) -> dict[str, torch.Tensor]:
        """{pool3, spatial[, logits]} of a uint8 batch."""
        return {k: v.float() for k, v in self.model(self.preprocess(images)).items()}

    def describe(self) -> dict[str, Any]:
        return {
            "network": "inception",
            "feature": "pool3",
            "dims": 2048,
            "arch": "TF-Inception 2015-12-05",
            "library": "geneval (geneval.features.inception)",
            "resize": self.resize,
            **self.provenance,
        }


def _build_inception(
    weights: str | Path | None = None,
    resize: str = "tf",
    device: str | torch.device = "cpu",
    allow_download: bool = False,
    need_logits: bool = False,
) -> InceptionFeatures:
    from geneval.features.inception import build_inception
    from geneval.weights import resolve_inception

    r = resolve_inception(weights, need_logits=need_logits, allow_download=allow_download)
    model = build_inception(r.load_state_dict()).to(device)
    return InceptionFeatures(
        model,
        resize,
        {
            "weights_path": str(r.path),
            "weights_sha256": r.sha256,
            "weights_source": r.source,
        },
    )


def _build_dinov2(arch: str) -> Callable[..., nn.Module]:
    def build(
        weights: Any = None,
        resize: str = "pil",
        device: str | torch.device = "cpu",
        allow_download: bool = False,
        **overrides: Any,
    ) -> nn.Module:
        from geneval.features.dinov2 import build_dinov2

        return build_dinov2(arch, weights, resize, device, allow_download, **overrides)

    return build


def _build_clip(
    weights: Any = None,
    resize: str = "pil",
    device: str | torch.device = "cpu",
    allow_download: bool = False,
    **overrides: Any,
) -> nn.Module:
    from geneval.features.clip import build_clip

    return build_clip(weights, resize, device, allow_download, **overrides)


_DINO_PRE = "bicubic resize to 224 (pil exact | torch fast), x/255, ImageNet mean/std; final-norm CLS token"

NETWORKS: dict[str, FeatureNetwork] = {
    n.name: n
    for n in (
        FeatureNetwork(
            name="inception",
            features={"pool3": 2048, "spatial": 2023, "logits": 1008},
            input_size=299,
            preprocessing="geneval.features.resize modes: tf (TF1 bilinear, ADM), pytorch, clean",
            weights=("pytorch-fid", "torch-fidelity", "fid-helper-trunk"),
            library="geneval TF-Inception port",
            extra=None,
            resize_modes=("tf", "pytorch", "clean"),
            build=_build_inception,
            description="TF-Inception 2015-12-05 (FID, sFID, IS, KID, PRDC)",
        ),
        FeatureNetwork(
            name="dinov2",
            features={"dinov2_cls": 1024},
            input_size=224,
            preprocessing=_DINO_PRE,
            weights=("dinov2-vitl14",),
            library="timm vit_large_patch14_dinov2",
            extra="timm>=1.0",
            resize_modes=("pil", "torch"),
            build=_build_dinov2("vitl14"),
            description="DINOv2 ViT-L/14 (FD-DINOv2, dgm-eval / EDM2)",
        ),
        FeatureNetwork(
            name="dinov2-b14",
            features={"dinov2_b14_cls": 768},
            input_size=224,
            preprocessing=_DINO_PRE,
            weights=("dinov2-vitb14",),
            library="timm vit_base_patch14_dinov2",
            extra="timm>=1.0",
            resize_modes=("pil", "torch"),
            build=_build_dinov2("vitb14"),
            description="DINOv2 ViT-B/14",
        ),
        FeatureNetwork(
            name="clip",
            features={"clip_embed": 768},
            input_size=336,
            preprocessing="centre square, bicubic resize to 336 (pil exact | torch fast), x/255, CLIP mean/std; L2-normalised image embedding",
            weights=("clip-vit-l14-336",),
            library="open_clip ViT-L-14-336 vision tower (QuickGELU)",
            extra="open_clip_torch>=2.24",
            resize_modes=("pil", "torch"),
            build=_build_clip,
            description="CLIP ViT-L/14@336px, OpenAI weights (CMMD, google-research/cmmd)",
        ),
    )
}


def get_network(name: str) -> FeatureNetwork:
    """The registry entry for a network name.

    Args:
        name: ``inception``, ``dinov2``, ``dinov2-b14`` or ``clip``.
    """
    try:
        return NETWORKS[name]
    except KeyError:
        raise GenevalError(f"unknown feature network {name!r}: choose from {', '.join(NETWORKS)}") from None


def parse_features(spec: str) -> list[FeatureNetwork]:
    """Networks of a ``--features`` value such as ``inception,dinov2,clip`` (order kept, duplicates dropped).

    Args:
        spec: comma-separated network names.
    """
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise GenevalError("--features needs at least one network, e.g. inception,dinov2,clip")
    return [get_network(n) for n in dict.fromkeys(names)]


def network_for_feature(feature: str) -> FeatureNetwork:
    """The network that provides a feature name (e.g. ``dinov2_cls`` → dinov2).

    Args:
        feature: a feature name from some entry's ``features``.
    """
    for net in NETWORKS.values():
        if feature in net.features:
            return net
    known = ", ".join(f for n in NETWORKS.values() for f in n.features)
    raise GenevalError(f"no feature network provides {feature!r}: known features are {known}")
