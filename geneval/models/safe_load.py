"""The one place geneval reads pickled torch checkpoints: weights only, no foreign code ever runs.

`load_checkpoint(path)` uses torch's weights-only unpickler (tensors, storages, plain
containers, primitive types) and never falls back to full unpickling. Lightning `.ckpt` files
(CompVis LDM, taming) also pickle Lightning and omegaconf objects in `callbacks`,
`hyper_parameters` and `optimizer_states`; for an allow-list of those qualified names only,
an inert stand-in is registered under that name, so the unpickler neither imports the module
nor constructs the class: a stand-in records the pickled arguments and state and becomes
plain data afterwards (omegaconf containers → dicts/lists, Lightning objects → a dict naming
the class, class references → their qualified name). Any other global is refused with one
line naming the file and the global; the object is never built.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from geneval.errors import GenevalError

# Objects Lightning writes into `callbacks` (older versions key the dict by the callback class),
# `loops`, `hyper_parameters` and `lr_schedulers`. They are recorded by name, never built.
LIGHTNING_OBJECTS = tuple(
    f"{root}.{name}"
    for root in ("pytorch_lightning", "lightning.pytorch")
    for name in (
        "callbacks.model_checkpoint.ModelCheckpoint",
        "callbacks.early_stopping.EarlyStopping",
        "callbacks.lr_monitor.LearningRateMonitor",
        "callbacks.progress.ProgressBar",
        "callbacks.progress.tqdm_progress.TQDMProgressBar",
        "callbacks.progress.TQDMProgressBar",
        "callbacks.model_summary.ModelSummary",
        "callbacks.gradient_accumulation_scheduler.GradientAccumulationScheduler",
        "trainer.states.TrainerFn",
        "trainer.states.RunningStage",
        "trainer.states.TrainerStatus",
    )
)
# dict subclasses Lightning uses for hyper_parameters: they load as plain dicts.
DICT_LIKE = (
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "collections.defaultdict",  # omegaconf metadata's resolver_cache
)
# omegaconf containers and the metadata/node objects inside them (hyper_parameters of LDM runs).
OMEGACONF_OBJECTS = (
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    "omegaconf.nodes.AnyNode",
    "omegaconf.nodes.StringNode",
    "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode",
    "omegaconf.nodes.BooleanNode",
    "omegaconf.nodes.BytesNode",
    "omegaconf.nodes.PathNode",
    "omegaconf.nodes.EnumNode",
)
# Type objects omegaconf metadata refers to (ref_type, key_type, object_type): kept as names.
TYPE_REFERENCES = (
    "typing.Any",
    "builtins.dict",
    "builtins.list",
    "builtins.str",
    "builtins.int",
    "builtins.float",
    "builtins.bool",
    "builtins.object",
    "builtins.tuple",
)
# Values Lightning's callback states hold (ModelCheckpoint.dirpath, numpy scores): rebuilt as str / Python numbers.
PATHS = ("pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.Path", "pathlib.PurePosixPath", "pathlib.PureWindowsPath")
NUMPY_SCALARS = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")
ALLOWED_FOREIGN = LIGHTNING_OBJECTS + DICT_LIKE + OMEGACONF_OBJECTS + TYPE_REFERENCES + PATHS + NUMPY_SCALARS + ("numpy.dtype",)


class Opaque:
    """Inert record of an allow-listed foreign object: its qualified name, pickled args and state."""

    def __init__(self, name: str, args: tuple = ()):
        self.name = name
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _path(name: str, args: tuple) -> str:
    from pathlib import PurePosixPath, PureWindowsPath

    if not all(isinstance(a, str) for a in args):
        raise pickle.UnpicklingError(f"GLOBAL {name} with non-string parts")
    return str((PureWindowsPath if "Windows" in name else PurePosixPath)(*args))


def _numpy_scalar(name: str, args: tuple) -> int | float | complex | bool:
    """numpy's scalar(dtype, bytes) for numeric dtypes only, as a Python number (numpy is not asked to unpickle)."""
    import numpy as np

    dt, data = (args + (None, None))[:2]
    if not (isinstance(dt, Opaque) and dt.name == "numpy.dtype" and dt.args and isinstance(dt.args[0], str)):
        raise pickle.UnpicklingError(f"GLOBAL {name} without a plain dtype")
    dtype = np.dtype(dt.args[0])
    if dtype.kind not in "biufc" or not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError(f"GLOBAL {name} of dtype {dt.args[0]!r}")
    order = dt.state[1] if isinstance(dt.state, tuple) and len(dt.state) > 1 and dt.state[1] in "<>|=" else "="
    return np.frombuffer(data, dtype=dtype.newbyteorder(order))[0].item()


