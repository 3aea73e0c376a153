"""Readers under hostile inputs: symlink loops, late NaNs, Pillow's object reprs, damaged zips/npz.

Each test pins one promise of issue 16's reader part; the fuzz tests (test_fuzz_readers.py)
cover random bytes, these cover the constructed cases a fuzzer is unlikely to hit.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import geneval.sources.images as images_mod
from geneval.errors import GenevalError
from geneval.sources import open_source
from geneval.sources.arrays import scan_values
from geneval.sources.base import ReadReport


def _png(path: Path, value: int = 0, size: tuple[int, int] = (4, 4)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)


def _drain(src, batch_size: int = 4) -> int:
    return sum(len(b) for b, _ in src.batches(batch_size))


# -- folder walks and symlinks ------------------------------------------------------------------
def test_symlink_loop_counts_each_file_once(tmp_path):
    for i in range(4):
        _png(tmp_path / f"{i}.png", i)
    (tmp_path / "loop").symlink_to(".")  # issue 16: this made 4 files count as 164 images
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to("..")
    src = open_source(tmp_path)
    assert src.n == 4 and src.names == ["0.png", "1.png", "2.png", "3.png"]
    assert _drain(src) == 4
    assert src.report.links_skipped == 2
    line = src.report.summary()
    assert "2 symlinks skipped" in line and "\n" not in line
    assert "2 symlinks skipped" in src.describe()


def test_links_to_outside_folders_are_followed_once(tmp_path):
    outside, root = tmp_path / "data", tmp_path / "root"
    for i in range(3):
        _png(outside / f"{i}.png", i)
    root.mkdir()
    (root / "a").symlink_to(outside)
    (root / "b").symlink_to(outside)  # the same folder again: skipped
    (root / "c").symlink_to(root / "a")  # a link to a link to it: skipped
    src = open_source(root)
    assert src.names == ["a/0.png", "a/1.png", "a/2.png"]
    assert _drain(src) == 3 and src.report.links_skipped == 2


def test_real_path_wins_over_a_link_to_it(tmp_path):
    _png(tmp_path / "z_real" / "x.png")
    (tmp_path / "a_link").symlink_to("z_real")  # sorts first, but is followed after the real tree
    src = open_source(tmp_path)
    assert src.names == ["z_real/x.png"] and src.links_skipped == 1


def test_symlinked_files_count_once(tmp_path):
    # Choice: links to files are followed (a folder of links into a dataset is common), but a
    # file reached twice (directly and through a link, or through two links) counts once.
    outside = tmp_path / "o.png"
    _png(outside, 7)
    root = tmp_path / "root"
    _png(root / "real.png", 1)
    (root / "l1.png").symlink_to(outside)
    (root / "l2.png").symlink_to(outside)
    (root / "sub").mkdir()
    (root / "sub" / "again.png").symlink_to(root / "real.png")
    src = open_source(root)
    assert src.names == ["l1.png", "real.png"]
    assert _drain(src) == 2 and src.report.links_skipped == 2


def test_hard_links_are_separate_entries(tmp_path):
    _png(tmp_path / "a.png")
    os.link(tmp_path / "a.png", tmp_path / "b.png")
    src = open_source(tmp_path)
    assert src.n == 2 and src.links_skipped == 0


def test_fifo_named_png_is_rejected_not_waited_on(tmp_path):
    _png(tmp_path / "ok.png")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "lpipe.png").symlink_to(tmp_path / "pipe.png")
    src = open_source(tmp_path)
    assert _drain(src) == 1
    reasons = dict(src.report.rejected)
    assert "not a regular file" in reasons["pipe.png"] and "not a regular file" in reasons["lpipe.png"]


def test_unreadable_subfolder_is_reported(tmp_path, monkeypatch):
    _png(tmp_path / "ok.png")
    _png(tmp_path / "locked" / "x.png")
    real_scandir = os.scandir

    def scandir(path):  # chmod 0 does not stop root (CI runs as root), so refuse here
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(images_mod.os, "scandir", scandir)
    src = open_source(tmp_path)
    assert _drain(src) == 1
    assert dict(src.report.rejected)["locked"] == "cannot list folder: Permission denied"


def test_read_report_round_trips_links_skipped():
    rep = ReadReport(read=3, rejected=[("a.png", "bad")], ignored=1, links_skipped=2)
    assert ReadReport.from_dict(rep.to_dict()) == rep
    assert ReadReport.from_dict({"read": 1}).links_skipped == 0  # reports cached before the field


# -- non-finite / out-of-range float pixels --------------------------------------------------
def _floats(n: int = 400, bad_index: int | None = None, bad=np.nan) -> np.ndarray:
    x = np.random.default_rng(0).uniform(-1, 1, (n, 6, 5, 3)).astype(np.float32)
    if bad_index is not None:
        x[bad_index, 2, 3, 1] = bad
    return x


def test_late_nan_in_npy_fails_before_the_first_batch(tmp_path, monkeypatch):
    np.save(tmp_path / "x.npy", _floats(bad_index=399))
    monkeypatch.setattr("geneval.sources.arrays.SCAN_CHUNK_BYTES", 4096)  # many chunks
    src = open_source(tmp_path / "x.npy", float_range="-1,1")
    it = src.batches(8)
    with pytest.raises(GenevalError, match=r"image 399 \(0-based\) holds non-finite pixel values \(NaN\)"):
        next(it)  # nothing yielded: the scan runs before any batch reaches an extractor
    assert src.report.read == 0


@pytest.mark.parametrize("bad, kind", [(np.inf, "inf"), (-np.inf, "-inf"), (np.nan, "NaN")])
def test_in_memory_arrays_and_tensors_name_the_image(bad, kind):
    x = _floats(50, bad_index=37, bad=bad)
    for spec in (x, torch.from_numpy(x).permute(0, 3, 1, 2)):
        with pytest.raises(GenevalError, match=rf"image 37 \(0-based\) holds non-finite pixel values \({kind}\)"):
            next(open_source(spec, float_range="-1,1").batches(8))


def test_out_of_range_names_the_image(tmp_path):
    x = _floats(30, bad_index=21, bad=1.5)
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(GenevalError, match=r"image 21 \(0-based\) has pixel values in \[.*, 1\.5\], outside"):
        next(open_source(tmp_path / "x.npy", float_range="-1,1").batches(4))


def test_stored_npz_float_is_scanned_up_front(tmp_path):
    np.savez(tmp_path / "s.npz", arr_0=_floats(bad_index=398))
    it = open_source(tmp_path / "s.npz", float_range="-1,1").batches(8)
    with pytest.raises(GenevalError, match=r"arr_0: image 398 \(0-based\) holds non-finite"):
        next(it)


def test_compressed_npz_float_is_checked_per_batch_with_global_index(tmp_path):
    np.savez_compressed(tmp_path / "c.npz", arr_0=_floats(40, bad_index=13))
    src = open_source(tmp_path / "c.npz", float_range="-1,1")
    got = 0
    with pytest.raises(GenevalError, match=r"image 13 \(0-based\)"):
        for b, _ in src.batches(4):
            got += len(b)
    assert got == 12  # batches 0..2 passed; the one holding image 13 failed before it was yielded


def test_fortran_npz_float_is_scanned(tmp_path):
    np.savez(tmp_path / "f.npz", arr_0=np.asfortranarray(_floats(20, bad_index=19)))
    with pytest.raises(GenevalError, match=r"image 19 \(0-based\)"):
        next(open_source(tmp_path / "f.npz", float_range="-1,1").batches(4))


def test_scan_is_chunked_over_a_memmap(tmp_path):
    # A memmap is scanned slice by slice: the answer does not depend on the chunk size, and a
    # chunk smaller than one image still works (one image per step).
    x = _floats(64, bad_index=50)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    for chunk in (1, 360, 4096, 1 << 26):
        with pytest.raises(GenevalError, match=r"image 50 \(0-based\)"):
            scan_values(mm, "x", "-1,1", chunk_bytes=chunk)
    scan_values(mm[:50], "x", "-1,1", chunk_bytes=360)  # clean part: no error
    with pytest.raises(GenevalError, match=r"image 57 \(0-based\)"):
        scan_values(mm[43:], "x", "-1,1", start=50)


def test_clean_float_arrays_stream_unchanged(tmp_path):
    x = _floats(9)
    np.save(tmp_path / "x.npy", x)
    got = np.concatenate([b for b, _ in open_source(tmp_path / "x.npy", float_range="-1,1").batches(4)])
    np.testing.assert_array_equal(got, np.clip((x.astype(np.float64) + 1) * 127.5, 0, 255).astype(np.uint8))


# -- rejection reasons name files, never Python objects --------------------------------------
def test_unidentified_image_reason_has_no_object_repr(tmp_path):
    _png(tmp_path / "f" / "ok.png")
    (tmp_path / "f" / "junk.png").write_bytes(b"this is not an image at all")
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as zf:
        zf.write(tmp_path / "f" / "ok.png", "ok.png")
        zf.writestr("deep/junk.jpg", b"\x00" * 64)
    for spec, item in ((tmp_path / "f", "junk.png"), (tmp_path / "z.zip", "deep/junk.jpg")):
        src = open_source(spec)
        assert _drain(src) == 1
        reason = dict(src.report.rejected)[item]
        assert "object at 0x" not in reason and "not a recognised image format" in reason
        assert f"{item}: not a recognised image format" in src.report.summary()


def test_report_strips_object_reprs_from_any_reason():
    rep = ReadReport()
    rep.reject("m.png", "cannot identify image file <_io.BytesIO object at 0x7f3a2c1b9e50>")
    assert rep.rejected == [("m.png", "cannot identify image file")]


def test_npy_header_error_has_no_object_repr(tmp_path):
    # Found by the long fuzz profile: numpy's header parser names an ast node by its repr.
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (0 *0 *0, 0), }"
    data = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
    (tmp_path / "x.npy").write_bytes(data)
    with pytest.raises(GenevalError, match="unreadable or truncated .npy file") as e:
        open_source(tmp_path / "x.npy")
    assert "object at 0x" not in str(e.value)


# -- damaged zips -------------------------------------------------------------------------
def _zip_with(tmp_path: Path, members: dict[str, bytes], name: str = "z.zip") -> Path:
    p = tmp_path / name
    with zipfile.ZipFile(p, "w") as zf:
        for k, v in members.items():
            zf.writestr(k, v)
    return p


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_unsupported_and_encrypted_members_are_rejected(tmp_path):
    p = _zip_with(tmp_path, {"a.png": _png_bytes(), "b.png": _png_bytes(), "c.png": _png_bytes()})
    data = bytearray(p.read_bytes())
    zf = zipfile.ZipFile(io.BytesIO(bytes(data)))
    infos = {i.filename: i for i in zf.infolist()}
    cd = data.index(b"PK\x01\x02")  # central directory: flags at +8, method at +10 per entry
    entries = [cd]
    while (nxt := data.find(b"PK\x01\x02", entries[-1] + 4)) != -1:
        entries.append(nxt)
    by_name = {bytes(data[e + 46 : e + 46 + len(n)]).decode(): e for e, n in zip(entries, infos)}
    data[by_name["b.png"] + 10] = 99  # compression method 99: not supported
    data[infos["b.png"].header_offset + 8] = 99
    data[by_name["c.png"] + 8] |= 1  # encrypted flag
    data[infos["c.png"].header_offset + 6] |= 1
    p.write_bytes(bytes(data))
    src = open_source(p)
    assert _drain(src) == 1
    reasons = dict(src.report.rejected)
    assert set(reasons) == {"b.png", "c.png"}
    assert all(r.startswith("damaged zip member") for r in reasons.values())


def test_duplicate_member_names_are_reported(tmp_path):
    p = tmp_path / "d.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("a.png", b"junk")
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr("a.png", _png_bytes())
    src = open_source(p)
    assert src.n == 1 and _drain(src) == 1
    assert "stored more than once" in dict(src.report.rejected)["a.png"]


def test_oversized_members_and_files_are_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr(images_mod, "MAX_FILE_BYTES", 100)
    big = _png_bytes() + b"\0" * 200
    small = _png_bytes()
    assert len(small) <= 100
    p = _zip_with(tmp_path, {"big.png": big, "ok.png": small})
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "big.png").write_bytes(big)
    (tmp_path / "f" / "ok.png").write_bytes(small)
    for spec in (p, tmp_path / "f"):
        src = open_source(spec)
        assert _drain(src) == 1
        assert "larger than" in dict(src.report.rejected)["big.png"]


# -- damaged npz members -----------------------------------------------------------------
def test_lying_npz_header_fails_at_open(tmp_path):
    # Large enough that reading the header does not reach the member's end (and its CRC check).
    np.savez(tmp_path / "a.npz", arr_0=np.zeros((40, 8, 8, 3), np.uint8))
    data = (tmp_path / "a.npz").read_bytes().replace(b"(40, 8, 8, 3)", b"(90, 8, 8, 3)")
    (tmp_path / "b.npz").write_bytes(data)
    with pytest.raises(GenevalError, match=r"arr_0 is truncated: its header declares \(90, 8, 8, 3\)"):
        open_source(tmp_path / "b.npz")


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"arr_0": np.zeros((2, 4, 4, 3), np.uint8), "arr_1": np.array([0.5, 1.0])}, "arr_1 has dtype float64"),
        ({"mu": np.array(["a", "b"]), "sigma": np.eye(2)}, "mu has dtype <U1, expected float"),
        ({"mu": np.zeros(0), "sigma": np.zeros((0, 0))}, "d >= 1"),
        ({"arr_0": np.zeros((2, 4, 4, 3), np.uint8), "geneval_meta": np.asarray("[1, 2]")}, "expected a JSON object"),
        ({"arr_0": np.zeros((2, 4, 4, 3), np.uint8), "geneval_meta": np.asarray('{"n": "x"}')}, "'n' must be a count"),
        ({"mu": np.zeros(2), "sigma": np.eye(2), "geneval_pool3": np.zeros((2, 2), np.int8)}, "expected float features"),
    ],
)
def test_bad_npz_members_are_one_line_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "x.npz", **arrays)
    with pytest.raises(GenevalError, match=match) as e:
        open_source(tmp_path / "x.npz")
    assert "\n" not in str(e.value)


def test_object_member_is_refused_without_unpickling(tmp_path):
    np.savez(tmp_path / "x.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8), arr_1=np.array([{"a": 1}, None]))
    with pytest.raises(GenevalError, match="holds Python objects"):
        open_source(tmp_path / "x.npz")


def test_meta_n_is_used_for_stats_files(tmp_path):
    np.savez(tmp_path / "s.npz", mu=np.zeros(2), sigma=np.eye(2), geneval_meta=np.asarray(json.dumps({"n": 7})))
    assert open_source(tmp_path / "s.npz").n == 7


def test_undecodable_names_and_dangling_links_do_not_break_hash_or_summary(tmp_path):
    _png(tmp_path / "ok.png")
    (tmp_path / "missing.png").symlink_to(tmp_path / "gone.png")
    bad = os.fsencode(tmp_path) + b"/\xff\xfe.png"
    with open(bad, "wb") as f:
        f.write(b"not an image")
    src = open_source(tmp_path)
    assert src.n == 3
    h = src.content_hash()
    assert len(h) == 64
    assert _drain(src) == 1
    line = src.report.summary()
    line.encode("utf-8")  # printable: no lone surrogates left
    assert "missing.png: cannot read" in line and "\ufffd\ufffd.png: not a recognised image format" in line
    (tmp_path / "gone.png").write_bytes(b"now there")
    assert open_source(tmp_path).content_hash() != h  # the link's target now counts


def test_zip_member_with_empty_name_found_by_fuzzing(tmp_path):
    # Found by the long fuzz profile: a central directory entry with an empty file name made
    # zipfile's ZipInfo.is_dir() raise IndexError.
    data = b"PK\x01\x02" + bytes(29) + b"\x01" + bytes(119) + b"PK\x05\x06" + bytes(8) + b"\x99" + bytes(9)
    with pytest.raises(IndexError):  # the zipfile behaviour this guards against
        [i.is_dir() for i in zipfile.ZipFile(io.BytesIO(data)).infolist()]
    (tmp_path / "x.zip").write_bytes(data)
    with pytest.raises(GenevalError) as e:
        _drain(open_source(tmp_path / "x.zip"))
    assert str(e.value).endswith("x.zip: no images found")
