"""Feature cache: keys change with everything that shapes features; evaluate hits it the second time."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import geneval
from geneval.features.cache import FeatureCache, make_key


def _key(**over):
    base = dict(content_sha256="c" * 64, extractor="tf-inception-2015-12-05", weights_sha256="w" * 64,
                mode="tf", precision="exact", geneval_version="0.1.0")
    base.update(over)
    return make_key(**base)


def test_key_changes_with_every_part():
    k = _key()
    assert k.digest == _key().digest and len(k.digest) == 64
    for field, value in [("content_sha256", "d" * 64), ("extractor", "other"), ("weights_sha256", "v" * 64),
                         ("mode", "pytorch"), ("mode", "clean"), ("precision", "tf32"), ("geneval_version", "9.9")]:
        assert _key(**{field: value}).digest != k.digest, field
    assert make_key("c", "e", "w", "tf", "exact").geneval_version == geneval.__version__


def test_save_load_roundtrip_and_misses(tmp_path, rng):
    cache = FeatureCache(tmp_path)
    key = _key()
    arrays = {"pool3": rng.normal(size=(3, 5)).astype(np.float32), "spatial": rng.normal(size=(3, 4)).astype(np.float32)}
    assert cache.load(key, ["pool3"]) is None
    path = cache.save(key, arrays, {"report": {"read": 3}})
    assert path == tmp_path / f"{key.digest}.npz"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left
    got, meta = cache.load(key, ["pool3", "spatial"])
    np.testing.assert_array_equal(got["pool3"], arrays["pool3"])
    assert meta["report"] == {"read": 3} and meta["key"]["mode"] == "tf"
    assert cache.load(key, ["logits"]) is None  # an entry without a needed array is a miss
    assert cache.load(_key(mode="pytorch"), ["pool3"]) is None
    path.write_bytes(path.read_bytes()[:100])  # damaged entry: a miss, not a crash
    assert cache.load(key, ["pool3"]) is None


def test_disabled_cache_neither_reads_nor_writes(tmp_path, rng):
    FeatureCache(tmp_path).save(_key(), {"pool3": np.zeros((2, 2), np.float32)})
    off = FeatureCache(tmp_path, enabled=False)
    assert off.load(_key(), ["pool3"]) is None
    assert off.save(_key(mode="clean"), {"pool3": np.zeros((2, 2), np.float32)}) is None
    assert len(list(tmp_path.iterdir())) == 1


@pytest.fixture
def private_cache(tmp_path, monkeypatch, session_cache):
    """A fresh feature cache for one test, reusing the session's converted weights."""
    from geneval.weights import WEIGHTS, cache_dir, resolve_inception

    resolve_inception()  # builds the converted trunk in the session cache once
    d = tmp_path / "cache"
    d.mkdir()
    trunk = WEIGHTS["tf-inception-trunk"].filename
    for name in (trunk, trunk + ".json"):
        (d / name).symlink_to(cache_dir() / name)
    monkeypatch.setenv("GENEVAL_CACHE", str(d))
    return d / "features"


def test_second_evaluate_hits_cache(private_cache, fmnist_test, monkeypatch):
    from geneval.features.extract import FeatureExtractor

    a, b = fmnist_test.images[100:106], fmnist_test.images[106:112]
    first = geneval.evaluate(a, b, metrics="pr", progress=False)
    assert first["precision"].extra["samples_origin"] == {"pool3": "extracted"}
    assert len(list(private_cache.glob("*.npz"))) == 2

    def boom(*args, **kwargs):
        raise AssertionError("extraction ran although the cache holds the features")

    monkeypatch.setattr(FeatureExtractor, "extract_all", boom)
    second = geneval.evaluate(a, b, metrics="pr", progress=False)
    for m in ("precision", "recall"):
        assert second[m].value == first[m].value
    assert second["recall"].extra["samples_origin"] == {"pool3": "cache"}
    assert second["recall"].extra["ref_origin"] == {"pool3": "cache"}
    assert second["recall"].extra["samples_read"] == 6  # the read report survives the cache
    assert second["precision"].wall_s < first["precision"].wall_s
    monkeypatch.undo()


def test_cache_false_neither_reads_nor_writes(private_cache, fmnist_test):
    a, b = fmnist_test.images[112:116], fmnist_test.images[100:104]
    rs = geneval.evaluate(a, a, metrics="pr", progress=False, cache=False)
    assert rs["precision"].extra["samples_origin"] == {"pool3": "extracted"}
    assert rs["precision"].extra["ref_origin"] == {"pool3": "extracted"}  # same content, no cache read
    assert not private_cache.exists() or not list(private_cache.glob("*.npz"))
    assert rs["precision"].value == 1.0 and rs["recall"].value == 1.0  # identical sets
    # ... and the key changes with the mode: a pytorch-mode run does not see tf-mode entries.
    geneval.evaluate(b, b, metrics="pr", progress=False)
    entries = set(private_cache.glob("*.npz"))
    rs = geneval.evaluate(b, b, metrics="pr", progress=False, mode="pytorch")
    assert rs["precision"].extra["samples_origin"] == {"pool3": "extracted"} and rs["precision"].mode == "pytorch"
    assert len(set(private_cache.glob("*.npz")) - entries) == 1


def test_cache_key_is_a_frozen_record():
    with pytest.raises(dataclasses.FrozenInstanceError):
        _key().mode = "clean"
