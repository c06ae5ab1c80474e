"""Seed 000's common questions through ray.data.llm on vLLM, as a plain Ray job.

Runs on the cluster (submitted by scripts/demo.py through RayHook); prints one line
``ANSWERS_JSON {...}`` that the demo reads back from the job's log.
"""

from __future__ import annotations

import json
import os
import sys

QUESTIONS = [
    "What is the weather like today?",
    "Tell me a joke.",
    "Give me a motivational quote.",
    "What is 2+2?",
]


def main() -> None:
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    model = os.environ["RAYDLLM_MODEL"]
    config = vLLMEngineProcessorConfig(
        model_source=model,
        engine_kwargs=dict(max_model_len=1024, kv_cache_memory_bytes=2**30, enforce_eager=True),
        # One CPU bundle: the default asks for a GPU and waits forever on a CPU-only cluster.
        placement_group_config=dict(bundles=[{"CPU": 1}]),
        batch_size=16,
        concurrency=1,
    )
    processor = build_processor(
        config,
        preprocess=lambda row: dict(
            messages=[
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": row["item"]},
            ],
            sampling_params=dict(temperature=0.3, max_tokens=60),
        ),
        postprocess=lambda row: dict(question=row["item"], answer=row["generated_text"]),
    )
    rows = processor(ray.data.from_items(QUESTIONS)).take_all()
    print("ANSWERS_JSON " + json.dumps(rows), flush=True)


if __name__ == "__main__":
    sys.exit(main())
