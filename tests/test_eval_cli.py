"""`geneval eval` / `geneval ref build`: bad inputs exit 2 with one line and no output file."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from geneval.cli import main


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def assert_usage_error(argv, capsys, match, out_file):
    if "--out" in argv:
        out_file = type(out_file)(argv[argv.index("--out") + 1])
    else:
        argv = [*argv, "--out", str(out_file)]
    code, out, err = run(argv, capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and match in lines[0], err
    assert out == ""
    assert not out_file.exists()
    assert not [p for p in out_file.parent.iterdir() if p.name.startswith(f".{out_file.name}")]  # no temp file
    return lines[0]


@pytest.fixture
def files(tmp_path, fmnist_test):
    x = fmnist_test.images[:8]
    d = {"tmp": tmp_path, "out": tmp_path / "results.json"}
    np.save(tmp_path / "good.npy", x)
    np.save(tmp_path / "one.npy", x[:1])
    np.save(tmp_path / "float.npy", x.astype(np.float32))
    np.save(tmp_path / "shape.npy", x[..., 0].reshape(8, -1, 2, 14))
    np.savez(tmp_path / "good.npz", arr_0=x)
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "corrupt" / name).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    np.savez(tmp_path / "stats.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    return d


@pytest.mark.parametrize(
    "case, argv, match",
    [
        ("missing path", ["{tmp}/nope", "--ref", "{tmp}/good.npy"], "not found"),
        ("missing ref", ["{tmp}/good.npy", "--ref", "{tmp}/nope.npz"], "not found"),
        ("empty folder", ["{tmp}/empty", "--ref", "{tmp}/good.npy"], "no images found"),
        ("truncated npz", ["{tmp}/trunc.npz", "--ref", "{tmp}/good.npy"], "corrupt or truncated"),
        ("wrong shape", ["{tmp}/shape.npy", "--ref", "{tmp}/good.npy"], "wrong image array shape"),
        ("float dtype", ["{tmp}/float.npy", "--ref", "{tmp}/good.npy"], "need a stated range"),
        ("N = 1", ["{tmp}/one.npy", "--ref", "{tmp}/good.npy"], "got N=1"),
        (
            "kid subset > N",
            ["{tmp}/good.npy", "--ref", "{tmp}/good.npz", "--metrics", "kid", "--kid-subset-size", "9"],
            "KID subset size 9 is larger",
        ),
        ("unknown metric", ["{tmp}/good.npy", "--ref", "{tmp}/good.npz", "--metrics", "fid,foo"], "unknown metric 'foo'"),
        ("stats-only ref", ["{tmp}/good.npy", "--ref", "{tmp}/stats.npz", "--metrics", "pr"], "statistics only"),
        ("no ref", ["{tmp}/good.npy", "--metrics", "fid"], "against a reference"),
        ("bad out suffix", ["{tmp}/good.npy", "--ref", "{tmp}/good.npz", "--out", "{tmp}/r.txt"], "unknown format .txt"),
    ],
)
def test_bad_inputs_exit_2_before_work(case, argv, match, files, capsys, monkeypatch):
    from geneval.features.extract import FeatureExtractor

    def boom(*a, **k):
        raise AssertionError(f"{case}: extraction started")

    monkeypatch.setattr(FeatureExtractor, "extract_all", boom)
    argv = ["eval", *[a.format(**files) for a in argv]]
    assert_usage_error(argv, capsys, match, files["out"])


def test_all_images_corrupt_is_fatal(files, capsys):
    line = assert_usage_error(
        ["eval", str(files["tmp"] / "corrupt"), "--ref", str(files["tmp"] / "good.npy"), "--metrics", "fid"],
        capsys,
        "no readable image among 2",
        files["out"],
    )
    assert "a.png" in line


def test_is_without_logits_weights_fails_in_preflight(files, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    line = assert_usage_error(
        ["eval", str(files["tmp"] / "good.npy"), "--metrics", "fid,is", "--ref", str(files["tmp"] / "good.npz")], capsys, "logits", files["out"]
    )
    # Names the file, its hash and where to put it / how to fetch it.
    assert "pt_inception-2015-12-05-6726825d.pth" in line and "6726825d0af5f729" in line
    assert "geneval weights fetch" in line


def test_mixed_sizes_and_rejections_handled(tmp_path, capsys, rng):
    """Mixed sizes and channel counts in one folder, one corrupt file: scored, counts reported."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"rgb{i}.png")
        Image.fromarray(rng.integers(0, 256, (20, 12), dtype=np.uint8)).save(folder / f"gray{i}.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(10))
    (folder / "README.txt").write_text("ignored")
    out = tmp_path / "r.csv"
    code, stdout, err = run(["eval", str(folder), "--ref", str(folder), "--metrics", "pr", "--out", str(out)], capsys)
    assert code == 0, err
    assert "read 4 images (1 rejected: broken.png" in err and "1 non-image files ignored" in err
    assert stdout.splitlines()[0].split() == ["metric", "value", "±", "std", "n"]
    assert [line.split()[0] for line in stdout.splitlines()[1:]] == ["precision", "recall"]
    import pandas as pd

    df = pd.read_csv(out)
    assert list(df.metric) == ["precision", "recall"] and (df.n == 4).all()
    assert (df.extra_samples_rejected == 1).all() and (df.value == 1.0).all()  # same set on both sides


def test_ref_build_cli_and_use_as_ref(tmp_path, capsys, fmnist_test):
    x = fmnist_test.images[200:206]
    np.save(tmp_path / "x.npy", x)
    with zipfile.ZipFile(tmp_path / "x.zip", "w") as zf:
        for i, im in enumerate(x):
            import io

            buf = io.BytesIO()
            Image.fromarray(im[..., 0]).save(buf, format="PNG")
            zf.writestr(f"imgs/{i}.png", buf.getvalue())
    ref = tmp_path / "ref.npz"
    code, out, err = run(["ref", "build", str(tmp_path / "x.npy"), "--out", str(ref)], capsys)
    assert code == 0, err
    assert out.startswith(f"wrote reference batch {ref}: N=6, mode=tf")
    meta = json.loads(str(np.load(ref)["geneval_meta"]))
    assert meta["n"] == 6 and meta["mode"] == "tf" and meta["source_sha256"]
    results = tmp_path / "r.json"
    code, out, err = run(["eval", str(tmp_path / "x.zip"), "--ref", str(ref), "--metrics", "pr", "--out", str(results)], capsys)
    assert code == 0, err
    rows = json.loads(results.read_text())["results"]
    assert [r["metric"] for r in rows] == ["precision", "recall"]
    assert rows[0]["extra"]["ref_origin"] == {"pool3": "file features"}
    assert rows[0]["value"] == 1.0 and rows[1]["value"] == 1.0  # zip of the same images as the reference
    # Bad ref-build inputs: exit 2, no output.
    bad = tmp_path / "bad.npz"
    for argv, match in [
        (["ref", "build", str(tmp_path / "nope"), "--out", str(bad)], "not found"),
        (["ref", "build", str(tmp_path / "x.npy"), "--out", str(tmp_path / "bad.txt")], ".npz"),
        (["ref", "build", str(tmp_path / "ref.npz"), "--out", str(bad), "--mode", "nearest"], "unknown mode"),
    ]:
        code, out, err = run(argv, capsys)
        assert code == 2 and match in err and err.startswith("error: "), err
        assert not bad.exists()
