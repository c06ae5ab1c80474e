"""Processor configs for CPU-only Ray clusters (a laptop, CI, this repository's local head).

On GPUs write the ``vLLMEngineProcessorConfig`` out yourself (docs/operators.md): the
defaults here exist only because vLLM's own defaults do not start on a CPU.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

MODEL_ENV = "RAYDLLM_MODEL"


def default_model_path() -> str:
    """``$RAYDLLM_MODEL``, else the SmolLM2-135M-Instruct directory ``make setup`` prepares
    in a checkout of this repository (``.cache/models/SmolLM2-135M-Instruct``)."""
    return os.environ.get(
        MODEL_ENV, str(Path(__file__).resolve().parent.parent / ".cache" / "models" / "SmolLM2-135M-Instruct")
    )


def cpu_vllm_config(**overrides: Any) -> dict[str, Any]:
    """A ``vLLMEngineProcessorConfig``, as the dict ``processor_config`` takes, that runs
    on a CPU-only Ray cluster. The defaults, each replaced by a keyword of the same name:

    - ``model_source``: :func:`default_model_path` (``$RAYDLLM_MODEL`` or the local 135M model)
    - ``engine_kwargs``: ``{"max_model_len": 1024, "gpu_memory_utilization": 0.3,
      "enforce_eager": True}`` (CPU vLLM reserves ``gpu_memory_utilization`` of the memory
      for its KV cache; its 0.92 default does not start beside anything else)
    - ``placement_group_config``: ``{"bundles": [{"CPU": 1}]}`` (the default bundle asks
      for a GPU and would wait for one forever)
    - ``batch_size``: 16; ``concurrency``: 1 (one engine)

    On a GPU cluster drop ``placement_group_config`` and ``gpu_memory_utilization`` and set
    ``accelerator_type``, ``concurrency`` and ``tensor_parallel_size`` for your hardware.
    """
    config: dict[str, Any] = {
        "type": "vLLMEngineProcessorConfig",
        "model_source": default_model_path(),
        "engine_kwargs": {"max_model_len": 1024, "gpu_memory_utilization": 0.3, "enforce_eager": True},
        "placement_group_config": {"bundles": [{"CPU": 1}]},
        "batch_size": 16,
        "concurrency": 1,
    }
    config.update(overrides)
    return config
