"""Feature cache: keys change with everything that shapes features; evaluate hits it the second time."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import geneval
from geneval.features.cache import FeatureCache, make_key
from geneval.features.extract import FeatureExtractor


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


class _LinearNet:
    """Stand-in for the network in resume tests: features are fixed linear maps of the pixels;
    batches stream through FeatureExtractor's own extract_all."""

    extract_all = FeatureExtractor.extract_all

    def __init__(self, fail_after: int | None = None) -> None:
        w = np.random.default_rng(0)
        self.w = {"pool3": w.normal(size=(48, 5)), "spatial": w.normal(size=(48, 3))}
        self.fail_after, self.calls, self.images = fail_after, 0, 0

    def extract(self, batch):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt  # what a user's Ctrl-C looks like mid-extraction
        self.calls += 1
        self.images += len(batch)
        x = np.asarray(batch, np.float64).reshape(len(batch), -1)
        return {k: torch.from_numpy((x @ w).astype(np.float32)) for k, w in self.w.items()}


def _batches(images, size):
    return (images[i:i + size] for i in range(0, len(images), size))


def test_interrupted_extraction_resumes_where_it_stopped(tmp_path, rng):
    from geneval.features.cache import PartialEntry, extract_resumable

    images = rng.integers(0, 256, size=(23, 4, 4, 3), dtype=np.uint8)
    want = extract_resumable(_LinearNet(), _batches(images, 5), PartialEntry(FeatureCache(tmp_path / "a", enabled=False), _key()),
                             needed=("pool3",), progress=False)
    cache = FeatureCache(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        extract_resumable(_LinearNet(fail_after=3), _batches(images, 5), PartialEntry(cache, _key()),
                          needed=("pool3",), progress=False, checkpoint_seconds=0)
    parts = sorted(p.name for p in (cache.root / "partial" / _key().digest).iterdir())
    assert parts == ["part_0000000000.npz", "part_0000000005.npz", "part_0000000010.npz"]
    net = _LinearNet()
    # a different batch size on the rerun: the checkpoint ends inside a batch, which is split
    got = extract_resumable(net, _batches(images, 4), PartialEntry(cache, _key()), needed=("pool3",),
                            progress=False, checkpoint_seconds=1e9)
    assert net.images == 23 - 15
    for k in ("pool3", "spatial"):
        np.testing.assert_array_equal(got[k], want[k])
    # other keys (another mode, another source) never see these parts
    assert PartialEntry(cache, _key(mode="clean")).load(("pool3",)) == ({}, 0)
    PartialEntry(cache, _key()).clear()
    assert not (cache.root / "partial" / _key().digest).exists()


def test_partial_parts_must_be_contiguous_and_complete(tmp_path, rng):
    from geneval.features.cache import PartialEntry

    cache = FeatureCache(tmp_path)
    pe = PartialEntry(cache, _key())
    a = {"pool3": rng.normal(size=(4, 5)).astype(np.float32)}
    pe.save(0, a)
    pe.save(6, a)  # a gap after image 4: this and later parts are unusable
    chunks, n = pe.load(("pool3",))
    assert n == 4 and len(chunks["pool3"]) == 1
    assert pe.load(("pool3", "spatial")) == ({}, 0)  # a part without a needed array ends the usable run
    (pe.folder / "part_0000000000.npz").write_bytes(b"junk")
    assert pe.load(("pool3",)) == ({}, 0)
    off = PartialEntry(FeatureCache(tmp_path / "off", enabled=False), _key())
    off.save(0, a)
    assert not off.folder.exists() and off.load(("pool3",)) == ({}, 0)


def test_checkpoint_longer_than_source_is_an_error(tmp_path, rng):
    from geneval.errors import GenevalError
    from geneval.features.cache import PartialEntry, extract_resumable

    pe = PartialEntry(FeatureCache(tmp_path), _key())
    pe.save(0, {"pool3": np.zeros((10, 5), np.float32), "spatial": np.zeros((10, 3), np.float32)})
    images = rng.integers(0, 256, size=(6, 4, 4, 3), dtype=np.uint8)
    with pytest.raises(GenevalError, match="fewer images"):
        extract_resumable(_LinearNet(), _batches(images, 4), pe, needed=("pool3",), progress=False)


def test_ref_build_resumes_after_interrupt(private_cache, tmp_path, monkeypatch, one_thread):
    """geneval ref build, stopped after one batch and rerun, extracts only the rest and matches a clean build."""
    import geneval.features.cache as cache_mod
    from geneval.features.extract import FeatureExtractor
    from geneval.reference_build import build_reference

    monkeypatch.setattr(cache_mod, "CHECKPOINT_SECONDS", 0.0)
    real = FeatureExtractor.extract
    seen = []

    def flaky(self, batch):
        if len(seen) == 1 and not getattr(flaky, "resumed", False):
            raise KeyboardInterrupt
        seen.append(len(batch))
        return real(self, batch)

    monkeypatch.setattr(FeatureExtractor, "extract", flaky)
    out = tmp_path / "ref.npz"
    with pytest.raises(KeyboardInterrupt):
        build_reference("digits[0:6]", out, batch_size=3, progress=False, with_images=False)
    assert not out.exists() and seen == [3]
    flaky.resumed = True
    meta = build_reference("digits[0:6]", out, batch_size=3, progress=False, with_images=False)
    assert seen == [3, 3] and meta["n"] == 6
    assert not list((private_cache / "partial").iterdir())  # parts removed once the entry is written
    monkeypatch.setattr(FeatureExtractor, "extract", real)
    clean = tmp_path / "clean.npz"
    build_reference("digits[0:6]", clean, batch_size=6, progress=False, with_images=False, cache=False)
    with np.load(out) as a, np.load(clean) as b:
        np.testing.assert_allclose(a["mu"], b["mu"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(a["sigma"], b["sigma"], rtol=0, atol=1e-5)
