"""Which job a try follows (operators/_jobs.py), against a real local HTTP server answering
as the Ray Jobs API: two deployments sharing one cluster never touch each other's jobs, a
retry adopts its series' finished job, a clear never does and stops the older series' job."""

from __future__ import annotations

import json
import logging

import pytest

from airflow_provider_raydatallm import namespace
from airflow_provider_raydatallm.exceptions import RayConnectionConfigError, RayLLMConfigError
from airflow_provider_raydatallm.hooks.ray import RayHook
from airflow_provider_raydatallm.job.spec import RunIdentity
from airflow_provider_raydatallm.operators import RayLLMBatchOperator, _jobs, _submission as sub
from tests.unit import http_server

RUN = RunIdentity(dag_id="daily", task_id="classify", run_id="scheduled__2026-11-30T00:00:00+00:00", try_number=3)
FIRST_TRY = 2  # this try's series began at try 2 (a clear came after try 1)
OURS = "prod"


@pytest.fixture
def server(monkeypatch):
    canned, httpd = http_server.start()
    # The package store is not what these tests are about: nothing is uploaded.
    monkeypatch.setattr(_jobs, "upload", lambda hook, spec, secrets: ("raydllm_spec_test", ["gcs://spec.zip"]))
    monkeypatch.setattr(_jobs, "SETTLE_SECONDS", 0)
    canned.answer("POST", "/api/jobs/", 200, {"job_id": "02000000", "submission_id": "set-by-test"})
    yield canned
    httpd.shutdown()


def _hook(monkeypatch, server, space: str = OURS) -> RayHook:
    host, port = server.address.removeprefix("http://").split(":")
    conn = {"conn_type": "ray", "host": host, "port": int(port), "extra": {"namespace": space}}
    monkeypatch.setenv(f"AIRFLOW_CONN_RAY_{space.upper()}", json.dumps(conn))
    return RayHook(ray_conn_id=f"ray_{space}")


def _spec(prompt: str = "Classify the sentiment."):
    op = RayLLMBatchOperator(
        task_id="classify", processor_config={"type": "vLLMEngineProcessorConfig", "model_source": "/models/m"},
        preprocess=lambda row, p=prompt: {"messages": [{"role": "user", "content": p + row["text"]}]},
        input_uri="/data/posts.jsonl", output_uri="/data/out",
    )  # fmt: skip
    return op.build_spec(RUN)


def _ids(space: str = OURS, run: RunIdentity = RUN) -> list[str]:
    base = sub.submission_base(run.dag_id, run.task_id, run.run_id, run.map_index, namespace=space)
    return [sub.submission_id(base, n) for n in (1, 2, 3)]


def _job(job_id: str, status: str, *, series: int, spec_hash: str, space: str = OURS, **instance: str) -> dict:
    metadata = {
        "airflow_dag_id": RUN.dag_id, "airflow_task_id": RUN.task_id, "airflow_run_id": RUN.run_id,
        "airflow_map_index": "-1", "airflow_try_number": "1", **instance,
        _jobs.NAMESPACE_KEY: space, _jobs.SERIES_KEY: str(series), _jobs.SPEC_HASH_KEY: spec_hash,
    }  # fmt: skip
    return {"type": "SUBMISSION", "job_id": None, "submission_id": job_id, "status": status, "metadata": metadata}


def _find(hook: RayHook, spec, log: logging.Logger | None = None) -> tuple[str, bool]:
    how = _jobs.Submission(first_try=FIRST_TRY)
    return _jobs.find_or_submit(hook, spec, how, log or logging.getLogger("test"), "classify")


def _submitted(server) -> list[dict]:
    return [json.loads(seen.body) for seen in server.seen if (seen.method, seen.path) == ("POST", "/api/jobs/")]


def _stopped(server) -> list[str]:
    return [seen.path.split("/")[3] for seen in server.seen if seen.method == "POST" and seen.path.endswith("/stop")]


def test_two_deployments_get_their_own_ids_and_name_themselves_in_the_metadata(server, monkeypatch):
    spec = _spec()
    staging, _ = _find(_hook(monkeypatch, server, "staging"), spec)
    prod, _ = _find(_hook(monkeypatch, server, "prod"), spec)
    assert staging != prod and (staging, prod) == (_ids("staging")[0], _ids("prod")[0])
    metadata = [body["metadata"] for body in _submitted(server)]
    assert [m[_jobs.NAMESPACE_KEY] for m in metadata] == ["staging", "prod"]
    assert {m[_jobs.SERIES_KEY] for m in metadata} == {str(FIRST_TRY)}
    assert {m[_jobs.SPEC_HASH_KEY] for m in metadata} == {_jobs.spec_hash(spec)}


SAME, OTHER = "same", "other"
EARLIER, LATER = FIRST_TRY - 1, FIRST_TRY + 3


