"""DAGs the benchmarks run with dag.test() (paths, URLs and counts from run_conf)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, Param

from airflow_provider_raydatallm.configs import cpu_vllm_config
from airflow_provider_raydatallm.operators import RayLLMBatchOperator
from benchmarks import pipeline

START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
PARAMS = {"input": Param("", type="string"), "output": Param("", type="string"), "url": Param("", type="string"),
          "limit": Param(100, type="integer"), "partitions": Param(4, type="integer")}  # fmt: skip

# End of job -> task success: a short job against the stand-in endpoint, at the operator's
# default poll interval (10 s), waited for on the worker and in a trigger.
for _dag_id, _deferrable in (("bench_e2s_worker", False), ("bench_e2s_deferred", True)):
    with DAG(_dag_id, schedule=None, start_date=START, params=PARAMS):
        RayLLMBatchOperator(
            task_id="classify", processor_config={**pipeline.http_config("{{ params.url }}", 1, 64)},
            preprocess=pipeline.preprocess, postprocess=pipeline.postprocess, input_uri="{{ params.input }}",
            limit="{{ params.limit }}", output_uri="{{ params.output }}", deferrable=_deferrable,
        )  # fmt: skip


# Seed 003 through the operator: the seed's functions and its config with the default model on CPU.
CHOICES = pipeline.CHOICES


def seed_preprocess(row: dict[str, Any]) -> dict[str, Any]:
    return dict(
        messages=[
            {"role": "system", "content": "You are a helpful assistant that infers company industries. "
             "Based on the company name provided, output only the industry category. "
             f"Choose from: {', '.join(CHOICES)}."},
            {"role": "user", "content": f"What industry is this company in: {row['Company']}"},
        ],
        sampling_params=dict(temperature=0, max_tokens=16, structured_outputs=dict(choice=CHOICES)),
    )  # fmt: skip


def seed_postprocess(row: dict[str, Any]) -> dict[str, Any]:
    return {"inferred_industry": row["generated_text"], **row}


SEED_CONFIG = cpu_vllm_config(batch_size=256, engine_kwargs={"max_model_len": 256, "kv_cache_memory_bytes": 2**30,
                                                              "enforce_eager": True})  # fmt: skip

with DAG("bench_seed003", schedule=None, start_date=START, params=PARAMS):
    RayLLMBatchOperator(
        task_id="classify", processor_config=SEED_CONFIG, preprocess=seed_preprocess, postprocess=seed_postprocess,
        input_uri="{{ params.input }}", limit="{{ params.limit }}", num_partitions="{{ params.partitions }}",
        output_uri="{{ params.output }}", poll_interval=2,
    )  # fmt: skip


# The engine ceiling: the same prompts, engine settings and JSON schema as the direct
# LLM.chat run in benchmarks/engine_ceiling.py (copied here as values: the job gets them
# with the callables, the benchmarks package is not on the cluster).
from benchmarks import engine_ceiling as _ceiling  # noqa: E402

CEILING_SAMPLING = dict(**_ceiling.SAMPLING, structured_outputs=dict(json=_ceiling.SCHEMA))
CEILING_SYSTEM = _ceiling.SYSTEM


def ceiling_preprocess(row: dict[str, Any]) -> dict[str, Any]:
    return dict(messages=[{"role": "system", "content": CEILING_SYSTEM}, {"role": "user", "content": row["text"]}],
                sampling_params=CEILING_SAMPLING)


def ceiling_postprocess(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "answer": row["generated_text"]}


with DAG("bench_engine_ceiling", schedule=None, start_date=START, params=PARAMS):
    RayLLMBatchOperator(
        task_id="classify", processor_config=cpu_vllm_config(), preprocess=ceiling_preprocess,
        postprocess=ceiling_postprocess, input_uri="{{ params.input }}", input_format="jsonl", id_column="id",
        output_uri="{{ params.output }}",
    )  # fmt: skip
