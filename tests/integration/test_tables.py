"""Table outputs for real: Ray jobs on the session's head write an Iceberg table (pyiceberg,
SQL catalog on SQLite) and a Delta table (delta-rs), on local disk and on the local S3
server, through the operator's own spec building (connections resolved, catalog properties
shipped as secrets). The stand-in endpoint answers the rows: the engine is not under test.

Invariants, read back through the table formats (row ids, partitions, snapshot history):
- a run replaces exactly its slice: a rerun of a day replaces that day, never duplicates it,
  and the other days' rows and files stay;
- concurrent jobs writing different slices of one table all commit (conflicts retried);
- a later run may add a column (older rows read it as null); a type the table cannot take
  fails naming the column, before inference when declared, else before the commit, and
  the table stays as it was;
- a slice another task committed is not replaced (unless overwrite=True).
"""

from __future__ import annotations

import json
import time
import uuid
from types import SimpleNamespace

import pyarrow as pa
import pytest

from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobStatus
from airflow_provider_raydatallm.job.metrics import find_result
from airflow_provider_raydatallm.job.spec import RunIdentity
from airflow_provider_raydatallm.operators import RayLLMBatchOperator, _jobs, _submission as sub
from airflow_provider_raydatallm.tables import DeltaTable, IcebergTable
from tests import echo_server
from tests.conftest import ECHO_KEY

pytestmark = pytest.mark.integration


def _ask(row):
    return {"payload": {"model": "echo", "messages": [{"role": "user", "content": f"{row['id']}:{row['text']}"}]}}


def _answer(row):
    return {"id": row["id"], "answer": row["http_response"]["choices"][0]["message"]["content"]}


def _answer_scored(row):
    return {"id": row["id"], "answer": row["http_response"]["choices"][0]["message"]["content"], "score": row["id"] / 10}


def _answer_as_number(row):
    return {"id": row["id"], "answer": int(row["id"])}


def _input(tmp_path, ids: range, tag: str) -> str:
    path = tmp_path / f"in-{tag}-{uuid.uuid4().hex[:6]}.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": f"{tag} {i}"}) + "\n" for i in ids))
    return str(path)


def _submit(echo_endpoint, *, source: str, table, task_id: str = "classify", map_index: int = -1,
            postprocess=_answer, env: dict | None = None, **kwargs) -> str:  # fmt: skip
    op = RayLLMBatchOperator(
        task_id=task_id, processor_config={"type": "HttpRequestProcessorConfig", "batch_size": 4, "max_retries": 0},
        preprocess=_ask, postprocess=postprocess, input_uri=source, output_table=table, id_column="id",
        num_partitions=2, http_conn_id="unused", **kwargs,
    )  # fmt: skip
    identity = RunIdentity(namespace="tables", dag_id="tables", task_id=task_id, run_id=f"r{time.time_ns()}",
                           map_index=map_index)  # fmt: skip
    spec = op.build_spec(identity)
    conn = SimpleNamespace(host=echo_endpoint, port=None, schema=None, password=ECHO_KEY, extra_dejson={})
    processor, secrets = sub.with_endpoint_connection(spec.processor, conn, task_id)
    spec, table_secrets = sub.with_tables(op, spec.model_copy(update={"processor": processor}))
    job_id = f"tables-{uuid.uuid4().hex[:10]}"
    spec = spec.model_copy(update={"run": spec.run.model_copy(update={"submission_id": job_id})})
    _jobs.submit(RayHook(), spec, job_id, _jobs.Submission(runtime_env={"env_vars": env or {}},
                                                           secrets={**secrets, **table_secrets}))  # fmt: skip
    return job_id


def _wait(job_id: str, timeout: float = 300) -> tuple[RayJobStatus, str]:
    deadline = time.monotonic() + timeout
    while not (status := RayHook().get_job_status(job_id)).is_terminal:
        assert time.monotonic() < deadline, RayHook().get_job_logs(job_id)[-3000:]
        time.sleep(1)
    return status, RayHook().get_job_logs(job_id)


def _said(logs: str) -> list[str]:
    return [line for line in logs.splitlines() if "Error" in line or "ERROR" in line][-5:]


def _run(echo_endpoint, **kwargs) -> tuple[RayJobStatus, str]:
    return _wait(_submit(echo_endpoint, **kwargs))


@pytest.fixture
def iceberg(tmp_path, monkeypatch):
    """A SQL catalog on SQLite with a local warehouse, as an Airflow ``iceberg`` connection."""
    from pyiceberg.catalog import load_catalog

    props = {"type": "sql", "uri": f"sqlite:///{tmp_path}/catalog.db", "warehouse": f"file://{tmp_path}/warehouse"}
    (tmp_path / "warehouse").mkdir()
    monkeypatch.setenv("AIRFLOW_CONN_ICEBERG_TEST", json.dumps({"conn_type": "iceberg", "extra": props}))
    return load_catalog("iceberg_test", **props)


