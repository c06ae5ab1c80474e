"""The job's own invariants under faults and odd user code, on the session's real Ray
cluster with the stand-in OpenAI endpoint (the engine is not under test here):

- a worker dies right after writing a block (first attempt only): Ray runs the write
  again, and the output holds every id exactly once;
- a failed row in every block: the output's columns are exactly the postprocess's, the
  same as on a clean run, and rows in = rows out + error rows;
- a postprocess returning a Python object Parquet cannot hold: the job fails naming the
  column and the row, and commits nothing.
"""

from __future__ import annotations

import json
import time
import uuid
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobStatus
from airflow_provider_raydatallm.job import rows
from airflow_provider_raydatallm.job.commit import committed_files
from airflow_provider_raydatallm.job.spec import RunIdentity
from airflow_provider_raydatallm.operators import RayLLMBatchOperator, _jobs, _submission as sub
from tests.conftest import ECHO_KEY, ROOT

pytestmark = pytest.mark.integration


def _ask(row):
    if row["id"] % 4 == 0:
        raise ValueError(f"no prompt for row {row['id']}")
    return {"payload": {"model": "echo", "messages": [{"role": "user", "content": row["item"]}]}}


def _ask_all(row):
    return {"payload": {"model": "echo", "messages": [{"role": "user", "content": row["item"]}]}}


def _answer(row):
    return {"id": row["id"], "answer": row["http_response"]["choices"][0]["message"]["content"]}


class Opaque:
    """Not a value Parquet can hold."""


def _object(row):
    return {"id": row["id"], "obj": Opaque()}


def _fail_on_12_while_flagged(row):
    """A try that fails midway: the row with id 12 fails the job, after the others' blocks
    were written, while the flag file its row names exists."""
    import os

    if row["id"] == 12 and os.path.exists(row["flag"]):
        time.sleep(8)
        raise RuntimeError("this try fails on purpose")
    return {"payload": {"model": "echo", "messages": [{"role": "user", "content": row["item"]}]}}


def _run(tmp_path, echo_endpoint, *, rows=12, preprocess=_ask, postprocess=_answer, env=None, runtime_env=None,
         source=None, out=None, identity=None, continue_on_error=True):  # fmt: skip
    if source is None:
        source = tmp_path / f"in-{uuid.uuid4().hex[:6]}.jsonl"
        source.write_text("".join(json.dumps({"id": i, "item": f"q{i}"}) + "\n" for i in range(1, rows + 1)))
    out = out or tmp_path / f"out-{uuid.uuid4().hex[:6]}"
    op = RayLLMBatchOperator(
        task_id="ask", processor_config={"type": "HttpRequestProcessorConfig", "batch_size": 2, "max_retries": 0},
        preprocess=preprocess, postprocess=postprocess, input_uri=str(source), output_uri=str(out), id_column="id",
        num_partitions=4, should_continue_on_error=continue_on_error, max_error_ratio=0.5, http_conn_id="unused",
    )  # fmt: skip
    spec = op.build_spec(identity or RunIdentity(dag_id="fault", task_id="ask", run_id=f"r{time.time_ns()}"))
    conn = SimpleNamespace(host=echo_endpoint, port=None, schema=None, password=ECHO_KEY, extra_dejson={})
    processor, secrets = sub.with_endpoint_connection(spec.processor, conn, "ask")
    spec = spec.model_copy(update={"processor": processor})
    job_id = f"fault-{uuid.uuid4().hex[:10]}"
    runtime = {**(runtime_env or {}), "env_vars": {**(env or {})}}
    _jobs.submit(RayHook(), spec, job_id, _jobs.Submission(runtime_env=runtime, secrets=secrets))
    deadline = time.monotonic() + 300
    while not (status := RayHook().get_job_status(job_id)).is_terminal:
        assert time.monotonic() < deadline, RayHook().get_job_logs(job_id)[-3000:]
        time.sleep(1)
    info = RayHook().get_job_info(job_id)
    return status, f"{info.message}\n{RayHook().get_job_logs(job_id)}", out


def _table(out):
    return pq.read_table(committed_files(str(out)))


