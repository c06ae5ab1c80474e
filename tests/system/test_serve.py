"""Warm engines for real: Ray Serve LLM applications deployed from Airflow on the session's
cluster (vLLM on CPU, the default model), batch tasks on them through
ServeDeploymentProcessorConfig and through the app's OpenAI route, and their teardown."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import subprocess
import textwrap
import threading
import time

import pyarrow.parquet as pq
import pytest

from demo_helpers import social_posts, write_jsonl

from airflow_provider_raydatallm.configs import DEFAULT_MODEL_ID
from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobStatus
from airflow_provider_raydatallm.operators.serve import RayServeLLMDeleteOperator
from tests.system.conftest import ROOT, DagRunner

pytestmark = pytest.mark.system

LABELS = {"positive", "negative", "neutral"}


@pytest.fixture(scope="module")
def runner(airflow_db, ray_cluster) -> DagRunner:
    import os

    os.environ["AIRFLOW_CONN_RAY_DEFAULT"] = json.dumps(ray_cluster)
    return DagRunner(ROOT / "tests" / "dags" / "serve_dags.py")


@pytest.fixture(scope="module")
def examples(runner) -> DagRunner:
    return DagRunner(ROOT / "example_dags" / "example_warm_sentiment.py")


def _apps() -> dict:
    return RayHook().get_serve_state().apps


def test_deploy_is_idempotent_answers_the_seeds_openai_client_and_http_batches_and_the_warm_example_shares_it(
    runner, examples, tmp_path
):
    """One app for every Serve way of this module (an app's engine start is the slow part):
    two runs of one DAG deploy it, the seed's OpenAI client and an HTTP batch use it, the
    first run tears down mid-batch, the warm sentiment example (another DAG) deploys the same
    app, classifies on it and tears down while the second run still holds it; the second
    run's teardown removes it."""
    app = "warm-shared"
    first = runner.run("serve_deploy", {"app_name": app})
    assert runner.states(first) == {"deploy_llm": "success"}
    assert runner.xcom(first, "deploy_llm", key="ray_serve_app")["changed"] is True
    deployed = runner.xcom(first, "deploy_llm")
    assert deployed["base_url"] == f"http://127.0.0.1:8410/{app}/v1" and _apps()[app].status == "RUNNING"

    # Another run deploys the same app (another DAG sharing the engine, or an overlapping
    # run): the same config, nothing is sent; each run holds its own lease on the app.
    again = runner.run("serve_deploy", {"app_name": app}, logical_date=dt.datetime(2026, 11, 23, tzinfo=dt.timezone.utc))
    leases = [runner.xcom(run, "deploy_llm", key="ray_serve_app")["lease"] for run in (first, again)]
    assert runner.xcom(again, "deploy_llm", key="ray_serve_app") == {
        "app_name": app, "config_hash": deployed["config_hash"], "created": False, "changed": False, "lease": leases[1],
    }  # fmt: skip
    assert leases[0] != leases[1] and runner.xcom(again, "deploy_llm")["lease"] == leases[1]

    # The seed's OpenAI-client query (section 5.3), streaming, from the cluster's environment.
    seed = textwrap.dedent(f"""
        from openai import OpenAI
        client = OpenAI(base_url="{deployed['base_url']}", api_key="fake-key")
        response = client.chat.completions.create(
            model="{DEFAULT_MODEL_ID}", messages=[{{"role": "user", "content": "Hello!"}}], stream=True, max_tokens=16)
        for chunk in response:
            if chunk.choices[0].delta.content is not None:
                print(chunk.choices[0].delta.content, end="", flush=True)
    """)
    answer = subprocess.run([str(ROOT / ".venv-ray" / "bin" / "python"), "-c", seed], capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0, answer.stderr[-2000:]
    assert answer.stdout.strip(), "the deployed app streamed no text"

    # The first run tears down while the second run's batch is running on the app: the app
    # stays (the second run holds a lease) and the batch completes on it.
    posts = write_jsonl(tmp_path / "posts.jsonl", social_posts("2026-11-23", 8))
    teardown: dict = {}

    def first_run_tears_down_mid_batch() -> None:
        hook, deadline = RayHook(), time.monotonic() + 180
        while time.monotonic() < deadline and not any(
            j.status is RayJobStatus.RUNNING and (j.metadata or {}).get("airflow_dag_id") == "serve_http_batch"
            for j in hook.list_jobs()
        ):  # fmt: skip
            time.sleep(0.5)
        teardown["running"] = time.monotonic() < deadline
        teardown["result"] = RayServeLLMDeleteOperator(task_id="delete_llm", app_name=app, lease=leases[0]).execute({})
        teardown["app_status"] = _apps()[app].status if app in _apps() else None

    thread = threading.Thread(target=first_run_tears_down_mid_batch)
    thread.start()
    batch = runner.run("serve_http_batch", {"url": deployed["chat_completions_url"], "input": str(posts),
                                            "output": str(tmp_path / "out")})  # fmt: skip
    thread.join(60)
    assert teardown.get("running"), f"the batch job never ran, or the teardown did not end: {teardown}"
    result = teardown["result"]
    assert (result["app_name"], result["removed"]) == (app, False) and len(result["kept_for"]) == 1, result
    assert result["kept_for"][0].endswith(f":serve_deploy/{again.run_id}")  # <namespace>:<dag>/<run>
    assert teardown["app_status"] == "RUNNING"
    assert runner.states(batch) == {"classify": "success"}
    result = runner.xcom(batch, "classify")
    table = pq.read_table(tmp_path / "out")
    assert table.num_rows == 8 and set(table.column("sentiment").to_pylist()) <= LABELS
    assert result["metrics"]["error_rows"] == 0 and result["metrics"]["output_tokens"] > 0

    # Another DAG shares the app: the warm sentiment example, as written, with this app's
    # name. Its deploy finds the app as configured (nothing sent), its batch jobs classify on
    # the deployment (a Serve stage, no engine of their own), and its teardown keeps the app
    # for the run that still holds it.
    conf = {"posts_root": str(tmp_path / "posts"), "output_root": str(tmp_path / "warm"), "num_partitions": 2,
            "posts_per_day": 12, "sql_conn_id": "warm_test_db", "app_name": app}  # fmt: skip
    run = examples.run("example_warm_sentiment", conf)
    assert examples.states(run) == {"deploy_llm": "success", "partition_posts": "success", "classify": "success",
                                    "write_summary": "success", "delete_llm": "success"}  # fmt: skip
    shared = examples.xcom(run, "deploy_llm", key="ray_serve_app")
    assert (shared["created"], shared["changed"], shared["config_hash"]) == (False, False, deployed["config_hash"])
    deployed_here = examples.xcom(run, "deploy_llm")
    assert deployed_here["app_name"] == app and deployed_here["route_prefix"] == f"/{app}"
    assert deployed_here["deployment_name"] == "LLMServer:smollm2-135m" and deployed_here["model_id"] == DEFAULT_MODEL_ID
    day_dir = tmp_path / "warm" / "sentiment" / "date=2026-11-22"
    table = pq.read_table(day_dir)
    assert table.num_rows == 12 and set(table.column("sentiment").to_pylist()) <= LABELS
    assert sorted(table.column("post_id").to_pylist()) == [p["post_id"] for p in social_posts("2026-11-22", 12)]
    with sqlite3.connect(tmp_path / "warm" / "sentiment.db") as conn:
        assert sum(c for (c,) in conn.execute("SELECT count FROM daily_sentiment WHERE day = '2026-11-22'")) == 12
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=run.run_id, key="return_value", task_ids="classify",
                                                  dag_ids="example_warm_sentiment")).all()  # fmt: skip
        results = [XComModel.deserialize_value(r) for r in rows]
    assert len(results) == 2
    for result in results:
        stages = " ".join(result["metrics"]["stage_seconds"])
        assert "ServeDeployment" in stages and "vLLM" not in stages, stages
        assert result["metrics"]["output_tokens"] > 0
    kept = examples.xcom(run, "delete_llm")
    assert (kept["removed"], len(kept["kept_for"])) == (False, 1), kept
    assert kept["kept_for"][0].endswith(f":serve_deploy/{again.run_id}") and _apps()[app].status == "RUNNING"

    # The second run's teardown drops the last lease: the app goes; its lease records too.
    gone = runner.run("serve_delete", {"app_name": app, "lease": leases[1]})
    assert runner.xcom(gone, "delete_llm") == {"app_name": app, "removed": True, "kept_for": []} and app not in _apps()
    assert shared["lease"] not in leases
    assert not [j for j in RayHook().list_jobs() if (j.submission_id or "") in [*leases, shared["lease"]]]
    twice = runner.run("serve_delete", {"app_name": app, "lease": leases[1]})
    assert runner.xcom(twice, "delete_llm") == {"app_name": app, "removed": False, "kept_for": []}
