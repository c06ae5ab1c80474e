"""The one loop that waits for a Ray job: run by RayJobTrigger in the triggerer, and by the
operator and sensor on a worker (``wait_sync``), so both paths behave the same.

Per loop: the job's status, its log followed through the dashboard's websocket from a
character offset (never re-read on every poll), the job's pending resource demands (named in
the log within a minute; the job stopped after ``pending_timeout`` when no node can place
them), and the deadline. The loop ends with one ``RayJobEvent``.

When the status cannot be read (docs/lifecycle.md, "When the watcher cannot see the job"):
5xx, 429, a body that is not Ray's and an unreachable dashboard are retried with jittered
exponential backoff for ``retry_budget`` seconds; 401/403/404 and other refusals end the
wait after ``REFUSED_READS`` in a row. A watcher that gives up stops the job it owns (best
effort, saying whether the stop went through) and ends with an error naming the job, the
address and the ``ray job stop`` command; it never leaves a job of its own running silently.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import logging
import random
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from airflow_provider_raydatallm.exceptions import (
    RayAPIError,
    RayClusterUnreachableError,
    RayJobNotFoundError,
    RayProviderError,
)
from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobStatus
from airflow_provider_raydatallm.events import RayJobEvent
from airflow_provider_raydatallm.job.metrics import ERROR_MARKER, RESULT_MARKER
from airflow_provider_raydatallm.relay import LineRelay, choice

# A busy dashboard answers 500 (an aiohttp handler timing out), an ingress 502/503/504, a
# rate limiter 429, while the job itself runs on: retried for this long before giving up.
DEFAULT_RETRY_BUDGET = 300.0
RETRY_DELAY_SECONDS = 1.0  # the first retry; doubled per failure, up to MAX_BACKOFF_SECONDS
RETRY_JITTER = 0.2
# 401/403/404 are asked again this many times in all (a proxy's one-off during a rollout),
# never for the whole budget: a refused token or a missing job does not come back by waiting.
REFUSED_READS = 3
STOP_RETRY_SECONDS = 30.0  # a stop request is retried this long through transient failures
DEMAND_CHECK_SECONDS = 15.0
MAX_BACKOFF_SECONDS = 60.0
LOG_RECONNECT_MAX_SECONDS = 30.0
LOG_RECONNECTS_BEFORE_WARNING = 5
LOG_READ_ATTEMPTS = 3  # the whole log, read once the job ended
# Of one turn of the event loop, the watchers on it take at most about this long (see Turns).
TURN_BUDGET_SECONDS = 0.005
CONNECTS_AT_ONCE = 16  # log streams being opened at once per event loop
STOP_WAIT_SECONDS = 20.0
POLL_JITTER = 0.1
# Once the log shows the job ending, its status is polled every 0.25 s for this long.
STREAM_CLOSED_FAST_POLL_SECONDS = 10.0


# The job's own lines go to the task log through this short-named logger (Airflow shows a
# record's logger name beside it; the operator's or trigger's is ~90 characters). Under
# "airflow.task" it reaches the task log wherever the task runs: a worker, the triggerer (by
# the trigger it was logged under) and dag.test().
RELAYED = logging.getLogger("airflow.task.ray")


class Gate:
    """At most ``size`` holders at once, first come first served. (``asyncio.Semaphore``
    keeps the loop it first waited on: a gate kept per loop would keep its loop alive.)"""

    def __init__(self, size: int) -> None:
        self.free = size
        self.waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    async def __aenter__(self) -> None:
        if self.free > 0 and not self.waiting:
            self.free -= 1
            return
        slot = asyncio.get_running_loop().create_future()
        self.waiting.append(slot)
        try:
            await slot
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled():
                self._hand_over()  # given the slot, then cancelled: the next one has it
            else:
                _discard(self.waiting, slot)
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._hand_over()

    def _hand_over(self) -> None:
        while self.waiting:
            slot = self.waiting.popleft()
            if not slot.done():
                slot.set_result(None)
                return
        self.free += 1


def _discard(queue: collections.deque[Any], item: Any) -> None:
    try:
        queue.remove(item)
    except ValueError:
        pass


class Turns:
    """A budget for the watchers' share of each turn of one event loop.

    A turn of an asyncio loop runs every callback that was ready when it began, back to back.
    When hundreds of watchers wake together (the shared status list answered, a burst of log
    lines, a triggerer starting its triggers at once), their steps, each short, add up to one
    long turn, and every other trigger on the loop waits for all of them. Before a step, a
    watcher awaits :meth:`take`. The first step of a turn starts the turn's clock; once
    ``TURN_BUDGET_SECONDS`` of it are spent, later steps wait in line, and each later turn
    lets the head of the line go, as many as a turn's budget holds (from what a step has cost
    so far), with the loop's other callbacks in between. First come, first served: while
    anyone waits, a new step waits behind them, so a watcher with a long backlog of log lines
    takes its steps in line with the others and holds none of them back for long.
    """

    _of_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Turns] = weakref.WeakKeyDictionary()
    FIRST_STEP_GUESS = 0.0005  # seconds a step costs, before any was measured
    MAX_RELEASED = 64  # waiters let go in one turn at most, whatever the estimate

    def __init__(self) -> None:
        # Nothing here refers to the loop (the key of _of_loop): it goes when its loop goes.
        self.began = 0.0
        self.open = False  # this turn's clock runs
        self.tick_pending = False  # a _tick is scheduled
        self.waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self.released = 0  # let go, not yet run
        self.requeued = 0  # let go but found the turn spent: put back at the head, in order, this turn
        self.step = self.FIRST_STEP_GUESS
        self.last_grant: float | None = None
        # Opening a log stream is a few steps of the websocket library's own (TCP connect, the
        # HTTP upgrade, its answer parsed) that no budget sees: only so many at once.
        self.connecting = Gate(CONNECTS_AT_ONCE)

    @classmethod
    def of_running_loop(cls) -> Turns:
        loop = asyncio.get_running_loop()
        turns = cls._of_loop.get(loop)
        if turns is None:
            turns = cls._of_loop[loop] = cls()
        return turns

    def _schedule_tick(self) -> None:
        if not self.tick_pending:
            self.tick_pending = True
            asyncio.get_running_loop().call_soon(self._tick)  # early in the next turn

    def _tick(self) -> None:
        """A new turn: its clock starts at its next step; the head of the line may go."""
        self.tick_pending = False
        self.open, self.last_grant, self.requeued = False, None, 0
        # Two at least: the second one's start measures the first one's step, so the estimate
        # follows steps that got cheaper even while everyone waits in line.
        release = min(self.MAX_RELEASED, max(2, int(TURN_BUDGET_SECONDS / max(self.step, 1e-6))))
        while self.waiting and release:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self.released += 1
                release -= 1
        if self.waiting:
            self._schedule_tick()  # the rest go in later turns

    def _grant(self, now: float) -> None:
        if not self.open:
            self.open, self.began = True, now
            self._schedule_tick()
        self.last_grant = now

    def _spent(self, now: float) -> bool:
        return self.open and now - self.began >= TURN_BUDGET_SECONDS

    def _measure(self, now: float) -> None:
        """The step let through last in this turn ran until now, about: the estimate follows."""
        if self.last_grant is not None:
            gap = now - self.last_grant
            if gap <= 4 * TURN_BUDGET_SECONDS:  # longer: the loop went idle meanwhile, not a step
                self.step = 0.9 * self.step + 0.1 * min(gap, TURN_BUDGET_SECONDS)
            self.last_grant = None

    async def take(self) -> None:
        now = time.perf_counter()
        self._measure(now)
        if not self.waiting and not self.released and not self._spent(now):
            self._grant(now)
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self.waiting.append(waiter)  # behind those already waiting
        self._schedule_tick()
        while True:
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self.released -= 1  # let go, then cancelled before it ran
                else:
                    _discard(self.waiting, waiter)
                raise
            self.released -= 1
            now = time.perf_counter()
            self._measure(now)  # the one let go before it in this turn ran until now
            if not self._spent(now):
                self._grant(now)
                return
            # Let go, but the steps let go before it spent the turn (their cost was misjudged):
            # back at the head of the line, in order.
            waiter = loop.create_future()
            self.waiting.insert(self.requeued, waiter)
            self.requeued += 1
            self._schedule_tick()


async def take_turn() -> None:
    """Wait, if this turn of the running loop has spent the watchers' budget (``Turns``)."""
    await Turns.of_running_loop().take()


