"""RayJobTrigger and RayJobSensor against the session's real Ray head."""

from __future__ import annotations

import time
import uuid

import pytest

from airflow_provider_raydatallm.exceptions import RayJobFailedError, RayJobNotFoundError
from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobStatus
from airflow_provider_raydatallm.sensors import RayJobSensor
from airflow_provider_raydatallm.triggers import RayJobTrigger
from airflow_provider_raydatallm.events import validate_event

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("owns_job", [True, False])
async def test_trigger_deadline_on_a_job_that_keeps_running(ray_conn, owns_job):
    hook = RayHook()
    job_id = hook.submit_job("python -c 'import time; time.sleep(120)'", submission_id=f"slow-{uuid.uuid4().hex[:8]}")
    try:
        started = time.monotonic()
        trigger = RayJobTrigger(job_id, poll_interval=0.5, deadline=time.time() + 3, owns_job=owns_job)
        events = [validate_event(e.payload) async for e in trigger.run()]
        elapsed = time.monotonic() - started
        status = hook.get_job_status(job_id)
    finally:
        hook.stop_job(job_id)
    assert [e.status for e in events] == ["timeout"] and events[0].job_id == job_id
    assert 3 <= elapsed < 30
    # The operator's trigger stops its job; a sensor's leaves someone else's job alone.
    assert status is (RayJobStatus.STOPPED if owns_job else RayJobStatus.RUNNING)


def test_deferred_sensor_timeout_is_a_sensor_timeout_and_soft_fail_skips(ray_conn):
    from airflow.sdk.exceptions import AirflowSensorTimeout, AirflowSkipException

    event = {"event": {"status": "timeout", "job_id": "j1", "message": "still running"}}
    with pytest.raises(AirflowSensorTimeout, match="the job was left running"):
        RayJobSensor(task_id="wait", job_id="j1", timeout=5).resume_execution("execute_complete", event, {})
    with pytest.raises(AirflowSkipException):
        RayJobSensor(task_id="wait", job_id="j1", timeout=5, soft_fail=True).resume_execution("execute_complete", event, {})


async def test_trigger_reports_success_and_streams_the_log(ray_conn, caplog, capfd):
    hook = RayHook()
    job_id = hook.submit_job("python -c \"print('hello from the job')\"", submission_id=f"ok-{uuid.uuid4().hex[:8]}")
    caplog.set_level("INFO")
    events = [validate_event(e.payload) async for e in RayJobTrigger(job_id, poll_interval=0.5).run()]
    assert [(e.status, e.job_status) for e in events] == [("success", "SUCCEEDED")]
    assert events[0].log_offset == len(hook.get_job_logs(job_id))
    # Airflow's structlog writes to stdout, or to logging when pytest's handler is set up.
    assert "hello from the job" in caplog.text + capfd.readouterr().out


def test_sensor_on_an_unknown_job_fails_clearly(ray_conn):
    sensor = RayJobSensor(task_id="wait", job_id="no-such-job-123")
    with pytest.raises(RayJobNotFoundError) as err:
        sensor.poke({})
    assert "no-such-job-123" in str(err.value) and f"127.0.0.1:{ray_conn['port']}" in str(err.value)


def test_sensor_fails_with_the_log_tail_of_a_failed_job(ray_conn):
    hook = RayHook()
    job_id = hook.submit_job("python -c \"import sys; print('about to fail'); sys.exit(3)\"",
                             submission_id=f"bad-{uuid.uuid4().hex[:8]}")  # fmt: skip
    deadline = time.monotonic() + 60
    while not hook.get_job_status(job_id).is_terminal and time.monotonic() < deadline:
        time.sleep(0.5)
    assert hook.get_job_status(job_id) is RayJobStatus.FAILED
    with pytest.raises(RayJobFailedError) as err:
        RayJobSensor(task_id="wait", job_id=job_id).poke({})
    assert "ended FAILED" in str(err.value) and "about to fail" in str(err.value)


async def test_the_wait_ends_with_the_job_not_at_the_next_poll(ray_conn):
    """A 30 s poll interval, a job of a few seconds: the trigger ends soon after the job, woken
    by the job's result line in the log (and by Ray closing the stream for other jobs)."""
    hook = RayHook()
    marker = "RAYDLLM_" + "RESULT"  # not in the entrypoint text Ray echoes into the log
    job_id = hook.submit_job(
        f"python -c \"import time; time.sleep(3); print('{marker[:8]}' + '{marker[8:]} {{}}', flush=True)\"",
        submission_id=f"quick-{uuid.uuid4().hex[:8]}",
    )  # fmt: skip
    started = time.monotonic()
    events = [validate_event(e.payload) async for e in RayJobTrigger(job_id, poll_interval=30).run()]
    waited = time.monotonic() - started
    ended = hook.get_job_info(job_id)
    assert [e.status for e in events] == ["success"] and ended.status is RayJobStatus.SUCCEEDED
    assert waited < 20, f"the wait took {waited:.1f}s for a job of ~4s (poll interval 30s)"
    assert f"{marker} {{}}" in hook.get_job_logs(job_id)
