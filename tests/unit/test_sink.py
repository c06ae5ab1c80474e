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
    assert (tally["ok"], tally["errors"], tally["not_inferred"], tally["input_tokens"], tally["output_tokens"]) == (2, 1, 0, 17, 3)
    assert [e["row_id"] for e in json.loads(tally["first_errors"])] == ["2"]
    (ok_file,), (err_file,) = list(ok_dir.glob("block-*")), list(err_dir.glob("block-*"))
    assert (tally["ok_file"], tally["error_file"]) == (ok_file.name, err_file.name)
    assert not list(ok_dir.rglob(".tmp-*"))  # written aside, then renamed in whole
    assert ok_file.suffix == f".{fmt}" and err_file.suffix == f".{fmt}"
    if fmt == "parquet":
        out = pq.read_table(ok_file)
        assert out.column_names == ["id", "text", "label"] and out.column("id").to_pylist() == [1, 3]
        assert pq.read_table(err_file).to_pylist() == [
            {"row_id": "2", "stage": "preprocess", "error": "ValueError: no", "row": '{"id": 2, "text": "t2"}',
             "prompt": None, "model_output": None, "input_tokens": None, "output_tokens": None}
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
    counts, first, files = sink.totals(tallies)
    assert counts == {"ok": 4, "errors": 1, "not_inferred": 0, "input_tokens": 34, "output_tokens": 6}
    assert [e["row_id"] for e in first] == ["2"]
    assert sorted(files["ok"]) == sorted(p.name for p in (tmp_path / "out").glob("block-*")) and len(files["ok"]) == 2
    assert files["errors"] == [p.name for p in (tmp_path / "errors").glob("block-*")] and len(files["errors"]) == 1


def test_a_block_written_twice_by_ray_leaves_one_file_with_its_rows_once(tmp_path):
    write = sink.WriteBlock(str(tmp_path / "out"), str(tmp_path / "errors"), "parquet", COLUMNS)
    first, again = write(_block()).to_pylist()[0], write(_block()).to_pylist()[0]
    assert first["ok_file"] == again["ok_file"]
    (only,) = list((tmp_path / "out").glob("block-*"))
    assert pq.read_table(only).column("id").to_pylist() == [1, 3]


def test_good_rows_keep_exactly_the_postprocess_columns_when_the_block_has_errors(tmp_path):
    """Ray Data gives every row of a block the union of the rows' columns: an error row's
    input and engine columns come back as all-null columns on the good rows."""
    good = {"label": "pos", "score": 1, rows.ROW_ID: "1", rows.ERROR: "", rows.RAY_ERROR: "", rows.INFERRED: True,
            rows.COLUMNS: json.dumps(["label", "score"]), "generated_text": None, "prompt_token_ids": None, "text": None}
    bad = {"label": None, "score": None, rows.ROW_ID: "2", rows.ERROR: "", rows.RAY_ERROR: "vLLM: boom",
           rows.INFERRED: None, rows.COLUMNS: None, "generated_text": "x", "prompt_token_ids": [1, 2], "text": "t2"}
    write = sink.WriteBlock(str(tmp_path / "mixed"), str(tmp_path / "errors"), "parquet", COLUMNS)
    write(pa.Table.from_pylist([good, bad]))
    clean = sink.WriteBlock(str(tmp_path / "clean"), str(tmp_path / "errors2"), "parquet", COLUMNS)
    clean(pa.Table.from_pylist([{k: v for k, v in good.items() if k not in ("generated_text", "prompt_token_ids", "text")}]))
    (mixed,), (alone,) = list((tmp_path / "mixed").glob("block-*")), list((tmp_path / "clean").glob("block-*"))
    assert pq.read_table(mixed).column_names == pq.read_table(alone).column_names == ["label", "score"]
    assert pq.read_table(mixed).to_pylist() == [{"label": "pos", "score": 1}]


def test_an_error_output_has_its_fixed_schema(tmp_path):
    sink.WriteBlock(str(tmp_path / "out"), str(tmp_path / "errors"), "parquet", COLUMNS)(_block())
    (err_file,) = list((tmp_path / "errors").glob("block-*"))
    schema = pq.read_schema(err_file)
    assert schema.names == ["row_id", "stage", "error", "row", "prompt", "model_output", "input_tokens", "output_tokens"]
    assert [str(t) for t in schema.types] == ["string"] * 6 + ["int64"] * 2


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_an_error_output_without_rows_still_has_its_columns(tmp_path, fmt):
    name = sink.write_empty_errors(str(tmp_path / "errors"), fmt)
    path = tmp_path / "errors" / name
    if fmt == "parquet":
        table = pq.read_table(path)
    else:
        import pyarrow.csv as pacsv

        table = pacsv.read_csv(path)
    assert table.num_rows == 0 and table.column_names == list(rows.ERROR_COLUMNS)
    assert sink.write_empty_errors(str(tmp_path / "errors"), "jsonl") is None


def test_a_value_parquet_cannot_hold_fails_naming_the_column_and_row(tmp_path):
    """The type Ray Data gives a column of Python objects, by its registered name."""

    class PickledObjects(pa.ExtensionType):
        def __init__(self):
            super().__init__(pa.binary(), "ray.data.arrow_pickled_object")

        def __arrow_ext_serialize__(self):
            return b""

        @classmethod
        def __arrow_ext_deserialize__(cls, storage_type, serialized):
            return cls()

    objects = pa.ExtensionArray.from_storage(PickledObjects(), pa.array([None, b"\x80\x04N."]))
    table = pa.table({"label": ["a", "b"], "obj": objects})
    with pytest.raises(sink.UnstorableValueError, match=r"column 'obj' \(row r2\), which parquet cannot store"):
        sink.storable(table, ["r1", "r2"], "parquet")


def test_only_columns_the_postprocess_passed_through_get_their_input_type_back():
    """A column returned changed under an input column's name is written as returned, in
    every block alike: whole-number halves are not cast back to integers, a naive local
    time is not read as UTC, strings are not parsed as numbers."""
    import datetime as dt
    import json

    import pyarrow as pa

    from airflow_provider_raydatallm.job import rows, sink

    columns = ["score", "at", "tags"]
    at = dt.datetime(2026, 12, 1, 12, 0)
    wrap = rows.Postprocess(lambda r: {"score": r["score"] / 2, "at": r["at"], "tags": [str(t) for t in r["tags"]]},
                            columns, continue_on_error=True)  # fmt: skip
    out = wrap({rows.ROW_ID: "1", "score": 2, "at": at, "tags": [1, 2]})
    assert json.loads(out[rows.PASSED]) == ["at"]

    def mutates(r):
        r["score"] = 1.0  # in place: still a change
        return r

    assert json.loads(rows.Postprocess(mutates, columns, True)({rows.ROW_ID: "2", "score": 2, "at": at, "tags": []})[rows.PASSED]) == ["at", "tags"]
    assert rows.unchanged(0, 0) and not rows.unchanged(0.0, 0) and not rows.unchanged("1", 1)

    input_types = pa.schema([("score", pa.int64()), ("at", pa.timestamp("us", tz="Europe/Paris"))]).serialize().to_pybytes()
    block = pa.table({"score": [1.0, 2.0], "at": pa.array([at, at], pa.timestamp("us"))})
    kept = sink.restore_types(block, input_types, only={"at"})
    assert kept.schema.field("score").type == pa.float64()  # changed by the postprocess: as returned
    assert kept.schema.field("at").type == pa.timestamp("us", tz="Europe/Paris")  # passed through: its zone back
    assert sink.restore_types(block, input_types, only=set()).schema == block.schema
    assert sink.passed_through([{rows.PASSED: '["at", "score"]'}, {rows.PASSED: '["at"]'}]) == {"at"}
    assert sink.passed_through([{"x": 1}]) is None
