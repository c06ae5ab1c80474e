"""DAGs for the UI plugin's browser test (tests/lifecycle/test_ui.py), run by the real Airflow.

The job posts each row to the local OpenAI-compatible endpoint; a row's ``delay`` is slept
in the preprocess (so the test decides how long the job runs and sees its progress move)
and a row with ``fail`` set raises there (so the run has error rows to show). The task
emits an asset event and, through the OpenLineage provider, lineage events.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from airflow.providers.openlineage.utils.selective_enable import enable_lineage
from airflow.sdk import DAG, Asset, Param

from airflow_provider_raydatallm.operators import RayLLMBatchOperator

ANSWERS = Asset(name="raydllm_ui_answers", uri="file:///raydllm-tests/ui/answers")


def preprocess(row: dict[str, Any]) -> dict[str, Any]:
    time.sleep(float(row.get("delay") or 0))
    if row.get("fail"):
        raise ValueError(f"item {row['item']!r} is marked to fail")
    return {"payload": {"model": "echo", "messages": [{"role": "user", "content": f"Say hi to {row['item']}"}]}}


def postprocess(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "answer": row["http_response"]["choices"][0]["message"]["content"]}


for dag_id in ("raydllm_ui", "raydllm_ui_hidden"):
    with DAG(
        dag_id, schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), catchup=False,
        params={"input": Param("", type="string"), "output": Param("", type="string"),
                "partitions": Param(1, type="integer")},
        max_active_runs=2, render_template_as_native_obj=True,
    ) as dag:  # fmt: skip
        RayLLMBatchOperator(
            task_id="ask",
            processor_config={"type": "HttpRequestProcessorConfig", "batch_size": 2, "concurrency": 1, "max_retries": 0},
            http_conn_id="echo", preprocess=preprocess, postprocess=postprocess,
            input_uri="{{ params.input }}", input_format="jsonl", id_column="id", output_uri="{{ params.output }}",
            num_partitions="{{ params.partitions }}", should_continue_on_error=True, max_error_ratio=0.5,
            deferrable=True, poll_interval=2, outlets=[ANSWERS],
            # A progress line every 2 s (30 s by default): the browser test watches it move.
            # "2s", not "2": this DAG renders templates as native objects, "2" would become 2.
            runtime_env={"env_vars": {"RAYDLLM_PROGRESS_SECONDS": "2s"}},
        )  # fmt: skip
    enable_lineage(dag)
