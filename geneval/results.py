"""The tidy result model shared by eval, run, sweep, recon, report and gate.

One row per (run, metric). Every row carries what shaped its number: N, seed, preprocessing
mode, feature network + weights hash, reference hash, sampler + steps + guidance convention.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from geneval.errors import GenevalError
from geneval.runner.output import atomic_write_text  # noqa: F401  (re-exported: the one atomic writer)

# Columns in the order they appear in tables and CSV files.
COLUMNS: tuple[str, ...] = (
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
    "geneval_version",
    "created_at",
    "wall_s",
)


def _version() -> str:
    from geneval import __version__

    return __version__


def new_run_id(prefix: str = "run") -> str:
    """A sortable, unique run id: prefix-YYYYmmdd-HHMMSS-xxxxxx (UTC)."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{prefix}-{now}-{uuid.uuid4().hex[:6]}"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class ResultRow:
    """One number and its provenance."""

    run_id: str
    metric: str
    value: float
    std: float | None = None
    n: int | None = None
    higher_is_better: bool | None = None
    model: str | None = None
    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    convention: str | None = None
    seed: int | None = None
    mode: str | None = None
    features: str | None = None
    weights_sha256: str | None = None
    ref_sha256: str | None = None
    geneval_version: str | None = field(default_factory=_version)
    created_at: str | None = field(default_factory=utc_now)
    wall_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["value"] = _json_float(d["value"])
        d["std"] = _json_float(d["std"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ResultRow":
        """Rebuild a row from a dict read back from disk, checking and coercing field types.

        Provenance a file does not carry stays None: a missing `created_at` or `geneval_version`
        is never filled in with today's values.
        """
        if not isinstance(d, dict):
            raise GenevalError(f"result row is not an object: {d!r:.120}")
        known = {f.name for f in dataclasses.fields(cls)}
        missing = {"run_id", "metric", "value"} - {k for k, v in d.items() if v is not None}
        if missing:
            raise GenevalError(f"result row lacks required field(s) {sorted(missing)}: {d!r:.120}")
        kwargs = {k: v for k, v in d.items() if k in known}
        extra = kwargs.pop("extra", None) or {}
        if not isinstance(extra, dict):
            raise GenevalError(f"result row field 'extra' must be an object, got {type(extra).__name__}")
        extra = dict(extra)
        extra.update({k: v for k, v in d.items() if k not in known})
        for name, kind in _FIELD_KINDS.items():
            if name in kwargs:
                kwargs[name] = _coerce(name, kwargs[name], kind)
        if kwargs["value"] is None:  # an empty CSV cell: keep the row, mark the number missing
            kwargs["value"] = math.nan
        if not kwargs["run_id"] or not kwargs["metric"]:
            raise GenevalError(f"result row has an empty run_id or metric: {d!r:.120}")
        kwargs.setdefault("geneval_version", None)
        kwargs.setdefault("created_at", None)
        return cls(**kwargs, extra=extra)


# How each field is read back; files written by hand or by other tools get the same checks.
_FIELD_KINDS: dict[str, str] = {
    "run_id": "str",
    "metric": "str",
    "value": "float",
    "std": "float",
    "n": "int",
    "higher_is_better": "bool",
    "model": "str",
    "sampler": "str",
    "steps": "int",
    "guidance": "float",
    "convention": "str",
    "seed": "int",
    "mode": "str",
    "features": "str",
    "weights_sha256": "str",
    "ref_sha256": "str",
    "geneval_version": "str",
    "created_at": "str",
    "wall_s": "float",
}
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def _coerce(name: str, v: Any, kind: str) -> Any:
    """Coerce one field to its type; empty strings and NaN become None; nonsense is an error."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    if isinstance(v, float) and math.isnan(v) and kind != "float":
        return None
    try:
        if kind == "str":
            return str(v)
        if kind == "float":
            if isinstance(v, bool):
                raise ValueError("a boolean is not a number")
            return _parse_float(v)
        if kind == "int":
            if isinstance(v, bool):
                raise ValueError("a boolean is not an integer")
            f = float(v)
            if not f.is_integer():
                raise ValueError("not an integer")
            return int(f)
        if kind == "bool":
            if isinstance(v, bool):
                return v
            t = str(v).strip().lower()
            if t in _TRUE:
                return True
            if t in _FALSE:
                return False
            raise ValueError("not a boolean")
    except (TypeError, ValueError) as e:
        raise GenevalError(f"result field {name!r} has a bad value {v!r:.60} ({e})") from None
    raise AssertionError(kind)


def _json_float(x: Any) -> Any:
    """JSON has no inf/nan; keep them as strings so nothing is silently lost."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def _parse_extra_cell(v: Any) -> Any:
    """A CSV cell of an extra_* column back to a value: JSON (numbers, lists, objects) or text."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if not isinstance(v, str):
        return v
    if not v.strip():
        return None
    if v in ("True", "False"):
        return v == "True"
    if v.strip().lower() in ("inf", "-inf", "nan", "infinity", "-infinity"):
        return float(v)
    try:
        return json.loads(v)
    except ValueError:
        return v


def _parse_float(x: Any) -> float | None:
    if x is None:
        return None
    if isinstance(x, str):
        return float(x) if x.strip() else None  # float() accepts "inf" and "nan"
    return float(x)


@dataclass
class ResultSet:
    """Rows from one or more runs plus the resolved configuration that produced them."""

    rows: list[ResultRow]
    config: dict[str, Any] = field(default_factory=dict)

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, metric: str) -> ResultRow:
        """The row for `metric` (the set must hold a single run)."""
        hits = [r for r in self.rows if r.metric == metric]
        if not hits:
            raise KeyError(metric)
        if len(hits) > 1:
            raise KeyError(f"{metric} appears {len(hits)} times; select by run_id")
        return hits[0]

    def value(self, metric: str) -> float:
        return self[metric].value

    def run_ids(self) -> list[str]:
        """The distinct run ids, in order of first appearance."""
        return list(dict.fromkeys(r.run_id for r in self.rows))

    def by_run(self) -> dict[str, "ResultSet"]:
        """Split into one ResultSet per run id (order kept; the config is shared)."""
        out: dict[str, ResultSet] = {}
        for r in self.rows:
            out.setdefault(r.run_id, ResultSet([], self.config)).rows.append(r)
        return out

    def to_frame(self):
        """The tidy pandas DataFrame: one row per run x metric, `extra` flattened as extra_*."""
        import pandas as pd

        recs = []
        for r in self.rows:
            d = dataclasses.asdict(r)
            extra = d.pop("extra") or {}
            for k, v in extra.items():
                d[f"extra_{k}"] = v if not isinstance(v, (dict, list)) else json.dumps(v)
            recs.append(d)
        df = pd.DataFrame.from_records(recs)
        if df.empty:
            return pd.DataFrame(columns=list(COLUMNS))
        ordered = [c for c in COLUMNS if c in df.columns] + [c for c in df.columns if c not in COLUMNS]
        return df[ordered]

    @classmethod
    def from_frame(cls, df, config: dict[str, Any] | None = None) -> "ResultSet":
        """Rebuild rows from a tidy frame (the inverse of `to_frame`; extra_* columns → extra).

        Args:
            df: a DataFrame with at least run_id, metric and value columns.
            config: the configuration to attach.
        """
        fields = {f.name for f in dataclasses.fields(ResultRow)} - {"extra"}
        rows = []
        for rec in df.to_dict(orient="records"):
            extra = {}
            for k in [k for k in rec if k not in fields]:
                v = _parse_extra_cell(rec.pop(k))
                if v is not None:  # an empty cell: the key belongs to other rows only
                    key = str(k)
                    extra[key[len("extra_") :] if key.startswith("extra_") else key] = v
            rec["extra"] = extra
            rows.append(ResultRow.from_dict(rec))
        return cls(rows, dict(config or {}))

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "geneval_version": _version(),
            "config": self.config,
            "results": [r.to_dict() for r in self.rows],
        }

    def extend(self, other: "ResultSet") -> "ResultSet":
        return ResultSet(self.rows + other.rows, {**self.config, **other.config})


def to_markdown(rs: ResultSet, columns: Sequence[str] | None = None) -> str:
    """A compact Markdown table of the rows (value ± std, n and key provenance)."""
    cols = list(columns or ("run_id", "metric", "value", "std", "n", "mode", "sampler", "steps", "guidance", "convention", "seed"))
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rs.rows:
        d = dataclasses.asdict(r)
        lines.append("| " + " | ".join(_fmt(d.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.6g}"
    return str(v)


def write_results(rs: ResultSet, path: str | os.PathLike) -> Path:
    """Write results as .json (rows + config), .csv (tidy frame) or .md, chosen by suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        atomic_write_text(path, json.dumps(rs.to_json_obj(), indent=2, default=str) + "\n")
    elif suffix == ".csv":
        atomic_write_text(path, rs.to_frame().to_csv(index=False))
    elif suffix in (".md", ".markdown"):
        atomic_write_text(path, to_markdown(rs))
    else:
        raise GenevalError(f"unknown results format {suffix!r} for {path}: use .json, .csv or .md")
    return path


def append_history(rs: ResultSet, path: str | os.PathLike) -> Path:
    """Append each row as one JSON line to a history file (created if absent)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for r in rs.rows:
            f.write(json.dumps(r.to_dict(), default=str) + "\n")
    return path


def read_results(path: str | os.PathLike) -> ResultSet:
    """Read any results file geneval wrote: .json, .csv or .jsonl history, or a run directory.

    Args:
        path: a results file, or a run directory (reports/<run-id>/) holding results.json
            (or results.csv).
    """
    path = Path(path)
    if path.is_dir():
        for name in ("results.json", "results.csv"):
            if (path / name).is_file():
                return read_results(path / name)
        raise GenevalError(f"run directory {path} holds no results.json or results.csv")
    if not path.exists():
        raise GenevalError(f"results file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            try:
                obj = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as e:
                raise GenevalError(f"{path}: not valid JSON ({e})") from None
            except RecursionError:
                raise GenevalError(f"{path}: not a geneval results file (JSON nested too deeply)") from None
            if isinstance(obj, list):
                rows, config = obj, {}
            elif isinstance(obj, dict) and isinstance(obj.get("results"), list):
                rows, config = obj["results"], obj.get("config") or {}
            else:
                raise GenevalError(f"{path}: not a geneval results file (no 'results' list)")
            if not isinstance(config, dict):
                raise GenevalError(f"{path}: 'config' must be an object")
            return ResultSet([ResultRow.from_dict(r) for r in rows], config)
        if suffix == ".jsonl":
            rows = []
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rows.append(ResultRow.from_dict(json.loads(line)))
                except ValueError as e:
                    raise GenevalError(f"{path}:{i}: not valid JSON ({e})") from None
                except RecursionError:
                    raise GenevalError(f"{path}:{i}: JSON nested too deeply") from None
                except GenevalError as e:
                    raise GenevalError(f"{path}:{i}: {e}") from None
            return ResultSet(rows)
        if suffix == ".csv":
            import pandas as pd

            # Everything as text, parsed per field: pandas' guesses would turn a hash of digits
            # into an int and an all-empty column into floats.
            try:
                df = pd.read_csv(path, dtype=str, keep_default_na=False)
            except pd.errors.EmptyDataError:
                raise GenevalError(f"{path}: empty CSV file") from None
            missing = {"run_id", "metric", "value"} - set(df.columns)
            if missing:
                raise GenevalError(f"{path}: CSV lacks column(s) {sorted(missing)}")
            return ResultSet.from_frame(df)
    except GenevalError as e:
        if str(path) in str(e):
            raise
        raise GenevalError(f"{path}: {e}") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise GenevalError(f"{path}: malformed results file ({type(e).__name__}: {e})") from None
    raise GenevalError(f"unknown results format {suffix!r} for {path}: use .json, .csv or .jsonl")


def rows_from(iterable: Iterable[ResultRow]) -> ResultSet:
    return ResultSet(list(iterable))
