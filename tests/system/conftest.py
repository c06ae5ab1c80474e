"""System tests: whole DAGs through Airflow's dag.test() on SQLite, against the session's
real Ray head, with vLLM on CPU and the default model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def airflow_db() -> None:
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)


class DagRunner:
    """Runs a DAG with dag.test() and reads back task states and XComs from the metadata DB."""

    def __init__(self, dag_file: Path):
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(dag_file))
        assert not bag.import_errors, bag.import_errors
        self.dags = bag.dags

    def dag(self, dag_id: str):
        return self.dags[dag_id]

    def run(self, dag_id: str, conf: dict[str, Any], logical_date: dt.datetime | None = None):
        dag = self.dag(dag_id)
        return dag.test(run_conf=conf, logical_date=logical_date or dt.datetime(2026, 11, 22, tzinfo=dt.timezone.utc))

    @staticmethod
    def states(dag_run) -> dict[str, str]:
        return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}

    @staticmethod
    def xcom(dag_run, task_id: str, key: str = "return_value") -> Any:
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as session:
            row = session.scalars(
                XComModel.get_many(run_id=dag_run.run_id, key=key, task_ids=task_id, dag_ids=dag_run.dag_id)
            ).first()
            return None if row is None else XComModel.deserialize_value(row)


@pytest.fixture(scope="session")
def test_dags(airflow_db, ray_cluster, echo_endpoint) -> DagRunner:
    import os

    from tests.conftest import ECHO_KEY

    os.environ["AIRFLOW_CONN_RAY_DEFAULT"] = json.dumps(ray_cluster)
    os.environ["AIRFLOW_CONN_ECHO"] = json.dumps({"conn_type": "http", "host": echo_endpoint, "password": ECHO_KEY})
    # Airflow puts its DAGs folder on sys.path, so DAG files import the modules beside them.
    sys.path.insert(0, str(ROOT / "tests" / "dags"))
    return DagRunner(ROOT / "tests" / "dags" / "batch_dags.py")
