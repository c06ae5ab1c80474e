"""`make demo`: the seed questions answered on the local Ray head by a real Airflow DAG run.

Runs in .venv (the Airflow side): migrates a SQLite Airflow DB under .cache/, points the
`ray_default` connection at the head `make ray-up` started, runs the example DAG
`example_common_questions` with dag.test() (its creative-prompts task is marked success to
keep the demo short), then prints the answers and the task's XCom metrics.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAG_ID = "example_common_questions"


def _environment() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import local_ray

    home = ROOT / ".cache" / "airflow-home"
    home.mkdir(parents=True, exist_ok=True)
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = json.dumps(
        [{"name": "raydllm_examples", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
          "kwargs": {"path": str(ROOT / "example_dags")}}]
    )  # fmt: skip
    os.environ["AIRFLOW_CONN_RAY_DEFAULT"] = json.dumps(local_ray.connection(local_ray.PROFILES["dev"]))
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)


def main() -> int:
    _environment()
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    bag = DagBag(dag_folder=str(ROOT / "example_dags" / f"{DAG_ID}.py"))
    dag = bag.dags[DAG_ID]
    output_root = str(ROOT / ".cache" / "demo")
    started = time.monotonic()
    print(f"running {DAG_ID} on the local Ray head (full task log: .cache/demo/dag_test.log) ...", flush=True)
    log_path = ROOT / ".cache" / "demo" / "dag_test.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        saved = os.dup(1), os.dup(2)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            run = dag.test(
                run_conf={"output_root": output_root},
                logical_date=dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0),
                mark_success_pattern="write_prompts",
            )
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    print(f"dag run {run.state} in {time.monotonic() - started:.0f}s: {states}")
    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(run_id=run.run_id, key="return_value", task_ids="answer_questions", dag_ids=DAG_ID)
        ).first()
        result = XComModel.deserialize_value(row) if row is not None else None
    if states.get("answer_questions") != "success" or not result:
        print(f"the questions task did not succeed; see {log_path}")
        return 1
    import pyarrow.parquet as pq

    print()
    for answer in pq.read_table(result["output_uri"]).to_pylist():
        print(f"Q: {answer['item']}\nA: {answer['answer'].strip()}\n")
    print("XCom of answer_questions:")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