def test_a_worker_dying_after_writing_a_block_leaves_no_duplicate_rows(ray_conn, echo_endpoint, tmp_path):
    marker = tmp_path / "died"
    status, logs, out = _run(
        tmp_path, echo_endpoint, preprocess=_ask_all,
        runtime_env={"worker_process_setup_hook": "fault_hooks.die_after_first_block_write",
                     "py_modules": [RayHook().upload_py_module(str(ROOT / "tests" / "fault_hooks"))]},
        env={"RAYDLLM_FAULT_MARKER": str(marker)},
    )  # fmt: skip
    assert status is RayJobStatus.SUCCEEDED, logs[-3000:]
    assert marker.exists(), "the fault was never injected"
    ids = _table(out).column("id").to_pylist()
    assert sorted(ids) == list(range(1, 13))  # every row once: the rewrite replaced the block's file
    manifest = json.loads((out / "_SUCCESS").read_text())
    assert manifest["rows"] == 12 and len(manifest["files"]) == len(set(manifest["files"]))


def test_the_output_has_the_postprocess_columns_with_a_failed_row_in_every_block(ray_conn, echo_endpoint, tmp_path):
    status, logs, out = _run(tmp_path, echo_endpoint)
    assert status is RayJobStatus.SUCCEEDED, logs[-3000:]
    table = _table(out)
    assert table.column_names == ["id", "answer"]
    for path in committed_files(str(out)):
        assert pq.read_schema(path).names == ["id", "answer"], path  # every file, not only the merged view
    errors = pq.read_table(committed_files(str(out / "_errors")))
    assert errors.column_names == list(rows.ERROR_COLUMNS)
    assert sorted(int(i) for i in errors.column("row_id").to_pylist()) == [4, 8, 12]
    assert sorted(table.column("id").to_pylist()) == [i for i in range(1, 13) if i % 4]  # 12 in = 9 out + 3 errors


def test_a_python_object_from_the_postprocess_fails_the_job_naming_column_and_row(ray_conn, echo_endpoint, tmp_path):
    status, logs, out = _run(tmp_path, echo_endpoint, rows=4, preprocess=_ask_all,
                             postprocess=_object)  # fmt: skip
    assert status is RayJobStatus.FAILED
    line = next(l for l in logs.splitlines() if l.startswith("RAYDLLM_ERROR "))
    assert "column 'obj' (row " in line and "which parquet cannot store" in line and "Opaque" in line, line
    assert not (out / "_SUCCESS").exists()


def test_a_retry_never_resumes_onto_an_input_rewritten_in_place(ray_conn, echo_endpoint, tmp_path):
    source, flag, out = tmp_path / "in.jsonl", tmp_path / "fail.flag", tmp_path / "out"

    def write(text: str) -> None:
        rows = [{"id": i, "item": f"{text} {i}", "flag": str(flag)} for i in range(1, 13)]
        source.write_text("".join(json.dumps(r) + "\n" for r in rows))

    write("old")
    flag.write_text("fail")
    run = RunIdentity(dag_id="fault", task_id="ask", run_id=f"r{time.time_ns()}", resume_key=f"resume-{uuid.uuid4().hex[:8]}")
    first, logs, _ = _run(tmp_path, echo_endpoint, source=source, out=out, preprocess=_fail_on_12_while_flagged,
                          identity=run.model_copy(update={"keep_progress": True}), continue_on_error=False)  # fmt: skip
    assert first is RayJobStatus.FAILED and "this try fails on purpose" in logs
    staged = [json.loads(p.read_text()) for p in out.glob("_raydllm/staging/resume-*/_blocks/*.json")]
    assert staged and all("12" not in r["ids"] for r in staged)  # the failed try kept what it wrote

    write("new")  # the input is rewritten in place between the tries
    flag.unlink()
    second, logs, _ = _run(tmp_path, echo_endpoint, source=source, out=out, preprocess=_fail_on_12_while_flagged,
                           identity=run, continue_on_error=False)  # fmt: skip
    assert second is RayJobStatus.SUCCEEDED, logs[-3000:]
    assert "not resuming: input file file://" in logs and "changed since the earlier try" in logs
    table = _table(out)
    assert sorted(table.column("id").to_pylist()) == list(range(1, 13))
    assert sorted(table.column("answer").to_pylist()) == sorted(f"echo: new {i}" for i in range(1, 13))  # no old text
