"""Run in every worker process of the batch job (``runtime_env["worker_process_setup_hook"]``).

vLLM's ``AsyncLLM.shutdown`` stops its engine process before it cancels the task that
reads the engine's outputs; that task then finds the engine gone and logs
``AsyncLLM output_handler failed`` with an ``EngineDeadError`` traceback at ERROR, after
the batch has finished and while its actor is torn down (seen in about 1 run in 4 here).
A person reading a successful run's log should not find an ERROR traceback there: once
vLLM has logged that it is shutting down (``[shutdown] MPClient: start``), that one record
becomes one INFO line saying it is teardown. The same record while the engine runs (an
engine that really died) stays an ERROR with its traceback.

Nothing here imports vLLM: the filters sit on vLLM's logger names and act only if vLLM is
imported and logs. A hook the user's own ``runtime_env`` named is run too
(:data:`USER_HOOK_ENV`).
"""

from __future__ import annotations

import importlib
import logging
import os

USER_HOOK_ENV = "RAYDLLM_USER_SETUP_HOOK"
HOOK = "airflow_provider_raydatallm.job.worker_setup.setup"
TEARDOWN_MESSAGE = (
    "the engine's output handler stopped with the engine (EngineDeadError during vLLM's shutdown, after this "
    "actor's batches: teardown, not a failure)"
)
_state = {"shutting_down": False}


class ShutdownSeen(logging.Filter):
    """Notes that vLLM's engine client began its shutdown."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("[shutdown]"):
            _state["shutting_down"] = True
        return True


class TeardownNotFailure(logging.Filter):
    """After the shutdown began, the output handler's EngineDeadError is one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if (_state["shutting_down"] and record.levelno >= logging.ERROR and "output_handler failed" in str(record.msg)
                and exc is not None and type(exc).__name__ == "EngineDeadError"):  # fmt: skip
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = TEARDOWN_MESSAGE, ()
            record.exc_info, record.exc_text = None, None
        return True


def setup() -> None:
    logging.getLogger("vllm.v1.engine.core_client").addFilter(ShutdownSeen())
    logging.getLogger("vllm.v1.engine.async_llm").addFilter(TeardownNotFailure())
    user = os.environ.get(USER_HOOK_ENV)
    if user:
        module, _, name = user.rpartition(".")
        getattr(importlib.import_module(module), name)()


def with_hook(runtime_env: dict) -> dict:
    """``runtime_env`` with this hook; a hook the user named there runs from it."""
    env = dict(runtime_env)
    user = env.get("worker_process_setup_hook")
    if user and user != HOOK:
        env["env_vars"] = {**(env.get("env_vars") or {}), USER_HOOK_ENV: str(user)}
    env["worker_process_setup_hook"] = HOOK
    return env
