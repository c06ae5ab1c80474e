"""Lifecycle drills that act on a run midway, under the real Airflow (tests/lifecycle/
conftest.py): a try that fails midway, then its retry (resume) or a clear (from zero); a clear
after the prompt changed; a worker killed mid-job; a Serve LLM app as setup and teardown around
mapped batch tasks. (The table drill stays in test_drills.py: beside these, the clear of its
finished run was lost once in a fresh-clone run.) Each drill is one script, as a user acting
on the run would do it; the module's fixture runs the scripts side by side in threads, as a
shared Airflow runs such runs, and each test waits for its own script and re-raises what it
found.

Most of their time is waiting (rows that sleep, retry delays, the scheduler), not CPU:
the waits of one overlap the CPU work of the others. The Serve drill (the default model on
vLLM) deploys once both failing first tries have failed: deployed beside six starting jobs on
2 cores, the API's PUT that starts Serve took longer than the connection's timeout. None of
these drills asserts on a time.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from demo_helpers import write_jsonl

from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobStatus
from tests.lifecycle.conftest import DAGS
from tests.lifecycle.drills import _input, _jobs, _serve_apps, _wait_job

pytestmark = pytest.mark.lifecycle
PROMPT_FILE = DAGS / "prompt.txt"


@pytest.fixture(autouse=True)
def _ray(ray_conn):
    """The tests' own RayHook reads ray_default from the environment."""


# Every drill's waits end by then (its thread's own deadline), with the components' logs: the
# batch takes about 5 minutes here, and a test waits for its drill up to its pytest-timeout.
DRILL_SECONDS = 540


class Drill(threading.Thread):
    """One drill's script in a thread of its own: what it returned, or what it raised."""

    def __init__(self, name: str, script: Callable[[], Any], airflow):
        super().__init__(name=f"drill-{name}", daemon=True)
        self.script, self.airflow, self.result, self.error = script, airflow, None, None

    def run(self) -> None:
        self.airflow.thread_deadline.value = time.monotonic() + DRILL_SECONDS
        try:
            self.result = self.script()
        except BaseException as err:  # noqa: BLE001 (the test re-raises it)
            self.error = err

    def outcome(self) -> Any:
        """Wait for the script (until 30 s before the test's pytest-timeout) and re-raise
        what it raised: the test fails with the drill's own assertion."""
        left = self.airflow.test_deadline - time.monotonic()
        self.join(max(1.0, left) if left != float("inf") else None)
        if self.is_alive():
            raise AssertionError(f"{self.name} still runs at the test's deadline\n{self.airflow.diagnostics()}")
        if self.error is not None:
            raise self.error
        return self.result


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


def _fail_first_try(airflow, tmp: Path, dag_id: str, tag: str, failed: threading.Event) -> tuple[Path, str, list[int], list[dict]]:
    """Run ``dag_id`` on the 24-row input until its first try failed midway; then let the
    failing row pass, and set ``failed``. Returns (output directory, run id, the rows the
    first try sent, the block records it kept)."""
    out, flag = tmp / "out", tmp / "fail.flag"
    conf = {"input": _resume_input(tmp / "in.jsonl", tag, flag), "output": str(out)}
    try:
        run_id = airflow.trigger(dag_id, conf)
        airflow.wait_ti(dag_id, run_id, "ask", {"up_for_retry", "failed"}, 600)
        # What the failed try sent and kept, read before its retry (15 s later) can add to either.
        return out, run_id, _sent(tag), [json.loads(p.read_text()) for p in out.glob("_raydllm/staging/resume-*/_blocks/*.json")]
    finally:
        flag.unlink(missing_ok=True)
        failed.set()


def resume_after_retry(airflow, tmp: Path, failed: threading.Event) -> None:
    """A retry resumes where the failed try stopped."""
    tag = "resume-retry"
    out, run_id, first_try, records = _fail_first_try(airflow, tmp, "drill_resume", tag, failed)
    assert 24 not in first_try  # the failing row's partition never reached the endpoint
    written = sorted(int(i) for r in records for i in r["ids"])
    assert len(written) >= 4 and set(written) <= set(first_try), (written, first_try)  # kept for the retry
    assert not (out / "_SUCCESS").exists()  # nothing committed

    assert airflow.wait_ti("drill_resume", run_id, "ask", {"success", "failed"}, 600)["state"] == "success"
    second_try = sorted(_sent(tag)[len(first_try):])
    assert second_try == sorted(set(range(1, 25)) - set(written))  # only the rows the failed try did not write
    metrics = airflow.xcom("drill_resume", run_id, "ask")["metrics"]
    assert (metrics["rows_in"], metrics["rows_out"], metrics["error_rows"]) == (24, 24, 0)
    assert metrics["resumed_rows"] == len(written)
    log = airflow.task_log("drill_resume", run_id, "ask", 2)
    assert f"resuming: {len(written)} of 24 rows were written by an earlier try" in log
    ids = [r["id"] for r in pq.read_table(out).to_pylist()]
    assert sorted(ids) == list(range(1, 25))  # every id exactly once
    assert not (out / "_raydllm").exists()
    assert [j.status for j in _jobs("drill_resume", run_id)] == [RayJobStatus.FAILED, RayJobStatus.SUCCEEDED]


