"""The Ray Jobs REST API's shapes: job status and info, request bodies, error mapping.

Pure functions shared by the hook's sync and async paths, so both behave the same.
Endpoints (Ray dashboard, 2.x):

- ``POST /api/jobs/`` submit -> ``{"job_id", "submission_id"}``
- ``GET /api/jobs/`` list; ``GET /api/jobs/{id}`` info; ``GET /api/jobs/{id}/logs`` -> ``{"logs"}``
- ``POST /api/jobs/{id}/stop`` -> ``{"stopped"}``; ``DELETE /api/jobs/{id}`` -> ``{"deleted"}``
- ``WS /api/jobs/{id}/logs/tail`` streams log text; ``GET /api/version`` -> ``{"ray_version"}``
- ``GET|PUT /api/packages/gcs/{name}.zip`` checks / uploads a ``working_dir`` package
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_raydatallm.exceptions import (
    RayAPIError,
    RayAuthenticationError,
    RayJobAlreadyExistsError,
    RayJobNotFoundError,
    RayJobSubmissionError,
)

JOBS_PATH = "/api/jobs/"
VERSION_PATH = "/api/version"
# Error bodies from the dashboard can be whole tracebacks: keep the end, which says why.
MAX_ERROR_BODY = 600


class RayJobStatus(str, enum.Enum):
    """Status of a Ray job, as the Jobs API reports it."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({RayJobStatus.STOPPED, RayJobStatus.SUCCEEDED, RayJobStatus.FAILED})


@dataclass(frozen=True)
class RayJobInfo:
    """One job as the Jobs API describes it (times are epoch milliseconds, as Ray gives them)."""

    job_id: str | None
    submission_id: str | None
    status: RayJobStatus
    entrypoint: str = ""
    message: str | None = None
    error_type: str | None = None
    start_time: int | None = None
    end_time: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    driver_exit_code: int | None = None

    @property
    def id(self) -> str:
        """The id to address the job by: its submission id, else its job id."""
        return self.submission_id or self.job_id or ""

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> RayJobInfo:
        return cls(
            job_id=data.get("job_id"),
            submission_id=data.get("submission_id"),
            status=RayJobStatus(data["status"]),
            entrypoint=data.get("entrypoint") or "",
            message=data.get("message"),
            error_type=data.get("error_type"),
            start_time=data.get("start_time"),
            end_time=data.get("end_time"),
            metadata=dict(data.get("metadata") or {}),
            driver_exit_code=data.get("driver_exit_code"),
        )


def job_path(job_id: str, suffix: str = "") -> str:
    if not job_id or "/" in job_id:
        raise ValueError(f"invalid Ray job id {job_id!r}")
    return f"{JOBS_PATH}{job_id}{suffix}"


def submit_body(
    entrypoint: str,
    *,
    submission_id: str | None = None,
    runtime_env: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
    entrypoint_num_cpus: float | None = None,
    entrypoint_num_gpus: float | None = None,
    entrypoint_memory: int | None = None,
    entrypoint_resources: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The JSON body of ``POST /api/jobs/``; unset options are left out so Ray's defaults apply."""
    if not entrypoint or not entrypoint.strip():
        raise ValueError("a Ray job needs a non-empty entrypoint command")
    body: dict[str, Any] = {"entrypoint": entrypoint}
    optional = {
        "submission_id": submission_id,
        "runtime_env": dict(runtime_env) if runtime_env else None,
        "metadata": {str(k): str(v) for k, v in metadata.items()} if metadata else None,
        "entrypoint_num_cpus": entrypoint_num_cpus,
        "entrypoint_num_gpus": entrypoint_num_gpus,
        "entrypoint_memory": entrypoint_memory,
        "entrypoint_resources": dict(entrypoint_resources) if entrypoint_resources else None,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


def merge_runtime_env(default: Mapping[str, Any], override: Mapping[str, Any] | None) -> dict[str, Any]:
    """The connection's default runtime_env with the job's own on top: ``env_vars`` merge by
    variable, ``py_modules`` lists join (the job's last), other keys are replaced."""
    merged = dict(default)
    for key, value in (override or {}).items():
        if key == "env_vars" and isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **value}
        elif key == "py_modules" and isinstance(value, list) and isinstance(merged.get(key), list):
            merged[key] = [m for m in merged[key] if m not in value] + list(value)
        else:
            merged[key] = value
    return merged


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_ERROR_BODY else "..." + text[-MAX_ERROR_BODY:]


def raise_for_response(
    *,
    status_code: int,
    body: str,
    address: str,
    secrets: Iterable[str],
    job_id: str | None = None,
    submitting: bool = False,
) -> None:
    """Raise the typed error for a non-2xx answer of the dashboard; return on success."""
    if 200 <= status_code < 300:
        return
    detail = redact(_tail(body), secrets)
    if status_code in (401, 403):
        raise RayAuthenticationError(address, status_code, detail)
    if status_code == 404 and job_id is not None and not submitting:
        raise RayJobNotFoundError(address, job_id)
    # Ray answers a duplicate submission_id with HTTP 500 and a traceback ending in this text.
    if submitting and job_id and "already exists" in body:
        raise RayJobAlreadyExistsError(address, job_id)
    if submitting:
        raise RayJobSubmissionError(address, f"submission rejected: {detail}", status_code, job_id)
    raise RayAPIError(address, detail or "empty response body", status_code, job_id)


def parse_json(text: str, *, address: str, what: str, secrets: Iterable[str]) -> Any:
    """Decode a JSON body, or say plainly that the address does not look like a Ray dashboard."""
    import json

    try:
        return json.loads(text)
    except ValueError:
        snippet = redact(text.strip()[:120], secrets)
        raise RayAPIError(
            address,
            f"expected JSON from {what} but got {snippet!r}: is this address a Ray dashboard "
            "(default port 8265)?",
        ) from None
