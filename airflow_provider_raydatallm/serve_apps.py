"""Deploying, waiting for and removing a Ray Serve LLM application, through the hook's Serve
REST calls: run by the Serve operators on a worker (``asyncio.run``) and by
``RayServeAppTrigger`` in the triggerer, so both paths behave the same.

Serve's REST config is one document for the whole cluster (``hooks._serve_api``): each
change here is read -> edit -> write, then read again to check it took. Two clients that
write at the same moment can undo each other's change; the check after the write catches
it for this app (and tries again), and the wait fails clearly if the app vanishes later.

Leases: an app is shared by every DAG run that deploys it (two DAGs, or overlapping runs of
one). Each deploy takes a lease for its run before it deploys; a teardown drops only its own
run's lease and removes the app only when no lease is left (or none came back within the
idle time it was given). A lease is a record in the cluster's Jobs API (a job that runs
``true`` at once, submission id ``raydllm-lease-<app>-<run hash>``, with the app, the run and
an expiry in its metadata), so every Airflow using the cluster sees the same leases, and
they show in the Ray dashboard. A lease past its expiry (a run that never tore down: its
DAG run deleted) no longer holds the app.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from airflow_provider_raydatallm.exceptions import (
    RayAPIError,
    RayClusterSlowError,
    RayJobAlreadyExistsError,
    RayJobNotFoundError,
    RayProviderError,
    RayServeAppInUseError,
    RayServeDeployError,
)
from airflow_provider_raydatallm.hooks import _serve_api as api
from airflow_provider_raydatallm.hooks.ray import RayHook
from airflow_provider_raydatallm.watch import backoff, is_transient

WRITE_ATTEMPTS = 3
# A config write Ray took but did not answer in time (RayClusterSlowError): Serve's state is
# read this long for the written config before the deploy fails.
UNANSWERED_WRITE_GRACE_SECONDS = 60.0
UNANSWERED_WRITE_POLL_SECONDS = 2.0
REMOVE_WAIT_SECONDS = 120.0
# After a PUT the app is listed at once; a short grace covers a dashboard answering from
# a controller that has not applied it yet.
GONE_GRACE_SECONDS = 30.0


LEASE_PREFIX = "raydllm-lease-"
LEASE_APP_KEY = "raydllm_lease_app"
LEASE_HOLDER_KEY = "raydllm_lease_holder"
LEASE_EXPIRES_KEY = "raydllm_lease_expires"  # epoch seconds
DEFAULT_LEASE_SECONDS = 24 * 3600.0
LEASE_LOOKUP_SECONDS = 10.0  # a lease submission answered late is looked for this long
LEASE_DELETE_SECONDS = 30.0  # a lease job runs `true`; it is deleted once it has ended


def lease_id(app: str, holder: str) -> str:
    """The lease's submission id: the app and a hash of the run holding it."""
    return f"{LEASE_PREFIX}{app}-{hashlib.sha256(holder.encode()).hexdigest()[:12]}"


async def take_lease(hook: RayHook, app: str, holder: str, seconds: float, log: logging.Logger) -> str:
    """Record that ``holder`` (a deployment namespace's DAG run) uses ``app`` for ``seconds``
    at most; the same run taking it again renews its one lease."""
    sid = lease_id(app, holder)
    metadata = {LEASE_APP_KEY: app, LEASE_HOLDER_KEY: holder, LEASE_EXPIRES_KEY: f"{time.time() + seconds:.3f}"}
    expires = metadata[LEASE_EXPIRES_KEY]
    late = False  # a submission of this call was answered late: Ray may record it still
    for attempt in (1, 2):
        try:
            # bare: the lease runs `true`, without the connection's runtime_env (pip, working_dir ...)
            await hook.asubmit_job("true", submission_id=sid, metadata=metadata, entrypoint_num_cpus=0, bare=True)
            log.info("Lease %s on Serve application %s for %s (for at most %.0f s)", sid, app, holder, seconds)
            return sid
        except RayJobAlreadyExistsError:
            if late and await _recorded_lease(hook, sid, expires, lookup=0.0):
                log.info("Lease %s on Serve application %s for %s: recorded, though its answer was late", sid, app, holder)
                return sid  # the late submission was recorded meanwhile
            if attempt == 2:
                raise
            log.info("Lease %s on Serve application %s was held by this run already: renewing it", sid, app)
            await drop_lease(hook, sid, log)  # renewed with a new expiry
        except RayClusterSlowError as err:
            # Ray took the submission and may be recording it still: look for this lease (its
            # expiry is this submission's; an older record of this run's is a stale lease).
            late = True
            recorded = await _recorded_lease(hook, sid, expires)
            if recorded:
                log.info("Lease %s on Serve application %s for %s: recorded, though its answer was late", sid, app, holder)
                return sid
            if attempt == 2:
                why = ("Ray has not recorded it" if recorded is None else "another submission holds its record")
                raise RayServeDeployError(
                    f"taking lease {sid} on Serve application {app!r}: {err}; {why} {LEASE_LOOKUP_SECONDS:g}s later "
                    "(if Ray records it after all, the lease expires after lease_timeout)"
                ) from None
            if recorded is False:
                log.info("Lease %s on Serve application %s is an older one of this run: renewing it", sid, app)
                await drop_lease(hook, sid, log)
            else:  # not recorded yet: submit again (Ray says "already exists" if it was meanwhile)
                log.info("Lease %s on Serve application %s: not recorded yet, submitting it again", sid, app)
    return sid


