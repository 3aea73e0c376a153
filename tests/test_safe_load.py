"""Safe checkpoint loading: Lightning/omegaconf objects load as plain data; any other class is refused unbuilt."""

from __future__ import annotations

import sys
import types
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch

from geneval.errors import GenevalError
from geneval.models.safe_load import load_checkpoint

DATA = Path(__file__).parent / "data"


def _fake_module(monkeypatch, qualname: str, cls: type) -> None:
    """Register `cls` as `qualname` in sys.modules (parents included) so torch.save pickles it by that name."""
    module, _, name = qualname.rpartition(".")
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        mod = ".".join(parts[:i])
        if mod not in sys.modules:
            monkeypatch.setitem(sys.modules, mod, types.ModuleType(mod))
    cls.__module__, cls.__qualname__, cls.__name__ = module, name, name
    setattr(sys.modules[module], name, cls)


def _lightning_checkpoint(monkeypatch, tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    class ModelCheckpoint:  # what pytorch_lightning <= 1.4 pickles: the class as a key, instances as values
        def __init__(self):
            self.monitor = "val/loss_simple_ema"
            self.best_model_score = torch.tensor(0.25)
            self.dirpath = PurePosixPath("/logs/2021-12-01T00-00/checkpoints")
            self.kth_value = np.float64(0.125)
            self.current_score = np.float32(-1.5)

    class AttributeDict(dict):
        pass

    _fake_module(monkeypatch, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint", ModelCheckpoint)
    _fake_module(monkeypatch, "pytorch_lightning.utilities.parsing.AttributeDict", AttributeDict)
    weights = {"model.diffusion_model.out.2.weight": torch.randn(3, 4, 3, 3), "scale_factor": torch.tensor(0.18215)}
    ckpt = {
        "epoch": 7,
        "global_step": 1234,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": dict(weights),
        "callbacks": {
            ModelCheckpoint: {"best_model_score": torch.tensor(0.5)},
            "ModelCheckpoint{'monitor': None}": ModelCheckpoint(),
        },
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]}],
        "hyper_parameters": AttributeDict(linear_start=0.0015, timesteps=1000),
    }
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    return path, weights


def test_lightning_callbacks_load_weights(monkeypatch, tmp_path):
    path, weights = _lightning_checkpoint(monkeypatch, tmp_path)
    # torch's own weights-only loader refuses this layout (the reported failure) ...
    with pytest.raises(Exception, match="ModelCheckpoint"):
        torch.load(path, weights_only=True)
    out = load_checkpoint(path)
    # ... geneval's loads every tensor bit for bit, and the Lightning objects become plain data.
    assert set(out["state_dict"]) == set(weights)
    for k, v in weights.items():
        assert torch.equal(out["state_dict"][k], v)
    key = "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
    assert torch.equal(out["callbacks"][key]["best_model_score"], torch.tensor(0.5))
    inst = out["callbacks"]["ModelCheckpoint{'monitor': None}"]
    assert inst["__object__"] == key and inst["state"]["monitor"] == "val/loss_simple_ema"
    # Paths and numpy scores come back as plain str / Python numbers.
    assert inst["state"]["dirpath"] == "/logs/2021-12-01T00-00/checkpoints"
    assert inst["state"]["kth_value"] == 0.125 and inst["state"]["current_score"] == -1.5
    assert type(out["hyper_parameters"]) is dict and out["hyper_parameters"]["timesteps"] == 1000
    assert out["optimizer_states"][0]["param_groups"][0]["lr"] == 1e-4


def test_lightning_object_is_never_imported(monkeypatch, tmp_path):
    path, _ = _lightning_checkpoint(monkeypatch, tmp_path)
    for mod in [m for m in sys.modules if m.startswith("pytorch_lightning")]:
        monkeypatch.delitem(sys.modules, mod)
    out = load_checkpoint(path)  # pytorch_lightning is not installed here: nothing was imported
    assert "pytorch_lightning" not in sys.modules
    assert "state_dict" in out


