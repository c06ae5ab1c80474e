"""Shipping a job spec to the cluster, and finding or submitting a task instance's job.

A task instance's jobs are ``<submission base>-a1``, ``-a2``...; the base hashes the
deployment's namespace (``namespace.py``) and the task instance. Each job's metadata names
the namespace, the task instance, the try series that submitted it (its key,
``_submission.first_try_of_series``: a retry keeps the series, a clear starts a new one) and
the spec hash (what the user wrote: ``spec_hash``). Looking at its jobs in order, a try does
(the contract in docs/lifecycle.md, "Task identity, adoption and namespaces"):

| the job found | what the try does |
|---|---|
| metadata names another namespace or task instance | leaves it alone; looks at the next one |
| of an earlier series, PENDING or RUNNING | stops it (the task was cleared: that is the clear's contract) |
| of an earlier series, finished | never reused: a clear runs the task again |
| of this series, live, same spec | reattaches (the worker died while the job ran) |
| of this series, live, another spec | stops it: never reattach across specs |
| of this series, SUCCEEDED, same spec, no later job | adopts it: its committed result is this try's |
| of this series, FAILED or STOPPED, or another spec | not reused |
| of a later series | leaves it alone (this try is the stale one) |

When none is live or adoptable, the next free attempt is submitted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import airflow_provider_raydatallm
from airflow_provider_raydatallm import namespace as deployment
from airflow_provider_raydatallm.exceptions import RayJobAlreadyExistsError, RayJobNotFoundError, RayLLMConfigError
from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobInfo, RayJobStatus
from airflow_provider_raydatallm.job.spec import SECRETS_FILE, JobSpec
from airflow_provider_raydatallm.job.worker_setup import with_hook
from airflow_provider_raydatallm.operators import _submission as sub

MAX_ATTEMPTS = 100
SPEC_HASH_KEY = "raydllm_spec_hash"
OUTPUT_KEY = "raydllm_output"
NAMESPACE_KEY = "raydllm_namespace"
SERIES_KEY = "raydllm_try_series"  # the key (ti.max_tries) of the series that submitted the job
# Which task instance a job is for, as submit() writes it.
INSTANCE_KEYS = ("airflow_dag_id", "airflow_task_id", "airflow_run_id", "airflow_map_index")
# A live job of an earlier try may be on its way out (a clear's on_kill stops it in the
# triggerer while the new try starts): give a stop this long to show before reattaching.
SETTLE_SECONDS = 6.0


def spec_hash(spec: JobSpec) -> str:
    """What makes two specs the same job: everything but which try submits it. A callable
    counts by its fingerprint (what the user wrote, the same in every process), not by its
    pickled bytes, which change between processes (a set pickles in hash-seed order)."""
    body = spec.model_dump(mode="json", exclude={"run"})
    for name in ("preprocess", "postprocess"):
        shipped = body.get(name)
        if shipped and shipped.get("fingerprint"):
            shipped.pop("pickled", None)
            shipped.pop("cloudpickle_version", None)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Submission:
    """What a submit needs beyond the spec (all already rendered and checked)."""

    runtime_env: Mapping[str, Any] = field(default_factory=dict)
    job_metadata: Mapping[str, Any] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)  # shipped in the spec package only
    entrypoint_num_cpus: float | None = None
    entrypoint_num_gpus: float | None = None
    entrypoint_resources: Mapping[str, float] | None = None
    # The key of this try's series (_submission.first_try_of_series); a caller without
    # Airflow's task instance leaves 1: every try is then of the first series.
    first_try: int = 1


def upload(hook: RayHook, spec: JobSpec, secrets: Mapping[str, str]) -> tuple[str, list[str]]:
    """Ship the provider's job code and the spec (with its secrets file, which no Jobs API
    response shows); return (spec package name, py_modules URIs)."""
    provider_uri = hook.upload_py_module(str(Path(airflow_provider_raydatallm.__file__).parent))
    payload = spec.model_dump_json()
    secrets_json = json.dumps(dict(secrets), sort_keys=True) if secrets else ""
    # The name hashes the secrets too: a rotated key must not hit the cluster's package cache.
    name = "raydllm_spec_" + hashlib.sha256((payload + "\0" + secrets_json).encode()).hexdigest()[:16]
    with tempfile.TemporaryDirectory() as tmp:
        spec_dir = Path(tmp) / name
        spec_dir.mkdir()
        (spec_dir / "__init__.py").write_text("")
        (spec_dir / "spec.json").write_text(payload)
        if secrets_json:
            (spec_dir / SECRETS_FILE).write_text(secrets_json)
        spec_uri = hook.upload_py_module(str(spec_dir))
    return name, [provider_uri, spec_uri]


def submit(hook: RayHook, spec: JobSpec, submission_id: str, how: Submission) -> None:
    """Submit ``spec`` as ``submission_id``, under the deployment's namespace (the spec's, else
    resolved from the hook's connection and Airflow's config)."""
    namespace = spec.run.namespace or deployment.resolve(hook.config.namespace)
    run = spec.run.model_copy(update={"submission_id": submission_id, "namespace": namespace})
    spec = spec.model_copy(update={"run": run})
    spec_package, py_modules = upload(hook, spec, how.secrets)
    runtime_env = dict(how.runtime_env or {})
    runtime_env["py_modules"] = list(runtime_env.get("py_modules") or []) + py_modules
    try:  # vLLM's teardown noise, in every worker of the job
        runtime_env = with_hook(runtime_env, hook.config.runtime_env, spec.processor.kwargs.get("runtime_env"))
    except TypeError as err:
        raise RayLLMConfigError(f"task {spec.run.task_id}: runtime_env {err}") from None
    metadata = {
        # The user's job_metadata first: the keys below, which name the task instance the job
        # belongs to (adoption, the UI's ownership check), always win.
        **{str(k): str(v) for k, v in (how.job_metadata or {}).items()},
        "airflow_dag_id": run.dag_id, "airflow_task_id": run.task_id, "airflow_run_id": run.run_id,
        "airflow_map_index": str(run.map_index), "airflow_try_number": str(run.try_number),
        "submitted_by": f"airflow-provider-raydatallm {airflow_provider_raydatallm.__version__}",
        SPEC_HASH_KEY: spec_hash(spec), OUTPUT_KEY: spec.output.uri, NAMESPACE_KEY: namespace,
        SERIES_KEY: str(how.first_try),
    }  # fmt: skip
    hook.submit_job(
        f"python -m airflow_provider_raydatallm.job --spec-module {spec_package} --tag {submission_id}",
        submission_id=submission_id,
        runtime_env=runtime_env,
        metadata=metadata,
        entrypoint_num_cpus=how.entrypoint_num_cpus,
        entrypoint_num_gpus=how.entrypoint_num_gpus,
        entrypoint_resources=how.entrypoint_resources,
    )


def _settled(hook: RayHook, info: RayJobInfo, try_number: int) -> RayJobInfo:
    """A live job of an earlier try, looked at again for a moment in case it is being stopped."""
    earlier = int(info.metadata.get("airflow_try_number") or 0) < try_number
    deadline = time.monotonic() + (SETTLE_SECONDS if earlier else 0)
    while not info.status.is_terminal and time.monotonic() < deadline:
        time.sleep(1)
        info = hook.get_job_info(info.id)
    return info


def _owner(info: RayJobInfo) -> tuple[str | None, ...]:
    """(namespace, dag, task, run, map index) as the job's metadata names them."""
    return (info.metadata.get(NAMESPACE_KEY), *(info.metadata.get(key) for key in INSTANCE_KEYS))


