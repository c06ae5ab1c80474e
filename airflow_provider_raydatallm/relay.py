"""A Ray job's log lines, made readable for the task log (Airflow side).

A line of a Ray job's log arrives as the driver printed it: colour codes, Ray's
``(MapWorker(MapBatches(vLLMEngineStageUDF)) pid=4411, ip=10.0.0.5)`` prefix for what a
worker printed, vLLM's and Ray's own timestamps and levels, tracebacks. :class:`LineRelay`
turns each line into ``(level, text)``: no colour codes, the level the line was logged at
(a traceback is an error), one short prefix saying where it came from, and at most
``MAX_LINE_CHARS`` characters (the whole line stays in the Ray job's log, one click away
through the task's "Ray job" link). ``fetch_logs`` chooses how much is relayed
(:data:`LOG_CHOICES`).

    [ray:raydllm] 40 of 60 rows (67%), 3.1 rows/s, about 6s left
    [ray:vLLMEngineStageUDF pid=4411] Automatically detected platform cpu.
    [ray:ray] Starting execution of Dataset dataset_3_0. Full logs are in ...
    [ray] a line the job printed without a logger
"""

from __future__ import annotations

import logging
import re
from typing import Any

MAX_LINE_CHARS = 400
PREFIX = "[ray"
# fetch_logs: True and "all" relay every line; "summary" the provider's own lines (start,
# progress, counts, commit) and every warning and error; "warnings" warnings and errors
# only; False and "none" nothing.
LOG_CHOICES = ("all", "summary", "warnings", "none")

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_TIMESTAMP = re.compile(r"^\[?\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[,.]\d+)?\]?\s*")
_LEVEL = re.compile(r"^(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)\b:?\s*")
_SHORT_DATE = re.compile(r"^\d\d-\d\d \d\d:\d\d:\d\d(?:[,.]\d+)?\s*")  # vLLM: "INFO 12-01 06:00:00"
_VLLM_PLACE = re.compile(r"^\[[\w./-]+\.py:\d+\]\s*")  # vLLM: "[core.py:93] "
_RAY_PLACE = re.compile(r"^[\w./-]+\.py:\d+ -- ")  # Ray's loggers: "streaming_executor.py:108 -- "
_TAG = re.compile(r"^\[(raydllm|[\w.]+)\]\s")  # this provider's job: "[raydllm] "
_ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt|Exit)(:|$)")
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "WARN": logging.WARNING,
           "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL, "FATAL": logging.CRITICAL}  # fmt: skip


def choice(fetch_logs: Any) -> str:
    """``fetch_logs`` as one of :data:`LOG_CHOICES` (True is "all", False "none")."""
    if fetch_logs is True:
        return "all"
    if fetch_logs is False or fetch_logs is None:
        return "none"
    if isinstance(fetch_logs, str) and fetch_logs in LOG_CHOICES:
        return fetch_logs
    raise ValueError(f"fetch_logs={fetch_logs!r}: use True, False or one of {', '.join(map(repr, LOG_CHOICES))}")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text).replace("\r", "")


def _worker_prefix(line: str) -> tuple[str, str, str] | None:
    """Ray's ``(<name> pid=<pid>[, ip=<ip>])`` prefix: (name, pid, rest of the line)."""
    if not line.startswith("("):
        return None
    depth = 0
    for end, char in enumerate(line):
        depth += (char == "(") - (char == ")")
        if depth == 0:
            break
    else:
        return None
    inside = line[1:end]
    head, sep, pid = inside.rpartition("pid=")
    if not sep:
        return None
    pid = pid.split(",", 1)[0].strip()
    return head.strip(), pid, line[end + 1 :].lstrip()


def short_name(name: str) -> str:
    """``MapWorker(MapBatches(vLLMEngineStageUDF))`` -> ``vLLMEngineStageUDF``."""
    inner = name
    while "(" in inner and inner.endswith(")"):
        inner = inner[inner.index("(") + 1 : -1]
    return inner.strip() or name


class LineRelay:
    """Turns the lines of one job's log into task-log lines, in order (it keeps track of
    tracebacks, whose lines carry no level of their own)."""

    def __init__(self, fetch_logs: Any = True, max_chars: int = MAX_LINE_CHARS):
        self.mode = choice(fetch_logs)
        self.max_chars = max_chars
        self._traceback: dict[str, bool] = {}

    def __call__(self, raw: str) -> tuple[int, str] | None:
        """``(level, text)`` for the task log, or None when the line is not relayed."""
        if self.mode == "none":
            return None
        line = strip_ansi(raw).rstrip()
        if not line.strip():
            return None
        source, level, message = self.parse(line)
        if self.mode == "warnings" and level < logging.WARNING:
            return None
        if self.mode == "summary" and level < logging.WARNING and source != "raydllm":
            return None
        if len(message) > self.max_chars:
            cut = len(message) - self.max_chars
            message = f"{message[: self.max_chars]} ... [{cut} more characters: the whole line is in the Ray job's log]"
        return level, f"{PREFIX}:{source}] {message}" if source else f"{PREFIX}] {message}"

    def parse(self, line: str) -> tuple[str, int, str]:
        """(source, level, message) of one line without colour codes."""
        source, level = "", None
        worker = _worker_prefix(line)
        if worker:
            name, pid, line = worker
            source = f"{short_name(name)} pid={pid}" if name else f"pid={pid}"
            inner = _worker_prefix(line)  # vLLM's own "(EngineCore pid=...)" inside a Ray worker
            if inner:
                line = inner[2]
        line = _TIMESTAMP.sub("", line, count=1)
        match = _LEVEL.match(line)
        if match:
            level = _LEVELS[match.group(1)]
            line = line[match.end() :]
            line = _SHORT_DATE.sub("", line, count=1)
            line = _VLLM_PLACE.sub("", line, count=1)
            place = _RAY_PLACE.match(line)
            if place:
                line = line[place.end() :]
                source = source or "ray"
            tag = _TAG.match(line)
            if tag:
                line = line[tag.end() :]
                source = source or tag.group(1)
        key = source
        if level is None:
            level = self._traceback_level(key, line)
        else:
            self._traceback[key] = False
        return source, level, line

    def _traceback_level(self, key: str, line: str) -> int:
        """Lines without a level: a traceback's lines (and the error closing it) are errors."""
        if line.startswith("Traceback (most recent call last)"):
            self._traceback[key] = True
            return logging.ERROR
        if self._traceback.get(key):
            if line[:1].isspace() or line.startswith(("During handling", "The above exception")):
                return logging.ERROR
            if _ERROR_LINE.match(line):
                return logging.ERROR  # the exception line closes the traceback, unless a chained one follows
            self._traceback[key] = False
        return logging.INFO