def _by_part(table: pa.Table) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for row in table.to_pylist():
        found.setdefault(row["part"], []).append(row["id"])
    return {part: sorted(ids) for part, ids in found.items()}


def test_concurrent_jobs_commit_their_own_slices_and_a_rerun_replaces_only_its_own(ray_conn, echo_endpoint, tmp_path, iceberg):
    def part(index: int) -> IcebergTable:
        return IcebergTable("llm.mapped", conn_id="iceberg_test", partition={"day": "2026-12-01", "part": str(index)})

    jobs = [_submit(echo_endpoint, source=_input(tmp_path, range(k * 10, k * 10 + 4), f"p{k}"), table=part(k), map_index=k)
            for k in range(3)]  # fmt: skip
    delta_jobs = [_submit(echo_endpoint, source=_input(tmp_path, range(k * 10, k * 10 + 3), f"d{k}"),
                          table=DeltaTable(str(tmp_path / "delta_mapped"), partition={"part": str(k)}), map_index=k)
                  for k in range(2)]  # fmt: skip
    results = {}
    for job_id in jobs + delta_jobs:
        status, logs = _wait(job_id)
        assert status is RayJobStatus.SUCCEEDED, logs[-3000:]
        results[job_id] = find_result(logs)
    table = iceberg.load_table("llm.mapped")
    assert _by_part(table.scan().to_arrow()) == {"0": [0, 1, 2, 3], "1": [10, 11, 12, 13], "2": [20, 21, 22, 23]}
    assert [f.name for f in table.spec().fields] == ["day", "part"]  # partitioned by the slices' columns
    first = results[jobs[1]].table
    assert first["format"] == "iceberg" and first["partition"] == {"day": "2026-12-01", "part": "1"} and first["rows"] == 4
    from deltalake import DeltaTable as Delta

    delta = Delta(str(tmp_path / "delta_mapped"))
    assert _by_part(delta.to_pyarrow_table()) == {"0": [0, 1, 2], "1": [10, 11, 12]}
    assert delta.metadata().partition_columns == ["part"]

    # Part 1 again, with other rows and a new column: part 1 is replaced, the others stay.
    status, logs = _run(echo_endpoint, source=_input(tmp_path, range(15, 18), "p1"), table=part(1), map_index=1,
                        postprocess=_answer_scored)  # fmt: skip
    assert status is RayJobStatus.SUCCEEDED, logs[-3000:]
    table = iceberg.load_table("llm.mapped")
    rows = table.scan().to_arrow()
    assert _by_part(rows) == {"0": [0, 1, 2, 3], "1": [15, 16, 17], "2": [20, 21, 22, 23]}
    by_id = {r["id"]: r for r in rows.to_pylist()}
    assert by_id[15]["answer"] == "echo: 15:p1 15" and by_id[15]["score"] == 1.5 and by_id[0]["score"] is None
    assert table.current_snapshot().snapshot_id == find_result(logs).table["snapshot_id"] != first["snapshot_id"]
    ours = [s.summary.additional_properties for s in table.snapshots()]
    assert [(p.get("raydllm.slice"), p.get("raydllm.rows")) for p in ours][-2:] == [
        ("day=2026-12-01/part=1", "3"), ("day=2026-12-01/part=1", "3")]  # the rerun's delete and append
    work = tmp_path / "warehouse" / "llm" / "mapped" / "_raydllm" / "work" / "day=2026-12-01" / "part=1"
    assert not list(work.rglob("*.parquet")), list(work.rglob("*"))


def test_a_type_the_table_cannot_take_fails_naming_the_column(ray_conn, echo_endpoint, tmp_path, iceberg):
    def table(**kwargs) -> IcebergTable:
        return IcebergTable("llm.typed", conn_id="iceberg_test", partition={"day": "2026-12-01"}, **kwargs)

    status, logs = _run(echo_endpoint, source=_input(tmp_path, range(1, 4), "a"), table=table())
    assert status is RayJobStatus.SUCCEEDED, logs[-3000:]
    before = iceberg.load_table("llm.typed").current_snapshot().snapshot_id
    # Declared: known before inference, nothing reaches the endpoint.
    asked = len(echo_server.SEEN)
    status, logs = _run(echo_endpoint, source=_input(tmp_path, range(1, 4), "b"), table=table(columns={"answer": "int64"}),
                        postprocess=_answer_as_number)  # fmt: skip
    assert status is RayJobStatus.FAILED
    assert "column 'answer' is int64 but iceberg:llm.typed (day=2026-12-01) has it as string" in logs, _said(logs)
    assert len(echo_server.SEEN) == asked
    # Not declared: found before the commit.
    status, logs = _run(echo_endpoint, source=_input(tmp_path, range(1, 4), "c"), table=table(),
                        postprocess=_answer_as_number)  # fmt: skip
    assert status is RayJobStatus.FAILED
    assert "this run's rows: column 'answer' is int64 but iceberg:llm.typed (day=2026-12-01) has it as string" in logs, _said(logs)
    after = iceberg.load_table("llm.typed")
    assert after.current_snapshot().snapshot_id == before
    assert sorted(r["id"] for r in after.scan().to_arrow().to_pylist()) == [1, 2, 3]


