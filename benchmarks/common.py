"""What the benchmarks share: the local Ray head, the stand-in endpoint, the object-store
sampler, submitting and timing jobs, and writing figures into docs/benchmarks.md.

They run from the Airflow environment (``.venv``, where the provider's Airflow side is),
against the ``make ray-up`` head; helpers that need Ray run in ``.venv-ray``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
RAY_PYTHON = ROOT / ".venv-ray" / "bin" / "python"
WORK = ROOT / ".cache" / "bench"
DOC = ROOT / "docs" / "benchmarks.md"
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "example_dags"))  # demo_helpers: the examples' demo data

import local_ray  # noqa: E402

PROFILE = local_ray.PROFILES["dev"]


def connect() -> None:
    """Start (or reuse) the local head and point ray_default at it."""
    local_ray.up(PROFILE)
    os.environ["AIRFLOW_CONN_RAY_DEFAULT"] = json.dumps(local_ray.connection(PROFILE))


def dag_environment() -> None:
    """dag.test() for the benchmarks: its own Airflow home, ray_default at the dev head.
    Call before anything imports Airflow."""
    import dagrun

    local_ray.up(PROFILE)
    dagrun.environment(PROFILE, WORK / "airflow-home", ROOT / "benchmarks" / "dags", ROOT / "example_dags")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def standin_server() -> Iterator[str]:
    """The local OpenAI-compatible stand-in (benchmarks/standin_server.py): its chat URL."""
    port = free_port()
    process = subprocess.Popen([str(RAY_PYTHON), str(ROOT / "benchmarks" / "standin_server.py"), str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(base + "/served", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the stand-in server did not start") from None
                time.sleep(0.3)
        yield base + "/v1/chat/completions"
    finally:
        process.terminate()
        process.wait(10)


def served(chat_url: str) -> int:
    with urllib.request.urlopen(chat_url.replace("/v1/chat/completions", "/served"), timeout=5) as r:
        return int(json.load(r)["served"])


@contextmanager
def sampling(name: str) -> Iterator[Path]:
    """Object-store use of the cluster every 0.5 s while the block runs (benchmarks/sampler.py)."""
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"memory-{name}.jsonl"
    path.unlink(missing_ok=True)
    address = f"127.0.0.1:{PROFILE.gcs_port}"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(PROFILE.state_dir / "auth_token")}
    process = subprocess.Popen([str(RAY_PYTHON), str(ROOT / "benchmarks" / "sampler.py"), address, str(path)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        yield path
    finally:
        process.terminate()
        process.wait(10)


def samples(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [s for s in (json.loads(line) for line in path.read_text().splitlines() if line.strip()) if "used" in s]


def wait_job(hook: Any, job_id: str, timeout: float = 7200) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = hook.get_job_info(job_id)
        if info.status.is_terminal:
            return info
        time.sleep(0.5)
    hook.stop_job(job_id)
    raise TimeoutError(f"job {job_id} did not finish in {timeout:.0f} s")


def mib(value: float) -> str:
    return f"{value / 2**20:,.0f} MiB"


def update_doc(section: str, body: str) -> None:
    """Replace (or add) ``## <section>`` in docs/benchmarks.md with ``body``."""
    text = DOC.read_text() if DOC.exists() else (
        "# Benchmarks\n\nFigures from `benchmarks/`, measured on the machine named in each section; every "
        "section says the command that reproduces it. Ratios compare runs made side by side in one run.\n"
    )  # fmt: skip
    block = f"## {section}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: block + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    DOC.write_text(text.rstrip() + "\n")


def machine() -> str:
    cores = os.cpu_count()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cores} cores, {mem:.0f} GiB RAM, no GPU; local Ray {local_ray.answers(PROFILE)} head with 8 logical CPUs"
