"""
Daily sentiment of social media posts (seeds 000/001, advanced level).

Every day: take that day's posts, split them into partitions that run as parallel mapped
tasks, classify each post as positive, negative or neutral with a choice-constrained vLLM
processor, then write downstream:

- the labelled posts into the Iceberg table ``demo.post_sentiment``, partitioned by ``day``
  and ``part`` (the mapped task's index): each task commits its slice in one atomic
  commit; the catalog is pyiceberg's SQL catalog on SQLite with a local warehouse under
  ``{{ params.output_root }}`` (for your own catalog, pass ``conn_id`` an Airflow ``iceberg``
  connection instead of ``catalog_properties``);
- a per-day summary (posts per label, error rows, throughput) into the SQL table
  ``daily_sentiment`` through the Airflow connection ``params.sql_conn_id`` (any
  DbApiHook database; SQLite at ``{{ params.output_root }}/sentiment.db`` when the
  connection is not defined).

Re-running a day replaces that day's slices of the table and its SQL rows, never adds to
them, so the DAG is catchup-safe; the summary reads the day back through Iceberg (a scan of
the day's partition), not by listing files. The two outputs are Airflow Assets for
data-aware DAGs.

Input: ``{{ params.posts_root }}/{{ run_day(dag_run) }}.jsonl`` (post_id, posted_at, user, text). With
``generate_demo_posts`` (default) a missing day is generated, deterministically, so the
example runs as written; turn it off to read your own export.

Runs as written on this repository's local CPU cluster with the default model. For a GPU
cluster: in ``cpu_vllm_config`` terms, drop ``placement_group_config`` and
``kv_cache_memory_bytes``, set ``model_source``, ``accelerator_type`` (e.g. "L4"),
``concurrency`` (replicas per partition task) and ``engine_kwargs.tensor_parallel_size``;
raise ``num_partitions`` to keep all GPUs busy.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, Asset, Param, task

from airflow_provider_raydatallm.configs import cpu_vllm_config
from airflow_provider_raydatallm.macros import MACROS, run_day
from airflow_provider_raydatallm.operators import RayLLMBatchOperator
from airflow_provider_raydatallm.tables import IcebergTable

# The examples' demo data and paths (demo_helpers.py beside this file), not the provider's API.
from demo_helpers import SENTIMENT_LABELS as LABELS, demo_catalog, examples_dir, sentiment_messages

SENTIMENT_ICEBERG = Asset(name="post_sentiment_iceberg", uri="file:///raydllm/warehouse/demo/post_sentiment")
SENTIMENT_TABLE = Asset(name="daily_sentiment_table", uri="sqlite:///raydllm/daily_sentiment")


# [START howto_sentiment_callables]
def sentiment_request(row: dict[str, Any]) -> dict[str, Any]:
    return dict(
        messages=sentiment_messages(row["text"], LABELS),
        sampling_params=dict(temperature=0, max_tokens=8, structured_outputs=dict(choice=LABELS)),
    )


def sentiment_row(row: dict[str, Any]) -> dict[str, Any]:
    return dict(
        post_id=row["post_id"],
        posted_at=row["posted_at"],
        text=row["text"],
        sentiment=row["generated_text"].strip(),
    )
# [END howto_sentiment_callables]

# [START howto_sentiment_table]
# One slice per day and mapped task: a rerun of the day replaces exactly its tasks' slices.
POST_SENTIMENT = IcebergTable(
    "demo.post_sentiment",
    catalog_properties=demo_catalog("{{ params.output_root }}"),
    partition={"day": "{{ run_day(dag_run) }}", "part": "{{ ti.map_index }}"},
)
# [END howto_sentiment_table]


with DAG(
    "example_daily_sentiment",
    user_defined_macros=MACROS,
    schedule="@daily",
    start_date=dt.datetime(2026, 11, 1),
    catchup=False,
    max_active_runs=1,
    params={
        "posts_root": Param(examples_dir("posts"), type="string"),
        "output_root": Param(examples_dir("daily_sentiment"), type="string"),
        "num_partitions": Param(2, type="integer", minimum=1),
        "generate_demo_posts": Param(True, type="boolean"),
        "posts_per_day": Param(40, type="integer", minimum=1),
        "sql_conn_id": Param("sentiment_db", type="string"),
    },
    tags=["ray", "llm", "example"],
    doc_md=__doc__,
) as dag:

    @task
    def partition_posts(**context: Any) -> list[dict[str, str]]:
        """Split the day's posts into ``num_partitions`` files: one mapped task each."""
        from demo_helpers import drop_stale_parts, partition_day

        p, day = context["params"], run_day(context["dag_run"])
        parts = partition_day(p["posts_root"], p["output_root"], day, p["num_partitions"], p["generate_demo_posts"],
                              p["posts_per_day"], output_dirs=False)  # fmt: skip
        # A rerun with fewer partitions: the day's parts it no longer writes go.
        table = IcebergTable(POST_SENTIMENT.table, catalog_properties=demo_catalog(p["output_root"]))
        dropped = drop_stale_parts(table, day, len(parts))
        if dropped:
            print(f"removed {dropped} rows of {day} in parts this run no longer writes")
        return parts

    # [START howto_operator_sentiment_mapped]
    classify = RayLLMBatchOperator.partial(
        task_id="classify",
        processor_config=cpu_vllm_config(batch_size=32),
        preprocess=sentiment_request,
        postprocess=sentiment_row,
        input_format="jsonl",
        id_column="post_id",
        should_continue_on_error=True,
        output_table=POST_SENTIMENT,
        poll_interval=5,
        outlets=[SENTIMENT_ICEBERG],
    ).expand_kwargs(partition_posts())
    # [END howto_operator_sentiment_mapped]

    @task(outlets=[SENTIMENT_TABLE])
    def write_summary(results: list[dict[str, Any]], **context: Any) -> dict[str, Any]:
        """Read the day's partition back from the Iceberg table, count labels, and replace
        the day's rows in SQL."""
        from demo_helpers import summarize_day

        p = context["params"]
        table = IcebergTable(POST_SENTIMENT.table, catalog_properties=demo_catalog(p["output_root"]))
        summary = summarize_day(results, LABELS, run_day(context["dag_run"]), p["sql_conn_id"], p["output_root"], table)
        print(f"daily sentiment {summary}")
        return summary

    write_summary(classify.output)
