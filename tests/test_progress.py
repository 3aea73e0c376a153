"""One progress mechanism (geneval.progress): `--progress auto|always|never` on every command,
no cursor codes off a terminal, one line per stream, rank 0 only."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import threading

import numpy as np
import pytest

from geneval.errors import GenevalError
from geneval.progress import Progress, active, progress_mode
from test_pipeline import make_tiny_checkpoint

ANSI = re.compile(r"\x1b\[")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("progress") / "tiny")


@pytest.fixture
def every_update(monkeypatch):
    """Plain lines on every update instead of every 10 s."""
    monkeypatch.setenv("GENEVAL_PROGRESS_INTERVAL", "0")


def _count(mode, file, total=4, desc="work", steps=(2, 2)):
    with Progress(total, desc, "img", mode, file=file) as bar:
        for k in steps:
            bar.update(k)
    return bar


# ---------------------------------------------------------------- the reporter itself


def test_modes_off_a_terminal(every_update):
    for mode in ("auto", True, "never", False):
        f = io.StringIO()
        assert not _count(mode, f).visible and f.getvalue() == "", mode
    f = io.StringIO()
    _count("always", f, total=4, desc="sampling ddim")
    lines = f.getvalue().splitlines()
    assert lines[0].startswith("sampling ddim: 2/4 img (50.0%) ") and " img/s" in lines[0]
    assert lines[-1].startswith("sampling ddim: 4/4 img (100.0%) ") and " in " in lines[-1]
    assert not ANSI.search(f.getvalue()) and "\r" not in f.getvalue()


def test_always_off_a_terminal_is_timed(monkeypatch):
    monkeypatch.setenv("GENEVAL_PROGRESS_INTERVAL", "3600")
    f = io.StringIO()
    _count("always", f, total=100, steps=[1] * 50)
    assert f.getvalue().count("\n") == 1 and "50/100 img (50.0%)" in f.getvalue()  # only the final line
    f = io.StringIO()
    _count("always", f, total=None, steps=[])
    assert f.getvalue() == ""  # nothing done: no line


def test_bytes_and_unknown_totals(every_update):
    f = io.StringIO()
    with Progress(None, "pytorch-fid", "B", "always", unit_scale=True, file=f) as bar:
        bar.update(1_500_000)
    line = f.getvalue().splitlines()[-1]
    assert line.startswith("pytorch-fid: 1.5MB ") and "B/s" in line and "%" not in line


def test_mode_values():
    assert [progress_mode(v) for v in (None, True, False, "auto", "always", "never")] == ["auto", "auto", "never", "auto", "always", "never"]
    with pytest.raises(GenevalError, match="unknown progress 'sometimes': choose one of auto, always, never"):
        progress_mode("sometimes")
    with pytest.raises(GenevalError, match="progress must be one of"):
        progress_mode(3)


def test_config_fields_take_modes_and_old_booleans(tmp_path):
    from geneval.config import RunConfig, load_toml, resolve_run_config
    from geneval.preflight import ExtractConfig

    assert RunConfig().progress == "auto" and RunConfig(progress=False).progress == "never" and RunConfig(progress=True).progress == "auto"
    assert ExtractConfig(progress=False).progress == "never" and ExtractConfig(progress="always").progress == "always"
    toml = tmp_path / "run.toml"
    toml.write_text('progress = "always"\n')
    assert resolve_run_config(load_toml(toml)).progress == "always"
    assert resolve_run_config({"progress": False}).progress == "never"
    assert resolve_run_config({"progress": "always"}, progress="never").progress == "never"  # a flag beats the file
    with pytest.raises(GenevalError, match="unknown progress 'loud'"):
        resolve_run_config({"progress": "loud"})
    with pytest.raises(GenevalError, match="progress must be"):
        resolve_run_config({"progress": 1})


def test_one_line_per_stream(every_update):
    """While a visible line is open, reporters opened inside it (a sampler, an extractor) stay silent."""
    f = io.StringIO()
    with Progress(4, "outer", "img", "always", file=f) as outer:
        assert active()
        inner = _count("always", f, desc="inner")
        assert not inner.visible
        outer.update(4)
    assert not active()
    assert "inner" not in f.getvalue() and "outer: 4/4" in f.getvalue()
    assert _count("always", f, desc="after").visible  # closed outer lines do not silence later ones


def test_only_rank_0_reports(monkeypatch, every_update):
    from geneval.runner import distributed

    monkeypatch.setattr(distributed, "current", lambda: distributed.Dist(rank=1, world=2))
    f = io.StringIO()
    assert not _count("always", f).visible and f.getvalue() == ""


def test_no_tqdm_outside_the_progress_module():
    """Every bar goes through geneval.progress: nobody else opens tqdm on stderr."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "geneval"
    users = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if re.search(r"^\s*(from|import) tqdm", p.read_text(encoding="utf-8"), re.M))
    assert users == ["progress.py"], users


# ---------------------------------------------------------------- the commands


def _cli(argv, capsys):
    from geneval.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def _sample(ckpt, tmp_path, *extra):
    base = ["sample", "--model", str(ckpt), "--num-samples", "4", "--steps", "2", "--batch-size", "2", "--device", "cpu"]
    return [*base, "--out", str(tmp_path / "s.npz"), *extra]


@pytest.mark.parametrize("flags", [[], ["--progress", "auto"], ["--progress", "never"], ["--no-progress"]])
def test_sample_cli_is_silent_off_a_terminal(flags, ckpt, tmp_path, capsys, every_update, one_thread):
    code, out, err = _cli(_sample(ckpt, tmp_path, *flags), capsys)
    assert code == 0, err
    assert [line for line in err.splitlines() if not line.startswith("geneval sample: ")] == [], err  # no progress bytes at all


