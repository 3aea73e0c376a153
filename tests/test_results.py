"""The result model: tidy frame columns, and lossless round trips through json, csv and jsonl."""

import json
import math

import pytest

from geneval.errors import GenevalError
from geneval.results import (
    COLUMNS,
    ResultRow,
    ResultSet,
    append_history,
    read_results,
    write_results,
)

SHA_W = "0123456789" * 6 + "0123"  # all digits: pandas would guess an int
SHA_R = "ab" * 32


def _rows(run_id="run-1", seed=7):
    common = dict(
        n=5000,
        model="demo",
        sampler="heun",
        steps=18,
        guidance=1.5,
        convention="cfg-w",
        seed=seed,
        mode="tf",
        features="inception-v3-tf",
        weights_sha256=SHA_W,
        wall_s=3.25,
    )
    return [
        ResultRow(
            run_id,
            "fid",
            12.5,
            0.25,
            higher_is_better=False,
            ref_sha256=SHA_R,
            extra={"std_method": "bootstrap-200", "dims": 2048, "warnings": ["small N"]},
            **common,
        ),
        ResultRow(run_id, "is", 6.75, 0.0625, higher_is_better=True, extra={"std_method": "split-std", "splits": 10}, **common),
        ResultRow(run_id, "kid", math.inf, None, ref_sha256=SHA_R, **common),
    ]


def _same(a: ResultRow, b: ResultRow):
    da, db = a.to_dict(), b.to_dict()
    assert da == db, {k: (da[k], db.get(k)) for k in da if da[k] != db.get(k)}


def test_frame_is_tidy_one_row_per_run_and_metric():
    rs = ResultSet(_rows("a") + _rows("b", seed=8))
    df = rs.to_frame()
    assert len(df) == 6
    assert list(df.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert {"extra_std_method", "extra_dims", "extra_warnings"} <= set(df.columns)
    assert df.groupby(["run_id", "metric"]).size().max() == 1
    assert rs.run_ids() == ["a", "b"]
    assert [len(r) for r in rs.by_run().values()] == [3, 3]


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_round_trip_keeps_every_field(tmp_path, suffix):
    rs = ResultSet(_rows(), {"sampler": {"name": "heun", "steps": 18}})
    path = write_results(rs, tmp_path / f"results{suffix}")
    back = read_results(path)
    assert len(back) == len(rs)
    for a, b in zip(rs.rows, back.rows):
        _same(a, b)
    assert math.isinf(back.value("kid")) and back["kid"].value > 0
    assert back["fid"].weights_sha256 == SHA_W and isinstance(back["fid"].n, int)
    if suffix == ".json":
        assert back.config == rs.config
        json.loads((tmp_path / "results.json").read_text())  # inf is stored as a string: strict JSON


def test_history_appends_runs_as_jsonl(tmp_path):
    hist = tmp_path / "h" / "history.jsonl"
    append_history(ResultSet(_rows("a")), hist)
    append_history(ResultSet(_rows("b", seed=8)), hist)
    back = read_results(hist)
    assert back.run_ids() == ["a", "b"] and len(back) == 6
    for a, b in zip(_rows("a") + _rows("b", seed=8), back.rows):
        _same(a, b)


def test_run_directory_reads_results_json(tmp_path):
    write_results(ResultSet(_rows()), tmp_path / "run-1" / "results.json")
    assert read_results(tmp_path / "run-1").run_ids() == ["run-1"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenevalError, match="no results.json"):
        read_results(tmp_path / "empty")


def test_missing_optional_fields_stay_missing(tmp_path):
    p = tmp_path / "min.json"
    p.write_text(json.dumps({"results": [{"run_id": "r", "metric": "fid", "value": 3}]}))
    row = read_results(p)["fid"]
    assert row.value == 3.0 and row.std is None and row.n is None
    # provenance the file does not carry is not invented
    assert row.created_at is None and row.geneval_version is None


def test_csv_with_only_required_columns_and_unknown_columns(tmp_path):
    p = tmp_path / "hand.csv"
    p.write_text("run_id,metric,value,n,note\nr,fid,inf,100,hello\nr,is,,100,\n")
    rs = read_results(p)
    assert math.isinf(rs.value("fid")) and rs["fid"].n == 100
    assert math.isnan(rs.value("is"))  # an empty value cell is a missing number, not zero
    assert rs["fid"].extra == {"note": "hello"} and rs["is"].extra == {}


@pytest.mark.parametrize(
    "name,text,match",
    [
        ("bad.json", "{not json", "not valid JSON"),
        ("nolist.json", '{"rows": []}', "no 'results' list"),
        ("noval.json", '{"results": [{"run_id": "r", "metric": "fid"}]}', "value"),
        ("badn.json", '{"results": [{"run_id": "r", "metric": "fid", "value": 1, "n": 2.5}]}', "'n'"),
        ("badbool.json", '{"results": [{"run_id": "r", "metric": "x", "value": 1, "higher_is_better": "maybe"}]}', "higher_is_better"),
        ("bad.jsonl", '{"run_id": "r", "metric": "fid", "value": 1}\n{oops\n', r"bad.jsonl:2"),
        ("nocol.csv", "run_id,value\nr,1\n", "lacks column"),
        ("empty.csv", "", "empty CSV"),
        ("x.txt", "", "unknown results format"),
    ],
)
def test_malformed_files_raise_one_clear_error(tmp_path, name, text, match):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(GenevalError, match=match) as e:
        read_results(p)
    assert "\n" not in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(GenevalError, match="not found"):
        read_results(tmp_path / "nope.json")
