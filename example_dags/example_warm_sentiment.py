"""
Daily sentiment on a warm engine: one Ray Serve LLM deployment shared by every partition.

``example_daily_sentiment`` starts a vLLM engine inside every partition task's job; here a
setup task deploys the model once as a Ray Serve LLM application (OpenAI-compatible), the
mapped partition tasks send their rows to it through ``ServeDeploymentProcessorConfig``
(no engine start-up in their jobs), and a teardown task deletes the application, also when
a partition fails:

    deploy_llm (setup) -> partition_posts -> classify[k] -> write_summary -> delete_llm (teardown)

Outputs are the same as ``example_daily_sentiment``: a date-partitioned Parquet dataset
``{{ params.output_root }}/sentiment/date=YYYY-MM-DD/part=K/`` and the per-day rows of the
SQL table ``daily_sentiment``; re-running a day replaces them.

Code written against an OpenAI endpoint can use the same engine through the application's
route instead: ``HttpRequestProcessorConfig(url=deploy.output["chat_completions_url"])``
with an OpenAI request body as ``payload`` (docs/serve.md).

Runs as written on this repository's local CPU cluster with the default model. For a GPU
cluster see docs/serve.md: in ``cpu_serve_llm_config`` terms, set ``model_source``,
``accelerator_type`` and ``engine_kwargs.tensor_parallel_size``, drop
``placement_group_config`` and ``kv_cache_memory_bytes``, and size ``autoscaling_config``
(replicas) and the batch tasks' ``concurrency`` to the GPUs you have.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_raydatallm.configs import DEFAULT_MODEL_ID, cpu_serve_llm_config
from airflow_provider_raydatallm.macros import MACROS, run_day
from airflow_provider_raydatallm.operators import RayLLMBatchOperator
from airflow_provider_raydatallm.operators.serve import RayServeLLMDeleteOperator, RayServeLLMDeployOperator

# The examples' demo data and paths (demo_helpers.py beside this file), not the provider's API.
from demo_helpers import SENTIMENT_LABELS as LABELS, examples_dir, sentiment_messages


# [START howto_serve_callables]
def sentiment_chat(row: dict[str, Any]) -> dict[str, Any]:
    """A row -> one OpenAI chat request to the deployment's LLMServer."""
    return dict(
        method="chat",
        dtype="ChatCompletionRequest",
        request_kwargs=dict(
            model=DEFAULT_MODEL_ID,
            messages=sentiment_messages(row["text"], LABELS),
            temperature=0,
            max_tokens=8,
            structured_outputs=dict(choice=LABELS),
        ),
    )


def sentiment_from_chat(row: dict[str, Any]) -> dict[str, Any]:
    return dict(post_id=row["post_id"], posted_at=row["posted_at"], text=row["text"],
                sentiment=row["choices"][0]["message"]["content"].strip())  # fmt: skip
# [END howto_serve_callables]


with DAG(
    "example_warm_sentiment",
    user_defined_macros=MACROS,
    schedule="@daily",
    start_date=dt.datetime(2026, 11, 1),
    catchup=False,
    max_active_runs=1,
    params={
        "posts_root": Param(examples_dir("posts"), type="string"),
        "output_root": Param(examples_dir("warm_sentiment"), type="string"),
        "num_partitions": Param(4, type="integer", minimum=1),
        "generate_demo_posts": Param(True, type="boolean"),
        "posts_per_day": Param(40, type="integer", minimum=1),
        "sql_conn_id": Param("sentiment_db", type="string"),
        "app_name": Param("sentiment-llm", type="string"),
    },
    tags=["ray", "llm", "serve", "example"],
    doc_md=__doc__,
) as dag:
    # [START howto_operator_serve_deploy]
    deploy = RayServeLLMDeployOperator(
        task_id="deploy_llm",
        app_name="{{ params.app_name }}",
        llm_configs=cpu_serve_llm_config(),
        deferrable=True,
        poll_interval=5,
    )
    # [END howto_operator_serve_deploy]

    @task
    def partition_posts(**context: Any) -> list[dict[str, str]]:
        """Split the day's posts into ``num_partitions`` files: one mapped task each."""
        from demo_helpers import partition_day

        p = context["params"]
        return partition_day(p["posts_root"], p["output_root"], run_day(context["dag_run"]), p["num_partitions"],
                             p["generate_demo_posts"], p["posts_per_day"])  # fmt: skip

    # [START howto_operator_serve_mapped]
    classify = RayLLMBatchOperator.partial(
        task_id="classify",
        # The deploy task's XComs: the batch jobs send their rows to its LLMServer deployment.
        processor_config={
            "type": "ServeDeploymentProcessorConfig",
            "app_name": deploy.output["app_name"],
            "deployment_name": deploy.output["deployment_name"],
            "batch_size": 16,
            "concurrency": 1,
        },
        preprocess=sentiment_chat,
        postprocess=sentiment_from_chat,
        input_format="jsonl",
        id_column="post_id",
        should_continue_on_error=True,
        poll_interval=2,
    ).expand_kwargs(partition_posts())
    # [END howto_operator_serve_mapped]

    @task
    def write_summary(results: list[dict[str, Any]], **context: Any) -> dict[str, Any]:
        """Count labels over the day's partitions and replace the day's rows in SQL."""
        from demo_helpers import summarize_day

        p = context["params"]
        summary = summarize_day(results, LABELS, run_day(context["dag_run"]), p["sql_conn_id"], p["output_root"])
        print(f"warm sentiment {summary}")
        return summary

    # [START howto_operator_serve_teardown]
    delete = RayServeLLMDeleteOperator(task_id="delete_llm", app_name="{{ params.app_name }}")
    summary = write_summary(classify.output)
    summary >> delete.as_teardown(setups=deploy)
    # [END howto_operator_serve_teardown]
