"""The one loop that waits for a Ray job: run by RayJobTrigger in the triggerer, and by the
operator and sensor on a worker (``wait_sync``), so both paths behave the same.

Per loop: the job's status (transient failures retried with backoff, up to a bound), its
log followed through the dashboard's websocket from a character offset (never re-read on
every poll), the job's pending resource demands (named in the log within a minute; the job
stopped after ``pending_timeout`` when no node can place them), and the deadline. The loop
ends with one ``RayJobEvent``.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from airflow_provider_raydatallm.exceptions import (
    RayAPIError,
    RayAuthenticationError,
    RayClusterUnreachableError,
    RayJobNotFoundError,
)
from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobStatus
from airflow_provider_raydatallm.events import RayJobEvent
from airflow_provider_raydatallm.job.metrics import ERROR_MARKER, RESULT_MARKER

# Ingresses and restarting dashboards answer these while the job itself is fine.
TRANSIENT_STATUS = frozenset({502, 503, 504})
DEMAND_CHECK_SECONDS = 15.0
MAX_BACKOFF_SECONDS = 60.0
YIELD_EVERY_SECONDS = 0.02  # writing a long backlog of log lines yields to the event loop this often
STOP_WAIT_SECONDS = 20.0
POLL_JITTER = 0.1
# Once the log shows the job ending, its status is polled every 0.25 s for this long.
STREAM_CLOSED_FAST_POLL_SECONDS = 10.0


def is_transient(err: Exception) -> bool:
    if isinstance(err, RayClusterUnreachableError):
        return True
    return isinstance(err, RayAPIError) and not isinstance(err, RayJobNotFoundError) and (
        err.status_code is None or err.status_code in TRANSIENT_STATUS
    )


def backoff(failures: int, base: float) -> float:
    return min(MAX_BACKOFF_SECONDS, max(1.0, base) * 2 ** (failures - 1))


def seconds(value: float | timedelta | None) -> float | None:
    """A timeout argument (seconds or a timedelta) as seconds."""
    return value.total_seconds() if isinstance(value, timedelta) else (float(value) if value is not None else None)


def task_deadline(timeout: float | None, execution_timeout: timedelta | None, ti: Any) -> float | None:
    """Wall-clock end of a task's wait: ``timeout`` from now or the task's
    ``execution_timeout``, the earlier. Airflow 3.3 does not apply execution_timeout to a
    deferred task, so the triggers do."""
    deadlines = [time.time() + timeout] if timeout else []
    start = getattr(ti, "start_date", None)
    if execution_timeout and start is not None:
        deadlines.append(start.timestamp() + execution_timeout.total_seconds())
    return min(deadlines) if deadlines else None


def defer_timeout(deadline: float | None) -> timedelta | None:
    """Airflow's own timeout for a deferral waiting until ``deadline``: a minute later, a
    backstop for a trigger that could not run at all. The trigger itself ends first and says
    why (it stops the job or removes the app)."""
    return timedelta(seconds=deadline - time.time() + 60) if deadline else None


@dataclass(frozen=True)
class WaitPolicy:
    """How to wait. ``deadline`` is wall-clock epoch seconds, so it survives a triggerer
    restart; ``owns_job``: the watcher may stop the job (the operator's, not the sensor's)."""

    poll_interval: float = 10.0
    deadline: float | None = None
    pending_timeout: float | None = None
    fetch_logs: bool = True
    max_transient_errors: int = 5
    owns_job: bool = True


async def stop_and_wait(hook: RayHook, job_id: str, log: logging.Logger, wait: float = STOP_WAIT_SECONDS) -> str:
    """Stop a job and wait (bounded) until Ray reports it ended; return its last status."""
    try:
        await hook.astop_job(job_id)
    except RayJobNotFoundError:
        return "gone"
    deadline = time.monotonic() + wait
    status = "RUNNING"
    while time.monotonic() < deadline:
        try:
            status = (await hook.aget_job_info(job_id)).status.value
        except Exception as err:  # still asked to stop; say so and move on
            log.warning("could not confirm that Ray job %s stopped: %s", job_id, err)
            return "unknown"
        if RayJobStatus(status).is_terminal:
            break
        await asyncio.sleep(0.5)
    log.info("Asked Ray to stop job %s: it is %s", job_id, status)
    return status


class JobWatch:
    """Wait for one job; ``checkpoint(offset)`` is awaited before log lines up to ``offset``
    are written, so a restarted watcher (same checkpoint) never writes a line twice."""

    def __init__(
        self,
        hook: RayHook,
        job_id: str,
        policy: WaitPolicy,
        log: logging.Logger,
        log_offset: int = 0,
        checkpoint: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self.hook, self.job_id, self.policy, self.log = hook, job_id, policy, log
        self.offset = log_offset
        self.checkpoint = checkpoint
        self._partial = ""
        self._emit_lock = asyncio.Lock()
        self.ending = asyncio.Event()

    # -- the job log ------------------------------------------------------------------------

    async def _emit(self, text: str, final: bool = False) -> None:
        """Write the complete lines of what arrived (``text`` follows what was received
        before); a trailing partial line waits for its end, unless ``final``."""
        async with self._emit_lock:
            received = self._partial + text
            if final:
                complete, self._partial = received, ""
            else:
                cut = received.rfind("\n") + 1
                complete, self._partial = received[:cut], received[cut:]
            if not complete:
                return
            lines = complete[:-1].split("\n") if complete.endswith("\n") else complete.split("\n")
            if RESULT_MARKER in complete or ERROR_MARKER in complete:
                self.ending.set()  # this provider's job says its last word just before it exits
            new_offset = self.offset + len(complete)
            if self.checkpoint is not None:
                await self.checkpoint(new_offset)
            last_yield = time.monotonic()
            for line in lines:
                self.log.info("[ray job %s] %s", self.job_id, line)
                if time.monotonic() - last_yield > YIELD_EVERY_SECONDS:  # other triggers run meanwhile
                    await asyncio.sleep(0)
                    last_yield = time.monotonic()
            self.offset = new_offset

    async def _follow(self) -> None:
        """Stream the log through the websocket from ``self.offset`` until the job ends."""
        # The first import of the websocket client takes a while: not on the event loop.
        await asyncio.to_thread(importlib.import_module, "websockets.asyncio.client")
        from airflow_provider_raydatallm.hooks._logs_ws import tail_async

        failures = early_closes = 0
        while True:
            seen, start = 0, self.offset + len(self._partial)
            try:
                async for chunk in tail_async(await self.hook.aconfig(), self.job_id):
                    failures = 0
                    begin, seen = seen, seen + len(chunk)
                    if seen > start:
                        await self._emit(chunk[max(0, start - begin) :])
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the socket dropped: reconnect, skipping what was shown
                failures += 1
                if failures > self.policy.max_transient_errors:
                    self.log.warning("stopped following the log of Ray job %s: %s", self.job_id, err)
                    return
                await asyncio.sleep(backoff(failures, 1.0))  # 1, 2, 4 ... s: the log is worth catching up on
                continue
            # Ray closed the stream: the job ended, or it had not started (a PENDING job's
            # stream closes at once). Follow again once it runs, so its end shows here.
            try:
                if (await self.hook.aget_job_info(self.job_id)).status.is_terminal:
                    return
            except Exception:
                return
            early_closes += 1
            await asyncio.sleep(min(self.policy.poll_interval, 0.5 * 2 ** min(early_closes, 6)))

    async def _drain(self, follower: asyncio.Task | None) -> None:
        """After the job ended: stop following (Ray closes the stream a few seconds after the
        end) and read what the task log does not have yet from the whole log, once."""
        if follower is not None and not follower.done():
            follower.cancel()  # not awaited: its socket's closing handshake is not worth waiting for
        try:
            text = await self.hook.aget_job_logs(self.job_id)
        except Exception as err:
            self.log.warning("could not read the end of Ray job %s's log: %s", self.job_id, err)
            return
        self._partial = ""
        if len(text) > self.offset:
            await self._emit(text[self.offset :], final=True)

    # -- the loop -----------------------------------------------------------------------------

    def _event(self, status: str, job_status: str | None, message: str) -> RayJobEvent:
        return RayJobEvent(status=status, job_id=self.job_id, job_status=job_status, message=message, log_offset=self.offset)

    async def run(self) -> RayJobEvent:
        follower = asyncio.create_task(self._follow()) if self.policy.fetch_logs else None
        try:
            return await self._loop(follower)
        finally:
            if follower is not None and not follower.done():
                follower.cancel()

    async def _loop(self, follower: asyncio.Task | None) -> RayJobEvent:
        policy, failures, said = self.policy, 0, ""
        stuck_since: float | None = None
        stream_closed: float | None = None
        next_demand_check = time.monotonic() + min(DEMAND_CHECK_SECONDS, policy.poll_interval)
        while True:
            try:
                info = await self.hook.aget_job_info(self.job_id)
                failures = 0
            except (RayJobNotFoundError, RayAuthenticationError) as err:
                return self._event("error", None, str(err))
            except Exception as err:
                if not is_transient(err):
                    raise
                failures += 1
                if failures > policy.max_transient_errors:
                    return self._event("error", None, f"gave up after {failures} failed polls in a row: {err}")
                self.log.warning("poll %d of Ray job %s failed, retrying: %s", failures, self.job_id, err)
                await asyncio.sleep(backoff(failures, policy.poll_interval))
                continue
            if info.status.is_terminal:
                if policy.fetch_logs:
                    await self._drain(follower)
                status = "success" if info.status is RayJobStatus.SUCCEEDED else "error"
                return self._event(status, info.status.value, info.message or "")
            now = time.time()
            if policy.deadline is not None and now >= policy.deadline:
                if policy.owns_job:
                    await stop_and_wait(self.hook, self.job_id, self.log)
                    return self._event("timeout", None, "the task's timeout passed: the job was stopped")
                return self._event("timeout", None, "the timeout passed while the job was still running")
            if policy.pending_timeout is not None and info.job_id and time.monotonic() >= next_demand_check:
                next_demand_check = time.monotonic() + DEMAND_CHECK_SECONDS
                stuck = await self._unplaceable(info.job_id)
                if stuck:
                    stuck_since = stuck_since or time.monotonic()
                    waited = time.monotonic() - stuck_since
                    if stuck != said:
                        self.log.warning(
                            "Ray job %s waits for resources the cluster cannot give it: %s. It is stopped "
                            "if it still waits after pending_timeout=%.0fs.", self.job_id, stuck, policy.pending_timeout,
                        )  # fmt: skip
                        said = stuck
                    if waited >= policy.pending_timeout and policy.owns_job:
                        await stop_and_wait(self.hook, self.job_id, self.log)
                        return self._event(
                            "unschedulable", None,
                            f"stopped after waiting {waited:.0f}s (pending_timeout) for resources: {stuck}",
                        )  # fmt: skip
                else:
                    stuck_since, said = None, ""
            elif info.status is RayJobStatus.PENDING:
                self.log.info("Ray job %s is PENDING: %s", self.job_id, info.message or "")
            # Jittered, so many watchers in one triggerer do not all wake in the same loop turn.
            sleep = policy.poll_interval * random.uniform(1 - POLL_JITTER, 1 + POLL_JITTER)
            if policy.deadline is not None:
                sleep = max(0.0, min(sleep, policy.deadline - time.time()))
            if stream_closed is not None and time.monotonic() - stream_closed < STREAM_CLOSED_FAST_POLL_SECONDS:
                await asyncio.sleep(min(sleep, 0.25))  # the job is ending: its status follows in a moment
            elif follower is not None and not follower.done():
                # The end shows in the log first: the job's result line, or Ray closing the
                # stream. Poll at once then, instead of waiting out the interval (a job that
                # is still PENDING then polls quickly for a few seconds, no more).
                ending = asyncio.ensure_future(self.ending.wait())
                try:
                    await asyncio.wait({follower, ending}, timeout=sleep, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    ending.cancel()
                if follower.done() or self.ending.is_set():
                    stream_closed = time.monotonic()
            else:
                await asyncio.sleep(sleep)

    async def _unplaceable(self, job_hex_id: str) -> str:
        try:
            demands = await self.hook.aget_pending_demands(job_hex_id)
        except Exception as err:  # the state API is a diagnostic: never fail the wait on it
            self.log.debug("could not read the pending demands of Ray job %s: %s", self.job_id, err)
            return ""
        return "; ".join(d.describe() for d in demands if not d.placeable)


def wait_sync(hook_conn_id: str, job_id: str, policy: WaitPolicy, log: logging.Logger, log_offset: int = 0) -> RayJobEvent:
    """Run the loop on a worker (no event loop there): the same code the trigger runs."""

    async def main() -> RayJobEvent:
        hook = RayHook(ray_conn_id=hook_conn_id)
        try:
            return await JobWatch(hook, job_id, policy, log, log_offset).run()
        finally:
            await hook.aclose()

    return asyncio.run(main())
