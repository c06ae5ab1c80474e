from __future__ import annotations

import pytest

from airflow_provider_raydatallm.hooks._jobs_api import (
    RayJobInfo,
    RayJobStatus,
    job_path,
    merge_runtime_env,
    redact,
    submit_body,
)

OPTIONS = dict(
    submission_id=None, runtime_env=None, metadata=None, entrypoint_num_cpus=None,
    entrypoint_num_gpus=None, entrypoint_memory=None, entrypoint_resources=None,
)  # fmt: skip


def test_terminal_states():
    assert {s for s in RayJobStatus if s.is_terminal} == {
        RayJobStatus.SUCCEEDED,
        RayJobStatus.FAILED,
        RayJobStatus.STOPPED,
    }


def test_submit_body_leaves_unset_options_to_ray():
    assert submit_body("python x.py", **OPTIONS) == {"entrypoint": "python x.py"}
    body = submit_body("python x.py", **{**OPTIONS, "entrypoint_num_gpus": 0, "metadata": {"n": 1}})
    assert body["entrypoint_num_gpus"] == 0 and body["metadata"] == {"n": "1"}


def test_submit_body_refuses_an_empty_entrypoint():
    with pytest.raises(ValueError, match="non-empty entrypoint"):
        submit_body("  ", **OPTIONS)


def test_runtime_env_merge_is_by_key_and_env_vars_by_variable():
    merged = merge_runtime_env(
        {"env_vars": {"A": "1", "B": "1"}, "working_dir": "gcs://a.zip"},
        {"env_vars": {"B": "2"}, "working_dir": "gcs://b.zip"},
    )
    assert merged == {"env_vars": {"A": "1", "B": "2"}, "working_dir": "gcs://b.zip"}


def test_job_info_from_api_and_id_prefers_submission_id():
    info = RayJobInfo.from_api({"job_id": "02000000", "submission_id": None, "status": "FAILED", "message": "x"})
    assert info.status is RayJobStatus.FAILED and info.id == "02000000"


@pytest.mark.parametrize("bad", ["", "a/b"])
def test_job_path_refuses_ids_that_would_change_the_route(bad):
    with pytest.raises(ValueError):
        job_path(bad)


def test_redact():
    assert redact("token abc123 in abc123", ["abc123", ""]) == "token *** in ***"
