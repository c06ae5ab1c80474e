"""Mapped batch tasks and where their outputs go, for tests/unit/test_fault_mapped_output.py.

Every task points at a Ray connection nothing answers: one refused for sharing an output
fails before any call to Ray; one whose output varies with the map index gets past that check
and fails connecting.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG

from airflow_provider_raydatallm.operators import RayLLMBatchOperator

START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
CONFIG = {"type": "vLLMEngineProcessorConfig", "model_source": "/models/smol"}
INPUTS = ["/data/in/a.jsonl", "/data/in/b.jsonl"]
COMMON = {"task_id": "classify", "processor_config": CONFIG, "ray_conn_id": "ray_unreachable", "retries": 0}
PER_INDEX = "/data/out/{{ ds }}/part-{{ ti.map_index }}"

with DAG("mapped_shared_output", schedule=None, start_date=START):
    RayLLMBatchOperator.partial(output_uri="/data/out/{{ ds }}", **COMMON).expand(input_uri=INPUTS)

with DAG("mapped_shared_error_output", schedule=None, start_date=START):
    RayLLMBatchOperator.partial(output_uri=PER_INDEX, error_output_uri="/data/errors/{{ ds }}", **COMMON).expand(
        input_uri=INPUTS
    )

with DAG("mapped_output_per_index", schedule=None, start_date=START):
    RayLLMBatchOperator.partial(output_uri=PER_INDEX, **COMMON).expand(input_uri=INPUTS)

with DAG("mapped_output_expanded", schedule=None, start_date=START):
    RayLLMBatchOperator.partial(input_uri=INPUTS[0], **COMMON).expand(output_uri=["/data/out/a", "/data/out/b"])

# expand() makes every combination: each output is given to both inputs' instances.
with DAG("mapped_output_crossed", schedule=None, start_date=START):
    RayLLMBatchOperator.partial(**COMMON).expand(input_uri=INPUTS, output_uri=["/data/out/a", "/data/out/b"])

with DAG("mapped_output_expand_kwargs", schedule=None, start_date=START):
    RayLLMBatchOperator.partial(**COMMON).expand_kwargs(
        [{"input_uri": uri, "output_uri": uri.replace("/in/", "/out/")} for uri in INPUTS]
    )

with DAG("mapped_shared_output_overwrite", schedule=None, start_date=START):
    RayLLMBatchOperator.partial(output_uri="/data/out/{{ ds }}", overwrite=True, **COMMON).expand(input_uri=INPUTS)
