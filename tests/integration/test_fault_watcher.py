"""The watcher against the session's real Ray head seen through a fault-injecting proxy: a
burst of 500s or a short outage is ridden out; 401, 404 and an outage longer than the retry
budget end the wait with an error naming the job, and the job's real status, read from the
head directly (not through the proxy), is what the policy in docs/lifecycle.md says."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import select
import socket
import threading
import time
import uuid

import pytest

from airflow_provider_raydatallm.events import validate_event
from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobStatus
from airflow_provider_raydatallm.triggers import RayJobTrigger
from airflow_provider_raydatallm.watch import JobWatch, WaitPolicy, wait_sync

pytestmark = pytest.mark.integration
log = logging.getLogger("test_fault_watcher")
BODIES = {
    500: b"500 Internal Server Error\n\nServer got itself in trouble",
    401: b"Unauthorized: Missing authentication token",
    404: b"404: Not Found",
}


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of the dashboard. ``fail(status)`` answers requests
    itself with that status (for ``count`` requests or ``seconds``, optionally only some
    methods); ``refuse()`` closes the port (connections refused) and cuts open ones."""

    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.answered: collections.Counter[int] = collections.Counter()
        self.passed = 0
        self._fault: tuple[int, int | None, float | None, set[str] | None] | None = None
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._stopped = False
        self.port = self._listen(0)
        threading.Thread(target=self._accept_loop, daemon=True).start()

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- switching ----------------------------------------------------------------------------

    def pass_through(self) -> None:
        with self._lock:
            self._fault = None
        if self._listener is None:
            self._listen(self.port)

    def fail(
        self, status: int, count: int | None = None, seconds: float | None = None, methods: set[str] | None = None
    ) -> None:
        with self._lock:
            self._fault = (status, count, time.monotonic() + seconds if seconds else None, methods)

    def refuse(self, seconds: float | None = None) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            for sock in list(self._open):
                _close(sock)
        if seconds:
            threading.Timer(seconds, self.pass_through).start()

    def close(self) -> None:
        self._stopped = True
        self.refuse()

    # -- serving ------------------------------------------------------------------------------

    def _listen(self, port: int) -> int:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        return listener.getsockname()[1]

    def _accept_loop(self) -> None:
        while not self._stopped:
            listener = self._listener
            if listener is None:
                time.sleep(0.05)
                continue
            try:
                conn, _ = listener.accept()
            except OSError:  # a timeout, or the listener closed under us
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _answer(self, method: str) -> int | None:
        """The status to answer this request with, or None to pass it on."""
        with self._lock:
            if self._fault is None:
                return None
            status, count, until, methods = self._fault
            if until is not None and time.monotonic() >= until:
                self._fault = None
                return None
            if methods is not None and method not in methods:
                return None
            if count is not None:
                self._fault = (status, count - 1, until, methods) if count > 1 else None
            self.answered[status] += 1
            return status

    def _serve(self, conn: socket.socket) -> None:
        head = b""
        try:
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return _close(conn)
                head += chunk
        except OSError:
            return _close(conn)
        header_block, rest = head.split(b"\r\n\r\n", 1)
        lines = header_block.split(b"\r\n")
        status = self._answer(lines[0].split(b" ", 1)[0].decode())
        if status is not None:
            body = BODIES[status]
            conn.sendall(b"HTTP/1.1 %d Fault\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (status, len(body), body))  # fmt: skip
            return _close(conn)
        if not any(line.lower().startswith(b"upgrade:") for line in lines):
            # One request per connection, so every request meets the current fault.
            lines = [line for line in lines if not line.lower().startswith((b"connection:", b"keep-alive:"))]
            lines.append(b"Connection: close")
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            return _close(conn)
        with self._lock:
            self.passed += 1
            self._open.update((conn, upstream))
        try:
            upstream.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + rest)
            _pipe(conn, upstream)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.difference_update((conn, upstream))
            _close(conn)
            _close(upstream)


def _pipe(a: socket.socket, b: socket.socket) -> None:
    peer = {a: b, b: a}
    while True:
        ready, _, _ = select.select([a, b], [], [], 1.0)
        for sock in ready:
            data = sock.recv(65536)
            if not data:
                return
            peer[sock].sendall(data)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest.fixture
def proxy(ray_conn, monkeypatch):
    fault_proxy = FaultProxy(ray_conn["port"])
    monkeypatch.setenv("AIRFLOW_CONN_RAY_PROXY", json.dumps({**ray_conn, "port": fault_proxy.port}))
    yield fault_proxy
    fault_proxy.close()


