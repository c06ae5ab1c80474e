"""DAGs the system tests run with dag.test(): the seeds' user code through RayLLMBatchOperator.

Paths and counts come from params (set per test through run_conf), never from edits here.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from airflow.sdk import DAG, Param

import helpers_mod  # beside this file, as a user's helper module would be

from airflow_provider_raydatallm.configs import cpu_vllm_config
from airflow_provider_raydatallm.operators import RayLLMBatchOperator

START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
PARAMS = {"input": Param("", type="string"), "output": Param("", type="string")}

# --- seed 000: common questions --------------------------------------------------------------


def ask(row: dict[str, Any]) -> dict[str, Any]:
    return dict(
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": row["item"]},
        ],
        sampling_params=dict(temperature=0.3, max_tokens=40),
    )


# --- seed 003: company industries, the seed's functions as written -----------------------------

CHOICES = ["Law Firm", "Healthcare", "Technology", "Retail", "Consulting", "Manufacturing", "Finance",
           "Real Estate", "Other"]  # fmt: skip


def preprocess(row: dict[str, Any]) -> dict[str, Any]:
    return dict(
        messages=[
            {
                "role": "system",
                "content": "You are a helpful assistant that infers company industries. "
                "Based on the company name provided, output only the industry category. "
                f"Choose from: {', '.join(CHOICES)}.",
            },
            {"role": "user", "content": f"What industry is this company in: {row['Company']}"},
        ],
        sampling_params=dict(temperature=0, max_tokens=16, structured_outputs=dict(choice=CHOICES)),
    )


def postprocess(row: dict[str, Any]) -> dict[str, Any]:
    return {"inferred_industry": row["generated_text"], **row}


def every_fourth_fails(row: dict[str, Any]) -> dict[str, Any]:
    # Every block of the run (12 rows in 3 partitions) holds failing rows beside good ones.
    if int(row["Index"]) % 4 == 0:
        raise ValueError(f"refusing row {row['Index']} on purpose")
    return preprocess(row)


def postprocess_every_seventh_fails(row: dict[str, Any]) -> dict[str, Any]:
    if int(row["Index"]) % 7 == 0:
        raise KeyError(f"no label for row {row['Index']}")
    return postprocess(row)


def always_fails(row: dict[str, Any]) -> dict[str, Any]:
    raise ValueError("this preprocess rejects every row")


def slow(row: dict[str, Any]) -> dict[str, Any]:
    time.sleep(30)
    return echo_payload(row)


def _dag(dag_id: str, **kwargs: Any) -> DAG:
    return DAG(dag_id, schedule=None, start_date=START, params=PARAMS, catchup=False, **kwargs)


def _batch(task_id: str = "classify", **kwargs: Any) -> RayLLMBatchOperator:
    """A batch task reading params.input and writing params.output, waiting on the worker."""
    options: dict[str, Any] = dict(
        task_id=task_id, processor_config=cpu_vllm_config(), input_uri="{{ params.input }}",
        output_uri="{{ params.output }}", deferrable=False, poll_interval=2,
    )  # fmt: skip
    options.update(kwargs)
    return RayLLMBatchOperator(**options)


with _dag("test_questions_sync"):
    # A progress line every 10 s instead of 30 s, so a short run shows the cadence.
    _batch("answer", preprocess=ask, postprocess=lambda row: dict(answer=row["generated_text"], **row), input_format="jsonl",
           runtime_env={"env_vars": {"RAYDLLM_PROGRESS_SECONDS": "10"}})  # fmt: skip


# Failure handling, kill and pre-flight do not depend on the engine: these run on the stand-in
# OpenAI-compatible endpoint (tests/echo_server.py), so no vLLM engine starts for them.
ECHO = {"type": "HttpRequestProcessorConfig", "batch_size": 4, "max_retries": 0}


def echo_payload(row: dict[str, Any]) -> dict[str, Any]:
    return {"payload": {"model": "echo", "messages": ask(row)["messages"]}}


def _echo_batch(task_id: str = "classify", **kwargs: Any) -> RayLLMBatchOperator:
    return _batch(task_id, processor_config=ECHO, http_conn_id="echo", **kwargs)


with _dag("test_failing_preprocess"):
    _echo_batch(preprocess=always_fails)

with _dag("test_continue_on_error"):
    _batch(
        preprocess=every_fourth_fails, postprocess=postprocess_every_seventh_fails, id_column="Index",
        num_partitions=3, should_continue_on_error=True, max_error_ratio=0.5,
    )  # fmt: skip

def echo_industry(row: dict[str, Any]) -> dict[str, Any]:
    return {"payload": {"model": "echo", "messages": preprocess(row)["messages"]}}


def echo_answer(row: dict[str, Any]) -> dict[str, Any]:
    return {"answer": row["http_response"]["choices"][0]["message"]["content"], "Customer Id": row["Customer Id"]}


with _dag("test_industries_deferred"):
    # A same-date rerun replaces the day's output: the commit is under test, not the engine
    # (the industries use case runs on vLLM in tests/system/test_examples.py).
    _echo_batch(preprocess=echo_industry, postprocess=echo_answer, output_uri="{{ params.output }}/{{ ds }}",
                id_column="Customer Id", deferrable=True)  # fmt: skip

def postprocess_always_fails(row: dict[str, Any]) -> dict[str, Any]:
    raise ValueError("this postprocess wants JSON: " + row["http_response"]["choices"][0]["message"]["content"][:12])


with _dag("test_every_row_fails_on_error"):
    _echo_batch(
        preprocess=echo_industry, postprocess=postprocess_always_fails, id_column="Index",
        should_continue_on_error=True, max_error_ratio=1.0,
    )  # fmt: skip

with _dag("test_killed_task"):
    # Airflow calls on_kill when a task hits its execution_timeout, as on SIGTERM.
    _echo_batch(
        "slow", preprocess=slow, input_format="jsonl", poll_interval=1, execution_timeout=dt.timedelta(seconds=20),
    )  # fmt: skip

# --- checks only the cluster can make, and callables that need a helper module -------------------

with _dag("test_missing_model"):
    _batch(processor_config=cpu_vllm_config(model_source="/nonexistent/models/SmolLM2"), preprocess=preprocess)

with _dag("test_missing_id_column"):
    _echo_batch(preprocess=echo_payload, id_column="Customer Number")

with _dag("test_helper_module"):
    _batch(
        "ask", processor_config={"type": "HttpRequestProcessorConfig", "batch_size": 4, "max_retries": 0},
        http_conn_id="echo", input_format="jsonl",
        preprocess=lambda row: {"payload": helpers_mod.build_payload(row["item"])},
        postprocess=lambda row: {"item": row["item"], "answer": row["http_response"]["choices"][0]["message"]["content"]},
    )  # fmt: skip

# --- placement across nodes: the session's cluster has two worker nodes with accelerator_type:L4 --

with _dag("test_placement_l4"):
    # What a user with one L4 per node writes, except the GPU: the default bundle asks for
    # {"GPU": 1, "CPU": 1} per replica; here the custom resource gpu_slot (one per local worker
    # node, scripts/local_ray.py) stands in for the GPU this machine lacks. concurrency=(2, 2)
    # starts both replicas at once (an int n autoscales from 1 to n in Ray 2.60); the CPU
    # stages keep one actor each. Two engines run at once on this one machine, each with
    # cpu_vllm_config's 1 GiB KV cache (the model needs ~25 MB at max_model_len 1024).
    _batch(
        processor_config=cpu_vllm_config(
            accelerator_type="L4", concurrency=(2, 2), batch_size=8,
            placement_group_config={"bundles": [{"CPU": 1, "gpu_slot": 1}]},
            chat_template_stage={"concurrency": 1}, tokenize_stage={"concurrency": 1},
            detokenize_stage={"concurrency": 1},
        ),
        preprocess=preprocess, postprocess=postprocess, id_column="Customer Id", num_partitions=4,
    )  # fmt: skip
