"""
Vision: image questions with a vision language model (seed 004's ``has_image`` example).

NEEDS A GPU CLUSTER and a vision model (here Qwen/Qwen2.5-VL-3B-Instruct on L4 GPUs, as in
the seed): it does not run on this repository's CPU cluster, and its tests only parse it
and validate its config. Input: Parquet rows with ``question`` (str), ``image`` (a struct
with ``bytes``) and ``answer`` (list of choices), e.g. LMMs-Eval-Lite exported to your
bucket. Ray Data passes the PIL image in the message to vLLM.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, Param

from airflow_provider_raydatallm.macros import MACROS
from airflow_provider_raydatallm.operators import RayLLMBatchOperator

# [START howto_vision_config]
VISION_CONFIG = {
    "type": "vLLMEngineProcessorConfig",
    "model_source": "Qwen/Qwen2.5-VL-3B-Instruct",
    "engine_kwargs": dict(
        tensor_parallel_size=1,
        pipeline_parallel_size=1,
        max_model_len=4096,
        enable_chunked_prefill=True,
        max_num_batched_tokens=2048,
    ),
    "runtime_env": dict(env_vars=dict(VLLM_USE_V1="1")),
    "batch_size": 16,
    "accelerator_type": "L4",
    "concurrency": 4,
    "has_image": True,
}
# [END howto_vision_config]

SYSTEM_PROMPT = """Analyze the image and question carefully, using step-by-step reasoning.
First, describe any image provided in detail. Then, present your reasoning. And finally your final answer in this format:
Final Answer: <answer>
where <answer> is:
- The single correct letter choice A, B, C, D, E, F, etc. when options are provided. Only include the letter.
- Your direct answer if no options are given, as a single phrase or number.
- If your answer is a number, only include the number without any unit.
- If your answer is a word or phrase, do not paraphrase or reformat the text you see in the image.
- You cannot answer that the question is unanswerable. You must either pick an option or provide a direct answer.
IMPORTANT: Remember, to end your answer with Final Answer: <answer>."""


def vision_preprocess(row: dict) -> dict:
    from io import BytesIO

    from PIL import Image

    choice_indices = ["A", "B", "C", "D", "E", "F", "G", "H"]
    return dict(
        messages=[
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": row["question"] + "\n\n"},
                    # Ray Data accepts PIL Image or image URL.
                    {"type": "image", "image": Image.open(BytesIO(row["image"]["bytes"]))},
                    {
                        "type": "text",
                        "text": "\n\nChoices:\n"
                        + "\n".join(f"{choice_indices[i]}. {choice}" for i, choice in enumerate(row["answer"])),
                    },
                ],
            },
        ],
        sampling_params=dict(temperature=0.3, max_tokens=150, detokenize=False),
    )


def vision_postprocess(row: dict) -> dict:
    return {"resp": row["generated_text"]}


with DAG(
    "example_vision",
    user_defined_macros=MACROS,
    schedule=None,
    start_date=dt.datetime(2026, 11, 1),
    catchup=False,
    params={
        "images_uri": Param("s3://my-bucket/lmms-eval-lite/coco2017_cap_val/", type="string"),
        "output_root": Param("s3://my-bucket/vision_answers", type="string"),
    },
    tags=["ray", "llm", "example", "gpu"],
    doc_md=__doc__,
) as dag:
    RayLLMBatchOperator(
        task_id="answer_image_questions",
        processor_config=VISION_CONFIG,
        preprocess=vision_preprocess,
        postprocess=vision_postprocess,
        input_uri="{{ params.images_uri }}",
        input_format="parquet",
        output_uri="{{ params.output_root }}/{{ run_day(dag_run) }}",
        should_continue_on_error=True,
        deferrable=True,
    )
