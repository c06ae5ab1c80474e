"""Start and stop a local Ray head node from the cluster environment (``.venv-ray``).

``python scripts/local_ray.py up|down|status|conn [--profile dev|test]``

- The ``test`` profile is a multi-node cluster on this one machine: the head plus two
  worker nodes, each a separate ``ray start`` (its own raylet and object store) with the
  custom resource ``accelerator_type:L4`` (what ``accelerator_type="L4"`` asks for) and
  ``gpu_slot: 1`` standing in for one GPU, so a replica whose bundle asks for a gpu_slot
  fits once per node: placement across nodes is exercised without GPUs.

- ``up`` is idempotent: a head this script started and that still answers is reused.
  ``up(profile, workers=False)`` starts the head alone; ``start_workers`` and
  ``stop_workers`` add and remove the worker nodes later (the test suite starts them only
  for the tests that place work across nodes: each node's raylet, log monitor and agents
  take CPU from every other test on a 2-core machine).
- ``down`` stops only the head this script started (it SIGTERMs the ``ray start --block``
  process recorded in the pid file, which drains and stops its own children); another
  Ray on the machine is left alone.
- Token authentication is on, as Ray 2.60 does by default: the token is generated once
  into the profile's state directory (mode 0600) and handed to Ray by file path.
- ``conn`` prints the Airflow connection for the head, as JSON for ``AIRFLOW_CONN_RAY_DEFAULT``.

Stdlib only, so it runs under any Python (the tests import it to start their cluster).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RAY_BIN = ROOT / ".venv-ray" / "bin"


@dataclass(frozen=True)
class Profile:
    name: str
    gcs_port: int
    dashboard_port: int
    client_port: int
    agent_port: int
    # More logical CPUs than cores: vLLM's CPU bundle must fit beside the Ray Data actors
    # (chat template, tokenize, detokenize), or the pipeline waits forever (ENVIRONMENT.md).
    num_cpus: int = 8
    object_store_bytes: int = 2 * 1024**3
    # Worker nodes: (logical CPUs, custom resources) each; they join the head's GCS.
    workers: tuple[tuple[int, tuple[tuple[str, float], ...]], ...] = ()
    worker_object_store_bytes: int = 512 * 1024**2
    serve_port: int = 8000

    @property
    def state_dir(self) -> Path:
        return ROOT / ".cache" / "ray" / self.name

    @property
    def temp_dir(self) -> str:
        # Ray puts unix sockets under it; a long path overflows their 107-byte limit.
        return f"/tmp/raydllm-{self.name}"

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"


PROFILES = {
    "dev": Profile("dev", gcs_port=6379, dashboard_port=8265, client_port=10001, agent_port=52365),
    # Other ports, so the test suite can run while a `make ray-up` head is up.
    "test": Profile(
        "test", gcs_port=6390, dashboard_port=8266, client_port=20101, agent_port=52401, serve_port=8410,
        # gpu_slot stands in for the one GPU such a node would have (a replica's bundle asks
        # for it); two CPUs leave room for a Ray Data actor beside the replica.
        workers=((2, (("accelerator_type:L4", 1.0), ("gpu_slot", 1.0))),) * 2,
    ),
}


def token(profile: Profile) -> str:
    path = profile.state_dir / "auth_token"
    if not path.exists():
        profile.state_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def _alive(pid: int) -> bool:
    try:
        # Reap it if it is our own child (the test fixture's case), or it lingers as a zombie.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _pid(profile: Profile) -> int | None:
    pid_file = profile.state_dir / "head.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text().strip())
    if not _alive(pid):
        pid_file.unlink()
        return None
    return pid


def answers(profile: Profile) -> str | None:
    """The Ray version if the dashboard answers an authenticated request, else None."""
    request = urllib.request.Request(
        profile.address + "/api/version",
        headers={"Authorization": f"Bearer {token(profile)}", "User-Agent": "raydllm-local"},
    )
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return json.load(response)["ray_version"]
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return None


def connection(profile: Profile) -> dict:
    return {
        "conn_type": "ray",
        "host": "127.0.0.1",
        "port": profile.dashboard_port,
        "schema": "http",
        "password": token(profile),
        # Every node of the test profile is on this one machine: one Serve proxy (the head's)
        # on a port of the profile's own, so it never meets another profile's.
        "extra": {"serve": {"http_options": {"host": "127.0.0.1", "port": profile.serve_port},
                            "proxy_location": "HeadOnly"}},
    }


def up(profile: Profile, timeout: float = 180.0, workers: bool = True) -> None:
    if _pid(profile) and answers(profile):
        print(f"Ray head ({profile.name}) already running at {profile.address}")
        return
    if answers(profile):
        sys.exit(f"something else already answers at {profile.address}: not starting a second head there")
    if not (RAY_BIN / "ray").exists():
        sys.exit(f"{RAY_BIN / 'ray'} not found: run `make venv-ray` first")
    profile.state_dir.mkdir(parents=True, exist_ok=True)
    env = _env(profile)
    cmd = [
        str(RAY_BIN / "ray"), "start", "--head", "--block",
        f"--num-cpus={profile.num_cpus}", "--num-gpus=0",
        f"--port={profile.gcs_port}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={profile.dashboard_port}",
        f"--ray-client-server-port={profile.client_port}",
        f"--dashboard-agent-listen-port={profile.agent_port}",
        f"--object-store-memory={profile.object_store_bytes}",
        f"--temp-dir={profile.temp_dir}",
        "--include-dashboard=true", "--disable-usage-stats",
    ]  # fmt: skip
    log_path = profile.state_dir / "head.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    (profile.state_dir / "head.pid").write_text(str(process.pid))
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            (profile.state_dir / "head.pid").unlink(missing_ok=True)
            sys.exit(f"ray start exited with code {process.returncode}; log tail:\n{tail}")
        if version := answers(profile):
            print(f"Ray {version} head ({profile.name}) up at {profile.address} in {time.monotonic() - started:.0f}s")
            if workers:
                _start_workers(profile, env, started + timeout)
            return
        time.sleep(1)
    down(profile)
    sys.exit(f"Ray head did not answer at {profile.address} within {timeout:.0f}s; see {log_path}")


def _env(profile: Profile) -> dict[str, str]:
    token_path = profile.state_dir / "auth_token"
    token(profile)
    env = {
        **os.environ,
        "PATH": f"{RAY_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_AUTH_TOKEN", None)
    return env


def alive_nodes(profile: Profile) -> list[dict]:
    """The cluster's alive nodes, from the dashboard's state API."""
    request = urllib.request.Request(
        profile.address + "/api/v0/nodes?limit=100&filter_keys=state&filter_predicates=%3D&filter_values=ALIVE",
        headers={"Authorization": f"Bearer {token(profile)}", "User-Agent": "raydllm-local"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)["data"]["result"]["result"]
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return []


def _start_workers(profile: Profile, env: dict[str, str], deadline: float) -> None:
    """Start the profile's worker nodes one at a time (two raylets starting together can
    race for a port), each on fixed ports of its own, and wait until each has joined."""
    pids: list[int] = []
    for index, (cpus, resources) in enumerate(profile.workers, start=1):
        base = profile.gcs_port + 100 + 10 * index
        cmd = [
            str(RAY_BIN / "ray"), "start", "--block", f"--address=127.0.0.1:{profile.gcs_port}",
            "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", "--num-gpus=0",
            f"--resources={json.dumps(dict(resources))}",
            f"--object-store-memory={profile.worker_object_store_bytes}",
            f"--node-manager-port={base}", f"--object-manager-port={base + 1}", f"--metrics-export-port={base + 2}",
            f"--dashboard-agent-grpc-port={base + 3}", f"--runtime-env-agent-port={base + 4}",
            f"--dashboard-agent-listen-port={profile.agent_port + index}", "--disable-usage-stats",
        ]  # fmt: skip
        with open(profile.state_dir / f"worker-{index}.log", "wb") as log:
            process = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        pids.append(process.pid)
        (profile.state_dir / "workers.pid").write_text("\n".join(map(str, pids)))
        while len(alive_nodes(profile)) < 1 + index:
            if process.poll() is not None or time.monotonic() > deadline:
                down(profile)
                sys.exit(f"worker node {index} of the {profile.name} cluster did not join; see "
                         f"{profile.state_dir}/worker-{index}.log and the raylet logs under {profile.temp_dir}")
            time.sleep(1)
    if pids:
        print(f"{len(pids)} worker nodes joined the {profile.name} head")


def start_workers(profile: Profile, timeout: float = 180.0) -> None:
    """Add the profile's worker nodes to its running head (no-op when they are up)."""
    if len(alive_nodes(profile)) >= 1 + len(profile.workers):
        return
    _start_workers(profile, _env(profile), time.monotonic() + timeout)