async def _recorded_lease(hook: RayHook, sid: str, expires: str, lookup: float | None = None) -> bool | None:
    """After a lease submission answered late: True when Ray recorded it, False when the
    record is an older lease of the same run (another expiry), None when there is none after
    ``lookup`` seconds (``LEASE_LOOKUP_SECONDS``)."""
    give_up_at = time.monotonic() + (LEASE_LOOKUP_SECONDS if lookup is None else lookup)
    while True:
        try:
            info = await hook.aget_job_info(sid)
            return (info.metadata or {}).get(LEASE_EXPIRES_KEY) == expires
        except RayJobNotFoundError:
            pass
        except RayProviderError as err:
            if not is_transient(err):
                raise
        if time.monotonic() >= give_up_at:
            return None
        await asyncio.sleep(1)


async def live_leases(hook: RayHook, app: str, now: float | None = None) -> list[Any]:
    """The unexpired leases on ``app`` (``RayJobInfo`` records); expired lease records of the
    app that have ended are deleted on the way (best effort)."""
    now = time.time() if now is None else now
    found = []
    for job in await hook.alist_jobs():
        meta = job.metadata or {}
        if meta.get(LEASE_APP_KEY) != app or not (job.submission_id or "").startswith(LEASE_PREFIX):
            continue
        try:
            expires = float(meta.get(LEASE_EXPIRES_KEY, "0"))
        except ValueError:
            expires = 0.0
        if expires > now:
            found.append(job)
        elif job.status.is_terminal:
            try:
                await hook.adelete_job(job.submission_id)
            except RayProviderError:
                pass
    return found


def holders_of(leases: list[Any]) -> list[str]:
    """The runs that hold these lease records, sorted (their record id when a holder is missing)."""
    return sorted(str((j.metadata or {}).get(LEASE_HOLDER_KEY, j.submission_id)) for j in leases)


async def drop_lease(hook: RayHook, sid: str, log: logging.Logger) -> bool:
    """Delete one lease record (stopping its `true` job first if it still runs); False when
    there was none."""
    deadline = time.monotonic() + LEASE_DELETE_SECONDS
    while True:
        try:
            await hook.adelete_job(sid)
            log.info("Dropped lease %s", sid)
            return True
        except RayJobNotFoundError:
            return False
        except RayAPIError as err:  # still running (Ray deletes only ended jobs)
            if time.monotonic() > deadline:
                raise RayServeDeployError(f"could not drop lease {sid}: {err}") from None
            try:
                await hook.astop_job(sid)
            except RayProviderError:
                pass
            await asyncio.sleep(1)


async def release(hook: RayHook, app: str, sid: str | None, log: logging.Logger, idle: float = 0.0,
                  poll: float = 5.0, wait: float = REMOVE_WAIT_SECONDS) -> tuple[bool, list[str]]:  # fmt: skip
    """The teardown: drop lease ``sid`` (this run's), then remove the app if no lease is
    left, after waiting up to ``idle`` seconds for one to come. Returns (removed, the runs
    still holding it)."""
    if sid:
        await drop_lease(hook, sid, log)
    deadline = time.monotonic() + max(0.0, idle)
    while True:
        others = await live_leases(hook, app)
        if others:
            holders = holders_of(others)
            log.info("Serve application %s is kept: %d other run(s) hold a lease on it (%s)", app, len(holders),
                     ", ".join(holders))  # fmt: skip
            return False, holders
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(min(poll, max(0.0, deadline - time.monotonic())))
    return await remove(hook, app, log, wait=wait, unless_leased=True), []