def test_sample_cli_always_writes_plain_lines(ckpt, tmp_path, capsys, every_update, one_thread):
    code, out, err = _cli(_sample(ckpt, tmp_path, "--progress", "always"), capsys)
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("sampling ddim: ")]
    assert lines[0].startswith("sampling ddim: 2/4 img (50.0%)") and lines[-1].startswith("sampling ddim: 4/4 img (100.0%)")
    assert not ANSI.search(err) and "\r" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--num-samples", "4"],
        ["sweep", "--guidance", "0,1", "--convention", "w"],
        ["eval", "fashion-mnist:test[0:4]", "--ref", "fashion-mnist:test[4:8]"],
        ["ref", "build", "fashion-mnist:test[0:4]", "--out", "{tmp}/ref.npz"],
        ["sample", "--model", "demo", "--num-samples", "2", "--out", "{tmp}/s.npz"],
        ["recon", "--num-samples", "4"],
        ["weights", "fetch", "pytorch-fid"],
    ],
)
def test_bad_progress_value_is_one_error_line(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("geneval.features.extract.FeatureExtractor.extract", lambda *a, **k: pytest.fail("extraction ran"))
    code, out, err = _cli([a.format(tmp=tmp_path) for a in argv] + ["--progress", "sometimes"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0] == "error: unknown progress 'sometimes': choose one of auto, always, never"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_every_long_command_offers_progress():
    from test_core import _geneval_options

    options = _geneval_options()
    for cmd in ("run", "sweep", "eval", "ref build", "sample", "recon", "weights fetch"):
        spellings = [s for group in options[cmd] for s in group]
        assert "--progress" in spellings and "--no-progress" in spellings, cmd


def test_quiet_implies_never():
    from geneval.cli import progress_choice

    assert progress_choice(None) is None and progress_choice("always") == "always"
    assert progress_choice("always", quiet=True) == "never" and progress_choice("auto", no_progress=True) == "never"
    with pytest.raises(GenevalError, match="unknown progress"):
        progress_choice("loud", quiet=True)  # still checked


# ---------------------------------------------------------------- on a terminal


class _Terminal:
    """A pseudo-terminal standing in for stderr: what is written to it is collected by a thread."""

    def __init__(self):
        import fcntl
        import struct
        import termios
        import tty

        self.master, slave = os.openpty()
        tty.setraw(slave)  # no \n → \r\n translation: every \r seen is the bar's own
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
        self.file = os.fdopen(slave, "w", buffering=1)
        self.chunks: list[bytes] = []
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self):
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the slave side is closed
                return
            if not data:
                return
            self.chunks.append(data)

    def close(self) -> str:
        self.file.close()
        self.thread.join(timeout=30)
        os.close(self.master)
        return b"".join(self.chunks).decode("utf-8", "replace")


def _bar_labels(text: str) -> set[str]:
    """The descriptions of the tqdm bars drawn in `text` ('desc: 50%|...')."""
    return {m.group(1) for seg in re.split(r"[\r\n]", text) if (m := re.match(r"^(.+?): +\d+%\|", seg))}


@contextlib.contextmanager
def _on_a_terminal():
    """sys.stderr is a pseudo-terminal inside the block; yields a list that receives what was written."""
    term, saved, seen = _Terminal(), sys.stderr, []
    sys.stderr = term.file  # set in the test body: pytest re-installs its own capture before each phase
    try:
        yield seen
    finally:
        sys.stderr = saved
        seen.append(term.close())


def test_live_bar_on_a_terminal(ckpt, tmp_path, one_thread):
    from geneval.cli import main

    with _on_a_terminal() as seen, pytest.raises(SystemExit) as e:
        assert sys.stderr.isatty()
        main(_sample(ckpt, tmp_path))  # auto
    text = seen[0]
    assert e.value.code == 0, text
    assert "\r" in text and _bar_labels(text) == {"sampling ddim"}, text
    assert "4/4" in text


def test_run_stream_shows_one_bar_on_a_terminal(ckpt, tmp_path, one_thread):
    """run's stream (sampler → features → shards): one line, even when the layers inside ask for their own."""
    from geneval.models.formats import load_model
    from geneval.runner.distributed import current
    from geneval.runner.execute import Chunk, Needs, stream_features
    from geneval.runner.shards import ShardStore
    from geneval.sampling.generate import SamplingConfig, generate_range

    model = load_model(str(ckpt), device="cpu")
    cfg = SamplingConfig(n=4, steps=2)

    def produce(lo, hi):
        for b in generate_range(model, cfg, None, None, lo, hi, 2, "cpu", "always"):  # asks for a bar of its own
            yield Chunk(b.images, b.labels, b.indices)

    def extract(images):
        with Progress(len(images), "inception", "img", "always") as bar:  # so does the extractor
            bar.update(len(images))
        return {"pool3": np.asarray(images, np.float32).reshape(len(images), -1)[:, :4]}

    store = ShardStore(tmp_path / "store", {"kind": "test"}, 4, 2).open()
    needs = Needs(frozenset({"pool3"}), frozenset())
    with _on_a_terminal() as seen:
        streamed = stream_features(store, produce, extract, needs, current(), progress="auto", desc="sampling+features")
    text = seen[0]
    assert streamed.n == 4
    assert _bar_labels(text) == {"sampling+features"}, text