def _submit(seconds: float) -> str:
    """A cheap real job (a driver that prints and sleeps), submitted straight to the head."""
    code = f"import time; print('started', flush=True); time.sleep({seconds}); print('finished')"
    return RayHook().submit_job(f'python -c "{code}"', submission_id=f"fault-{uuid.uuid4().hex[:8]}")


def _wait_running(job_id: str) -> None:
    deadline = time.monotonic() + 60
    while RayHook().get_job_status(job_id) is not RayJobStatus.RUNNING:
        assert time.monotonic() < deadline, f"{job_id} never ran"
        time.sleep(0.2)


async def _watch(job_id: str, **policy) -> tuple:
    hook = RayHook(ray_conn_id="ray_proxy")
    try:
        return await JobWatch(hook, job_id, WaitPolicy(poll_interval=0.5, fetch_logs=False, **policy), log).run()
    finally:
        await hook.aclose()


async def test_a_burst_of_500s_is_ridden_out_by_the_trigger(proxy):
    job_id = _submit(8)
    _wait_running(job_id)
    proxy.fail(500, count=3)
    trigger = RayJobTrigger(job_id, ray_conn_id="ray_proxy", poll_interval=0.5, retry_budget=60)
    events = [validate_event(e.payload) async for e in trigger.run()]
    assert [(e.status, e.job_status) for e in events] == [("success", "SUCCEEDED")]
    assert proxy.answered[500] == 3 and proxy.passed > 0
    assert RayHook().get_job_status(job_id) is RayJobStatus.SUCCEEDED  # from the head itself
    assert events[0].log_offset == len(RayHook().get_job_logs(job_id))  # the whole log came through


def test_an_outage_shorter_than_the_budget_is_ridden_out_on_a_worker(proxy):
    job_id = _submit(6)
    _wait_running(job_id)
    proxy.refuse(seconds=3)
    policy = WaitPolicy(poll_interval=0.5, fetch_logs=False, retry_budget=30, retry_delay=0.5)
    event = wait_sync("ray_proxy", job_id, policy, log)
    assert (event.status, event.job_status) == ("success", "SUCCEEDED")
    assert RayHook().get_job_status(job_id) is RayJobStatus.SUCCEEDED


@pytest.fixture
def long_job(ray_conn):
    job_id = _submit(300)
    _wait_running(job_id)
    yield job_id
    RayHook().stop_job(job_id)


async def test_401_ends_the_wait_and_names_the_job_it_could_not_stop(proxy, long_job):
    proxy.fail(401)
    started = time.monotonic()
    event = await _watch(long_job, retry_budget=3600, retry_delay=0.2, stop_retry_seconds=2)
    assert time.monotonic() - started < 20  # not the hour-long budget
    assert event.status == "error" and event.job_status is None
    assert "HTTP 401" in event.message and "Stopping it failed too" in event.message
    assert f"`ray job stop {long_job} --address {proxy.address}`" in event.message
    # The job could not be stopped through the proxy: it runs, and the error says so.
    assert RayHook().get_job_status(long_job) is RayJobStatus.RUNNING


async def test_404_ends_the_wait_saying_ray_knows_no_such_job(proxy, long_job):
    proxy.fail(404)
    event = await _watch(long_job, retry_budget=3600, retry_delay=0.2, stop_retry_seconds=2)
    assert event.status == "error" and "no such job" in event.message
    assert f"Ray knows no job {long_job} at {proxy.address}" in event.message and "ray job stop" in event.message
    assert RayHook().get_job_status(long_job) is RayJobStatus.RUNNING


async def test_refused_connections_past_the_budget_leave_an_error_naming_the_running_job(proxy, long_job):
    proxy.refuse()
    started = time.monotonic()
    event = await _watch(long_job, retry_budget=3, retry_delay=0.2, stop_retry_seconds=2)
    assert 3 <= time.monotonic() - started < 30
    assert event.status == "error" and "gave up after" in event.message and "unreachable" in event.message
    assert "Stopping it failed too" in event.message and "may commit its output unwatched" in event.message
    assert f"`ray job stop {long_job} --address {proxy.address}`" in event.message
    assert RayHook().get_job_status(long_job) is RayJobStatus.RUNNING


async def test_500s_past_the_budget_stop_the_job_once_the_dashboard_answers(proxy, long_job):
    proxy.fail(500, seconds=5)
    event = await _watch(long_job, retry_budget=3, retry_delay=0.2, stop_retry_seconds=20)
    assert event.status == "error" and "gave up after" in event.message and "HTTP 500" in event.message
    assert "The job was stopped (Ray reports it STOPPED)" in event.message
    await asyncio.sleep(0)
    assert RayHook().get_job_status(long_job) is RayJobStatus.STOPPED
