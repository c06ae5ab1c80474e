"""Leases on a shared Serve app (serve_apps): a teardown drops only its run's lease and
deletes the app only when no lease is left (or none came back within the idle time); an
expired lease no longer holds it; a failed deploy never pulls an app another run uses.
Against an in-memory Jobs API (the leases are job records); the real cluster runs the
same in tests/system/test_serve.py."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from airflow_provider_raydatallm import serve_apps
from airflow_provider_raydatallm.exceptions import RayAPIError, RayJobAlreadyExistsError, RayJobNotFoundError
from airflow_provider_raydatallm.hooks.ray import RayJobInfo, RayJobStatus

LOG = logging.getLogger("test")


class Jobs:
    """The Jobs API as the leases use it: submit (unique ids), list, stop, delete (ended only)."""

    def __init__(self):
        self.jobs: dict[str, RayJobInfo] = {}

    async def asubmit_job(self, entrypoint, submission_id, metadata, entrypoint_num_cpus, bare):
        assert entrypoint == "true" and entrypoint_num_cpus == 0 and bare  # no connection runtime_env for a record
        if submission_id in self.jobs:
            raise RayJobAlreadyExistsError("http://x", submission_id)
        self.jobs[submission_id] = RayJobInfo(job_id=None, submission_id=submission_id, status=RayJobStatus.RUNNING,
                                              metadata=dict(metadata))  # fmt: skip
        return submission_id

    async def alist_jobs(self):
        return list(self.jobs.values())

    async def astop_job(self, sid):
        job = self.jobs[sid]
        self.jobs[sid] = RayJobInfo(job_id=None, submission_id=sid, status=RayJobStatus.STOPPED, metadata=job.metadata)
        return True

    async def adelete_job(self, sid):
        if sid not in self.jobs:
            raise RayJobNotFoundError("http://x", sid)
        if not self.jobs[sid].status.is_terminal:
            raise RayAPIError("http://x", "job is running", 400, sid)
        del self.jobs[sid]
        return True


@pytest.fixture
def removed(monkeypatch):
    calls: list[tuple[str, str | None]] = []

    async def remove(hook, name, log, only_hash=None, wait=0, unless_leased=False):
        assert unless_leased  # a removal after a lease check looks again before each write
        calls.append((name, only_hash))
        return True

    monkeypatch.setattr(serve_apps, "remove", remove)
    return calls


def test_the_first_teardown_keeps_the_app_for_the_other_run_and_the_last_one_deletes_it(removed):
    async def main():
        jobs = Jobs()
        a = await serve_apps.take_lease(jobs, "warm", "daily_a/run1", 3600, LOG)
        b = await serve_apps.take_lease(jobs, "warm", "daily_b/run7", 3600, LOG)
        assert a != b and a.startswith(serve_apps.LEASE_PREFIX + "warm-")
        first_expiry = jobs.jobs[a].metadata[serve_apps.LEASE_EXPIRES_KEY]
        time.sleep(1.1)
        assert await serve_apps.take_lease(jobs, "warm", "daily_a/run1", 3600, LOG) == a  # the same run: one lease,
        assert jobs.jobs[a].metadata[serve_apps.LEASE_EXPIRES_KEY] > first_expiry  # renewed
        await serve_apps.take_lease(jobs, "other-app", "daily_c/run1", 3600, LOG)
        assert await serve_apps.release(jobs, "warm", a, LOG) == (False, ["daily_b/run7"])
        assert removed == [] and a not in jobs.jobs and b in jobs.jobs
        assert await serve_apps.release(jobs, "warm", b, LOG) == (True, [])
        assert removed == [("warm", None)] and set(jobs.jobs) == {serve_apps.lease_id("other-app", "daily_c/run1")}

    asyncio.run(main())


def test_an_expired_lease_no_longer_holds_the_app_and_its_ended_record_goes(removed):
    async def main():
        jobs = Jobs()
        sid = await serve_apps.take_lease(jobs, "warm", "deleted_run/x", 0.01, LOG)
        time.sleep(0.05)
        assert await serve_apps.live_leases(jobs, "warm") == [] and sid in jobs.jobs  # still running `true`
        await jobs.astop_job(sid)
        assert await serve_apps.live_leases(jobs, "warm") == [] and sid not in jobs.jobs
        assert (await serve_apps.release(jobs, "warm", None, LOG))[0] is True

    asyncio.run(main())


def test_the_idle_time_lets_a_run_that_comes_meanwhile_keep_the_app(removed):
    async def main():
        jobs = Jobs()
        mine = await serve_apps.take_lease(jobs, "warm", "a/1", 3600, LOG)

        async def late_run():
            await asyncio.sleep(0.2)
            await serve_apps.take_lease(jobs, "warm", "b/2", 3600, LOG)

        late = asyncio.ensure_future(late_run())
        kept = await serve_apps.release(jobs, "warm", mine, LOG, idle=2.0, poll=0.05)
        await late
        assert kept == (False, ["b/2"]) and removed == []

    asyncio.run(main())


def test_a_failed_deploy_drops_its_lease_and_removes_its_app_only_when_nobody_else_holds_it(removed):
    async def main():
        jobs = Jobs()
        mine = await serve_apps.take_lease(jobs, "warm", "a/1", 3600, LOG)
        await serve_apps.take_lease(jobs, "warm", "b/2", 3600, LOG)
        assert await serve_apps.abandon(jobs, "warm", mine, LOG, created=True, config_hash="h") is False
        assert removed == [] and mine not in jobs.jobs
        other = serve_apps.lease_id("warm", "b/2")
        assert await serve_apps.abandon(jobs, "warm", other, LOG, created=True, config_hash="h") is True
        assert removed == [("warm", "h")]

    asyncio.run(main())


class FakeHook:
    """What operators/serve.py and triggers/serve.py build from a connection id: the in-memory
    Jobs API above, shared by every hook of the test."""

    jobs = Jobs()

    def __init__(self, ray_conn_id: str = "ray_default") -> None:
        self.ray_conn_id = ray_conn_id

    def __getattr__(self, name):
        return getattr(FakeHook.jobs, name)

    async def aclose(self) -> None:
        pass


@pytest.fixture
def fake_hooks(monkeypatch, removed):
    from airflow_provider_raydatallm.operators import serve as serve_ops
    from airflow_provider_raydatallm.triggers import serve as serve_triggers

    FakeHook.jobs = Jobs()
    monkeypatch.setattr(serve_ops, "RayHook", FakeHook)
    monkeypatch.setattr(serve_triggers, "RayHook", FakeHook)
    return FakeHook.jobs


def test_a_deploy_killed_while_it_waits_on_a_worker_drops_its_lease_and_removes_its_app(fake_hooks, removed):
    """Airflow calls on_kill from its SIGTERM handler on the thread that is inside the deploy's
    asyncio.run (the wait for RUNNING): the cleanup cannot start a loop there."""
    from airflow_provider_raydatallm.operators.serve import RayServeLLMDeployOperator

    op = RayServeLLMDeployOperator(task_id="deploy_llm", app_name="warm", llm_configs=[{"model_loading_config": {
        "model_id": "m", "model_source": "/models/m"}}])  # fmt: skip

    async def waiting_when_killed():
        op._lease = await serve_apps.take_lease(fake_hooks, "warm", "a/1", 3600, LOG)
        op._created = ("warm", "h1")
        op.on_kill()  # as the signal handler does, inside the running loop

    asyncio.run(waiting_when_killed())
    assert removed == [("warm", "h1")] and fake_hooks.jobs == {} and op._lease is None


@pytest.mark.parametrize(
    ("state", "abandoned"),
    [("failed", True), ("<absent>", True), (None, False), ("success", False), ("scheduled", False), ("deferred", False),
     ("running", False), ("<unknown>", False)],
)
def test_a_deploy_killed_in_the_triggerer_asks_airflow_before_it_lets_go(fake_hooks, removed, monkeypatch, state, abandoned):
    """Marked failed, or its run deleted: the lease goes and the app it created with it. A copy
    that only moved to another triggerer (the task instance still deferred) or a stale one (the
    task resumed: running, scheduled), a task cleared for its next try or marked success (its
    teardown runs), or a task instance Airflow could not be asked about keeps both."""
    from types import SimpleNamespace

    from airflow_provider_raydatallm.triggers import ray_job
    from airflow_provider_raydatallm.triggers.serve import RayServeAppTrigger

    async def task_state(ti):
        if state == "<unknown>":
            raise OSError("the API server did not answer")
        return state

    monkeypatch.setattr(ray_job, "_task_state", task_state)

    async def main():
        lease = await serve_apps.take_lease(fake_hooks, "warm", "a/1", 3600, LOG)
        trigger = RayServeAppTrigger("warm", "h1", ray_conn_id="c", poll_interval=1, deadline=None, pending_timeout=9,
                                     remove_on_kill=True, lease=lease)  # fmt: skip
        trigger.task_instance = SimpleNamespace(dag_id="d", task_id="deploy_llm", run_id="r1", map_index=-1)
        await trigger.on_kill()
        return lease

    lease = asyncio.run(main())
    assert (lease not in fake_hooks.jobs, removed == [("warm", "h1")]) == (abandoned, abandoned)


def test_a_deploy_refused_for_another_config_lets_go_as_a_teardown_would(fake_hooks, removed, monkeypatch):
    """Run B deploys another config of an app run A holds: refused. A's teardown may have run
    while B's lease was up and kept the app for B: B's refusal then removes it, as the last
    teardown would, instead of leaving it to nobody."""
    from types import SimpleNamespace

    from airflow_provider_raydatallm.exceptions import RayServeAppInUseError
    from airflow_provider_raydatallm.operators.serve import RayServeLLMDeployOperator

    async def refused(*args, **kwargs):
        # A's teardown lands while B's lease is up: A's lease goes, the app is kept for B.
        a = serve_apps.lease_id("warm", "ns:daily_a/run1")
        assert await serve_apps.release(fake_hooks, "warm", a, LOG) == (False, ["ns:daily_b/run7"])
        raise RayServeAppInUseError("runs another config")

    async def namespace_of(hook):
        return "ns"

    monkeypatch.setattr(serve_apps, "deploy", refused)
    monkeypatch.setattr(serve_apps, "namespace_of", namespace_of)
    asyncio.run(serve_apps.take_lease(fake_hooks, "warm", "ns:daily_a/run1", 3600, LOG))
    op = RayServeLLMDeployOperator(task_id="deploy_llm", app_name="warm", llm_configs=[{"model_loading_config": {
        "model_id": "m", "model_source": "/models/m"}}])  # fmt: skip
    ti = SimpleNamespace(dag_id="daily_b", run_id="run7", map_index=-1, xcom_push=lambda **kw: None)
    with pytest.raises(RayServeAppInUseError):
        op.execute({"ti": ti})
    assert fake_hooks.jobs == {} and removed == [("warm", None)]
