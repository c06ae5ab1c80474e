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


def test_a_recorded_pid_counts_only_while_it_is_the_process_started_then(tmp_path):
    import os

    local_airflow._record(tmp_path, {"scheduler": os.getpid()}, "abc")
    assert local_airflow._pids(tmp_path) == {"scheduler": os.getpid()} and local_airflow._recorded_digest(tmp_path) == "abc"
    body = json.loads((tmp_path / "pids.json").read_text())
    body["components"]["scheduler"]["started"] = "1"  # the pid now belongs to another process
    (tmp_path / "pids.json").write_text(json.dumps(body))
    assert local_airflow._pids(tmp_path) == {}
    import subprocess

    child = subprocess.Popen(["sleep", "30"])  # in this process's group, not leading one of its own
    try:
        local_airflow.stop_pid(child.pid)  # not a group this script started: nothing is signalled
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def test_a_taken_port_is_refused_before_anything_starts(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not local_airflow._port_free(port)
    assert local_airflow._port_free(port)
