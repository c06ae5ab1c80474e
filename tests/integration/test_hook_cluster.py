"""RayHook against the session's real local Ray head (token auth on), through the Jobs API."""

from __future__ import annotations

import asyncio
import json
import shlex
import time
import uuid

import pytest

from airflow_provider_raydatallm.exceptions import (
    RayAuthenticationError,
    RayJobAlreadyExistsError,
    RayJobNotFoundError,
)
from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobStatus

pytestmark = pytest.mark.integration


def _wait(hook: RayHook, job_id: str, timeout: float = 120) -> RayJobStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = hook.get_job_status(job_id)
        if status.is_terminal:
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {status} after {timeout}s")


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_connection_names_version_and_address(ray_conn):
    ok, message = RayHook().test_connection()
    assert ok, message
    assert message == f"Ray 2.60.0 at http://127.0.0.1:{ray_conn['port']}"


def test_job_runs_on_the_cluster_and_its_logs_come_back(ray_conn):
    hook = RayHook()
    code = "import ray; ray.init(); print('cpus', int(ray.cluster_resources()['CPU']))"
    job_id = hook.submit_job(f'python -c "{code}"', submission_id=_id("ok"), metadata={"suite": "hook"})
    assert _wait(hook, job_id) is RayJobStatus.SUCCEEDED
    from tests.conftest import TEST_PROFILE

    # The head's logical CPUs (the worker nodes join only for the placement test).
    assert f"cpus {TEST_PROFILE.num_cpus}" in hook.get_job_logs(job_id)
    info = hook.get_job_info(job_id)
    assert info.metadata["suite"] == "hook" and info.driver_exit_code == 0
    assert job_id in [j.submission_id for j in hook.list_jobs()]
    assert hook.delete_job(job_id) is True
    with pytest.raises(RayJobNotFoundError):
        hook.get_job_info(job_id)


def test_tail_follows_the_log_until_the_job_ends(ray_conn):
    hook = RayHook()
    code = "import time\nfor i in range(3): print(f'tick {i}', flush=True); time.sleep(1)"
    job_id = hook.submit_job(f"python -c {shlex.quote(code)}", submission_id=_id("tail"))
    text = "".join(hook.tail_job_logs(job_id))
    assert all(f"tick {i}" in text for i in range(3))
    assert hook.get_job_status(job_id).is_terminal


def test_stop_leaves_a_sleeping_job_stopped_within_10s(ray_conn):
    hook = RayHook()
    job_id = hook.submit_job("python -c 'import time; time.sleep(600)'", submission_id=_id("sleep"))
    deadline = time.monotonic() + 60
    while hook.get_job_status(job_id) is RayJobStatus.PENDING and time.monotonic() < deadline:
        time.sleep(0.2)
    assert hook.get_job_status(job_id) is RayJobStatus.RUNNING
    started = time.monotonic()
    assert hook.stop_job(job_id) is True
    assert _wait(hook, job_id, timeout=10) is RayJobStatus.STOPPED
    assert time.monotonic() - started < 10


def test_resubmitting_a_submission_id_is_the_typed_already_exists_error(ray_conn):
    hook = RayHook()
    submission_id = _id("dup")
    hook.submit_job("echo first", submission_id=submission_id)
    with pytest.raises(RayJobAlreadyExistsError) as err:
        hook.submit_job("echo second", submission_id=submission_id)
    assert submission_id in str(err.value)
    assert _wait(hook, submission_id) is RayJobStatus.SUCCEEDED
    assert "first" in hook.get_job_logs(submission_id)


@pytest.mark.parametrize(("password", "status"), [(None, 401), ("wrong-token-0000", 403)])
def test_cluster_refuses_missing_or_wrong_token(ray_cluster, monkeypatch, password, status):
    conn = {**ray_cluster, "password": password}
    monkeypatch.setenv("AIRFLOW_CONN_RAY_BADAUTH", json.dumps(conn))
    hook = RayHook(ray_conn_id="ray_badauth")
    with pytest.raises(RayAuthenticationError) as err:
        hook.list_jobs()
    assert err.value.status_code == status
    assert ray_cluster["password"] not in str(err.value)
    ok, message = hook.test_connection()
    assert not ok and f"HTTP {status}" in message


def test_working_dir_upload_reaches_the_jobs_cwd(ray_conn, tmp_path):
    (tmp_path / "payload.txt").write_text("shipped without the Ray SDK")
    hook = RayHook()
    uri = hook.upload_working_dir(str(tmp_path))
    assert uri.startswith("gcs://_ray_pkg_") and hook.upload_working_dir(str(tmp_path)) == uri
    job_id = hook.submit_job(
        "python -c \"print(open('payload.txt').read())\"",
        submission_id=_id("wd"),
        runtime_env={"working_dir": uri},
    )
    assert _wait(hook, job_id) is RayJobStatus.SUCCEEDED
    assert "shipped without the Ray SDK" in hook.get_job_logs(job_id)


async def test_async_polling_never_stalls_the_event_loop(ray_conn):
    """Poll a running job through the async API while a ticker measures the loop's stalls."""
    hook = RayHook()
    job_id = await hook.asubmit_job("python -c 'import time; time.sleep(3)'", submission_id=_id("async"))
    longest = 0.0
    stop = asyncio.Event()

    async def ticker():
        nonlocal longest
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            longest = max(longest, now - last - 0.005)
            last = now

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    statuses = []
    try:
        while True:
            status = await hook.aget_job_status(job_id)
            statuses.append(status)
            if status.is_terminal:
                break
            await asyncio.sleep(0.2)
        logs = await hook.aget_job_logs(job_id)
        assert await hook.aget_cluster_version() == "2.60.0"
        assert job_id in [j.submission_id for j in await hook.alist_jobs()]
    finally:
        stop.set()
        await tick
        await hook.aclose()
    assert statuses[-1] is RayJobStatus.SUCCEEDED and len(statuses) > 3
    assert "Running entrypoint" in logs
    # A gross-regression guard (a blocking call in the async path stalls the loop for the
    # whole request); a shared 2-core machine alone stalls it ~50 ms now and then.
    assert longest < 0.100, f"event loop stalled {longest * 1000:.1f} ms"


async def test_async_tail_and_stop(ray_conn):
    hook = RayHook()
    code = "import time\nfor i in range(100): print(f'beat {i}', flush=True); time.sleep(0.5)"
    job_id = await hook.asubmit_job(f"python -c {shlex.quote(code)}", submission_id=_id("atail"))
    seen = ""
    try:
        async for chunk in hook.atail_job_logs(job_id):
            seen += chunk
            if "beat 2" in seen:
                assert await hook.astop_job(job_id) is True
                break
        for _ in range(40):
            if (await hook.aget_job_status(job_id)) is RayJobStatus.STOPPED:
                break
            await asyncio.sleep(0.25)
        assert (await hook.aget_job_status(job_id)) is RayJobStatus.STOPPED
        assert await hook.adelete_job(job_id) is True
    finally:
        await hook.aclose()
    assert "beat 0" in seen
