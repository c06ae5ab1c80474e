"""
Batch inference against an OpenAI-compatible endpoint (seed 002, HttpRequestProcessorConfig).

The same batch of prompts is sent to any OpenAI-compatible server (OpenAI, a vLLM server,
Ray Serve LLM, ...) at most ``qps`` requests per second, with retries and exponential
backoff. The endpoint and its API key come from the Airflow connection ``openai_default``
(host = base URL such as ``https://api.openai.com``, password = API key, optional extra
``{"path": "/v1/chat/completions"}``): the key is never in this file, the rendered
template, XCom or the task log, and reaches the Ray job as an environment variable,
which Ray redacts from its API.

The seed's preprocess and postprocess are used as written (model ``gpt-4o-mini``); the
tests point the connection at a local stand-in endpoint that checks the key.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_raydatallm.macros import MACROS, run_day
from airflow_provider_raydatallm.operators import RayLLMBatchOperator

# The examples' demo data and paths (demo_helpers.py beside this file), not the provider's API.
from demo_helpers import examples_dir

PROMPTS = [
    "Hand me a haiku.",
    "Give me a motivational quote.",
    "What is 2+2?",
]


# [START howto_openai_callables]
def preprocess(row: dict[str, Any]) -> dict[str, Any]:
    return dict(
        payload=dict(
            model="gpt-4o-mini",
            messages=[
                {"role": "system", "content": "You are a bot that responds with haikus."},
                {"role": "user", "content": row["item"]},
            ],
            temperature=0.0,
            max_tokens=150,
        ),
    )


def postprocess(row: dict[str, Any]) -> dict[str, Any]:
    return dict(item=row["item"], response=row["http_response"]["choices"][0]["message"]["content"])
# [END howto_openai_callables]


with DAG(
    "example_openai_endpoint",
    user_defined_macros=MACROS,
    schedule="@daily",
    start_date=dt.datetime(2026, 11, 1),
    catchup=False,
    params={"output_root": Param(examples_dir("openai_endpoint"), type="string")},
    tags=["ray", "llm", "example"],
    doc_md=__doc__,
) as dag:

    @task
    def export_prompts(**context: Any) -> str:
        from demo_helpers import write_jsonl

        path = f"{context['params']['output_root']}/{run_day(context['dag_run'])}/input/prompts.jsonl"
        return str(write_jsonl(path, [{"item": p} for p in PROMPTS]))

    # [START howto_operator_openai]
    ask = RayLLMBatchOperator(
        task_id="ask_endpoint",
        processor_config={
            "type": "HttpRequestProcessorConfig",
            "qps": 2,  # stay under the endpoint's rate limit
            "max_retries": 3,
            "batch_size": 8,
            "concurrency": 1,
        },
        http_conn_id="openai_default",
        preprocess=preprocess,
        postprocess=postprocess,
        input_uri="{{ ti.xcom_pull(task_ids='export_prompts') }}",
        output_uri="{{ params.output_root }}/{{ run_day(dag_run) }}/responses",
        should_continue_on_error=True,
        poll_interval=5,
    )
    # [END howto_operator_openai]

    export_prompts() >> ask
