"""A Serve batch job's driver names the OpenAI request classes without importing them: Ray's
``openai_api_models`` imports vLLM (seconds on a small node), and only the Serve stage's
actor makes requests. Run in the cluster environment (.venv-ray), on Ray's own config class."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RAY_PYTHON = ROOT / ".venv-ray" / "bin" / "python"

CHECK = r"""
import json, pickle, sys
import ray.cloudpickle as cloudpickle
from airflow_provider_raydatallm.job.processor import build_config
from airflow_provider_raydatallm.job.spec import ProcessorSpec

# A user's own module, named like Ray's, with a request class of the same name.
import types
sys.modules["mycorp"] = types.ModuleType("mycorp")
sys.modules["mycorp.openai_api_models"] = own = types.ModuleType("mycorp.openai_api_models")
own.ChatCompletionRequest = type("ChatCompletionRequest", (), {"__module__": "mycorp.openai_api_models"})

spec = ProcessorSpec(type="ServeDeploymentProcessorConfig",
                     kwargs={"deployment_name": "LLMServer:m", "app_name": "a", "batch_size": 4})
config = build_config(spec, False)
named = build_config(spec.model_copy(update={"kwargs": {**spec.kwargs, "dtype_mapping": {
    "Chat": "ChatCompletionRequest", "Mine": "ray.serve.llm.openai_api_models:CompletionRequest",
    "Own": "mycorp.openai_api_models:ChatCompletionRequest"}}}), False)
before = "vllm" in sys.modules
# What the stage's actor gets: the classes travel by reference, then make real requests.
shipped = cloudpickle.loads(cloudpickle.dumps(config.dtype_mapping))
request = shipped["ChatCompletionRequest"](model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
print(json.dumps({
    "type": type(config).__name__, "names": sorted(config.dtype_mapping), "vllm_before": before,
    "named": {k: v.__module__ + ":" + v.__name__ for k, v in named.dtype_mapping.items()},
    "request": type(request).__module__ + ":" + type(request).__name__, "max_tokens": request.max_tokens,
    "vllm_after": "vllm" in sys.modules,
}))
try:
    shipped["ChatCompletionRequest"](model="m", messages="not a list of messages")
except Exception as err:
    print(json.dumps({"invalid": type(err).__name__}))
"""


@pytest.mark.integration
def test_the_driver_names_serve_request_classes_and_the_actor_makes_real_requests():
    out = subprocess.run([str(RAY_PYTHON), "-c", CHECK], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    report, invalid = lines[-2], lines[-1]
    stand_in = "airflow_provider_raydatallm.job.requests:"
    assert report["type"] == "ServeDeploymentProcessorConfig" and report["vllm_before"] is False
    assert report["names"] == ["ChatCompletionRequest", "CompletionRequest"]
    # A class of the user's own, even one named like Ray's, is imported as given.
    assert report["named"] == {"Chat": stand_in + "ChatCompletionRequest", "Mine": stand_in + "CompletionRequest",
                               "Own": "mycorp.openai_api_models:ChatCompletionRequest"}
    # The real class, with the engine's library loaded only now, where requests are made.
    assert report["request"] == "ray.serve.llm.openai_api_models:ChatCompletionRequest"
    assert report["max_tokens"] == 3 and report["vllm_after"] is True
    assert invalid == {"invalid": "ValidationError"}