def stop_workers(profile: Profile, timeout: float = 30.0) -> None:
    """Stop the worker nodes this script started; the head stays up."""
    _stop_workers(profile, timeout)
    deadline = time.monotonic() + timeout
    while len(alive_nodes(profile)) > 1 and time.monotonic() < deadline:
        time.sleep(0.5)


def _stop_workers(profile: Profile, timeout: float) -> None:
    pid_file = profile.state_dir / "workers.pid"
    if not pid_file.exists():
        return
    pids = [int(p) for p in pid_file.read_text().split()]
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.5)
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    pid_file.unlink(missing_ok=True)


def down(profile: Profile, timeout: float = 60.0) -> None:
    _stop_workers(profile, timeout / 2)
    pid = _pid(profile)
    if pid is None:
        print(f"no Ray head ({profile.name}) started by this script is running")
        return
    os.kill(pid, signal.SIGTERM)  # `ray start --block` drains and stops its children
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            break
        time.sleep(0.5)
    else:
        os.killpg(pid, signal.SIGKILL)
    # Stragglers of that session (workers, agents) share its process group.
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    (profile.state_dir / "head.pid").unlink(missing_ok=True)
    print(f"Ray head ({profile.name}) at {profile.address} stopped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "status", "conn"])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="dev")
    args = parser.parse_args()
    profile = PROFILES[args.profile]
    if args.action == "up":
        up(profile)
    elif args.action == "down":
        down(profile)
    elif args.action == "conn":
        print(json.dumps(connection(profile)))
    else:
        version = answers(profile)
        print(f"Ray {version} at {profile.address}" if version else f"no Ray head answers at {profile.address}")
        sys.exit(0 if version else 1)


if __name__ == "__main__":
    main()
