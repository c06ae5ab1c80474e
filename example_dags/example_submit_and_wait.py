"""
Submit now, wait elsewhere: a long batch without holding a worker slot.

``RayLLMBatchOperator(wait_for_completion=False)`` submits the job and returns its
submission id at once; ``RayJobSensor(deferrable=True)`` waits for it in the triggerer
(streaming the job's log into its task log), and a downstream task reads the output the
sensor's XCom points to. Useful when the batch runs for hours: the submit task is cheap to
retry (it reattaches to its job), and the wait costs no worker.

Runs as written on the local CPU cluster with the default model; for a GPU cluster change
the processor config as in ``example_customer_industries``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_raydatallm.configs import cpu_vllm_config
from airflow_provider_raydatallm.macros import MACROS, run_day
from airflow_provider_raydatallm.operators import RayLLMBatchOperator
from airflow_provider_raydatallm.sensors import RayJobSensor

# The examples' demo data and paths (demo_helpers.py beside this file), not the provider's API.
from demo_helpers import examples_dir

TICKETS = [
    "My order arrived damaged, what should I do?",
    "How do I reset my password?",
    "Can I change the delivery address after ordering?",
]


def draft_reply(row: dict[str, Any]) -> dict[str, Any]:
    return dict(
        messages=[
            {"role": "system", "content": "You are a polite customer support agent. Reply in two sentences."},
            {"role": "user", "content": row["ticket"]},
        ],
        sampling_params=dict(temperature=0.2, max_tokens=60),
    )


def reply_row(row: dict[str, Any]) -> dict[str, Any]:
    return dict(ticket=row["ticket"], reply=row["generated_text"])


with DAG(
    "example_submit_and_wait",
    user_defined_macros=MACROS,
    schedule="@daily",
    start_date=dt.datetime(2026, 11, 1),
    catchup=False,
    params={"output_root": Param(examples_dir("support_replies"), type="string")},
    tags=["ray", "llm", "example"],
    doc_md=__doc__,
) as dag:

    @task
    def export_tickets(**context: Any) -> str:
        from demo_helpers import write_jsonl

        path = f"{context['params']['output_root']}/{run_day(context['dag_run'])}/input/tickets.jsonl"
        return str(write_jsonl(path, [{"ticket": t} for t in TICKETS]))

    # [START howto_submit_then_sensor]
    submit = RayLLMBatchOperator(
        task_id="submit",
        processor_config=cpu_vllm_config(),
        preprocess=draft_reply,
        postprocess=reply_row,
        input_uri="{{ ti.xcom_pull(task_ids='export_tickets') }}",
        output_uri="{{ params.output_root }}/{{ run_day(dag_run) }}/replies",
        wait_for_completion=False,
    )
    wait = RayJobSensor(
        task_id="wait_for_replies",
        job_id="{{ ti.xcom_pull(task_ids='submit')['submission_id'] }}",
        deferrable=True,
        poke_interval=5,
        timeout=3600,
    )
    # [END howto_submit_then_sensor]

    @task
    def publish(summary: dict[str, Any]) -> int:
        from airflow_provider_raydatallm.reading import read_committed

        # Only the committed version: the files the output's _SUCCESS manifest names.
        replies = read_committed(summary["output_uri"]).to_pylist()
        for reply in replies:
            print(f"{reply['ticket']!r} -> {reply['reply'].strip()!r}")
        return len(replies)

    export_tickets() >> submit >> wait
    publish(wait.output)
