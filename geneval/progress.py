"""Progress reporting on stderr, for every command: one mechanism, three modes, one line per stream.

Modes (`--progress`, vocabulary `geneval.vocab.PROGRESS`):

- ``auto`` (default): a live one-line tqdm bar when stderr is a terminal (or a notebook);
  nothing at all when stderr is redirected, so logs and CI output never get cursor codes.
- ``always``: the live bar on a terminal; off a terminal a plain line (no ANSI codes, no
  carriage returns) every `GENEVAL_PROGRESS_INTERVAL` seconds (default 10), such as
  ``sampling ddim: 1200/50000 img (2.4%) 35.1 img/s eta 23m10s``, and a final line.
- ``never``: nothing.

Only rank 0 of a distributed job reports. One stream shows one line: while a visible
`Progress` is open, every `Progress` opened inside it (a sampler or an extractor called by
an outer loop that already counts the stream) stays silent.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

from geneval import vocab
from geneval.errors import GenevalError

DEFAULT_INTERVAL_S = 10.0
INTERVAL_ENV = "GENEVAL_PROGRESS_INTERVAL"

_open: list[Progress] = []  # visible reporters, outermost first


def progress_mode(value: Any) -> str:
    """The progress mode of `value`: a vocabulary string, or a bool for the Python API (True = auto, False = never).

    None means the default (auto). Anything else is a one-line GenevalError.
    """
    if value is None or value is True:
        return "auto"
    if value is False:
        return "never"
    if not isinstance(value, str):
        raise GenevalError(f"progress must be one of {', '.join(vocab.PROGRESS)} (or a bool), got {value!r}")
    return vocab.check("progress", value)


def active() -> bool:
    """Whether a visible progress line is open in this process (an inner one would stay silent)."""
    return bool(_open)


def _is_main_rank() -> bool:
    dist = sys.modules.get("geneval.runner.distributed")  # not imported: no distributed job was started
    return dist is None or dist.current().is_main


def _in_notebook(file: IO[str]) -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell" and file in (sys.stderr, sys.stdout)


def _isatty(file: IO[str]) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _interval() -> float:
    raw = os.environ.get(INTERVAL_ENV)
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        return max(0.0, float(raw))
    except ValueError:
        return DEFAULT_INTERVAL_S


def _duration(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _scaled(x: float) -> str:
    for prefix in ("", "k", "M", "G", "T"):
        if abs(x) < 999.5:
            return f"{x:.0f}{prefix}" if prefix == "" else f"{x:.1f}{prefix}"
        x /= 1000.0
    return f"{x:.1f}P"


class Progress:
    """One progress line for one stream of work on stderr; a context manager.

    Args:
        total: units expected (None: unknown; no percentage or eta).
        desc: the line's label, e.g. "sampling ddim".
        unit: what is counted ("img", "B").
        mode: auto | always | never, or a bool (True = auto, False = never).
        initial: units already done elsewhere (a resumed job): the count starts there.
        unit_scale: show counts with k/M/G prefixes (bytes).
        file: the stream (default: sys.stderr at construction).
    """

    def __init__(
        self,
        total: int | None = None,
        desc: str = "",
        unit: str = "img",
        mode: Any = "auto",
        *,
        initial: int = 0,
        unit_scale: bool = False,
        file: IO[str] | None = None,
    ) -> None:
        self.mode = progress_mode(mode)
        self.total, self.desc, self.unit, self.unit_scale = total, desc, unit, unit_scale
        self.n = self.initial = initial
        self.file = sys.stderr if file is None else file
        self.kind: str | None = None  # "live" (tqdm), "plain" (timed lines) or None (silent)
        self._bar: Any = None
        self._closed = False
        if self.mode == "never" or _open or not _is_main_rank():
            return
        if _isatty(self.file) or _in_notebook(self.file):
            self.kind = "live"
            if _isatty(self.file):
                from tqdm.std import tqdm
            else:
                from tqdm.auto import tqdm
            self._bar = tqdm(
                total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit_scale, file=self.file, dynamic_ncols=True, disable=False
            )
        elif self.mode == "always":
            self.kind = "plain"
            self._interval = _interval()
            self._t0 = self._last = time.monotonic()
        if self.kind is not None:
            _open.append(self)

    @property
    def visible(self) -> bool:
        """Whether this reporter writes anything."""
        return self.kind is not None

    def update(self, n: int = 1) -> None:
        """Count `n` more units done."""
        self.n += n
        if self.kind == "live":
            self._bar.update(n)
        elif self.kind == "plain":
            now = time.monotonic()
            if now - self._last >= self._interval:
                self._last = now
                self._write(self._line(now))

    def close(self) -> None:
        """End the line (a final plain line in `always` mode off a terminal); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self.kind == "live":
            self._bar.close()
        elif self.kind == "plain" and self.n > self.initial:
            self._write(self._line(time.monotonic(), final=True))
        if self in _open:
            _open.remove(self)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _count(self, x: float) -> str:
        return f"{_scaled(x)}{self.unit}" if self.unit_scale else f"{int(x)}"

    def _line(self, now: float, final: bool = False) -> str:
        elapsed = now - self._t0
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        head = f"{self.desc}: " if self.desc else ""
        if self.unit_scale:
            done = self._count(self.n) + (f"/{self._count(self.total)}" if self.total else "")
            speed = f"{self._count(rate)}/s"
        else:
            done = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
            speed = f"{rate:.1f} {self.unit}/s"
        pct = f" ({100.0 * self.n / self.total:.1f}%)" if self.total else ""
        if final:
            tail = f" in {_duration(elapsed)}"
        elif self.total and rate > 0:
            tail = f" eta {_duration(max(0.0, self.total - self.n) / rate)}"
        else:
            tail = ""
        return f"{head}{done}{pct} {speed}{tail}"

    def _write(self, line: str) -> None:
        try:
            self.file.write(line + "\n")
            self.file.flush()
        except (OSError, ValueError):  # a closed or broken stderr never fails the work
            pass
