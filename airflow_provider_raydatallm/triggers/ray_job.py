"""RayJobTrigger: waits in the triggerer for a Ray job to end, streaming its log meanwhile."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_raydatallm.hooks.ray import RayHook
from airflow_provider_raydatallm.relay import choice
from airflow_provider_raydatallm.watch import (
    DEFAULT_RETRY_BUDGET,
    JobWatch,
    WaitPolicy,
    address_of,
    stop_and_wait,
    stop_command,
    take_turn,
)

# XCom of the deferred task instance holding how much of the job log its task log has:
# a trigger started again (triggerer restart, another triggerer) carries on from there.
LOG_OFFSET_XCOM_KEY = "ray_job_log_offset"
# The operator's record of the job it follows (links.ray.XCOM_JOB_KEY; not imported here: the
# links module pulls in airflow.sdk, too heavy to import on the triggerer's event loop).
RECORD_XCOM_KEY = "ray_job"
START_SPREAD_SECONDS = 1.0
# on_kill asks Airflow about the task instance for at most this long; Airflow gives on_kill
# 30 s in all ([triggerer] on_kill_timeout), the rest is for the stop and its confirmation.
LOOKUP_TIMEOUT_SECONDS = 6.0
ON_KILL_STOP_RETRY_SECONDS = 8.0
ON_KILL_STOP_WAIT_SECONDS = 15.0
UNKNOWN = "<unknown>"  # a lookup that failed: never read as "no state" or "no job"
ABSENT = "<absent>"  # the task instance no longer exists (its run was deleted)


@dataclass(frozen=True)
class KillVerdict:
    """Whether on_kill stops the job, and why (the why goes to the task log)."""

    stop: bool
    reason: str
    certain: bool = True  # False: Airflow could not be asked, so the job is kept to be safe


def kill_verdict(job_id: str, state: str | None, recorded_job: str | None) -> KillVerdict:
    """What a cancelled trigger does to its job, from the task instance's state now and the job
    its current try recorded (XCom ``ray_job``; Airflow clears it when a new try starts).

    Airflow 3.3 cancels a trigger "by user action" also when it only moved to another
    triggerer (a missed heartbeat), and calls on_kill of a duplicate copy: the job is stopped
    only when the task instance has really left this deferral.
    """
    if state == UNKNOWN:
        return KillVerdict(False, "Airflow could not be asked whether the task instance left its deferral", False)
    if state == "deferred":
        if recorded_job not in (None, UNKNOWN, job_id):
            return KillVerdict(True, f"the task instance is deferred on another job ({recorded_job}) of a later try")
        return KillVerdict(
            False,
            "the task instance is still deferred on this job: this copy of the trigger moved to another "
            "triggerer or is a duplicate, and the copy that runs keeps watching it",
        )
    if state == "running":
        if recorded_job in (job_id, UNKNOWN):
            return KillVerdict(
                False, "the task instance is running and follows this job (it resumed, or its try reattached)"
            )
        return KillVerdict(True, "the task instance runs a later try")
    if state == ABSENT:
        return KillVerdict(True, "the task instance no longer exists (its DAG run was deleted)")
    if state is None:
        return KillVerdict(True, "the task instance was cleared")
    return KillVerdict(True, f"the task instance is {state}")


class RayJobTrigger(BaseTrigger):
    """
    Wait for a Ray job to end (``watch.JobWatch``); yield one ``RayJobEvent``.

    When a user marks the deferred task failed or success, or clears it, Airflow calls
    :meth:`on_kill`, which stops the job (only when ``owns_job``) after asking Airflow that the
    task instance really left this deferral: Airflow also calls it on a copy of the trigger
    that only moved to another triggerer, which must not stop the job (:func:`kill_verdict`).
    A triggerer restart does not call it: the trigger starts again and follows the same job.

    :param job_id: job id or submission id of the Ray job.
    :param ray_conn_id: the ``ray`` connection.
    :param poll_interval: seconds between status polls.
    :param deadline: wall-clock time (epoch seconds) after which the job is given up on
        (and stopped, when ``owns_job``); None waits forever. The task's
        ``execution_timeout`` applies too.
    :param pending_timeout: seconds the job may wait for resources no node has before it is
        stopped; None never stops it for that.
    :param fetch_logs: how much of the job's log to copy into the task log, as
        ``RayLLMBatchOperator``'s ``fetch_logs`` (``relay.LOG_CHOICES``).
    :param log_offset: characters of the job log the task log already has.
    :param max_transient_errors: also give up after this many failed status reads in a row
        (None: only ``retry_budget`` bounds them).
    :param owns_job: the task started this job: stop it on kill, timeout, pending_timeout, or
        when the watcher gives up.
    :param retry_budget: seconds of failed status reads in a row (5xx, 429, unreachable) the
        watcher rides out with backoff before it gives up (stopping the job it owns).
    """

    def __init__(
        self,
        job_id: str,
        ray_conn_id: str = RayHook.default_conn_name,
        poll_interval: float = 10.0,
        deadline: float | None = None,
        pending_timeout: float | None = None,
        fetch_logs: bool | str = True,
        log_offset: int = 0,
        max_transient_errors: int | None = None,
        owns_job: bool = True,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
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
        self.max_transient_errors = int(max_transient_errors) if max_transient_errors is not None else None
        self.owns_job = owns_job
        if not float(retry_budget) >= 0:
            raise ValueError(f"RayJobTrigger for job {job_id}: retry_budget={retry_budget!r} must be >= 0")
        self.retry_budget = float(retry_budget)
        self._killing: asyncio.Future[None] | None = None  # on_kill's work, shielded from Airflow's re-cancels

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
                "retry_budget": self.retry_budget,
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
        await take_turn()
        hook = RayHook(ray_conn_id=self.ray_conn_id)
        policy = WaitPolicy(
            poll_interval=self.poll_interval, deadline=self._deadline(), pending_timeout=self.pending_timeout,
            fetch_logs=self.fetch_logs, max_transient_errors=self.max_transient_errors, owns_job=self.owns_job,
            retry_budget=self.retry_budget,
        )  # fmt: skip
        try:
            offset = self.log_offset
            following = choice(self.fetch_logs) != "none"
            if following:
                saved = await self._saved_offset()
                if saved > offset:
                    self.log.info("Carrying on with Ray job %s's log at character %d (what came before is above)",
                                  self.job_id, saved)  # fmt: skip
                    offset = saved
            watch = JobWatch(hook, self.job_id, policy, self.log, offset, self._save_offset if following else None,
                             share_status=True)  # fmt: skip
            event = await watch.run()
            yield TriggerEvent(event.to_payload())
        finally:
            await hook.aclose()

    async def on_kill(self) -> None:
        """Airflow cancelled this trigger "by user action": stop the job it started, unless
        the task instance is still deferred on it (this copy only moved) or follows it again."""
        if not self.owns_job:
            return
        # Airflow 3.3 cancels the trigger's task again at each sync with its triggerer (about
        # once a second) while on_kill runs, which would cut the lookup or the stop short: they
        # run shielded, to their end (bounded by the timeouts below).
        self._killing = asyncio.ensure_future(self._stop_unless_watched())
        await asyncio.shield(self._killing)

    async def _stop_unless_watched(self) -> None:
        hook = RayHook(ray_conn_id=self.ray_conn_id)
        try:
            verdict = await self._kill_verdict()
            if not verdict.stop:
                if not verdict.certain:
                    address = await address_of(hook)
                    self.log.warning(
                        "Not stopping Ray job %s at %s: %s, and a trigger that only moved must not stop it. If the "
                        "task was marked failed or cleared, stop the job yourself: %s", self.job_id, address,
                        verdict.reason, stop_command(self.job_id, address),
                    )  # fmt: skip
                else:
                    self.log.info("Trigger cancelled, not stopping Ray job %s: %s", self.job_id, verdict.reason)
                return
            self.log.info("Stopping Ray job %s: %s", self.job_id, verdict.reason)
            wait, retry_for = ON_KILL_STOP_WAIT_SECONDS, ON_KILL_STOP_RETRY_SECONDS
            outcome = await stop_and_wait(hook, self.job_id, self.log, wait, retry_for)
            self.log.info("%s", outcome.describe())
        finally:
            await hook.aclose()

    async def _kill_verdict(self) -> KillVerdict:
        ti = getattr(self, "task_instance", None)
        if ti is None or not getattr(ti, "run_id", None):  # on_kill called directly, not by a triggerer
            return KillVerdict(True, "on_kill was called for no task instance")
        give_up_at = time.monotonic() + LOOKUP_TIMEOUT_SECONDS
        try:
            state = await asyncio.wait_for(_task_state(ti), LOOKUP_TIMEOUT_SECONDS)
        except Exception as err:  # noqa: BLE001 (any failure means: cannot tell)
            self.log.warning("could not read the state of task instance %s: %r", _ti_name(ti), err)
            state = UNKNOWN
        recorded: str | None = None
        if state in ("deferred", "running"):
            target = self._xcom_target()
            try:
                from airflow.sdk.bases.xcom import BaseXCom

                left = max(0.5, give_up_at - time.monotonic())
                record = await asyncio.wait_for(BaseXCom.aget_one(key=RECORD_XCOM_KEY, **target), left)
                recorded = record.get("submission_id") if isinstance(record, dict) else None
            except Exception as err:  # noqa: BLE001
                self.log.warning("could not read the job of task instance %s: %r", _ti_name(ti), err)
                recorded = UNKNOWN
        return kill_verdict(self.job_id, state, recorded)


def _ti_name(ti: Any) -> str:
    return f"{ti.dag_id}.{ti.task_id} (run {ti.run_id}, map index {getattr(ti, 'map_index', -1)})"


async def _task_state(ti: Any) -> str | None:
    """The task instance's state now, asked of Airflow through the triggerer (the same request
    the standard provider's external task trigger makes); ABSENT when it no longer exists."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    map_index = -1 if getattr(ti, "map_index", None) is None else ti.map_index
    states = await asyncio.to_thread(
        RuntimeTaskInstance.get_task_states,
        dag_id=ti.dag_id, task_ids=[ti.task_id], run_ids=[ti.run_id], map_index=map_index,
    )  # fmt: skip
    in_run = (states or {}).get(ti.run_id) or {}
    key = ti.task_id if map_index < 0 else f"{ti.task_id}_{map_index}"
    if key not in in_run:
        return ABSENT
    state = in_run[key]
    return None if state is None else str(getattr(state, "value", state))
