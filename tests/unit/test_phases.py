"""The start-up breakdown (job/phases.py) and the worker hook that turns vLLM's teardown
noise into one INFO line (job/worker_setup.py): pure parts, no Ray."""

from __future__ import annotations

import logging

import pytest

from airflow_provider_raydatallm.job import phases, rows, sink, worker_setup


def test_marks_become_ordered_phases_and_missing_marks_fold_into_the_next():
    clock = phases.Clock(started=100.0)
    for name, at in (("connected", 102.0), ("locked", 102.5), ("checked", 103.0), ("counted", 106.0), ("built", 107.0)):
        clock.mark(name, at)
    # Two blocks; the engine began its first timed row at 128.
    clock.pass_times([
        {"t_in": 109.0, "t_out": 130.0, "t_written": 130.5, "t_engine": 128.0},
        {"t_in": 108.0, "t_out": 135.0, "t_written": 140.0, "t_engine": 129.0},
    ], now=141.0)
    clock.mark("pass_end", 141.0)
    clock.mark("committed", 141.5)
    got = phases.phase_seconds(clock.marks)
    assert list(got) == [phases.DRIVER, phases.LOCK, phases.PREFLIGHT, phases.COUNT, phases.BUILD, phases.FIRST_BLOCK,
                         phases.ENGINE, phases.INFERENCE, phases.PASS_END, phases.COMMIT]  # fmt: skip
    assert got[phases.FIRST_BLOCK] == 1.0 and got[phases.ENGINE] == 20.0
    assert got[phases.INFERENCE] == 12.0 and got[phases.COMMIT] == 0.5
    assert phases.moments(clock.marks) == {"first_in": 8.0, "engine_ready": 28.0, "first_out": 30.0, "last_out": 40.0}
    assert sum(got.values()) == pytest.approx(41.5)  # the phases tile the driver's whole time
    # A worker whose clock runs ahead or behind the driver's never makes the phases add up to
    # more or less than the driver's own time: its moments are kept within the pass.
    skewed = phases.Clock(started=0.0)
    skewed.mark("built", 10.0)
    skewed.pass_times([{"t_in": 5.0, "t_out": 60.0, "t_written": 70.0, "t_engine": 3.0}], now=40.0)
    skewed.mark("pass_end", 40.0)
    skewed.mark("committed", 41.0)
    got = phases.phase_seconds(skewed.marks)
    assert sum(got.values()) == pytest.approx(41.0) and min(got.values()) >= 0
    # An HTTP endpoint reports no engine seconds: inference runs from the first block in.
    http = phases.Clock(started=0.0)
    http.mark("built", 1.0)
    http.pass_times([{"t_in": 2.0, "t_out": 5.0, "t_written": 6.0, "t_engine": None}], now=6.0)
    got = phases.phase_seconds(http.marks)
    assert phases.ENGINE not in got and got[phases.INFERENCE] == 4.0 and sum(got.values()) == 6.0


def test_job_record_adds_submission_and_teardown_and_the_table_adds_up():
    full = phases.with_job_record({phases.DRIVER: 2.0, phases.INFERENCE: 10.0, phases.COMMIT: 1.0}, 1000.0, 1013.0,
                                  job_start_ms=997_500, job_end_ms=1_015_000)  # fmt: skip
    assert list(full)[0] == phases.SUBMISSION and full[phases.SUBMISSION] == 2.5 and full[phases.TEARDOWN] == 2.0
    assert phases.outside_work(full) == 7.5
    text = phases.table(full)
    lines = text.splitlines()
    assert [line.split()[0] for line in lines[1:-1]] == [phases.SUBMISSION.split()[0], "driver", "inference", "commit",
                                                         "teardown"]  # fmt: skip
    assert lines[-1].split()[:2] == ["total", "17.5"] and "outside inference 7.5 s" in lines[-1]


