"""
Company industries for the customers dataset (seed 003).

Infers each customer's company industry from the ``Company`` field, constrained to the
seed's CHOICES with vLLM structured outputs. Start with a small sample
(``params.row_limit``), check the labels, then take the scale-up path: raise
``row_limit`` (the seed's dataset has 2,000,000 rows) and ``num_partitions`` (2-4x the
inference replicas), and on a GPU cluster raise ``concurrency`` to the GPUs you have.

Input: the seed's customers CSV (Index, Customer Id, First Name, Last Name, Company, City,
Country, Phone 1, Phone 2, Email, Subscription Date, Website) at ``params.customers_csv``.
With ``generate_demo_customers`` (default) a deterministic file of ``row_limit`` rows is
generated there when missing; nothing is downloaded.

Output: the Delta Lake table ``{{ params.output_root }}/industries``, partitioned by ``day``:
each run replaces its day in one commit to the Delta log (readable by Spark, DuckDB,
Polars, Trino or ``deltalake``); a local path here, ``s3://...`` with ``conn_id`` of an
``aws`` connection (or the Ray nodes' ``AWS_*`` environment) on a real cluster.

GPU cluster: ``model_source="unsloth/Llama-3.1-8B-Instruct"``, ``accelerator_type="L4"``,
``concurrency=4``, ``batch_size=256``, ``engine_kwargs={"max_model_len": 256}`` as in the
seed, and drop the CPU-only ``placement_group_config`` / ``kv_cache_memory_bytes``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_raydatallm.configs import cpu_vllm_config
from airflow_provider_raydatallm.macros import MACROS, run_day
from airflow_provider_raydatallm.operators import RayLLMBatchOperator
from airflow_provider_raydatallm.tables import DeltaTable

# The examples' demo data and paths (demo_helpers.py beside this file), not the provider's API.
from demo_helpers import examples_dir

# For better output token control, restrain generation to these choices
CHOICES = [
    "Law Firm",
    "Healthcare",
    "Technology",
    "Retail",
    "Consulting",
    "Manufacturing",
    "Finance",
    "Real Estate",
    "Other",
]


# [START howto_industries_callables]
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
        sampling_params=dict(
            temperature=0,  # Use 0 for deterministic output
            max_tokens=16,  # Max output tokens. Industry names are short
            structured_outputs=dict(choice=CHOICES),  # Constraint generation
        ),
    )


def postprocess(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "inferred_industry": row["generated_text"],
        **row,  # Include all original columns.
    }
# [END howto_industries_callables]


with DAG(
    "example_customer_industries",
    user_defined_macros=MACROS,
    schedule="@daily",
    start_date=dt.datetime(2026, 11, 1),
    catchup=False,
    params={
        "customers_csv": Param(examples_dir("customers", "customers.csv"), type="string"),
        "output_root": Param(examples_dir("customer_industries"), type="string"),
        "row_limit": Param(100, type="integer", minimum=1, maximum=2_000_000),
        "num_partitions": Param(2, type="integer", minimum=1),
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

    # [START howto_operator_industries]
    classify = RayLLMBatchOperator(
        task_id="classify_industries",
        processor_config=cpu_vllm_config(batch_size=64),
        preprocess=preprocess,
        postprocess=postprocess,
        input_uri="{{ ti.xcom_pull(task_ids='ensure_customers') }}",
        input_format="csv",
        limit="{{ params.row_limit }}",
        num_partitions="{{ params.num_partitions }}",
        id_column="Customer Id",
        output_table=DeltaTable("{{ params.output_root }}/industries", partition={"day": "{{ run_day(dag_run) }}"}),
        should_continue_on_error=True,
        poll_interval=5,
    )
    # [END howto_operator_industries]

    ensure_customers() >> classify
