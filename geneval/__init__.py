"""geneval: one-pass evaluation of generative image models with reference-exact numbers.

Importing geneval downloads nothing and writes nothing. The public API is re-exported lazily so
that `import geneval` stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "evaluate": ("geneval.evaluation", "evaluate"),
    "sample": ("geneval.sampling.generate", "sample"),
    "run": ("geneval.pipeline", "run"),
    "recon": ("geneval.recon", "recon"),
    "ResultSet": ("geneval.results", "ResultSet"),
    "ResultRow": ("geneval.results", "ResultRow"),
    "GenevalError": ("geneval.errors", "GenevalError"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'geneval' has no attribute {name!r}")
