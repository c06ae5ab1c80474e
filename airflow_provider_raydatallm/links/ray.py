"""The "Ray Job" extra link: the job's page on the Ray dashboard."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

XCOM_JOB_KEY = "ray_job"


def dashboard_url(address: str, job_id: str) -> str:
    return f"{address.rstrip('/')}/#/jobs/{job_id}"


class RayJobLink(BaseOperatorLink):
    """Link from a task to its Ray job on the dashboard (read from the task's XCom)."""

    name = "Ray Job"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        value = XCom.get_value(ti_key=ti_key, key=XCOM_JOB_KEY)
        url = value.get("dashboard_url") if isinstance(value, dict) else None
        # XCom can be edited through the REST API: only an absolute http(s) URL becomes a link.
        if not isinstance(url, str) or urlsplit(url.strip()).scheme.lower() not in ("http", "https"):
            return ""
        return url.strip()
