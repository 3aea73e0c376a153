"""Feature cache: keys change with everything that shapes features; evaluate hits it the second time."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import geneval
from geneval.features.cache import make_key


def _key(**over):
    base = dict(
        content_sha256="c" * 64, extractor="tf-inception-2015-12-05", weights_sha256="w" * 64, mode="tf", precision="exact", geneval_version="0.1.0"
    )
    base.update(over)
    return make_key(**base)


def test_key_changes_with_every_part():
    k = _key()
    assert k.digest == _key().digest and len(k.digest) == 64
    for field, value in [
        ("content_sha256", "d" * 64),
        ("extractor", "other"),
        ("weights_sha256", "v" * 64),
        ("mode", "pytorch"),
        ("mode", "clean"),
        ("precision", "tf32"),
        ("geneval_version", "9.9"),
    ]:
        assert _key(**{field: value}).digest != k.digest, field
    assert make_key("c", "e", "w", "tf", "exact").geneval_version == geneval.__version__


def test_shard_store_roundtrip_and_damage(tmp_path, rng):
    from geneval.errors import GenevalError
    from geneval.runner.shards import ShardStore

    store = ShardStore(tmp_path, {"k": 1}, n=10, shard_size=4).open()
    assert store.num_shards == 3 and store.bounds(2) == (8, 10)
    arrays = {"feat_pool3": rng.normal(size=(4, 5)).astype(np.float32), "indices": np.arange(4)}
    assert not store.done(0)
    store.save(0, arrays, {"count": 4})
    assert store.done(0)
    assert sorted(p.name for p in store.dir.iterdir()) == ["manifest.json", "shard_000000.npz"]  # no temp files
    got, meta = store.load(0)
    np.testing.assert_array_equal(got["feat_pool3"], arrays["feat_pool3"])
    assert meta == {"count": 4}
    assert ShardStore(tmp_path, {"k": 2}, n=10, shard_size=4).dir != store.dir  # another key, another folder
    assert ShardStore(tmp_path, {"k": 1}, n=10, shard_size=5).dir != store.dir  # the shard size is part of the key
    store.path(0).write_bytes(store.path(0).read_bytes()[:100])
    with pytest.raises(GenevalError, match="unreadable.*delete it"):
        store.load(0)


def test_shard_claims_are_exclusive_between_processes(tmp_path):
    """A second process sees a shard being computed as taken (flock), so two jobs never compute it twice."""
    import subprocess
    import sys

    from geneval.runner.shards import ShardStore

    store = ShardStore(tmp_path, {"k": 1}, n=4, shard_size=2).open()
    probe = (
        f"import sys; sys.path.insert(0, {str(pathlib_root())!r}); from geneval.runner.shards import ShardStore; "
        f"s = ShardStore({str(tmp_path)!r}, {{'k': 1}}, n=4, shard_size=2)\n"
        "with s.claim(0, wait=False) as got: print(got)"
    )
    with store.claim(0, wait=False) as got:
        assert got
        held = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    free = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert held.stdout.strip() == "False" and free.stdout.strip() == "True", held.stderr + free.stderr


def pathlib_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]


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
    assert len(list(private_cache.glob("*/complete.json"))) == 2

    def boom(*args, **kwargs):
        raise AssertionError("extraction ran although the cache holds the features")

    monkeypatch.setattr(FeatureExtractor, "extract", boom)
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
    assert not private_cache.exists() or not list(private_cache.glob("*/shard_*.npz"))
    assert not list((private_cache.parent / "scratch").glob("*/*/shard_*"))  # the private store is gone
    assert rs["precision"].value == 1.0 and rs["recall"].value == 1.0  # identical sets
    # ... and the key changes with the mode: a pytorch-mode run does not see tf-mode entries.
    geneval.evaluate(b, b, metrics="pr", progress=False)
    entries = set(private_cache.glob("*/complete.json"))
    rs = geneval.evaluate(b, b, metrics="pr", progress=False, mode="pytorch")
    assert rs["precision"].extra["samples_origin"] == {"pool3": "extracted"} and rs["precision"].mode == "pytorch"
    assert len(set(private_cache.glob("*/complete.json")) - entries) == 1


def test_cache_key_is_a_frozen_record():
    with pytest.raises(dataclasses.FrozenInstanceError):
        _key().mode = "clean"


class _LinearNet:
    """Stand-in for the network in resume tests: features are fixed linear maps of the pixels."""

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


def test_interrupted_stream_resumes_by_shard_and_matches(tmp_path, rng):
    from geneval.runner.distributed import SINGLE
    from geneval.runner.execute import Needs, SourceProducer, stream_features
    from geneval.runner.shards import ShardStore
    from geneval.sources import open_source

    images = rng.integers(0, 256, size=(23, 4, 4, 3), dtype=np.uint8)
    needs = Needs(stats=frozenset({"spatial"}), rows=frozenset({"pool3"}))

    def go(root, net, batch):
        store = ShardStore(root, {"k": 1}, n=23, shard_size=5).open()
        return store, stream_features(store, SourceProducer(open_source(images), batch), net.extract, needs, SINGLE)

    _, want = go(tmp_path / "a", _LinearNet(), 5)
    with pytest.raises(KeyboardInterrupt):
        go(tmp_path / "b", _LinearNet(fail_after=3), 5)
    store = ShardStore(tmp_path / "b", {"k": 1}, n=23, shard_size=5)
    assert [store.done(k) for k in range(5)] == [True, True, True, False, False]
    net = _LinearNet()
    _, got = go(tmp_path / "b", net, 5)
    assert net.images == 23 - 15 and got.resumed == 3
    np.testing.assert_array_equal(got.rows["pool3"], want.rows["pool3"])
    np.testing.assert_array_equal(got.stats["spatial"].sigma, want.stats["spatial"].sigma)
    assert got.n == 23 and got.stats["spatial"].n == 23
    # The streamed statistics equal the batch statistics of all rows (float64, N−1).
    rows = np.concatenate([_LinearNet().extract(images)["spatial"].numpy()])
    np.testing.assert_allclose(got.stats["spatial"].sigma, np.cov(rows.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-9)


def test_ref_build_resumes_after_interrupt(private_cache, tmp_path, monkeypatch, one_thread):
    """geneval ref build, stopped after one batch and rerun, extracts only the rest and matches a clean build."""
    from geneval.features.extract import FeatureExtractor
    from geneval.reference_build import build_reference

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
        build_reference("digits[0:6]", out, batch_size=3, progress=False, with_images=False, shard_size=3)
    assert not out.exists() and seen == [3]
    flaky.resumed = True
    meta = build_reference("digits[0:6]", out, batch_size=3, progress=False, with_images=False, shard_size=3)
    assert seen == [3, 3] and meta["n"] == 6
    assert len(list(private_cache.glob("*/complete.json"))) == 1  # the finished store is the cache entry
    monkeypatch.setattr(FeatureExtractor, "extract", real)
    clean = tmp_path / "clean.npz"
    build_reference("digits[0:6]", clean, batch_size=6, progress=False, with_images=False, cache=False)
    with np.load(out) as a, np.load(clean) as b:
        np.testing.assert_allclose(a["mu"], b["mu"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(a["sigma"], b["sigma"], rtol=0, atol=1e-5)


def test_a_finished_job_never_removes_a_store_another_job_holds(tmp_path):
    """Two jobs with one key (two identical runs at once): the first to finish leaves the shards to
    the other, which removes them when it is done. flock locks per open file, so two stores in one
    process behave like two processes."""
    import numpy as np

    from geneval.runner.shards import ShardStore

    a = ShardStore(tmp_path, {"k": 1}, n=4, shard_size=2).open()
    b = ShardStore(tmp_path, {"k": 1}, n=4, shard_size=2).open()
    a.save(0, {"indices": np.arange(2)})
    assert a.remove() is False  # b still holds it
    arrays, _ = b.load(0)
    assert arrays["indices"].tolist() == [0, 1]
    assert b.remove() is True and not b.dir.exists()