async def abandon(hook: RayHook, app: str, sid: str | None, log: logging.Logger, created: bool,
                  config_hash: str | None = None) -> bool:  # fmt: skip
    """A deploy that failed or was killed: drop its lease; remove the app it created unless
    another run holds a lease on it (or it runs another config by now). True if removed."""
    if sid:
        await drop_lease(hook, sid, log)
    if not created:
        return False
    others = await live_leases(hook, app)
    if others:
        log.info("Serve application %s is left running: %d other run(s) hold a lease on it", app, len(others))
        return False
    return await remove(hook, app, log, only_hash=config_hash, unless_leased=True)


def holder_of(context: Any, namespace: str) -> str:
    """The run a deploy or teardown task belongs to, as its lease names it:
    ``<deployment namespace>:<dag_id>/<run_id>`` (staging and production share clusters and
    run ids; the namespace keeps their leases apart)."""
    ti = context["ti"]
    return f"{namespace}:{ti.dag_id}/{ti.run_id}"


async def namespace_of(hook: RayHook) -> str:
    """The deployment namespace (the connection's, else Airflow's config; namespace.py)."""
    from airflow_provider_raydatallm import namespace

    return namespace.resolve((await hook.aconfig()).namespace)


@dataclass(frozen=True)
class Deployed:
    """What a deploy changed: ``created`` the app was not there before this deploy;
    ``changed`` the PUT was sent (False: the same config was already deployed)."""

    app_name: str
    config_hash: str
    created: bool
    changed: bool


def _refuse_foreign(state: api.ServeState, name: str, route_prefix: str, address: str) -> None:
    imperative = api.imperative_apps(state)
    if imperative:
        raise RayServeDeployError(
            f"Serve at {address} runs applications deployed with serve.run ({', '.join(imperative)}); a REST "
            "deploy replaces Serve's whole config and would remove them. Deploy them from a config file "
            "(serve deploy) or use another cluster."
        )
    existing = state.apps.get(name)
    if existing is not None and not existing.ours:
        raise RayServeDeployError(
            f"Serve application {name!r} at {address} was not deployed by this provider; it is left alone. "
            "Choose another app_name."
        )
    for other in state.apps.values():
        if other.name != name and other.route_prefix == route_prefix:
            raise RayServeDeployError(
                f"route_prefix {route_prefix!r} is taken by Serve application {other.name!r} at {address}; "
                "choose another route_prefix"
            )


async def deploy(hook: RayHook, config: dict[str, Any], log: logging.Logger, http_options: dict[str, Any] | None = None,
                 proxy_location: str | None = None, lease: str | None = None) -> Deployed:  # fmt: skip
    """Deploy or update one app config (``api.app_config``); a no-op when the same config is
    already deployed. ``lease``: the deploying run's own lease; an app that runs another
    config while other runs hold leases on it is refused, not updated under them."""
    name, wanted = config["name"], api.config_hash(config) or ""
    conn = await hook.aconfig()
    address = conn.base_url
    http_options = http_options or conn.serve.get("http_options")
    proxy_location = proxy_location or conn.serve.get("proxy_location")
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        state = await hook.aget_serve_state()
        _refuse_foreign(state, name, config["route_prefix"], address)
        existing = state.apps.get(name)
        if existing is not None and api.config_hash(existing.config) == wanted and existing.status != "DELETING":
            log.info("Serve application %s is already deployed with this config (%s): nothing to change, it is %s",
                     name, wanted, existing.status)  # fmt: skip
            return Deployed(name, wanted, created=False, changed=False)
        if existing is not None and lease is not None and api.config_hash(existing.config) != wanted:
            others = [j for j in await live_leases(hook, name) if j.submission_id != lease]
            if others:
                holders = holders_of(others)
                raise RayServeAppInUseError(
                    f"Serve application {name!r} at {address} runs another config ({api.config_hash(existing.config)}, "
                    f"this deploy's is {wanted}) and {len(holders)} other run(s) hold a lease on it: "
                    f"{', '.join(holders)}. Updating it would restart the engine under their batches: deploy this "
                    "config under another app_name, or after their teardown"
                )
        if state.running and (http_options or proxy_location):
            log.warning("Serve already runs at %s with its own HTTP options (%s, proxies %s); http_options and "
                        "proxy_location apply only when the deploy starts Serve", address, state.http_options,
                        state.proxy_location)  # fmt: skip
        body = api.put_body(state, put=config, http_options=http_options, proxy_location=proxy_location)
        log.info("%s Serve application %s (config %s) at %s, beside %d other application(s)",
                 "Updating" if existing else "Deploying", name, wanted, address, len(body["applications"]) - 1)  # fmt: skip
        try:
            await hook.aput_serve_applications(body)
        except RayClusterSlowError as err:
            # Ray took the write and may still carry it out: what Serve runs decides.
            after = await _after_unanswered_write(hook, name, wanted, err, log)
        else:
            after = (await hook.aget_serve_state()).apps.get(name)
        if after is not None and api.config_hash(after.config) == wanted:
            # An app that was being deleted is deployed anew: this deploy created it.
            return Deployed(name, wanted, created=existing is None or existing.status == "DELETING", changed=True)
        log.warning("Serve's config changed under this deploy (another client wrote at the same time): attempt %d of %d",
                    attempt, WRITE_ATTEMPTS)  # fmt: skip
    raise RayServeDeployError(f"Serve application {name!r} at {address}: the config did not stay after {WRITE_ATTEMPTS} writes")