def test_block_times_come_back_in_the_tally_and_never_reach_the_output():
    records = [
        {rows.T_IN: 10.0, rows.T_OUT: 20.0, rows.ENGINE_SECONDS: 3.0},  # began at 17
        {rows.T_IN: 11.0, rows.T_OUT: 19.0, rows.ENGINE_SECONDS: 4.0},  # began at 15: the engine's first
        {rows.T_IN: 12.0, rows.T_OUT: 21.0, rows.ENGINE_SECONDS: 1.0},  # the longest row is not the first begun
        {rows.T_IN: None, rows.T_OUT: None, rows.ENGINE_SECONDS: None},  # a row failed before the processor
    ]
    got = sink.block_times(records)
    assert (got["t_in"], got["t_out"], got["t_engine"]) == (10.0, 19.0, 15.0) and got["t_written"] > 19.0
    assert {rows.T_IN, rows.T_OUT, rows.ENGINE_SECONDS} <= set(rows.INTERNAL_COLUMNS)
    assert rows.engine_seconds({"time_taken_llm": 1.5}) == 1.5 and rows.engine_seconds({"time_taken": 2}) == 2.0
    assert rows.engine_seconds({"time_taken_llm": -1}) is None and rows.engine_seconds({}) is None


class _EngineDeadError(Exception):
    pass


_EngineDeadError.__name__ = "EngineDeadError"


def _records(caplog, shutting_down: bool, crashed: bool = False):
    worker_setup._state.update(shutting_down=False, crashed=False)
    worker_setup.setup()
    client, handler = logging.getLogger("vllm.v1.engine.core_client"), logging.getLogger("vllm.v1.engine.async_llm")
    with caplog.at_level(logging.INFO):
        if crashed:  # what vLLM's engine monitor logs when the engine process died, before it shuts down
            client.error("[shutdown] MPClient: engine core exited unexpectedly; starting cleanup")
        if shutting_down:
            client.info("[shutdown] MPClient: start timeout=default")
        try:
            raise _EngineDeadError("EngineCore encountered an issue.")
        except _EngineDeadError:
            handler.exception("AsyncLLM output_handler failed.")
    return [r for r in caplog.records if r.name == "vllm.v1.engine.async_llm"]


def test_the_output_handlers_engine_dead_error_at_shutdown_is_one_info_line(caplog):
    (record,) = _records(caplog, shutting_down=True)
    assert record.levelno == logging.INFO and record.exc_info is None
    assert record.getMessage() == worker_setup.TEARDOWN_MESSAGE


def test_the_same_error_while_the_engine_runs_or_after_it_died_stays_an_error_with_its_traceback(caplog):
    (record,) = _records(caplog, shutting_down=False)
    assert record.levelno == logging.ERROR and record.exc_info is not None
    caplog.clear()
    (record,) = _records(caplog, shutting_down=True, crashed=True)  # killed, out of memory: vLLM shuts down after
    assert record.levelno == logging.ERROR and record.exc_info is not None


def test_the_hook_keeps_a_users_own_hook():
    env = worker_setup.with_hook({"worker_process_setup_hook": "mypkg.setup", "env_vars": {"A": "1"}})
    assert env["worker_process_setup_hook"] == worker_setup.HOOK
    assert env["env_vars"] == {"A": "1", worker_setup.USER_HOOK_ENV: "mypkg.setup"}
    assert worker_setup.with_hook({}) == {"worker_process_setup_hook": worker_setup.HOOK}
    # The connection's own hook runs too; one that is not "module.function" is refused.
    env = worker_setup.with_hook({}, {"worker_process_setup_hook": "team.setup"})
    assert env["env_vars"] == {worker_setup.USER_HOOK_ENV: "team.setup"}
    with pytest.raises(TypeError, match="module.function"):
        worker_setup.with_hook({"worker_process_setup_hook": print})
    # Where a worker may not import this package, the hook stays out.
    for job, conn, stage in (({"conda": "env"}, {}, {}), ({}, {"container": {"image": "x"}}, {}),
                             ({}, {}, {"py_modules": ["s3://b/m.zip"]}), ({}, {}, {"working_dir": "."})):
        assert "worker_process_setup_hook" not in worker_setup.with_hook(job, conn, stage)
