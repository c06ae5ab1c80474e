"""Processor and Serve configs for CPU-only Ray clusters (a laptop, CI, this repository's
local head).

On GPUs write the ``vLLMEngineProcessorConfig`` or ``LLMConfig`` out yourself
(docs/operators.md, docs/serve.md): the defaults here exist only because vLLM's own
defaults do not start on a CPU.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

MODEL_ENV = "RAYDLLM_MODEL"
# The model id the Serve config below registers the default model under (OpenAI "model").
DEFAULT_MODEL_ID = "smollm2-135m"


def default_model_path() -> str:
    """``$RAYDLLM_MODEL``, else the SmolLM2-135M-Instruct directory ``make setup`` prepares
    in a checkout of this repository (``.cache/models/SmolLM2-135M-Instruct``). Installed
    from a wheel, with ``RAYDLLM_MODEL`` unset, there is no default: ValueError (at DAG
    parse, not when the job fails on the cluster)."""
    if os.environ.get(MODEL_ENV):
        return os.environ[MODEL_ENV]
    checkout = Path(__file__).resolve().parent.parent
    if not (checkout / "pyproject.toml").exists():
        raise ValueError(
            f"no model to run: set the environment variable {MODEL_ENV} (a path on the Ray nodes or a Hugging Face "
            "id) or pass model_source=... (the default model exists only in a checkout of this repository)"
        )
    return str(checkout / ".cache" / "models" / "SmolLM2-135M-Instruct")


# The KV cache of the CPU configs below: vLLM on CPU allocates and warms all of it at start-up.
CPU_KV_CACHE_BYTES = 2**30


def cpu_vllm_config(**overrides: Any) -> dict[str, Any]:
    """A ``vLLMEngineProcessorConfig``, as the dict ``processor_config`` takes, that runs
    on a CPU-only Ray cluster. The defaults, each replaced by a keyword of the same name:

    - ``model_source``: :func:`default_model_path` (``$RAYDLLM_MODEL`` or the local 135M model)
    - ``engine_kwargs``: ``{"max_model_len": 1024, "kv_cache_memory_bytes": 2**30,
      "enforce_eager": True}``. CPU vLLM allocates and warms its whole KV cache at start-up,
      which costs time with its size (measured here: 1 GiB 0.4 s, 6 GiB 9 s, the 20 GiB
      its default takes of a 24 GiB node 50 s); 1 GiB holds about 46,000 tokens of the
      135M model, 45 prompts of 1,024 tokens at once. Give a larger model more.
    - ``placement_group_config``: ``{"bundles": [{"CPU": 1}]}`` (the default bundle asks
      for a GPU and would wait for one forever)
    - ``batch_size``: 16; ``concurrency``: 1 (one engine)
    - ``tokenize_stage``: ``False``: the engine tokenizes the prompts itself, so a task starts
      one actor process fewer (it loads the tokenizer; on a small CPU node it competes with
      the engine's start). The prompts and token counts are the same. The detokenize stage
      stays: the seeds' ``sampling_params`` ask vLLM for tokens only (``detokenize=False``)
      and take the text from it.

    On a GPU cluster drop ``placement_group_config``, ``kv_cache_memory_bytes`` and the
    stage switch (a separate CPU stage keeps tokenizing off the GPU's actor), and set
    ``accelerator_type``, ``concurrency`` and ``tensor_parallel_size`` for your hardware.
    """
    config: dict[str, Any] = {
        "type": "vLLMEngineProcessorConfig",
        "model_source": overrides["model_source"] if "model_source" in overrides else default_model_path(),
        "engine_kwargs": {"max_model_len": 1024, "kv_cache_memory_bytes": CPU_KV_CACHE_BYTES, "enforce_eager": True},
        "placement_group_config": {"bundles": [{"CPU": 1}]},
        "batch_size": 16,
        "concurrency": 1,
        "tokenize_stage": False,
    }
    config.update(overrides)
    return config


def cpu_serve_llm_config(model_id: str = DEFAULT_MODEL_ID, **overrides: Any) -> dict[str, Any]:
    """A Ray Serve ``LLMConfig``, as the dict ``RayServeLLMDeployOperator(llm_configs=...)``
    takes, that runs on a CPU-only Ray cluster. The defaults, each replaced by a keyword of
    the same name (a whole top-level key at a time):

    - ``model_loading_config``: ``{"model_id": model_id, "model_source": default_model_path()}``
      (``model_id``, ``"smollm2-135m"`` by default, is the name requests use as ``model``)
    - ``engine_kwargs``: ``{"max_model_len": 1024, "kv_cache_memory_bytes": 2**30,
      "enforce_eager": True}`` (as in :func:`cpu_vllm_config`)
    - ``placement_group_config``: ``{"bundles": [{"CPU": 1}]}``
    - ``deployment_config``: ``{"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}``

    On a GPU cluster set ``model_loading_config.model_source`` (a hub id or s3:// path),
    ``accelerator_type`` and ``engine_kwargs.tensor_parallel_size``; drop
    ``placement_group_config`` and ``kv_cache_memory_bytes``; size ``autoscaling_config``
    (docs/serve.md).
    """
    config: dict[str, Any] = {
        "model_loading_config": overrides.get("model_loading_config")
        or {"model_id": model_id, "model_source": default_model_path()},
        "engine_kwargs": {"max_model_len": 1024, "kv_cache_memory_bytes": CPU_KV_CACHE_BYTES, "enforce_eager": True},
        "placement_group_config": {"bundles": [{"CPU": 1}]},
        "deployment_config": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
    }
    config.update(overrides)
    return config
