"""Lifecycle drills under a real scheduler, triggerer and LocalExecutor (tests/lifecycle/
conftest.py), against the session's real Ray head. Each drill does to a running task what
users and machines do (mark failed, kill the triggerer, ask for resources no node has,
retry and clear a table output) and asserts on the Ray job list (count and status per task
instance) and on the output. The drills that can run side by side (timeouts, shared
outputs, retries, clears, a killed worker, a Serve setup and teardown) are in
test_concurrent_drills.py and test_concurrent_recoveries.py.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from demo_helpers import write_jsonl

from airflow_provider_raydatallm.relay import LineRelay
from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobStatus
from tests.conftest import ECHO_KEY
from tests.lifecycle.drills import _input, _jobs, _serve_apps, _wait_job

pytestmark = pytest.mark.lifecycle


@pytest.fixture(autouse=True)
def _ray(ray_conn):
    """The tests' own RayHook reads ray_default from the environment."""


def _wait_status(job_id: str, status: RayJobStatus, timeout: float) -> float:
    """Seconds until the job reached ``status``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if RayHook().get_job_status(job_id) is status:
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"Ray job {job_id} is {RayHook().get_job_status(job_id)}, not {status.value}, after {timeout}s")


def _events(task_log: str) -> list[str]:
    """The messages of a task log (JSON lines as Airflow writes them)."""
    events = []
    for line in task_log.splitlines():
        try:
            events.append(str(json.loads(line).get("event", "")))
        except ValueError:
            events.append(line)
    return events


def _ray_lines(task_log: str) -> list[str]:
    """The job log's lines as the task log shows them (relay.py: ``[ray...] line``)."""
    return [event.rstrip() for event in _events(task_log) if event.startswith(("[ray] ", "[ray:"))]


def _assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert ECHO_KEY not in text


def test_mark_failed_while_deferred_stops_the_job_within_15s(real_airflow, tmp_path):
    conf = {"input": _input(tmp_path / "in.jsonl", 6, 10), "output": str(tmp_path / "out")}
    run_id = real_airflow.trigger("drill_deferred", conf)
    real_airflow.wait_ti("drill_deferred", run_id, "ask", {"deferred"})
    job = _wait_job("drill_deferred", run_id, {RayJobStatus.RUNNING})
    time.sleep(3)
    real_airflow.mark("drill_deferred", run_id, "ask", "failed")
    took = _wait_status(job.id, RayJobStatus.STOPPED, 60)
    print(f"\nmark failed while deferred: job {job.id} STOPPED {took:.1f}s after the click")
    assert took < 15
    assert len(_jobs("drill_deferred", run_id)) == 1
    assert "Trigger cancelled by user action, invoking on_kill" in real_airflow.task_log("drill_deferred", run_id, "ask")
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_triggerer_killed_and_restarted_mid_job_one_job_no_repeated_lines(real_airflow, tmp_path):
    conf = {"input": _input(tmp_path / "in.jsonl", 6, 6), "output": str(tmp_path / "out")}
    run_id = real_airflow.trigger("drill_deferred", conf)
    real_airflow.wait_ti("drill_deferred", run_id, "ask", {"deferred"})
    job = _wait_job("drill_deferred", run_id, {RayJobStatus.RUNNING})
    deadline = time.monotonic() + 120
    while not _ray_lines(real_airflow.task_log("drill_deferred", run_id, "ask")):
        assert time.monotonic() < deadline, "the trigger never copied a log line"
        time.sleep(1)
    killed_at = time.monotonic()
    before_restart = len(real_airflow.component_log("triggerer"))
    real_airflow.kill("triggerer")
    time.sleep(3)
    real_airflow.start("triggerer")
    ti = real_airflow.wait_ti("drill_deferred", run_id, "ask", {"success", "failed"})
    print(f"\ntriggerer restart: task {ti['state']} {time.monotonic() - killed_at:.0f}s after the kill")
    assert ti["state"] == "success", real_airflow.diagnostics()
    jobs = _jobs("drill_deferred", run_id)
    assert [j.status for j in jobs] == [RayJobStatus.SUCCEEDED]
    task_log = real_airflow.task_log("drill_deferred", run_id, "ask")
    # The task log holds the job's log in order and never a line twice, across the restart:
    # it is a subsequence of the whole job log put through the relay (a chunk shown again
    # would have to appear again, in order, in the job log). Lines after the last saved
    # offset may be skipped by design (at most once), never repeated.
    shown = _ray_lines(task_log)
    relay = LineRelay(True)
    relayed = (relay(line) for line in RayHook().get_job_logs(job.id).splitlines())
    written = iter([r[1].rstrip() for r in relayed if r is not None])
    missing = [line for line in shown if not any(line == w for w in written)]
    assert shown and not missing, f"lines shown out of order or more often than the job wrote them: {missing[:5]}"
    assert "Carrying on with Ray job" in task_log
    # The restarted triggerer, catching up on the job's log, never held its event loop for long
    # (Airflow warns past 0.2 s; importing a trigger class alone takes that on a loaded machine).
    restarted = real_airflow.component_log("triggerer")[before_restart:]
    blocked = re.findall(r"async thread was blocked for ([0-9.]+) seconds", restarted)
    assert all(float(s) < 1.0 for s in blocked), blocked
    table = pq.read_table(tmp_path / "out")
    assert sorted(table.column("id").to_pylist()) == [1, 2, 3, 4, 5, 6]
    _assert_no_secret(task_log, json.dumps(real_airflow.xcom("drill_deferred", run_id, "ask")))


