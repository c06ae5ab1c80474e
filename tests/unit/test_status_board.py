"""Triggers in one event loop share one status poll (watch.StatusBoard): many watchers, one
``GET /api/jobs/`` per half interval; a job the list lacks, or a failed list, is read alone."""

from __future__ import annotations

import asyncio

import pytest

from airflow_provider_raydatallm.hooks.ray import RayJobInfo, RayJobStatus
from airflow_provider_raydatallm.watch import StatusBoard


class ListingHook:
    calls = 0
    fail = False
    jobs: list[RayJobInfo] = []

    def __init__(self, ray_conn_id: str):
        self.ray_conn_id = ray_conn_id
        self.closed = False

    async def alist_jobs(self) -> list[RayJobInfo]:
        type(self).calls += 1
        await asyncio.sleep(0.05)  # a request in flight while other watchers ask
        if type(self).fail:
            raise RuntimeError("dashboard busy")
        return list(type(self).jobs)

    async def aclose(self) -> None:
        self.closed = True


def _job(n: int, status: RayJobStatus = RayJobStatus.RUNNING) -> RayJobInfo:
    return RayJobInfo(job_id=f"0{n}000000", submission_id=f"raydllm-{n}", status=status)


@pytest.fixture(autouse=True)
def _reset():
    ListingHook.calls, ListingHook.fail, ListingHook.jobs = 0, False, [_job(n) for n in range(200)]
    yield
    StatusBoard._boards.clear()


def test_two_hundred_watchers_asking_at_once_make_one_request_and_each_gets_its_job():
    async def main():
        boards = [StatusBoard.join("ray_default", ListingHook) for _ in range(200)]
        assert len({id(b) for b in boards}) == 1
        got = await asyncio.gather(*(b.info(f"raydllm-{n}", 5.0) for n, b in enumerate(boards)))
        assert [g.submission_id for g in got] == [f"raydllm-{n}" for n in range(200)]
        assert ListingHook.calls == 1
        # Within the snapshot's age no new request; the job is found by its Ray job id too.
        assert (await boards[0].info("07000000", 5.0)).submission_id == "raydllm-7" and ListingHook.calls == 1
        # Past the age one new request, which shows the job's end.
        ListingHook.jobs = [_job(3, RayJobStatus.SUCCEEDED)]
        assert (await boards[0].info("raydllm-3", 0.0)).status is RayJobStatus.SUCCEEDED and ListingHook.calls == 2
        hook = boards[0].hook
        for b in boards:
            await b.leave()
        assert hook.closed and not StatusBoard._boards

    asyncio.run(main())


def test_a_job_the_list_lacks_or_a_failed_list_is_none_and_a_failed_list_is_not_retried_at_once():
    async def main():
        board = [StatusBoard.join("ray_default", ListingHook) for _ in range(StatusBoard.SHARE_FROM)][0]
        assert await board.info("raydllm-999", 5.0) is None  # just submitted or deleted: read alone
        ListingHook.fail = True
        await asyncio.sleep(0.25)  # the snapshot is older than 0.2 s
        assert await board.info("raydllm-1", 0.2) is None and ListingHook.calls == 2
        assert await board.info("raydllm-1", 0.2) is None and ListingHook.calls == 2  # not asked again yet
        for _ in range(StatusBoard.SHARE_FROM):
            await board.leave()

    asyncio.run(main())


def test_boards_are_per_connection_and_a_few_watchers_read_their_jobs_alone():
    async def main():
        a, b = StatusBoard.join("ray_a", ListingHook), StatusBoard.join("ray_b", ListingHook)
        assert a is not b and len(StatusBoard._boards) == 2
        assert await a.info("raydllm-1", 5.0) is None and ListingHook.calls == 0  # one watcher: no list
        await a.leave(), await b.leave()
        assert not StatusBoard._boards

    asyncio.run(main())


def test_the_last_watcher_leaving_mid_refresh_cancels_it_before_closing_the_client():
    async def main():
        boards = [StatusBoard.join("ray_default", ListingHook) for _ in range(10)]
        asking = asyncio.ensure_future(boards[0].info("raydllm-1", 5.0))
        await asyncio.sleep(0.01)  # the list request is in flight
        asking.cancel()
        for b in boards:
            await b.leave()
        assert boards[0].refreshing.cancelled() and boards[0].hook is None

    asyncio.run(main())
