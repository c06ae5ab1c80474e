"""Run in every worker process of the batch job (``runtime_env["worker_process_setup_hook"]``).

vLLM's ``AsyncLLM.shutdown`` stops its engine process before it cancels the task that
reads the engine's outputs; that task then finds the engine gone and logs
``AsyncLLM output_handler failed`` with an ``EngineDeadError`` traceback at ERROR, after
the batch has finished and while its actor is torn down (seen in about 1 run in 4 here).
A person reading a successful run's log should not find an ERROR traceback there: once
vLLM has logged that it is shutting down (``[shutdown] MPClient: start``), that one record
becomes one INFO line saying it is teardown. The same record while the engine runs, or
after vLLM said the engine process exited unexpectedly (killed, out of memory: vLLM then
shuts down too), stays an ERROR with its traceback.

The hook is left out of a job whose environment may not hold this package in every worker
(:func:`with_hook`): a container or conda environment, or a processor stage with its own
``py_modules`` or ``working_dir``.

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
_state = {"shutting_down": False, "crashed": False}


class ShutdownSeen(logging.Filter):
    """Notes that vLLM's engine client began its shutdown, and whether the engine had died."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("[shutdown]") and "unexpectedly" in message:
            _state["crashed"] = True
        elif message.startswith("[shutdown] MPClient: start"):
            _state["shutting_down"] = True
        return True


class TeardownNotFailure(logging.Filter):
    """After the shutdown began, the output handler's EngineDeadError is one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if (_state["shutting_down"] and not _state["crashed"] and record.levelno >= logging.ERROR
                and "output_handler failed" in str(record.msg) and exc is not None
                and type(exc).__name__ == "EngineDeadError"):  # fmt: skip
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


# Environments in which a worker may not import this package: the hook stays out.
_OWN_PYTHON = ("container", "image_uri", "conda")
_STAGE_OWN_CODE = ("py_modules", "working_dir") + _OWN_PYTHON


def with_hook(runtime_env: dict, connection_env: dict | None = None, processor_env: dict | None = None) -> dict:
    """The job's ``runtime_env`` with this hook; a hook the user named (in ``runtime_env``,
    else the connection's) runs from it. Unchanged when the job's or a processor stage's
    environment may lack this package (the hook would fail every such worker's start)."""
    env = dict(runtime_env)
    connection_env, processor_env = connection_env or {}, processor_env or {}
    if any(env.get(k) or connection_env.get(k) for k in _OWN_PYTHON) or any(processor_env.get(k) for k in _STAGE_OWN_CODE):
        return env
    user = env.get("worker_process_setup_hook") or connection_env.get("worker_process_setup_hook")
    if user and user != HOOK:
        if not isinstance(user, str) or "." not in user:
            raise TypeError(f"worker_process_setup_hook={user!r}: give it as 'module.function' (a job's runtime_env "
                            "goes to Ray as JSON)")  # fmt: skip
        env["env_vars"] = {**(env.get("env_vars") or {}), USER_HOOK_ENV: user}
    env["worker_process_setup_hook"] = HOOK
    return env
