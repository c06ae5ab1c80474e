"""RayJobSensor: wait for a Ray job (e.g. one submitted with wait_for_completion=False)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue, conf
from airflow.sdk.exceptions import AirflowSensorTimeout
from airflow_provider_raydatallm import outcome
from airflow_provider_raydatallm.exceptions import RayProviderError
from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobStatus
from airflow_provider_raydatallm.job.metrics import find_result
from airflow_provider_raydatallm.links.ray import RayJobLink
from airflow_provider_raydatallm.operators._checks import ArgumentChecker
from airflow_provider_raydatallm.events import validate_event

if TYPE_CHECKING:
    from airflow.sdk import Context


class RayJobSensor(BaseSensorOperator):
    """
    Succeed when a Ray job SUCCEEDED; fail with its log tail when it FAILED or was STOPPED.

    Returns (XCom) the job's status and, for a job of RayLLMBatchOperator, its output URIs
    and metrics.

    :param job_id: job id or submission id; templated, e.g.
        ``"{{ ti.xcom_pull(task_ids='submit')['submission_id'] }}"``.
    :param ray_conn_id: the ``ray`` connection.
    :param deferrable: wait in the triggerer; default ``[operators] default_deferrable``.
    :param fetch_logs: how much of the job's log to copy into the task log, as
        ``RayLLMBatchOperator``'s ``fetch_logs``. Deferrable mode only: in poke mode the
        sensor reads the status alone.
    """

    template_fields: Sequence[str] = ("job_id",)
    operator_extra_links = (RayJobLink(),)
    ui_color = "#e0f2fe"

    def __init__(
        self,
        *,
        job_id: str,
        ray_conn_id: str = RayHook.default_conn_name,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        fetch_logs: bool | str = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job_id = job_id
        self.ray_conn_id = ray_conn_id
        self.deferrable = deferrable
        self.fetch_logs = fetch_logs
        check = ArgumentChecker(self.task_id)
        check.name("ray_conn_id", ray_conn_id, optional=False)
        check.flag("deferrable", deferrable)
        check.log_choice("fetch_logs", fetch_logs)

    def _check_job_id(self) -> None:
        """The rendered job id: e.g. an XCom pull that found nothing renders to "None"."""
        if not isinstance(self.job_id, str) or not self.job_id.strip() or self.job_id.strip() == "None":
            ArgumentChecker(self.task_id).fail(
                "job_id", self.job_id, "must be a Ray job id or submission id (did its template render to nothing?)"
            )

    def poke(self, context: Context) -> bool | PokeReturnValue:
        self._check_job_id()
        hook = RayHook(ray_conn_id=self.ray_conn_id)
        info = hook.get_job_info(self.job_id)  # an unknown id raises RayJobNotFoundError
        if not info.status.is_terminal:
            self.log.info("Ray job %s is %s", self.job_id, info.status.value)
            return False
        if info.status is not RayJobStatus.SUCCEEDED:
            outcome.raise_failed(hook, info)
        return PokeReturnValue(is_done=True, xcom_value=self._summary(hook))

    def _summary(self, hook: RayHook) -> dict[str, Any]:
        info = hook.get_job_info(self.job_id)
        summary: dict[str, Any] = {"job_id": info.job_id, "submission_id": info.submission_id, "status": info.status.value}
        result = find_result(hook.get_job_logs(self.job_id))
        if result is not None:
            summary.update(result.model_dump())
        return summary

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        done = self.poke(context)
        if isinstance(done, PokeReturnValue):
            return done.xcom_value
        timeout = self.timeout.total_seconds() if isinstance(self.timeout, timedelta) else self.timeout
        interval = self.poke_interval
        from airflow_provider_raydatallm.triggers.ray_job import RayJobTrigger  # not needed to parse a DAG

        self.defer(
            trigger=RayJobTrigger(
                job_id=self.job_id,
                ray_conn_id=self.ray_conn_id,
                poll_interval=float(interval.total_seconds() if isinstance(interval, timedelta) else interval),
                deadline=time.time() + float(timeout) if timeout else None,
                fetch_logs=self.fetch_logs,
                owns_job=False,  # the sensor watches a job; stopping it is not its call
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        ev = validate_event(event)
        hook = RayHook(ray_conn_id=self.ray_conn_id)
        if ev.status == "timeout":  # soft_fail turns this into a skip (BaseSensorOperator)
            raise AirflowSensorTimeout(
                f"Ray job {ev.job_id} at {hook.address} was still running when the sensor's timeout "
                f"({float(self.timeout or 0):.0f}s) passed; the job was left running"
            )
        if ev.job_status is None:
            raise RayProviderError(f"task {self.task_id}: watching Ray job {ev.job_id} failed: {ev.message}")
        info = hook.get_job_info(ev.job_id)
        if info.status is not RayJobStatus.SUCCEEDED:
            outcome.raise_failed(hook, info)
        return self._summary(hook)
