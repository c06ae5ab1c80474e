"""RayLLMBatchOperator: one Airflow task = one Ray Data LLM batch job on a Ray cluster."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook, BaseOperator, conf
from airflow_provider_raydatallm import namespace as deployment, outcome
from airflow_provider_raydatallm.exceptions import (
    RayJobFailedError,
    RayJobTimeoutError,
    RayJobUnschedulableError,
    RayProviderError,
)
from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobStatus
from airflow_provider_raydatallm.job.metrics import find_result
from airflow_provider_raydatallm.job.spec import DEFAULT_MAX_ERROR_RATIO, JobSpec, RunIdentity
from airflow_provider_raydatallm.links.ray import XCOM_JOB_KEY, RayJobLink, dashboard_url
from airflow_provider_raydatallm.operators import _checks, _jobs, _report, _submission as sub, _templating
from airflow_provider_raydatallm.tables import DeltaTable, IcebergTable, as_table
from airflow_provider_raydatallm.events import RayJobEvent, validate_event
from airflow_provider_raydatallm.watch import WaitPolicy, defer_timeout, seconds, task_deadline, wait_sync

if TYPE_CHECKING:
    from airflow.sdk import Context

# How long a job may wait for resources no node has before it is stopped: long enough for
# an autoscaler to bring up a GPU node, short enough that a typo'd accelerator_type does
# not hold a task (and its slot in a pool) for hours.
DEFAULT_PENDING_TIMEOUT = 900.0


class RayLLMBatchOperator(BaseOperator):
    """
    Run a ``ray.data.llm`` batch inference job on a Ray cluster and return what came out.

    The task ships a job spec (input, output, processor config, the user's callables) to the
    cluster through the Ray Jobs API, follows the job's log into the task log, and returns
    (XCom) the job id, output locations and the metrics the job computed.

    :param processor_config: a ``ray.data.llm`` processor config (vLLM, SGLang, HTTP, Serve) or
        a dict with its class name under ``type``, e.g. ``{"type": "vLLMEngineProcessorConfig",
        "model_source": ..., "concurrency": 1}``. Validated against Ray's own schema before
        submission. Templated, except ``chat_template`` and other free-text templates in it.
    :param preprocess: row -> request dict (``messages``, ``sampling_params`` ...): a function
        (lambdas and DAG-file functions included) or a ``"package.module:function"`` string.
    :param postprocess: processed row -> output row; same forms as ``preprocess``.
    :param input_uri: input URI or list of URIs (local path, ``file://``, ``s3://``, ``gs://``,
        ``https://``). Templated, e.g. ``"/data/posts/{{ ds }}.jsonl"``.
    :param input_format: ``csv``, ``parquet``, ``json`` or ``jsonl``; inferred from the extension.
    :param input_columns: read only these columns.
    :param limit: process at most this many rows.
    :param num_partitions: blocks to repartition into before inference; default 3x the
        inference workers the cluster can hold (the seeds advise 2-4x), at most one per row.
        Blocks are cut as rows stream in and hold at most 5,000 rows each (more blocks on a
        large input), so memory does not grow with the input.
    :param id_column: column that identifies a row in error output; default a content hash.
    :param output_uri: output directory URI (``output`` is taken: it is Airflow's XComArg). Templated. A rerun replaces it; readers wait for
        ``_SUCCESS``. With ``output_table``: optional, the directory where the run's rows wait
        for the table commit (default ``<table location>/_raydllm/work/<slice>``).
    :param output_table: write the rows into a table instead of a directory:
        ``IcebergTable("ns.table", conn_id=..., partition={"day": "{{ ds }}"})`` or
        ``DeltaTable(uri, partition=...)`` (``airflow_provider_raydatallm.tables``). One atomic
        commit per run replaces only the run's slice (its ``partition`` values); a clear or a
        retry replaces it again. See docs/outputs.md.
    :param error_table: with ``output_table``: commit the failed rows to this table (same
        format, same slice) instead of the ``error_output_uri`` directory.
    :param output_format: ``parquet`` (default), ``jsonl`` or ``csv``.
    :param error_output_uri: directory for rows that failed; default ``<output>/_errors``
        (with ``output_table``: ``<table location>/_raydllm/errors/<slice>``).
    :param overwrite: let the commit delete files in the output (and error) directory that
        this provider did not write; by default such a directory is refused before the job runs.
    :param should_continue_on_error: send failing rows to the error output instead of failing.
    :param max_error_ratio: with ``should_continue_on_error``, fail the task (committing
        nothing; the failed rows are kept for reading in ``<error_output_uri>/_raydllm/failed-run/``)
        when more than this share of the rows failed; default 0.1. A run where every row
        failed always fails. ``1.0`` accepts any number of failed rows short of all.
    :param ray_conn_id: the ``ray`` connection (templated). The UI plugin takes it from the
        DAG's definition (or the task's rendered fields), never from XCom.
    :param http_conn_id: for ``HttpRequestProcessorConfig``: a connection to an OpenAI-compatible
        endpoint (host = base URL, password = API key, extra ``path`` and ``headers``). The key
        reaches the job as an environment variable (Ray redacts those), never the DAG file,
        the spec, XCom or the logs.
    :param runtime_env: merged over the connection's default runtime_env.
    :param entrypoint_num_cpus: CPUs reserved for the job's driver.
    :param entrypoint_num_gpus: GPUs reserved for the job's driver.
    :param entrypoint_resources: custom resources reserved for the driver.
    :param job_metadata: extra string metadata on the Ray job.
    :param deferrable: wait in the triggerer; default ``[operators] default_deferrable``.
    :param wait_for_completion: False returns the job id at once (pair with RayJobSensor).
    :param poll_interval: seconds between status polls.
    :param timeout: seconds to wait for the job before stopping it and failing.
    :param pending_timeout: seconds the job may wait for resources no node of the cluster has
        (e.g. an ``accelerator_type`` it lacks) before it is stopped and the task fails; the
        wait is named in the task log within a minute. Default 900; None never stops it.
    :param fetch_logs: copy the job's log into the task log while waiting, cleaned up (no colour
        codes, each line at its level with a short ``[ray:<source>]`` prefix, lines over 400
        characters cut): ``True`` or ``"all"`` every line; ``"summary"`` the provider's own
        lines (start, what was read, counts, commit) and every warning and error; ``"warnings"``
        warnings and errors only; ``False`` or ``"none"`` nothing. The whole log stays on
        the Ray dashboard (the task's "Ray job" link).
    :param resume: with ``id_column`` set, a retry of a try that failed midway processes only
        the rows that try did not write (its written rows stay staged until the commit);
        clearing the task, or changing its spec, starts from zero. Default True.
    """

    template_fields: Sequence[str] = (
        "processor_config", "input_uri", "input_format", "input_columns", "limit", "num_partitions",
        "output_uri", "output_format", "error_output_uri", "runtime_env", "job_metadata", "ray_conn_id",
        "output_table", "error_table",
    )  # fmt: skip
    template_fields_renderers = {"processor_config": "json", "runtime_env": "json", "job_metadata": "json"}
    operator_extra_links = (RayJobLink(),)
    ui_color = "#dbeafe"

    def __init__(
        self,
        *,
        processor_config: Any,
        input_uri: str | list[str],
        output_uri: str | None = None,
        output_table: IcebergTable | DeltaTable | None = None,
        error_table: IcebergTable | DeltaTable | None = None,
        preprocess: Callable[..., Any] | str | None = None,
        postprocess: Callable[..., Any] | str | None = None,
        input_format: str | None = None,
        input_columns: list[str] | None = None,
        limit: int | str | None = None,
        num_partitions: int | str | None = None,
        id_column: str | None = None,
        output_format: str = "parquet",
        error_output_uri: str | None = None,
        overwrite: bool = False,
        should_continue_on_error: bool = False,
        max_error_ratio: float = DEFAULT_MAX_ERROR_RATIO,
        ray_conn_id: str = RayHook.default_conn_name,
        http_conn_id: str | None = None,
        runtime_env: dict[str, Any] | None = None,
        entrypoint_num_cpus: float | None = None,
        entrypoint_num_gpus: float | None = None,
        entrypoint_resources: dict[str, float] | None = None,
        job_metadata: dict[str, str] | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        wait_for_completion: bool = True,
        poll_interval: float = 10.0,
        timeout: float | timedelta | None = None,
        pending_timeout: float | timedelta | None = DEFAULT_PENDING_TIMEOUT,
        fetch_logs: bool | str = True,
        resume: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.processor_config = processor_config
        self.preprocess = preprocess
        self.postprocess = postprocess
        self.input_uri = input_uri
        self.input_format = input_format
        self.input_columns = input_columns
        self.limit = limit
        self.num_partitions = num_partitions
        self.id_column = id_column
        self.output_uri = output_uri
        self.output_table = as_table(output_table, "output_table", kwargs.get("task_id", "?"))
        self.error_table = as_table(error_table, "error_table", kwargs.get("task_id", "?"))
        self.output_format = output_format
        self.error_output_uri = error_output_uri
        self.overwrite = overwrite
        self.should_continue_on_error = should_continue_on_error
        self.max_error_ratio = max_error_ratio
        self.ray_conn_id = ray_conn_id
        self.http_conn_id = http_conn_id
        self.runtime_env = runtime_env
        self.entrypoint_num_cpus = entrypoint_num_cpus
        self.entrypoint_num_gpus = entrypoint_num_gpus
        self.entrypoint_resources = entrypoint_resources
        self.job_metadata = job_metadata
        self.deferrable = deferrable
        self.wait_for_completion = wait_for_completion
        self.poll_interval = poll_interval
        self.timeout = seconds(timeout)
        self.pending_timeout = seconds(pending_timeout)
        self.fetch_logs = fetch_logs
        self.resume = resume
        self._submission_id: str | None = None  # for on_kill, within one execute() call
        self._record: dict[str, Any] | None = None  # what execute() pushed to XCom ray_job
        self._lineage: dict[str, Any] | None = None  # the result, for OpenLineage
        _checks.check_constructed(self)

    # -- building the job ---------------------------------------------------------------------

    def build_spec(self, identity: RunIdentity) -> JobSpec:
        """The validated job spec for this task's rendered arguments (no I/O, no Ray)."""
        return sub.build_spec(self, identity)

    def render_template_fields(self, context: Context, jinja_env: Any = None) -> None:
        """Render every templated argument, but not the free-text templates inside
        processor_config (``chat_template``): those are Jinja for the model's tokenizer."""
        # Nested templates render in place: each rendering gets its own copy of the tables
        # (Airflow's copy of the task for a run is shallow, so the DAG's object is shared).
        self.output_table = as_table(self.output_table, "output_table", self.task_id)
        self.error_table = as_table(self.error_table, "error_table", self.task_id)
        held: list[Any] = []
        self.processor_config = _templating.hold(self.processor_config, held)
        try:
            super().render_template_fields(context, jinja_env)
        finally:
            self.processor_config = _templating.restore(self.processor_config, held)

    def _submission(self, secrets: dict[str, str], first_try: int) -> _jobs.Submission:
        return _jobs.Submission(
            runtime_env=self.runtime_env or {}, job_metadata=self.job_metadata or {}, secrets=secrets,
            entrypoint_num_cpus=self.entrypoint_num_cpus, entrypoint_num_gpus=self.entrypoint_num_gpus,
            entrypoint_resources=self.entrypoint_resources, first_try=first_try,
        )  # fmt: skip

    def _policy(self, ti: Any) -> WaitPolicy:
        """The wait: until ``timeout`` from now or the task's ``execution_timeout``, the earlier.
        Airflow 3.3 does not apply execution_timeout to a deferred task, so the trigger does."""
        return WaitPolicy(
            poll_interval=self.poll_interval, deadline=task_deadline(self.timeout, self.execution_timeout, ti),
            pending_timeout=self.pending_timeout, fetch_logs=self.fetch_logs, owns_job=True,
        )  # fmt: skip

    # -- Airflow semantics ---------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        ti = context["ti"]
        identity = RunIdentity(
            dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id,
            map_index=getattr(ti, "map_index", -1) if getattr(ti, "map_index", None) is not None else -1,
            try_number=getattr(ti, "try_number", 0) or 0,
        )  # fmt: skip
        spec = self.build_spec(identity)
        _checks.refuse_shared_mapped_output(self, identity.map_index)
        sub.refuse_secret_env(self.runtime_env, self.task_id)
        hook = RayHook(ray_conn_id=self.ray_conn_id)
        # Which Airflow deployment: in the job's id and metadata, and its outputs' owner record.
        identity = identity.model_copy(update={"namespace": deployment.resolve(hook.config.namespace)})
        spec = spec.model_copy(update={"run": identity})
        max_tries = getattr(ti, "max_tries", None)
        first_try = sub.first_try_of_series(identity.try_number, max_tries, self.retries or 0)
        secrets: dict[str, str] = {}
        if self.http_conn_id:
            from airflow.sdk.log import mask_secret

            conn = BaseHook.get_connection(self.http_conn_id)
            processor, secrets = sub.with_endpoint_connection(spec.processor, conn, self.task_id)
            for value in secrets.values():
                mask_secret(value)
            spec = spec.model_copy(update={"processor": processor})
        spec, table_secrets = sub.with_tables(self, spec)
        if table_secrets:
            from airflow.sdk.log import mask_secret

            for value in table_secrets.values():
                for secret in sub.secret_values(value):
                    mask_secret(secret)
            secrets = {**secrets, **table_secrets}
        if self.resume:  # after the endpoint is known: another endpoint's rows are never resumed onto
            resumed = sub.with_resume(identity, max_tries, self.retries or 0, _jobs.spec_hash(spec))
            spec = spec.model_copy(update={"run": resumed})
        job_id, _ = _jobs.find_or_submit(hook, spec, self._submission(secrets, first_try), self.log, self.task_id)
        self._submission_id = job_id
        url = dashboard_url(hook.config.link_base_url, job_id)
        record = _report.submission_record(spec, job_id, url, self.ray_conn_id)
        ti.xcom_push(key=XCOM_JOB_KEY, value=record)
        self._record = record
        self.log.info("Ray job %s: %s", job_id, url)
        if not self.wait_for_completion:
            return _report.result_value(None, job_id, record, None)
        policy = self._policy(ti)
        if self.deferrable:
            # Imported here: the trigger machinery is not needed to parse a DAG file.
            from airflow_provider_raydatallm.triggers.ray_job import RayJobTrigger

            self.defer(
                trigger=RayJobTrigger(
                    job_id=job_id, ray_conn_id=self.ray_conn_id, poll_interval=policy.poll_interval,
                    deadline=policy.deadline, pending_timeout=policy.pending_timeout, fetch_logs=policy.fetch_logs,
                ),
                method_name="execute_complete",
                timeout=defer_timeout(policy.deadline),
            )  # fmt: skip
        event = wait_sync(self.ray_conn_id, job_id, policy, self.log)
        return self._complete(hook, event, context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Resume after RayJobTrigger: everything needed comes from the event, the cluster and
        what execute() recorded in XCom."""
        return self._complete(RayHook(ray_conn_id=self.ray_conn_id), validate_event(event), context)

    def _complete(self, hook: RayHook, ev: RayJobEvent, context: Context) -> dict[str, Any]:
        if ev.status == "timeout":
            limits = [t for t in (self.timeout, self.execution_timeout and self.execution_timeout.total_seconds()) if t]
            raise RayJobTimeoutError(hook.address, ev.job_id, min(limits) if limits else 0)
        if ev.status == "unschedulable":
            raise RayJobUnschedulableError(hook.address, ev.job_id, ev.message)
        if ev.job_status is None:  # the wait could not watch the job
            raise RayProviderError(f"task {self.task_id}: watching Ray job {ev.job_id} failed: {ev.message}")
        record = self._record  # set by execute() on a worker; after deferral, read back from XCom
        if record is None:
            ti = context["ti"]
            record = ti.xcom_pull(task_ids=self.task_id, key=XCOM_JOB_KEY, map_indexes=ti.map_index)
        value = self._finish(hook, ev.job_id, record if isinstance(record, dict) else {})
        self._report_to_assets(context, value)
        return value

    def _finish(self, hook: RayHook, job_id: str, record: dict[str, Any]) -> dict[str, Any]:
        info = hook.get_job_info(job_id)
        if info.status is not RayJobStatus.SUCCEEDED:
            outcome.raise_failed(hook, info)
        result = find_result(hook.get_job_logs(job_id))
        if result is None:
            raise RayJobFailedError(
                hook.address, job_id, info.status.value, "the job printed no result line (is it this provider's job?)",
                outcome.log_tail(hook, job_id),
            )  # fmt: skip
        result.metrics = _report.with_job_phases(result.metrics, info)
        self.log.info("%s", _report.summary_line(job_id, result.metrics, result.output_uri, result.table))
        if result.metrics.phases:
            self.log.info("Where the time went (Ray job %s, submission to its end):\n%s", job_id,
                          _report.phases_table(result.metrics.phases))  # fmt: skip
        value = _report.result_value(info.job_id, job_id, record, result)
        self._lineage = value
        return value

    def _report_to_assets(self, context: Context, value: dict[str, Any]) -> None:
        """The run's metrics on the events of the assets this task emits."""
        extra = _report.asset_extra(value)
        outlet_events = context.get("outlet_events")
        for outlet in self.outlets or []:
            if outlet_events is not None and hasattr(outlet, "uri"):
                outlet_events[outlet].extra.update(extra)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Input and output datasets from the URIs, the model and counts as a run facet."""
        return _report.openlineage(self._lineage) if self._lineage else None

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """Airflow fails a deferred task whose execution_timeout passed by resuming it with
        ``__fail__`` (the trigger is dropped without on_kill): stop the job first."""
        if next_method == "__fail__":
            job = context["ti"].xcom_pull(task_ids=self.task_id, key=XCOM_JOB_KEY, map_indexes=context["ti"].map_index)
            if isinstance(job, dict) and job.get("submission_id") and self.wait_for_completion:
                from airflow_provider_raydatallm.watch import stop_sync

                stopped = stop_sync(RayHook(ray_conn_id=self.ray_conn_id), job["submission_id"], self.log)
                self.log.info("Asked Ray to stop job %s (was running: %s)", job["submission_id"], stopped)
        return super().resume_execution(next_method, next_kwargs, context)

    def on_kill(self) -> None:
        """Stop (not delete) the Ray job this task started, so it stops using the cluster.
        Airflow's task supervisor sends the signal that calls this after the API server said
        the task instance must stop (marked failed or success, cleared), on execution_timeout,
        or when the worker itself is shut down."""
        if self._submission_id and self.wait_for_completion:
            from airflow_provider_raydatallm.watch import stop_sync

            stopped = stop_sync(RayHook(ray_conn_id=self.ray_conn_id), self._submission_id, self.log)
            self.log.info("Asked Ray to stop job %s (was running: %s)", self._submission_id, stopped)
