"""Turning a Ray job's end into a clear error (its own error line first, then its log tail).

Shared by RayLLMBatchOperator and RayJobSensor. Waiting for the job is ``watch.py``.
"""

from __future__ import annotations

import re

from airflow_provider_raydatallm.exceptions import RayJobFailedError
from airflow_provider_raydatallm.hooks._jobs_api import redact
from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobInfo
from airflow_provider_raydatallm.job.metrics import ERROR_MARKER

TAIL_LINES = 30


def _fetch_log(hook: RayHook, job_id: str) -> tuple[str, str | None]:
    """The job's log and, if it could not be read, why (the failure matters more than its log)."""
    try:
        return hook.get_job_logs(job_id), None
    except Exception as err:
        return "", f"(log unavailable: {err})"


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _tail_of(text: str, secrets: list[str], lines: int = TAIL_LINES) -> str:
    """The end of a job log (secrets redacted, terminal colours removed), with the job's own
    error line first."""
    all_lines = _ANSI.sub("", text).rstrip().splitlines()
    errors = [line for line in all_lines if ERROR_MARKER in line]
    tail = all_lines[-lines:]
    if errors and errors[-1] not in tail:  # shown from its marker (a relayed line may precede it)
        tail = [errors[-1][errors[-1].find(ERROR_MARKER) :], "...", *tail]
    return redact("\n".join(tail), secrets)


def _error_line_of(text: str, secrets: list[str]) -> str:
    # A worker's line Ray relays can be glued before the job's own on one line.
    found = [line[line.find(ERROR_MARKER) + len(ERROR_MARKER) :] for line in text.splitlines() if ERROR_MARKER in line]
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