def _stand_in(name: str) -> type:
    """A class registered under `name` whose construction yields an Opaque (or plain data)."""
    module, _, short = name.rpartition(".")
    if name in PATHS:

        def new(cls, *args, **kwargs):
            return _path(name, args)
    elif name in NUMPY_SCALARS:

        def new(cls, *args, **kwargs):
            return _numpy_scalar(name, args)
    elif name in DICT_LIKE:

        def new(cls, *args, **kwargs):  # a dict subclass pickles its items via SETITEMS
            return {}
    else:

        def new(cls, *args, **kwargs):
            return Opaque(name, args)

    return type(short, (), {"__new__": new, "__module__": module, "__qualname__": short, "_geneval_name": name})


_STAND_INS: dict[str, type] = {name: _stand_in(name) for name in ALLOWED_FOREIGN}
_SAFE_GLOBALS = [(cls, name) for name, cls in _STAND_INS.items()] + [(Opaque, "geneval.models.safe_load.Opaque")]


def _plain(obj: Any, depth: int = 0) -> Any:
    """Turn stand-ins into plain data (depth-limited: checkpoints are shallow)."""
    if depth > 200:
        raise GenevalError("checkpoint object nesting is deeper than 200 levels")
    if isinstance(obj, type) and hasattr(obj, "_geneval_name"):
        return obj._geneval_name
    if isinstance(obj, Opaque):
        state = obj.state if isinstance(obj.state, dict) else {}
        if obj.name in ("omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig"):
            return _plain(state.get("_content"), depth + 1)
        if obj.name.startswith("omegaconf.nodes."):
            return _plain(state.get("_val"), depth + 1)
        return {"__object__": obj.name, "state": _plain(obj.state, depth + 1)}
    if isinstance(obj, dict):
        return type(obj)((_plain(k, depth + 1), _plain(v, depth + 1)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v, depth + 1) for v in obj)
    return obj


_GLOBAL_PATTERNS = (
    re.compile(r"GLOBAL ([\w.]+)"),
    re.compile(r"unrecognized function (\S+)"),
    re.compile(r"but got <class '([\w.]+)'>"),
)


def refusal(path: str | os.PathLike, err: Exception, what: str = "torch checkpoint") -> GenevalError:
    """One line naming the file and, for pickled code, the offending global.

    Torch's own message is never passed on whole: it advises re-running with the check turned off,
    which geneval never does (and a user should not do with a file they did not make).
    """
    path = Path(path)
    text = " ".join(str(err).split())
    for pattern in _GLOBAL_PATTERNS:
        m = pattern.search(text)
        if m:
            return GenevalError(
                f"{path}: refused to unpickle {m.group(1)}: a weights-only {what} holds only tensors, "
                f"plain containers and known Lightning/omegaconf objects (geneval never runs pickled code)"
            )
    reason = text.split(". ")[0][:160]
    if "weights_only" in reason or not reason:
        reason = type(err).__name__
    if isinstance(err, (pickle.UnpicklingError, EOFError)) or "pickle" in text.lower() or "zip" in text.lower():
        return GenevalError(f"{path}: not a readable weights-only {what} ({reason})")
    return GenevalError(f"{path}: cannot read as a {what} ({type(err).__name__}: {reason})")


def torch_load(path: str | os.PathLike, *, allow: Any = (), mmap: bool = False, what: str = "torch checkpoint") -> Any:
    """`torch.load(path, weights_only=True)` with every failure as one GenevalError line (see `refusal`).

    Args:
        path: the file written by torch.save.
        allow: extra safe globals for the weights-only unpickler (e.g. argparse.Namespace).
        mmap: memory-map tensor storages (zip-format files only; legacy files are read normally).
        what: how messages name the file ("torch checkpoint", "LPIPS backbone", ...).
    Returns:
        The unpickled object, tensors on the CPU.
    """
    path = Path(path)
    if not path.is_file():
        raise GenevalError(f"{what} not found: {path}" if not path.exists() else f"{path} is a folder; pass the {what} file itself")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise GenevalError(f"cannot read {path}: {e.strerror or e}") from None
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save writes a zip archive or a protocol-2 pickle
        raise GenevalError(f"{path}: not a {what} (neither a torch.save zip archive nor a pickle)")
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and head.startswith(b"PK"))
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, ValueError... for bad or unsafe files
        raise refusal(path, e, what) from None


def load_checkpoint(path: str | os.PathLike, mmap: bool = False) -> Any:
    """Read a torch checkpoint with the weights-only unpickler plus inert Lightning/omegaconf stand-ins.

    Args:
        path: a `.pt`/`.pth`/`.ckpt`/`.bin` file written by torch.save.
        mmap: memory-map tensor storages instead of reading them (zip-format files).
    Returns:
        The unpickled object, with stand-ins replaced by plain data; tensors on the CPU.
    Raises:
        GenevalError: missing file, not a torch checkpoint, or a global outside the allow-list.
    """
    path = Path(path)
    if not path.is_file():
        raise GenevalError(f"checkpoint not found: {path}")
    return _plain(torch_load(path, allow=_SAFE_GLOBALS, mmap=mmap))
