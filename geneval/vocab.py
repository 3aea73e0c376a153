"""Every closed vocabulary geneval accepts, in one place, with the help text the CLI shows.

Validation, dataclasses and `--help` all read these tables; nothing else spells the choices.
Open vocabularies that grow by registration (samplers, metrics, feature networks) live in
their registries and are listed through `choices_help`.
"""

from __future__ import annotations

from geneval.errors import GenevalError

# Feature preprocessing (resize) modes: REFERENCE §1.
MODES: dict[str, str] = {
    "tf": "ADM/TF1 bilinear resize, no antialias (the published numbers)",
    "pytorch": "pytorch-fid: torch bilinear, half-pixel",
    "clean": "clean-fid: PIL bicubic on float32",
}
# Feature-network precisions.
PRECISIONS: dict[str, str] = {
    "exact": "fp32, TF32 off",
    "tf32": "TF32 matmuls/convolutions (CUDA)",
    "fast": "fp16 autocast + torch.compile (CUDA; exact elsewhere)",
}
# Classifier-free guidance conventions: REFERENCE §4.
CONVENTIONS: dict[str, str] = {
    "w": "Ho & Salimans: eps=(1+w)eps_c-w*eps_u, w=0 unguided",
    "s": "LDM/diffusers/DiT: eps=eps_u+s(eps_c-eps_u), s=1 unguided",
}
# Inception Score split conventions: REFERENCE §2.
IS_CONVENTIONS: dict[str, str] = {
    "adm": "consecutive chunks of 5000, no shuffle",
    "torch-fidelity": "10 splits after a RandomState(2020) shuffle",
}
# Float [-1, 1] → uint8 rules: REFERENCE §3.
QUANTISATIONS: dict[str, str] = {
    "truncate": "adm-truncate: ((x+1)*127.5).clamp(0,255).to(uint8)",
    "round": "edm-round: (x*127.5+128).clamp(0,255).to(uint8)",
}

# Which sampling semantics a checkpoint gets (issue 13): its own scheduler's or guided-diffusion's.
CONVENTION_SOURCES: dict[str, str] = {
    "model": "the checkpoint's own scheduler (diffusers scheduler_config.json; ADM for other formats)",
    "adm": "guided-diffusion semantics whatever the checkpoint says",
}
# How respaced timesteps are chosen.
RESPACING_CONVENTIONS: dict[str, str] = {
    "adm": "guided-diffusion space_timesteps ('250', 'ddim25', '10,20,30')",
    "leading": "diffusers leading: arange(N)*(T//N) + steps_offset",
    "trailing": "diffusers trailing: round(arange(T, 0, -T/N)) - 1",
    "linspace": "diffusers linspace: round(linspace(0, T-1, N))",
    "ldm": "CompVis LDM DDIM uniform: range(0, T, T//N) + 1, alpha_prev = abar[0] after the last step",
}
# Progress reporting on stderr (`--progress`, every command that does long work).
PROGRESS: dict[str, str] = {
    "auto": "a live one-line bar when stderr is a terminal, nothing otherwise",
    "always": "the live bar on a terminal; elsewhere a plain line every few seconds and a final one",
    "never": "no progress output",
}

_TABLES = {
    "mode": MODES,
    "precision": PRECISIONS,
    "convention": CONVENTIONS,
    "is_convention": IS_CONVENTIONS,
    "quantize": QUANTISATIONS,
    "convention_source": CONVENTION_SOURCES,
    "respacing_convention": RESPACING_CONVENTIONS,
    "progress": PROGRESS,
}


def check(kind: str, value: str) -> str:
    """Return `value` if it belongs to vocabulary `kind`, else raise a one-line GenevalError.

    Args:
        kind: a vocabulary name ("mode", "precision", "convention", "is_convention", "quantize", "progress", ...).
        value: the user's choice.
    """
    table = _TABLES[kind]
    if value not in table:
        raise GenevalError(f"unknown {kind.replace('_', ' ')} {value!r}: choose one of {', '.join(table)}")
    return value


def choices_help(kind: str) -> str:
    """'a (what a), b (what b)' for `--help`, read from the vocabulary itself."""
    if kind == "sampler":
        from geneval.sampling.samplers import SAMPLERS

        return ", ".join(SAMPLERS)
    return ", ".join(f"{k} ({v})" for k, v in _TABLES[kind].items())
