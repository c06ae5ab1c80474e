"""What the plugin's pages show, read on the API server: task instances of the batch operator
and their XCom from the metadata DB, and (for a running job) the Ray dashboard's job, its
Ray Data stages and the job's own progress line, fetched here with the connection's token
so no browser needs it.

Nothing read from XCom decides where the server connects or what it links to: XCom can be
written by anyone allowed to edit a DAG's XCom. The Ray connection is the task's own
``ray_conn_id`` from the DAG's serialized definition (its rendered value when templated);
a job is shown only when its metadata names the task instance asking; links are http(s)
only."""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import defaultdict
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from sqlalchemy import and_, select

from airflow.models.dagrun import DagRun
from airflow.models.taskinstance import TaskInstance as TI
from airflow.models.xcom import XComModel
from airflow_provider_raydatallm.job import progress as job_progress
from airflow_provider_raydatallm.links.ray import XCOM_JOB_KEY, dashboard_url

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)
OPERATORS = ("RayLLMBatchOperator",)
DEFAULT_CONN_ID = "ray_default"  # RayHook.default_conn_name, without importing the hook here
# How far back in the job's log the latest progress line is looked for (the job logs one
# every 30 s by default; a chatty log between two of them is cut here, not the answer).
PROGRESS_LOG_LINES = 1000
# A job's progress line changes every 30 s by default: pages polling every few seconds, and
# several people watching, share one read of the log per job for this long.
PROGRESS_CACHE_SECONDS = 10.0
RAY_TIMEOUT = 5.0  # seconds per call to the dashboard: a slow head leaves the page without live figures
_progress_cache: dict[tuple[str, str], tuple[float, dict[str, Any] | None]] = {}
_cache_lock = threading.Lock()
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")
MAX_ROWS = 1000
METRIC_KEYS = (
    "rows_in", "rows_out", "error_rows", "input_tokens", "output_tokens", "rows_per_second",
    "output_tokens_per_second", "wall_seconds", "startup_seconds", "inference_seconds",
)  # fmt: skip


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def safe_link(url: Any) -> str | None:
    """``url`` when it is an absolute http(s) URL, else None (a ``javascript:`` or ``data:``
    URL written into XCom never becomes a link)."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    return url.strip() if parts.scheme.lower() in ("http", "https") and parts.netloc else None


def model_label(model: Any) -> str | None:
    """The model as a person reads it: ``http:http://host:8000/v1/chat/completions`` (an
    HTTP processor's endpoint) becomes ``host:8000``; a ``name@http://host/...`` the name and
    the host; anything else as it is."""
    if not isinstance(model, str) or not model:
        return None
    name, _, url = model.rpartition("@") if "@http" in model else ("", "", model)
    if url.startswith("http:http") or url.startswith("http:") and "://" in url[5:]:
        url = url[5:]
    if "://" in url:
        parts = urlsplit(url)
        host = (f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname) or "endpoint"  # never user:key@
        return f"{name} @ {host}" if name else host
    return model

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
                "model": model_label(result.get("model") or record.get("model")),
                **{k: metrics.get(k) for k in METRIC_KEYS},
                "phases": phases_shown(metrics.get("phases")),
                "output_uri": output_shown(result, record),
                "submission_id": result.get("submission_id") or record.get("submission_id"),
                "dashboard_url": safe_link(record.get("dashboard_url")),
                "ti_path": ti_path(ti.dag_id, ti.run_id, ti.task_id, ti.map_index),
                "progress": None,  # running tasks: the job's latest progress (running_progress)
            }
        )
    return rows


def phases_shown(phases: Any) -> dict[str, float] | None:
    """A run's phases as the page draws them: names and seconds only (XCom is user land)."""
    if not isinstance(phases, dict):
        return None
    shown: dict[str, float] = {}
    for key, value in list(phases.items())[:20]:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        try:
            seconds = float(value)
        except (OverflowError, ValueError):
            continue
        if math.isfinite(seconds) and 0 <= seconds < 10**9:
            shown[str(key)[:40]] = round(seconds, 3)
    return shown or None


def output_shown(result: dict[str, Any], record: dict[str, Any]) -> str | None:
    """Where the rows went, as the runs page shows it: a table output's table, slice and
    snapshot (or version) once committed, the table and slice while the task runs; else the
    output directory."""
    from airflow_provider_raydatallm.operators._report import committed_table

    table = result.get("table")
    if isinstance(table, dict):
        return committed_table(table)
    if isinstance(record.get("output_table"), str):
        return record["output_table"]
    return result.get("output_uri") or record.get("output_uri")


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
    result = xcoms.get((*key, "return_value"))
    if isinstance(result, dict):
        result = {**result, "model": model_label(result.get("model"))}
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
        "result": result,
        "record": xcoms.get((*key, XCOM_JOB_KEY)),
        "ti_path": ti_path(dag_id, run_id, task_id, map_index),
        "ray_conn_id": ray_conn_id_of(session, ti) if ti.operator in OPERATORS else None,
    }


