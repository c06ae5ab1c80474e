"""The job's progress line: counts, rate and estimate from the blocks written, at a cadence."""

from __future__ import annotations

import threading
import time

import pytest

from airflow_provider_raydatallm.job import progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lines_before_during_and_after_the_pass_parse_back():
    clock, lines = Clock(), []
    shown = progress.ProgressLog(2000, every=30, emit=lines.append, clock=clock)
    clock.now += 30
    waiting = shown.line()
    assert waiting == "progress: 0 of 2,000 rows after 30s (the engine and the first blocks are starting)"
    assert progress.parse(waiting) == {"done": 0, "total": 2000, "failed": 0, "elapsed_seconds": 30,
                                       "rows_per_second": None, "eta_seconds": None, "finished": False}  # fmt: skip
    clock.now += 11  # first block out 41 s after the start: start-up, not a rate
    shown.block(250, 0)
    assert lines == ["progress: first 250 rows out after 41s"]
    assert "rate not known yet" in shown.line()
    clock.now += 20  # two more blocks in 20 s: 25 rows/s, 1,250 rows left -> 50 s
    shown.block(247, 3)
    shown.block(250, 0)
    running = shown.line()
    assert running == "progress: 750 of 2,000 rows (37%), 3 failed; 25.0 rows/s; about 50s left (elapsed 1m 01s)"
    figures = progress.parse("[ray:raydllm] " + running)
    assert figures == {"done": 750, "total": 2000, "failed": 3, "elapsed_seconds": 61, "rows_per_second": 25.0,
                       "eta_seconds": 50, "finished": False}  # fmt: skip
    for _ in range(5):
        shown.block(250, 0)
    clock.now += 50
    final = shown.final_line()
    assert final == "progress: 2,000 of 2,000 rows (100%), 3 failed, in 1m 51s (18.0 rows/s)"
    assert progress.parse(final)["finished"] is True and progress.parse(final)["done"] == 2000


def test_a_resumed_run_counts_from_the_rows_written_before_but_rates_only_its_own():
    clock = Clock()
    shown = progress.ProgressLog(1000, done_before=600, every=30, emit=lambda line: None, clock=clock)
    clock.now += 5
    assert shown.line().startswith("progress: 600 of 1,000 rows after 5s")
    assert progress.parse(shown.line())["done"] == 600
    shown.block(100, 0)
    clock.now += 10
    shown.block(100, 0)
    assert progress.parse(shown.line())["rows_per_second"] == 10.0  # 100 rows in the 10 s after the first block
    assert shown.final_line().endswith("in 15s (13.3 rows/s)")  # 200 of this job's rows in 15 s


def test_durations_round_trip():
    for seconds in (0, 59, 60, 62, 3599, 3600, 7500):
        text = progress.duration(seconds)
        assert progress.seconds_of(text) == (seconds if seconds < 3600 else seconds // 60 * 60)
    assert progress.duration(7500) == "2h 05m"


def test_the_thread_logs_at_its_cadence_not_per_block_and_a_failed_pass_gets_no_final_line():
    lines: list[str] = []
    lock = threading.Lock()

    def emit(line: str) -> None:
        with lock:
            lines.append(line)

    with progress.ProgressLog(10_000, every=0.2, emit=emit) as shown:
        for _ in range(400):  # 400 blocks in ~1 s: a handful of lines, not 400
            shown.block(25, 0)
            time.sleep(0.0025)
        time.sleep(0.25)
    ticks = [line for line in lines if "elapsed" in line]
    assert 2 <= len(ticks) <= 12, lines
    assert lines[0] == "progress: first 25 rows out after 0s" and lines[-1].startswith("progress: 10,000 of 10,000 rows (100%)")
    lines.clear()
    with pytest.raises(RuntimeError):
        with progress.ProgressLog(10, every=30, emit=emit):
            raise RuntimeError("the pass failed")
    assert lines == []


def test_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "5")
    assert progress.interval() == 5.0
    monkeypatch.setenv(progress.INTERVAL_ENV, "7s")
    assert progress.interval() == 7.0
    monkeypatch.setenv(progress.INTERVAL_ENV, "0.01")
    assert progress.interval() == 1.0
    monkeypatch.setenv(progress.INTERVAL_ENV, "soon")
    assert progress.interval() == progress.DEFAULT_INTERVAL


def test_while_the_input_is_read_the_line_says_so_then_counts_rows():
    clock, lines = Clock(), []
    shown = progress.ProgressLog(None, every=30, emit=lines.append, clock=clock)
    clock.now += 30
    assert shown.line() == "progress: reading the input after 30s"
    assert progress.parse(shown.line()) == {"done": 0, "total": None, "failed": 0, "elapsed_seconds": 30,
                                            "rows_per_second": None, "eta_seconds": None, "finished": False,
                                            "reading": True}  # fmt: skip
    shown.rows_known(100, 40)  # 40 rows written by an earlier try
    clock.now += 30
    assert shown.line() == "progress: 40 of 100 rows after 1m 00s (the engine and the first blocks are starting)"
    shown.block(60, 0)
    clock.now += 10
    assert shown.final_line() == "progress: 100 of 100 rows (100%), 0 failed, in 1m 10s (0.9 rows/s)"
