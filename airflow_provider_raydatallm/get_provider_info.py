"""Provider metadata, found by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_provider_raydatallm import __version__
from airflow_provider_raydatallm.hooks._ui import CONN_FIELDS, UI_FIELD_BEHAVIOUR

INTEGRATION = "Ray Data LLM"


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-raydatallm",
        "name": "Ray Data LLM",
        "description": "Run `Ray Data LLM <https://docs.ray.io/en/latest/data/working-with-llms.html>`__ "
        "batch inference (vLLM, SGLang, OpenAI-compatible endpoints, Serve deployments) on a Ray "
        "cluster as Airflow tasks.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://docs.ray.io/en/latest/data/working-with-llms.html",
                "tags": ["software"],
            }
        ],
        "hooks": [{"integration-name": INTEGRATION, "python-modules": ["airflow_provider_raydatallm.hooks.ray"]}],
        "operators": [
            {
                "integration-name": INTEGRATION,
                "python-modules": ["airflow_provider_raydatallm.operators.batch", "airflow_provider_raydatallm.operators.serve"],
            }
        ],
        "sensors": [{"integration-name": INTEGRATION, "python-modules": ["airflow_provider_raydatallm.sensors.ray_job"]}],
        "triggers": [
            {
                "integration-name": INTEGRATION,
                "python-modules": ["airflow_provider_raydatallm.triggers.ray_job", "airflow_provider_raydatallm.triggers.serve"],
            }
        ],
        "extra-links": ["airflow_provider_raydatallm.links.ray.RayJobLink"],
        "config": {
            "raydatallm": {
                "description": "Options of the Ray Data LLM provider.",
                "options": {
                    "namespace": {
                        "description": "This Airflow deployment's name on shared Ray clusters: job ids, job metadata "
                        "and the owner of each output carry it, and a deployment reattaches to, adopts and stops "
                        "only its own jobs. The ray connection's extra 'namespace' wins over it. Unset: a hash of "
                        "the metadata database's address (without its password).",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "prod",
                        "default": "",
                    }
                },
            }
        },
        "connection-types": [
            {
                "connection-type": "ray",
                "hook-class-name": "airflow_provider_raydatallm.hooks.ray.RayHook",
                "hook-name": "Ray",
                "conn-fields": CONN_FIELDS,
                "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
            }
        ],
    }