async def _after_unanswered_write(hook: RayHook, name: str, wanted: str, err: RayClusterSlowError,
                                  log: logging.Logger) -> Any:  # fmt: skip
    """The app as Serve shows it after a config write that was not answered in time: read
    until it runs the wanted config (not being deleted) or ``UNANSWERED_WRITE_GRACE_SECONDS``
    have passed. Never "unreachable": the head took the write. Raises when Serve does not
    show it by then."""
    log.warning("%s; reading what Serve runs for up to %gs to see whether the write took", err,
                UNANSWERED_WRITE_GRACE_SECONDS)  # fmt: skip
    give_up_at = time.monotonic() + UNANSWERED_WRITE_GRACE_SECONDS
    while True:
        app = await _read_app_tolerantly(hook, name, log)
        if app is not None and app is not UNREAD and api.config_hash(app.config) == wanted and app.status != "DELETING":
            log.info("Serve application %s runs this config (%s): the write took, only its answer was late",
                     name, wanted)  # fmt: skip
            return app
        if time.monotonic() >= give_up_at:
            raise RayServeDeployError(
                f"Serve application {name!r} at {err.address}: the config write was not answered within "
                f"{err.seconds:g}s and Serve did not show the config {UNANSWERED_WRITE_GRACE_SECONDS:g}s later "
                "(the head is up but busy). Ray may still carry the write out: if the application appears, no "
                "run holds a lease on it, and a retry of this task (or a delete) takes care of it. Retry the "
                "task, or give the ray connection a longer 'timeout'"
            )
        await asyncio.sleep(UNANSWERED_WRITE_POLL_SECONDS)


UNREAD = object()  # a read of Serve's state the busy head did not answer


async def _read_app_tolerantly(hook: RayHook, name: str, log: logging.Logger) -> Any:
    """The app as Serve shows it (None: not there), or UNREAD when the read failed for a
    reason worth reading again (``watch.is_transient``)."""
    try:
        return (await hook.aget_serve_state()).apps.get(name)
    except RayProviderError as read_err:
        if not is_transient(read_err):
            raise
        log.info("reading Serve's state failed (%s); reading again", read_err)
        return UNREAD


async def remove(hook: RayHook, name: str, log: logging.Logger, only_hash: str | None = None,
                 wait: float = REMOVE_WAIT_SECONDS, unless_leased: bool = False) -> bool:  # fmt: skip
    """Remove one app this provider deployed and wait until Serve has deleted it; False when
    there was nothing to remove. ``only_hash``: remove it only if it still runs that config;
    ``unless_leased``: before each write, leave it if a run holds a lease on it by then (a
    deploy that came while this removal was under way)."""
    address = (await hook.aconfig()).base_url
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        if unless_leased and await live_leases(hook, name):
            log.info("Serve application %s is kept: a run took a lease on it while it was being removed", name)
            return False
        state = await hook.aget_serve_state()
        app = state.apps.get(name)
        if app is None:
            if attempt == 1:
                log.info("Serve application %s is not on %s: nothing to remove", name, address)
            return attempt > 1
        if not app.ours:
            raise RayServeDeployError(f"Serve application {name!r} at {address} was not deployed by this provider; left alone")
        if only_hash and api.config_hash(app.config) != only_hash:
            log.info("Serve application %s now runs another config (%s); left alone", name, api.config_hash(app.config))
            return False
        log.info("Removing Serve application %s from %s", name, address)
        late_until = 0.0  # a write answered late may be carried out a while after
        try:
            await hook.aput_serve_applications(api.put_body(state, remove=name))
        except RayClusterSlowError as err:  # Ray took the write: what Serve shows decides, below
            log.warning("%s; waiting for Serve to show the application deleted", err)
            late_until = time.monotonic() + UNANSWERED_WRITE_GRACE_SECONDS
        waited_from = time.monotonic()
        deadline = max(waited_from + wait, late_until + 1)
        seen = "not read"
        while time.monotonic() < deadline:
            app = await _read_app_tolerantly(hook, name, log)
            if app is None:
                log.info("Serve application %s is deleted", name)
                return True
            if app is not UNREAD:
                seen = app.status
                if app.status != "DELETING" and time.monotonic() >= late_until:
                    break  # put back by a concurrent write (or a late write never carried out): write again
            await asyncio.sleep(1)
        else:
            raise RayServeDeployError(
                f"Serve application {name!r} at {address} was not deleted after {deadline - waited_from:.0f}s: it was "
                f"{seen} at the last read of Serve's state"
            )
    raise RayServeDeployError(f"Serve application {name!r} at {address}: it came back after {WRITE_ATTEMPTS} removals")


