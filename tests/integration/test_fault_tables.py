"""Table outputs under faults: the commit a Ray job runs after its pass (job/outputs.py and
job/tables.py with the real pyiceberg, SQL catalog on SQLite, and the real deltalake),
killed at each point of the commit in a subprocess (tests/fault_table_driver.py: the fault
comes from outside the package), and commits of several writers racing on one table.

Invariants, read back through the table formats after every kill point:
- the slice holds exactly one version's rows (ids 1-4 once each, all of one version): the
  previous one when killed before the table's commit, the new one after it;
- the sibling slice another task committed is untouched;
- the next run of the task succeeds, replaces the slice with exactly its rows and leaves no
  staged file in the work directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pyarrow as pa
import pytest

from airflow_provider_raydatallm.job import tables
from airflow_provider_raydatallm.job.spec import InputSpec, JobSpec, OutputSpec, ProcessorSpec, RunIdentity, SecretRef, TableSpec
from tests.conftest import ROOT

pytestmark = pytest.mark.integration
DRIVER = ROOT / "tests" / "fault_table_driver.py"
DAY, OTHER_DAY = "2026-12-01", "2026-11-30"


def _table(fmt: str, tmp_path, day: str) -> tuple[TableSpec, dict[str, str]]:
    if fmt == "iceberg":
        props = {"type": "sql", "uri": f"sqlite:///{tmp_path}/catalog.db", "warehouse": f"file://{tmp_path}/warehouse"}
        return (TableSpec(format="iceberg", identifier="llm.faults", partition={"day": day}, catalog_name="faults",
                          catalog=SecretRef(source="shipped", name="catalog")), {"catalog": json.dumps(props)})  # fmt: skip
    return TableSpec(format="delta", identifier=str(tmp_path / "delta"), partition={"day": day}), {}


def _spec(table: TableSpec, version: str, task_id: str = "classify") -> str:
    return JobSpec(
        run=RunIdentity(namespace="prod", dag_id="daily", task_id=task_id, run_id=f"r-{version}", submission_id=f"job-{version}"),
        input=InputSpec(uris=["/nowhere/in.jsonl"], format="jsonl"),
        output=OutputSpec(table=table),
        processor=ProcessorSpec(type="HttpRequestProcessorConfig", kwargs={"url": "http://127.0.0.1:1/v1"}),
    ).model_dump_json()


def _drive(fmt: str, tmp_path, version: str, kill_at: str = "none", day: str = DAY, task_id: str = "classify"):
    table, secrets = _table(fmt, tmp_path, day)
    done = subprocess.run(
        [sys.executable, str(DRIVER), _spec(table, version, task_id), json.dumps(secrets), version, kill_at],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    expected = 0 if kill_at == "none" else 137
    assert done.returncode == expected, f"{fmt} {kill_at}: exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    return done


def _read(fmt: str, tmp_path) -> dict[str, list[tuple[int, str]]]:
    """Slice -> sorted (id, version) rows, read through the table format."""
    if fmt == "iceberg":
        from pyiceberg.catalog import load_catalog

        _, secrets = _table(fmt, tmp_path, DAY)
        rows = load_catalog("faults", **json.loads(secrets["catalog"])).load_table("llm.faults").scan().to_arrow()
    else:
        from deltalake import DeltaTable

        rows = DeltaTable(str(tmp_path / "delta")).to_pyarrow_table()
    found: dict[str, list[tuple[int, str]]] = {}
    for row in rows.to_pylist():
        found.setdefault(row["day"], []).append((row["id"], row["answer"]))
    return {day: sorted(r) for day, r in found.items()}


def _version(rows: list[tuple[int, str]]) -> str:
    assert [i for i, _ in rows] == [1, 2, 3, 4], rows
    versions = {v for _, v in rows}
    assert len(versions) == 1, f"rows of two versions in one slice: {rows}"
    return versions.pop()


KILLS = [("iceberg", "staged"), ("iceberg", "data-files"), ("iceberg", "before-swap"), ("iceberg", "after-swap"),
         ("delta", "staged"), ("delta", "data-files"), ("delta", "after-swap")]  # fmt: skip


@pytest.mark.parametrize(("fmt", "kill_at"), KILLS)
def test_a_job_killed_in_its_table_commit_leaves_one_whole_version(fmt, kill_at, tmp_path):
    _drive(fmt, tmp_path, "sibling", day=OTHER_DAY, task_id="other")
    _drive(fmt, tmp_path, "v1")
    _drive(fmt, tmp_path, "v2", kill_at)
    read = _read(fmt, tmp_path)
    assert _version(read[DAY]) == ("v2" if kill_at == "after-swap" else "v1")
    assert _version(read[OTHER_DAY]) == "sibling"

    _drive(fmt, tmp_path, "v3")
    read = _read(fmt, tmp_path)
    assert _version(read[DAY]) == "v3" and _version(read[OTHER_DAY]) == "sibling"
    location = tmp_path / ("warehouse/llm/faults" if fmt == "iceberg" else "delta")
    work = location / "_raydllm" / "work" / f"day={DAY}"
    assert not list(work.rglob("*.parquet")), sorted(map(str, work.rglob("*")))
    errors = location / "_raydllm" / "errors" / f"day={DAY}"
    assert (errors / "_SUCCESS").exists()  # the error rows went to their directory


@pytest.mark.parametrize("fmt", ["iceberg", "delta"])
def test_writers_racing_on_one_table_all_commit_their_slices(fmt, tmp_path):
    """Eight commits of eight slices at once (threads of one process, the catalog's and the
    log's optimistic concurrency between them): every slice holds exactly its rows."""
    staged = tmp_path / "staged"
    staged.mkdir()
    jobs = []
    for k in range(8):
        path = staged / f"block-{k}.parquet"
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"id": [k * 10, k * 10 + 1], "answer": [f"w{k}"] * 2}), path)
        table, secrets = _table(fmt, tmp_path, f"2026-12-0{k + 1}")
        jobs.append((table, [str(path)], secrets, {"namespace": "prod", "dag_id": "d", "task_id": "t", "map_index": k}))
    results, failures = [], []
    barrier = threading.Barrier(len(jobs))

    def commit(table, files, secrets, run):
        try:
            barrier.wait()
            results.append(tables.commit(table, files, 2, run, False, secrets))
        except Exception as err:  # noqa: BLE001 (reported below)
            failures.append(repr(err))

    threads = [threading.Thread(target=commit, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    read = _read(fmt, tmp_path)
    assert read == {f"2026-12-0{k + 1}": [(k * 10, f"w{k}"), (k * 10 + 1, f"w{k}")] for k in range(8)}
    assert len(results) == 8


@pytest.mark.parametrize("fmt", ["iceberg", "delta"])
def test_error_rows_go_to_an_error_table_slice_replaced_by_each_run(fmt, tmp_path):
    """error_table: the run's error rows are committed to a second table, same slice, and a
    rerun replaces that slice there too (and nothing goes to an error directory)."""

    def spec(version: str) -> str:
        table, secrets = _table(fmt, tmp_path, DAY)
        if fmt == "iceberg":
            errors = table.model_copy(update={"identifier": "llm.fault_errors"})
        else:
            errors = table.model_copy(update={"identifier": str(tmp_path / "delta_errors")})
        return JobSpec(
            run=RunIdentity(namespace="prod", dag_id="daily", task_id="classify", run_id=f"r-{version}",
                            submission_id=f"job-{version}"),
            input=InputSpec(uris=["/nowhere/in.jsonl"], format="jsonl"),
            output=OutputSpec(table=table, error_table=errors),
            processor=ProcessorSpec(type="HttpRequestProcessorConfig", kwargs={"url": "http://127.0.0.1:1/v1"}),
        ).model_dump_json(), secrets

    for version in ("v1", "v2"):
        spec_json, secrets = spec(version)
        done = subprocess.run([sys.executable, str(DRIVER), spec_json, json.dumps(secrets), version, "none"],
                              capture_output=True, text=True, timeout=120, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    if fmt == "iceberg":
        from pyiceberg.catalog import load_catalog

        _, secrets = _table(fmt, tmp_path, DAY)
        errors = load_catalog("faults", **json.loads(secrets["catalog"])).load_table("llm.fault_errors").scan().to_arrow()
    else:
        from deltalake import DeltaTable

        errors = DeltaTable(str(tmp_path / "delta_errors")).to_pyarrow_table()
    assert [(r["row_id"], r["error"], r["day"]) for r in errors.to_pylist()] == [("5", "v2", DAY)]
    assert _version(_read(fmt, tmp_path)[DAY]) == "v2"
    location = tmp_path / ("warehouse/llm/faults" if fmt == "iceberg" else "delta")
    assert not (location / "_raydllm" / "errors").exists()


def test_a_delta_table_partitioned_by_a_date_column_takes_the_slices_text_value(tmp_path):
    """A table created elsewhere with a typed partition column: the slice's value is
    converted to its type for the ownership count, the predicate and the rows."""
    import datetime as dt

    import pyarrow.parquet as pq
    from deltalake import DeltaTable, write_deltalake

    uri = str(tmp_path / "typed")
    day = dt.date(2026, 12, 1)
    write_deltalake(uri, pa.table({"id": [1, 2], "answer": ["x", "y"], "day": [day, dt.date(2026, 11, 30)]}),
                    partition_by=["day"])  # fmt: skip
    table = TableSpec(format="delta", identifier=uri, partition={"day": "2026-12-01"})
    run = {"namespace": "prod", "dag_id": "d", "task_id": "t", "map_index": -1, "submission_id": "job-typed"}
    with pytest.raises(tables.TableOutputError, match="holds 1 rows that this provider did not commit"):
        tables.check_owned(table, {}, run, False, False)
    staged = tmp_path / "block.parquet"
    pq.write_table(pa.table({"id": [7, 8], "answer": ["a", "b"]}), staged)
    done = tables.commit(table, [str(staged)], 2, run, True, {})
    rows = sorted((r["day"], r["id"]) for r in DeltaTable(uri).to_pyarrow_table().to_pylist())
    assert rows == [(dt.date(2026, 11, 30), 2), (day, 7), (day, 8)]
    assert done["version"] == DeltaTable(uri).version()
