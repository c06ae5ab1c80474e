"""DAGs for the lifecycle drills, run by a real scheduler and triggerer (tests/lifecycle).

Each job sends its rows to a local OpenAI-compatible endpoint (connection ``echo``) through
Ray's HttpRequestProcessorConfig. A row's ``delay`` column is slept in the preprocess, so a
drill decides how long its job runs (one partition: the delays add up). The drill that
edits a DAG's prompt has its own file (prompt_dags.py).
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from airflow.sdk import DAG, BaseOperator, Param, task

from airflow_provider_raydatallm.configs import DEFAULT_MODEL_ID, cpu_serve_llm_config, cpu_vllm_config
from airflow_provider_raydatallm.operators import RayLLMBatchOperator
from airflow_provider_raydatallm.operators.serve import RayServeLLMDeleteOperator, RayServeLLMDeployOperator
from airflow_provider_raydatallm.tables import IcebergTable

PROMPT = "Answer briefly."
START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
PARAMS = {"input": Param("", type="string"), "output": Param("", type="string")}
HTTP_CONFIG = {"type": "HttpRequestProcessorConfig", "batch_size": 4, "concurrency": 1, "max_retries": 0}


def preprocess(row: dict[str, Any]) -> dict[str, Any]:
    time.sleep(float(row.get("delay") or 0))
    return {"payload": {"model": "echo", "messages": [
        {"role": "system", "content": PROMPT}, {"role": "user", "content": f"{PROMPT} {row['item']}"}]}}  # fmt: skip


def fail_while_flagged(row: dict[str, Any]) -> dict[str, Any]:
    """preprocess, except that a row naming a ``fail_flag`` file fails the whole try (after
    its ``delay``) while that file exists: the drill removes it before the retry."""
    import os

    flag = row.get("fail_flag")  # NaN on the other rows (pandas reads the JSON)
    if isinstance(flag, str) and os.path.exists(flag):
        time.sleep(float(row.get("delay") or 0))
        raise RuntimeError(f"row {row['id']}: this try fails on purpose (flag {flag})")
    return preprocess({**row, "delay": 0})


def postprocess(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "item": row["item"], "prompt": PROMPT,
            "answer": row["http_response"]["choices"][0]["message"]["content"]}  # fmt: skip


def _batch(task_id: str, **kwargs: Any) -> RayLLMBatchOperator:
    options: dict[str, Any] = dict(
        task_id=task_id, processor_config=HTTP_CONFIG, http_conn_id="echo", preprocess=preprocess,
        postprocess=postprocess, input_uri="{{ params.input }}", input_format="jsonl", id_column="id",
        output_uri="{{ params.output }}", num_partitions=1, poll_interval=2,
    )  # fmt: skip
    options.update(kwargs)
    return RayLLMBatchOperator(**options)


def _dag(dag_id: str, **kwargs: Any) -> DAG:
    return DAG(dag_id, schedule=None, start_date=START, params=PARAMS, catchup=False, **kwargs)


class WarmUpTriggerer(BaseOperator):
    """Defers once on a trigger that reads an XCom (tests/lifecycle/airflow_path/raydllm_warmup.py)."""

    def execute(self, context: Any) -> None:
        from raydllm_warmup import ExecutionApiWarmUpTrigger

        self.defer(trigger=ExecutionApiWarmUpTrigger(), method_name="done")

    def done(self, context: Any, event: Any = None) -> Any:
        return event


with DAG("warm_triggerer", schedule=None, start_date=START, catchup=False):
    WarmUpTriggerer(task_id="warm")

with _dag("drill_deferred", max_active_runs=4):
    _batch("ask", deferrable=True)

with _dag("drill_worker"):
    _batch("ask", deferrable=False, retries=1, retry_delay=dt.timedelta(seconds=2))

with _dag("drill_timeout"):
    _batch("ask", deferrable=True, execution_timeout=dt.timedelta(seconds=45))

with _dag("drill_same_output", max_active_runs=2):
    # The second writer waits this long for the first before failing: short, for the drill.
    _batch("ask", deferrable=True, runtime_env={"env_vars": {"RAYDLLM_LOCK_WAIT_SECONDS": "5"}})

with _dag("drill_unplaceable"):
    _batch(
        "classify", processor_config=cpu_vllm_config(accelerator_type="H100"), http_conn_id=None,
        preprocess=lambda row: {"messages": [{"role": "user", "content": row["item"]}]}, postprocess=None,
        deferrable=True, pending_timeout=10,
    )  # fmt: skip

# A try that fails midway, then its retry (resume) or a clear (from zero). One partition per
# 4 rows; the failing row's partition fails last, after the others are written.
for _dag_id, _delay in (("drill_resume", dt.timedelta(seconds=15)), ("drill_resume_clear", dt.timedelta(hours=2))):
    with _dag(_dag_id):
        _batch("ask", deferrable=True, retries=1, retry_delay=_delay, preprocess=fail_while_flagged, num_partitions=6)

# A warm engine as setup / teardown around mapped batch tasks: a Serve LLM app (the default
# model on CPU) deployed by a deferred task; each partition's job sends its rows to it; a row
# "FAIL" fails its partition, and the teardown must run all the same.


def serve_request(row: dict[str, Any]) -> dict[str, Any]:
    if row["item"] == "FAIL":
        raise ValueError(f"row {row['id']} fails on purpose")
    return {"method": "chat", "dtype": "ChatCompletionRequest",
            "request_kwargs": {"model": DEFAULT_MODEL_ID, "messages": [{"role": "user", "content": row["item"]}],
                               "max_tokens": 4, "temperature": 0}}  # fmt: skip


def serve_answer(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "answer": row["choices"][0]["message"]["content"]}


with DAG("drill_serve", schedule=None, start_date=START, catchup=False,
         params={"app_name": Param("drill-serve", type="string"), "parts": Param([], type="array")}):  # fmt: skip
    deploy = RayServeLLMDeployOperator(task_id="deploy_llm", app_name="{{ params.app_name }}",
                                       llm_configs=cpu_serve_llm_config(), deferrable=True, poll_interval=2)  # fmt: skip

    @task
    def partitions(**context: Any) -> list[dict[str, str]]:
        return context["params"]["parts"]

    classify = RayLLMBatchOperator.partial(
        task_id="classify", preprocess=serve_request, postprocess=serve_answer, input_format="jsonl", id_column="id",
        processor_config={"type": "ServeDeploymentProcessorConfig", "app_name": deploy.output["app_name"],
                          "deployment_name": deploy.output["deployment_name"], "batch_size": 4, "concurrency": 1},
        deferrable=True, poll_interval=2,
    ).expand_kwargs(partitions())  # fmt: skip
    classify >> RayServeLLMDeleteOperator(task_id="delete_llm", app_name="{{ params.app_name }}").as_teardown(setups=deploy)

# Two tasks writing two slices of one Iceberg table (a SQL catalog on SQLite under
# params.output): "ask_a" fails its first try while its input's flag file exists, then its
# retry commits; a clear of "ask_b" replaces its slice again.
_TABLE = dict(
    catalog_properties={"type": "sql", "uri": "sqlite:///{{ params.output }}/catalog.db",
                        "warehouse": "file://{{ params.output }}/warehouse"},
)  # fmt: skip
with DAG("drill_table", schedule=None, start_date=START, catchup=False,
         params={"input_a": Param("", type="string"), "input_b": Param("", type="string"),
                 "output": Param("", type="string")}):  # fmt: skip
    for _part in ("a", "b"):
        _batch(
            f"ask_{_part}", input_uri=f"{{{{ params.input_{_part} }}}}", output_uri=None, preprocess=fail_while_flagged,
            output_table=IcebergTable("drill.answers", partition={"day": "2026-12-01", "part": _part}, **_TABLE),
            deferrable=True, retries=1, retry_delay=dt.timedelta(seconds=3), num_partitions=2,
        )  # fmt: skip
