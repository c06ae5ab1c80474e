"""Types round-trip through the whole job: a table of types in, the same types and values out.

Ray Data hands rows to the callables as Python values and builds blocks back from them,
which drops time zones, changes timestamp units and decimal precisions, turns an integer
column with nulls into floats (or into a null column in an all-null block), decodes
dictionaries and turns maps into lists of pairs. The sink gives a column the postprocess
passed through its input type back (sink.restore_types); a map whose keys and values
differ in type cannot come back and fails before inference, naming the column. Real
cluster, the stand-in endpoint (the engine is not under test here)."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobStatus
from airflow_provider_raydatallm.job.spec import RunIdentity
from airflow_provider_raydatallm.operators import RayLLMBatchOperator, _jobs, _submission as sub
from airflow_provider_raydatallm.reading import read_committed
from tests import echo_server
from tests.conftest import ECHO_KEY

pytestmark = pytest.mark.integration

UTC = dt.timezone.utc
SCHEMA = pa.schema([
    ("id", pa.int64()), ("ts_utc", pa.timestamp("us", tz="UTC")), ("ts_paris", pa.timestamp("us", tz="Europe/Paris")),
    ("ts_ny_ms", pa.timestamp("ms", tz="America/New_York")), ("ts_naive", pa.timestamp("ns")), ("day", pa.date32()),
    ("price", pa.decimal128(12, 3)), ("tags", pa.list_(pa.int64())),
    ("owner", pa.struct([("name", pa.string()), ("since", pa.timestamp("us", tz="UTC"))])),
    ("text", pa.string()), ("maybe", pa.int64()), ("ratio", pa.float64()), ("flag", pa.bool_()),
    ("at", pa.time64("us")), ("blob", pa.binary()), ("took", pa.duration("us")),
    ("kind", pa.dictionary(pa.int32(), pa.string())), ("props", pa.map_(pa.string(), pa.string())),
])  # fmt: skip


def _rows() -> list[dict]:
    return [{
        "id": i, "ts_utc": dt.datetime(2026, 11, 30, 8, i, 7, 654321, tzinfo=UTC),
        "ts_paris": dt.datetime(2026, 7, 1, 22, i, 1, 5, tzinfo=UTC), "ts_ny_ms": dt.datetime(2026, 3, 8, 6, 59, i, 250000, tzinfo=UTC),
        "ts_naive": dt.datetime(2026, 11, 30, 23, 59, 59, 999999), "day": dt.date(2026, 2, 28 - i),
        "price": decimal.Decimal(f"{i}.125") if i % 3 else None, "tags": [i, i + 1] if i != 2 else [],
        "owner": {"name": f"Zoë {i}", "since": dt.datetime(2020, 1, i, tzinfo=UTC)},
        "text": "Zürich – 東京 😀 \\n \"quoted\"", "maybe": None if i <= 2 else i * 10, "ratio": i / 3, "flag": i % 2 == 0,
        "at": dt.time(9, i, 0, 123456), "blob": bytes([i, 0, 255]), "took": dt.timedelta(seconds=i, microseconds=5),
        "kind": ["new", "returning"][i % 2], "props": [("k", f"v{i}"), ("lang", "de")] if i != 3 else None,
    } for i in range(1, 7)]  # fmt: skip


def _ask(row):
    return {"payload": {"model": "echo", "messages": [{"role": "user", "content": f"row {row['id']}"}]}}


def _keep_all(row):  # passes every input column through, as most postprocesses do for some
    return {**{k: v for k, v in row.items() if k in COLUMNS}, "answer": row["http_response"]["choices"][0]["message"]["content"]}


COLUMNS = [*SCHEMA.names, "created_at", "amount"]  # the typed table's and the CSV's columns


def _run(tmp_path, echo_endpoint, source, fmt: str) -> tuple[RayJobStatus, str, str]:
    out = tmp_path / f"out-{uuid.uuid4().hex[:6]}"
    op = RayLLMBatchOperator(
        task_id="types", processor_config={"type": "HttpRequestProcessorConfig", "batch_size": 2, "max_retries": 0},
        preprocess=_ask, postprocess=_keep_all, input_uri=str(source), input_format=fmt, output_uri=str(out),
        id_column="id", num_partitions=3, http_conn_id="unused",
    )  # fmt: skip
    spec = op.build_spec(RunIdentity(dag_id="types", task_id="types", run_id=f"r{time.time_ns()}"))
    conn = SimpleNamespace(host=echo_endpoint, port=None, schema=None, password=ECHO_KEY, extra_dejson={})
    processor, secrets = sub.with_endpoint_connection(spec.processor, conn, "types")
    job_id = f"types-{uuid.uuid4().hex[:10]}"
    _jobs.submit(RayHook(), spec.model_copy(update={"processor": processor}), job_id,
                 _jobs.Submission(runtime_env={}, secrets=secrets))  # fmt: skip
    deadline = time.monotonic() + 300
    while not (status := RayHook().get_job_status(job_id)).is_terminal:
        assert time.monotonic() < deadline, RayHook().get_job_logs(job_id)[-3000:]
        time.sleep(1)
    return status, RayHook().get_job_logs(job_id), str(out)


def test_every_input_type_comes_back_as_it_went_in(ray_conn, echo_endpoint, tmp_path):
    source = tmp_path / "typed.parquet"
    expected = pa.Table.from_pylist(_rows(), schema=SCHEMA)
    pq.write_table(expected, source)
    status, logs, out = _run(tmp_path, echo_endpoint, source, "parquet")
    assert status is RayJobStatus.SUCCEEDED, logs[-3000:]
    for path in Path(out).glob("*.parquet"):  # every file, not only the union
        written = pq.read_schema(path)
        assert [(f.name, f.type) for f in written if f.name != "answer"] == [(f.name, f.type) for f in SCHEMA], path
    table = read_committed(out).sort_by("id")
    assert table.drop_columns(["answer"]).to_pylist() == expected.to_pylist()
    assert table.column("answer").to_pylist() == [f"echo: row {i}" for i in range(1, 7)]


def test_a_csv_timestamp_with_a_zone_keeps_it(ray_conn, echo_endpoint, tmp_path):
    source = tmp_path / "tickets.csv"
    source.write_text("id,created_at,amount\n1,2026-11-30T08:00:00Z,1.5\n2,2026-11-30T09:30:00.250Z,\n3,,2\n")
    status, logs, out = _run(tmp_path, echo_endpoint, source, "csv")
    assert status is RayJobStatus.SUCCEEDED, logs[-3000:]
    table = read_committed(out).sort_by("id")
    created = table.schema.field("created_at").type
    assert pa.types.is_timestamp(created) and created.tz == "UTC", table.schema
    assert table.column("created_at").to_pylist() == [
        dt.datetime(2026, 11, 30, 8, 0, tzinfo=UTC), dt.datetime(2026, 11, 30, 9, 30, 0, 250000, tzinfo=UTC), None
    ]  # fmt: skip
    assert table.column("amount").to_pylist() == [1.5, None, 2.0]


def test_a_map_that_cannot_come_back_fails_before_inference_naming_its_column(ray_conn, echo_endpoint, tmp_path):
    source = tmp_path / "counts.parquet"
    pq.write_table(pa.table({"id": [1, 2], "counts": pa.array([[("a", 1)], [("b", 2)]], pa.map_(pa.string(), pa.int64()))}),
                   source)  # fmt: skip
    asked = len(echo_server.SEEN)
    status, logs, _ = _run(tmp_path, echo_endpoint, source, "parquet")
    assert status is RayJobStatus.FAILED
    assert "input column 'counts' is a map<string, int64>: Ray Data hands a map to the callables as a list" in logs
    assert len(echo_server.SEEN) == asked  # nothing reached the endpoint
