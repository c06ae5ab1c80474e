"""The job's streaming sink: one processed block in, its files written, one tally out."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_raydatallm.job import rows, sink

COLUMNS = ["id", "text"]


def _block() -> pa.Table:
    good = lambda i, n_in, n_out: {  # noqa: E731
        "id": i, "text": f"t{i}", "label": "pos", rows.ROW_ID: str(i), rows.ERROR: "", rows.RAY_ERROR: "",
        rows.INFERRED: True, rows.IN_TOKENS: n_in, rows.OUT_TOKENS: n_out, rows.ROW_JSON: None,
    }  # fmt: skip
    bad = {"id": None, "text": None, "label": None, rows.ROW_ID: "2", rows.ERROR: "preprocess: ValueError: no",
           rows.RAY_ERROR: "", rows.INFERRED: None, rows.IN_TOKENS: None, rows.OUT_TOKENS: None,
           rows.ROW_JSON: json.dumps({"id": 2, "text": "t2"})}  # fmt: skip
    return pa.Table.from_pylist([good(1, 10, 2), bad, good(3, 7, 1)])


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv"])
def test_a_block_splits_into_output_and_error_files_and_a_tally(tmp_path, fmt):
    ok_dir, err_dir = tmp_path / "out", tmp_path / "errors"
    tally = sink.WriteBlock(str(ok_dir), str(err_dir), fmt, COLUMNS)(_block()).to_pylist()[0]
    assert (tally["ok"], tally["errors"], tally["not_inferred"], tally["i"], tally["o"]) == (2, 1, 0, 17, 3)
    assert [e["row_id"] for e in json.loads(tally["first_errors"])] == ["2"]
    (ok_file,), (err_file,) = list(ok_dir.glob("part-*")), list(err_dir.glob("part-*"))
    assert not list(ok_dir.rglob(".tmp-*"))  # written aside, then renamed in whole
    assert ok_file.suffix == f".{fmt}" and err_file.suffix == f".{fmt}"
    if fmt == "parquet":
        out = pq.read_table(ok_file)
        assert out.column_names == ["id", "text", "label"] and out.column("id").to_pylist() == [1, 3]
        assert pq.read_table(err_file).to_pylist() == [
            {"row_id": "2", "stage": "preprocess", "error": "ValueError: no", "row": '{"id": 2, "text": "t2"}'}
        ]
    elif fmt == "jsonl":
        assert [json.loads(line)["id"] for line in ok_file.read_text().splitlines()] == [1, 3]
    else:
        assert ok_file.read_text().splitlines()[0] == '"id","text","label"'


def test_a_block_without_errors_writes_no_error_file_and_totals_add_up(tmp_path):
    block = _block().filter(pa.array([True, False, True]))
    write = sink.WriteBlock(str(tmp_path / "out"), str(tmp_path / "errors"), "parquet", COLUMNS)
    tallies = [write(block).to_pylist()[0]]
    assert not (tmp_path / "errors").exists()  # no error rows, no error file
    tallies.append(write(_block()).to_pylist()[0])
    counts, first = sink.totals(tallies)
    assert counts == {"ok": 4, "errors": 1, "not_inferred": 0, "i": 34, "o": 6}
    assert [e["row_id"] for e in first] == ["2"]
    assert len(list((tmp_path / "out").glob("part-*"))) == 2 and len(list((tmp_path / "errors").glob("part-*"))) == 1
