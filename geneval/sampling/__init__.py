"""Reference diffusion sampling: schedules, samplers, guidance, and batched generation.

Public API: `sample`, `sample_to_npz`, `SamplingConfig` (generate), `SAMPLERS`, `NoiseSource`,
`DiffusionConfig`, `make_schedule`. Submodules are imported lazily; sampling never imports
geneval.features or geneval.metrics.
"""

from __future__ import annotations

_LAZY = {
    "sample": "geneval.sampling.generate",
    "sample_to_npz": "geneval.sampling.generate",
    "SamplingConfig": "geneval.sampling.generate",
    "SampleBatch": "geneval.sampling.generate",
    "SAMPLERS": "geneval.sampling.samplers",
    "NoiseSource": "geneval.sampling.noise",
    "DiffusionConfig": "geneval.sampling.schedules",
    "Schedule": "geneval.sampling.schedules",
    "make_schedule": "geneval.sampling.schedules",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'geneval.sampling' has no attribute {name!r}")
