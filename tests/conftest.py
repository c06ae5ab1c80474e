"""Test session setup: a throwaway AIRFLOW_HOME on SQLite, and one real local Ray head
(token auth on, ports of the ``test`` profile) shared by every integration test."""

from __future__ import annotations

import json
import os
import secrets
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


sys.path.insert(0, str(ROOT / "scripts"))
# The example DAGs' demo data (example_dags/demo_helpers.py), as Airflow puts a DAGs folder on sys.path.
sys.path.insert(0, str(ROOT / "example_dags"))
import local_ray  # noqa: E402  (stdlib-only script shared with the Makefile)

TEST_PROFILE = local_ray.PROFILES["test"]


def pytest_configure(config: pytest.Config) -> None:
    # Before anything imports airflow: its config is read from AIRFLOW_HOME once.
    home = tempfile.mkdtemp(prefix="raydllm-airflow-home-")
    os.environ["AIRFLOW_HOME"] = home
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home}/airflow.db"
    # dag.test() finds DAGs through the configured bundles: the tests' DAGs and the examples.
    bundles = [
        {"name": name, "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {"path": str(path)}}
        for name, path in (("raydllm_test_dags", ROOT / "tests" / "dags"), ("raydllm_examples", ROOT / "example_dags"))
    ]
    os.environ["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = json.dumps(bundles)


@pytest.fixture(scope="session")
def ray_cluster():
    """The session's real Ray head: yields its connection dict (host, port, token). The
    worker nodes join only for the tests that ask for ``worker_nodes``."""
    local_ray.up(TEST_PROFILE, workers=False)
    try:
        yield local_ray.connection(TEST_PROFILE)
    finally:
        # Nothing of the session's cluster is kept: a graceful drain (~30 s) buys nothing here.
        local_ray.down(TEST_PROFILE, timeout=8)


def shut_serve_down() -> None:
    """Shut Ray Serve down on the session's head when no application is left on it (what
    ``serve shutdown`` does): its controller and proxy stop taking CPU from later tests.
    Left-over applications are a failure of the test that made them, so they stay visible."""
    import urllib.request

    base, headers = TEST_PROFILE.address, {"Authorization": f"Bearer {local_ray.token(TEST_PROFILE)}"}
    url = f"{base}/api/serve/applications/"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
        state = json.load(response)
    if state.get("controller_info", {}).get("node_id") is None or state.get("applications"):
        return
    urllib.request.urlopen(urllib.request.Request(url, headers=headers, method="DELETE"), timeout=120).close()


@pytest.fixture(scope="module")
def worker_nodes(ray_cluster):
    """The test profile's two worker nodes (``accelerator_type:L4`` and one ``gpu_slot``
    each), joined to the session's head for one test module and stopped after it."""
    local_ray.start_workers(TEST_PROFILE)
    try:
        yield TEST_PROFILE.workers
    finally:
        local_ray.stop_workers(TEST_PROFILE)


@pytest.fixture
def ray_conn(ray_cluster, monkeypatch):
    """`ray_default` pointing at the session's head, as an Airflow env-var connection."""
    monkeypatch.setenv("AIRFLOW_CONN_RAY_DEFAULT", json.dumps(ray_cluster))
    return ray_cluster


ECHO_KEY = "sk-echo-" + secrets.token_hex(12)


@pytest.fixture(scope="session")
def echo_endpoint():
    """A local OpenAI-compatible endpoint that needs ECHO_KEY (tests/echo_server.py): its URL."""
    from tests import echo_server

    server, url = echo_server.start(ECHO_KEY)
    yield url
    server.shutdown()


def wait_until_answers(url: str, timeout: float, alive=lambda: True, why=lambda: "") -> None:
    """Block until ``url`` answers HTTP (any status), or fail saying ``why()``. ``alive()``
    False (the server process died) fails at once."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        assert alive(), f"{url}: the server process exited. {why()}"
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            if time.monotonic() >= deadline:
                raise AssertionError(f"{url} did not answer within {timeout:.0f}s. {why()}") from None
            time.sleep(1)
