"""
Date reformatting (seed 004): ``Subscription Date`` (YYYY-MM-DD) -> ``MM-DD-YYYY``.

The seed's preprocess and postprocess with its sampling params (temperature 0.3, up to
150 tokens). A small model often answers in a sentence rather than the bare date, so a
downstream task counts how many answers contain a well-formed MM-DD-YYYY date equal to
the input and reports it; the generated text is kept as ``resp``.

Runs as written on the local CPU cluster with the default model. GPU cluster: the seed's
config is ``model_source="unsloth/Llama-3.1-8B-Instruct"``, ``engine_kwargs`` with
``max_model_len=4096, enable_chunked_prefill=True, max_num_batched_tokens=1024,
gpu_memory_utilization=0.85``, ``batch_size=256, accelerator_type="L4", concurrency=4``.
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


# [START howto_dates_callables]
# Preprocess function prepares `messages` and `sampling_params` for vLLM engine, and
# all other fields will be ignored.
def preprocess(row: dict[str, Any]) -> dict[str, Any]:
    return dict(
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {
                "role": "user",
                "content": f"Convert this date:\n{row['Subscription Date']}\n\n as the format:MM-DD-YYYY",
            },
        ],
        sampling_params=dict(temperature=0.3, max_tokens=150, detokenize=False),
    )


# Input row of postprocess function will have `generated_text`.
def postprocess(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "resp": row["generated_text"],
        **row,  # This will return all the original columns in the dataset.
    }
# [END howto_dates_callables]


with DAG(
    "example_date_reformat",
    user_defined_macros=MACROS,
    schedule="@daily",
    start_date=dt.datetime(2026, 11, 1),
    catchup=False,
    params={
        "customers_csv": Param(examples_dir("customers", "customers.csv"), type="string"),
        "output_root": Param(examples_dir("date_reformat"), type="string"),
        "row_limit": Param(20, type="integer", minimum=1, maximum=2_000_000),
        "generate_demo_customers": Param(True, type="boolean"),
    },
    tags=["ray", "llm", "example"],
    doc_md=__doc__,
) as dag:

    @task
    def ensure_customers(**context: Any) -> str:
        from demo_helpers import ensure_customers_csv

        params = context["params"]
        return ensure_customers_csv(params["customers_csv"], params["row_limit"], params["generate_demo_customers"])

    reformat = RayLLMBatchOperator(
        task_id="reformat_dates",
        processor_config=cpu_vllm_config(batch_size=64),
        preprocess=preprocess,
        postprocess=postprocess,
        input_uri="{{ ti.xcom_pull(task_ids='ensure_customers') }}",
        input_format="csv",
        input_columns=["Customer Id", "Subscription Date"],
        limit="{{ params.row_limit }}",
        id_column="Customer Id",
        output_uri="{{ params.output_root }}/{{ run_day(dag_run) }}",
        should_continue_on_error=True,
        poll_interval=5,
    )

    @task
    def check_dates(result: dict[str, Any]) -> dict[str, Any]:
        """Count answers holding the input date as MM-DD-YYYY (reported, not enforced)."""
        import re

        from airflow_provider_raydatallm.reading import read_committed

        # Only the committed version: the files the output's _SUCCESS manifest names.
        rows = read_committed(result["output_uri"], columns=["Subscription Date", "resp"]).to_pylist()
        correct = 0
        for row in rows:
            day = row["Subscription Date"]
            expected = day.strftime("%m-%d-%Y") if hasattr(day, "strftime") else dt.date.fromisoformat(str(day)).strftime("%m-%d-%Y")
            correct += expected in re.findall(r"\b\d{2}-\d{2}-\d{4}\b", row["resp"] or "")
        report = {"rows": len(rows), "mm_dd_yyyy_correct": correct, "errors": result["metrics"]["error_rows"]}
        print(f"date reformatting: {report}")
        return report

    ensure_customers() >> reformat
    check_dates(reformat.output)
