"""Fixtures of the integration tests: a local S3-compatible server (moto in server mode)."""

from __future__ import annotations

import socket
import subprocess

import pytest

from tests.conftest import ROOT, wait_until_answers

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3(monkeypatch_session):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([str(ROOT / ".venv" / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    wait_until_answers(endpoint, 60, alive=lambda: server.poll() is None)
    env = {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}
    for key, value in env.items():
        monkeypatch_session.setenv(key, value)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("raydllm-test")
    yield env
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="session")
def monkeypatch_session():
    with pytest.MonkeyPatch.context() as patch:
        yield patch
