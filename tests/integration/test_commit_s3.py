"""s3:// for real: a local S3-compatible server (moto in server mode) reached through s3fs by
the commit code, and through pyarrow and s3fs by a real Ray job on the session's cluster.

On an object store a "move" is a copy and a delete, file by file: the manifest (``_SUCCESS``,
one PUT) is what makes a version visible, so a job stopped halfway through its commit must
leave readers the previous complete version.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from types import SimpleNamespace

import pytest

from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobStatus
from airflow_provider_raydatallm.job.commit import Manifest, OutputDir, committed_files
from airflow_provider_raydatallm.job.spec import RunIdentity
from airflow_provider_raydatallm.operators import RayLLMBatchOperator, _jobs, _submission as sub
from tests.conftest import ECHO_KEY, ROOT, wait_until_answers

pytestmark = pytest.mark.integration
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3(monkeypatch_module):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([str(ROOT / ".venv" / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    wait_until_answers(endpoint, 60, alive=lambda: server.poll() is None)
    env = {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}
    for key, value in env.items():
        monkeypatch_module.setenv(key, value)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("raydllm-test")
    yield env
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _stage(directory: OutputDir, files: dict[str, str]) -> None:
    for name, text in files.items():
        directory.fs.pipe_file(f"{directory.staging_uri}/{name}", text.encode())


def test_commit_on_s3_replaces_by_manifest_and_survives_an_interrupted_commit(s3):
    uri = "s3://raydllm-test/unit/out"
    first = OutputDir(uri, "job-a1")
    _stage(first, {"a.parquet": "a", "b.parquet": "b"})
    first.commit(Manifest(submission_id="job-a1"), overwrite=False)
    assert committed_files(uri) == ["raydllm-test/unit/out/a.parquet", "raydllm-test/unit/out/b.parquet"]

    # A commit that copied one file in and died: readers still get the first version, whole.
    broken = OutputDir(uri, "job-a2")
    _stage(broken, {"c.parquet": "c", "d.parquet": "d"})
    broken.fs.pipe_file(broken._pending("job-a2"), json.dumps({"files": ["c.parquet", "d.parquet"]}).encode())
    broken.fs.mv(f"{broken.staging_uri}/c.parquet", f"{uri}/c.parquet")
    assert [f.rsplit("/", 1)[1] for f in committed_files(uri)] == ["a.parquet", "b.parquet"]
    assert broken.foreign_files() == []

    again = OutputDir(uri, "job-a3")
    again.check_owned(False)
    again.clear_stale()
    _stage(again, {"e.parquet": "e"})
    again.commit(Manifest(submission_id="job-a3"), overwrite=False)
    listed = sorted(p.rsplit("/", 1)[1] for p in again.fs.find("raydllm-test/unit/out"))
    assert listed == ["_SUCCESS", "e.parquet"]


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
    while (status := RayHook().get_job_status(job_id)) not in RayJobStatus.terminal_states():
        assert time.monotonic() < deadline, RayHook().get_job_logs(job_id)[-3000:]
        time.sleep(1)
    return status


def test_a_ray_job_reads_and_writes_s3_and_a_job_stopped_mid_commit_leaves_the_old_version(
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
    first_id, second_id = f"s3-first-{time.time_ns()}", f"s3-second-{time.time_ns()}"
    _submit(spec, first_id, s3)
    assert _wait(first_id) is RayJobStatus.SUCCEEDED, RayHook().get_job_logs(first_id)[-3000:]
    first = json.loads(fs.cat_file("raydllm-test/job/out/_SUCCESS"))
    assert len(first["files"]) == 3 and first["rows"] == 6
    table = pq.read_table([f"raydllm-test/job/out/{f}" for f in first["files"]], filesystem=fs)
    assert sorted(table.column("id").to_pylist()) == [1, 2, 3, 4, 5, 6]
    assert table.column("answer").to_pylist()[0].startswith("echo: q")

    # The second run pauses between the files it moves in: stop it there.
    _submit(spec, second_id, {**s3, "RAYDLLM_TEST_COMMIT_PAUSE": "4"})
    deadline = time.monotonic() + 300
    while "commit: moving 3 files into s3://raydllm-test/job/out" not in RayHook().get_job_logs(second_id):
        assert time.monotonic() < deadline and not RayHook().get_job_status(second_id).is_terminal
        time.sleep(0.5)
    time.sleep(2)  # one file copied in, two to go
    RayHook().stop_job(second_id)
    assert _wait(second_id) is RayJobStatus.STOPPED
    after = json.loads(fs.cat_file("raydllm-test/job/out/_SUCCESS"))
    assert after["files"] == first["files"] and after["submission_id"] == first_id
    table = pq.read_table([f"raydllm-test/job/out/{f}" for f in after["files"]], filesystem=fs)
    assert sorted(table.column("id").to_pylist()) == [1, 2, 3, 4, 5, 6]
    names = _listed(fs)
    copied_in = [n for n in names if n not in after["files"] and not n.endswith("_SUCCESS")]
    assert 1 <= len(copied_in) <= 2, names  # stopped midway: some of the new files were in place

    # The next run cleans up what the stopped commit left and commits whole.
    third_id = f"s3-third-{time.time_ns()}"
    _submit(spec, third_id, s3)
    assert _wait(third_id) is RayJobStatus.SUCCEEDED, RayHook().get_job_logs(third_id)[-3000:]
    third = json.loads(fs.cat_file("raydllm-test/job/out/_SUCCESS"))
    names = sorted(_listed(fs))
    assert names == sorted(["_SUCCESS", "_errors/_SUCCESS", *third["files"]])
