"""Two triggerers (the usual HA setup) under a real Airflow (tests/lifecycle/conftest.py):
the one running a deferred batch task's trigger is frozen (SIGSTOP) past the health-check
threshold, its trigger moves to the other, and when it is thawed Airflow 3.3 cancels its copy
"by user action" and calls on_kill. The job must not be stopped for that: it finishes, the
task succeeds, and the output holds every row."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from demo_helpers import write_jsonl

from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobInfo, RayJobStatus

pytestmark = pytest.mark.lifecycle
DAG_ID, TASK_ID = "drill_deferred", "ask"
TRIGGERERS = ("triggerer", "triggerer-2")


@pytest.fixture(autouse=True)
def _ray(ray_conn):
    """The tests' own RayHook reads ray_default from the environment."""


def _jobs(run_id: str) -> list[RayJobInfo]:
    ours = {"airflow_dag_id": DAG_ID, "airflow_run_id": run_id}
    return [j for j in RayHook().list_jobs() if all(j.metadata.get(k) == v for k, v in ours.items())]


def _wait(what: str, found, timeout: float):
    deadline = time.monotonic() + timeout
    while not (value := found()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        time.sleep(0.5)
    return value


def _trigger_log(airflow, run_id: str, triggerer_job: int) -> str:
    """What one triggerer wrote for this task's trigger (a file per triggerer job id)."""
    folder = airflow.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={TASK_ID}"
    path = folder / f"attempt=1.log.trigger.{triggerer_job}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _assigned(airflow, run_id: str) -> int | None:
    """The triggerer job the task's trigger is assigned to (Airflow's REST API)."""
    return (airflow.ti(DAG_ID, run_id, TASK_ID).get("trigger") or {}).get("triggerer_id")


def _events(trigger_log: str) -> list[str]:
    events = []
    for line in trigger_log.splitlines():
        try:
            events.append(str(json.loads(line).get("event", "")))
        except ValueError:
            continue
    return events


def _starts(trigger_log: str) -> int:
    return sum(1 for e in _events(trigger_log) if e.startswith("trigger ") and e.endswith(" starting"))


def _copy_runs(trigger_log: str) -> bool:
    """Whether a triggerer's copy of the trigger runs now: started more often than completed."""
    return _starts(trigger_log) > sum(1 for e in _events(trigger_log) if e == "trigger completed")


def _running_copy(airflow, run_id: str) -> int | None:
    """The triggerer job the trigger is assigned to, once that triggerer's copy runs."""
    assigned = _assigned(airflow, run_id)
    return assigned if assigned and _copy_runs(_trigger_log(airflow, run_id, assigned)) else None


def _settled_holder(airflow, run_id: str, hold: float = 12.0, timeout: float = 300.0) -> int:
    """The triggerer job running the trigger, once the same one has for ``hold`` seconds: on a
    loaded machine both triggerers miss heartbeats at first and the trigger goes back and forth."""
    deadline = time.monotonic() + timeout
    holder, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = _running_copy(airflow, run_id)
        if now != holder:
            holder, since = now, time.monotonic()
        elif holder is not None and time.monotonic() - since >= hold:
            return holder
        time.sleep(1)
    raise AssertionError(f"no triggerer kept the trigger for {hold:.0f}s within {timeout:.0f}s (last: {holder})")


def _taken_over(airflow, run_id: str, holder_job: int) -> int | None:
    """Another triggerer job, once the trigger is assigned to it."""
    assigned = _assigned(airflow, run_id)
    return assigned if assigned not in (None, holder_job) else None


def _triggerer_jobs(airflow) -> set[int]:
    status, body = airflow.get("/api/v2/jobs?job_type=TriggererJob&job_state=running&limit=100")
    assert status == 200, body
    return {j["id"] for j in body["jobs"]}


def _new_triggerer(airflow, known: set[int]) -> int | None:
    return max(_triggerer_jobs(airflow) - known, default=None)


def test_a_trigger_moved_off_a_frozen_triggerer_never_stops_its_job(real_airflow, tmp_path: Path):
    first = _wait("the session's triggerer is up", lambda: _triggerer_jobs(real_airflow), 180)
    real_airflow.start_second_triggerer()
    try:
        second = _wait("the second triggerer starts", lambda: _new_triggerer(real_airflow, first), 180)
        # 90 s of work after the job's start-up: the trigger starts late on a loaded machine.
        rows = [{"id": i, "item": f"question {i}", "delay": 6} for i in range(1, 16)]
        conf = {"input": str(write_jsonl(tmp_path / "in.jsonl", rows)), "output": str(tmp_path / "out")}
        run_id = real_airflow.trigger(DAG_ID, conf)
        real_airflow.wait_ti(DAG_ID, run_id, TASK_ID, {"deferred"})
        (job,) = _wait("the job runs", lambda: [j for j in _jobs(run_id) if j.status is RayJobStatus.RUNNING], 300)
        # Freeze the triggerer the trigger is assigned to, once its copy runs.
        holder_job = _settled_holder(real_airflow, run_id)
        holder = "triggerer-2" if holder_job == second else "triggerer"
        seen_before = len(_trigger_log(real_airflow, run_id, holder_job)), len(real_airflow.component_log(holder))
        real_airflow.freeze(holder)
        frozen_at = time.monotonic()
        try:  # frozen until another triggerer holds the trigger, and a little longer to run it
            moving = f"another triggerer takes over the trigger of the frozen {holder}"
            taker = _wait(moving, lambda: _taken_over(real_airflow, run_id, holder_job), 180)
            moved_after = time.monotonic() - frozen_at
            time.sleep(5)
            assert RayHook().get_job_status(job.id) is RayJobStatus.RUNNING, "the job ended before the move: no drill"
        finally:
            real_airflow.thaw(holder)
        ti = real_airflow.wait_ti(DAG_ID, run_id, TASK_ID, {"success", "failed"}, 600)
        print(f"\ntwo triggerers: {holder} frozen, triggerer job {taker} took the trigger over after "
              f"{moved_after:.0f}s; task {ti['state']}")  # fmt: skip
        # Thawed, the frozen triggerer finds its trigger is another's, and Airflow 3.3 cancels
        # its copy "by user action" and calls on_kill (a copy can also be cancelled so earlier,
        # when both triggerers miss heartbeats on a loaded machine). Each such on_kill must keep
        # its hands off the job its twin watches. What on_kill logs after Airflow closed the
        # copy's log file goes to its triggerer's output.
        logs = real_airflow.task_log(DAG_ID, run_id, TASK_ID) + "".join(map(real_airflow.component_log, TRIGGERERS))
        frozen_copy = (_trigger_log(real_airflow, run_id, holder_job)[seen_before[0]:]
                       + real_airflow.component_log(holder)[seen_before[1]:])  # fmt: skip
        print(f"the frozen copy was cancelled after the thaw: {'cancelled by user action' in frozen_copy}")
        assert "Trigger cancelled by user action, invoking on_kill" in logs, real_airflow.diagnostics()
        assert f"not stopping Ray job {job.id}: the task instance is still deferred on this job" in logs
        assert f"Stopping Ray job {job.id}" not in logs
        assert ti["state"] == "success", real_airflow.task_log(DAG_ID, run_id, TASK_ID)[-4000:]
        assert [(j.id, j.status) for j in _jobs(run_id)] == [(job.id, RayJobStatus.SUCCEEDED)]  # never stopped
        assert sorted(pq.read_table(tmp_path / "out").column("id").to_pylist()) == list(range(1, 16))
    finally:
        for name in TRIGGERERS:
            real_airflow.thaw(name)
        real_airflow.kill("triggerer-2", signal.SIGTERM)
