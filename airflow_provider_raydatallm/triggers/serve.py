"""RayServeAppTrigger: waits in the triggerer until a Ray Serve application is RUNNING."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_raydatallm import serve_apps
from airflow_provider_raydatallm.hooks.ray import RayHook


class RayServeAppTrigger(BaseTrigger):
    """
    Wait until a Serve application is RUNNING (or failed, timed out, or could not be placed);
    yield one event ``{"status", "app_name", "message", "app_status"}``.

    When the user marks the deferred task failed or success, or clears it, Airflow calls
    :meth:`on_kill`: with ``remove_on_kill`` (the task created the app) the app is removed,
    so a setup task that never finished does not leave replicas holding the cluster's GPUs
    (its teardown would be skipped).

    :param app_name: the Serve application.
    :param config_hash: the config the task deployed; the wait fails if another replaces it.
    :param ray_conn_id: the ``ray`` connection.
    :param poll_interval: seconds between polls.
    :param deadline: wall-clock time (epoch seconds) to give up at.
    :param pending_timeout: seconds replicas may wait for resources no node has.
    :param remove_on_kill: remove the app (if it still runs ``config_hash``) on kill.
    """

    def __init__(
        self,
        app_name: str,
        config_hash: str,
        ray_conn_id: str = RayHook.default_conn_name,
        poll_interval: float = 5.0,
        deadline: float | None = None,
        pending_timeout: float | None = None,
        remove_on_kill: bool = False,
        lease: str | None = None,
    ) -> None:
        super().__init__()
        if not float(poll_interval) > 0:
            raise ValueError(f"RayServeAppTrigger for {app_name}: poll_interval={poll_interval!r} must be > 0")
        self.app_name = app_name
        self.config_hash = config_hash
        self.ray_conn_id = ray_conn_id
        self.poll_interval = float(poll_interval)
        self.deadline = float(deadline) if deadline is not None else None
        self.pending_timeout = float(pending_timeout) if pending_timeout is not None else None
        self.remove_on_kill = remove_on_kill
        self.lease = lease

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "app_name": self.app_name,
                "config_hash": self.config_hash,
                "ray_conn_id": self.ray_conn_id,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
                "pending_timeout": self.pending_timeout,
                "remove_on_kill": self.remove_on_kill,
                "lease": self.lease,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = RayHook(ray_conn_id=self.ray_conn_id)
        policy = serve_apps.AppWait(poll_interval=self.poll_interval, deadline=self.deadline, pending_timeout=self.pending_timeout)
        try:
            event = await serve_apps.wait_running(hook, self.app_name, self.config_hash, policy, self.log)
            yield TriggerEvent(event)
        finally:
            await hook.aclose()

    async def on_kill(self) -> None:
        """The user marked the task failed (or deleted its run): drop the run's lease and
        remove the app this deploy created, unless another run holds a lease on it. Airflow
        also cancels a copy of the trigger that only moved to another triggerer, or a stale
        one, "by user action": the task instance is asked first, and a deploy in any other
        state (deferred, resumed, cleared for another try, marked success: its teardown
        runs) keeps its lease and app, as does one Airflow could not be asked about (its
        lease expires after ``lease_timeout``)."""
        if not (self.remove_on_kill or self.lease):
            return
        # Airflow cancels on_kill again at each sync with its triggerer: it runs to its end.
        self._killing = asyncio.ensure_future(self._abandon_unless_waited_on())
        await asyncio.shield(self._killing)

    async def _abandon_unless_waited_on(self) -> None:
        from airflow_provider_raydatallm.triggers.ray_job import ABSENT, LOOKUP_TIMEOUT_SECONDS, UNKNOWN, _task_state

        # The deploy is over for good only in these states (or its run was deleted); marked
        # success, its teardown runs; cleared, its next try finds the app as it left it.
        LET_GO = {"failed", "upstream_failed", "skipped", "removed", ABSENT}

        ti = getattr(self, "task_instance", None)
        if ti is not None and getattr(ti, "run_id", None):
            try:
                state = await asyncio.wait_for(_task_state(ti), LOOKUP_TIMEOUT_SECONDS)
            except Exception as err:  # noqa: BLE001 (any failure means: cannot tell)
                self.log.warning("could not read the state of the deploy task instance: %r", err)
                state = UNKNOWN
            if state not in LET_GO:
                self.log.info("Trigger cancelled, keeping Serve application %s and this run's lease: the task "
                              "instance is %s (this copy moved to another triggerer or is stale, the task resumed, "
                              "was cleared or marked success: its next try or its teardown takes over)",
                              self.app_name, "unknown to this triggerer" if state == UNKNOWN else state)  # fmt: skip
                return
        hook = RayHook(ray_conn_id=self.ray_conn_id)
        try:
            await serve_apps.abandon(hook, self.app_name, self.lease, self.log, created=self.remove_on_kill,
                                     config_hash=self.config_hash)  # fmt: skip
        finally:
            await hook.aclose()
