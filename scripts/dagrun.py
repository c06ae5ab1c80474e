"""Run a DAG file with dag.test() against a local Ray head, from a script (make demo, benchmarks).

``environment(profile, home, dags)`` must come before anything imports Airflow: it points
AIRFLOW_HOME at a SQLite home of its own, ``ray_default`` at the head, and migrates the DB.
``run(...)`` runs one DAG with its (long) log in a file and returns the run, its wall
seconds, task states and the return values of every task (a list per task, by map index).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import local_ray


def environment(profile: local_ray.Profile, home: Path, *dag_folders: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = json.dumps(
        [{"name": f"raydllm_{folder.parent.name}_{folder.name}", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
          "kwargs": {"path": str(folder)}} for folder in dag_folders]
    )  # fmt: skip
    os.environ["AIRFLOW_CONN_RAY_DEFAULT"] = json.dumps(local_ray.connection(profile))
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)


def run(dag_file: Path, dag_id: str, conf: dict[str, Any], log_path: Path, logical_date: dt.datetime | None = None,
        **test_kwargs: Any) -> tuple[Any, float, dict[str, str], dict[str, list]]:  # fmt: skip
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    if str(dag_file.parent) not in sys.path:  # as Airflow puts a DAG bundle's folder on sys.path
        sys.path.append(str(dag_file.parent))
    dag = DagBag(dag_folder=str(dag_file)).dags[dag_id]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log_path, "w") as log:
        saved = os.dup(1), os.dup(2)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            when = logical_date or dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
            dag_run = dag.test(run_conf=conf, logical_date=when, **test_kwargs)
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    seconds = time.monotonic() - started
    states = {}
    for ti in dag_run.get_task_instances():
        states[ti.task_id] = str(ti.state) if ti.task_id not in states or str(ti.state) != "success" else states[ti.task_id]
    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=dag_run.run_id, key="return_value", dag_ids=dag_id)).all()
        xcoms: dict[str, list] = {}
        for row in sorted(rows, key=lambda r: r.map_index):
            xcoms.setdefault(row.task_id, []).append(XComModel.deserialize_value(row))
    return dag_run, seconds, states, xcoms


def task_instances(dag_run: Any) -> list[Any]:
    return list(dag_run.get_task_instances())
