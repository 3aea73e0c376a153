"""What geneval's native checkpoint folders (autoencoders, VQ-Diffusion, DiT) and the loaders of
foreign checkpoints share: writing model.safetensors and config.json, reading a JSON object, and
listing how a state dict differs from the one a network expects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from geneval.errors import GenevalError


def write_weights(out: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Write `state` as out/model.safetensors (through out/.model.safetensors.tmp, renamed over it); returns the file's bytes."""
    from safetensors.torch import save

    data = save(state, metadata=metadata)
    tmp = out / ".model.safetensors.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, out / "model.safetensors")
    return data


def write_config(out: Path, doc: dict[str, Any]) -> None:
    """Write `doc` as out/config.json (indented, atomically), world-readable like shipped files."""
    from geneval.results import atomic_write_text

    atomic_write_text(out / "config.json", json.dumps(doc, indent=2) + "\n")
    os.chmod(out / "config.json", 0o644)


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object; anything else is a one-line GenevalError."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GenevalError(f"cannot read {path} as JSON: {e}") from None
    if not isinstance(doc, dict):
        raise GenevalError(f"{path}: expected a JSON object")
    return doc


def short_list(keys: list[str], limit: int = 5) -> str:
    """The first `limit` names, comma-separated, then ", +N more" for the rest."""
    return ", ".join(keys[:limit]) + (f", +{len(keys) - limit} more" if len(keys) > limit else "")


def mismatch_parts(own: dict[str, torch.Tensor], got: dict[str, torch.Tensor], prefix: str = "", against: str = "model") -> list[str]:
    """How `got` (a file's tensors) differs from `own` (what the network expects): "N missing (…)",
    "N unexpected (…)", "N with other shapes (e.g. name: file (…) vs <against> (…))"; empty when they fit.

    Args:
        prefix: put before every key named (the file's prefix of a part of a larger checkpoint).
        against: what the expected shape comes from, in the message ("model", "config").
    """
    missing = sorted(prefix + k for k in set(own) - set(got))
    unexpected = sorted(prefix + k for k in set(got) - set(own))
    reshaped = sorted(k for k in set(own) & set(got) if tuple(own[k].shape) != tuple(got[k].shape))
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({short_list(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({short_list(unexpected)})")
    if reshaped:
        k = reshaped[0]
        parts.append(f"{len(reshaped)} with other shapes (e.g. {prefix}{k}: file {tuple(got[k].shape)} vs {against} {tuple(own[k].shape)})")
    return parts
