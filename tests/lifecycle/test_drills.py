"""Lifecycle drills under a real scheduler, triggerer and LocalExecutor (tests/lifecycle/
conftest.py), against the session's real Ray head. Each drill does to a running task what
users and machines do (mark failed, clear, kill the worker, kill the triggerer, time out)
and asserts on the Ray job list (count and status per task instance) and on the output.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from demo_helpers import write_jsonl

from airflow_provider_raydatallm.relay import LineRelay
from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobStatus
from tests.conftest import ECHO_KEY
from tests.lifecycle.conftest import DAGS
from tests.lifecycle.drills import _input, _jobs, _wait_job

pytestmark = pytest.mark.lifecycle
PROMPT_FILE = DAGS / "prompt.txt"


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


def _runner_pid(ti_id: str) -> int:
    listing = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        pid, _, args = line.strip().partition(" ")
        if f"airflow worker -- {ti_id}" in args:
            return int(pid)
    raise AssertionError(f"no task process for TI {ti_id}:\n{listing}")


def test_worker_killed_mid_job_the_retry_reattaches_to_the_one_job(real_airflow, tmp_path):
    conf = {"input": _input(tmp_path / "in.jsonl", 5, 8), "output": str(tmp_path / "out")}
    run_id = real_airflow.trigger("drill_worker", conf)
    ti = real_airflow.wait_ti("drill_worker", run_id, "ask", {"running"})
    job = _wait_job("drill_worker", run_id, {RayJobStatus.RUNNING})
    time.sleep(3)
    subprocess.run(["kill", "-9", str(_runner_pid(ti["id"]))], check=True)
    final = real_airflow.wait_ti("drill_worker", run_id, "ask", {"success", "failed"})
    assert final["state"] == "success" and final["try_number"] == 2, real_airflow.diagnostics()
    jobs = _jobs("drill_worker", run_id)
    assert [(j.id, j.status) for j in jobs] == [(job.id, RayJobStatus.SUCCEEDED)]
    assert "Reattaching to Ray job" in real_airflow.task_log("drill_worker", run_id, "ask", try_number=2)
    assert sorted(pq.read_table(tmp_path / "out").column("id").to_pylist()) == [1, 2, 3, 4, 5]


def test_clear_runs_again_and_a_changed_prompt_never_reattaches(real_airflow, tmp_path):
    out = tmp_path / "out"
    conf = {"input": _input(tmp_path / "in.jsonl", 3, 0), "output": str(out)}
    PROMPT_FILE.write_text("Answer briefly.")
    try:
        run_id = real_airflow.trigger("drill_deferred", conf)
        assert real_airflow.wait_ti("drill_deferred", run_id, "ask", {"success", "failed"})["state"] == "success"
        first = json.loads((out / "_SUCCESS").read_text())

        # Clear a finished run, as a user does from the UI. Clearing in the second between the
        # task's success and the scheduler closing the run loses the clear (SQLite, no row
        # lock): the scheduler still marks the run successful and the task never runs again.
        real_airflow.wait_run("drill_deferred", run_id, {"success", "failed"})
        real_airflow.clear("drill_deferred", run_id, "ask")
        real_airflow.wait_ti("drill_deferred", run_id, "ask", {"queued", "scheduled", "running", "deferred"}, 60)
        assert real_airflow.wait_ti("drill_deferred", run_id, "ask", {"success", "failed"})["state"] == "success"
        second = json.loads((out / "_SUCCESS").read_text())
        assert second["submission_id"] != first["submission_id"]
        assert set(second["files"]).isdisjoint(first["files"]) and not any((out / f).exists() for f in first["files"])

        PROMPT_FILE.write_text("Answer in French.")
        real_airflow.wait_run("drill_deferred", run_id, {"success", "failed"})
        real_airflow.clear("drill_deferred", run_id, "ask")
        real_airflow.wait_ti("drill_deferred", run_id, "ask", {"queued", "scheduled", "running", "deferred"}, 60)
        assert real_airflow.wait_ti("drill_deferred", run_id, "ask", {"success", "failed"})["state"] == "success"
    finally:
        PROMPT_FILE.unlink(missing_ok=True)
    jobs = _jobs("drill_deferred", run_id)
    assert [j.status for j in jobs] == [RayJobStatus.SUCCEEDED] * 3
    assert jobs[0].metadata["raydllm_spec_hash"] == jobs[1].metadata["raydllm_spec_hash"]
    assert jobs[2].metadata["raydllm_spec_hash"] != jobs[1].metadata["raydllm_spec_hash"]
    rows = pq.read_table(out).to_pylist()
    assert sorted(r["id"] for r in rows) == [1, 2, 3]
    assert all(r["prompt"] == "Answer in French." and "Answer in French." in r["answer"] for r in rows)


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
    """After the drills above: the endpoint's key is nowhere a Jobs API client or a UI user reads."""
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


def _resume_input(path: Path, tag: str, flag: Path) -> str:
    """24 rows; row 24 fails its partition (after 20 s) while ``flag`` exists."""
    flag.write_text("fail")
    rows = [{"id": i, "item": f"{tag} {i}", "delay": 0} for i in range(1, 25)]
    rows[-1].update(fail_flag=str(flag), delay=20)
    return str(write_jsonl(path, rows))


def _sent(tag: str) -> list[int]:
    """The rows of a drill's input (items ``<tag> <id>``) sent to the echo endpoint, in order."""
    from tests import echo_server

    return [int(m.rsplit(" ", 1)[1]) for m in list(echo_server.SEEN) if f" {tag} " in f" {m.rsplit(' ', 1)[0]} "]


