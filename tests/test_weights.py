"""Weight resolution, conversion cache, hash checks, offline refusal and the `geneval weights` CLI."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import pytest
import torch

from geneval import weights as W
from geneval.errors import GenevalError, MissingWeightsError


def _cli(argv, capsys):
    from geneval.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("GENEVAL_CACHE", str(tmp_path / "a"))
    assert W.cache_dir() == tmp_path / "a"
    assert not (tmp_path / "a").exists()  # lazily created, never on lookup
    monkeypatch.delenv("GENEVAL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert W.cache_dir() == tmp_path / "xdg" / "geneval"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert W.cache_dir() == tmp_path / "home" / ".cache" / "geneval"


def test_default_resolution_converts_the_trunk_once():
    r = W.resolve_inception()
    assert r.format == "safetensors" and not r.has_logits
    assert r.sha256 == W.WEIGHTS["fid-helper-trunk"].sha256  # provenance = the installed default_1.pt
    assert r.path.parent == W.cache_dir()
    meta = json.loads(Path(str(r.path) + ".json").read_text())
    assert meta["source_sha256"] == r.sha256 and meta["conversion_version"] == W.CONVERSION_VERSION
    assert meta["sha256"] == hashlib.sha256(r.path.read_bytes()).hexdigest()
    mtime = r.path.stat().st_mtime_ns
    assert W.resolve_inception().path.stat().st_mtime_ns == mtime  # reused, not rebuilt
    state = r.load_state_dict()
    assert len(state) == 94 * 4 and "fc.weight" not in state


def test_tampered_conversion_is_rebuilt():
    r = W.resolve_inception()
    data = bytearray(r.path.read_bytes())
    data[-1] ^= 0xFF
    r.path.write_bytes(bytes(data))
    assert W.verify("tf-inception-trunk").status == "corrupt"
    r2 = W.resolve_inception()
    assert W.verify("tf-inception-trunk").status == "present"
    assert r2.load_state_dict().keys() == r.load_state_dict().keys()


def test_missing_logits_names_file_hash_and_path():
    with pytest.raises(MissingWeightsError) as e:
        W.resolve_inception(need_logits=True)
    msg = str(e.value)
    assert "pt_inception-2015-12-05-6726825d.pth" in msg
    assert W.WEIGHTS["pytorch-fid"].sha256 in msg
    assert str(W.cache_dir() / "pt_inception-2015-12-05-6726825d.pth") in msg
    assert "geneval weights fetch pytorch-fid" in msg


def test_explicit_trunk_without_logits_refused_for_is():
    with pytest.raises(MissingWeightsError, match="no logits"):
        W.resolve_inception(path=W._fid_helper_trunk_path(), need_logits=True)


def test_corrupt_cached_file_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("GENEVAL_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    bad = tmp_path / W.WEIGHTS["pytorch-fid"].filename
    bad.write_bytes(b"not the weights")
    assert W.verify("pytorch-fid").status == "corrupt"
    with pytest.warns(UserWarning, match="does not match"), pytest.raises(MissingWeightsError):
        W.resolve_inception(need_logits=True)


def test_offline_fetch_refused(capsys):
    with pytest.raises(GenevalError, match="offline"):
        W.fetch("pytorch-fid")
    code, out, err = _cli(["weights", "fetch", "pytorch-fid"], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: offline") and err.count("\n") == 1
    assert not (W.cache_dir() / W.WEIGHTS["pytorch-fid"].filename).exists()


def _local_entry(tmp_path, payload: bytes, sha256: str) -> W.WeightFile:
    src = tmp_path / "served.bin"
    src.write_bytes(payload)
    return W.WeightFile("local-test", "local-test.bin", sha256, (src.as_uri(),), False, "state_dict", "test file")


def test_download_hash_mismatch_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("GENEVAL_OFFLINE")
    monkeypatch.setenv("GENEVAL_CACHE", str(tmp_path / "cache"))
    entry = _local_entry(tmp_path, b"\x00" * 1000, "0" * 64)
    with pytest.raises(GenevalError, match="sha256"):
        W.fetch(entry)
    assert list((tmp_path / "cache").iterdir()) == []  # no partial file, no final file


def test_download_with_matching_hash(tmp_path, monkeypatch):
    monkeypatch.delenv("GENEVAL_OFFLINE")
    monkeypatch.setenv("GENEVAL_CACHE", str(tmp_path / "cache"))
    payload = os.urandom(3000)
    entry = _local_entry(tmp_path, payload, hashlib.sha256(payload).hexdigest()[:8])  # prefix, as torch hub names
    seen = []
    path = W.fetch(entry, progress=seen.append)
    assert path.read_bytes() == payload and sum(seen) == 3000
    assert [p.name for p in path.parent.iterdir()] == ["local-test.bin"]


def test_torchvision_backbone_lookup(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MissingWeightsError) as e:
        W.resolve_torchvision_backbone("alex")
    assert "alexnet-owt-7be5be79.pth" in str(e.value) and "geneval weights fetch alexnet" in str(e.value)
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "vgg16-397923af.pth").write_bytes(b"x")
    assert W.resolve_torchvision_backbone("vgg") == hub / "vgg16-397923af.pth"
    with pytest.raises(GenevalError, match="sha256"):
        W.resolve_torchvision_backbone("vgg", path=hub / "vgg16-397923af.pth")  # explicit paths are hash-checked
    with pytest.raises(GenevalError, match="unknown LPIPS backbone"):
        W.resolve_torchvision_backbone("resnet")


def test_cli_list_verify_path(capsys, tmp_path, monkeypatch):
    code, out, _ = _cli(["weights", "list"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["name", "status", "source"]
    rows = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert rows["fid-helper-trunk"] == "present" and rows["pytorch-fid"] == "missing"
    assert set(rows) == set(W.WEIGHTS)
    code, out, _ = _cli(["weights", "path"], capsys)
    assert code == 0 and out.strip() == str(W.cache_dir())
    code, out, err = _cli(["weights", "verify", "fid-helper-trunk"], capsys)
    assert code == 0 and "present" in out
    monkeypatch.setenv("GENEVAL_CACHE", str(tmp_path))
    (tmp_path / W.WEIGHTS["torch-fidelity"].filename).write_bytes(b"junk")
    code, out, err = _cli(["weights", "verify"], capsys)
    assert code == 2 and "torch-fidelity is corrupt" in err


def test_foreign_torchscript_is_rejected(tmp_path):
    path = tmp_path / "other.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript writing
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(GenevalError, match="not a TF-named Inception trunk"):
        W.resolve_inception(path=path).load_state_dict()


def test_missing_explicit_path():
    with pytest.raises(MissingWeightsError, match="do not exist"):
        W.resolve_inception(path="/nonexistent/inception.pth")


def test_fetch_reuses_an_intact_file(tmp_path, monkeypatch):
    monkeypatch.delenv("GENEVAL_OFFLINE")
    monkeypatch.setenv("GENEVAL_CACHE", str(tmp_path / "cache"))
    payload = b"weights" * 100
    entry = _local_entry(tmp_path, payload, hashlib.sha256(payload).hexdigest())
    first = W.fetch(entry)
    (tmp_path / "served.bin").unlink()  # the source is gone: a second fetch must not need it
    assert W.fetch(entry) == first and first.read_bytes() == payload


def test_allowed_download_with_wrong_bytes_is_rejected(tmp_path, monkeypatch):
    """The real registry entries, served by a fake opener: wrong bytes never reach the cache."""
    import io

    monkeypatch.delenv("GENEVAL_OFFLINE")
    monkeypatch.setenv("GENEVAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    opened = []

    def fake_open(url, timeout=60.0):
        opened.append(url)
        return io.BytesIO(b"an impostor file")

    monkeypatch.setattr(W, "_open_url", fake_open)
    with pytest.raises(MissingWeightsError, match="sha256"):
        W.resolve_inception(need_logits=True, allow_download=True)
    assert opened == [W.WEIGHTS["pytorch-fid"].urls[0], W.WEIGHTS["torch-fidelity"].urls[0]]
    assert not any(p.name.endswith(".pth") for p in (tmp_path / "cache").iterdir())
