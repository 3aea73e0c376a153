"""Fuzzed readers: any bytes give a result or a one-line GenevalError, never another exception.

Covers image folders, zips, npz (ADM sample and reference batches, pytorch-fid stats), npy, TOML
configs and result JSON read by report / compare / gate. Inputs are random bytes, valid files
mutated (byte flips, truncation) and valid containers holding random content, so the fuzzer
reaches past the magic numbers into the parsers.

Budget: the "ci" profile of tests/conftest.py (200 examples per test, deterministic); run
`pytest tests/test_fuzz_readers.py --hypothesis-profile=long` to explore more.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from geneval.config import RunConfig, load_toml, resolve_run_config
from geneval.errors import GenevalError
from geneval.report.compare import compare_runs, deltas_json, deltas_markdown, load_runs
from geneval.report.gate import make_baseline, run_gate
from geneval.report.tables import FORMATS, build_comparison, render
from geneval.results import read_results
from geneval.sources import open_source


@pytest.fixture(scope="module", autouse=True)
def _small_pixel_limit():
    # Mutated headers often declare huge images; Pillow's bomb limit (89 Mpx) is what guards
    # users, a lower one keeps the fuzz fast and small. The code path is the same.
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1 << 20
    yield
    Image.MAX_IMAGE_PIXELS = old


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


class _Dir:
    """A fresh folder per example (function-scoped tmp_path does not reset between examples)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __enter__(self) -> Path:
        self.path = Path(tempfile.mkdtemp(dir=self.root))
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _clean_error(e: GenevalError) -> None:
    msg = str(e)
    assert msg.strip(), "empty error message"
    assert "\n" not in msg and "\r" not in msg, f"multi-line error: {msg!r}"
    assert "object at 0x" not in msg, f"object repr in error: {msg!r}"


def _outcome(fn):
    """Run fn; a GenevalError must be one clean line; anything else propagates (test fails)."""
    try:
        return fn()
    except GenevalError as e:
        _clean_error(e)
        return e


def _consume(spec, **kw) -> None:
    """Open a source and use it as eval would: describe, check, stream everything, hash."""
    src = open_source(spec, **kw)
    assert "\n" not in src.describe()
    src.check_nonempty()
    if src.has_images:
        total = 0
        for imgs, labels in src.batches(3):
            assert imgs.dtype == np.uint8 and imgs.ndim == 4 and imgs.shape[-1] in (1, 3, 4)
            assert len(imgs) >= 1 and min(imgs.shape[1:3]) >= 1 and imgs.flags.c_contiguous
            if labels is not None:
                assert labels.dtype == np.int64 and len(labels) == len(imgs)
            total += len(imgs)
        assert total == src.report.read
        if src.n is not None and src.kind in ("folder", "zip"):
            assert src.report.read <= src.n
        line = src.report.summary()
        assert "\n" not in line and "object at 0x" not in line, line
    for layer, (mu, sigma) in src.stats.items():
        assert mu.dtype == np.float64 and sigma.shape == (len(mu), len(mu)) and np.isfinite(sigma).all(), layer
    assert len(src.content_hash()) == 64


# -- building blocks --------------------------------------------------------------------------
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "GIF", "TIFF")
MODES = ("L", "RGB", "RGBA", "P", "1", "LA", "I;16", "F", "CMYK")
FILE_NAMES = ("a.png", "b.jpg", "c.JPEG", "d.webp", "e.bmp", "sub/f.png", "sub/deep/g.jpg", "notes.txt", ".hidden.png")


@st.composite
def image_bytes(draw) -> bytes:
    """A small valid image in some format and mode (what Pillow can write)."""
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    fmt, mode = draw(st.sampled_from(IMAGE_FORMATS)), draw(st.sampled_from(MODES))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)
    im = Image.fromarray(pixels, "RGBA").convert(mode if mode not in ("I;16", "F") else "L")
    if mode in ("I;16", "F"):
        im = im.convert("I").convert(mode) if mode == "F" else Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
    buf = io.BytesIO()
    try:
        im.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):  # format cannot hold this mode: plain RGB instead
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format=fmt)
    return buf.getvalue()


