"""RayJobTrigger: waits in the triggerer for a Ray job to end, streaming its log meanwhile."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_raydatallm.hooks.ray import RayHook
from airflow_provider_raydatallm.watch import JobWatch, WaitPolicy, stop_and_wait

# XCom of the deferred task instance holding how much of the job log its task log has:
# a trigger started again (triggerer restart, another triggerer) carries on from there.
LOG_OFFSET_XCOM_KEY = "ray_job_log_offset"
START_SPREAD_SECONDS = 1.0


class RayJobTrigger(BaseTrigger):
    """
    Wait for a Ray job to end (``watch.JobWatch``); yield one ``RayJobEvent``.

    When a user marks the deferred task failed or success, or clears it, Airflow calls
    :meth:`on_kill`, which stops the job (only when ``owns_job``). A triggerer restart does
    not: the trigger starts again elsewhere and follows the same job.

    :param job_id: job id or submission id of the Ray job.
    :param ray_conn_id: the ``ray`` connection.
    :param poll_interval: seconds between status polls.
    :param deadline: wall-clock time (epoch seconds) after which the job is given up on
        (and stopped, when ``owns_job``); None waits forever. The task's
        ``execution_timeout`` applies too.
    :param pending_timeout: seconds the job may wait for resources no node has before it is
        stopped; None never stops it for that.
    :param fetch_logs: copy the job's log lines into the task log as they come.
    :param log_offset: characters of the job log the task log already has.
    :param max_transient_errors: consecutive unreachable/502/503/504 polls tolerated.
    :param owns_job: the task started this job: stop it on kill, timeout or pending_timeout.
    """

    def __init__(
        self,
        job_id: str,
        ray_conn_id: str = RayHook.default_conn_name,
        poll_interval: float = 10.0,
        deadline: float | None = None,
        pending_timeout: float | None = None,
        fetch_logs: bool = True,
        log_offset: int = 0,
        max_transient_errors: int = 5,
        owns_job: bool = True,
    ) -> None:
        super().__init__()
        if not float(poll_interval) > 0:
            raise ValueError(f"RayJobTrigger for job {job_id}: poll_interval={poll_interval!r} must be > 0")
        self.job_id = job_id
        self.ray_conn_id = ray_conn_id
        self.poll_interval = float(poll_interval)
        self.deadline = float(deadline) if deadline is not None else None
        self.pending_timeout = float(pending_timeout) if pending_timeout is not None else None
        self.fetch_logs = fetch_logs
        self.log_offset = int(log_offset)
        self.max_transient_errors = int(max_transient_errors)
        self.owns_job = owns_job

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_id": self.job_id,
                "ray_conn_id": self.ray_conn_id,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
                "pending_timeout": self.pending_timeout,
                "fetch_logs": self.fetch_logs,
                "log_offset": self.log_offset,
                "max_transient_errors": self.max_transient_errors,
                "owns_job": self.owns_job,
            },
        )

    def _deadline(self) -> float | None:
        """The earlier of ours and the task's execution_timeout (Airflow's trigger timeout):
        past that Airflow drops the trigger without on_kill, so the job is stopped here."""
        timeout_after = getattr(self, "timeout_after", None)
        airflow_deadline = None
        if isinstance(timeout_after, dt.datetime):
            when = timeout_after if timeout_after.tzinfo else timeout_after.replace(tzinfo=dt.timezone.utc)
            airflow_deadline = when.timestamp()
        found = [d for d in (self.deadline, airflow_deadline) if d is not None]
        return min(found) if found else None

    # -- the log offset, kept in the task instance's XCom across trigger restarts -------------

    def _xcom_target(self) -> dict[str, Any] | None:
        ti = getattr(self, "task_instance", None)
        if ti is None or not getattr(ti, "run_id", None):
            return None
        map_index = getattr(ti, "map_index", -1)
        return {"dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id,
                "map_index": -1 if map_index is None else map_index}  # fmt: skip

    async def _saved_offset(self) -> int:
        target = self._xcom_target()
        if target is None:
            return 0
        from airflow.sdk.bases.xcom import BaseXCom

        try:
            value = await BaseXCom.aget_one(key=LOG_OFFSET_XCOM_KEY, **target)
        except Exception as err:  # no XCom access here: show the log from log_offset
            self.log.debug("could not read the saved log offset: %s", err)
            return 0
        return int(value or 0)

    async def _save_offset(self, offset: int) -> None:
        target = self._xcom_target()
        if target is None:
            return
        from airflow.sdk.bases.xcom import BaseXCom

        try:
            await BaseXCom.aset(key=LOG_OFFSET_XCOM_KEY, value=offset, **target)
        except Exception as err:
            self.log.debug("could not save the log offset: %s", err)

    # -- running -----------------------------------------------------------------------------

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # Triggers that start together (a burst of deferred tasks, a triggerer restart) begin
        # within a second of each other instead of all in one turn of the event loop.
        await asyncio.sleep(random.uniform(0, min(START_SPREAD_SECONDS, self.poll_interval)))
        hook = RayHook(ray_conn_id=self.ray_conn_id)
        policy = WaitPolicy(
            poll_interval=self.poll_interval, deadline=self._deadline(), pending_timeout=self.pending_timeout,
            fetch_logs=self.fetch_logs, max_transient_errors=self.max_transient_errors, owns_job=self.owns_job,
        )  # fmt: skip
        try:
            offset = self.log_offset
            if self.fetch_logs:
                saved = await self._saved_offset()
                if saved > offset:
                    self.log.info("Carrying on with Ray job %s's log at character %d (what came before is above)",
                                  self.job_id, saved)  # fmt: skip
                    offset = saved
            watch = JobWatch(hook, self.job_id, policy, self.log, offset, self._save_offset if self.fetch_logs else None)
            event = await watch.run()
            yield TriggerEvent(event.to_payload())
        finally:
            await hook.aclose()

    async def on_kill(self) -> None:
        """The user marked the task failed / success or cleared it: stop the job it started."""
        if not self.owns_job:
            return
        hook = RayHook(ray_conn_id=self.ray_conn_id)
        try:
            await stop_and_wait(hook, self.job_id, self.log)
        finally:
            await hook.aclose()
