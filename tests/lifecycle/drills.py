"""Helpers of the lifecycle drills (test_drills.py, test_concurrent_drills.py,
test_concurrent_recoveries.py): their inputs and the Ray jobs of a DAG run, found by the
metadata the operator gives every job."""

from __future__ import annotations

import time
from pathlib import Path

from demo_helpers import write_jsonl

from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobInfo, RayJobStatus


def _input(path: Path, rows: int, delay: float) -> str:
    return str(write_jsonl(path, [{"id": i, "item": f"question {i}", "delay": delay} for i in range(1, rows + 1)]))


def _jobs(dag_id: str, run_id: str) -> list[RayJobInfo]:
    jobs = [j for j in RayHook().list_jobs() if j.metadata.get("airflow_dag_id") == dag_id
            and j.metadata.get("airflow_run_id") == run_id]  # fmt: skip
    return sorted(jobs, key=lambda j: j.submission_id or "")


def _wait_job(dag_id: str, run_id: str, statuses: set[RayJobStatus], timeout: float = 300) -> RayJobInfo:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [j for j in _jobs(dag_id, run_id) if j.status in statuses]
        if jobs:
            return jobs[-1]
        time.sleep(0.5)
    raise AssertionError(f"no Ray job of {dag_id} {run_id} reached {statuses}: {_jobs(dag_id, run_id)}")


def _serve_apps() -> dict:
    """The Serve applications on the session's head, by name."""
    return RayHook().get_serve_state().apps