def test_resources_no_node_has_are_named_then_the_job_is_stopped(real_airflow, tmp_path):
    conf = {"input": _input(tmp_path / "in.jsonl", 2, 0), "output": str(tmp_path / "out")}
    run_id = real_airflow.trigger("drill_unplaceable", conf)
    job = _wait_job("drill_unplaceable", run_id, {RayJobStatus.RUNNING})
    running_at = time.monotonic()
    said = re.compile(r"waits for resources the cluster cannot give it: .*'accelerator_type:H100': 0.001.*no node has accelerator_type:H100")
    while not said.search(real_airflow.task_log("drill_unplaceable", run_id, "classify")):
        assert time.monotonic() - running_at < 60, real_airflow.task_log("drill_unplaceable", run_id, "classify")[-3000:]
        time.sleep(1)
    named_after = time.monotonic() - running_at
    ti = real_airflow.wait_ti("drill_unplaceable", run_id, "classify", {"success", "failed"}, 300)
    stopped_after = time.monotonic() - running_at
    print(f"\nunplaceable: demand named {named_after:.0f}s after the job started; task {ti['state']} after {stopped_after:.0f}s")
    assert ti["state"] == "failed"
    assert RayHook().get_job_status(job.id) is RayJobStatus.STOPPED
    task_log = real_airflow.task_log("drill_unplaceable", run_id, "classify")
    assert "RayJobUnschedulableError" in task_log and "pending_timeout" in task_log


def test_no_secret_in_any_jobs_api_response_task_log_or_xcom(real_airflow, ray_cluster):
    """After the drills above and those of the side-by-side modules (test_concurrent_*.py,
    which run first): the endpoint's key is nowhere a Jobs API client or a UI user reads."""
    import urllib.request

    headers = {"Authorization": f"Bearer {ray_cluster['password']}", "User-Agent": "drill"}
    base = f"http://{ray_cluster['host']}:{ray_cluster['port']}"
    listing = urllib.request.urlopen(urllib.request.Request(f"{base}/api/jobs/", headers=headers)).read().decode()
    jobs = json.loads(listing)
    assert jobs, "the drills submitted no job"
    for job in jobs:
        one = urllib.request.urlopen(urllib.request.Request(f"{base}/api/jobs/{job['submission_id']}", headers=headers))
        logs = urllib.request.urlopen(urllib.request.Request(f"{base}/api/jobs/{job['submission_id']}/logs", headers=headers))
        _assert_no_secret(one.read().decode(), logs.read().decode())
    _assert_no_secret(listing)
    for path in (real_airflow.home / "logs").rglob("*.log*"):
        _assert_no_secret(path.read_text(errors="replace"))
    for component in ("scheduler", "triggerer", "api-server", "dag-processor"):
        _assert_no_secret(real_airflow.component_log(component))