MAPPED = "{{ mapped over }}"  # a ray_conn_id given per mapped task instance: read from its rendered fields


def defined_ray_conn_id(task: Any) -> str:
    """``ray_conn_id`` of a serialized task as its DAG file wrote it (``MAPPED`` when it is
    mapped over or may come from ``expand_kwargs``; the operator's default when not given)."""
    partial = getattr(task, "partial_kwargs", None)
    if isinstance(partial, dict):  # a mapped task: its arguments are partial(...)'s, or mapped over
        expand = getattr(task, "_get_specified_expand_input", None)
        mapped = getattr(expand(), "value", None) if callable(expand) else None
        # expand(ray_conn_id=...) maps over it; expand_kwargs(...) may set it per instance.
        per_instance = not isinstance(mapped, dict) or "ray_conn_id" in mapped
        defined = MAPPED if per_instance else partial.get("ray_conn_id")
    else:
        defined = getattr(task, "ray_conn_id", None)
    return defined if isinstance(defined, str) and defined else DEFAULT_CONN_ID


def ray_conn_id_of(session: Session, ti: Any) -> str | None:
    """The connection the task instance used: its rendered ``ray_conn_id`` (the task's
    rendered fields, written by the task itself through the execution API, never by the
    REST API), else the task's definition: the serialized DAG of the version the task
    instance ran (the latest when it has none; a mapped task's ``partial`` arguments). None
    when neither says (a value per mapped instance with no rendered fields yet, a template).
    Never XCom. Errors reading the definition are None too (logged): one broken DAG does
    not break the page."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields

    try:
        rendered = (RenderedTaskInstanceFields.get_templated_fields(ti, session=session) or {}).get("ray_conn_id")
        if isinstance(rendered, str) and rendered and "{{" not in rendered and "{%" not in rendered:
            return rendered
        conn_id = _defined_for(session, ti)
    except Exception as err:  # noqa: BLE001 (a row without live data; the page stands)
        log.warning("no Ray connection known for %s.%s: %s: %s", ti.dag_id, ti.task_id, type(err).__name__, err)
        return None
    if conn_id is None or "{{" in conn_id or "{%" in conn_id:
        return None  # rendered per run or per mapped instance, and not rendered yet
    return conn_id


def _defined_for(session: Session, ti: Any) -> str | None:
    from airflow.models.dag_version import DagVersion
    from airflow.models.serialized_dag import SerializedDagModel

    dag = None
    version = session.get(DagVersion, ti.dag_version_id) if getattr(ti, "dag_version_id", None) else None
    if version is not None and version.serialized_dag is not None:
        dag = version.serialized_dag.dag
    if dag is None:
        dag = SerializedDagModel.get_dag(ti.dag_id, session=session)
    if dag is None or not dag.has_task(ti.task_id):
        return None
    return defined_ray_conn_id(dag.get_task(ti.task_id))


class NotThisTasksJob(LookupError):
    """The Ray job named in a task's XCom was not submitted for that task instance."""


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


def _belongs_to(job: dict[str, Any], ti: dict[str, Any]) -> bool:
    """The job's metadata (set by the operator at submission) names this task instance."""
    meta = job.get("metadata") or {}
    return (
        meta.get("airflow_dag_id") == ti["dag_id"] and meta.get("airflow_run_id") == ti["run_id"]
        and meta.get("airflow_task_id") == ti["task_id"] and str(meta.get("airflow_map_index")) == str(ti["map_index"])
    )  # fmt: skip


def latest_progress(log_text: str, now: datetime | None = None) -> dict[str, Any] | None:
    """The figures of the job's last progress line (``job/progress.py``), with ``logged_at``
    (the line's time: the job logs in UTC) and ``age_seconds`` when the line carries its time."""
    for line in reversed(log_text.splitlines()):
        if job_progress.PREFIX not in line:
            continue
        figures = job_progress.parse(line)
        if figures is None:
            continue
        stamp = _LOG_TIME.match(line.strip())
        if stamp:
            logged = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
            figures["logged_at"] = logged.isoformat()
            figures["age_seconds"] = max(0, int(((now or datetime.now(timezone.utc)) - logged).total_seconds()))
        return figures
    return None


def _client(ray_conn_id: str) -> tuple[Any, Any]:
    """An httpx client for the connection's dashboard, and the connection's config."""
    import httpx

    from airflow.models.connection import Connection
    from airflow_provider_raydatallm.hooks._connection import config_from_connection

    conn = Connection.get_connection_from_secrets(ray_conn_id)
    config = config_from_connection(conn.host, conn.port, conn.schema, conn.password, conn.extra_dejson)
    return httpx.Client(**config.client_kwargs(max_timeout=RAY_TIMEOUT)), config


