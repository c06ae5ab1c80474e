"""Entry point of the Ray job: ``python -m airflow_provider_raydatallm.job``.

``--spec FILE`` reads a spec file (by hand, for debugging); ``--spec-module NAME`` reads
``spec.json`` from the package the operator shipped in ``runtime_env.py_modules``.
Exit codes: 0 done, 1 the batch failed, 2 the spec is invalid.
"""

from __future__ import annotations

import time

STARTED_AT = time.time()  # the driver's start, before its imports (the start-up breakdown)

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

from airflow_provider_raydatallm.job.metrics import ERROR_MARKER, say  # noqa: E402
from airflow_provider_raydatallm.job.spec import SECRETS_FILE, JobSpec  # noqa: E402



def _spec_dir(args: argparse.Namespace) -> Path:
    if args.spec:
        return Path(args.spec).parent
    found = importlib.util.find_spec(args.spec_module)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"spec package {args.spec_module!r} is not on this job's path (py_modules)")
    return Path(list(found.submodule_search_locations)[0])


def _spec_text(args: argparse.Namespace) -> str:
    return Path(args.spec).read_text() if args.spec else (_spec_dir(args) / "spec.json").read_text()


def _secrets(args: argparse.Namespace) -> dict[str, str]:
    path = _spec_dir(args) / SECRETS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# The user's own error, as rows.py and sink.py word it, wherever Ray wrapped it.
_ROW_ERROR = re.compile(r"(?:RowError: ((?:pre|post)process failed on row [^\n]+)|UnstorableValueError: ([^\n]+))")


def headline(err: BaseException) -> str:
    """One line for the task's failure: the first user-code error and its row first, then
    Ray's wrapping, without terminal colours."""
    text = _ANSI.sub("", "".join(traceback.format_exception(err)))
    root = err
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__
    first = _ANSI.sub("", f"{type(err).__name__}: {err}").strip().splitlines()
    ray_line = first[0][:1000] if first else type(err).__name__
    found = _ROW_ERROR.search(text)
    if found:
        return f"{(found.group(1) or found.group(2)).strip()[:1500]} (in Ray: {ray_line[:300]})"
    if root is not err and str(root):
        ray_line += f" (caused by {type(root).__name__}: {_ANSI.sub('', str(root)).splitlines()[0][:1000]})"
    return ray_line[:2000]


class _Source(logging.Filter):
    """Names where a record came from: ``raydllm`` for this job's own loggers, else the
    library's top-level logger (``vllm``, ``ray``, ...), so another library's warning is
    never mistaken for the provider's."""

    def filter(self, record: logging.LogRecord) -> bool:
        top = record.name.split(".", 1)[0]
        record.source = "raydllm" if top in ("raydllm", "airflow_provider_raydatallm") else top
        return True


def _log_to_stdout() -> None:
    handler = logging.StreamHandler()
    formatter = logging.Formatter("%(asctime)s %(levelname)s [%(source)s] %(message)s")
    formatter.converter = time.gmtime  # UTC, whatever the node's zone: the UI dates progress lines by it
    handler.setFormatter(formatter)
    handler.addFilter(_Source())
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_provider_raydatallm.job")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", help="path of a job spec JSON file")
    source.add_argument("--spec-module", help="name of the shipped package holding spec.json")
    parser.add_argument("--tag", default="manual", help="staging name of this attempt")
    args = parser.parse_args(argv)
    _log_to_stdout()
    # What Ray's driver relays from its workers, without colour codes (read at print time).
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    # Ray Data's progress (a block of lines per operator) every 10 minutes, not every 10 s:
    # the job's own progress line (job/progress.py) gives the figures at a steady cadence, so
    # the task log of a long job does not grow by a block of lines a minute per stage.
    os.environ.setdefault("RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL", "600")
    try:
        spec = JobSpec.model_validate_json(_spec_text(args))
    except Exception as err:
        say(f"{ERROR_MARKER}invalid job spec: {err}")
        return 2
    run_name = f"{spec.run.dag_id}.{spec.run.task_id} run {spec.run.run_id}" if spec.run.dag_id else "manual run"
    logging.getLogger("raydllm.job").info("starting %s (submission %s)", run_name, spec.run.submission_id or "-")
    from airflow_provider_raydatallm.job.run import run

    try:
        result = run(spec, args.tag, _secrets(args), started_at=STARTED_AT)
    except Exception as err:
        traceback.print_exc()
        say(f"{ERROR_MARKER}{headline(err)}")
        return 1
    say(result.to_log_line())
    return 0


def _exit(code: int) -> None:
    """Leave without waiting on threads that engines and Ray Data leave behind: seen here, a
    job that had committed its output stayed RUNNING for minutes at interpreter exit."""
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # exiting matters more than a clean shutdown
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
