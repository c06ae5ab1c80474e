"""Export the JSON Schemas of ray.data.llm's processor configs, for the Airflow side to
validate processor_config without importing Ray.

Run with the cluster environment: ``.venv-ray/bin/python scripts/export_processor_schemas.py
[OUT]`` (default: the file the package ships). tests/integration/test_processor_schemas.py
runs it again and fails when the shipped file drifts from the installed Ray.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic.json_schema import GenerateJsonSchema

CONFIGS = ("vLLMEngineProcessorConfig", "SGLangEngineProcessorConfig", "HttpRequestProcessorConfig",
           "ServeDeploymentProcessorConfig")  # fmt: skip
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "airflow_provider_raydatallm" / "schemas" / "ray_data_llm.json"


class _Schema(GenerateJsonSchema):
    """Fields whose type has no JSON form (callables, classes) are accepted as anything."""

    def handle_invalid_for_json_schema(self, schema, error_info):
        return {"x-raydllm-not-json": True}


def _stable(node):
    """Enums Ray builds from sets come out in hash order: sort them so exports compare."""
    if isinstance(node, dict):
        return {k: (sorted(v, key=str) if k == "enum" and isinstance(v, list) else _stable(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_stable(v) for v in node]
    return node


def export() -> dict:
    import ray
    import ray.data.llm as llm

    return {
        "ray_version": ray.__version__,
        "configs": {name: _stable(getattr(llm, name).model_json_schema(schema_generator=_Schema)) for name in CONFIGS},
    }


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(export(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