def clear_from_zero(airflow, tmp: Path, failed: threading.Event) -> None:
    """Clearing a task whose try failed midway starts it from zero."""
    tag = "resume-clear"
    out, run_id, first_try, records = _fail_first_try(airflow, tmp, "drill_resume_clear", tag, failed)
    assert len(records) >= 1

    airflow.clear("drill_resume_clear", run_id, "ask")  # instead of waiting 2 h for the retry
    assert airflow.wait_ti("drill_resume_clear", run_id, "ask", {"success", "failed"}, 600)["state"] == "success"
    assert len(_sent(tag)) - len(first_try) == 24  # every row again
    metrics = airflow.xcom("drill_resume_clear", run_id, "ask")["metrics"]
    assert (metrics["rows_in"], metrics["rows_out"], metrics["resumed_rows"]) == (24, 24, 0)
    assert sorted(r["id"] for r in pq.read_table(out).to_pylist()) == list(range(1, 25))


def clear_with_a_changed_prompt(airflow, tmp: Path) -> None:
    """A clear runs the task again (a new job, its files replace the first's); after the
    prompt changed, a clear never reattaches to the old spec's job."""
    out = tmp / "out"
    conf = {"input": _input(tmp / "in.jsonl", 3, 0), "output": str(out)}
    PROMPT_FILE.write_text("Answer briefly.")
    try:
        run_id = airflow.trigger("drill_prompt", conf)
        assert airflow.wait_ti("drill_prompt", run_id, "ask", {"success", "failed"})["state"] == "success"
        first = json.loads((out / "_SUCCESS").read_text())

        # Clear a finished run, as a user does from the UI (the run ends first: see above).
        airflow.wait_run("drill_prompt", run_id, {"success", "failed"})
        airflow.clear("drill_prompt", run_id, "ask")
        airflow.wait_ti("drill_prompt", run_id, "ask", {"queued", "scheduled", "running", "deferred"}, 120)
        assert airflow.wait_ti("drill_prompt", run_id, "ask", {"success", "failed"})["state"] == "success"
        second = json.loads((out / "_SUCCESS").read_text())
        assert second["submission_id"] != first["submission_id"]
        assert set(second["files"]).isdisjoint(first["files"]) and not any((out / f).exists() for f in first["files"])

        PROMPT_FILE.write_text("Answer in French.")
        airflow.wait_run("drill_prompt", run_id, {"success", "failed"})
        airflow.clear("drill_prompt", run_id, "ask")
        airflow.wait_ti("drill_prompt", run_id, "ask", {"queued", "scheduled", "running", "deferred"}, 120)
        assert airflow.wait_ti("drill_prompt", run_id, "ask", {"success", "failed"})["state"] == "success"
    finally:
        PROMPT_FILE.unlink(missing_ok=True)
    jobs = _jobs("drill_prompt", run_id)
    assert [j.status for j in jobs] == [RayJobStatus.SUCCEEDED] * 3
    assert jobs[0].metadata["raydllm_spec_hash"] == jobs[1].metadata["raydllm_spec_hash"]
    assert jobs[2].metadata["raydllm_spec_hash"] != jobs[1].metadata["raydllm_spec_hash"]
    rows = pq.read_table(out).to_pylist()
    assert sorted(r["id"] for r in rows) == [1, 2, 3]
    assert all(r["prompt"] == "Answer in French." and "Answer in French." in r["answer"] for r in rows)


def _runner_pid(ti_id: str) -> int:
    listing = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        pid, _, args = line.strip().partition(" ")
        if f"airflow worker -- {ti_id}" in args:
            return int(pid)
    raise AssertionError(f"no task process for TI {ti_id}:\n{listing}")


def worker_killed(airflow, tmp: Path) -> None:
    """The task's worker process is killed (SIGKILL) while its job runs: the retry
    reattaches to the one job, and no second job starts. The job runs about 50 s of rows,
    so it still runs when the retry starts on a loaded machine."""
    conf = {"input": _input(tmp / "in.jsonl", 6, 8), "output": str(tmp / "out")}
    run_id = airflow.trigger("drill_worker", conf)
    ti = airflow.wait_ti("drill_worker", run_id, "ask", {"running"})
    job = _wait_job("drill_worker", run_id, {RayJobStatus.RUNNING})
    time.sleep(3)
    subprocess.run(["kill", "-9", str(_runner_pid(ti["id"]))], check=True)
    final = airflow.wait_ti("drill_worker", run_id, "ask", {"success", "failed"})
    assert final["state"] == "success" and final["try_number"] == 2, airflow.diagnostics()
    jobs = _jobs("drill_worker", run_id)
    assert [(j.id, j.status) for j in jobs] == [(job.id, RayJobStatus.SUCCEEDED)]
    assert "Reattaching to Ray job" in airflow.task_log("drill_worker", run_id, "ask", try_number=2)
    assert sorted(pq.read_table(tmp / "out").column("id").to_pylist()) == [1, 2, 3, 4, 5, 6]