@dataclass(frozen=True)
class AppWait:
    """How to wait for an app: ``deadline`` is wall-clock epoch seconds (survives a triggerer
    restart); ``pending_timeout`` bounds the wait for resources no node has."""

    poll_interval: float = 5.0
    deadline: float | None = None
    pending_timeout: float | None = None
    max_transient_errors: int = 5


async def wait_running(hook: RayHook, name: str, config_hash: str, policy: AppWait, log: logging.Logger) -> dict[str, Any]:
    """Poll until the app is RUNNING; return the event payload (``status`` running, failed,
    unschedulable, timeout, gone or error; ``message``)."""
    failures, said, started = 0, "", time.monotonic()
    stuck_since: float | None = None

    def event(status: str, message: str, app_status: str | None = None) -> dict[str, Any]:
        return {"status": status, "app_name": name, "message": message, "app_status": app_status}

    while True:
        try:
            state = await hook.aget_serve_state()
            failures = 0
        except RayProviderError as err:
            if not is_transient(err):
                return event("error", str(err))
            failures += 1
            if failures > policy.max_transient_errors:
                return event("error", f"gave up after {failures} failed polls in a row: {err}")
            await asyncio.sleep(backoff(failures, policy.poll_interval))
            continue
        app = state.apps.get(name)
        if app is None or api.config_hash(app.config) != config_hash:
            if time.monotonic() - started > GONE_GRACE_SECONDS or app is not None:
                what = "was removed" if app is None else f"was redeployed with another config ({api.config_hash(app.config)})"
                return event("gone", f"Serve application {name} {what} while this task waited for it")
        else:
            progress = app.progress()
            if progress != said:
                log.info("Serve application %s", progress)
                said = progress
            if app.status == "RUNNING":
                return event("running", progress, app.status)
            if app.status in api.FAILED_STATUSES:
                details = "; ".join(f"{d.name}: {d.message}" for d in app.deployments.values() if d.message)
                return event("failed", f"{app.message or ''} {details}".strip() or app.status, app.status)
            stuck = app.unscheduled()
            if stuck and policy.pending_timeout is not None:
                stuck_since = stuck_since or time.monotonic()
                if time.monotonic() - stuck_since >= policy.pending_timeout:
                    return event("unschedulable", f"waited {policy.pending_timeout:.0f}s (pending_timeout) for resources: {stuck}", app.status)
            else:
                stuck_since = None
        if policy.deadline is not None and time.time() >= policy.deadline:
            return event("timeout", f"Serve application {name} was not RUNNING before the task's timeout", app and app.status)
        sleep = policy.poll_interval
        if policy.deadline is not None:
            sleep = max(0.0, min(sleep, policy.deadline - time.time()))
        await asyncio.sleep(sleep)


async def app_value(hook: RayHook, name: str) -> dict[str, Any]:
    """What the deploy task returns (XCom): names and URLs a batch task needs."""
    state = await hook.aget_serve_state()
    app = state.apps.get(name)
    if app is None:
        raise RayServeDeployError(f"Serve application {name!r} is gone")
    llm_configs = ((app.config or {}).get("args") or {}).get("llm_configs") or []
    models = {str(c["model_loading_config"]["model_id"]): api.llm_server_name(c) for c in llm_configs}
    route = app.route_prefix or (app.config or {}).get("route_prefix") or "/"
    url = api.base_url(state, route)
    first_model = next(iter(models), None)
    return {
        "app_name": name,
        "route_prefix": route,
        "status": app.status,
        "config_hash": api.config_hash(app.config),
        "ingress_deployment": app.ingress,
        "deployments": models,  # model id -> LLMServer deployment name
        "model_id": first_model,
        "deployment_name": models.get(first_model) if first_model else None,
        "base_url": url,
        "chat_completions_url": url + "/chat/completions",
    }
