"""Waiting for a Ray job from a worker, and turning its end into a result or a clear error.

Shared by RayLLMBatchOperator and RayJobSensor in their non-deferred modes and after
they resume from RayJobTrigger.
"""

from __future__ import annotations

import logging
import time

from airflow_provider_raydatallm.exceptions import RayJobFailedError, RayJobTimeoutError
from airflow_provider_raydatallm.hooks._jobs_api import redact
from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobInfo, RayJobStatus

ERROR_MARKER = "RAYDLLM_ERROR "
TAIL_LINES = 30


def _fetch_log(hook: RayHook, job_id: str) -> tuple[str, str | None]:
    """The job's log and, if it could not be read, why (the failure matters more than its log)."""
    try:
        return hook.get_job_logs(job_id), None
    except Exception as err:
        return "", f"(log unavailable: {err})"


def _tail_of(text: str, secrets: list[str], lines: int = TAIL_LINES) -> str:
    """The end of a job log (secrets redacted), with the job's own error line first."""
    all_lines = text.rstrip().splitlines()
    errors = [line for line in all_lines if line.startswith(ERROR_MARKER)]
    tail = all_lines[-lines:]
    if errors and errors[-1] not in tail:
        tail = [errors[-1], "...", *tail]
    return redact("\n".join(tail), secrets)


def _error_line_of(text: str, secrets: list[str]) -> str:
    found = [line[len(ERROR_MARKER) :] for line in text.splitlines() if line.startswith(ERROR_MARKER)]
    return redact(found[-1], secrets) if found else ""


def log_tail(hook: RayHook, job_id: str, lines: int = TAIL_LINES) -> str:
    """The end of the job's log (secrets redacted), with the job's own error line first."""
    text, unavailable = _fetch_log(hook, job_id)
    return unavailable or _tail_of(text, hook.config.secrets(), lines)


def raise_failed(hook: RayHook, info: RayJobInfo) -> None:
    """Raise RayJobFailedError for a job that did not succeed, naming its own error."""
    text, unavailable = _fetch_log(hook, info.id)
    secrets = hook.config.secrets()
    reason = _error_line_of(text, secrets) or (info.message or "no message from Ray")
    tail = unavailable or _tail_of(text, secrets)
    raise RayJobFailedError(hook.address, info.id, info.status.value, reason, tail)


def show_new_logs(hook: RayHook, job_id: str, offset: int, log: logging.Logger) -> int:
    """Log the job's log lines past ``offset``; return the new offset."""
    text = hook.get_job_logs(job_id)
    for line in text[offset:].splitlines():
        log.info("[ray job %s] %s", job_id, line)
    return len(text)


def wait(
    hook: RayHook,
    job_id: str,
    *,
    poll_interval: float,
    timeout: float | None,
    fetch_logs: bool,
    log: logging.Logger,
    log_offset: int = 0,
) -> RayJobInfo:
    """Block until the job ends (streaming its log); stop it and raise on timeout."""
    deadline = time.monotonic() + timeout if timeout is not None else None
    offset = log_offset
    while True:
        info = hook.get_job_info(job_id)
        if fetch_logs:
            offset = show_new_logs(hook, job_id, offset, log)
        if info.status.is_terminal:
            return info
        if deadline is not None and time.monotonic() >= deadline:
            hook.stop_job(job_id)
            raise RayJobTimeoutError(hook.address, job_id, timeout or 0)
        if info.status is RayJobStatus.PENDING and info.message:
            log.info("Ray job %s is PENDING: %s", job_id, info.message)
        time.sleep(poll_interval)
