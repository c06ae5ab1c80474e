"""The plugin's FastAPI app, mounted by the Airflow API server under ``/raydatallm``.

Every route needs a signed-in Airflow user (the UI's session cookie or a bearer token) and
answers only with DAGs the auth manager lets that user read; a task's error rows (they hold
row data) only to users who may read the task's XCom. The Ray connection is the task's own
(its DAG's definition), never one named in XCom (see ``data``).
"""

from __future__ import annotations

import logging
from datetime import datetime
from importlib import resources
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, Response

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep
from airflow_provider_raydatallm.plugins import data

log = logging.getLogger(__name__)
STATIC = resources.files("airflow_provider_raydatallm.plugins") / "static"
ASSETS = {"style.css": "text/css", "runs.js": "text/javascript", "ray_job.js": "text/javascript", "common.js": "text/javascript"}
RUNNING = {"PENDING", "RUNNING"}


def _page(name: str) -> HTMLResponse:
    return HTMLResponse((STATIC / name).read_text(), headers={"Cache-Control": "no-store"})


def _may_read(user: Any, dag_id: str, entity: DagAccessEntity = DagAccessEntity.TASK_INSTANCE) -> bool:
    return get_auth_manager().is_authorized_dag(method="GET", access_entity=entity, details=DagDetails(id=dag_id), user=user)


def _map_index(value: str) -> int:
    """The UI fills {MAP_INDEX} only for mapped tasks; anything else means unmapped."""
    try:
        return int(value)
    except ValueError:
        return -1


def create_app() -> FastAPI:
    app = FastAPI(title="Ray Data LLM", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/runs", response_class=HTMLResponse)
    def runs_page(user: GetUserDep) -> HTMLResponse:
        return _page("runs.html")

    @app.get("/ray-job", response_class=HTMLResponse)
    def ray_job_page(user: GetUserDep) -> HTMLResponse:
        return _page("ray_job.html")

    @app.get("/static/{name}")
    def static(name: str, user: GetUserDep) -> Response:
        if name not in ASSETS:
            raise HTTPException(404, f"no asset {name!r}")
        return Response((STATIC / name).read_text(), media_type=ASSETS[name], headers={"Cache-Control": "no-store"})

    @app.get("/api/runs")
    def runs(
        user: GetUserDep,
        session: SessionDep,
        dag_id: Annotated[str | None, Query()] = None,
        state: Annotated[str | None, Query()] = None,
        since: Annotated[datetime | None, Query()] = None,
        until: Annotated[datetime | None, Query()] = None,
    ) -> dict[str, Any]:
        """Batch task instances of the DAGs the user may read, and per DAG a series by run."""
        readable = get_auth_manager().get_authorized_dag_ids(user=user, method="GET", session=session)
        rows = data.batch_runs(session, readable, dag_id=dag_id or None, state=state or None, since=since, until=until)
        data.running_progress(session, rows)
        return {
            "runs": rows,
            "series": data.run_series(rows),
            "dag_ids": data.batch_dag_ids(session, readable),
            "limit": data.MAX_ROWS,
        }

    @app.get("/api/ray-job")
    def ray_job(
        user: GetUserDep,
        session: SessionDep,
        dag_id: str,
        run_id: str,
        task_id: str,
        map_index: str = "-1",
    ) -> dict[str, Any]:
        """The task's Ray job: live status and stage progress while it runs, then its result."""
        if not _may_read(user, dag_id):
            raise HTTPException(403, f"you may not read task instances of DAG {dag_id!r}")
        ti = data.task_instance(session, dag_id, run_id, task_id, _map_index(map_index))
        if ti is None:
            raise HTTPException(404, f"no task instance {dag_id}.{task_id} in run {run_id}")
        record = ti.pop("record")
        record = record if isinstance(record, dict) else None
        conn_id = ti.pop("ray_conn_id")
        errors_hidden = False
        may_read_rows = _may_read(user, dag_id, DagAccessEntity.XCOM)
        if isinstance(ti["result"], dict) and not may_read_rows:
            # Error rows hold the rows' data: only for those who may read the task's XCom.
            errors_hidden = bool(ti["result"].get("first_errors"))
            ti["result"] = {k: v for k, v in ti["result"].items() if k != "first_errors"}
        answer: dict[str, Any] = {"task_instance": ti, "job": None, "ray_error": None, "errors_hidden": errors_hidden}
        if record and isinstance(record.get("submission_id"), str) and record["submission_id"]:
            answer["job"] = {"submission_id": record["submission_id"], "dashboard_url": data.safe_link(record.get("dashboard_url"))}
            if conn_id is None:
                answer["ray_error"] = "the task's Ray connection is not known from its DAG's definition"
            else:
                try:
                    answer["job"].update(data.live_job(conn_id, record["submission_id"], ti))
                    if answer["job"].get("message") and answer["job"].get("status") != "SUCCEEDED" and not may_read_rows:
                        # A failed job's message is the end of its log: the failed rows are in it.
                        answer["job"]["message"] = "(hidden: a job's message can hold row data; it needs read access to the task's XCom)"
                        answer["errors_hidden"] = True
                except data.NotThisTasksJob as err:
                    log.warning("task %s.%s in %s: %s", dag_id, task_id, run_id, err)
                    answer["job"] = None
                    answer["ray_error"] = f"{err}: not shown"
                except Exception as err:  # the page still shows what Airflow knows
                    log.warning("Ray job %s: %s", record["submission_id"], type(err).__name__)
                    answer["ray_error"] = f"{type(err).__name__}: {err}"
        answer["live"] = bool(answer["job"] and answer["job"].get("status") in RUNNING)
        return answer

    return app