class StatusBoard:
    """The status of every job the triggers of one event loop watch on one Ray connection,
    from one ``GET /api/jobs/`` per half poll interval instead of one request per trigger
    and interval (1,000 deferred tasks polling every 10 s are 100 requests a second; shared,
    two a poll interval, whatever their number).

    A watcher asks :meth:`info` for its job: a snapshot younger than half its poll interval
    answers at once; an older one is refreshed once for every watcher that asks meanwhile
    (one request in flight). A job the list does not show (just submitted, deleted), or a
    list that fails, is None: the watcher reads its job alone, with its own retries and
    verdicts (:class:`ReadFailures`); after a failed list the board answers None without
    asking again for the rest of that half interval. Boards live per event loop, so a
    triggerer's loop and a worker's ``asyncio.run`` never share one.
    """

    _boards: dict[tuple[int, str], StatusBoard] = {}
    # Below this many watchers on a loop and connection each reads its own job: one small
    # GET per poll is cheaper than the whole list (every job the cluster knows) twice.
    SHARE_FROM = 8

    def __init__(self, ray_conn_id: str, hook_class: type = RayHook):
        self.ray_conn_id, self.hook_class = ray_conn_id, hook_class
        self.hook: Any = None
        self.users = 0
        self.jobs: dict[str, Any] = {}
        self.at = float("-inf")  # monotonic time of the snapshot
        self.failed_at = float("-inf")
        self.refreshing: asyncio.Future[None] | None = None
        self.requests = 0  # list requests made (the benchmark reports it)

    @classmethod
    def join(cls, ray_conn_id: str, hook_class: type = RayHook) -> StatusBoard:
        key = (id(asyncio.get_running_loop()), ray_conn_id)
        board = cls._boards.get(key)
        if board is None:
            board = cls._boards[key] = cls(ray_conn_id, hook_class)
        board.users += 1
        return board

    async def leave(self) -> None:
        self.users -= 1
        if self.users > 0:
            return
        for key, board in list(self._boards.items()):
            if board is self:
                del self._boards[key]
        if self.refreshing is not None and not self.refreshing.done():
            self.refreshing.cancel()  # nobody waits for it; its client closes below
            try:
                await self.refreshing
            except BaseException:  # noqa: BLE001 (cancelled, or failed: nobody needs it)
                pass
        if self.hook is not None:
            hook, self.hook = self.hook, None
            try:
                await hook.aclose()
            except Exception:  # noqa: BLE001 (closing an idle client)
                pass

    async def info(self, job_id: str, max_age: float) -> Any:
        """The job's latest status (``RayJobInfo``) no older than ``max_age`` seconds, or None
        (too few watchers to share, the list does not show the job, or it failed)."""
        if self.users < self.SHARE_FROM:
            return None
        now = time.monotonic()
        if now - self.at > max_age:
            if now - self.failed_at < max_age:
                return None
            if self.refreshing is None or self.refreshing.done():
                self.refreshing = asyncio.ensure_future(self._refresh())
            try:
                await asyncio.shield(self.refreshing)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 (the watcher reads its job alone and judges the failure)
                return None
        return self.jobs.get(job_id)

    async def _refresh(self) -> None:
        if self.hook is None:
            self.hook = self.hook_class(ray_conn_id=self.ray_conn_id)
        self.requests += 1
        try:
            listed = await self.hook.alist_jobs()
        except Exception:
            self.failed_at = time.monotonic()
            raise
        jobs: dict[str, Any] = {}
        for job in listed:
            for key in (job.job_id, job.submission_id):
                if key:
                    jobs[key] = job
        self.jobs, self.at = jobs, time.monotonic()