def _series(info: RayJobInfo) -> int:
    try:
        return int(info.metadata.get(SERIES_KEY) or 0)
    except ValueError:
        return 0


def find_or_submit(hook: RayHook, spec: JobSpec, how: Submission, log: logging.Logger, task_id: str) -> tuple[str, bool]:
    """The job this try follows (the table in the module docstring): (submission id, True if
    it reattached to a live job or adopted a finished one, False if it submitted a new one)."""
    namespace = spec.run.namespace or deployment.resolve(hook.config.namespace)
    spec = spec.model_copy(update={"run": spec.run.model_copy(update={"namespace": namespace})})
    run = spec.run
    base = sub.submission_base(run.dag_id, run.task_id, run.run_id, run.map_index, namespace=namespace)
    # A job of another deployment sharing the cluster, or of an older id scheme, is never touched.
    ours = (namespace, run.dag_id, run.task_id, run.run_id, str(run.map_index))
    wanted, series = spec_hash(spec), how.first_try
    adoptable: str | None = None  # a SUCCEEDED job of this series and spec, while no later job exists
    for attempt in range(1, MAX_ATTEMPTS + 1):
        candidate = sub.submission_id(base, attempt)
        try:
            info = hook.get_job_info(candidate)
        except RayJobNotFoundError:
            if adoptable:
                log.info(
                    "Adopting Ray job %s, which finished SUCCEEDED for an earlier try of this series: "
                    "not running it again", adoptable,
                )  # fmt: skip
                return adoptable, True
            try:
                submit(hook, spec, candidate, how)
            except RayJobAlreadyExistsError:  # another try got there first: look again
                info = hook.get_job_info(candidate)
            else:
                log.info("Submitted Ray job %s (spec %s, try series %d)", candidate, wanted, series)
                return candidate, False
        if _owner(info) != ours:
            log.warning("Ray job %s is not this task instance's (its metadata names %s, this is %s): leaving it alone",
                        candidate, _owner(info), ours)  # fmt: skip
            continue
        adoptable = None  # a later job of this task instance may have replaced its output
        if _series(info) != series:
            _other_series(hook, info, candidate, series, log)
            continue
        if not info.status.is_terminal:
            info = _settled(hook, info, run.try_number)
        same_spec = info.metadata.get(SPEC_HASH_KEY) == wanted
        if info.status is RayJobStatus.SUCCEEDED and same_spec:
            adoptable = candidate
            continue
        if info.status.is_terminal:
            log.info("Ray job %s of an earlier try ended %s; it is not reused", candidate, info.status.value)
            continue
        if same_spec:
            log.info("Reattaching to Ray job %s (%s): same task instance, same spec", candidate, info.status.value)
            return candidate, True
        log.warning(
            "Ray job %s of an earlier try is %s with another spec (%s, now %s: prompt, model, config or input "
            "changed); stopping it", candidate, info.status.value, info.metadata.get(SPEC_HASH_KEY), wanted,
        )  # fmt: skip
        hook.stop_job(candidate)
        _wait_ended(hook, candidate)
    raise RayLLMConfigError(f"task {task_id}: {MAX_ATTEMPTS} Ray jobs already ran for this task instance")


def _other_series(hook: RayHook, info: RayJobInfo, job_id: str, series: int, log: logging.Logger) -> None:
    """A job of this task instance from another try series: an earlier series' live job is
    stopped (the task was cleared since); finished jobs and a later series' jobs stay."""
    theirs = _series(info)
    if theirs > series:
        log.warning("Ray job %s belongs to a later try series (%d, this try's is %d): leaving it alone",
                    job_id, theirs, series)  # fmt: skip
    elif info.status.is_terminal:
        log.info("Ray job %s of an earlier try series ended %s; a cleared task runs again", job_id, info.status.value)
    else:
        log.warning("Ray job %s of an earlier try series is still %s: the task was cleared since; stopping it",
                    job_id, info.status.value)  # fmt: skip
        hook.stop_job(job_id)
        _wait_ended(hook, job_id)


def _wait_ended(hook: RayHook, job_id: str, wait: float = 30.0) -> None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and not hook.get_job_status(job_id).is_terminal:
        time.sleep(1)