def test_omegaconf_hyper_parameters_become_plain(monkeypatch):
    # omegaconf_hparams.ckpt was written by torch.save with omegaconf 2.3.0 (a DictConfig in
    # hyper_parameters, as LDM runs save it); omegaconf is not needed to read it.
    monkeypatch.setitem(sys.modules, "omegaconf", None)  # any import attempt would fail
    out = load_checkpoint(DATA / "omegaconf_hparams.ckpt")
    cfg = out["hyper_parameters"]["config"]
    assert cfg == {
        "unet_config": {
            "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
            "params": {"channel_mult": [1, 2, 4], "model_channels": 8},
        },
        "scale_factor": 0.18215,
        "use_ema": False,
    }
    assert out["state_dict"]["model.w"].shape == (3,)


class _WritesMarker:
    """Every way pickle could build this object writes the marker file."""

    marker: Path

    def __init__(self, marker: Path):
        self.marker = marker
        marker.write_text("constructed")

    def __setstate__(self, state):
        Path(state["marker"]).write_text("setstate")
        self.__dict__.update(state)


def _write_marker(path: str) -> str:
    Path(path).write_text("reduced")
    return path


class _ReducesToMarker:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_write_marker, (self.marker,))


@pytest.mark.parametrize("kind", ["instance", "reduce"])
def test_other_classes_refused_and_never_built(monkeypatch, tmp_path, kind):
    marker = tmp_path / "marker.txt"
    if kind == "instance":
        _fake_module(monkeypatch, "evil_pkg.payload.WritesMarker", _WritesMarker)
        obj = _WritesMarker(marker)
        name = "evil_pkg.payload.WritesMarker"
    else:
        obj = _ReducesToMarker(marker)
        name = f"{__name__}._write_marker"
    marker.unlink(missing_ok=True)
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "callbacks": {"x": obj}}, path)
    assert not marker.exists()
    with pytest.raises(GenevalError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and name in msg
    assert "weights_only" not in msg  # torch's advice to turn the check off is not passed on
    assert not marker.exists()


def test_numpy_object_scalars_refused(tmp_path):
    path = tmp_path / "objscalar.ckpt"
    torch.save({"state_dict": {}, "x": np.array([{"a": 1}], dtype=object)}, path)
    with pytest.raises(GenevalError, match="refused to unpickle numpy"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "junk.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(GenevalError, match="junk.ckpt") as info:
        load_checkpoint(bad)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)
    with pytest.raises(GenevalError, match="not found"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_plain_state_dict_roundtrip(tmp_path):
    sd = {"a": torch.randn(2, 3), "b": torch.arange(4)}
    torch.save(sd, tmp_path / "sd.pt")
    out = load_checkpoint(tmp_path / "sd.pt")
    assert set(out) == {"a", "b"} and all(torch.equal(out[k], sd[k]) for k in sd)


@pytest.mark.parametrize(
    "loader",
    [
        "geneval.models.safe_load:load_checkpoint",
        "geneval.models.safe_load:torch_load",
        "geneval.features.dinov2:load_state_file",
        "geneval.features.clip:load_openai_file",
        "geneval.models.dit:load_dit",
        "geneval.models.discrete_generator:load_token_map",
    ],
)
def test_every_weights_only_load_refuses_in_one_line_without_torchs_advice(loader, tmp_path):
    """Each place that reads a torch file: pickled code is refused by name, torch's 'weights_only=False' advice never reaches the user."""
    import importlib
    import os

    module, name = loader.split(":")
    load = getattr(importlib.import_module(module), name)
    pickled = tmp_path / "code.pt"
    torch.save({"x": os.system}, pickled)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    for path, match in ((pickled, "refused to unpickle posix.system"), (junk, "junk.pt")):
        with pytest.raises(GenevalError, match=match) as info:
            load(path)
        msg = str(info.value).replace(str(tmp_path), "")  # the folder is named after this test
        assert "\n" not in msg and "weights_only" not in msg and "False" not in msg, msg
