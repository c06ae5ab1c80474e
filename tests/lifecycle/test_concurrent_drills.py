"""Lifecycle drills that need nothing done to them once triggered, under the real Airflow
(tests/lifecycle/conftest.py): an execution timeout, two runs on one output, outputs that
must be refused. Their runs are triggered together (the module's fixture) and run side by
side, as a shared Airflow runs them; each test then waits for its own run and asserts on it.
Most of their time is waiting (a 45 s timeout, rows that sleep), not CPU: together they take
about the longest one's time. The drill of resources no node has stays in test_drills.py: the
time it takes to name the demand is measured, and five drivers starting at once on two cores
would be in that measure.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq
import pytest

from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobStatus
from tests.lifecycle.drills import _input, _jobs

pytestmark = pytest.mark.lifecycle


@pytest.fixture(autouse=True)
def _ray(ray_conn):
    """The tests' own RayHook reads ray_default from the environment."""


@pytest.fixture(scope="module")
def drills(real_airflow, ray_cluster, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """Trigger every drill of the module at once: {name: (run ids, paths)}."""
    tmp = tmp_path_factory.mktemp("concurrent-drills")
    started: dict[str, Any] = {}
    runs: list[tuple[str, str]] = []  # every (DAG, run) triggered, for the teardown

    def trigger(dag_id: str, conf: dict[str, Any]) -> str:
        runs.append((dag_id, real_airflow.trigger(dag_id, conf)))
        return runs[-1][1]

    conf = {"input": _input(tmp / "timeout.jsonl", 10, 12), "output": str(tmp / "timeout-out")}
    started["timeout"] = trigger("drill_timeout", conf)

    shared_out = tmp / "shared_out"
    conf = {"input": _input(tmp / "same.jsonl", 4, 5), "output": str(shared_out)}
    started["same_output"] = ([trigger("drill_same_output", conf) for _ in range(2)], shared_out)

    shared = tmp / "shared"
    shared.mkdir()
    (shared / "other_table.parquet").write_text("another team's data")
    foreign = trigger("drill_deferred", {"input": _input(tmp / "in.jsonl", 2, 0), "output": str(shared)})
    data = tmp / "data"
    conf = {"input": _input(data / "in.jsonl", 2, 0), "output": str(data)}
    started["refused"] = (foreign, shared, trigger("drill_deferred", conf), data)

    yield started

    # Whatever a failed test left running ends here, not in the timing drills after this module.
    for dag_id, run_id in runs:
        try:
            real_airflow.wait_run(dag_id, run_id, {"success", "failed"}, timeout=120)
        except AssertionError:
            real_airflow.mark_run(dag_id, run_id, "failed")
    with pytest.MonkeyPatch.context() as env:  # the tests' ray_conn is gone by now
        env.setenv("AIRFLOW_CONN_RAY_DEFAULT", json.dumps(ray_cluster))
        for dag_id, run_id in runs:
            for job in _jobs(dag_id, run_id):
                if not job.status.is_terminal:
                    RayHook().stop_job(job.id)


def test_execution_timeout_while_deferred_stops_the_job(real_airflow, drills):
    run_id = drills["timeout"]
    ti = real_airflow.wait_ti("drill_timeout", run_id, "ask", {"failed", "success", "up_for_retry"})
    assert ti["state"] == "failed"
    (job,) = _jobs("drill_timeout", run_id)
    assert job.status is RayJobStatus.STOPPED
    started = dt.datetime.fromisoformat(ti["start_date"].replace("Z", "+00:00")).timestamp()
    late = job.end_time / 1000 - (started + 45)
    print(f"\nexecution_timeout while deferred: job STOPPED {late:.1f}s after the timeout")
    assert late < 15


def test_two_runs_writing_one_output_never_corrupt_it(real_airflow, drills):
    runs, out = drills["same_output"]
    states = [real_airflow.wait_ti("drill_same_output", r, "ask", {"success", "failed"})["state"] for r in runs]
    assert "success" in states
    for run_id, state in zip(runs, states):
        if state == "failed":
            assert "is being written by Ray job" in real_airflow.task_log("drill_same_output", run_id, "ask")
    manifest = json.loads((out / "_SUCCESS").read_text())
    assert all((out / f).exists() for f in manifest["files"])
    assert sorted(pq.read_table(out).column("id").to_pylist()) == [1, 2, 3, 4]
    print(f"\ntwo runs on one output: {states}")


def test_output_holding_foreign_files_or_the_input_is_refused(real_airflow, drills):
    foreign, shared, inside, data = drills["refused"]
    assert real_airflow.wait_ti("drill_deferred", foreign, "ask", {"success", "failed"})["state"] == "failed"
    assert "other_table.parquet" in real_airflow.task_log("drill_deferred", foreign, "ask")
    assert sorted(p.name for p in shared.iterdir()) == ["other_table.parquet"]
    assert (shared / "other_table.parquet").read_text() == "another team's data"

    assert real_airflow.wait_ti("drill_deferred", inside, "ask", {"success", "failed"})["state"] == "failed"
    assert "contains input_uri" in real_airflow.task_log("drill_deferred", inside, "ask")
    assert _jobs("drill_deferred", inside) == []  # refused before anything was submitted
    assert sorted(p.name for p in data.iterdir()) == ["in.jsonl"]
