"""One writer per output at a time, across jobs on the cluster: a named Ray actor as a lock.

Creating a named actor is atomic in Ray's GCS, and an actor that is not detached dies with
the driver that made it: a job that ends, fails or is stopped releases its lock without any
cleanup step. A second job for the same output waits for the holder, then fails naming it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

log = logging.getLogger("raydllm.job")

NAMESPACE = "raydllm"


class OutputBusyError(RuntimeError):
    """Another job is writing the same output."""


def _lock_class():
    import ray

    @ray.remote(num_cpus=0, max_restarts=0)
    class OutputLock:
        def __init__(self, holder: dict[str, Any]):
            self.holder = holder

        def who(self) -> dict[str, Any]:
            return self.holder

    return OutputLock


def lock_name(key: str) -> str:
    return "raydllm-output-" + hashlib.sha1(key.encode()).hexdigest()[:24]


def _describe(holder: dict[str, Any]) -> str:
    run = holder.get("run") or {}
    who = f"Ray job {holder.get('submission_id') or '?'}"
    if run.get("dag_id"):
        who += f" (task {run['dag_id']}.{run.get('task_id')}, run {run.get('run_id')}, try {run.get('try_number')})"
    return who


def acquire(keys: list[str], holder: dict[str, Any], wait_seconds: float, poll: float = 3.0) -> list[Any]:
    """Hold a lock per key (sorted, so two jobs never wait on each other); return the actors,
    which must stay referenced for as long as the job writes."""
    import ray

    cls = _lock_class()
    held = []
    for key in sorted(set(keys)):
        name, deadline, said = lock_name(key), time.monotonic() + wait_seconds, False
        while True:
            try:
                actor = cls.options(name=name, namespace=NAMESPACE).remote(holder)
                ray.get(actor.who.remote())
                held.append(actor)
                break
            except ValueError:  # the name is taken: someone holds it
                pass
            try:
                other = ray.get(ray.get_actor(name, namespace=NAMESPACE).who.remote(), timeout=30)
            except Exception:  # released between our two calls: try again at once
                continue
            if time.monotonic() >= deadline:
                raise OutputBusyError(
                    f"output {key} is being written by {_describe(other)}; waited {wait_seconds:.0f}s for it "
                    "to finish. This run wrote nothing: retry once that job has ended, or stop it."
                ) from None
            if not said:
                log.info("waiting for %s to finish writing %s", _describe(other), key)
                said = True
            time.sleep(poll)
    return held
