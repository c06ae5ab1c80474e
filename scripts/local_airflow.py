"""Start and stop a real local Airflow 3 with this provider: API server, scheduler, triggerer
and DAG processor as separate processes (LocalExecutor, SQLite), a ``ray_default``
connection to the local Ray head, and the example DAGs.

``python scripts/local_airflow.py up|down|status [--home DIR] [--port N] [--ray-profile dev|test]
[--dags DIR ...] [--env-file FILE]``

- ``up`` reuses what is set up (the venvs, the model, a head ``local_ray.py`` started: it
  starts the profile's head when none answers), migrates the database once, starts the
  four components detached (their output in ``<home>/<component>.out``, their pids in
  ``<home>/pids.json``), waits until the API server answers and prints the URL and the
  login. It is idempotent: an Airflow this script started that still answers is reused.
- ``down`` stops the processes of ``pids.json`` (each component's whole process group) and
  nothing else.
- The login is ``admin`` with a password generated once into ``<home>/passwords.json``
  (Airflow's SimpleAuthManager; use your deployment's auth manager in production).
- ``--env-file``: a JSON object of extra environment for every component (the test suite
  adds its users, auth manager, connections and DAG folders this way); ``--dags`` adds DAG
  folders beside ``example_dags/`` (each a DAG bundle, on ``sys.path`` as Airflow does).

Stdlib only: the test suite imports it to start its real Airflow through the same code.
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
from dataclasses import dataclass, field
from pathlib import Path

import local_ray

ROOT = Path(__file__).resolve().parent.parent
AIRFLOW = ROOT / ".venv" / "bin" / "airflow"
EXAMPLES = ROOT / "example_dags"
COMPONENTS = ("api-server", "scheduler", "triggerer", "dag-processor")
# Modules every component imports by name (the SQLite connection arguments).
AIRFLOW_PATH = Path(__file__).resolve().parent / "airflow_path"
DEFAULT_HOME = ROOT / ".cache" / "airflow"
DEFAULT_PORT = 8088  # not 8080: a Ray head exports its metrics there by default
START_TIMEOUT = 180


@dataclass
class Settings:
    home: Path = DEFAULT_HOME
    port: int = DEFAULT_PORT
    ray_profile: str = "dev"
    dags: list[Path] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def folders(self) -> list[Path]:
        return [EXAMPLES, *[Path(d).resolve() for d in self.dags]]


def environment(settings: Settings) -> dict[str, str]:
    """The environment of every component: this machine's, without its AIRFLOW* variables,
    plus the local Airflow's configuration and ``extra_env`` over it."""
    home, port = settings.home, settings.port
    profile = local_ray.PROFILES[settings.ray_profile]
    bundles = [{"name": f"raydllm_{i}_{folder.name}", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {"path": str(folder)}} for i, folder in enumerate(settings.folders)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # As Airflow does by default: nothing runs until you unpause or trigger a DAG.
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.folders[0]),
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        # Every component and task writes one SQLite file: wait 30 s for its lock, not 5.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "raydllm_sqlite.CONNECT_ARGS",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": "raydllm_sqlite.CONNECT_ARGS_ASYNC",
        "AIRFLOW__API__HOST": "127.0.0.1",  # this machine only, as the local Ray head
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": settings.base,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{settings.base}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW_CONN_RAY_DEFAULT": json.dumps(local_ray.connection(profile)),
        # Only airflow_path: the repository root would add its build-time egg-info as a
        # second copy of the provider's distribution (and its plugin entry point).
        "PYTHONPATH": str(AIRFLOW_PATH),
    })  # fmt: skip
    extra = dict(settings.extra_env)
    if extra.get("PYTHONPATH"):
        extra["PYTHONPATH"] = f"{extra['PYTHONPATH']}{os.pathsep}{AIRFLOW_PATH}"
    env.update(extra)
    return env


def passwords(home: Path) -> dict[str, str]:
    """The users' passwords (``admin``'s generated on first use), as SimpleAuthManager reads them."""
    path = home / "passwords.json"
    found = json.loads(path.read_text()) if path.exists() else {}
    if "admin" not in found:
        found["admin"] = secrets.token_urlsafe(12)
        home.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(found))
        path.chmod(0o600)
    return found


