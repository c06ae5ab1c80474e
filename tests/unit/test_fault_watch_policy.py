"""The watcher under a failing dashboard, against a real local HTTP server standing in for it
(tests/unit/http_server.py): 5xx bursts are ridden out within the retry budget; past it, or on
401/404, the wait ends with an error that names the job, the address and what became of the
job, and a job the watcher owns is stopped. Then what a cancelled trigger does to its job."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from airflow_provider_raydatallm.events import RayJobEvent
from airflow_provider_raydatallm.hooks.ray import RayHook
from airflow_provider_raydatallm.triggers import ray_job
from airflow_provider_raydatallm.triggers.ray_job import ABSENT, UNKNOWN, RayJobTrigger, kill_verdict
from airflow_provider_raydatallm.watch import REFUSED_READS, JobWatch, WaitPolicy, stop_sync
from tests.unit import http_server

JOB = {"type": "SUBMISSION", "job_id": "01", "submission_id": "s1", "status": "RUNNING", "entrypoint": "x"}
STATUS, STOP = "/api/jobs/s1", "/api/jobs/s1/stop"
FAST = dict(poll_interval=0.01, fetch_logs=False, retry_delay=0.02, stop_retry_seconds=0.5)
log = logging.getLogger("test_fault_watch_policy")


@pytest.fixture
def dashboard(monkeypatch):
    canned, httpd = http_server.start()
    host, port = canned.address.removeprefix("http://").split(":")
    monkeypatch.setenv("AIRFLOW_CONN_RAY_FAULT", json.dumps({"conn_type": "ray", "host": host, "port": int(port)}))
    yield canned
    httpd.shutdown()


async def _watch(**policy) -> RayJobEvent:
    hook = RayHook(ray_conn_id="ray_fault")
    try:
        return await JobWatch(hook, "s1", WaitPolicy(**{**FAST, **policy}), log).run()
    finally:
        await hook.aclose()


def _seen(server, method: str, path: str) -> int:
    return sum(1 for s in server.seen if (s.method, s.path) == (method, path))


async def test_a_burst_of_500s_shorter_than_the_budget_ends_in_success(dashboard):
    dashboard.answer("GET", STATUS, 500, "Internal Server Error", "text/plain")
    for _ in range(3):
        dashboard.then("GET", STATUS, 500, "Internal Server Error", "text/plain")
    dashboard.then("GET", STATUS, 200, JOB)
    dashboard.then("GET", STATUS, 200, {**JOB, "status": "SUCCEEDED", "message": "done"})
    event = await _watch(retry_budget=30)
    assert (event.status, event.job_status, event.message) == ("success", "SUCCEEDED", "done")
    assert _seen(dashboard, "GET", STATUS) == 6 and _seen(dashboard, "POST", STOP) == 0


async def test_500s_for_longer_than_the_budget_end_the_wait_and_stop_the_job(dashboard, caplog):
    dashboard.answer("GET", STATUS, 500, "Internal Server Error", "text/plain")
    dashboard.answer("POST", STOP, 200, {"stopped": True})
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=log.name):
        event = await _watch(retry_budget=0.6)
    assert time.monotonic() - started >= 0.6
    assert event.status == "error" and event.job_status is None
    assert f"Lost sight of Ray job s1 at {dashboard.address}" in event.message
    assert "gave up after" in event.message and "HTTP 500" in event.message
    assert _seen(dashboard, "POST", STOP) == 1  # the job it owns was stopped
    assert _seen(dashboard, "GET", STATUS) >= 3  # retried before giving up
    # Ray took the stop but could not be read since: say so, with the command.
    assert f"ray job stop s1 --address {dashboard.address}" in event.message
    assert event.message in caplog.text  # loudly, in the task log too


async def test_a_stop_that_fails_too_says_the_job_may_run_on_and_how_to_stop_it(dashboard):
    dashboard.answer("GET", STATUS, 503, "busy", "text/plain")
    dashboard.answer("POST", STOP, 503, "busy", "text/plain")
    event = await _watch(retry_budget=0.2)
    assert event.status == "error"
    assert "Stopping it failed too" in event.message and "may commit its output unwatched" in event.message
    assert f"`ray job stop s1 --address {dashboard.address}`" in event.message
    assert _seen(dashboard, "POST", STOP) >= 2  # the stop was retried through its own 503s


async def test_401_ends_the_wait_after_a_few_reads_not_a_retry_budget(dashboard):
    dashboard.answer("GET", STATUS, 401, "Unauthorized: Missing authentication token", "text/plain")
    dashboard.answer("POST", STOP, 401, "Unauthorized: Missing authentication token", "text/plain")
    started = time.monotonic()
    event = await _watch(retry_budget=3600)
    assert time.monotonic() - started < 10
    assert _seen(dashboard, "GET", STATUS) == REFUSED_READS
    assert event.status == "error" and "HTTP 401" in event.message and "connection's password" in event.message
    assert _seen(dashboard, "POST", STOP) == 1  # tried once: a refused token is refused again
    assert "Stopping it failed too" in event.message and "ray job stop s1" in event.message


async def test_404_ends_the_wait_and_says_there_was_nothing_to_stop(dashboard):
    dashboard.answer("GET", STATUS, 404, "Job s1 does not exist", "text/plain")
    dashboard.answer("POST", STOP, 404, "Job s1 does not exist", "text/plain")
    event = await _watch(retry_budget=3600)
    assert _seen(dashboard, "GET", STATUS) == REFUSED_READS
    assert event.status == "error" and "no such job" in event.message
    assert f"Ray knows no job s1 at {dashboard.address}, so nothing was stopped there" in event.message


async def test_a_watcher_that_does_not_own_the_job_leaves_it_running_and_says_so(dashboard):
    dashboard.answer("GET", STATUS, 502, "bad gateway", "text/plain")
    event = await _watch(retry_budget=0.2, owns_job=False)
    assert event.status == "error" and "was left running" in event.message and "ray job status s1" in event.message
    assert _seen(dashboard, "POST", STOP) == 0


async def test_a_job_that_ended_while_unreadable_reports_how_it_ended(dashboard):
    dashboard.answer("GET", STATUS, 500, "Internal Server Error", "text/plain")
    dashboard.then("GET", STATUS, 200, {**JOB, "status": "SUCCEEDED"})
    dashboard.answer("POST", STOP, 200, {"stopped": False})  # Ray: it had already ended
    event = await _watch(retry_budget=0)
    assert (event.status, event.job_status) == ("success", "SUCCEEDED")
    assert _seen(dashboard, "POST", STOP) == 1


async def test_the_tasks_deadline_still_applies_during_an_outage(dashboard):
    dashboard.answer("GET", STATUS, 500, "Internal Server Error", "text/plain")
    dashboard.answer("POST", STOP, 200, {"stopped": True})
    event = await _watch(retry_budget=3600, deadline=time.time() + 0.3)
    assert event.status == "timeout" and _seen(dashboard, "POST", STOP) == 1


def test_stop_sync_retries_a_busy_dashboard_and_names_the_command_when_refused(dashboard, caplog):
    dashboard.answer("POST", STOP, 500, "busy", "text/plain")
    dashboard.then("POST", STOP, 200, {"stopped": True})
    assert stop_sync(RayHook(ray_conn_id="ray_fault"), "s1", log) is True
    dashboard.answer("POST", STOP, 403, "Forbidden", "text/plain")
    with caplog.at_level(logging.ERROR, logger=log.name):
        assert stop_sync(RayHook(ray_conn_id="ray_fault"), "s1", log) is None
    assert f"ray job stop s1 --address {dashboard.address}" in caplog.text
    assert _seen(dashboard, "POST", STOP) == 3


# -- a cancelled trigger and its job -------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "recorded", "stop"),
    [
        ("deferred", "s1", False),  # moved to another triggerer, or a duplicate copy
        ("deferred", None, False),
        ("deferred", UNKNOWN, False),
        ("deferred", "s1-a2", True),  # a later try deferred on its own job
        ("running", "s1", False),  # resumed from the twin's event, or reattached
        ("running", UNKNOWN, False),
        ("running", None, True),  # a new try started (Airflow cleared the XCom)
        ("failed", "s1", True),
        ("success", "s1", True),
        (None, "s1", True),  # cleared
        ("scheduled", None, True),
        ("queued", None, True),
        ("up_for_retry", None, True),
        ("up_for_reschedule", None, True),
        ("removed", None, True),
        (ABSENT, None, True),
        (UNKNOWN, None, False),  # cannot tell: keep it, and say how to stop it by hand
    ],
)
def test_kill_verdict(state, recorded, stop):
    assert kill_verdict("s1", state, recorded).stop is stop


class _TI:
    dag_id, task_id, run_id, map_index, try_number = "d", "t", "manual__1", -1, 1


async def test_on_kill_keeps_the_job_when_airflow_cannot_be_asked(dashboard, caplog, capfd):
    """Outside a triggerer there is no Airflow to ask: the real lookup fails, the job is kept."""
    trigger = RayJobTrigger("s1", ray_conn_id="ray_fault")
    trigger.task_instance = _TI()
    with caplog.at_level(logging.WARNING):
        await trigger.on_kill()
    assert _seen(dashboard, "POST", STOP) == 0
    # Airflow's structlog writes to stdout, or to logging when pytest's handler is set up.
    said = caplog.text + capfd.readouterr().out
    assert "Not stopping Ray job s1" in said and f"ray job stop s1 --address {dashboard.address}" in said


@pytest.mark.parametrize(("state", "recorded", "stopped"), [("failed", "s1", 1), ("deferred", "s1", 0)])
async def test_on_kill_asks_airflow_before_stopping(dashboard, monkeypatch, state, recorded, stopped):
    asked: list[str] = []

    async def task_state(ti):
        asked.append(ti.run_id)
        return state

    async def recorded_job(cls, key, **target):
        assert key == "ray_job" and target["run_id"] == "manual__1"
        return {"submission_id": recorded}

    from airflow.sdk.bases.xcom import BaseXCom

    monkeypatch.setattr(ray_job, "_task_state", task_state)
    monkeypatch.setattr(BaseXCom, "aget_one", classmethod(recorded_job))
    dashboard.answer("POST", STOP, 200, {"stopped": True})
    dashboard.answer("GET", STATUS, 200, {**JOB, "status": "STOPPED"})
    trigger = RayJobTrigger("s1", ray_conn_id="ray_fault")
    trigger.task_instance = _TI()
    await trigger.on_kill()
    assert asked == ["manual__1"] and _seen(dashboard, "POST", STOP) == stopped


async def test_on_kill_finishes_the_stop_when_airflow_cancels_it_again(dashboard, monkeypatch):
    """The triggerer cancels a trigger's task again at each sync (about once a second) while
    its on_kill runs: the lookup and the stop must still go through."""

    async def slow_task_state(ti):
        await asyncio.sleep(0.3)  # a busy triggerer answering late
        return "failed"

    monkeypatch.setattr(ray_job, "_task_state", slow_task_state)
    dashboard.answer("POST", STOP, 200, {"stopped": True})
    dashboard.answer("GET", STATUS, 200, {**JOB, "status": "STOPPED"})
    trigger = RayJobTrigger("s1", ray_conn_id="ray_fault")
    trigger.task_instance = _TI()
    on_kill = asyncio.ensure_future(trigger.on_kill())
    await asyncio.sleep(0.1)
    on_kill.cancel()  # what Airflow's next sync does
    with pytest.raises(asyncio.CancelledError):
        await on_kill
    await asyncio.wait_for(trigger._killing, 10)
    assert _seen(dashboard, "POST", STOP) == 1