def _job_info(client: Any, ray_conn_id: str, submission_id: str, ti: dict[str, Any]) -> dict[str, Any]:
    info = client.get(f"/api/jobs/{quote(submission_id, safe='')}")
    info.raise_for_status()
    job = info.json()
    if not _belongs_to(job, ti):
        raise NotThisTasksJob(f"Ray job {submission_id} on {ray_conn_id!r} was not submitted for this task instance")
    return job


def _progress_from_log(client: Any, job: dict[str, Any], conn_id: str = "") -> dict[str, Any] | None:
    """The job's latest progress line, from the last PROGRESS_LOG_LINES lines of its driver
    log (the dashboard's log API wants the driver's node); None when there is none yet.
    Read at most once per PROGRESS_CACHE_SECONDS per job, whoever asks."""
    import time

    submission_id, node_id = job.get("submission_id"), job.get("driver_node_id")
    if not submission_id or not node_id:
        return None
    key, now = (conn_id, str(submission_id)), time.monotonic()
    with _cache_lock:
        for old in [k for k, (at, _) in _progress_cache.items() if now - at > PROGRESS_CACHE_SECONDS]:
            del _progress_cache[old]
        if key in _progress_cache:
            return _progress_cache[key][1]
    figures = _read_progress(client, str(submission_id), str(node_id))
    with _cache_lock:
        _progress_cache[key] = (now, figures)
    return figures


def _read_progress(client: Any, submission_id: str, node_id: str) -> dict[str, Any] | None:
    import httpx

    params = {"submission_id": submission_id, "node_id": node_id, "lines": PROGRESS_LOG_LINES, "filter_ansi_code": "true"}
    try:
        logs = client.get("/api/v0/logs/file", params=params)
    except httpx.HTTPError as err:  # the rest of the answer stands without it
        log.warning("Ray job %s: no progress from its log (%s)", submission_id, type(err).__name__)
        return None
    if logs.status_code != 200:
        log.warning("Ray job %s: the dashboard's log API answered %s", submission_id, logs.status_code)
        return None
    return latest_progress(logs.text)


def running_progress(session: Session, rows: list[dict[str, Any]], limit: int = 10) -> None:
    """Adds ``progress`` (the job's latest progress line, :func:`latest_progress`) to the
    rows of running or deferred batch tasks, at most ``limit`` of them, asking each task's
    own Ray connection about the job its XCom names (and only if the job is that task's)."""
    from concurrent.futures import ThreadPoolExecutor

    wanted = []
    for row in rows:
        if row["state"] in ("running", "deferred") and row.get("submission_id") and len(wanted) < limit:
            ti = session.scalar(select(TI).where(TI.dag_id == row["dag_id"], TI.run_id == row["run_id"],
                                                 TI.task_id == row["task_id"], TI.map_index == row["map_index"]))  # fmt: skip
            conn_id = ray_conn_id_of(session, ti) if ti is not None else None
            if conn_id:
                wanted.append((row, conn_id))

    def fetch(item: tuple[dict[str, Any], str]) -> None:
        row, conn_id = item
        try:
            client, _ = _client(conn_id)
            with client:
                job = _job_info(client, conn_id, row["submission_id"], row)
                row["progress"] = _progress_from_log(client, job, conn_id)
        except Exception as err:  # noqa: BLE001 (a row without progress; the page stands)
            log.warning("no progress for %s.%s in %s: %s", row["dag_id"], row["task_id"], row["run_id"], type(err).__name__)

    if wanted:
        with ThreadPoolExecutor(max_workers=min(4, len(wanted))) as pool:
            list(pool.map(fetch, wanted))


def live_job(ray_conn_id: str, submission_id: str, ti: dict[str, Any]) -> dict[str, Any]:
    """The job's status, its latest progress and, per Ray Data dataset of the job, each
    stage's progress. Raises NotThisTasksJob when the job's metadata names another task
    instance than ``ti`` (dag_id, run_id, task_id, map_index)."""
    client, config = _client(ray_conn_id)
    with client:
        job = _job_info(client, ray_conn_id, submission_id, ti)
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
        figures = _progress_from_log(client, job, ray_conn_id)
    return {
        "status": job.get("status"),
        "submission_id": job.get("submission_id") or submission_id,
        "job_id": job.get("job_id"),
        "message": job.get("message"),
        "start_time": job.get("start_time"),
        "end_time": job.get("end_time"),
        "dashboard_url": safe_link(dashboard_url(config.link_base_url, submission_id)),
        "progress": figures,
        "datasets": datasets,
    }
