"""s3:// for real: a local S3-compatible server (moto in server mode) reached through s3fs by
the commit code, and through pyarrow and s3fs by a real Ray job on the session's cluster.

On an object store a "move" is a copy and a delete, file by file: the manifest (``_SUCCESS``,
one PUT) is what makes a version visible. Jobs killed at each step of their commit, on s3://
too: tests/integration/test_fault_commit.py.
"""

from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace

import pytest

from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobStatus
from airflow_provider_raydatallm.job import rows
from airflow_provider_raydatallm.job.commit import Manifest, OutputDir, committed_files
from airflow_provider_raydatallm.job.spec import RunIdentity
from airflow_provider_raydatallm.operators import RayLLMBatchOperator, _jobs, _submission as sub
from tests.conftest import ECHO_KEY

pytestmark = pytest.mark.integration


OWNER = {"dag_id": "s3", "task_id": "unit"}


def _stage(directory: OutputDir, files: dict[str, str]) -> list[str]:
    for name, text in files.items():
        directory.fs.pipe_file(f"{directory.staging_path}/{name}", text.encode())
    return list(files)


def test_commit_on_s3_replaces_by_manifest_and_keeps_the_scheme(s3):
    uri = "s3://raydllm-test/unit/out"
    first = OutputDir(uri, "job-a1", OWNER)
    first.commit(_stage(first, {"block-a.parquet": "a", "block-b.parquet": "b"}), Manifest(submission_id="job-a1"), False)
    files = committed_files(uri)
    assert len(files) == 2 and all(f.startswith("s3://raydllm-test/unit/out/part-") for f in files)

    again = OutputDir(uri, "job-a2", OWNER)
    again.recover()
    again.commit(_stage(again, {"block-e.parquet": "e"}), Manifest(submission_id="job-a2"), False)
    listed = sorted(p.rsplit("/", 1)[1] for p in again.fs.find("raydllm-test/unit/out"))
    assert listed == sorted(["_SUCCESS", *(f.rsplit("/", 1)[1] for f in committed_files(uri))]) and len(listed) == 2


def _submit(spec, submission_id: str, env: dict[str, str]) -> None:
    conn = SimpleNamespace(host=os.environ["RAYDLLM_ECHO_URL"], port=None, schema=None, password=ECHO_KEY, extra_dejson={})
    processor, secrets = sub.with_endpoint_connection(spec.processor, conn, "s3_ask")
    spec = spec.model_copy(update={"processor": processor})
    _jobs.submit(RayHook(), spec, submission_id, _jobs.Submission(runtime_env={"env_vars": env}, secrets=secrets))


def _listed(fs) -> list[str]:
    """Files under the job's output, relative, without the work area and directory markers."""
    found = (p.split("job/out/", 1)[1] for p in fs.find("raydllm-test/job/out") if "job/out/" in p)
    return [f for f in found if f and not f.startswith("_raydllm")]


def _wait(job_id: str, timeout: float = 300) -> RayJobStatus:
    deadline = time.monotonic() + timeout
    while (status := RayHook().get_job_status(job_id)) not in {RayJobStatus.SUCCEEDED, RayJobStatus.FAILED, RayJobStatus.STOPPED}:
        assert time.monotonic() < deadline, RayHook().get_job_logs(job_id)[-3000:]
        time.sleep(1)
    return status


def test_a_ray_job_reads_and_writes_s3_and_a_rerun_replaces_its_version(
    s3, ray_conn, echo_endpoint, monkeypatch
):
    import pyarrow.parquet as pq
    import s3fs

    monkeypatch.setenv("RAYDLLM_ECHO_URL", echo_endpoint)
    fs = s3fs.S3FileSystem()
    fs.pipe_file("raydllm-test/job/in.jsonl", "".join(json.dumps({"id": i, "item": f"q{i}"}) + "\n" for i in range(1, 7)).encode())
    op = RayLLMBatchOperator(
        task_id="s3_ask", processor_config={"type": "HttpRequestProcessorConfig", "batch_size": 2, "max_retries": 0},
        preprocess=lambda row: {"payload": {"model": "echo", "messages": [{"role": "user", "content": row["item"]}]}},
        postprocess=lambda row: {"id": row["id"], "answer": row["http_response"]["choices"][0]["message"]["content"]},
        input_uri="s3://raydllm-test/job/in.jsonl", output_uri="s3://raydllm-test/job/out", id_column="id",
        num_partitions=3, http_conn_id="unused",
    )  # fmt: skip
    spec = op.build_spec(RunIdentity(dag_id="s3", task_id="s3_ask", run_id=f"r{time.time_ns()}"))
    first_id = f"s3-first-{time.time_ns()}"
    _submit(spec, first_id, s3)
    assert _wait(first_id) is RayJobStatus.SUCCEEDED, RayHook().get_job_logs(first_id)[-3000:]
    first = json.loads(fs.cat_file("raydllm-test/job/out/_SUCCESS"))
    assert len(first["files"]) == 3 and first["rows"] == 6
    table = pq.read_table([f"raydllm-test/job/out/{f}" for f in first["files"]], filesystem=fs)
    assert sorted(table.column("id").to_pylist()) == [1, 2, 3, 4, 5, 6]
    assert table.column("answer").to_pylist()[0].startswith("echo: q")

    # A rerun of the task (killed commits: tests/integration/test_fault_commit.py) replaces the version.
    third_id = f"s3-third-{time.time_ns()}"
    _submit(spec, third_id, s3)
    assert _wait(third_id) is RayJobStatus.SUCCEEDED, RayHook().get_job_logs(third_id)[-3000:]
    third = json.loads(fs.cat_file("raydllm-test/job/out/_SUCCESS"))
    names = sorted(_listed(fs))
    errors = json.loads(fs.cat_file("raydllm-test/job/out/_errors/_SUCCESS"))
    assert names == sorted(["_SUCCESS", "_errors/_SUCCESS", *third["files"], *(f"_errors/{f}" for f in errors["files"])])
    # No row failed: the error output is one empty file that still has the error columns.
    (empty,) = errors["files"]
    empty_errors = pq.read_table(f"raydllm-test/job/out/_errors/{empty}", filesystem=fs)
    assert empty_errors.num_rows == errors["rows"] == 0 and empty_errors.column_names == list(rows.ERROR_COLUMNS)
    assert not set(third["files"]) & set(first["files"]) and third["rows"] == 6
    from airflow_provider_raydatallm.reading import read_committed  # what a downstream task reads

    assert sorted(read_committed("s3://raydllm-test/job/out").column("id").to_pylist()) == [1, 2, 3, 4, 5, 6]
    assert read_committed("s3://raydllm-test/job/out/_errors").num_rows == 0
