"""What the plugin's pages show, read on the API server: task instances of the batch operator
and their XCom from the metadata DB, and (for a running job) the Ray dashboard's job and
Ray Data progress, fetched here with the connection's token so no browser needs it."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sqlalchemy import and_, select

from airflow.models.dagrun import DagRun
from airflow.models.taskinstance import TaskInstance as TI
from airflow.models.xcom import XComModel
from airflow_provider_raydatallm.links.ray import XCOM_JOB_KEY

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

OPERATORS = ("RayLLMBatchOperator",)
MAX_ROWS = 1000
METRIC_KEYS = (
    "rows_in", "rows_out", "error_rows", "input_tokens", "output_tokens", "rows_per_second",
    "output_tokens_per_second", "wall_seconds", "startup_seconds", "inference_seconds",
)  # fmt: skip


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def ti_path(dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    """The task instance's page in the Airflow UI (relative to the UI's base)."""
    path = f"dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}/tasks/{quote(task_id, safe='')}"
    return f"{path}/mapped/{map_index}" if map_index >= 0 else path


def _xcoms(session: Session, tis: list[Any]) -> dict[tuple[str, str, str, int, str], Any]:
    if not tis:
        return {}
    keys = {(t.dag_id, t.run_id, t.task_id, t.map_index) for t in tis}
    stmt = select(XComModel).where(
        XComModel.key.in_(["return_value", XCOM_JOB_KEY]),
        XComModel.dag_id.in_({k[0] for k in keys}),
        XComModel.run_id.in_({k[1] for k in keys}),
        XComModel.task_id.in_({k[2] for k in keys}),
    )
    found = {}
    for x in session.scalars(stmt):
        if (x.dag_id, x.run_id, x.task_id, x.map_index) in keys:
            found[(x.dag_id, x.run_id, x.task_id, x.map_index, x.key)] = XComModel.deserialize_value(x)
    return found


def batch_runs(
    session: Session,
    dag_ids: set[str],
    *,
    dag_id: str | None = None,
    state: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[dict[str, Any]]:
    """One row per batch task instance the caller may read, newest first."""
    readable = dag_ids & {dag_id} if dag_id else dag_ids
    if not readable:
        return []
    clauses = [TI.operator.in_(OPERATORS), TI.dag_id.in_(readable)]
    if state:
        clauses.append(TI.state.is_(None) if state == "none" else TI.state == state)
    if since:
        clauses.append(DagRun.run_after >= since)
    if until:
        clauses.append(DagRun.run_after <= until)
    stmt = (
        select(TI, DagRun.run_after)
        .join(DagRun, and_(DagRun.dag_id == TI.dag_id, DagRun.run_id == TI.run_id))
        .where(*clauses)
        .order_by(DagRun.run_after.desc(), TI.task_id, TI.map_index)
        .limit(MAX_ROWS)
    )
    found = session.execute(stmt).all()
    xcoms = _xcoms(session, [ti for ti, _ in found])
    rows = []
    for ti, run_after in found:
        key = (ti.dag_id, ti.run_id, ti.task_id, ti.map_index)
        result = xcoms.get((*key, "return_value")) or {}
        record = xcoms.get((*key, XCOM_JOB_KEY)) or {}
        result = result if isinstance(result, dict) else {}
        record = record if isinstance(record, dict) else {}
        metrics = result.get("metrics") or {}
        rows.append(
            {
                "dag_id": ti.dag_id,
                "run_id": ti.run_id,
                "task_id": ti.task_id,
                "map_index": ti.map_index,
                "state": ti.state,
                "try_number": ti.try_number,
                "run_after": _iso(run_after),
                "start_date": _iso(ti.start_date),
                "end_date": _iso(ti.end_date),
                "model": result.get("model") or record.get("model"),
                **{k: metrics.get(k) for k in METRIC_KEYS},
                "output_uri": result.get("output_uri") or record.get("output_uri"),
                "submission_id": result.get("submission_id") or record.get("submission_id"),
                "dashboard_url": record.get("dashboard_url"),
                "ti_path": ti_path(ti.dag_id, ti.run_id, ti.task_id, ti.map_index),
            }
        )
    return rows


def batch_dag_ids(session: Session, dag_ids: set[str]) -> list[str]:
    """The readable DAGs that have batch task instances (for the DAG filter)."""
    if not dag_ids:
        return []
    stmt = select(TI.dag_id).where(TI.operator.in_(OPERATORS), TI.dag_id.in_(dag_ids)).distinct()
    return sorted(session.scalars(stmt))


def run_series(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per DAG, one point per run (oldest first) from its finished batch tasks: rows/s over
    the span from the first task's start to the last one's end, and the error rate."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["state"] == "success" and row["rows_in"] is not None:
            runs[(row["dag_id"], row["run_id"])].append(row)
    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (dag_id, run_id), tasks in runs.items():
        rows_in = sum(t["rows_in"] for t in tasks)
        errors = sum(t["error_rows"] or 0 for t in tasks)
        starts = [datetime.fromisoformat(t["start_date"]) for t in tasks if t["start_date"]]
        ends = [datetime.fromisoformat(t["end_date"]) for t in tasks if t["end_date"]]
        span = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
        series[dag_id].append(
            {
                "run_id": run_id,
                "run_after": tasks[0]["run_after"],
                "tasks": len(tasks),
                "rows_in": rows_in,
                "rows_per_second": round(rows_in / span, 4) if span > 0 else None,
                "error_rate": round(errors / rows_in, 4) if rows_in else 0.0,
            }
        )
    for points in series.values():
        points.sort(key=lambda p: p["run_after"] or "")
    return dict(series)


def task_instance(session: Session, dag_id: str, run_id: str, task_id: str, map_index: int) -> dict[str, Any] | None:
    ti = session.scalar(
        select(TI).where(TI.dag_id == dag_id, TI.run_id == run_id, TI.task_id == task_id, TI.map_index == map_index)
    )
    if ti is None:
        return None
    xcoms = _xcoms(session, [ti])
    key = (dag_id, run_id, task_id, map_index)
    return {
        "dag_id": dag_id,
        "run_id": run_id,
        "task_id": task_id,
        "map_index": map_index,
        "state": ti.state,
        "try_number": ti.try_number,
        "operator": ti.operator,
        "is_batch": ti.operator in OPERATORS,
        "start_date": _iso(ti.start_date),
        "end_date": _iso(ti.end_date),
        "result": xcoms.get((*key, "return_value")),
        "record": xcoms.get((*key, XCOM_JOB_KEY)),
        "ti_path": ti_path(dag_id, run_id, task_id, map_index),
    }


def _stage(op: dict[str, Any]) -> dict[str, Any]:
    rows_done = (op.get("ray_data_output_rows") or {}).get("max") or 0
    return {
        "operator": op.get("operator"),
        "name": op.get("name") or op.get("operator"),
        "state": op.get("state"),
        "blocks_done": op.get("progress") or 0,
        "blocks_total": op.get("total") or 0,
        "rows_done": int(float(rows_done)) if rows_done else None,
        "rows_total": op.get("total_rows") or 0,
        "queued_blocks": op.get("queued_blocks") or 0,
    }


def live_job(ray_conn_id: str, submission_id: str) -> dict[str, Any]:
    """The job's status and, per Ray Data dataset of the job, each stage's progress."""
    import httpx

    from airflow.models.connection import Connection
    from airflow_provider_raydatallm.hooks._connection import config_from_connection

    conn = Connection.get_connection_from_secrets(ray_conn_id)
    config = config_from_connection(conn.host, conn.port, conn.schema, conn.password, conn.extra_dejson)
    with httpx.Client(**config.client_kwargs(max_timeout=10.0)) as client:
        info = client.get(f"/api/jobs/{quote(submission_id, safe='')}")
        info.raise_for_status()
        job = info.json()
        datasets: list[dict[str, Any]] = []
        if job.get("job_id"):
            data = client.get(f"/api/data/datasets/{quote(job['job_id'], safe='')}")
            if data.status_code == 200:
                for ds in data.json().get("datasets", []):
                    datasets.append(
                        {
                            "dataset": ds.get("dataset"),
                            "state": ds.get("state"),
                            "start_time": ds.get("start_time"),
                            "end_time": ds.get("end_time"),
                            "stages": [_stage(op) for op in ds.get("operators", [])],
                        }
                    )
    return {
        "status": job.get("status"),
        "submission_id": job.get("submission_id") or submission_id,
        "job_id": job.get("job_id"),
        "message": job.get("message"),
        "start_time": job.get("start_time"),
        "end_time": job.get("end_time"),
        "datasets": datasets,
    }