def migrate(settings: Settings, env: dict[str, str]) -> None:
    """``airflow db migrate`` when the database is new or Airflow was reinstalled since (a
    stamp beside the database says which install migrated it)."""
    stamp, db = settings.home / ".migrated", settings.home / "airflow.db"
    version = (ROOT / ".venv" / ".installed").stat().st_mtime if (ROOT / ".venv" / ".installed").exists() else 0
    if db.exists() and stamp.exists() and stamp.read_text() == str(version):
        return
    out = subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, capture_output=True, text=True, cwd=settings.home)
    if out.returncode:
        raise RuntimeError(f"airflow db migrate failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    stamp.write_text(str(version))


def start_component(settings: Settings, env: dict[str, str], component: str, name: str | None = None,
                    extra: dict[str, str] | None = None) -> subprocess.Popen:  # fmt: skip
    """Start one component in a session of its own (so its whole process group can be
    signalled); its output goes to ``<home>/<name>.out``."""
    name = name or component
    out = open(settings.home / f"{name}.out", "ab")  # noqa: SIM115 (lives as long as the process)
    return subprocess.Popen(
        [str(AIRFLOW), *component.split()], env={**env, **(extra or {})}, stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True, cwd=settings.home,
    )  # fmt: skip


def health(base: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{base}/api/v2/monitor/health", timeout=5) as response:
            return json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _started_at(pid: int) -> str:
    """The process's start time (clock ticks after boot, from /proc): a pid reused by another
    process after a reboot or a crash has another one."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _record(home: Path, pids: dict[str, int], digest: str) -> None:
    body = {"settings": digest, "components": {name: {"pid": pid, "started": _started_at(pid)} for name, pid in pids.items()}}
    (home / "pids.json").write_text(json.dumps(body))


def _digest(env: dict[str, str]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(sorted(env.items())).encode()).hexdigest()[:16]


def _pids(home: Path) -> dict[str, int]:
    """The components recorded in ``pids.json`` that are still the processes started then."""
    path = home / "pids.json"
    try:
        body = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        return {}
    found = {}
    for name, entry in (body.get("components") or {}).items():
        pid = int(entry.get("pid") or 0)
        if pid and entry.get("started") and _started_at(pid) == entry["started"]:
            found[name] = pid
    return found


def _recorded_digest(home: Path) -> str:
    try:
        return json.loads((home / "pids.json").read_text()).get("settings", "")
    except (OSError, ValueError):
        return ""


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_alive = local_ray._alive  # reaps its own exited children, then asks the kernel


def running(settings: Settings) -> dict[str, int]:
    """The components of ``pids.json`` still alive."""
    return {name: pid for name, pid in _pids(settings.home).items() if _alive(pid)}


def _tail(settings: Settings, component: str, chars: int = 2500) -> str:
    path = settings.home / f"{component}.out"
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def wait_healthy(settings: Settings, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if health(settings.base):
            return
        if not running(settings).get("api-server"):
            break
        time.sleep(1)
    raise RuntimeError(f"the Airflow API server did not answer at {settings.base}:\n{_tail(settings, 'api-server')}")


def up(settings: Settings) -> dict[str, int]:
    """Start (or reuse) the local Airflow; returns the components' pids."""
    profile = local_ray.PROFILES[settings.ray_profile]
    if not local_ray.answers(profile):
        print(f"starting the local Ray head ({settings.ray_profile} profile)", flush=True)
        local_ray.up(profile, workers=False)
    settings.home.mkdir(parents=True, exist_ok=True)
    env = environment(settings)
    # What this script was asked for (not the caller's whole environment, which differs
    # between shells and make): another set of DAG folders or extra settings restarts it.
    digest = _digest({"port": str(settings.port), "profile": settings.ray_profile,
                      "dags": json.dumps([str(f) for f in settings.folders]), **settings.extra_env})  # fmt: skip
    alive = running(settings)
    if set(alive) == set(COMPONENTS) and _recorded_digest(settings.home) == digest and health(settings.base):
        return alive
    if alive:  # a partial Airflow, or one started with other settings: start clean
        down(settings)
    if not _port_free(settings.port):
        raise RuntimeError(
            f"port {settings.port} is taken by another program (another Airflow?): stop it, or start this one "
            "elsewhere with AIRFLOW_ARGS='--port N'"
        )
    passwords(settings.home)
    migrate(settings, env)
    pids = {"api-server": start_component(settings, env, "api-server").pid}
    _record(settings.home, pids, digest)
    wait_healthy(settings)
    for component in COMPONENTS[1:]:
        pids[component] = start_component(settings, env, component).pid
    _record(settings.home, pids, digest)
    return pids


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_pid(pid: int, timeout: float = 10) -> None:
    """SIGTERM the process group ``pid`` leads (a component started by this script), wait
    until every process of the group is gone, SIGKILL what is left after ``timeout`` s."""
    try:
        if os.getpgid(pid) != pid:
            return  # not the leader of its own group: not a process this script started
        os.killpg(pid, signal.SIGCONT)  # a frozen one cannot exit
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (_alive(pid) or _group_alive(pid)):
        time.sleep(0.2)
    if _alive(pid) or _group_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
    _alive(pid)  # reap it when it is this process's child


def down(settings: Settings) -> None:
    for pid in _pids(settings.home).values():
        stop_pid(pid)
    (settings.home / "pids.json").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="local_airflow.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help=f"AIRFLOW_HOME (default {DEFAULT_HOME})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"the API server's port (default {DEFAULT_PORT})")
    parser.add_argument("--ray-profile", default="dev", choices=sorted(local_ray.PROFILES), help="the local Ray head to use")
    parser.add_argument("--dags", type=Path, action="append", default=[], help="another DAG folder (repeatable)")
    parser.add_argument("--env-file", type=Path, help="JSON object of extra environment for every component")
    args = parser.parse_args(argv)
    extra = json.loads(args.env_file.read_text()) if args.env_file else {}
    settings = Settings(home=args.home.resolve(), port=args.port, ray_profile=args.ray_profile, dags=args.dags,
                        extra_env={k: str(v) for k, v in extra.items()})  # fmt: skip
    if args.command == "down":
        down(settings)
        print("local Airflow stopped")
        return 0
    if args.command == "status":
        alive = running(settings)
        print(json.dumps({"url": settings.base, "healthy": bool(health(settings.base)), "components": alive}))
        return 0 if set(alive) == set(COMPONENTS) else 1
    started = time.monotonic()
    try:
        pids = up(settings)
    except RuntimeError as err:
        print(err, file=sys.stderr)
        return 1
    login = passwords(settings.home)
    print(f"Airflow {settings.base} is up in {time.monotonic() - started:.0f} s ({', '.join(f'{k} {v}' for k, v in pids.items())})")
    print(f"  log in as admin / {login['admin']}   (passwords: {settings.home / 'passwords.json'})")
    print(f"  DAGs: {', '.join(str(f) for f in settings.folders)}; ray_default -> {local_ray.PROFILES[settings.ray_profile].address}")
    print(f"  component logs: {settings.home}/<component>.out; stop with `make airflow-down`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
