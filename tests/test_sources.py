"""Sources: every input format yields the same uint8 NHWC pixels; bad inputs fail clearly.

No Inception here: these tests check pixels, counts, hashes and errors only (fast).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geneval.errors import GenevalError
from geneval.sources import open_source
from geneval.sources.base import hash_array
from geneval.sources.reference import ImageSpool, write_reference


def _collect(src, batch_size=3):
    imgs, labels = [], []
    for b, lab in src.batches(batch_size):
        assert b.dtype == np.uint8 and b.ndim == 4 and b.shape[-1] in (1, 3, 4)
        imgs.append(b)
        if lab is not None:
            labels.append(lab)
    return np.concatenate(imgs), (np.concatenate(labels) if labels else None)


@pytest.fixture
def images(rng):
    return rng.integers(0, 256, (7, 12, 10, 3), dtype=np.uint8)


def _write_folder(root: Path, imgs: np.ndarray) -> Path:
    # Nested, and named so that sorted path order equals index order.
    for i, im in enumerate(imgs):
        sub = root / ("a" if i < 3 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im.squeeze(-1) if im.shape[-1] == 1 else im).save(sub / f"{i:03d}.png")
    return root


def test_all_formats_give_identical_pixels(tmp_path, images):
    labels = np.arange(len(images))
    folder = _write_folder(tmp_path / "imgs", images)
    zpath = tmp_path / "imgs.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(folder.rglob("*.png")):
            zf.write(p, p.relative_to(folder).as_posix())
        zf.writestr("__MACOSX/a/._000.png", b"junk")  # resource fork: ignored, counted
    np.savez(tmp_path / "s.npz", arr_0=images, arr_1=labels)
    np.savez_compressed(tmp_path / "c.npz", arr_0=images)
    np.save(tmp_path / "nhwc.npy", images)
    np.save(tmp_path / "nchw.npy", images.transpose(0, 3, 1, 2))
    specs = [
        folder,
        zpath,
        tmp_path / "s.npz",
        tmp_path / "c.npz",
        tmp_path / "nhwc.npy",
        tmp_path / "nchw.npy",
        images,
        torch.from_numpy(images).permute(0, 3, 1, 2),
    ]
    for spec in specs:
        src = open_source(spec)
        assert src.n == len(images), src.describe()
        got, got_labels = _collect(src)
        np.testing.assert_array_equal(got, images, err_msg=src.describe())
        assert src.report.read == len(images) and src.report.n_rejected == 0
    _, lab = _collect(open_source(tmp_path / "s.npz"))
    np.testing.assert_array_equal(lab, labels)
    assert open_source(zpath).report.ignored == 0  # counted while streaming
    z = open_source(zpath)
    _collect(z)
    assert z.report.ignored == 1


def test_grayscale_and_alpha_channels(tmp_path, rng):
    gray = rng.integers(0, 256, (9, 8), dtype=np.uint8)
    rgba = rng.integers(0, 256, (9, 8, 4), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    Image.fromarray(rgba).save(tmp_path / "r.png")
    Image.fromarray(rgba[..., :3]).convert("P").save(tmp_path / "p.png")
    (tmp_path / "notes.txt").write_text("not an image")
    src = open_source(tmp_path)
    shapes = sorted(b.shape for b, _ in src.batches(8))
    assert shapes == [(1, 9, 8, 1), (1, 9, 8, 3), (1, 9, 8, 4)]
    assert src.report.read == 3 and src.report.ignored == 1
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "g.png"))[..., None], next(b for b, _ in open_source(tmp_path).batches(8) if b.shape[-1] == 1)[0]
    )


def test_corrupt_file_rejected_with_reason_and_stream_continues(tmp_path, images):
    folder = _write_folder(tmp_path / "f", images[:4])
    good = (folder / "a" / "000.png").read_bytes()
    (folder / "a" / "bad.png").write_bytes(good[: len(good) // 2])  # truncated
    (folder / "zzz.jpg").write_bytes(b"not a jpeg at all")
    src = open_source(folder)
    got, _ = _collect(src)
    assert len(got) == 4
    assert src.report.read == 4 and src.report.n_rejected == 2
    reasons = dict(src.report.rejected)
    assert "a/bad.png" in reasons and "truncated" in reasons["a/bad.png"]
    assert "zzz.jpg" in reasons
    line = src.report.summary()
    assert line.startswith("read 4 images (2 rejected: a/bad.png") and "\n" not in line


def test_all_corrupt_is_fatal(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "y.png").write_bytes(b"")
    src = open_source(tmp_path)
    with pytest.raises(GenevalError, match=r"no readable image among 2 file\(s\).*x.png"):
        _collect(src)


def test_16bit_png_rejected(tmp_path, rng):
    Image.fromarray(rng.integers(0, 65535, (6, 6), dtype=np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(rng.integers(0, 255, (6, 6), dtype=np.uint8)).save(tmp_path / "ok.png")
    src = open_source(tmp_path)
    _collect(src)
    assert src.report.read == 1
    assert "16-bit" in dict(src.report.rejected)["deep.png"]


def test_mixed_sizes_grouped_into_uniform_batches(tmp_path, rng):
    sizes = [(8, 8), (12, 6), (8, 8), (12, 6), (8, 8), (5, 7)]
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    src = open_source(tmp_path)
    batches = [b for b, _ in src.batches(2)]
    assert sum(len(b) for b in batches) == len(sizes) == src.report.read
    assert all(len(b) <= 2 for b in batches)
    assert sorted((b.shape[1:3], len(b)) for b in batches) == sorted([((8, 8), 2), ((8, 8), 1), ((12, 6), 2), ((5, 7), 1)])


def test_truncated_and_corrupt_npz_are_fatal(tmp_path, images):
    np.savez(tmp_path / "s.npz", arr_0=images)
    data = (tmp_path / "s.npz").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(GenevalError, match="corrupt or truncated"):
        open_source(tmp_path / "trunc.npz")
    # Flip bytes inside arr_0's pixel data: the header still parses, the CRC check fails.
    bad = bytearray(data)
    start = data.index(b"NUMPY") + 200
    bad[start : start + 16] = bytes(16)
    (tmp_path / "crc.npz").write_bytes(bytes(bad))
    with pytest.raises(GenevalError, match="corrupt or truncated arr_0"):
        _collect(open_source(tmp_path / "crc.npz"))  # small members fail at open, large ones mid-stream


@pytest.mark.parametrize(
    "arr, match",
    [
        (np.zeros((4, 9, 9, 7), np.uint8), "wrong image array shape"),
        (np.zeros((4, 9), np.uint8), "wrong image array shape"),
        (np.zeros((4, 9, 9, 3), np.int64), "dtype int64 is not supported"),
        (np.zeros((4, 9, 9, 3), np.float32), "need a stated range"),
    ],
)
def test_bad_arrays_rejected(tmp_path, arr, match):
    with pytest.raises(GenevalError, match=match):
        open_source(arr)
    np.save(tmp_path / "a.npy", arr)
    with pytest.raises(GenevalError, match=match):
        open_source(tmp_path / "a.npy")
    np.savez(tmp_path / "a.npz", arr_0=arr)
    with pytest.raises(GenevalError, match=match):
        open_source(tmp_path / "a.npz")


def test_float_arrays_with_stated_range():
    x = np.array([-1.0, -0.5, 0.0, 0.999, 1.0], np.float32).reshape(1, 1, 5, 1).repeat(2, axis=0)
    got, _ = _collect(open_source(x, float_range="-1,1"))
    # ADM's quantisation: ((x + 1) * 127.5) truncated.
    np.testing.assert_array_equal(got[0, 0, :, 0], [0, 63, 127, 254, 255])
    got, _ = _collect(open_source((x + 1) / 2, float_range="0,1"))
    np.testing.assert_array_equal(got[0, 0, :, 0], [0, 64, 128, 255, 255])
    with pytest.raises(GenevalError, match="outside the stated range"):
        _collect(open_source(x * 2, float_range="-1,1"))


def test_statistics_files(tmp_path, rng):
    mu, sigma = rng.normal(size=6), np.eye(6)
    np.savez(tmp_path / "fid.npz", mu=mu, sigma=sigma)
    src = open_source(tmp_path / "fid.npz")
    assert not src.has_images and src.kind == "stats" and src.n is None
    np.testing.assert_array_equal(src.stats["pool3"][0], mu)
    with pytest.raises(GenevalError, match="statistics only"):
        list(src.batches(4))
    np.savez(tmp_path / "ref.npz", arr_0=rng.integers(0, 255, (3, 4, 4, 3), dtype=np.uint8), mu=mu, sigma=sigma, mu_s=mu[:2], sigma_s=np.eye(2))
    ref = open_source(tmp_path / "ref.npz")
    assert ref.kind == "adm-ref" and ref.has_images and set(ref.stats) == {"pool3", "spatial"}
    np.savez(tmp_path / "half.npz", mu=mu)
    with pytest.raises(GenevalError, match="without its partner"):
        open_source(tmp_path / "half.npz")
    np.savez(tmp_path / "bad.npz", mu=mu, sigma=np.eye(5))
    with pytest.raises(GenevalError, match="not \\(d,\\) and \\(d, d\\)"):
        open_source(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", foo=mu)
    with pytest.raises(GenevalError, match="neither images"):
        open_source(tmp_path / "other.npz")


def test_paths_and_dataset_names(tmp_path):
    with pytest.raises(GenevalError, match="not found: .*nope"):
        open_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenevalError, match="no images found"):
        open_source(tmp_path / "empty").check_nonempty()
    (tmp_path / "zero.npz").write_bytes(b"")
    with pytest.raises(GenevalError, match="empty file"):
        open_source(tmp_path / "zero.npz")
    (tmp_path / "x.tif").write_bytes(b"123")
    with pytest.raises(GenevalError, match="unsupported input type .tif"):
        open_source(tmp_path / "x.tif")
    src = open_source("digits[10:20]")
    got, labels = _collect(src)
    assert got.shape == (10, 8, 8, 1) and labels.shape == (10,)
    with pytest.raises(GenevalError, match="slice"):
        open_source("digits[5:5]")


def test_content_hashes(tmp_path, images):
    a = open_source(images).content_hash()
    assert a == open_source(images.copy()).content_hash()
    assert a != open_source(images[:-1]).content_hash()
    assert hash_array(images.view(np.int8)) != hash_array(images)  # dtype is part of the hash
    folder = _write_folder(tmp_path / "f", images)
    h1 = open_source(folder).content_hash()
    (folder / "a" / "000.png").rename(folder / "a" / "999.png")
    assert open_source(folder).content_hash() != h1  # order changed
    np.save(tmp_path / "x.npy", images)
    assert len(open_source(tmp_path / "x.npy").content_hash()) == 64


def test_reference_writer_roundtrip(tmp_path, rng):
    spool = ImageSpool(tmp_path)
    batches = [(rng.integers(0, 256, (3, 5, 4, 1), dtype=np.uint8), None) for _ in range(2)]
    passed = list(spool.tee(batches))
    assert [b is p for (b, _), (p, _) in zip(batches, passed)] == [True, True]
    mu, sigma = rng.normal(size=4), np.cov(rng.normal(size=(4, 10)))
    out = write_reference(
        tmp_path / "ref.npz",
        {"pool3": (mu, sigma), "spatial": (mu[:2], sigma[:2, :2])},
        {"mode": "tf", "n": 6},
        images=spool,
        pool3=rng.normal(size=(6, 4)),
    )
    with np.load(out, allow_pickle=False) as z:  # what ADM's evaluator / pytorch-fid do
        assert z["arr_0"].shape == (6, 5, 4, 3) and z["arr_0"].dtype == np.uint8
        np.testing.assert_array_equal(z["arr_0"][:3], np.repeat(batches[0][0], 3, axis=-1))
        assert z["mu"].dtype == np.float64 and z["sigma"].shape == (4, 4) and z["sigma_s"].shape == (2, 2)
        assert z["geneval_pool3"].dtype == np.float32
    src = open_source(out)
    assert src.kind == "adm-ref" and src.meta == {"mode": "tf", "n": 6} and src.features["pool3"].shape == (6, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.npz"]  # spool and temp files gone


def test_reference_writer_refuses_mixed_sizes(tmp_path, rng):
    spool = ImageSpool(tmp_path)
    batches = [(rng.integers(0, 256, (2, 5, 5, 3), dtype=np.uint8), None), (rng.integers(0, 256, (2, 6, 5, 3), dtype=np.uint8), None)]
    with pytest.raises(GenevalError, match="one image size"):
        list(spool.tee(batches))
    spool.discard()
    assert list(tmp_path.iterdir()) == []
