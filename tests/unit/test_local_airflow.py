"""What `make airflow` configures (scripts/local_airflow.py), without starting it: the
lifecycle drills and browser tests start their real Airflow through the same functions."""

from __future__ import annotations

import json
import stat

import local_airflow  # scripts/, on sys.path through tests/conftest.py
import local_ray


def test_the_environment_has_the_examples_the_head_and_the_extra(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", "/somewhere/else")  # the machine's own Airflow config stays out
    extra_dags = tmp_path / "more_dags"
    settings = local_airflow.Settings(home=tmp_path / "home", port=8123, ray_profile="test", dags=[extra_dags],
                                      extra_env={"PYTHONPATH": "/x", "AIRFLOW__CORE__PARALLELISM": "2"})  # fmt: skip
    env = local_airflow.environment(settings)
    bundles = json.loads(env["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"])
    assert [b["kwargs"]["path"] for b in bundles] == [str(local_airflow.EXAMPLES), str(extra_dags.resolve())]
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(local_airflow.EXAMPLES)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor" and env["AIRFLOW__CORE__PARALLELISM"] == "2"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8123/execution/"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{tmp_path / 'home'}/airflow.db"
    assert json.loads(env["AIRFLOW_CONN_RAY_DEFAULT"]) == local_ray.connection(local_ray.PROFILES["test"])
    assert env["PYTHONPATH"].split(":") == ["/x", str(local_airflow.AIRFLOW_PATH)]  # the SQLite lock wait stays on the path
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "True"  # as Airflow: nothing runs until asked


def test_the_login_is_generated_once_and_kept_private(tmp_path):
    first = local_airflow.passwords(tmp_path)
    assert set(first) == {"admin"} and len(first["admin"]) >= 12
    assert local_airflow.passwords(tmp_path) == first  # the same login on every `make airflow`
    assert stat.S_IMODE((tmp_path / "passwords.json").stat().st_mode) == 0o600
    assert local_airflow.running(local_airflow.Settings(home=tmp_path)) == {}  # nothing started here
