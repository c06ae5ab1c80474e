"""Submission identity against the real cluster: one job per task try, reattach on retry."""

from __future__ import annotations

import logging
import time
import uuid

import pytest

from demo_helpers import write_customers_csv

from airflow_provider_raydatallm.configs import cpu_vllm_config
from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobStatus
from airflow_provider_raydatallm.job.spec import RunIdentity
from airflow_provider_raydatallm.operators import RayLLMBatchOperator, _jobs

pytestmark = pytest.mark.integration


def _stop(hook: RayHook, job_id: str) -> None:
    hook.stop_job(job_id)
    deadline = time.monotonic() + 30
    while not hook.get_job_status(job_id).is_terminal and time.monotonic() < deadline:
        time.sleep(0.5)
    assert hook.get_job_status(job_id) is RayJobStatus.STOPPED


def _find(hook: RayHook, spec) -> str:
    return _jobs.find_or_submit(hook, spec, _jobs.Submission(), logging.getLogger("test"), "classify")[0]


def test_reattach_while_running_and_a_new_attempt_after_a_stop(ray_conn, tmp_path):
    csv = write_customers_csv(tmp_path / "c.csv", 5)
    op = RayLLMBatchOperator(
        task_id="classify",
        processor_config=cpu_vllm_config(),
        preprocess="json:dumps",
        input_uri=str(csv),
        output_uri=str(tmp_path / "out"),
    )
    identity = RunIdentity(dag_id="reattach", task_id="classify", run_id=f"manual__{uuid.uuid4().hex}", try_number=1)
    spec = op.build_spec(identity)
    hook = RayHook()
    first = _find(hook, spec)
    assert first.endswith("-a1")
    retry = spec.model_copy(update={"run": identity.model_copy(update={"try_number": 2})})
    assert _find(hook, retry) == first  # a retry while it runs, same spec: reattach
    _stop(hook, first)
    second = _find(hook, retry)  # after STOPPED: a fresh attempt
    assert second == first[:-1] + "2"

    # The prompt (here: the input's limit) changed and the task was cleared: never reattach.
    changed = retry.model_copy(update={"input": retry.input.model_copy(update={"limit": 3}),
                                       "run": identity.model_copy(update={"try_number": 3})})  # fmt: skip
    third = _find(hook, changed)
    assert third == first[:-1] + "3" and hook.get_job_status(second) is RayJobStatus.STOPPED
    _stop(hook, third)
    base = first[: -len("-a1")]
    ours = [j for j in hook.list_jobs() if (j.submission_id or "").startswith(base)]
    assert sorted(j.submission_id for j in ours) == [first, second, third]
    info = hook.get_job_info(first)
    assert info.metadata["airflow_dag_id"] == "reattach" and info.metadata["airflow_task_id"] == "classify"
    assert info.metadata["raydllm_spec_hash"] == _jobs.spec_hash(spec) != hook.get_job_info(third).metadata["raydllm_spec_hash"]
