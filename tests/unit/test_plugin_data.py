"""The plugin's readings that need no server: links, model labels, the job's progress line
and whether a job belongs to the task instance asking."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from airflow_provider_raydatallm.job import progress
from airflow_provider_raydatallm.plugins import data


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:8265/#/jobs/raydllm-x", "http://127.0.0.1:8265/#/jobs/raydllm-x"),
        ("https://ray.example.com/#/jobs/a", "https://ray.example.com/#/jobs/a"),
        ("javascript:alert(document.cookie)", None),
        ("JAVASCRIPT:alert(1)", None),
        ("data:text/html,<script>alert(1)</script>", None),
        ("//evil.example.com/x", None),
        ("/relative/path", None),
        ("http:///no-host", None),
        (None, None),
        ({"href": "http://x"}, None),
    ],
)
def test_only_absolute_http_links_are_links(url, shown):
    assert data.safe_link(url) == shown


def test_model_labels_name_the_endpoint_host_not_the_url():
    assert data.model_label("http:http://10.0.0.5:8000/v1/chat/completions") == "10.0.0.5:8000"
    assert data.model_label("http:https://api.example.com/v1/chat/completions") == "api.example.com"
    assert data.model_label("serve:llm/LLMServer:smollm2-135m") == "serve:llm/LLMServer:smollm2-135m"
    assert data.model_label("/models/SmolLM2-135M-Instruct") == "/models/SmolLM2-135M-Instruct"
    assert data.model_label(None) is None


def test_the_latest_progress_line_of_a_job_log_with_its_age():
    log = "\n".join([
        "2026-12-01 10:00:00,001 INFO [raydllm] read 60 rows (text) from ['/x']; 3 partitions",
        "2026-12-01 10:00:30,002 INFO [raydllm] progress: 0 of 60 rows after 30s (the engine and the first blocks are starting)",
        "(MapWorker(MapBatches(vLLMEngineStageUDF)) pid=41) INFO 12-01 10:00:31 engine ready",
        "2026-12-01 10:01:00,003 INFO [raydllm] progress: 40 of 60 rows (66%), 1 failed; 1.6 rows/s; about 13s left (elapsed 1m 00s)",
        "2026-12-01 10:01:02,000 INFO [ray] a line after it",
    ])  # fmt: skip
    now = datetime(2026, 12, 1, 10, 1, 5, tzinfo=timezone.utc)
    figures = data.latest_progress(log, now)
    assert (figures["done"], figures["total"], figures["failed"]) == (40, 60, 1)
    assert (figures["rows_per_second"], figures["eta_seconds"], figures["elapsed_seconds"]) == (1.6, 13, 60)
    assert figures["age_seconds"] == 5 and figures["logged_at"].startswith("2026-12-01T10:01:00")
    assert data.latest_progress("no progress here\n", now) is None
    # The finished line, and one without the job's timestamp (printed by hand): no age.
    final = data.latest_progress("progress: 60 of 60 rows (100%), 1 failed, in 1m 09s (0.9 rows/s)", now)
    assert final["finished"] and final["done"] == 60 and "age_seconds" not in final
    assert progress.parse("progress: 7 of 9 rows") is None  # a line of another shape is not read


def test_a_job_belongs_only_to_the_task_instance_its_metadata_names():
    ti = {"dag_id": "d", "run_id": "r", "task_id": "t", "map_index": 2}
    meta = {"airflow_dag_id": "d", "airflow_run_id": "r", "airflow_task_id": "t", "airflow_map_index": "2"}
    assert data._belongs_to({"metadata": meta}, ti)
    for key, other in (("airflow_dag_id", "d2"), ("airflow_run_id", "r2"), ("airflow_task_id", "t2"), ("airflow_map_index", "-1")):
        assert not data._belongs_to({"metadata": {**meta, key: other}}, ti), key
    assert not data._belongs_to({"metadata": {}}, ti) and not data._belongs_to({}, ti)


@pytest.mark.parametrize(
    ("stored", "link"),
    [
        ({"dashboard_url": "http://127.0.0.1:8265/#/jobs/raydllm-x"}, "http://127.0.0.1:8265/#/jobs/raydllm-x"),
        ({"dashboard_url": "javascript:alert(1)"}, ""),
        ({"dashboard_url": None}, ""),
        ("not a dict", ""),
        (None, ""),
    ],
)
def test_the_ray_job_extra_link_is_http_only(monkeypatch, stored, link):
    from airflow.sdk.execution_time.xcom import XCom

    from airflow_provider_raydatallm.links.ray import RayJobLink

    monkeypatch.setattr(XCom, "get_value", classmethod(lambda cls, **kwargs: stored))
    assert RayJobLink().get_link(None, ti_key=None) == link


def _pre(row):
    return row


def test_the_connection_comes_from_the_serialized_definition_mapped_or_not():
    import datetime as dt

    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    from airflow_provider_raydatallm.operators import RayLLMBatchOperator

    cfg = {"type": "HttpRequestProcessorConfig", "url": "http://x/v1", "batch_size": 2}
    common = {"processor_config": cfg, "preprocess": _pre, "postprocess": _pre}
    with DAG("conn_ids", schedule=None, start_date=dt.datetime(2026, 1, 1)) as dag:
        RayLLMBatchOperator.partial(task_id="mapped", output_uri="/o/{{ ti.map_index }}", ray_conn_id="prod_ray",
                                    **common).expand(input_uri=["/a", "/b"])  # fmt: skip
        RayLLMBatchOperator.partial(task_id="mapped_conn", output_uri="/o2/{{ ti.map_index }}", input_uri="/x",
                                    **common).expand(ray_conn_id=["a", "b"])  # fmt: skip
        RayLLMBatchOperator.partial(task_id="kwargs", output_uri="/o6/{{ ti.map_index }}", input_uri="/x", ray_conn_id="a",
                                    **common).expand_kwargs([{"ray_conn_id": "b"}])  # fmt: skip
        RayLLMBatchOperator(task_id="plain", output_uri="/o3", input_uri="/x", ray_conn_id="other", **common)
        RayLLMBatchOperator(task_id="default", output_uri="/o4", input_uri="/x", **common)
        RayLLMBatchOperator(task_id="templated", output_uri="/o5", input_uri="/x", ray_conn_id="{{ var.value.ray }}", **common)
    served = DagSerialization.from_dict(DagSerialization.to_dict(dag))  # what the API server reads
    names = ("mapped", "mapped_conn", "kwargs", "plain", "default", "templated")
    found = {t: data.defined_ray_conn_id(served.get_task(t)) for t in names}
    # expand_kwargs may set it per instance: only the instance's rendered fields can say which.
    assert found == {"mapped": "prod_ray", "mapped_conn": data.MAPPED, "kwargs": data.MAPPED, "plain": "other",
                     "default": "ray_default", "templated": "{{ var.value.ray }}"}  # fmt: skip


def test_the_views_follow_an_airflow_served_under_a_path():
    import json
    import os
    import subprocess
    import sys

    probe = "import json; from airflow_provider_raydatallm.plugins import RayDataLLMPlugin as P; print(json.dumps([v['href'] for v in P.external_views]))"
    for base, prefix in (("http://example.com/airflow/", "/airflow"), ("http://127.0.0.1:8080", "")):
        env = {**os.environ, "AIRFLOW__API__BASE_URL": base}
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        hrefs = json.loads(out.stdout.strip().splitlines()[-1])
        assert hrefs[0] == f"{prefix}/raydatallm/runs" and hrefs[1].startswith(f"{prefix}/raydatallm/ray-job?dag_id={{DAG_ID}}")