def _fail_first_try(real_airflow, tmp_path: Path, dag_id: str, tag: str) -> tuple[Path, str]:
    """Run ``dag_id`` on the 24-row input until its first try failed midway; then let the
    failing row pass. Returns (output directory, run id)."""
    out, flag = tmp_path / "out", tmp_path / "fail.flag"
    conf = {"input": _resume_input(tmp_path / "in.jsonl", tag, flag), "output": str(out)}
    run_id = real_airflow.trigger(dag_id, conf)
    real_airflow.wait_ti(dag_id, run_id, "ask", {"up_for_retry", "failed"}, 600)
    flag.unlink()
    return out, run_id


def test_a_retry_resumes_where_the_failed_try_stopped(real_airflow, tmp_path):
    tag = "resume-retry"
    out, run_id = _fail_first_try(real_airflow, tmp_path, "drill_resume", tag)
    first_try = _sent(tag)
    assert 24 not in first_try  # the failing row's partition never reached the endpoint
    records = [json.loads(p.read_text()) for p in out.glob("_raydllm/staging/resume-*/_blocks/*.json")]
    written = sorted(int(i) for r in records for i in r["ids"])
    assert len(written) >= 4 and set(written) <= set(first_try), (written, first_try)  # kept for the retry
    assert not (out / "_SUCCESS").exists()  # nothing committed

    assert real_airflow.wait_ti("drill_resume", run_id, "ask", {"success", "failed"}, 600)["state"] == "success"
    second_try = sorted(_sent(tag)[len(first_try):])
    assert second_try == sorted(set(range(1, 25)) - set(written))  # only the rows the failed try did not write
    metrics = real_airflow.xcom("drill_resume", run_id, "ask")["metrics"]
    assert (metrics["rows_in"], metrics["rows_out"], metrics["error_rows"]) == (24, 24, 0)
    assert metrics["resumed_rows"] == len(written)
    log = real_airflow.task_log("drill_resume", run_id, "ask", 2)
    assert f"resuming: {len(written)} of 24 rows were written by an earlier try" in log
    ids = [r["id"] for r in pq.read_table(out).to_pylist()]
    assert sorted(ids) == list(range(1, 25))  # every id exactly once
    assert not (out / "_raydllm").exists()
    assert [j.status for j in _jobs("drill_resume", run_id)] == [RayJobStatus.FAILED, RayJobStatus.SUCCEEDED]


def test_clearing_a_task_whose_try_failed_midway_starts_from_zero(real_airflow, tmp_path):
    tag = "resume-clear"
    out, run_id = _fail_first_try(real_airflow, tmp_path, "drill_resume_clear", tag)
    assert len(list(out.glob("_raydllm/staging/resume-*/_blocks/*.json"))) >= 1
    sent_before = len(_sent(tag))

    real_airflow.clear("drill_resume_clear", run_id, "ask")  # instead of waiting 2 h for the retry
    assert real_airflow.wait_ti("drill_resume_clear", run_id, "ask", {"success", "failed"}, 600)["state"] == "success"
    assert len(_sent(tag)) - sent_before == 24  # every row again
    metrics = real_airflow.xcom("drill_resume_clear", run_id, "ask")["metrics"]
    assert (metrics["rows_in"], metrics["rows_out"], metrics["resumed_rows"]) == (24, 24, 0)
    assert sorted(r["id"] for r in pq.read_table(out).to_pylist()) == list(range(1, 25))


def _serve_apps() -> dict:
    return RayHook().get_serve_state().apps


def _mapped_state(airflow, dag_id: str, run_id: str, task_id: str, index: int) -> str:
    return airflow._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{index}")["state"]


def test_serve_setup_deferred_partitions_on_it_and_teardown_after_a_failed_partition(real_airflow, tmp_path):
    app = "drill-serve-teardown"
    parts = []
    for k, items in enumerate((["I love it", "It broke", "Fine"], ["Great", "FAIL"])):
        rows = [{"id": f"{k}-{i}", "item": item} for i, item in enumerate(items)]
        parts.append({"input_uri": str(write_jsonl(tmp_path / f"part-{k}.jsonl", rows)), "output_uri": str(tmp_path / f"out-{k}")})
    run_id = real_airflow.trigger("drill_serve", {"app_name": app, "parts": parts})
    real_airflow.wait_ti("drill_serve", run_id, "deploy_llm", {"deferred"}, timeout=300)
    assert _serve_apps()[app].status in {"DEPLOYING", "RUNNING"}
    real_airflow.wait_ti("drill_serve", run_id, "deploy_llm", {"success"}, timeout=600)
    real_airflow.wait_ti("drill_serve", run_id, "delete_llm", {"success", "failed"}, timeout=600)
    assert real_airflow.ti("drill_serve", run_id, "delete_llm")["state"] == "success"
    assert [_mapped_state(real_airflow, "drill_serve", run_id, "classify", i) for i in (0, 1)] == ["success", "failed"]
    assert app not in _serve_apps()
    assert pq.read_table(tmp_path / "out-0").num_rows == 3 and not (tmp_path / "out-1" / "_SUCCESS").exists()
    log = real_airflow.task_log("drill_serve", run_id, "deploy_llm")
    assert "RUNNING: LLMServer:smollm2-135m HEALTHY" in log  # written by the trigger in the triggerer
    jobs = _jobs("drill_serve", run_id)
    assert len(jobs) == 2 and {j.status for j in jobs} == {RayJobStatus.SUCCEEDED, RayJobStatus.FAILED}


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
