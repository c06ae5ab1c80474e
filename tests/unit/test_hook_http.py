"""RayHook against a real local HTTP(S) server with canned answers: what the hook sends
and how it turns each kind of answer into a typed error (no Ray needed)."""

from __future__ import annotations

import json
import socket
import time

import pytest

from airflow_provider_raydatallm.exceptions import (
    RayAPIError,
    RayAuthenticationError,
    RayClusterUnreachableError,
    RayJobAlreadyExistsError,
    RayJobNotFoundError,
    RayJobSubmissionError,
)
from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobStatus
from tests.unit import http_server

TOKEN = "tok-secret-0123456789"
HEADER_SECRET = "hdr-secret-abcdef"
JOB = {"type": "SUBMISSION", "job_id": "02000000", "submission_id": "sub-1", "status": "RUNNING",
       "entrypoint": "python x.py", "message": "running", "metadata": {"a": "b"}}  # fmt: skip


def _connect(monkeypatch, address: str, **extra) -> RayHook:
    scheme, hostport = address.split("://")
    host, port = hostport.split(":")
    conn = {"conn_type": "ray", "host": host, "port": int(port), "schema": scheme, "password": TOKEN,
            "extra": {"headers": {"X-Proxy-Key": HEADER_SECRET}, **extra}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_RAY_UNIT", json.dumps(conn))
    return RayHook(ray_conn_id="ray_unit")


@pytest.fixture
def server():
    canned, httpd = http_server.start()
    yield canned
    httpd.shutdown()


def _assert_no_secret(text: str) -> None:
    assert TOKEN not in text and HEADER_SECRET not in text


def test_sends_token_headers_and_a_non_browser_user_agent(server, monkeypatch):
    server.answer("GET", "/api/jobs/sub-1", 200, JOB)
    info = _connect(monkeypatch, server.address).get_job_info("sub-1")
    assert info.status is RayJobStatus.RUNNING and info.job_id == "02000000" and info.metadata == {"a": "b"}
    headers = {k.lower(): v for k, v in server.seen[-1].headers.items()}
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert headers["x-proxy-key"] == HEADER_SECRET
    assert not headers["user-agent"].startswith("Mozilla")


def test_submit_merges_connection_defaults_under_the_jobs_own(server, monkeypatch):
    server.answer("POST", "/api/jobs/", 200, {"job_id": "j", "submission_id": "mine"})
    hook = _connect(
        monkeypatch,
        server.address,
        runtime_env={"env_vars": {"A": "conn", "B": "conn"}, "pip": ["x"]},
        metadata={"team": "data"},
    )
    submitted = hook.submit_job(
        "python job.py",
        submission_id="mine",
        runtime_env={"env_vars": {"B": "job"}},
        metadata={"run": "1"},
        entrypoint_num_cpus=1,
        entrypoint_resources={"accelerator_type:L4": 0.01},
    )
    assert submitted == "mine"
    body = json.loads(server.seen[-1].body)
    assert body["runtime_env"] == {"env_vars": {"A": "conn", "B": "job"}, "pip": ["x"]}
    assert body["metadata"] == {"team": "data", "run": "1"}
    assert body["entrypoint_num_cpus"] == 1 and body["entrypoint_resources"] == {"accelerator_type:L4": 0.01}
    assert "entrypoint_num_gpus" not in body


def test_404_is_job_not_found_naming_job_and_address(server, monkeypatch):
    server.answer("GET", "/api/jobs/nope", 404, "Job nope does not exist", "text/plain")
    with pytest.raises(RayJobNotFoundError) as err:
        _connect(monkeypatch, server.address).get_job_info("nope")
    assert "nope" in str(err.value) and server.address in str(err.value)


def test_duplicate_submission_500_is_already_exists(server, monkeypatch):
    traceback = f"Traceback ...\nValueError: Job with submission_id dup already exists. token={TOKEN}"
    server.answer("POST", "/api/jobs/", 500, traceback, "text/plain")
    with pytest.raises(RayJobAlreadyExistsError) as err:
        _connect(monkeypatch, server.address).submit_job("echo hi", submission_id="dup")
    assert "dup" in str(err.value)
    _assert_no_secret(str(err.value))


def test_other_submission_failure_keeps_the_reason_and_redacts_secrets(server, monkeypatch):
    server.answer("POST", "/api/jobs/", 400, f"bad runtime_env: pip failed ({HEADER_SECRET})", "text/plain")
    with pytest.raises(RayJobSubmissionError) as err:
        _connect(monkeypatch, server.address).submit_job("echo hi")
    assert "pip failed" in str(err.value) and "HTTP 400" in str(err.value)
    _assert_no_secret(str(err.value))


@pytest.mark.parametrize("status", [401, 403])
def test_auth_refusal_is_typed_and_secret_free(server, monkeypatch, status):
    server.answer("GET", "/api/jobs/", status, "Unauthorized: Missing authentication token", "text/plain")
    with pytest.raises(RayAuthenticationError) as err:
        _connect(monkeypatch, server.address).list_jobs()
    assert err.value.status_code == status and server.address in str(err.value)
    _assert_no_secret(str(err.value))


def test_non_ray_server_is_named_as_such(server, monkeypatch):
    server.answer("GET", "/api/version", 200, "<html>Welcome to nginx</html>", "text/html")
    hook = _connect(monkeypatch, server.address)
    ok, message = hook.test_connection()
    assert not ok and "Ray dashboard" in message and server.address in message


def test_connection_reports_version_and_address(server, monkeypatch):
    server.answer("GET", "/api/version", 200, {"ray_version": "2.60.0", "version": "4"})
    server.answer("GET", "/api/jobs/", 200, [JOB])
    assert _connect(monkeypatch, server.address).test_connection() == (True, f"Ray 2.60.0 at {server.address}")


def test_unreachable_address_fails_fast(monkeypatch):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    hook = _connect(monkeypatch, f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(RayClusterUnreachableError) as err:
        hook.get_job_status("anything")
    assert time.monotonic() - started < 5
    assert f"127.0.0.1:{port}" in str(err.value)
    ok, message = hook.test_connection()
    assert not ok and "unreachable" in message


def test_unexpected_status_is_an_api_error_with_the_body_tail(server, monkeypatch):
    server.answer("POST", "/api/jobs/j1/stop", 503, "dashboard overloaded", "text/plain")
    with pytest.raises(RayAPIError) as err:
        _connect(monkeypatch, server.address).stop_job("j1")
    assert err.value.status_code == 503 and "overloaded" in str(err.value) and "j1" in str(err.value)


async def test_async_path_maps_errors_the_same_way(server, monkeypatch):
    server.answer("GET", "/api/jobs/gone", 404, "Job gone does not exist", "text/plain")
    server.answer("GET", "/api/jobs/sub-1", 200, {**JOB, "status": "SUCCEEDED"})
    hook = _connect(monkeypatch, server.address)
    try:
        assert await hook.aget_job_status("sub-1") is RayJobStatus.SUCCEEDED
        with pytest.raises(RayJobNotFoundError):
            await hook.aget_job_info("gone")
    finally:
        await hook.aclose()
    assert server.seen[0].headers.get("Authorization") == f"Bearer {TOKEN}"


class TestTLS:
    @pytest.fixture
    def tls_server(self, tmp_path):
        cert, key = http_server.self_signed_cert(tmp_path)
        canned, httpd = http_server.start(tls=(cert, key))
        canned.answer("GET", "/api/jobs/sub-1", 200, JOB)
        yield canned, cert
        httpd.shutdown()

    def test_untrusted_certificate_is_refused_by_default(self, tls_server, monkeypatch):
        canned, _ = tls_server
        with pytest.raises(RayClusterUnreachableError) as err:
            _connect(monkeypatch, canned.address).get_job_info("sub-1")
        assert "CERTIFICATE_VERIFY_FAILED" in str(err.value)

    def test_ca_bundle_path_verifies(self, tls_server, monkeypatch):
        canned, cert = tls_server
        hook = _connect(monkeypatch, canned.address, verify=str(cert))
        assert hook.get_job_info("sub-1").submission_id == "sub-1"

    def test_verify_false_skips_verification(self, tls_server, monkeypatch):
        canned, _ = tls_server
        assert _connect(monkeypatch, canned.address, verify=False).get_job_status("sub-1") is RayJobStatus.RUNNING


async def test_the_job_list_is_read_off_the_event_loop(server, monkeypatch):
    """The list grows with every job the cluster knows (thousands on a long-lived head): its
    decoding must not hold a triggerer's loop, whatever its size."""
    import threading

    from airflow_provider_raydatallm.hooks import _jobs_api

    server.answer("GET", "/api/jobs/", 200, [{**JOB, "submission_id": f"sub-{n}"} for n in range(3)])
    threads: list[str] = []
    parse = _jobs_api.RayJobInfo.from_api.__func__

    def recording(cls, data):
        threads.append(threading.current_thread().name)
        return parse(cls, data)

    monkeypatch.setattr(_jobs_api.RayJobInfo, "from_api", classmethod(recording))
    hook = _connect(monkeypatch, server.address)
    try:
        listed = await hook.alist_jobs()
        assert [j.submission_id for j in listed] == ["sub-0", "sub-1", "sub-2"]
        assert len(threads) == 3 and threading.main_thread().name not in threads
        threads.clear()
        server.answer("GET", "/api/jobs/sub-1", 200, JOB)  # one small answer: read on the loop
        assert (await hook.aget_job_info("sub-1")).submission_id == "sub-1"
        assert threads == [threading.main_thread().name]
    finally:
        await hook.aclose()


async def test_an_answer_that_comes_too_late_is_named_slow_not_unreachable(server, monkeypatch):
    from airflow_provider_raydatallm.exceptions import RayClusterSlowError

    server.answer("GET", "/api/jobs/sub-1", 200, JOB)
    server.delays[("GET", "/api/jobs/sub-1")] = 1.5
    hook = _connect(monkeypatch, server.address, timeout=0.5)
    try:
        with pytest.raises(RayClusterSlowError) as caught:
            await hook.aget_job_info("sub-1")
    finally:
        await hook.aclose()
    text = str(caught.value)
    assert "did not answer within 0.5s" in text and "GET /api/jobs/sub-1" in text and "unreachable" not in text
    assert "up but busy" in text
    _assert_no_secret(text)
    with pytest.raises(RayClusterSlowError):  # the sync path says the same
        _connect(monkeypatch, server.address, timeout=0.5).get_job_info("sub-1")


async def test_a_serve_config_write_waits_longer_than_a_read(server, monkeypatch):
    from airflow_provider_raydatallm.hooks import ray as ray_hook

    monkeypatch.setattr(ray_hook, "SERVE_WRITE_TIMEOUT", 3.0)
    server.answer("PUT", "/api/serve/applications/", 200, "")
    server.delays[("PUT", "/api/serve/applications/")] = 1.0  # longer than the connection's 0.5 s
    hook = _connect(monkeypatch, server.address, timeout=0.5)
    try:
        await hook.aput_serve_applications({"applications": []})
    finally:
        await hook.aclose()
    assert [s.method for s in server.seen] == ["PUT"]


def test_a_package_check_against_a_dead_head_says_unreachable(monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hook = _connect(monkeypatch, f"http://127.0.0.1:{port}")
    with pytest.raises(RayClusterUnreachableError, match="is unreachable"):
        hook._package_exists("/api/packages/gcs/_ray_pkg_x.zip")
