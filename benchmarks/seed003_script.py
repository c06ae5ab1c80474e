"""Seed 003 as a user writes it by hand (the seed's code; the model, its CPU engine settings
and a local CSV swapped in), for ``ray job submit``: the baseline of benchmarks/overhead.py.

``python seed003_script.py INPUT_CSV LIMIT PARTITIONS OUTPUT_DIR MODEL_PATH``
"""

import sys
from typing import Any

import ray
from ray.data.llm import build_processor, vLLMEngineProcessorConfig

path, limit, num_partitions, output, model = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]

ds = ray.data.read_csv(path)
ds_small = ds.limit(limit)
ds_small = ds_small.repartition(num_blocks=num_partitions)

processor_config = vLLMEngineProcessorConfig(
    model_source=model,
    engine_kwargs=dict(max_model_len=256, kv_cache_memory_bytes=2**30, enforce_eager=True),
    placement_group_config=dict(bundles=[{"CPU": 1}]),
    batch_size=256,
    concurrency=1,
    # As the operator's cpu_vllm_config: the engine tokenizes the prompts itself.
    tokenize_stage=False,
)

CHOICES = ["Law Firm", "Healthcare", "Technology", "Retail", "Consulting", "Manufacturing", "Finance",
           "Real Estate", "Other"]  # fmt: skip


def preprocess(row: dict[str, Any]) -> dict[str, Any]:
    return dict(
        messages=[
            {"role": "system", "content": "You are a helpful assistant that infers company industries. "
             "Based on the company name provided, output only the industry category. "
             f"Choose from: {', '.join(CHOICES)}."},
            {"role": "user", "content": f"What industry is this company in: {row['Company']}"},
        ],
        sampling_params=dict(temperature=0, max_tokens=16, structured_outputs=dict(choice=CHOICES)),
    )  # fmt: skip


def postprocess(row: dict[str, Any]) -> dict[str, Any]:
    return {"inferred_industry": row["generated_text"], **row}


processor = build_processor(processor_config, preprocess=preprocess, postprocess=postprocess)
processed_small = processor(ds_small).materialize()
print(f"Processed {processed_small.count()} rows successfully.")
processed_small.write_parquet(output)