@st.composite
def mutated(draw, base: st.SearchStrategy[bytes]) -> bytes:
    """Valid bytes with a few bytes overwritten, inserted or cut off."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 6))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(("set", "insert", "delete")))
        byte = draw(st.integers(0, 255))
        if op == "set":
            data[pos] = byte
        elif op == "insert":
            data.insert(pos, byte)
        else:
            del data[pos]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def any_bytes(valid: st.SearchStrategy[bytes], max_size: int = 512) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=max_size), valid, mutated(valid))


PIXEL_DTYPES = st.sampled_from([np.uint8, np.float32, np.float64, np.float16, np.int64, np.int8, np.bool_, np.complex64])


def small_arrays(dtypes=PIXEL_DTYPES, max_dims: int = 4) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=5))


@st.composite
def image_arrays(draw) -> np.ndarray:
    """Arrays shaped like images (so layouts are accepted) with extreme float values often."""
    layout = draw(st.sampled_from(("nhwc", "nchw", "nhw", "other")))
    n, h, w = draw(st.integers(0, 5)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    c = draw(st.sampled_from((1, 3, 4, 2)))
    shape = {"nhwc": (n, h, w, c), "nchw": (n, c, h, w), "nhw": (n, h, w)}.get(layout) or draw(
        hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4)
    )
    dtype = draw(PIXEL_DTYPES)
    if np.dtype(dtype).kind == "f":
        elements = st.floats(-2, 2, width=16) | st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1.0, -1.0])
        return draw(hnp.arrays(dtype, shape, elements=elements))
    return draw(hnp.arrays(dtype, shape))


def _npz_bytes(arrays: dict[str, np.ndarray], compressed: bool) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


@st.composite
def npz_contents(draw) -> dict[str, np.ndarray]:
    """The keys geneval reads, with shapes that are often right and values that often are not."""
    out: dict[str, np.ndarray] = {}
    if draw(st.booleans()):
        out["arr_0"] = draw(image_arrays())
    if draw(st.booleans()):
        n = out["arr_0"].shape[0] if "arr_0" in out and out["arr_0"].ndim and draw(st.booleans()) else draw(st.integers(0, 4))
        out["arr_1"] = draw(hnp.arrays(st.sampled_from([np.int64, np.int32, np.uint8, np.float32]), (n,)))
    for mk, sk in (("mu", "sigma"), ("mu_s", "sigma_s")):
        if draw(st.booleans()):
            d = draw(st.integers(0, 4))
            fl = st.floats(allow_nan=True, allow_infinity=True, width=32)
            out[mk] = draw(hnp.arrays(np.float64, (d,), elements=fl)) if draw(st.booleans()) else draw(small_arrays())
            if draw(st.integers(0, 4)):  # mostly with its partner
                out[sk] = draw(hnp.arrays(np.float64, (d, d), elements=fl)) if draw(st.booleans()) else draw(small_arrays())
    if draw(st.booleans()):
        out["geneval_pool3"] = draw(small_arrays(max_dims=3))
    if draw(st.booleans()):
        meta = draw(
            st.one_of(
                st.dictionaries(
                    st.sampled_from(["n", "mode", "weights_sha256"]), st.one_of(st.integers(-3, 10**20), st.text(max_size=5), st.none(), st.floats())
                ),
                st.lists(st.integers(), max_size=2),
            )
        )
        text = json.dumps(meta) if draw(st.booleans()) else draw(st.text(max_size=20))
        out["geneval_meta"] = np.asarray(text) if draw(st.integers(0, 3)) else draw(small_arrays())
    if draw(st.integers(0, 5)) == 0:
        out["other"] = draw(small_arrays())
    return out


def _write_and_consume(folder: Path, name: str, data: bytes, **kw) -> None:
    path = folder / name
    path.write_bytes(data)
    _outcome(lambda: _consume(path, **kw))


FLOAT_RANGES = st.sampled_from([None, "0,1", "-1,1"])


# -- image folders and zips ----------------------------------------------------------------
@given(files=st.dictionaries(st.sampled_from(FILE_NAMES), any_bytes(image_bytes()), min_size=0, max_size=4))
def test_fuzz_image_folder(scratch, files):
    with _Dir(scratch) as d:
        root = d / "imgs"
        root.mkdir()
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        _outcome(lambda: _consume(root))


@st.composite
def zip_bytes(draw) -> bytes:
    """A valid zip of random members: image-like names, __MACOSX forks, folders, duplicates."""
    buf = io.BytesIO()
    names = st.sampled_from(FILE_NAMES + ("__MACOSX/._a.png", "dir/", "a.png"))
    members = draw(st.lists(st.tuples(names, any_bytes(image_bytes(), 256)), max_size=4))
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]))
            with pytest.warns(UserWarning) if name in zf.NameToInfo else _null():
                zf.writestr(name, data, compress_type=method)
    return buf.getvalue()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@given(data=any_bytes(zip_bytes(), 1024))
def test_fuzz_zip(scratch, data):
    with _Dir(scratch) as d:
        _write_and_consume(d, "x.zip", data)


# -- npz and npy ---------------------------------------------------------------------------
@given(arrays=npz_contents(), compressed=st.booleans(), float_range=FLOAT_RANGES)
def test_fuzz_npz_contents(scratch, arrays, compressed, float_range):
    with _Dir(scratch) as d:
        _write_and_consume(d, "x.npz", _npz_bytes(arrays, compressed), float_range=float_range)


@given(data=any_bytes(st.builds(_npz_bytes, npz_contents(), st.booleans()), 1024), float_range=FLOAT_RANGES)
def test_fuzz_npz_bytes(scratch, data, float_range):
    with _Dir(scratch) as d:
        _write_and_consume(d, "x.npz", data, float_range=float_range)


def _npy_bytes(arr: np.ndarray, fortran: bool) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asfortranarray(arr) if fortran else arr)
    return buf.getvalue()


@given(data=any_bytes(st.builds(_npy_bytes, image_arrays(), st.booleans()), 1024), float_range=FLOAT_RANGES)
def test_fuzz_npy(scratch, data, float_range):
    with _Dir(scratch) as d:
        _write_and_consume(d, "x.npy", data, float_range=float_range)


# -- TOML configs ------------------------------------------------------------------------
def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return {math.inf: "inf", -math.inf: "-inf"}.get(v, "nan" if v != v else repr(v))
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string for these characters
    return str(v)


TOML_VALUES = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.booleans(),
    st.text(max_size=8),
    st.sampled_from(["tf", "ddim", "fid,is", "w", "s", "exact", "cpu", "demo"]),
    st.lists(st.sampled_from(["fid", "is", "kid"]), max_size=3),
)
FIELD_NAMES = [f.name for f in dataclasses.fields(RunConfig)]


@st.composite
def toml_text(draw) -> bytes:
    keys = st.sampled_from(FIELD_NAMES + ["bogus"])
    table = draw(st.dictionaries(keys, TOML_VALUES, max_size=6))
    lines = [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    if draw(st.booleans()):
        lines.insert(0, "[run]")
    return "\n".join(lines).encode()


@given(data=any_bytes(toml_text(), 256))
def test_fuzz_toml_config(scratch, data):
    def load():
        path = d / "c.toml"
        path.write_bytes(data)
        cfg = resolve_run_config(load_toml(path))
        assert isinstance(cfg, RunConfig)
        json.dumps(cfg.to_dict(), default=str)

    with _Dir(scratch) as d:
        _outcome(load)


# -- result JSON for report / compare / gate ---------------------------------------------
ROW_VALUES = st.one_of(
    st.none(),
    st.integers(-5, 10**20),
    st.floats(),
    st.booleans(),
    st.text(max_size=6),
    st.sampled_from(["nan", "inf", "1e3", "true", "", "fid"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
ROW_KEYS = [
    "run_id",
    "metric",
    "value",
    "std",
    "n",
    "higher_is_better",
    "model",
    "sampler",
    "steps",
    "guidance",
    "convention",
    "seed",
    "mode",
    "features",
    "weights_sha256",
    "ref_sha256",
    "created_at",
    "wall_s",
    "extra",
    "unknown_field",
]


ODD_NAMES = ["a\nb", "x|y", "<b>", "é", " ", "a\tb"]
EXTRAS = st.fixed_dictionaries(
    {},
    optional={
        "std_method": st.sampled_from(["bootstrap-200", "seed-repeats-3", "seed-repeats", "split-std", "seed-repeats-x"]),
        "repeats": st.one_of(st.integers(-2, 5), st.just(10**400), st.floats(), st.text(max_size=2)),
        "ci_low": st.one_of(st.floats(), st.integers(), st.just(10**400), st.booleans()),
        "ci_high": st.one_of(st.floats(), st.integers(), st.just(-(10**400)), st.text(max_size=2)),
        "splits": st.integers(-1, 20),
    },
)


@st.composite
def result_rows(draw) -> dict:
    """Rows that are often well-formed (so they reach the report and gate) and often not."""
    names = st.sampled_from(["a", "b", "c"]) if draw(st.integers(0, 5)) else st.sampled_from(ODD_NAMES)
    metrics = st.sampled_from(["fid", "is", "kid", "x"]) if draw(st.integers(0, 5)) else st.sampled_from(ODD_NAMES)
    row = {"run_id": draw(names), "metric": draw(metrics), "value": draw(st.floats(-10, 100) | st.sampled_from([math.nan, math.inf, 1e308, 0.0]))}
    if draw(st.booleans()):
        row["std"] = draw(st.none() | st.floats(0, 5) | st.sampled_from([1e308, math.inf, 1e-320]))
        row["n"] = draw(st.sampled_from([100, 200]))
        row["seed"] = draw(st.integers(0, 3))
        row["extra"] = draw(EXTRAS)
    for key in draw(st.lists(st.sampled_from(ROW_KEYS), max_size=4)):
        row[key] = draw(ROW_VALUES)
    return row


@st.composite
def results_json(draw) -> bytes:
    rows = draw(st.lists(result_rows(), max_size=5))
    shape = draw(st.sampled_from(["object", "list", "odd"]))
    obj = (
        {"results": rows, "config": draw(st.sampled_from([{}, None, [], "x"]))}
        if shape == "object"
        else (rows if shape == "list" else draw(ROW_VALUES))
    )
    return json.dumps(obj).encode()  # NaN / Infinity tokens included, as Python writes them


@given(data=any_bytes(results_json(), 512), base=results_json(), suffix=st.sampled_from([".json", ".jsonl"]))
def test_fuzz_results_report_and_gate(scratch, data, base, suffix):
    with _Dir(scratch) as d:
        path, bpath = d / f"r{suffix}", d / "baseline.json"
        path.write_bytes(data)
        bpath.write_bytes(base)

        def report():
            runs = load_runs([path])
            for allow in (False, True):
                cmp = _outcome(lambda allow=allow: build_comparison(runs, allow_incomparable=allow))
                if not isinstance(cmp, GenevalError):
                    for fmt in FORMATS:
                        render(cmp, fmt)
            if len(runs) >= 2:
                deltas = _outcome(lambda: compare_runs(runs[0], runs[1], allow_incomparable=True))
                if not isinstance(deltas, GenevalError):
                    deltas_markdown(deltas, 3.0)
                    deltas_json(deltas, 3.0)
            _outcome(lambda: make_baseline(runs))
            _outcome(lambda: run_gate(read_results(path), read_results(bpath)))

        _outcome(report)


# -- crashes fuzzing found in config.py and results.py, fixed: each input is a one-line error now
@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"a = " + b"[" * 5000 + b"]" * 5000, id="toml-deep-array"),
        pytest.param(b"a = " + b"{b = " * 3000 + b"1" + b"}" * 3000, id="toml-deep-table"),
        pytest.param(b"metrics = [1, 2]", id="toml-metrics-int-list"),
        pytest.param(b'guidance = ""', id="toml-guidance-string"),
    ],
)
def test_known_config_crashes(tmp_path, data):
    (tmp_path / "c.toml").write_bytes(data)
    _outcome(lambda: resolve_run_config(load_toml(tmp_path / "c.toml")))


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, b'{"results": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"])
def test_known_results_crash_deep_json(tmp_path, body):
    (tmp_path / "r.json").write_bytes(body)
    _outcome(lambda: read_results(tmp_path / "r.json"))