def test_serve_setup_marked_failed_while_deferred_removes_the_app_it_created(real_airflow, tmp_path):
    app = "drill-serve-kill"
    run_id = real_airflow.trigger("drill_serve", {"app_name": app, "parts": []})
    real_airflow.wait_ti("drill_serve", run_id, "deploy_llm", {"deferred"}, timeout=300)
    assert app in _serve_apps()
    deadline = time.monotonic() + 120  # the triggerer runs the wait (its first poll is in the task log)
    while f"Serve application {app} DEPLOYING" not in real_airflow.task_log("drill_serve", run_id, "deploy_llm"):
        assert time.monotonic() < deadline, real_airflow.component_log("triggerer")[-3000:]
        time.sleep(1)
    real_airflow.mark("drill_serve", run_id, "deploy_llm", "failed")
    deadline = time.monotonic() + 90
    while app in _serve_apps() and time.monotonic() < deadline:
        time.sleep(1)
    assert app not in _serve_apps(), (
        "the app of a setup task marked failed is still on the cluster\n"
        + real_airflow.task_log("drill_serve", run_id, "deploy_llm")[-4000:] + real_airflow.component_log("triggerer")[-4000:]
    )
    assert "Trigger cancelled by user action, invoking on_kill" in real_airflow.task_log("drill_serve", run_id, "deploy_llm")
    assert real_airflow.ti("drill_serve", run_id, "delete_llm")["state"] != "success"


def _table_rows(out: Path) -> tuple[dict[str, list[int]], list[dict]]:
    """(part -> sorted ids, snapshot summaries) of the drill's Iceberg table."""
    from pyiceberg.catalog import load_catalog

    table = load_catalog("default", type="sql", uri=f"sqlite:///{out}/catalog.db", warehouse=f"file://{out}/warehouse")\
        .load_table("drill.answers")  # fmt: skip
    parts: dict[str, list[int]] = {}
    for row in table.scan().to_arrow().to_pylist():
        parts.setdefault(row["part"], []).append(row["id"])
    return {p: sorted(ids) for p, ids in parts.items()}, [dict(s.summary.additional_properties) for s in table.snapshots()]


def test_a_table_output_retried_and_cleared_holds_each_slice_once(real_airflow, tmp_path):
    """Under the real scheduler and triggerer: a task whose first try fails midway, retried,
    commits its slice once; clearing the other task replaces its slice (a new snapshot),
    and neither touches the other's rows."""
    out, flag = tmp_path / "out", tmp_path / "fail.flag"
    out.mkdir()
    flag.write_text("fail")
    rows_a = [{"id": i, "item": f"table-a {i}", "delay": 0} for i in range(1, 9)]
    rows_a[-1].update(fail_flag=str(flag), delay=3)
    rows_b = [{"id": i, "item": f"table-b {i}"} for i in range(101, 105)]
    conf = {"input_a": str(write_jsonl(tmp_path / "a.jsonl", rows_a)), "input_b": str(write_jsonl(tmp_path / "b.jsonl", rows_b)),
            "output": str(out)}  # fmt: skip
    run_id = real_airflow.trigger("drill_table", conf)
    real_airflow.wait_ti("drill_table", run_id, "ask_a", {"up_for_retry", "failed"}, 150)
    flag.unlink()
    for task_id in ("ask_a", "ask_b"):
        assert real_airflow.wait_ti("drill_table", run_id, task_id, {"success", "failed"}, 150)["state"] == "success"
    parts, snapshots = _table_rows(out)
    assert parts == {"a": list(range(1, 9)), "b": list(range(101, 105))}
    committed = real_airflow.xcom("drill_table", run_id, "ask_a")["table"]
    assert committed["partition"] == {"day": "2026-12-01", "part": "a"} and committed["rows"] == 8
    before = len(snapshots)

    # Clear the finished run, as a user does: a clear in the second between the last task's
    # success and the scheduler closing the run is lost (SQLite, no row lock; see above).
    real_airflow.wait_run("drill_table", run_id, {"success", "failed"})
    real_airflow.clear("drill_table", run_id, "ask_b")
    real_airflow.wait_ti("drill_table", run_id, "ask_b", {"queued", "scheduled", "running", "deferred", "success"}, 60)
    assert real_airflow.wait_ti("drill_table", run_id, "ask_b", {"success", "failed"}, 150)["state"] == "success"
    parts, snapshots = _table_rows(out)
    assert parts == {"a": list(range(1, 9)), "b": list(range(101, 105))}  # replaced, not added to
    new = snapshots[before:]
    assert [(s.get("raydllm.slice"), s.get("raydllm.rows")) for s in new] == [("day=2026-12-01/part=b", "4")] * 2
    assert real_airflow.xcom("drill_table", run_id, "ask_b")["table"]["snapshot_id"] != committed["snapshot_id"]
    by_task = {t: [j.status for j in _jobs("drill_table", run_id) if j.metadata.get("airflow_task_id") == t]
               for t in ("ask_a", "ask_b")}  # fmt: skip
    assert by_task == {"ask_a": [RayJobStatus.FAILED, RayJobStatus.SUCCEEDED],
                       "ask_b": [RayJobStatus.SUCCEEDED, RayJobStatus.SUCCEEDED]}
