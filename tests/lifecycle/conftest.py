"""A real Airflow for the lifecycle drills and the browser tests: api-server, scheduler,
triggerer and dag-processor as separate processes (LocalExecutor, SQLite), beside the
session's real Ray head. dag.test() never kills, clears or defers for real; this does.

It is started by ``scripts/local_airflow.py``, the code ``make airflow`` runs, with the
example DAGs, plus the drills' DAGs, users and connections. One Airflow per test session
(started on first use). The drills drive it through the REST API (v2) and read task logs
from its log folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import local_airflow  # scripts/, on sys.path through tests/conftest.py
from airflow_provider_raydatallm.configs import default_model_path
from tests.conftest import ECHO_KEY, shut_serve_down

DAGS = Path(__file__).parent / "dags"
COMPONENTS = local_airflow.COMPONENTS
# Users of the test Airflow (SimpleAuthManager with DAG-level rules, see airflow_path/raydllm_test_auth.py):
# outsider may not read the hidden DAGs; noxcom may read every task instance but no XCom.
ROLES = {"admin": "admin", "outsider": "viewer", "noxcom": "viewer"}
PASSWORDS = {"admin": "admin-pass-0", "outsider": "outsider-pass-0", "noxcom": "noxcom-pass-0"}
NO_XCOM_USER = "noxcom"
DECOY_SECRET = "decoy-secret-never-sent-0"
HIDDEN_DAGS = ("raydllm_ui_hidden",)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _process_tree(root: int) -> list[int]:
    """``root`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


class RealAirflow:
    """The running Airflow: its processes (by pid), its REST API, its logs."""

    def __init__(self, settings: local_airflow.Settings, pids: dict[str, int]):
        self.settings = settings
        self.home, self.port = settings.home, settings.port
        self.env = local_airflow.environment(settings)
        self.base = settings.base
        self.procs: dict[str, int] = dict(pids)
        self._token = ""
        # Set per test (_test_deadline below): a wait gives up, with the components' logs,
        # before pytest-timeout ends the test with nothing but thread stacks.
        self.test_deadline = float("inf")
        # A drill's thread (test_concurrent_recoveries.py) sets its own deadline here: its
        # waits must not end with whichever test happens to run meanwhile.
        self.thread_deadline = threading.local()
        self._writes = threading.Lock()

    # -- processes --------------------------------------------------------------------------

    def start(self, component: str, name: str | None = None, env: dict[str, str] | None = None) -> None:
        """Start a component; ``name`` tells a second one of a kind apart (its log is ``<name>.out``)."""
        proc = local_airflow.start_component(self.settings, self.env, component, name, env)
        self.procs[name or component] = proc.pid

    def start_second_triggerer(self, name: str = "triggerer-2") -> None:
        """Another triggerer beside the first (the usual HA setup), serving its logs on its own port."""
        self.start("triggerer", name, {"AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port())})

    def freeze(self, name: str) -> None:
        """SIGSTOP a component and every process under it (a triggerer runs its triggers in a
        child of its own process group): it misses its heartbeats, as under load."""
        for pid in _process_tree(self.procs[name]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        for pid in _process_tree(self.procs[name]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def kill(self, component: str, sig: int = signal.SIGKILL) -> None:
        pid = self.procs.pop(component)
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 60
        while local_airflow._alive(pid):
            if time.monotonic() > deadline:
                raise AssertionError(f"{component} (pid {pid}) did not exit within 60 s of signal {sig}")
            time.sleep(0.2)

    def stop_all(self) -> None:
        for component in list(self.procs):
            self.thaw(component)  # a frozen one cannot exit
        for component, pid in list(self.procs.items()):
            local_airflow.stop_pid(pid, timeout=10)  # the drills are over: a slow graceful exit buys nothing
            self.procs.pop(component, None)

    def component_log(self, component: str) -> str:
        path = self.home / f"{component}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- REST API ---------------------------------------------------------------------------

    def token(self, username: str = "admin") -> str:
        """A JWT for one of the test users, from Airflow's own login endpoint."""
        body = json.dumps({"username": username, "password": PASSWORDS[username]}).encode()
        req = urllib.request.Request(f"{self.base}/auth/token", data=body, method="POST")
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())["access_token"]

    def get(self, path: str, username: str = "admin") -> tuple[int, Any]:
        """GET as a given user: (status, parsed body or text)."""
        req = urllib.request.Request(f"{self.base}{path}")
        req.add_header("Authorization", f"Bearer {self.token(username)}")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, text = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, text = err.code, err.read()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text.decode(errors="replace")

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        if not self._token:
            self._token = self.token("admin")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.base}{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {self._token}")
        req.add_header("Content-Type", "application/json")
        # Drills run side by side in threads (test_concurrent_recoveries.py): two writes at
        # once through the API server fail on SQLite ("Database error", 500), so a user's
        # clicks arrive one at a time here, as from one person at one browser.
        with self._writes if method != "GET" else contextlib.nullcontext():
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    text = resp.read()
            except urllib.error.HTTPError as err:
                raise AssertionError(f"{method} {path} -> {err.code}: {err.read()[:2000]!r}") from None
        return json.loads(text) if text else None

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                dag = self._request("GET", f"/api/v2/dags/{dag_id}")
                if not dag.get("is_paused") and not dag.get("has_import_errors"):
                    return
            except AssertionError:
                pass
            time.sleep(2)
        errors = self._request("GET", "/api/v2/importErrors")
        raise AssertionError(f"DAG {dag_id} never showed up; import errors: {errors}")

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        self.wait_for_dag(dag_id)
        run = self._request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
        return run["dag_run_id"]

    def ti(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        return self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")

    def _wait_state(self, what: str, fetch: Callable[[], dict[str, Any]], states: set[str], timeout: float) -> dict[str, Any]:
        deadline = min(time.monotonic() + timeout, getattr(self.thread_deadline, "value", self.test_deadline))
        while True:  # one look at least, however late
            found = fetch()
            if found.get("state") in states:
                return found
            if time.monotonic() >= deadline:
                break
            time.sleep(1)
        raise AssertionError(f"{what} never reached {states}: {found}\n{self.diagnostics()}")

    def warm_triggerer(self, timeout: float = 300) -> None:
        """Run the warm_triggerer DAG: the triggerer builds its in-process execution API now
        (tests/lifecycle/airflow_path/raydllm_warmup.py), not during the first drill."""
        run_id = self.trigger("warm_triggerer", {})
        ti = self.wait_ti("warm_triggerer", run_id, "warm", {"success", "failed"}, timeout)
        assert ti["state"] == "success", self.diagnostics()

    def wait_ti(self, dag_id: str, run_id: str, task_id: str, states: set[str], timeout: float = 900) -> dict[str, Any]:
        return self._wait_state(f"{dag_id}.{task_id} in {run_id}", lambda: self.ti(dag_id, run_id, task_id), states, timeout)

    def wait_run(self, dag_id: str, run_id: str, states: set[str], timeout: float = 120) -> dict[str, Any]:
        fetch = lambda: self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")  # noqa: E731
        return self._wait_state(f"{dag_id} run {run_id}", fetch, states, timeout)

    def mark(self, dag_id: str, run_id: str, task_id: str, state: str) -> None:
        self._request("PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}", {"new_state": state})

    def mark_run(self, dag_id: str, run_id: str, state: str) -> None:
        self._request("PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", {"state": state})

    def clear(self, dag_id: str, run_id: str, task_id: str) -> None:
        self._request("POST", f"/api/v2/dags/{dag_id}/clearTaskInstances",
                      {"dag_run_id": run_id, "task_ids": [task_id], "dry_run": False, "only_failed": False})  # fmt: skip

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        entry = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}")
        return entry["value"]

    # -- logs -------------------------------------------------------------------------------

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int | None = None) -> str:
        """Everything written for the task instance (worker and triggerer files), one try or all."""
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        pattern = f"attempt={try_number}.log*" if try_number else "attempt=*.log*"
        # A mapped task's tries are one folder further down (map_index=N/).
        return "\n".join(p.read_text(errors="replace") for p in sorted(folder.rglob(pattern)))

    def diagnostics(self) -> str:
        return "\n".join(f"--- {c} ---\n{self.component_log(c)[-2500:]}" for c in COMPONENTS)


_STARTED = pytest.StashKey[float]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """When the test's pytest-timeout clock started (near enough: its setup)."""
    item.stash[_STARTED] = time.monotonic()


def _timeout_of(request) -> float:
    """The test's pytest-timeout in seconds, as pytest-timeout reads it (marker, then the
    command line or the environment, then the ini file); 0 when there is none."""
    marker = request.node.get_closest_marker("timeout")
    if marker and (marker.args or "timeout" in marker.kwargs):
        value = marker.args[0] if marker.args else marker.kwargs["timeout"]
    elif request.config.getoption("timeout", None) is not None:
        value = request.config.getoption("timeout")
    elif os.environ.get("PYTEST_TIMEOUT"):
        value = os.environ["PYTEST_TIMEOUT"]
    else:
        value = request.config.getini("timeout")
    return float(value or 0)


@pytest.fixture(autouse=True)
def _test_deadline(request):
    """Waits on the real Airflow (RealAirflow._wait_state) end 30 s before the test's
    pytest-timeout would: a failed wait prints the components' logs, pytest-timeout only
    thread stacks."""
    limit = _timeout_of(request)
    if "real_airflow" not in request.fixturenames or limit <= 0:
        yield
        return
    airflow = request.getfixturevalue("real_airflow")
    started = request.node.stash.get(_STARTED, time.monotonic())
    airflow.test_deadline = started + max(limit - 30, limit / 2)
    try:
        yield
    finally:
        airflow.test_deadline = float("inf")


@pytest.fixture(scope="package")
def real_airflow(ray_cluster, echo_endpoint, tmp_path_factory):
    home = tmp_path_factory.mktemp("real-airflow")
    # What make airflow starts (scripts/local_airflow.py), with the drills' DAGs beside the
    # examples, their users (DAG-level rules), the stand-in endpoint and lineage to a file.
    extra = {
        "AIRFLOW__CORE__AUTH_MANAGER": "raydllm_test_auth.DagRestrictedAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{user}:{role}" for user, role in ROLES.items()),
        "RAYDLLM_TEST_HIDDEN_DAGS": ",".join(HIDDEN_DAGS),
        "RAYDLLM_TEST_NO_XCOM_USERS": NO_XCOM_USER,
        # OpenLineage events of the DAGs that opt in (enable_lineage), to a file the tests read.
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps({"type": "file", "log_file_path": str(home / "openlineage.jsonl"), "append": True}),
        "AIRFLOW__OPENLINEAGE__SELECTIVE_ENABLE": "True",
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "raydllm-tests",
        # The drills' DAGs run as soon as they are triggered; no DAG runs on its schedule
        # (the scheduled examples would each start a run of their own).
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
        "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "5",
        "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
        "AIRFLOW_CONN_ECHO": json.dumps({"conn_type": "http", "host": echo_endpoint, "password": ECHO_KEY}),
        # A connection the drills' tasks never use: the plugin must never be pointed at it.
        "AIRFLOW_CONN_RAY_DECOY": json.dumps({"conn_type": "ray", "host": "127.0.0.1", "port": 9, "password": DECOY_SECRET}),
        # The example DAGs' files (the sentiment example triggered from the UI) under the test's folder.
        "RAYDLLM_EXAMPLES_DIR": str(home / "examples"),
        "RAYDLLM_MODEL": default_model_path(),
        "PYTHONPATH": str(Path(__file__).parent / "airflow_path"),
    }  # fmt: skip
    settings = local_airflow.Settings(home=home, port=_free_port(), ray_profile="test", dags=[DAGS], extra_env=extra)
    (home / "passwords.json").write_text(json.dumps(PASSWORDS))
    started = time.monotonic()
    try:
        pids = local_airflow.up(settings)
    except RuntimeError:
        local_airflow.down(settings)
        raise
    print(f"real Airflow up in {time.monotonic() - started:.0f} s at {settings.base}")
    airflow = RealAirflow(settings, pids)
    try:
        airflow.warm_triggerer()
        yield airflow
    finally:
        airflow.stop_all()  # the drills are done: the system tests after them get the CPU
        try:
            shut_serve_down()
        except OSError as err:  # the drills' results stand; the later tests only run slower
            print(f"Serve was not shut down after the drills: {err}")