# (the first job's status, its series, its spec, its owner) -> (the attempt followed,
#  reattached or adopted, the first job stopped)
@pytest.mark.parametrize(
    ("status", "series", "spec", "owner", "followed", "reused", "stopped"),
    [
        ("RUNNING", FIRST_TRY, SAME, {}, 1, True, False),  # a retry while the job runs: reattach
        ("PENDING", FIRST_TRY, OTHER, {}, 2, False, True),  # another spec: stop it, never reattach
        ("SUCCEEDED", FIRST_TRY, SAME, {}, 1, True, False),  # the job ended meanwhile: adopt it
        ("SUCCEEDED", FIRST_TRY, OTHER, {}, 2, False, False),
        ("FAILED", FIRST_TRY, SAME, {}, 2, False, False),
        ("RUNNING", EARLIER, SAME, {}, 2, False, True),  # cleared since: the clear stops the old job
        ("SUCCEEDED", EARLIER, SAME, {}, 2, False, False),  # cleared since: never adopt
        ("RUNNING", LATER, SAME, {}, 2, False, False),  # this try is the stale one
        ("RUNNING", FIRST_TRY, SAME, {"space": "staging"}, 2, False, False),
        ("SUCCEEDED", FIRST_TRY, SAME, {"space": "staging"}, 2, False, False),
        ("RUNNING", FIRST_TRY, SAME, {"airflow_run_id": "manual__1"}, 2, False, False),
        ("SUCCEEDED", FIRST_TRY, SAME, {"airflow_map_index": "3"}, 2, False, False),
        ("RUNNING", FIRST_TRY, SAME, {"airflow_task_id": "summarize"}, 2, False, False),
    ],
)
def test_which_job_a_try_follows(server, monkeypatch, status, series, spec, owner, followed, reused, stopped):
    wanted = _spec()
    first, second, _ = _ids()
    digest = _jobs.spec_hash(wanted) if spec == SAME else _jobs.spec_hash(_spec("Say something else."))
    server.answer("GET", f"/api/jobs/{first}", 200, _job(first, status, series=series, spec_hash=digest, **owner))
    if stopped:  # Ray reports it STOPPED once asked
        server.then("GET", f"/api/jobs/{first}", 200, _job(first, "STOPPED", series=series, spec_hash=digest))
    server.answer("POST", f"/api/jobs/{first}/stop", 200, {"stopped": True})

    job_id, was_reused = _find(_hook(monkeypatch, server), wanted)

    assert (job_id, was_reused) == ([first, second][followed - 1], reused)
    assert _stopped(server) == ([first] if stopped else [])
    assert [body["submission_id"] for body in _submitted(server)] == ([] if reused else [second])


def test_adopting_says_so_and_submits_nothing(server, monkeypatch, caplog):
    wanted = _spec()
    first = _ids()[0]
    server.answer("GET", f"/api/jobs/{first}", 200, _job(first, "SUCCEEDED", series=FIRST_TRY,
                                                         spec_hash=_jobs.spec_hash(wanted)))  # fmt: skip
    with caplog.at_level(logging.INFO, logger="test"):
        assert _find(_hook(monkeypatch, server), wanted) == (first, True)
    assert (
        f"Adopting Ray job {first}, which finished SUCCEEDED for an earlier try of this series: not running it again"
        in caplog.text
    )
    assert _submitted(server) == [] and _stopped(server) == []


def test_a_later_job_of_the_series_is_not_passed_over_for_an_earlier_success(server, monkeypatch):
    # a1 succeeded with this spec, then a2 succeeded with another (its output replaced a1's):
    # adopting a1 would report a result the output no longer holds.
    wanted = _spec()
    first, second, third = _ids()
    server.answer("GET", f"/api/jobs/{first}", 200, _job(first, "SUCCEEDED", series=FIRST_TRY,
                                                         spec_hash=_jobs.spec_hash(wanted)))  # fmt: skip
    server.answer("GET", f"/api/jobs/{second}", 200, _job(second, "SUCCEEDED", series=FIRST_TRY, spec_hash="0" * 16))
    assert _find(_hook(monkeypatch, server), wanted) == (third, False)


def test_the_namespace_comes_from_the_connection_then_the_config_then_the_deployment(monkeypatch):
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql://airflow:pw-1@db-a:5432/airflow")
    monkeypatch.setenv("AIRFLOW__RAYDATALLM__NAMESPACE", "from-config")
    assert namespace.resolve("from-connection") == "from-connection"
    assert namespace.resolve("") == "from-config"
    monkeypatch.delenv("AIRFLOW__RAYDATALLM__NAMESPACE")
    first = namespace.resolve("")
    assert first.startswith("af-") and namespace.is_valid(first)
    # The same deployment after a password rotation; then another deployment's database.
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql://airflow:pw-2@db-a:5432/airflow")
    assert namespace.resolve("") == first
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql://airflow:pw-1@db-b:5432/airflow")
    assert namespace.resolve("") != first


def test_a_bad_namespace_is_refused_naming_where_it_was_set(monkeypatch):
    from airflow_provider_raydatallm.hooks._connection import config_from_connection

    assert config_from_connection(None, None, None, None, {"namespace": " prod-eu.1 "}).namespace == "prod-eu.1"
    with pytest.raises(RayConnectionConfigError, match="extra 'namespace' must be .* got 'prod eu'"):
        config_from_connection(None, None, None, None, {"namespace": "prod eu"})
    monkeypatch.setenv("AIRFLOW__RAYDATALLM__NAMESPACE", "prod/eu")
    with pytest.raises(RayLLMConfigError, match=r"\[raydatallm\] namespace='prod/eu'"):
        namespace.resolve(None)
