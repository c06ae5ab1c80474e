"""The OpenAI request classes of a Ray Serve LLM deployment, loaded where a request is made.

``ray.serve.llm.openai_api_models`` imports the engine's library (vLLM: 7-8 s on a small
node). The batch job's driver only names the classes in the processor's ``dtype_mapping``;
the Serve stage's actor builds the requests. Each class here stands for the class of the
same name in that module: making one makes the real request (``ChatCompletionRequest(**row)``
returns Ray Serve's own ``ChatCompletionRequest``), so the import happens once, in the actor
that sends the requests, and never in the driver.
"""

from __future__ import annotations

from typing import Any, ClassVar

MODULE = "ray.serve.llm.openai_api_models"


class _Request:
    name: ClassVar[str]

    def __new__(cls, **fields: Any) -> Any:
        return real(cls.name)(**fields)


def real(name: str) -> type:
    """The class ``name`` of Ray Serve's OpenAI models (imported on first use)."""
    import importlib

    found = getattr(importlib.import_module(MODULE), name, None)
    if not isinstance(found, type):
        import ray

        raise TypeError(f"{MODULE} of Ray {ray.__version__} has no request class {name!r}: set dtype_mapping in "
                        "processor_config to a class that exists ('module:Class')")  # fmt: skip
    return found


class ChatCompletionRequest(_Request):
    name = "ChatCompletionRequest"


class CompletionRequest(_Request):
    name = "CompletionRequest"


# EmbeddingRequest is a Union of two classes in Ray 2.60, not a class: it is not among the
# defaults, and a dtype_mapping that names it is imported (and refused) in the driver.
BY_NAME: dict[str, type] = {cls.name: cls for cls in (ChatCompletionRequest, CompletionRequest)}
