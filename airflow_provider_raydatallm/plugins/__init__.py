"""The provider's Airflow UI plugin: an "LLM batch runs" page in the nav and a "Ray job" tab on
task instances, both served by a small FastAPI app inside the Airflow API server.

This module is imported by every Airflow process that loads plugins (the DAG processor and
task runners included, for listeners): it imports nothing but the plugin base class (and reads
``[api] base_url`` from the loaded config). The
FastAPI app is built on first access to ``fastapi_apps``, which only the API server reads.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/raydatallm"


def _base_path() -> str:
    """The path of ``[api] base_url`` (``/airflow`` for ``https://host/airflow``): the UI's
    iframes load the views from under it when Airflow is served at a path prefix."""
    from urllib.parse import urlsplit

    try:
        from airflow.configuration import conf

        return urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
    except Exception:  # noqa: BLE001 (no config: served at the root)
        return ""


_BASE_PATH = _base_path()
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
            "href": f"{_BASE_PATH}{URL_PREFIX}/runs",
            "url_route": RUNS_ROUTE,
            "destination": "nav",
            "category": "browse",
        },
        {
            "name": "Ray job",
            "href": f"{_BASE_PATH}{URL_PREFIX}/ray-job?dag_id={{DAG_ID}}&run_id={{RUN_ID}}&task_id={{TASK_ID}}&map_index={{MAP_INDEX}}",
            "url_route": RAY_JOB_ROUTE,
            "destination": "task_instance",
        },
    ]
