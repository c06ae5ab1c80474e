"""The provider's Airflow UI plugin: an "LLM batch runs" page in the nav and a "Ray job" tab on
task instances, both served by a small FastAPI app inside the Airflow API server.

This module is imported by every Airflow process that loads plugins (the DAG processor and
task runners included, for listeners): it imports nothing but the plugin base class. The
FastAPI app is built on first access to ``fastapi_apps``, which only the API server reads.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/raydatallm"
RUNS_ROUTE = "llm-batch-runs"
RAY_JOB_ROUTE = "ray-job"


class _AppOnFirstUse:
    """A class attribute that builds the FastAPI app list when first read."""

    def __init__(self) -> None:
        self._apps: list[dict[str, Any]] | None = None

    def __get__(self, instance: Any, owner: Any) -> list[dict[str, Any]]:
        if self._apps is None:
            from airflow_provider_raydatallm.plugins.app import create_app

            self._apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Ray Data LLM"}]
        return self._apps


class RayDataLLMPlugin(AirflowPlugin):
    name = "raydatallm"
    fastapi_apps = _AppOnFirstUse()  # type: ignore[assignment]
    external_views = [
        {
            "name": "LLM batch runs",
            # Relative to the UI's <base href>: right under an Airflow served at a path prefix too.
            "href": f"{URL_PREFIX.lstrip('/')}/runs",
            "url_route": RUNS_ROUTE,
            "destination": "nav",
            "category": "browse",
        },
        {
            "name": "Ray job",
            "href": f"{URL_PREFIX.lstrip('/')}/ray-job?dag_id={{DAG_ID}}&run_id={{RUN_ID}}&task_id={{TASK_ID}}&map_index={{MAP_INDEX}}",
            "url_route": RAY_JOB_ROUTE,
            "destination": "task_instance",
        },
    ]
