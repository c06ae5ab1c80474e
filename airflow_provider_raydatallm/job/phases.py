"""Where a batch job's time goes: the start-up breakdown.

The driver marks the wall-clock time (``time.time()``, seconds since the epoch) as each of
its steps ends; the pass's rows carry when they entered the processor and when they left it,
and each written block's tally brings back the earliest of those, when it was written and
the earliest moment a row of it reached the engine (its exit less its own engine time).
``phase_seconds`` turns the marks into the phases a person reads, in order; the Airflow side
adds the two that only Ray's job record knows (submission with the runtime environment before
the driver, teardown after the commit: :func:`with_job_record`).

No import of Ray here: the Airflow side reads the same names.
"""

from __future__ import annotations

import time
from typing import Any

# The phases, in order, as the task log, XCom and the runs page name them.
SUBMISSION = "submission"  # the Jobs API took the job -> the driver runs (runtime env, scheduling)
DRIVER = "driver start"  # interpreter, Ray connection, the user's callables, the processor config
LOCK = "lock"  # the output's lock
PREFLIGHT = "pre-flight"  # output and input checks, a table's slice
COUNT = "input count"  # the input's rows and columns: read in the driver (small text inputs) or a streaming pass
BUILD = "processor build"  # ray.data.llm builds the stages (imports the engine's library)
FIRST_BLOCK = "first block in"  # the pass starts -> the first rows reach the user's preprocess
ENGINE = "engine start"  # -> the engine took its first request (its actor started and loaded the model)
INFERENCE = "inference"  # -> the last block written (an endpoint without engine times: from the first block in)
PASS_END = "end of pass"  # the last block written -> Ray Data's pass ended (actors stop)
COMMIT = "commit"  # counts checked, rows committed
TEARDOWN = "teardown"  # the commit -> Ray's job record says it ended (driver exit, Ray shutdown)
ORDER = (SUBMISSION, DRIVER, LOCK, PREFLIGHT, COUNT, BUILD, FIRST_BLOCK, ENGINE, INFERENCE, PASS_END, COMMIT,
         TEARDOWN)  # fmt: skip
# The pass's moments kept beside the phases (seconds after the driver's start).
MOMENTS = ("first_in", "engine_ready", "first_out", "last_out")
# The phases that are the work itself; the rest is start-up and overhead.
WORK = (INFERENCE,)


class Clock:
    """The driver's marks: the end of each of its steps, by name."""

    def __init__(self, started: float | None = None):
        self.marks: dict[str, float] = {"started": started if started is not None else time.time()}

    def mark(self, name: str, at: float | None = None) -> None:
        self.marks[name] = at if at is not None else time.time()

    def pass_times(self, tallies: list[dict[str, Any]], now: float | None = None) -> None:
        """The pass's own moments from the written blocks' tallies: the first rows into the
        processor, the engine ready (the earliest moment the engine began a row it timed: a
        row's exit less the engine's seconds on it), the first rows out, the last block
        written. Each moment is kept between its neighbours (the rows' times come from the
        workers' clocks)."""
        ins = [t["t_in"] for t in tallies if t.get("t_in")]
        outs = [t["t_out"] for t in tallies if t.get("t_out")]
        engine = [t["t_engine"] for t in tallies if t.get("t_engine")]
        written = [t["t_written"] for t in tallies if t.get("t_written")]
        floor = self.marks.get("built", self.marks["started"])
        ceiling = max(floor, time.time() if now is None else now)  # the pass ended on the driver by now

        def within(value: float) -> float:
            return min(max(value, floor), ceiling)

        if ins:
            self.marks["first_in"] = floor = within(min(ins))
        if engine:
            self.marks["engine_ready"] = floor = within(min(engine))
        if outs:
            self.marks["first_out"] = within(min(outs))
        if written:
            self.marks["last_out"] = within(max(written))


# Each phase of the job's own: (name, the mark it ends at); it starts where the one before it
# ended (the first at the driver's start). A phase whose mark is missing is skipped (an HTTP
# endpoint reports no engine time; a resumed task with every row written has no pass).
_SPANS = (
    (DRIVER, "connected"),
    (LOCK, "locked"),
    (PREFLIGHT, "checked"),
    (COUNT, "counted"),
    (BUILD, "built"),
    (FIRST_BLOCK, "first_in"),
    (ENGINE, "engine_ready"),
    (INFERENCE, "last_out"),
    (PASS_END, "pass_end"),
    (COMMIT, "committed"),
)


def phase_seconds(marks: dict[str, float]) -> dict[str, float]:
    """Seconds per phase, in order, from the driver's marks."""
    out: dict[str, float] = {}
    last = marks.get("started")
    for name, end in _SPANS:
        if end not in marks or last is None:
            continue
        out[name] = round(max(0.0, marks[end] - last), 3)
        last = max(last, marks[end])  # the phases tile the time from the start to the last mark
    return out


def moments(marks: dict[str, float]) -> dict[str, float]:
    """The pass's moments in seconds after the driver's start: the first rows into the
    processor, the engine ready, the first rows out, the last block written."""
    start = marks.get("started")
    if start is None:
        return {}
    return {name: round(marks[name] - start, 3) for name in MOMENTS if name in marks}


def with_job_record(phases: dict[str, float], started_at: float | None, ended_at: float | None,
                    job_start_ms: int | None, job_end_ms: int | None) -> dict[str, float]:  # fmt: skip
    """The job's phases with Ray's side added: submission (the job record's start to the
    driver's start) and teardown (the commit to the record's end)."""
    out: dict[str, float] = {}
    if started_at and job_start_ms:
        out[SUBMISSION] = round(max(0.0, started_at - job_start_ms / 1000), 3)
    out.update(phases)
    if ended_at and job_end_ms:
        out[TEARDOWN] = round(max(0.0, job_end_ms / 1000 - ended_at), 3)
    return out


def outside_work(phases: dict[str, float]) -> float:
    """Seconds of a run outside inference: every phase but the work itself."""
    return round(sum(v for k, v in phases.items() if k not in WORK), 3)


def table(phases: dict[str, float]) -> str:
    """The breakdown as a short text table: phase, seconds, share of the whole, a bar."""
    total = sum(phases.values())
    if not phases or total <= 0:
        return ""
    width = max(len(k) for k in phases)
    lines = [f"{'phase':<{width}}  {'s':>7}  {'share':>5}"]
    for name, seconds in phases.items():
        share = seconds / total
        lines.append(f"{name:<{width}}  {seconds:7.1f}  {share:5.0%}  {'#' * round(share * 30)}")
    lines.append(f"{'total':<{width}}  {total:7.1f}  (outside inference {outside_work(phases):.1f} s)")
    return "\n".join(lines)
