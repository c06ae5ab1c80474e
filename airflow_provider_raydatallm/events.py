"""The one event a RayJobTrigger yields, and the one function that reads it back."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from airflow_provider_raydatallm.exceptions import RayProviderError

EventStatus = Literal["success", "error", "timeout", "unschedulable"]


class RayJobEvent(BaseModel):
    """Terminal event of a watched Ray job.

    ``status`` is ``success`` (job SUCCEEDED), ``error`` (FAILED, STOPPED, not found, or the
    cluster kept failing), ``timeout`` (the deadline passed) or ``unschedulable`` (stopped
    after ``pending_timeout`` waiting for resources no node has; ``message`` names them);
    ``job_status`` is Ray's status when the job ended by itself.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: EventStatus
    job_id: str
    job_status: str | None = None
    message: str = ""
    log_offset: int = 0

    def to_payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def validate_event(event: Any) -> RayJobEvent:
    """Parse a trigger event payload; every resumed operator and sensor goes through here."""
    if isinstance(event, RayJobEvent):
        return event
    try:
        return RayJobEvent.model_validate(event)
    except ValidationError as err:
        raise RayProviderError(f"unexpected event from RayJobTrigger: {event!r} ({err.error_count()} problems)") from None
