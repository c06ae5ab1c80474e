"""Shipping a job spec to the cluster, and finding or submitting a task instance's job.

Which job a try runs (the contract in DESIGN.md):

- a PENDING or RUNNING job of this task instance with the same spec (same spec hash in its
  metadata): reattach; that is a retry after the worker died while the job ran;
- a live job of this task instance with another spec (the prompt, model, config or input
  changed, then the task was cleared): stop it, never reattach across specs;
- a finished job (SUCCEEDED, FAILED, STOPPED): never reused; the next attempt is submitted.
  Clearing a successful task therefore runs it again.
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
from airflow_provider_raydatallm.exceptions import RayJobAlreadyExistsError, RayJobNotFoundError, RayLLMConfigError
from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobInfo
from airflow_provider_raydatallm.job.spec import SECRETS_FILE, JobSpec
from airflow_provider_raydatallm.operators import _submission as sub

MAX_ATTEMPTS = 100
SPEC_HASH_KEY = "raydllm_spec_hash"
OUTPUT_KEY = "raydllm_output"
# A live job of an earlier try may be on its way out (a clear's on_kill stops it in the
# triggerer while the new try starts): give a stop this long to show before reattaching.
SETTLE_SECONDS = 6.0


def spec_hash(spec: JobSpec) -> str:
    """What makes two specs the same job: everything but which try submits it."""
    body = spec.model_dump(mode="json", exclude={"run"})
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
    spec = spec.model_copy(update={"run": spec.run.model_copy(update={"submission_id": submission_id})})
    spec_package, py_modules = upload(hook, spec, how.secrets)
    runtime_env = dict(how.runtime_env or {})
    runtime_env["py_modules"] = list(runtime_env.get("py_modules") or []) + py_modules
    run = spec.run
    metadata = {
        "airflow_dag_id": run.dag_id, "airflow_task_id": run.task_id, "airflow_run_id": run.run_id,
        "airflow_map_index": str(run.map_index), "airflow_try_number": str(run.try_number),
        "submitted_by": f"airflow-provider-raydatallm {airflow_provider_raydatallm.__version__}",
        **{str(k): str(v) for k, v in (how.job_metadata or {}).items()},
        SPEC_HASH_KEY: spec_hash(spec), OUTPUT_KEY: spec.output.uri,
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


def find_or_submit(hook: RayHook, spec: JobSpec, how: Submission, log: logging.Logger, task_id: str) -> tuple[str, bool]:
    """The job this try follows: (submission id, True if it reattached to a running job)."""
    run = spec.run
    base = sub.submission_base(run.dag_id, run.task_id, run.run_id, run.map_index)
    wanted = spec_hash(spec)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        candidate = sub.submission_id(base, attempt)
        try:
            info = hook.get_job_info(candidate)
        except RayJobNotFoundError:
            try:
                submit(hook, spec, candidate, how)
            except RayJobAlreadyExistsError:  # another try got there first: look again
                info = hook.get_job_info(candidate)
            else:
                log.info("Submitted Ray job %s (spec %s)", candidate, wanted)
                return candidate, False
        if not info.status.is_terminal:
            info = _settled(hook, info, run.try_number)
        if info.status.is_terminal:
            log.info("Ray job %s of an earlier try ended %s; it is not reused", candidate, info.status.value)
            continue
        if info.metadata.get(SPEC_HASH_KEY) == wanted:
            log.info("Reattaching to Ray job %s (%s): same task instance, same spec", candidate, info.status.value)
            return candidate, True
        log.warning(
            "Ray job %s of an earlier try is %s with another spec (%s, now %s: prompt, model, config or input "
            "changed); stopping it", candidate, info.status.value, info.metadata.get(SPEC_HASH_KEY), wanted,
        )  # fmt: skip
        hook.stop_job(candidate)
        _wait_ended(hook, candidate)
    raise RayLLMConfigError(f"task {task_id}: {MAX_ATTEMPTS} Ray jobs already ran for this task instance")


def _wait_ended(hook: RayHook, job_id: str, wait: float = 30.0) -> None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and not hook.get_job_status(job_id).is_terminal:
        time.sleep(1)