def _mapped_state(airflow, dag_id: str, run_id: str, task_id: str, index: int) -> str:
    return airflow._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{index}")["state"]


def serve_setup_and_teardown(airflow, tmp: Path, after: list[threading.Event]) -> None:
    """A Serve LLM app deployed by a deferred setup task; mapped partitions send their rows
    to it; one partition fails, and the teardown deletes the app all the same."""
    for event in after:
        event.wait(300)
    app = "drill-serve-teardown"
    parts = []
    for k, items in enumerate((["I love it", "It broke", "Fine"], ["Great", "FAIL"])):
        rows = [{"id": f"{k}-{i}", "item": item} for i, item in enumerate(items)]
        parts.append({"input_uri": str(write_jsonl(tmp / f"part-{k}.jsonl", rows)), "output_uri": str(tmp / f"out-{k}")})
    run_id = airflow.trigger("drill_serve", {"app_name": app, "parts": parts})
    airflow.wait_ti("drill_serve", run_id, "deploy_llm", {"deferred"}, timeout=300)
    assert _serve_apps()[app].status in {"DEPLOYING", "RUNNING"}
    airflow.wait_ti("drill_serve", run_id, "deploy_llm", {"success"}, timeout=600)
    airflow.wait_ti("drill_serve", run_id, "delete_llm", {"success", "failed"}, timeout=600)
    assert airflow.ti("drill_serve", run_id, "delete_llm")["state"] == "success"
    assert [_mapped_state(airflow, "drill_serve", run_id, "classify", i) for i in (0, 1)] == ["success", "failed"]
    assert app not in _serve_apps()
    assert pq.read_table(tmp / "out-0").num_rows == 3 and not (tmp / "out-1" / "_SUCCESS").exists()
    log = airflow.task_log("drill_serve", run_id, "deploy_llm")
    assert "RUNNING: LLMServer:smollm2-135m HEALTHY" in log  # written by the trigger in the triggerer
    jobs = _jobs("drill_serve", run_id)
    assert len(jobs) == 2 and {j.status for j in jobs} == {RayJobStatus.SUCCEEDED, RayJobStatus.FAILED}


@pytest.fixture(scope="module")
def drills(real_airflow, ray_cluster, tmp_path_factory) -> Iterator[dict[str, Drill]]:
    """Every drill of the module started at once, each in its thread: {name: Drill}."""
    tmp = tmp_path_factory.mktemp("concurrent-recoveries")
    retried, cleared = threading.Event(), threading.Event()
    scripts = {
        "resume": lambda: resume_after_retry(real_airflow, tmp / "resume", retried),
        "clear": lambda: clear_from_zero(real_airflow, tmp / "clear", cleared),
        "prompt": lambda: clear_with_a_changed_prompt(real_airflow, tmp / "prompt"),
        "worker": lambda: worker_killed(real_airflow, tmp / "worker"),
        "serve": lambda: serve_setup_and_teardown(real_airflow, tmp / "serve", [retried, cleared]),
    }
    for name in scripts:
        (tmp / name).mkdir()
    with pytest.MonkeyPatch.context() as env:  # the scripts' RayHook, outside any test's ray_conn
        env.setenv("AIRFLOW_CONN_RAY_DEFAULT", json.dumps(ray_cluster))
        started = {name: Drill(name, script, real_airflow) for name, script in scripts.items()}
        for drill in started.values():
            drill.start()
        yield started
        # A failed test's drill may still run (its waits end by their own deadline): what it
        # left running ends here, not in the timing drills after this module.
        until = time.monotonic() + 120
        for drill in started.values():
            drill.join(max(0.0, until - time.monotonic()))
        for dag_id in ("drill_resume", "drill_resume_clear", "drill_prompt", "drill_worker", "drill_serve"):
            for run in real_airflow._request("GET", f"/api/v2/dags/{dag_id}/dagRuns")["dag_runs"]:
                try:
                    if run["state"] in ("running", "queued"):
                        real_airflow.mark_run(dag_id, run["dag_run_id"], "failed")
                    for job in _jobs(dag_id, run["dag_run_id"]):
                        if not job.status.is_terminal:
                            RayHook().stop_job(job.id)
                except Exception as err:  # noqa: BLE001 (the next run is ended all the same)
                    print(f"teardown of {dag_id} {run['dag_run_id']}: {err}")
        PROMPT_FILE.unlink(missing_ok=True)


def test_a_retry_resumes_where_the_failed_try_stopped(real_airflow, drills):
    drills["resume"].outcome()


def test_clearing_a_task_whose_try_failed_midway_starts_from_zero(real_airflow, drills):
    drills["clear"].outcome()


def test_clear_runs_again_and_a_changed_prompt_never_reattaches(real_airflow, drills):
    drills["prompt"].outcome()


def test_worker_killed_mid_job_the_retry_reattaches_to_the_one_job(real_airflow, drills):
    drills["worker"].outcome()


def test_serve_setup_deferred_partitions_on_it_and_teardown_after_a_failed_partition(real_airflow, drills):
    drills["serve"].outcome()
