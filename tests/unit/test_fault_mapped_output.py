"""Mapped task instances sharing one output (or one error output) are refused at render time,
before any call to Ray: each would replace the files its siblings committed. Run with
dag.test() on SQLite, against a Ray connection nothing answers: a task that gets past the
check fails connecting instead, which shows where the check stands."""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

DAG_FILE = Path(__file__).resolve().parents[1] / "dags" / "mapped_output_dags.py"
SHARED = "is the same for every mapped task instance"
CROSSED = (
    r"task classify\[(\d)\]: output_uri='(/data/out/[ab])' is given to several mapped task instances "
    r"\(expand\(\) makes every combination of its lists\): each would replace the others' output\. Give each "
    r"instance its own output_uri \(pair it with its input in expand_kwargs\(\), or put \{\{ ti\.map_index \}\} in "
    r"it\), or set overwrite=True"
)


@pytest.fixture(scope="module")
def dags():
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE))
    assert not bag.import_errors, bag.import_errors
    return bag.dags


@pytest.fixture
def unreachable_ray(monkeypatch) -> str:
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conn = {"conn_type": "ray", "host": "127.0.0.1", "port": port}
    monkeypatch.setenv("AIRFLOW_CONN_RAY_UNREACHABLE", json.dumps(conn))
    return f"127.0.0.1:{port}"


def _run(dags, dag_id: str, capfd) -> tuple[dict[int, str], str]:
    capfd.readouterr()
    run = dags[dag_id].test(logical_date=dt.datetime(2026, 11, 30, tzinfo=dt.timezone.utc))
    states = {ti.map_index: str(ti.state) for ti in run.get_task_instances()}
    captured = capfd.readouterr()
    return states, captured.out + captured.err


@pytest.mark.parametrize(
    ("dag_id", "argument", "value", "what"),
    [
        ("mapped_shared_output", "output_uri", "/data/out/2026-11-30", "output"),
        ("mapped_shared_error_output", "error_output_uri", "/data/errors/2026-11-30", "failed rows"),
    ],
)
def test_a_shared_output_is_refused_before_ray_is_called(dags, unreachable_ray, capfd, dag_id, argument, value, what):
    states, logged = _run(dags, dag_id, capfd)
    assert states == {0: "failed", 1: "failed"}
    example = value.replace("2026-11-30", "{{ ds }}") + "/part-{{ ti.map_index }}"
    for index in (0, 1):
        message = (
            f"task classify[{index}]: {argument}='{value}' {SHARED}: each would replace the others' {what}. "
            f"Put {{{{ ti.map_index }}}} in it (e.g. '{example}'), map over {argument} too, or set overwrite=True"
        )
        assert message in logged, logged[-3000:]
    assert "RayLLMConfigError" in logged
    assert "RayClusterUnreachableError" not in logged and unreachable_ray not in logged


def test_expand_over_every_combination_shares_each_output(dags, unreachable_ray, capfd):
    states, logged = _run(dags, "mapped_output_crossed", capfd)
    assert states == {0: "failed", 1: "failed", 2: "failed", 3: "failed"}
    refused = dict(re.findall(CROSSED, logged))
    assert sorted(refused) == ["0", "1", "2", "3"]
    assert sorted(refused.values()) == ["/data/out/a", "/data/out/a", "/data/out/b", "/data/out/b"]
    assert "RayClusterUnreachableError" not in logged


@pytest.mark.parametrize(
    "dag_id",
    [
        "mapped_output_per_index",
        "mapped_output_expanded",
        "mapped_output_expand_kwargs",
        "mapped_shared_output_overwrite",
    ],
)
def test_an_output_that_varies_with_the_map_index_passes_the_check(dags, unreachable_ray, capfd, dag_id):
    states, logged = _run(dags, dag_id, capfd)
    assert states == {0: "failed", 1: "failed"}
    assert "mapped task instance" not in logged
    assert logged.count("RayClusterUnreachableError") >= 2 and unreachable_ray in logged, logged[-3000:]
