"""DAGs the Serve system tests run with dag.test(): deploy, batch over the app's OpenAI route
with HttpRequestProcessorConfig, delete. Names and URLs come from params (run_conf)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, Param

from airflow_provider_raydatallm.configs import DEFAULT_MODEL_ID, cpu_serve_llm_config
from airflow_provider_raydatallm.operators import RayLLMBatchOperator
from airflow_provider_raydatallm.operators.serve import RayServeLLMDeleteOperator, RayServeLLMDeployOperator

START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
SENTIMENT_LABELS = ["positive", "negative", "neutral"]


def sentiment_messages(text: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": f"You classify the sentiment of social media posts. Answer with one word: {', '.join(SENTIMENT_LABELS)}."},
        {"role": "user", "content": text},
    ]


def http_sentiment(row: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI chat body itself, as an OpenAI endpoint takes it."""
    return dict(payload=dict(model=DEFAULT_MODEL_ID, messages=sentiment_messages(row["text"]), temperature=0,
                             max_tokens=8, structured_outputs=dict(choice=SENTIMENT_LABELS)))  # fmt: skip


def http_label(row: dict[str, Any]) -> dict[str, Any]:
    return dict(post_id=row["post_id"], sentiment=row["http_response"]["choices"][0]["message"]["content"].strip())


with DAG("serve_deploy", schedule=None, start_date=START, params={"app_name": Param("", type="string")}):
    RayServeLLMDeployOperator(task_id="deploy_llm", app_name="{{ params.app_name }}", llm_configs=cpu_serve_llm_config(),
                              deferrable=True, poll_interval=2)  # fmt: skip

with DAG("serve_http_batch", schedule=None, start_date=START,
         params={"url": Param("", type="string"), "input": Param("", type="string"), "output": Param("", type="string")}):  # fmt: skip
    RayLLMBatchOperator(
        task_id="classify", processor_config={"type": "HttpRequestProcessorConfig", "url": "{{ params.url }}",
                                              "batch_size": 8, "concurrency": 1},
        preprocess=http_sentiment, postprocess=http_label, input_uri="{{ params.input }}", input_format="jsonl",
        id_column="post_id", output_uri="{{ params.output }}", poll_interval=2,
    )  # fmt: skip

with DAG("serve_delete", schedule=None, start_date=START,
         params={"app_name": Param("", type="string"), "lease": Param("", type="string")}):
    # The lease of the deploy run this teardown ends (deploy and teardown in one run need none).
    RayServeLLMDeleteOperator(task_id="delete_llm", app_name="{{ params.app_name }}", lease="{{ params.lease }}")
