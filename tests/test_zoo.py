"""The demo zoo: shipped checkpoints load as documented; the compact reference round-trips exactly."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from geneval import zoo
from geneval.errors import GenevalError


def _stats(rng, d=16, n=40):
    x = rng.normal(size=(n, d))
    return x, x.mean(0), np.cov(x, rowvar=False)


def _write_manifest(folder, name, path, mode="tf"):
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps({"files": {name: {"mode": mode, "sha256": digest}}}))


def test_pack_unpack_roundtrip(tmp_path, rng):
    x, mu, sigma = _stats(rng)
    out = zoo.pack_reference(tmp_path / "r.npz", mu, sigma, x[:10], {"mode": "tf", "n": 40})
    mu2, sigma2, feats, meta = zoo.unpack_reference(out)
    assert np.array_equal(mu2, mu)  # float64 kept
    assert np.allclose(sigma2, sigma, rtol=1e-6, atol=1e-7)  # float32 triangle
    assert np.array_equal(sigma2, sigma2.T)
    assert np.array_equal(sigma2, sigma.astype(np.float32).astype(np.float64)) or np.abs(sigma2 - sigma).max() < 1e-6
    assert feats.dtype == np.float32 and feats.shape == (10, 16)
    assert np.allclose(feats, x[:10], rtol=1e-3, atol=1e-3)  # float16 storage
    assert meta == {"mode": "tf", "n": 40}


def test_demo_reference_expands_to_standard_reference(tmp_path, rng, monkeypatch):
    from geneval.sources import open_source

    x, mu, sigma = _stats(rng)
    name = "fashion-mnist-test-32-tf.npz"
    src = zoo.pack_reference(tmp_path / name, mu, sigma, x[:12], {"mode": "tf", "n": 40, "features": "x"})
    _write_manifest(tmp_path, name, src)
    monkeypatch.setattr(zoo, "REFERENCE_DIR", tmp_path)
    out = zoo.demo_reference("tf")
    assert out.exists() and zoo.demo_reference("tf") == out  # cached: second call reuses it
    ref = open_source(str(out))
    assert not ref.has_images and ref.meta["n"] == 40
    np.testing.assert_allclose(ref.stats["pool3"][0], mu)
    assert ref.features["pool3"].shape == (12, 16)
    with pytest.raises(GenevalError, match="mode 'tf'"):
        zoo.demo_reference("clean")


def test_demo_reference_refuses_tampered_file(tmp_path, rng, monkeypatch):
    x, mu, sigma = _stats(rng)
    name = "fashion-mnist-test-32-tf.npz"
    src = zoo.pack_reference(tmp_path / name, mu, sigma, None, {"mode": "tf"})
    _write_manifest(tmp_path, name, src)
    zoo.pack_reference(tmp_path / name, mu + 1, sigma, None, {"mode": "tf"})  # changed after the manifest
    monkeypatch.setattr(zoo, "REFERENCE_DIR", tmp_path)
    with pytest.raises(GenevalError, match="manifest sha256"):
        zoo.demo_reference("tf")


def test_demo_reference_missing_file_names_file_hash_and_place(tmp_path, rng, monkeypatch):
    x, mu, sigma = _stats(rng)
    name = "fashion-mnist-test-32-tf.npz"
    src = zoo.pack_reference(tmp_path / name, mu, sigma, None, {"mode": "tf"})
    _write_manifest(tmp_path, name, src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    src.unlink()
    monkeypatch.setattr(zoo, "REFERENCE_DIR", tmp_path)
    with pytest.raises(GenevalError) as e:
        zoo.demo_reference("tf")
    msg = str(e.value)
    assert name in msg and digest in msg and str(tmp_path) in msg and "GENEVAL_REFERENCE_STATS" in msg


def test_reference_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("GENEVAL_REFERENCE_STATS", str(tmp_path))
    assert zoo._reference_dir() == tmp_path
    monkeypatch.delenv("GENEVAL_REFERENCE_STATS")
    assert (zoo._reference_dir() / "manifest.json").exists()  # the checkout's reference_stats/


def test_shipped_reference_matches_manifest():
    man = zoo.manifest()
    entry = man["files"][zoo.DEMO_REFERENCE]
    path = zoo.REFERENCE_DIR / zoo.DEMO_REFERENCE
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    assert entry["mode"] == "tf" and entry["n"] >= 1000
    for key in ("source", "preprocessing", "weights_sha256"):
        assert entry[key]


def test_shipped_checkpoints_load_and_are_small():
    from geneval.models.formats import load_model

    unet = load_model(zoo.demo_model_path(), device="cpu")
    clf = load_model(zoo.demo_classifier_path(), device="cpu")
    assert unet.kind == "unet" and unet.num_classes == 10 and unet.null_class == 10
    assert unet.image_size == 32 and unet.in_channels == 1
    assert clf.kind == "classifier" and clf.image_size == 32
    for info in (unet.info, clf.info):
        assert info["steps"] > 0 and info["wall_s"] > 0 and "command" in info and "final_loss_mean_last200" in info
    total = sum(p.stat().st_size for d in (zoo.demo_model_path(), zoo.demo_classifier_path()) for p in d.iterdir())
    assert total <= 15 * 2**20
