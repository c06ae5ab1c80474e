"""RayJobTrigger against a real local HTTP server standing in for the dashboard's error cases."""

from __future__ import annotations

import json

import pytest

from airflow_provider_raydatallm.events import RayJobEvent, validate_event
from airflow_provider_raydatallm.triggers.ray_job import RayJobTrigger
from tests.unit import http_server

JOB = {"type": "SUBMISSION", "job_id": "01", "submission_id": "s1", "status": "RUNNING", "entrypoint": "x"}


def test_serialize_round_trips_every_argument():
    trigger = RayJobTrigger("s1", ray_conn_id="ray_x", poll_interval=3, deadline=1.8e9, pending_timeout=30,
                            fetch_logs=False, log_offset=120, max_transient_errors=2, owns_job=False)  # fmt: skip
    path, kwargs = trigger.serialize()
    assert path == "airflow_provider_raydatallm.triggers.ray_job.RayJobTrigger"
    again = RayJobTrigger(**kwargs)
    assert again.serialize() == (path, kwargs)
    assert kwargs == {"job_id": "s1", "ray_conn_id": "ray_x", "poll_interval": 3.0, "deadline": 1.8e9,
                      "pending_timeout": 30.0, "fetch_logs": False, "log_offset": 120, "max_transient_errors": 2,
                      "owns_job": False, "retry_budget": 300.0}  # fmt: skip


@pytest.fixture
def dashboard(monkeypatch):
    canned, httpd = http_server.start()
    host, port = canned.address.removeprefix("http://").split(":")
    monkeypatch.setenv("AIRFLOW_CONN_RAY_TRIG", json.dumps({"conn_type": "ray", "host": host, "port": int(port)}))
    yield canned
    httpd.shutdown()


async def _events(trigger: RayJobTrigger) -> list[RayJobEvent]:
    return [validate_event(e.payload) async for e in trigger.run()]


async def test_transient_errors_are_retried_then_the_job_is_followed_to_the_end(dashboard):
    dashboard.answer("GET", "/api/jobs/s1", 503, "busy", "text/plain")
    dashboard.then("GET", "/api/jobs/s1", 502, "bad gateway", "text/plain")
    dashboard.then("GET", "/api/jobs/s1", 200, JOB)
    dashboard.then("GET", "/api/jobs/s1", 200, {**JOB, "status": "SUCCEEDED", "message": "done"})
    dashboard.answer("GET", "/api/jobs/s1/logs", 200, {"logs": "line 1\nline 2\n"})
    events = await _events(RayJobTrigger("s1", ray_conn_id="ray_trig", poll_interval=0.01, max_transient_errors=3))
    assert events == [RayJobEvent(status="success", job_id="s1", job_status="SUCCEEDED", message="done", log_offset=14)]


async def test_persistent_errors_give_up_after_the_bound(dashboard):
    dashboard.answer("GET", "/api/jobs/s1", 503, "busy", "text/plain")
    events = await _events(RayJobTrigger("s1", ray_conn_id="ray_trig", poll_interval=0.01, max_transient_errors=2))
    assert len(events) == 1 and events[0].status == "error" and "gave up after 3 failed polls" in events[0].message
    assert len([s for s in dashboard.seen if s.path == "/api/jobs/s1"]) == 3


async def test_unknown_job_is_an_error_event_at_once(dashboard):
    dashboard.answer("GET", "/api/jobs/gone", 404, "Job gone does not exist", "text/plain")
    (event,) = await _events(RayJobTrigger("gone", ray_conn_id="ray_trig", poll_interval=0.01))
    assert event.status == "error" and event.job_status is None and "gone" in event.message


async def test_failed_job_is_an_error_event_with_rays_message(dashboard):
    dashboard.answer("GET", "/api/jobs/s1", 200, {**JOB, "status": "FAILED", "message": "exit code 1"})
    dashboard.answer("GET", "/api/jobs/s1/logs", 200, {"logs": ""})
    (event,) = await _events(RayJobTrigger("s1", ray_conn_id="ray_trig", poll_interval=0.01))
    assert (event.status, event.job_status, event.message) == ("error", "FAILED", "exit code 1")


