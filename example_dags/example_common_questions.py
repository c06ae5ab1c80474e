"""
Common questions and creative prompts (seeds 000/001, fundamental and intermediate levels).

A support team answers the same questions every day, and a content team has a list of
creative prompts: both batches go through one vLLM model on the Ray cluster in one task
each. The questions and prompts are written to JSONL by the first task, as a real table
would be exported; the answers land in Parquet under ``{{ params.output_root }}/{{ run_day(dag_run) }}``.

Runs as written on this repository's local CPU cluster with the default model
(SmolLM2-135M-Instruct). For a GPU cluster: drop ``placement_group_config`` and
``kv_cache_memory_bytes``, set ``model_source`` (e.g. meta-llama/Llama-3.1-8B-Instruct),
``accelerator_type``, ``concurrency`` and ``engine_kwargs.tensor_parallel_size``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_raydatallm.configs import cpu_vllm_config
from airflow_provider_raydatallm.macros import MACROS, run_day
from airflow_provider_raydatallm.operators import RayLLMBatchOperator

# The examples' demo data and paths (demo_helpers.py beside this file), not the provider's API.
from demo_helpers import examples_dir

QUESTIONS = [
    "What is the weather like today?",
    "Tell me a joke.",
    "Give me a motivational quote.",
    "What is 2+2?",
]
PROMPTS = [
    "Write a haiku about nature.",
    "Generate a short story about space exploration.",
    "Summarize the following paragraph: Ray Data LLM runs batch inference over large "
    "datasets by splitting them into blocks that many model replicas process in parallel.",
]


# [START howto_questions_callables]
def answer_question(row: dict[str, Any]) -> dict[str, Any]:
    return dict(
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": row["item"]},
        ],
        sampling_params=dict(temperature=0.3, max_tokens=60),
    )


def write_creatively(row: dict[str, Any]) -> dict[str, Any]:
    return dict(
        messages=[
            {"role": "system", "content": "You are a creative writer."},
            {"role": "user", "content": row["item"]},
        ],
        sampling_params=dict(temperature=0.8, max_tokens=120),
    )


def keep_answer(row: dict[str, Any]) -> dict[str, Any]:
    return dict(item=row["item"], answer=row["generated_text"])
# [END howto_questions_callables]


with DAG(
    "example_common_questions",
    user_defined_macros=MACROS,
    schedule="@daily",
    start_date=dt.datetime(2026, 11, 1),
    catchup=False,
    params={"output_root": Param(examples_dir("common_questions"), type="string")},
    tags=["ray", "llm", "example"],
    doc_md=__doc__,
) as dag:

    @task
    def export_batches(**context: Any) -> dict[str, str]:
        from demo_helpers import write_jsonl

        root = f"{context['params']['output_root']}/{run_day(context['dag_run'])}"
        return {
            "questions": str(write_jsonl(f"{root}/input/questions.jsonl", [{"item": q} for q in QUESTIONS])),
            "prompts": str(write_jsonl(f"{root}/input/prompts.jsonl", [{"item": p} for p in PROMPTS])),
        }

    batches = export_batches()

    # [START howto_operator_questions]
    questions = RayLLMBatchOperator(
        task_id="answer_questions",
        processor_config=cpu_vllm_config(),
        preprocess=answer_question,
        postprocess=keep_answer,
        input_uri="{{ ti.xcom_pull(task_ids='export_batches')['questions'] }}",
        output_uri="{{ params.output_root }}/{{ run_day(dag_run) }}/answers",
        poll_interval=5,
    )
    # [END howto_operator_questions]

    prompts = RayLLMBatchOperator(
        task_id="write_prompts",
        processor_config=cpu_vllm_config(),
        preprocess=write_creatively,
        postprocess=keep_answer,
        input_uri="{{ ti.xcom_pull(task_ids='export_batches')['prompts'] }}",
        output_uri="{{ params.output_root }}/{{ run_day(dag_run) }}/creative",
        poll_interval=5,
    )

    # One model replica at a time on a small cluster: the batches run one after the other.
    batches >> questions >> prompts
