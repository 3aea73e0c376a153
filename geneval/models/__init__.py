"""Networks (ADM/IDDPM UNet, ADM classifier) and the checkpoint formats that load them.

Public API: `load_model`, `save_native`, `LoadedModel`, `UNetConfig`, `UNetModel`,
`ClassifierConfig`, `EncoderUNet`, `PRESETS`. Submodules are imported lazily.
"""

from __future__ import annotations

_LAZY = {
    "load_model": "geneval.models.formats",
    "save_native": "geneval.models.formats",
    "LoadedModel": "geneval.models.formats",
    "UNetConfig": "geneval.models.unet",
    "UNetModel": "geneval.models.unet",
    "ClassifierConfig": "geneval.models.classifier",
    "EncoderUNet": "geneval.models.classifier",
    "PRESETS": "geneval.models.presets",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'geneval.models' has no attribute {name!r}")