def is_transient(err: Exception) -> bool:
    """A failed read worth repeating: nothing answered, 429, any 5xx (500 included), or an
    answer that is not Ray's JSON (a proxy's error page). Not 401/403/404 or other 4xx."""
    if isinstance(err, RayClusterUnreachableError):
        return True
    if not isinstance(err, RayAPIError) or isinstance(err, RayJobNotFoundError):
        return False
    code = err.status_code
    return code is None or code == 429 or code >= 500


def backoff(failures: int, base: float) -> float:
    return min(MAX_BACKOFF_SECONDS, max(1.0, base) * 2 ** (failures - 1))


def stop_command(job_id: str, address: str) -> str:
    """How a person stops the job by hand (the CLI needs RAY_AUTH_MODE=token and the cluster's
    token when auth is on, as Ray 2.60 has by default)."""
    return f"`ray job stop {job_id} --address {address}`"


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
    restart; ``owns_job``: the watcher may stop the job (the operator's, not the sensor's).
    ``retry_budget``: seconds of failed status reads in a row tolerated (5xx, 429,
    unreachable); ``max_transient_errors``, when set, also caps them by count."""

    poll_interval: float = 10.0
    deadline: float | None = None
    pending_timeout: float | None = None
    fetch_logs: bool | str = True  # True, False or one of relay.LOG_CHOICES
    max_transient_errors: int | None = None
    owns_job: bool = True
    retry_budget: float = DEFAULT_RETRY_BUDGET
    retry_delay: float = RETRY_DELAY_SECONDS
    stop_retry_seconds: float = STOP_RETRY_SECONDS


@dataclass
class ReadFailures:
    """Failed status reads in a row, and whether to give up on them."""

    policy: WaitPolicy
    count: int = 0
    refused: int = 0  # of which the last ones in a row were refusals (401/403/404, other 4xx)
    since: float | None = None

    def reset(self) -> None:
        self.count, self.refused, self.since = 0, 0, None

    def give_up(self, err: Exception) -> str | None:
        """Record one failure: None to retry, else why the watcher gives up."""
        now = time.monotonic()
        self.since = self.since if self.since is not None else now
        self.count += 1
        waited, budget, cap = now - self.since, self.policy.retry_budget, self.policy.max_transient_errors
        if not is_transient(err):
            self.refused += 1
            return f"{self.refused} reads in a row were refused: {err}" if self.refused >= REFUSED_READS else None
        self.refused = 0
        if waited >= budget or (cap is not None and self.count > cap):
            tried = f"{self.count} failed polls in {waited:.0f}s (retry budget {budget:.0f}s)"
            return f"gave up after {tried}; the last: {err}"
        return None

    def delay(self) -> float:
        """Jittered exponential backoff; a transient streak's last try falls on its budget's end.
        A refusal is asked again after ``retry_delay``, no more (it is not expected to pass)."""
        if self.refused:
            return self.policy.retry_delay
        wait = min(MAX_BACKOFF_SECONDS, self.policy.retry_delay * 2 ** (self.count - 1))
        wait *= random.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER)
        return min(wait, max(0.0, (self.since or 0.0) + self.policy.retry_budget - time.monotonic()))


@dataclass(frozen=True)
class StopOutcome:
    """What came of asking Ray to stop a job. ``accepted``: Ray took the request (False: the job
    had already ended; None: the request failed). ``status``: Ray's last word on the job
    ("gone" when it knows no such job, None when it could not be read)."""

    job_id: str
    address: str
    accepted: bool | None
    status: str | None
    error: str = ""

    @property
    def ended(self) -> bool:
        return self.status is not None and self.status != "gone" and RayJobStatus(self.status).is_terminal

    def describe(self) -> str:
        if self.status == "gone":
            elsewhere = stop_command(self.job_id, "<that address>")
            return (
                f"Ray knows no job {self.job_id} at {self.address}, so nothing was stopped there (if it runs "
                f"on another cluster, stop it there: {elsewhere})."
            )
        if self.accepted is None:
            return (
                f"Stopping it failed too ({self.error}): it may still be running, and may commit its output "
                f"unwatched. Stop it yourself: {stop_command(self.job_id, self.address)}."
            )
        if self.status == RayJobStatus.STOPPED.value:
            return "The job was stopped (Ray reports it STOPPED): it commits nothing; the previous output stays."
        if self.ended:
            return f"The job had already ended {self.status}."
        last = self.status or "unknown"
        return (
            f"Ray took the request to stop the job but did not report it STOPPED (last seen {last}): "
            f"check it, and stop it by hand if it still runs: {stop_command(self.job_id, self.address)}."
        )


async def address_of(hook: RayHook) -> str:
    """The dashboard address for messages; never raises."""
    try:
        return (await hook.aconfig()).base_url
    except Exception:  # the connection itself is what failed: name it instead
        return f"the address of connection {hook.ray_conn_id!r}"


async def stop_and_wait(
    hook: RayHook,
    job_id: str,
    log: logging.Logger,
    wait: float = STOP_WAIT_SECONDS,
    retry_for: float = STOP_RETRY_SECONDS,
) -> StopOutcome:
    """Ask Ray to stop a job (transient failures retried for ``retry_for`` seconds), then wait
    (``wait``, bounded) until Ray reports it ended. Never raises for Ray's sake."""
    address = await address_of(hook)
    give_up_at, failures = time.monotonic() + retry_for, 0
    while True:
        try:
            accepted = await hook.astop_job(job_id)
            break
        except RayJobNotFoundError:
            return StopOutcome(job_id, address, None, "gone")
        except RayProviderError as err:
            failures += 1
            if not is_transient(err) or time.monotonic() >= give_up_at:
                log.warning("could not stop Ray job %s at %s: %s", job_id, address, err)
                return StopOutcome(job_id, address, None, None, str(err))
            await asyncio.sleep(min(backoff(failures, 1.0), max(0.0, give_up_at - time.monotonic())))
    deadline = time.monotonic() + wait
    status: str | None = None
    while time.monotonic() < deadline:
        try:
            status = (await hook.aget_job_info(job_id)).status.value
        except RayJobNotFoundError:
            return StopOutcome(job_id, address, accepted, "gone")
        except RayProviderError as err:  # asked to stop all the same; keep looking a while
            log.warning("could not confirm that Ray job %s stopped: %s", job_id, err)
            if not is_transient(err):
                break
        else:
            if RayJobStatus(status).is_terminal:
                break
        await asyncio.sleep(0.5)
    log.info("Asked Ray to stop job %s: it is %s", job_id, status or "unknown")
    return StopOutcome(job_id, address, accepted, status)


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
        share_status: bool = False,
    ) -> None:
        """``share_status``: read the status from the loop's :class:`StatusBoard` (triggers:
        many watchers in one process), else with a request per poll (a worker's one job)."""
        self.hook, self.job_id, self.policy, self.log = hook, job_id, policy, log
        self.share_status = share_status
        self.offset = log_offset
        self.checkpoint = checkpoint
        self._partial = ""
        self.relay = LineRelay(policy.fetch_logs)
        self.following = choice(policy.fetch_logs) != "none"
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
            for line in lines:
                await take_turn()  # a long backlog, or many jobs' lines at once: others run meanwhile
                relayed = self.relay(line)
                if relayed is not None:
                    RELAYED.log(relayed[0], "%s", relayed[1])
                # Line by line: cancelled between two lines (the job ended and _drain took
                # over), the rest is written from here, none twice.
                self.offset = min(self.offset + len(line) + 1, new_offset)
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
                async for chunk in tail_async(await self.hook.aconfig(), self.job_id, Turns.of_running_loop().connecting):
                    failures = 0
                    begin, seen = seen, seen + len(chunk)
                    if seen > start:
                        await self._emit(chunk[max(0, start - begin) :])
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the socket dropped: reconnect, skipping what was shown
                # Reconnect for as long as the wait goes on (the main loop decides when to
                # give up): 1, 2, 4 ... s, then every LOG_RECONNECT_MAX_SECONDS.
                failures += 1
                if failures == LOG_RECONNECTS_BEFORE_WARNING:
                    self.log.warning("following the log of Ray job %s keeps failing (%s); still trying, and "
                                     "the rest of the log is shown when the job ends", self.job_id, err)  # fmt: skip
                await asyncio.sleep(min(LOG_RECONNECT_MAX_SECONDS, backoff(failures, 1.0)))
                continue
            # Ray closed the stream: the job ended, or it had not started (a PENDING job's
            # stream closes at once). Follow again once it runs, so its end shows here.
            try:
                if (await self.hook.aget_job_info(self.job_id)).status.is_terminal:
                    return
            except Exception:  # the main loop reads the status too, and decides about failures
                pass
            early_closes += 1
            await asyncio.sleep(min(self.policy.poll_interval, 0.5 * 2 ** min(early_closes, 6)))

    async def _drain(self, follower: asyncio.Task | None) -> None:
        """After the job ended: stop following (Ray closes the stream a few seconds after the
        end) and read what the task log does not have yet from the whole log, once."""
        if follower is not None and not follower.done():
            follower.cancel()  # not awaited: its socket's closing handshake is not worth waiting for
        for attempt in range(1, LOG_READ_ATTEMPTS + 1):
            try:
                text = await self.hook.aget_job_logs(self.job_id)
                break
            except RayProviderError as err:
                if not is_transient(err) or attempt == LOG_READ_ATTEMPTS:
                    self.log.warning("could not read the end of Ray job %s's log: %s", self.job_id, err)
                    return
                await asyncio.sleep(backoff(attempt, self.policy.retry_delay))
        self._partial = ""
        if len(text) > self.offset:
            await self._emit(text[self.offset :], final=True)

    # -- the loop -----------------------------------------------------------------------------

    def _event(self, status: str, job_status: str | None, message: str) -> RayJobEvent:
        return RayJobEvent(status=status, job_id=self.job_id, job_status=job_status, message=message, log_offset=self.offset)

    async def _status(self, board: StatusBoard | None) -> Any:
        """The job's status: from the shared board when it has the job, else read alone."""
        if board is not None:
            info = await board.info(self.job_id, self.policy.poll_interval / 2)
            await take_turn()  # the list's answer wakes every watcher that waited for it
            if info is not None:
                return info
        return await self.hook.aget_job_info(self.job_id)

    async def run(self) -> RayJobEvent:
        follower = None
        if self.following:
            self.log.info("Ray job %s: its log follows as [ray...] lines (fetch_logs=%r; the whole log: "
                          "the task's 'Ray job' link)", self.job_id, self.policy.fetch_logs)  # fmt: skip
            follower = asyncio.create_task(self._follow())
        board = None
        if self.share_status and getattr(self.hook, "ray_conn_id", None):
            board = StatusBoard.join(self.hook.ray_conn_id, type(self.hook))
        try:
            return await self._loop(follower, board)
        finally:
            if follower is not None and not follower.done():
                follower.cancel()
            if board is not None:
                await board.leave()

    async def _loop(self, follower: asyncio.Task | None, board: StatusBoard | None = None) -> RayJobEvent:
        policy, said = self.policy, ""
        failures = ReadFailures(policy)
        stuck_since: float | None = None
        stream_closed: float | None = None
        next_demand_check = time.monotonic() + min(DEMAND_CHECK_SECONDS, policy.poll_interval)
        while True:
            try:
                # The board's snapshot only while the job runs normally: after a failed read,
                # and in the fast polls at the job's end, the job is read alone.
                shared = board if not failures.count and stream_closed is None else None
                info = await self._status(shared)
            except RayProviderError as err:  # anything else is a bug: let the trigger fail
                why = failures.give_up(err)
                if why is not None:
                    return await self._give_up(why, follower)
                if policy.deadline is not None and time.time() >= policy.deadline:
                    return await self._timed_out()
                delay = failures.delay()
                self.log.warning("reading Ray job %s failed (%d in a row), retrying in %.1fs: %s",
                                 self.job_id, failures.count, delay, err)  # fmt: skip
                await asyncio.sleep(delay)
                continue
            if failures.count:
                self.log.info("reading Ray job %s works again after %d failures; it is %s",
                              self.job_id, failures.count, info.status.value)  # fmt: skip
                failures.reset()
            if info.status.is_terminal:
                if self.following:
                    await self._drain(follower)
                status = "success" if info.status is RayJobStatus.SUCCEEDED else "error"
                return self._event(status, info.status.value, info.message or "")
            now = time.time()
            if policy.deadline is not None and now >= policy.deadline:
                return await self._timed_out()
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
                        await self._stop()
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

    async def _stop(self) -> StopOutcome:
        retry_for = self.policy.stop_retry_seconds
        return await stop_and_wait(self.hook, self.job_id, self.log, min(STOP_WAIT_SECONDS, retry_for), retry_for)

    async def _timed_out(self) -> RayJobEvent:
        if not self.policy.owns_job:
            return self._event("timeout", None, "the timeout passed while the job was still running")
        outcome = await self._stop()
        if outcome.accepted is None and outcome.status != "gone":
            message = f"the task's timeout passed. {outcome.describe()}"
            self.log.error("Ray job %s at %s: %s", self.job_id, outcome.address, message)
            return self._event("timeout", None, message)
        return self._event("timeout", None, "the task's timeout passed: the job was stopped")

    async def _give_up(self, why: str, follower: asyncio.Task | None) -> RayJobEvent:
        """The status cannot be read: stop the job when it is ours (docs/lifecycle.md, "When the
        watcher cannot see the job"), and say everything in the event and the task log."""
        address = await address_of(self.hook)
        lost = f"Lost sight of Ray job {self.job_id} at {address}: {why}"
        if not self.policy.owns_job:
            message = (f"{lost}. The job was left running (this task watches it but did not start it): "
                       f"check it with `ray job status {self.job_id} --address {address}`.")  # fmt: skip
            self.log.error("%s", message)
            return self._event("error", None, message)
        self.log.warning("%s. Stopping it, so it does not run on unwatched.", lost)
        outcome = await self._stop()
        if outcome.ended and not (outcome.accepted and outcome.status == RayJobStatus.STOPPED.value):
            # It ended by itself while the watcher could not see it: that is its result.
            self.log.info("Ray job %s ended %s while its status could not be read", self.job_id, outcome.status)
            if self.following:
                await self._drain(follower)
            status = "success" if outcome.status == RayJobStatus.SUCCEEDED.value else "error"
            return self._event(status, outcome.status, "")
        message = f"{lost}. {outcome.describe()}"
        self.log.error("%s", message)
        return self._event("error", None, message)

    async def _unplaceable(self, job_hex_id: str) -> str:
        try:
            demands = await self.hook.aget_pending_demands(job_hex_id)
        except Exception as err:  # the state API is a diagnostic: never fail the wait on it
            self.log.debug("could not read the pending demands of Ray job %s: %s", self.job_id, err)
            return ""
        return "; ".join(d.describe() for d in demands if not d.placeable)