def test_validate_event_refuses_a_foreign_payload():
    with pytest.raises(Exception, match="unexpected event from RayJobTrigger"):
        validate_event({"status": "weird", "job_id": "x"})


async def test_a_passed_deadline_stops_the_job_it_owns(dashboard):
    import asyncio

    dashboard.answer("GET", "/api/jobs/s1", 200, JOB)
    dashboard.answer("POST", "/api/jobs/s1/stop", 200, {"stopped": True})

    async def stop_takes_effect():  # as Ray does: the job reads STOPPED once the stop arrived
        while not any(s.method == "POST" for s in dashboard.seen):
            await asyncio.sleep(0.05)
        dashboard.answer("GET", "/api/jobs/s1", 200, {**JOB, "status": "STOPPED"})

    ray_side = asyncio.ensure_future(stop_takes_effect())
    try:
        (event,) = await _events(RayJobTrigger("s1", ray_conn_id="ray_trig", poll_interval=0.01, deadline=1.0, fetch_logs=False))
    finally:
        ray_side.cancel()
    assert event.status == "timeout" and event.message == "the task's timeout passed: the job was stopped"
    stops = [i for i, s in enumerate(dashboard.seen) if s.method == "POST"]
    assert dashboard.seen[stops[0] + 1:], "the trigger never read the job's status after its stop"


async def test_a_stop_ray_accepts_but_never_carries_out_still_ends_the_wait(dashboard, monkeypatch):
    """Ray accepts the stop, and the job still reads RUNNING: the trigger waits its bounded
    stop wait (shortened here), then ends the wait all the same."""
    from airflow_provider_raydatallm import watch

    monkeypatch.setattr(watch, "STOP_WAIT_SECONDS", 0.5)
    dashboard.answer("GET", "/api/jobs/s1", 200, JOB)
    dashboard.answer("POST", "/api/jobs/s1/stop", 200, {"stopped": True})
    (event,) = await _events(RayJobTrigger("s1", ray_conn_id="ray_trig", poll_interval=0.01, deadline=1.0, fetch_logs=False))
    assert event.status == "timeout" and "stopped" in event.message
    assert [s.path for s in dashboard.seen if s.method == "POST"] == ["/api/jobs/s1/stop"]
    assert [s.path for s in dashboard.seen if s.method == "POST"] == ["/api/jobs/s1/stop"]


async def test_a_sensors_trigger_never_stops_the_job(dashboard):
    dashboard.answer("GET", "/api/jobs/s1", 200, JOB)
    trigger = RayJobTrigger("s1", ray_conn_id="ray_trig", poll_interval=0.01, deadline=1.0, fetch_logs=False,
                            owns_job=False)  # fmt: skip
    (event,) = await _events(trigger)
    await trigger.on_kill()
    assert event.status == "timeout" and not [s for s in dashboard.seen if s.method == "POST"]


async def test_on_kill_stops_the_job_and_waits_until_ray_says_so(dashboard):
    dashboard.answer("POST", "/api/jobs/s1/stop", 200, {"stopped": True})
    dashboard.answer("GET", "/api/jobs/s1", 200, JOB)
    dashboard.then("GET", "/api/jobs/s1", 200, {**JOB, "status": "STOPPED"})
    await RayJobTrigger("s1", ray_conn_id="ray_trig").on_kill()
    assert [(s.method, s.path) for s in dashboard.seen] == [
        ("POST", "/api/jobs/s1/stop"), ("GET", "/api/jobs/s1"), ("GET", "/api/jobs/s1")
    ]  # fmt: skip


def test_the_triggers_record_key_is_the_operators():
    from airflow_provider_raydatallm.links.ray import XCOM_JOB_KEY
    from airflow_provider_raydatallm.triggers.ray_job import RECORD_XCOM_KEY

    assert RECORD_XCOM_KEY == XCOM_JOB_KEY
