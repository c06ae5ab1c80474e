"""The prompt drill's DAG (tests/lifecycle/test_concurrent_recoveries.py). Its prompt comes
from ``prompt.txt`` beside this file, read when the file is parsed: the drill edits it to
change the task's spec, as a user editing a DAG would. In a file of its own, so that edit
changes no other drill's task: a changed prompt is a new spec, and a retry running beside
the drill would start from zero instead of resuming.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param

from airflow_provider_raydatallm.operators import RayLLMBatchOperator

PROMPT_FILE = Path(__file__).with_name("prompt.txt")
PROMPT = PROMPT_FILE.read_text().strip() if PROMPT_FILE.exists() else "Answer briefly."


def preprocess(row: dict[str, Any]) -> dict[str, Any]:
    return {"payload": {"model": "echo", "messages": [
        {"role": "system", "content": PROMPT}, {"role": "user", "content": f"{PROMPT} {row['item']}"}]}}  # fmt: skip


def postprocess(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "item": row["item"], "prompt": PROMPT,
            "answer": row["http_response"]["choices"][0]["message"]["content"]}  # fmt: skip


with DAG("drill_prompt", schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), catchup=False,
         params={"input": Param("", type="string"), "output": Param("", type="string")}):  # fmt: skip
    RayLLMBatchOperator(
        task_id="ask", processor_config={"type": "HttpRequestProcessorConfig", "batch_size": 4, "concurrency": 1,
                                         "max_retries": 0},
        http_conn_id="echo", preprocess=preprocess, postprocess=postprocess, input_uri="{{ params.input }}",
        input_format="jsonl", id_column="id", output_uri="{{ params.output }}", num_partitions=1, deferrable=True,
        poll_interval=2,
    )  # fmt: skip
