"""A Ray job's log lines, made readable for the task log (Airflow side).

A line of a Ray job's log arrives as the driver printed it: colour codes, Ray's
``(MapWorker(MapBatches(vLLMEngineStageUDF)) pid=4411, ip=10.0.0.5)`` prefix for what a
worker printed, ``(raylet)`` and ``(autoscaler +1m3s)`` lines, vLLM's and Ray's own
timestamps and levels, C++ log lines, Python warnings, tracebacks. :class:`LineRelay` turns
each line into ``(level, text)``: no colour codes, the level the line was logged at (a
traceback and Ray's wrapped errors are errors; raylet, autoscaler and Python warnings are
warnings), one short prefix saying where it came from, and at most ``MAX_LINE_CHARS``
characters (secrets Airflow knows are masked before the cut; the whole line stays in the
Ray job's log, one click away through the task's "Ray job" link). ``fetch_logs`` chooses
how much is relayed (:data:`LOG_CHOICES`).

    [ray:raydllm] read 60 rows (ticket_id, subject, body) from ['s3://support/t.csv']; ...
    [ray:vLLMEngineStageUDF pid=4411] Automatically detected platform cpu.
    [ray:ray] Starting execution of Dataset dataset_3_0. Full logs are in ...
    [ray:raylet] A worker died or was killed while executing a task by an unexpected system error.
    [ray] a line the job printed without a logger
"""

from __future__ import annotations

import logging
import re
from typing import Any

MAX_LINE_CHARS = 400
PREFIX = "[ray"
# fetch_logs: True and "all" relay every line; "summary" the provider's own lines (start,
# what was read, the counts, the commit) and every warning and error; "warnings" warnings
# and errors only; False and "none" nothing.
LOG_CHOICES = ("all", "summary", "warnings", "none")
PREFIX_SCAN_CHARS = 300  # a worker prefix is looked for this far into a line, no further

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_TIMESTAMP = re.compile(r"^\[?\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[,.]\d+)?\]?\s*")
_LEVEL = re.compile(r"^(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)\b:?\s*")
_SHORT_DATE = re.compile(r"^\d\d-\d\d \d\d:\d\d:\d\d(?:[,.]\d+)?\s*")  # vLLM: "INFO 12-01 06:00:00"
_VLLM_PLACE = re.compile(r"^\[[\w./-]+\.py:\d+\]\s*")  # vLLM: "[core.py:93] "
_RAY_PLACE = re.compile(r"^[\w./-]+\.py:\d+ -- ")  # Ray's loggers: "streaming_executor.py:108 -- "
_TAG = re.compile(r"^\[(raydllm|[\w.]+)\]\s")  # this provider's job: "[raydllm] "
# Ray's C++ logs: "[2026-12-01 06:30:01,123 E 4411 4412] core_worker.cc:123: message"
_CPP = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+ ([DIWEF]) \d+ \d+\]\s*")
_CPP_LEVELS = {"D": logging.DEBUG, "I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
_PY_WARNING = re.compile(r"^\S+\.py:\d+: \w*Warning: ")  # warnings.warn without logging
# An exception line: "ValueError: x", "ray.exceptions.RayTaskError(UserCodeException): ...".
_ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt|Exit)(\([\w.]*\))?(:|$)")
_CHAINED = ("During handling of the above exception", "The above exception was the direct cause")
_JOB_MARKERS = {"RAYDLLM_ERROR": logging.ERROR, "RAYDLLM_RESULT": logging.INFO}
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "WARN": logging.WARNING,
           "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL, "FATAL": logging.CRITICAL}  # fmt: skip


def choice(fetch_logs: Any) -> str:
    """``fetch_logs`` as one of :data:`LOG_CHOICES` (True is "all", False "none")."""
    if fetch_logs is True:
        return "all"
    if fetch_logs is False:
        return "none"
    if isinstance(fetch_logs, str) and fetch_logs in LOG_CHOICES:
        return fetch_logs
    raise ValueError(f"fetch_logs={fetch_logs!r}: use True, False or one of {', '.join(map(repr, LOG_CHOICES))}")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text).replace("\r", "")