def test_a_slice_another_writer_or_task_committed_is_not_replaced(ray_conn, echo_endpoint, tmp_path):
    from deltalake import DeltaTable as Delta, write_deltalake

    uri = str(tmp_path / "delta_owned")
    # Rows of the day that someone else wrote (not this provider): never replaced.
    write_deltalake(uri, pa.table({"id": [100, 101], "answer": ["x", "y"], "day": ["2026-12-01"] * 2}), partition_by=["day"])
    table = DeltaTable(uri, partition={"day": "2026-12-01"})
    asked = len(echo_server.SEEN)
    status, logs = _run(echo_endpoint, source=_input(tmp_path, range(1, 4), "a"), table=table, task_id="first")
    assert status is RayJobStatus.FAILED
    assert "it holds 2 rows that this provider did not commit. Pass overwrite=True" in logs, _said(logs)
    assert len(echo_server.SEEN) == asked  # refused before inference
    assert sorted(r["id"] for r in Delta(uri).to_pyarrow_table().to_pylist()) == [100, 101]
    status, logs = _run(echo_endpoint, source=_input(tmp_path, range(1, 4), "a"), table=table, task_id="first",
                        overwrite=True)  # fmt: skip
    assert status is RayJobStatus.SUCCEEDED, logs[-3000:]
    # Another task of the same slice: refused before inference, by the slice's work directory.
    asked = len(echo_server.SEEN)
    status, logs = _run(echo_endpoint, source=_input(tmp_path, range(7, 9), "b"), table=table, task_id="second")
    assert status is RayJobStatus.FAILED
    assert "this slice is another task's" in logs and "task tables.first" in logs, _said(logs)
    assert len(echo_server.SEEN) == asked
    assert sorted(r["id"] for r in Delta(uri).to_pyarrow_table().to_pylist()) == [1, 2, 3]


def test_tables_on_the_local_s3_server(ray_conn, echo_endpoint, tmp_path, s3, monkeypatch):
    """Iceberg (SQL catalog, warehouse on s3://) and Delta on s3:// through the same S3
    server the directory outputs use; credentials from the cluster's environment."""
    import s3fs
    from deltalake import DeltaTable as Delta
    from pyiceberg.catalog import load_catalog

    props = {"type": "sql", "uri": f"sqlite:///{tmp_path}/catalog.db", "warehouse": "s3://raydllm-test/warehouse",
             "s3.endpoint": s3["AWS_ENDPOINT_URL"], "s3.access-key-id": "testing", "s3.secret-access-key": "testing",
             "s3.region": "us-east-1"}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_ICEBERG_S3", json.dumps({"conn_type": "iceberg", "extra": props}))
    env = {**s3, "AWS_ALLOW_HTTP": "true"}
    ice = IcebergTable("llm.on_s3", conn_id="iceberg_s3", partition={"day": "2026-12-01"})
    delta_uri = f"s3://raydllm-test/delta/{uuid.uuid4().hex[:6]}"
    delta = DeltaTable(delta_uri, partition={"day": "2026-12-01"})
    jobs = [_submit(echo_endpoint, source=_input(tmp_path, range(4, 6), "s3"), table=table, env=env) for table in (ice, delta)]
    for job_id in jobs:
        status, logs = _wait(job_id)
        assert status is RayJobStatus.SUCCEEDED, logs[-3000:]
    got = load_catalog("iceberg_s3", **props).load_table("llm.on_s3").scan().to_arrow()
    assert sorted(got.column("id").to_pylist()) == [4, 5]
    options = {"AWS_ENDPOINT_URL": s3["AWS_ENDPOINT_URL"], "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}  # fmt: skip
    assert sorted(Delta(delta_uri, storage_options=options).to_pyarrow_table().column("id").to_pylist()) == [4, 5]
    staged = [p for p in s3fs.S3FileSystem().find(f"{delta_uri[len('s3://'):]}/_raydllm/work") if p.endswith(".parquet")]
    assert not staged, staged
