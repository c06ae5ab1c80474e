"""The shared wait loop's pure parts: log lines written once, at offsets a restarted trigger
can carry on from; which pending demands no node can meet; what counts as transient."""

from __future__ import annotations

import logging

from airflow_provider_raydatallm.exceptions import RayAPIError, RayClusterUnreachableError, RayJobNotFoundError
from airflow_provider_raydatallm.hooks import _state_api as state
from airflow_provider_raydatallm.watch import JobWatch, WaitPolicy, is_transient


class _Log:
    def __init__(self):
        self.lines: list[str] = []

    def info(self, fmt, *args):
        self.lines.append(fmt % args)



async def test_lines_are_written_whole_after_their_offset_is_saved(caplog):
    saved: list[tuple[int, int]] = []
    caplog.set_level(logging.INFO, logger="airflow.task.ray")

    def relayed() -> list[str]:
        return [r.getMessage().removeprefix("[ray] ") for r in caplog.records if r.name == "airflow.task.ray"]

    async def checkpoint(offset: int) -> None:
        saved.append((offset, len(relayed())))  # saved before the lines it covers are written

    watch = JobWatch(None, "j", WaitPolicy(), _Log(), log_offset=10, checkpoint=checkpoint)
    await watch._emit("a\nb\npar")
    await watch._emit("tial\n")
    await watch._emit("end", final=True)
    assert relayed() == ["a", "b", "partial", "end"]
    assert saved == [(14, 0), (22, 2), (25, 3)] and watch.offset == 25


def test_demands_name_what_no_node_has():
    job = "02000000"
    actors = [
        {"job_id": job, "state": "PENDING_CREATION", "required_resources": {"CPU": 1.0, "accelerator_type:L4": 0.001}},
        {"job_id": job, "state": "PENDING_CREATION", "required_resources": {"CPU": 1.0}},
        {"job_id": "03000000", "state": "PENDING_CREATION", "required_resources": {"GPU": 8.0}},
    ]
    groups = [{"creator_job_id": job, "state": "PENDING", "bundles": [{"unit_resources": {"CPU": 16.0}}]}]
    nodes = [{"resources_total": {"CPU": 8.0, "memory": 1e9}}, {"resources_total": {"CPU": 4.0, "GPU": 1.0}}]
    found = {d.describe() for d in state.demands(job, actors, groups, nodes)}
    assert found == {
        "{'CPU': 1, 'accelerator_type:L4': 0.001} x1 pending: no node has accelerator_type:L4",
        "{'CPU': 1} x1 pending: waiting for busy nodes",
        "{'CPU': 16} x1 pending: no node has CPU",
    }


def test_state_api_rows_are_read_from_their_envelope():
    body = {"result": True, "data": {"result": {"total": 1, "result": [{"node_id": "n"}]}}}
    assert state.rows_of(body) == [{"node_id": "n"}] and state.rows_of({}) == []


def test_transient_errors_are_unreachable_5xx_and_429_only():
    assert is_transient(RayClusterUnreachableError("a", "refused"))
    assert is_transient(RayAPIError("a", "bad gateway", 502)) and is_transient(RayAPIError("a", "x", 504))
    assert is_transient(RayAPIError("a", "busy", 500)) and is_transient(RayAPIError("a", "slow down", 429))
    assert not is_transient(RayJobNotFoundError("a", "j")) and not is_transient(RayAPIError("a", "bad", 400))


async def test_the_jobs_last_word_marks_it_ending():
    from airflow_provider_raydatallm.job.metrics import ERROR_MARKER, RESULT_MARKER

    for marker in (RESULT_MARKER, ERROR_MARKER):
        watch = JobWatch(None, "j", WaitPolicy(), _Log())
        await watch._emit("progress 10%\n")
        assert not watch.ending.is_set()
        await watch._emit(f"{marker}{{}}\n")
        assert watch.ending.is_set()


async def test_a_follow_cancelled_between_lines_leaves_the_rest_to_the_drain_none_twice(caplog, monkeypatch):
    """Many triggers at once: writing a chunk of lines yields between lines (watch.Turns), so the
    job's end can cancel the follow midway; the drain then writes the rest of the log from the
    last line written, none twice and none lost."""
    import asyncio

    from airflow_provider_raydatallm import watch as watch_mod

    caplog.set_level(logging.INFO, logger="airflow.task.ray")
    monkeypatch.setattr(watch_mod, "TURN_BUDGET_SECONDS", 0.0)  # one line per loop turn
    text = "".join(f"line {i}\n" for i in range(40))

    class Hook:
        async def aget_job_logs(self, job_id: str) -> str:
            await asyncio.sleep(0)
            return text

    def relayed() -> list[str]:
        return [r.getMessage().removeprefix("[ray] ") for r in caplog.records if r.name == "airflow.task.ray"]

    watch = JobWatch(Hook(), "j", WaitPolicy(), _Log())
    follower = asyncio.create_task(watch._emit(text))
    for _ in range(8):
        await asyncio.sleep(0)
    assert 0 < len(relayed()) < 40  # cancelled midway
    await watch._drain(follower)
    assert relayed() == [f"line {i}" for i in range(40)] and watch.offset == len(text)