def _mask(text: str) -> str:
    """Airflow's masking of the secrets it knows, applied before a line is cut (a cut could
    leave a secret's start, which the masker, matching whole secrets, would let through)."""
    try:
        from airflow.sdk._shared.secrets_masker import redact
    except Exception:  # another Airflow layout: the task log's own masking still applies
        return text
    return str(redact(text))


def _parenthesized(line: str) -> tuple[str, str] | None:
    """A leading ``(...)`` (nested parentheses allowed) and the rest of the line, which
    keeps its indentation past the one space after the prefix."""
    if not line.startswith("("):
        return None
    depth = 0
    for end, char in enumerate(line[:PREFIX_SCAN_CHARS]):
        depth += (char == "(") - (char == ")")
        if depth == 0:
            rest = line[end + 1 :]
            return line[1:end], rest[1:] if rest.startswith(" ") else rest
    return None


def short_name(name: str) -> str:
    """``MapWorker(MapBatches(vLLMEngineStageUDF))`` -> ``vLLMEngineStageUDF``; fused stages
    ``MapWorker(MapBatches(A)->MapBatches(B))`` -> ``A->B``."""
    inner = re.findall(r"\(([\w.]+)\)", name)
    if inner:
        return "->".join(inner)
    return name.split("(", 1)[0].strip() or name


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
        if not message.strip():
            return None
        if self.mode == "warnings" and level < logging.WARNING:
            return None
        if self.mode == "summary" and level < logging.WARNING and source != "raydllm":
            return None
        if len(message) > self.max_chars:
            message = _mask(message)
        if len(message) > self.max_chars:
            cut = len(message) - self.max_chars
            message = f"{message[: self.max_chars]} ... [+{cut} characters: the whole line is in the Ray job's log]"
        return level, f"{PREFIX}:{source}] {message}" if source else f"{PREFIX}] {message}"

    def parse(self, line: str) -> tuple[str, int, str]:
        """(source, level, message) of one line without colour codes."""
        source, level = "", None
        prefix = _parenthesized(line)
        if prefix:
            inside, rest = prefix
            head, sep, pid = inside.rpartition("pid=")
            if sep:
                pid = pid.split(",", 1)[0].strip()
                source, line = (f"{short_name(head)} pid={pid}" if head.strip() else f"pid={pid}"), rest
                inner = _parenthesized(line)  # vLLM's own "(EngineCore_DP0 pid=...)" inside a Ray worker
                if inner and "pid=" in inner[0]:
                    line = inner[1]
            elif inside == "raylet" or inside.startswith("autoscaler"):
                # Ray's own warnings to the driver: OOM kills, dead workers, unschedulable demands.
                source, level, line = inside.split(" ", 1)[0], logging.WARNING, rest
                if rest.startswith(("Error:", "Fatal")):
                    level = logging.ERROR
        for marker, marker_level in _JOB_MARKERS.items():
            at = line.find(marker)
            if at == 0:
                self._traceback[source] = False
                return source or "raydllm", marker_level, line
            if at > 0:  # a relayed worker line glued before the job's own: the job's line wins
                self._traceback[source] = False
                return "raydllm", marker_level, line[at:]
        cpp = _CPP.match(line)
        if cpp:
            return source or "ray", _CPP_LEVELS[cpp.group(1)], line[cpp.end() :]
        if _PY_WARNING.match(line):
            return source, logging.WARNING, line
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
        if level is None:
            level = self._traceback_level(source, line)
        else:
            self._traceback[source] = False
        return source, level, line

    def _traceback_level(self, key: str, line: str) -> int:
        """Lines without a level: a traceback's lines and the exception closing it are errors."""
        if line.startswith("Traceback (most recent call last)") or line.startswith(_CHAINED):
            self._traceback[key] = True
            return logging.ERROR
        if _ERROR_LINE.match(line):
            # An exception line; Ray's wrapped errors (RayTaskError(...): ...) go on with an
            # indented traceback of their own, so indented lines after it stay errors.
            self._traceback[key] = True
            return logging.ERROR
        if self._traceback.get(key) and line[:1].isspace():
            return logging.ERROR
        self._traceback[key] = False
        return logging.INFO
