"""Errors raised by the provider.

Every error names the Ray address and, where there is one, the job id, so a failed task
says where to look. Messages never carry the connection's token or header values: the
hook redacts them before an error is built (see ``hooks/_jobs_api.py``).
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowException


class RayProviderError(AirflowException):
    """Base class of every error raised by ``airflow-provider-raydatallm``."""


class RayConnectionConfigError(RayProviderError):
    """The Airflow connection to Ray is malformed (bad extra JSON, bad port, bad scheme)."""


class RayClusterUnreachableError(RayProviderError):
    """Nothing answered at the Ray dashboard address (refused, DNS, timeout, TLS)."""

    def __init__(self, address: str, reason: str):
        self.address = address
        self.reason = reason
        super().__init__(
            f"Ray cluster at {address} is unreachable: {reason}. Check that the Ray head is "
            "running and its dashboard listens on that address (ray start --head "
            "--dashboard-host=... --dashboard-port=...), and the ray connection's host/port/schema."
        )


class RayClusterSlowError(RayClusterUnreachableError):
    """The dashboard took the request but did not answer in time: the head is up and busy.
    A write's outcome is then unknown (Ray may still carry it out)."""

    def __init__(self, address: str, what: str, seconds: float, reason: str):
        self.address = address
        self.reason = reason
        self.what = what
        self.seconds = seconds
        RayProviderError.__init__(
            self,
            f"Ray dashboard at {address} took {what} but did not answer within {seconds:g}s ({reason}): the head "
            "is up but busy (starting Serve, many jobs starting at once, a small head node). The ray "
            "connection's extra 'timeout' sets how long a request waits (a Serve config write waits 120 s at "
            "least).",
        )


class RayAuthenticationError(RayProviderError):
    """The dashboard refused the request's credentials (HTTP 401/403)."""

    def __init__(self, address: str, status_code: int, detail: str):
        self.address = address
        self.status_code = status_code
        hint = (
            "the request carried no token: put the cluster's token (`ray get-auth-token`) in the "
            "connection's password"
            if status_code == 401
            else "the token was rejected: check the connection's password against `ray get-auth-token`"
        )
        super().__init__(f"Ray at {address} refused the request (HTTP {status_code}): {hint}. {detail}")


class RayAPIError(RayProviderError):
    """The dashboard answered with an unexpected status or a body that is not Ray's."""

    def __init__(self, address: str, message: str, status_code: int | None = None, job_id: str | None = None):
        self.address = address
        self.status_code = status_code
        self.job_id = job_id
        where = f"job {job_id} at {address}" if job_id else address
        code = f" (HTTP {status_code})" if status_code is not None else ""
        super().__init__(f"Ray Jobs API error for {where}{code}: {message}")


class RayJobNotFoundError(RayAPIError):
    """No job with that job id or submission id exists on the cluster."""

    def __init__(self, address: str, job_id: str):
        super().__init__(
            address,
            "no such job (it may never have been submitted, or was deleted, or the cluster was "
            "restarted since)",
            status_code=404,
            job_id=job_id,
        )


class RayJobSubmissionError(RayAPIError):
    """The cluster rejected a job submission."""


class RayJobAlreadyExistsError(RayJobSubmissionError):
    """A job with this submission id already exists (Ray answers HTTP 500 for it)."""

    def __init__(self, address: str, submission_id: str):
        self.submission_id = submission_id
        super().__init__(
            address,
            "a job with this submission_id already exists; look it up with get_job_info() "
            "or submit with another submission_id",
            status_code=500,
            job_id=submission_id,
        )


class RayLLMConfigError(RayProviderError):
    """The operator's inputs cannot make a valid job (processor config, callables, URIs)."""


class RayJobFailedError(RayProviderError):
    """A Ray job ended FAILED or STOPPED, or succeeded without reporting a result."""

    def __init__(self, address: str, job_id: str, status: str, message: str, log_tail: str = ""):
        self.address = address
        self.job_id = job_id
        self.status = status
        text = f"Ray job {job_id} at {address} ended {status}: {message}"
        if log_tail:
            text += f"\n--- last lines of the job log ---\n{log_tail}"
        super().__init__(text)


class RayJobTimeoutError(RayProviderError):
    """The job did not finish within the task's timeout (the job has been asked to stop)."""

    def __init__(self, address: str, job_id: str, timeout: float):
        self.address = address
        self.job_id = job_id
        super().__init__(
            f"Ray job {job_id} at {address} did not finish within {timeout:.0f}s; it was asked to stop"
        )


class RayJobUnschedulableError(RayProviderError):
    """The job waited longer than ``pending_timeout`` for resources no node has; it was stopped."""

    def __init__(self, address: str, job_id: str, message: str):
        self.address = address
        self.job_id = job_id
        super().__init__(
            f"Ray job {job_id} at {address} could not be placed and was {message}. Check the processor "
            "config's accelerator_type, concurrency and placement_group_config against the cluster's nodes."
        )


class RayServeDeployError(RayProviderError):
    """A Ray Serve application could not be deployed, became unhealthy, or is not this provider's to change."""


class RayServeAppInUseError(RayServeDeployError):
    """A deploy would change a Serve application's config while other DAG runs hold leases on it."""
