"""Rows processed so far, a rate and an estimated time to finish, logged by the job's driver
at a steady cadence (no Ray import: the Airflow side parses these lines too).

The driver consumes the pass's per-block tallies as blocks are written (a block counts once
it is in the output's staging, so a retried block is never counted twice) and a thread
logs one line every ``RAYDLLM_PROGRESS_SECONDS`` (30 s by default), whatever the number of
blocks, plus one when the first rows are out and one at the end::

    progress: reading the input after 30s
    progress: 0 of 2,000 rows after 1m 00s (the engine and the first blocks are starting)
    progress: first 250 rows out after 41s
    progress: 750 of 2,000 rows (37%), 3 failed; 24.1 rows/s; about 52s left (elapsed 1m 02s)
    progress: 2,000 of 2,000 rows (100%), 5 failed, in 1m 53s (25.6 rows/s)

The rate counts the rows out since the first block came out (engine start-up is not a
rate); the estimate is the rows left at that rate. The same figures are parsed back by
:func:`parse` (task log, UI).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

INTERVAL_ENV = "RAYDLLM_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0
PREFIX = "progress: "

_RUNNING = re.compile(
    r"progress: (?P<done>[\d,]+) of (?P<total>[\d,]+) rows \((?P<percent>\d+)%\), (?P<failed>[\d,]+) failed; "
    r"(?:(?P<rate>[\d.]+) rows/s; about (?P<eta>[\dhms ]+) left|rate not known yet) \(elapsed (?P<elapsed>[\dhms ]+)\)"
)
_DONE = re.compile(
    r"progress: (?P<done>[\d,]+) of (?P<total>[\d,]+) rows \((?P<percent>\d+)%\), (?P<failed>[\d,]+) failed, "
    r"in (?P<elapsed>[\dhms ]+) \((?P<rate>[\d.]+) rows/s\)"
)
_READING = re.compile(r"progress: reading the input after (?P<elapsed>[\dhms ]+)")
_WAITING = re.compile(r"progress: (?P<done>[\d,]+) of (?P<total>[\d,]+) rows after (?P<elapsed>[\dhms ]+) \(")

log = logging.getLogger("raydllm.job")


def interval() -> float:
    """Seconds between two progress lines: ``$RAYDLLM_PROGRESS_SECONDS`` (``10`` or ``10s``;
    at least 1), else 30. (``10s`` stays a string in a DAG with ``render_template_as_native_obj``,
    where ``"10"`` would be rendered into a number, which an environment variable cannot be.)"""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    try:
        return max(1.0, float(raw.removesuffix("s"))) if raw else DEFAULT_INTERVAL
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %g", INTERVAL_ENV, raw, DEFAULT_INTERVAL)
        return DEFAULT_INTERVAL


def duration(seconds: float) -> str:
    """``52s``, ``1m 02s``, ``2h 05m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def seconds_of(text: str) -> int:
    """The inverse of :func:`duration` (``"1m 02s"`` -> 62)."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([hms])", text))


def parse(line: str) -> dict[str, Any] | None:
    """The figures of a progress line (anywhere in ``line``), or None: ``done``, ``total``,
    ``failed``, ``elapsed_seconds``, and while running ``rows_per_second`` and
    ``eta_seconds`` (None before they are known); ``finished`` is True for the last line."""
    reading = _READING.search(line)
    if reading:
        return {"done": 0, "total": None, "failed": 0, "elapsed_seconds": seconds_of(reading.group("elapsed")),
                "rows_per_second": None, "eta_seconds": None, "finished": False, "reading": True}  # fmt: skip
    for pattern, finished in ((_RUNNING, False), (_DONE, True), (_WAITING, False)):
        match = pattern.search(line)
        if not match:
            continue
        found = match.groupdict()
        number = lambda key: int(found[key].replace(",", "")) if found.get(key) else 0  # noqa: E731
        rate = float(found["rate"]) if found.get("rate") else None
        return {
            "done": number("done"), "total": number("total"), "failed": number("failed"),
            "elapsed_seconds": seconds_of(found["elapsed"]), "rows_per_second": rate,
            "eta_seconds": 0 if finished else (seconds_of(found["eta"]) if found.get("eta") else None),
            "finished": finished,
        }  # fmt: skip
    return None


class ProgressLog:
    """Counts the rows of the blocks written so far and logs them at a steady cadence.

    ``total`` is the rows of the whole input, ``done_before`` those an earlier try wrote
    (a resumed run starts from them; the rate counts only this job's rows). Started with
    ``total=None`` it says it is reading the input until :meth:`rows_known` gives them.
    """

    def __init__(self, total: int | None, done_before: int = 0, every: float | None = None,
                 emit: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic):  # fmt: skip
        self.total, self.before = total, done_before
        self.every = interval() if every is None else every
        self.emit = emit or log.info
        self.clock = clock
        self.started = clock()
        self.done, self.failed = done_before, 0
        self.first_out: float | None = None
        self.first_rows = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def rows_known(self, total: int, done_before: int = 0) -> None:
        """The input is read: ``total`` rows, ``done_before`` of them written by earlier tries."""
        with self._lock:
            self.total, self.before, self.done = total, done_before, done_before

    def block(self, ok: int, errors: int) -> None:
        """One written block's tally."""
        with self._lock:
            self.done += ok + errors
            self.failed += errors
            first = self.first_out is None
            if first:
                self.first_out, self.first_rows = self.clock(), ok + errors
        if first:
            self.emit(f"{PREFIX}first {self.first_rows:,} rows out after {duration(self.first_out - self.started)}")

    def rate(self, now: float) -> float | None:
        """Rows per second since the first block came out, None before a second block."""
        with self._lock:
            if self.first_out is None or now - self.first_out <= 0:
                return None
            since_first = self.done - self.before - self.first_rows
        return since_first / (now - self.first_out) if since_first > 0 else None

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        elapsed = duration(now - self.started)
        with self._lock:
            done, failed, total = self.done, self.failed, self.total
        if total is None:
            return f"{PREFIX}reading the input after {elapsed}"
        if done == self.before and self.first_out is None:
            return f"{PREFIX}{done:,} of {self.total:,} rows after {elapsed} (the engine and the first blocks are starting)"
        percent = int(100 * done / self.total) if self.total else 100
        rate = self.rate(now)
        if rate:
            pace = f"{rate:.1f} rows/s; about {duration(max(0, self.total - done) / rate)} left"
        else:
            pace = "rate not known yet"
        return f"{PREFIX}{done:,} of {self.total:,} rows ({percent}%), {failed:,} failed; {pace} (elapsed {elapsed})"

    def final_line(self) -> str:
        now = self.clock()
        wall = now - self.started
        with self._lock:
            done, failed = self.done, self.failed
        if self.total is None:  # never got to the rows
            return f"{PREFIX}reading the input ended after {duration(wall)}"
        percent = int(100 * done / self.total) if self.total else 100
        rate = (done - self.before) / wall if wall > 0 else 0.0
        return f"{PREFIX}{done:,} of {self.total:,} rows ({percent}%), {failed:,} failed, in {duration(wall)} ({rate:.1f} rows/s)"

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self.emit(self.line())

    def __enter__(self) -> ProgressLog:
        self._thread = threading.Thread(target=self._tick, name="raydllm-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if exc_type is None:
            self.emit(self.final_line())
