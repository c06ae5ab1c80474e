"""Reading what a task committed (reading.py): only the files _SUCCESS names, in every output
format, with or without a scheme, and a failed run's kept error rows."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_raydatallm.job import rows, sink
from airflow_provider_raydatallm.job.commit import Manifest, OutputDir
from airflow_provider_raydatallm.reading import read_committed, read_failed_run

OWNER = {"namespace": "ns", "dag_id": "d", "task_id": "t", "map_index": -1}


def _commit(uri: str, tag: str, tables: list, fmt: str) -> OutputDir:
    directory = OutputDir(uri, tag, OWNER)
    names = [sink.write_table(t, directory.staging_uri, f"block-{i}.{fmt}", fmt) for i, t in enumerate(tables)]
    directory.commit(names, Manifest(rows=sum(t.num_rows for t in tables)), False)
    return directory


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv"])
def test_the_committed_version_reads_back_whole_whatever_the_format_and_scheme(tmp_path, fmt):
    first = pa.table({"id": [1, 2], "label": [None, None]})  # a block whose label column is all null
    second = pa.table({"id": [3], "label": ["positive"]})
    _commit(str(tmp_path / "out"), "job-a1", [first, second], fmt)
    (tmp_path / "out" / f"stray.{fmt}").write_text("not committed")  # e.g. a commit in progress
    for uri in (str(tmp_path / "out"), f"file://{tmp_path}/out"):
        table = read_committed(uri)
        assert sorted(table.column("id").to_pylist()) == [1, 2, 3]
        assert sorted(table.column("label").to_pylist(), key=str) == [None, None, "positive"]
    assert read_committed(str(tmp_path / "out"), columns=["id"]).column_names == ["id"]


def test_nothing_committed_or_kept_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no committed output"):
        read_committed(str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="keeps no failed run's error rows"):
        read_failed_run(str(tmp_path / "nothing"))


def test_a_failed_runs_kept_error_rows_read_back(tmp_path):
    errors = OutputDir(str(tmp_path / "out" / "_errors"), "job-a1", OWNER)
    record = {"row_id": "7", "stage": "postprocess", "error": "JSONDecodeError: x", "row": "{}", "prompt": "Triage: x",
              "model_output": '{"category": "bil', "input_tokens": 40, "output_tokens": 12}  # fmt: skip
    name = sink.write_table(pa.Table.from_pylist([record], schema=rows.error_schema()), errors.staging_uri,
                            "block-1.parquet", "parquet")  # fmt: skip
    errors.keep_failed_run([name], {"rows": 1})
    assert read_failed_run(str(tmp_path / "out" / "_errors")).to_pylist() == [record]
    assert pq.read_schema(tmp_path / "out" / "_errors" / "_raydllm" / "failed-run" / name) == rows.error_schema()
