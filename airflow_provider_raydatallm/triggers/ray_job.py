"""RayJobTrigger: waits in the triggerer for a Ray job to end, streaming its log meanwhile."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_raydatallm.exceptions import (
    RayAPIError,
    RayAuthenticationError,
    RayClusterUnreachableError,
    RayJobNotFoundError,
)
from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobStatus
from airflow_provider_raydatallm.triggers.events import RayJobEvent


class RayJobTrigger(BaseTrigger):
    """
    Poll a Ray job through the hook's async client until it ends; yield one ``RayJobEvent``.

    :param job_id: job id or submission id of the Ray job.
    :param ray_conn_id: the ``ray`` connection.
    :param poll_interval: seconds between status polls.
    :param timeout: seconds to wait (monotonic clock, from the trigger's start); None waits forever.
    :param fetch_logs: copy new job log lines into the task log at every poll.
    :param log_offset: characters of the job log already shown (not shown again).
    :param max_transient_errors: consecutive unreachable/5xx polls tolerated before giving up.
    """

    def __init__(
        self,
        job_id: str,
        ray_conn_id: str = RayHook.default_conn_name,
        poll_interval: float = 10.0,
        timeout: float | None = None,
        fetch_logs: bool = True,
        log_offset: int = 0,
        max_transient_errors: int = 5,
    ) -> None:
        super().__init__()
        self.job_id = job_id
        self.ray_conn_id = ray_conn_id
        self.poll_interval = float(poll_interval)
        self.timeout = float(timeout) if timeout is not None else None
        self.fetch_logs = fetch_logs
        self.log_offset = int(log_offset)
        self.max_transient_errors = int(max_transient_errors)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_id": self.job_id,
                "ray_conn_id": self.ray_conn_id,
                "poll_interval": self.poll_interval,
                "timeout": self.timeout,
                "fetch_logs": self.fetch_logs,
                "log_offset": self.log_offset,
                "max_transient_errors": self.max_transient_errors,
            },
        )

    async def _show_new_logs(self, hook: RayHook, offset: int) -> int:
        text = await hook.aget_job_logs(self.job_id)
        for line in text[offset:].splitlines():
            self.log.info("[ray job %s] %s", self.job_id, line)
        return len(text)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = RayHook(ray_conn_id=self.ray_conn_id)
        deadline = time.monotonic() + self.timeout if self.timeout is not None else None
        offset, failures = self.log_offset, 0
        try:
            while True:
                try:
                    info = await hook.aget_job_info(self.job_id)
                    if self.fetch_logs:
                        offset = await self._show_new_logs(hook, offset)
                    failures = 0
                except (RayJobNotFoundError, RayAuthenticationError) as err:
                    yield self._event("error", None, str(err), offset)
                    return
                except (RayClusterUnreachableError, RayAPIError) as err:
                    failures += 1
                    if failures > self.max_transient_errors:
                        message = f"gave up after {failures} failed polls in a row: {err}"
                        yield self._event("error", None, message, offset)
                        return
                    self.log.warning("poll %d of job %s failed, retrying: %s", failures, self.job_id, err)
                else:
                    if info.status.is_terminal:
                        status = "success" if info.status is RayJobStatus.SUCCEEDED else "error"
                        yield self._event(status, info.status.value, info.message or "", offset)
                        return
                    self.log.info("Ray job %s is %s", self.job_id, info.status.value)
                if deadline is not None and time.monotonic() >= deadline:
                    yield self._event("timeout", None, f"still running after {self.timeout:.0f}s", offset)
                    return
                await asyncio.sleep(self.poll_interval)
        finally:
            await hook.aclose()

    def _event(self, status: str, job_status: str | None, message: str, offset: int) -> TriggerEvent:
        event = RayJobEvent(status=status, job_id=self.job_id, job_status=job_status, message=message, log_offset=offset)
        return TriggerEvent(event.to_payload())
