"""Feature networks in the execution core: which ones the metrics need, their preflight, one extractor for all.

Every network is one more consumer of the same uint8 batch: TF-Inception (geneval's own, with
its resize modes and precisions) plus any registered network a metric or `--features` asks for
(DINOv2, CLIP; geneval.features.networks). Their outputs are merged into one dict per batch, so
shards, caches and merges treat every layer alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from geneval.errors import GenevalError


def networks_for(metrics: Iterable[str], features: str | None = None) -> list[Any]:
    """The non-Inception networks to run: those the metrics' layers come from, plus `--features`.

    Args:
        metrics: expanded metric names.
        features: the `--features` list ("inception,dinov2,clip"), or None.
    """
    from geneval.features.networks import network_for_feature, parse_features
    from geneval.metrics.registry import get_metric

    nets: dict[str, Any] = {}
    for m in metrics:
        for layer in get_metric(m).needs:
            net = network_for_feature(layer)
            if net.name != "inception":
                nets.setdefault(net.name, net)
    if features:
        for net in parse_features(features):
            if net.name != "inception":
                nets.setdefault(net.name, net)
    return list(nets.values())


def check_networks(nets: list[Any]) -> list[dict[str, Any]]:
    """Preflight: each network's library imports and its weight file is found (MissingWeightsError names file, hash, source)."""
    return [{"network": n.name, **n.check()} for n in nets]


class MultiExtractor:
    """TF-Inception plus other networks over the same batches; `extract` returns every layer.

    Args:
        inception: a geneval FeatureExtractor.
        nets: registered FeatureNetworks to build (frozen) on `device`.
        device: torch device.
    """

    def __init__(self, inception: Any, nets: list[Any], device: str) -> None:
        self.inception = inception
        self.modules = [(n, n.build(device=device)) for n in nets]
        self.info = dict(inception.info)
        self.info["networks"] = [m.describe() if hasattr(m, "describe") else n.describe() for n, m in self.modules]

    def extract(self, images: np.ndarray) -> dict[str, Any]:
        import torch

        out = dict(self.inception.extract(images))
        with torch.inference_mode():
            for _net, module in self.modules:
                feats = module(images)
                for k, v in feats.items():
                    if k in out:
                        raise GenevalError(f"feature {k!r} is produced by two networks")
                    out[k] = v.float().cpu()
        return out
