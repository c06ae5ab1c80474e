"""The processor: the user's ``ray.data.llm`` config built on the cluster, with secrets
resolved and the seeds' older field names translated (the only place that reads them)."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from airflow_provider_raydatallm.job.spec import ProcessorSpec, SecretRef

log = logging.getLogger("raydllm.job")


class JobConfigError(ValueError):
    """The spec's processor config or callables are not usable on this cluster."""


def resolve_secret(ref: SecretRef, shipped: dict[str, str]) -> str:
    """The value behind a secret reference: an environment variable here, or a shipped value."""
    value = os.environ.get(ref.name) if ref.source == "env" else shipped.get(ref.name)
    if not value:
        where = (f"the environment variable {ref.name} on the Ray nodes" if ref.source == "env"
                 else f"the shipped secret {ref.name}")  # fmt: skip
        raise JobConfigError(f"{where} is not set (a header of the processor config needs it)")
    return ref.prefix + value


def build_config(spec: ProcessorSpec, continue_on_error: bool, secrets: dict[str, str] | None = None) -> Any:
    import ray.data.llm as llm

    cls = getattr(llm, spec.type, None)
    if cls is None:
        raise JobConfigError(f"ray.data.llm on this cluster has no {spec.type} (Ray {ray_version()})")
    kwargs = dict(spec.kwargs)
    fields = getattr(cls, "model_fields", {})
    # The seeds' has_image=True became prepare_multimodal_stage in newer Ray releases.
    if "has_image" in kwargs and "has_image" not in fields and "prepare_multimodal_stage" in fields:
        kwargs.setdefault("prepare_multimodal_stage", kwargs.pop("has_image"))
        log.info("has_image is prepare_multimodal_stage on Ray %s: translated", ray_version())
    if spec.type == "ServeDeploymentProcessorConfig":
        kwargs["dtype_mapping"] = request_classes(kwargs.get("dtype_mapping"))
    for header, ref in spec.secret_headers.items():
        kwargs["headers"] = {**(kwargs.get("headers") or {}), header: resolve_secret(ref, secrets or {})}
    if continue_on_error and "should_continue_on_error" in getattr(cls, "model_fields", {}):
        kwargs.setdefault("should_continue_on_error", True)
    try:
        return cls(**kwargs)
    except Exception as err:  # pydantic's ValidationError: the same shape as the Airflow side's check
        details = getattr(err, "errors", None)
        if callable(details):
            found = "; ".join(
                "processor_config" + "".join(f".{p}" for p in e.get("loc", ())) + f": {e.get('msg')}" for e in details()
            )
        else:
            found = f"{type(err).__name__}: {err}"
        raise JobConfigError(
            f"processor_config is not a valid {spec.type} (Ray {ray_version()}): {found}"
        ) from None


def request_classes(names: dict[str, str] | None) -> dict[str, Any]:
    """dtype_mapping as classes: ``"module:Class"`` imported; Ray Serve's chat and
    completion request classes (``ray.serve.llm.openai_api_models``), by bare name or by
    default, as the stand-ins of job/requests.py, which import that module only in the Serve
    stage's actor, where the requests are made (it imports the engine's library)."""
    import importlib

    from airflow_provider_raydatallm.job import requests

    if not names:
        return dict(requests.BY_NAME)
    classes = {}
    for key, path in names.items():
        module, _, attr = path.rpartition(":")
        # A bare name, or Ray's own class (a class given on the Airflow side ships as its
        # module path: ray.serve.llm.openai_api_models or Ray's internal one).
        if attr in requests.BY_NAME and (not module or (module.startswith("ray.") and module.endswith(".openai_api_models"))):
            classes[key] = requests.BY_NAME[attr]
            continue
        try:
            target = importlib.import_module(module or requests.MODULE)
            for part in attr.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as err:
            raise JobConfigError(f"processor_config.dtype_mapping[{key!r}]={path!r} cannot be imported here: {err}") from None
        classes[key] = target
    return classes


def build_processor(config: Any, preprocess: Any, postprocess: Any) -> Any:
    # The stage modules load in one thread at a time: wait for the prewarm's import.
    for thread in _PREWARM:
        thread.join()
    import ray.data.llm as llm

    # build_processor since Ray 2.5x; the seeds' build_llm_processor on older releases.
    build = getattr(llm, "build_processor", None) or getattr(llm, "build_llm_processor")
    return build(config, preprocess=preprocess, postprocess=postprocess)


# The ray.data.llm stages each processor builds: their modules import the engine's library
# (vLLM: several seconds), which the driver needs only to build the processor.
_STAGES = {
    "vLLMEngineProcessorConfig": ("ChatTemplateStage", "TokenizeStage", "vLLMEngineStage"),
    "SGLangEngineProcessorConfig": ("ChatTemplateStage", "TokenizeStage", "SGLangEngineStage"),
}


def prewarm(processor_type: str) -> threading.Thread | None:
    """Import the processor's stage modules in a background thread, so the driver's lock,
    pre-flight and input count overlap them; building the processor later finds them
    loaded (or waits for the import under Python's import lock). Best effort: a failure
    here is the build's to report."""
    names = _STAGES.get(processor_type)
    if not names:
        return None

    def load() -> None:
        try:
            from ray.llm._internal.batch import stages

            for name in names:
                getattr(stages, name)
        except Exception:  # noqa: BLE001 (the build imports them again and names the error)
            pass

    thread = threading.Thread(target=load, name="raydllm-prewarm", daemon=True)
    thread.start()
    _PREWARM.append(thread)
    return thread


_PREWARM: list[threading.Thread] = []


def ray_version() -> str:
    import ray

    return ray.__version__


def max_concurrency(config: Any) -> int:
    concurrency = getattr(config, "concurrency", 1) or 1
    return max(concurrency) if isinstance(concurrency, (tuple, list)) else int(concurrency)