def stop_sync(hook: RayHook, job_id: str, log: logging.Logger, retry_for: float = 15.0) -> bool | None:
    """Ask Ray to stop a job from a worker (no event loop; on_kill may run inside one), retrying
    transient failures for ``retry_for`` seconds. True: stopped; False: it had already ended;
    None: the request failed (logged with the command to stop it by hand)."""
    give_up_at, failures = time.monotonic() + retry_for, 0
    while True:
        try:
            return hook.stop_job(job_id)
        except RayJobNotFoundError:
            return False
        except RayProviderError as err:
            failures += 1
            if not is_transient(err) or time.monotonic() >= give_up_at:
                address = getattr(err, "address", None) or hook.ray_conn_id
                log.error("Could not stop Ray job %s (%s): it may still be running. Stop it yourself: %s",
                          job_id, err, stop_command(job_id, address))  # fmt: skip
                return None
            time.sleep(min(backoff(failures, 1.0), max(0.0, give_up_at - time.monotonic())))


def wait_sync(hook_conn_id: str, job_id: str, policy: WaitPolicy, log: logging.Logger, log_offset: int = 0) -> RayJobEvent:
    """Run the loop on a worker (no event loop there): the same code the trigger runs."""

    async def main() -> RayJobEvent:
        hook = RayHook(ray_conn_id=hook_conn_id)
        try:
            return await JobWatch(hook, job_id, policy, log, log_offset).run()
        finally:
            await hook.aclose()

    return asyncio.run(main())
