"""RayHook: a Ray cluster reached through its dashboard's Jobs REST API.

The hook never imports ``ray``: it speaks HTTP (httpx) and, for log tailing, a websocket,
so Airflow workers and the triggerer need no Ray install and no version match with the
cluster. Sync methods serve operators and sensors; the ``a``-prefixed coroutines serve
triggers and never block the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import httpx

from airflow.sdk import BaseHook
from airflow_provider_raydatallm.exceptions import RayClusterSlowError, RayClusterUnreachableError
from airflow_provider_raydatallm.hooks import _jobs_api as api, _state_api as _state
from airflow_provider_raydatallm.hooks._connection import (
    CONNECT_TIMEOUT,
    RayConnectionConfig,
    config_from_connection,
)
from airflow_provider_raydatallm.hooks._jobs_api import RayJobInfo, RayJobStatus
from airflow_provider_raydatallm.hooks._packages import package_uri, zip_directory
from airflow_provider_raydatallm.hooks._state_api import Demand
from airflow_provider_raydatallm.hooks._ui import UI_FIELD_BEHAVIOUR

if TYPE_CHECKING:
    from airflow.sdk import Connection

    from airflow_provider_raydatallm.hooks._serve_api import ServeState

__all__ = ["Demand", "RayHook", "RayJobInfo", "RayJobStatus"]
# Answers above this size (a long job log) are decoded in a thread, off the triggerer's loop.
LARGE_BODY = 256 * 1024
# Seconds a write of Serve's config may take to be answered, at least (the connection's
# timeout, when longer, applies instead).
SERVE_WRITE_TIMEOUT = 120.0


@dataclass(frozen=True)
class _Call:
    """One Jobs API request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[Any], Any]
    body: Any = None
    content: bytes | None = None
    job_id: str | None = None
    submitting: bool = False
    expect_json: bool = True
    params: Mapping[str, Any] | None = None
    off_loop: bool = False  # an answer that grows with the cluster (every job it knows): read in a thread
    min_timeout: float | None = None  # seconds the answer may take at least, whatever the connection's timeout


class RayHook(BaseHook):
    """
    Interact with a Ray cluster through the Ray Jobs REST API of its dashboard.

    :param ray_conn_id: Airflow connection of type ``ray``: host/port/schema of the dashboard
        (default ``http://127.0.0.1:8265``), the cluster token as password, and extras
        ``headers``, ``verify``, ``timeout``, ``runtime_env`` and ``metadata``.
    """

    conn_name_attr = "ray_conn_id"
    default_conn_name = "ray_default"
    conn_type = "ray"
    hook_name = "Ray"

    def __init__(self, ray_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ray_conn_id = ray_conn_id
        self._config: RayConnectionConfig | None = None
        self._async_client: httpx.AsyncClient | None = None

    # -- connection -----------------------------------------------------------------

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Form behaviour for Airflow versions that read it from the hook (< 3.2)."""
        return {
            "hidden_fields": UI_FIELD_BEHAVIOUR["hidden-fields"],
            "relabeling": UI_FIELD_BEHAVIOUR["relabeling"],
            "placeholders": UI_FIELD_BEHAVIOUR["placeholders"],
        }

    @staticmethod
    def _config_of(conn: Connection) -> RayConnectionConfig:
        config = config_from_connection(conn.host, conn.port, conn.schema, conn.password, conn.extra_dejson)
        from airflow.sdk.log import mask_secret

        for secret in config.secrets():
            mask_secret(secret)
        return config

    @property
    def config(self) -> RayConnectionConfig:
        """The resolved connection settings (looked up once, on first use)."""
        if self._config is None:
            self._config = self._config_of(self.get_connection(self.ray_conn_id))
        return self._config

    async def aconfig(self) -> RayConnectionConfig:
        """Async twin of :attr:`config` for the triggerer."""
        if self._config is None:
            self._config = self._config_of(await self.aget_connection(self.ray_conn_id))
        return self._config

    @property
    def address(self) -> str:
        return self.config.base_url

    @cached_property
    def _client(self) -> httpx.Client:
        return httpx.Client(**self.config.client_kwargs())

    def get_conn(self) -> httpx.Client:
        """The sync HTTP client, bound to the dashboard address with auth headers."""
        return self._client

    async def _aclient(self) -> httpx.AsyncClient:
        if self._async_client is None:
            config = await self.aconfig()
            # Building the TLS context reads the CA bundle from disk: off the event loop.
            self._async_client = await asyncio.to_thread(lambda: httpx.AsyncClient(**config.client_kwargs()))
        return self._async_client

    def close(self) -> None:
        if "_client" in self.__dict__:
            self._client.close()
            del self.__dict__["_client"]

    async def aclose(self) -> None:
        if self._async_client is not None:
            await self._async_client.aclose()
            self._async_client = None

    # -- one request, sync and async ---------------------------------------------------

    def _read(self, call: _Call, config: RayConnectionConfig, response: httpx.Response) -> Any:
        api.raise_for_response(
            status_code=response.status_code,
            body=response.text,
            address=config.base_url,
            secrets=config.secrets(),
            job_id=call.job_id,
            submitting=call.submitting,
        )
        if not call.expect_json:
            return call.parse(response)
        data = api.parse_json(
            response.text, address=config.base_url, what=f"{call.method} {call.path}", secrets=config.secrets()
        )
        return call.parse(data)

    @staticmethod
    def _timeout(call: _Call, config: RayConnectionConfig) -> Any:
        """The call's own timeout when it needs longer than the connection's, else the client's."""
        if call.min_timeout is None or call.min_timeout <= config.timeout:
            return httpx.USE_CLIENT_DEFAULT
        return httpx.Timeout(call.min_timeout, connect=min(CONNECT_TIMEOUT, config.timeout))

    def _unreachable(self, call: _Call, config: RayConnectionConfig, err: httpx.TransportError) -> RayClusterUnreachableError:
        reason = api.redact(f"{type(err).__name__}: {err}" if str(err) else type(err).__name__, config.secrets())
        if isinstance(err, httpx.ReadTimeout):
            # It took the whole request: up, but slow. (A connect timeout is "unreachable"; a
            # write timeout means the request was not all sent, so nothing was taken.)
            seconds = max(config.timeout, call.min_timeout or 0.0)
            return RayClusterSlowError(config.base_url, f"{call.method} {call.path}", seconds, reason)
        return RayClusterUnreachableError(config.base_url, reason)

    def _run(self, call: _Call) -> Any:
        config = self.config
        try:
            response = self._client.request(
                call.method, call.path, json=call.body, content=call.content, params=call.params,
                timeout=self._timeout(call, config),
            )  # fmt: skip
        except httpx.TransportError as err:
            raise self._unreachable(call, config, err) from None
        return self._read(call, config, response)

    async def _arun(self, call: _Call) -> Any:
        client = await self._aclient()
        config = await self.aconfig()
        try:
            response = await client.request(
                call.method, call.path, json=call.body, content=call.content, params=call.params,
                timeout=self._timeout(call, config),
            )  # fmt: skip
        except httpx.TransportError as err:
            raise self._unreachable(call, config, err) from None
        if call.off_loop or len(response.content) > LARGE_BODY:  # a long log, the job list: off the loop
            return await asyncio.to_thread(self._read, call, config, response)
        return self._read(call, config, response)

    # -- the Jobs API as calls ---------------------------------------------------------------

    def _submit_call(self, config: RayConnectionConfig, entrypoint: str, **options: Any) -> _Call:
        # bare: a record-only job (a Serve lease) without the connection's runtime_env
        base = {} if options.pop("bare", False) else config.runtime_env
        runtime_env = api.merge_runtime_env(base, options.pop("runtime_env", None))
        metadata = {**config.metadata, **(options.pop("metadata", None) or {})}
        body = api.submit_body(entrypoint, runtime_env=runtime_env, metadata=metadata, **options)
        return _Call(
            "POST",
            api.JOBS_PATH,
            lambda data: data.get("submission_id") or data["job_id"],
            body=body,
            job_id=options.get("submission_id"),
            submitting=True,
        )

    @staticmethod
    def _info_call(job_id: str) -> _Call:
        return _Call("GET", api.job_path(job_id), RayJobInfo.from_api, job_id=job_id)

    @staticmethod
    def _logs_call(job_id: str) -> _Call:
        return _Call("GET", api.job_path(job_id, "/logs"), lambda d: d.get("logs") or "", job_id=job_id)

    @staticmethod
    def _stop_call(job_id: str) -> _Call:
        return _Call("POST", api.job_path(job_id, "/stop"), lambda d: bool(d.get("stopped")), job_id=job_id)

    @staticmethod
    def _delete_call(job_id: str) -> _Call:
        return _Call("DELETE", api.job_path(job_id), lambda d: bool(d.get("deleted")), job_id=job_id)

    @staticmethod
    def _list_call() -> _Call:
        return _Call("GET", api.JOBS_PATH, lambda d: [RayJobInfo.from_api(j) for j in d], off_loop=True)

    @staticmethod
    def _state_call(path: str, params: Mapping[str, Any]) -> _Call:
        return _Call("GET", path, _state.rows_of, params=params)

    def _demand_calls(self, job_hex_id: str) -> tuple[_Call, _Call, _Call]:
        """Pending actors of the job, pending placement groups, alive nodes."""
        return (
            self._state_call(_state.ACTORS_PATH, _state.actors_query(job_hex_id)),
            self._state_call(_state.PLACEMENT_GROUPS_PATH, _state.pending_groups_query()),
            self._state_call(_state.NODES_PATH, _state.nodes_query()),
        )

    @staticmethod
    def _serve_state_call() -> _Call:
        from airflow_provider_raydatallm.hooks._serve_api import APPLICATIONS_PATH, ServeState  # Serve users only

        return _Call("GET", APPLICATIONS_PATH, ServeState.from_api)

    @staticmethod
    def _serve_put_call(body: Mapping[str, Any]) -> _Call:
        from airflow_provider_raydatallm.hooks._serve_api import APPLICATIONS_PATH

        # Ray answers once Serve took the config; the first one starts Serve itself, which
        # on a busy head outlasts a read's timeout.
        return _Call("PUT", APPLICATIONS_PATH, lambda r: None, body=dict(body), expect_json=False,
                     min_timeout=SERVE_WRITE_TIMEOUT)  # fmt: skip

    @staticmethod
    def _version_call() -> _Call:
        return _Call("GET", api.VERSION_PATH, lambda d: d["ray_version"])

    # -- sync API (operators, sensors) ---------------------------------------------------

    def submit_job(
        self,
        entrypoint: str,
        *,
        submission_id: str | None = None,
        runtime_env: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        entrypoint_num_cpus: float | None = None,
        entrypoint_num_gpus: float | None = None,
        entrypoint_memory: int | None = None,
        entrypoint_resources: Mapping[str, float] | None = None,
    ) -> str:
        """
        Submit a job and return its submission id.

        ``runtime_env`` is merged over the connection's default (``env_vars`` key by key) and
        ``metadata`` over the connection's. Raises ``RayJobAlreadyExistsError`` when
        ``submission_id`` is taken.
        """
        call = self._submit_call(
            self.config,
            entrypoint,
            submission_id=submission_id,
            runtime_env=runtime_env,
            metadata=metadata,
            entrypoint_num_cpus=entrypoint_num_cpus,
            entrypoint_num_gpus=entrypoint_num_gpus,
            entrypoint_memory=entrypoint_memory,
            entrypoint_resources=entrypoint_resources,
        )
        submitted = self._run(call)
        self.log.info("Submitted Ray job %s to %s", submitted, self.address)
        return submitted

    def get_job_info(self, job_id: str) -> RayJobInfo:
        """Status, message, times and metadata of a job (by job id or submission id)."""
        return self._run(self._info_call(job_id))

    def get_job_status(self, job_id: str) -> RayJobStatus:
        return self.get_job_info(job_id).status

    def get_job_logs(self, job_id: str) -> str:
        """The whole driver log of a job so far."""
        return self._run(self._logs_call(job_id))

    def stop_job(self, job_id: str) -> bool:
        """Ask Ray to stop a job; False if it had already ended."""
        return self._run(self._stop_call(job_id))

    def delete_job(self, job_id: str) -> bool:
        """Delete a terminal job's record and logs (Ray refuses for a running job: stop it first)."""
        return self._run(self._delete_call(job_id))

    def list_jobs(self) -> list[RayJobInfo]:
        return self._run(self._list_call())

    def get_pending_demands(self, job_hex_id: str) -> list[Demand]:
        """Resources the job's actors and placement groups wait for, each with what no node
        has (``job_hex_id`` is Ray's job id, e.g. ``"02000000"``, not the submission id)."""
        actors, groups, nodes = (self._run(call) for call in self._demand_calls(job_hex_id))
        return _state.demands(job_hex_id, actors, groups, nodes)

    def state_rows(self, path: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Rows of a Ray state API listing, e.g. ``/api/v0/actors`` with its filter parameters."""
        return self._run(self._state_call(path, params))

    def get_serve_state(self) -> ServeState:
        """Ray Serve on the cluster: running or not, HTTP options, every application."""
        return self._run(self._serve_state_call())

    def put_serve_applications(self, body: Mapping[str, Any]) -> None:
        """Replace Serve's whole declarative config (``hooks._serve_api.put_body`` makes one
        that keeps the other applications)."""
        self._run(self._serve_put_call(body))

    def get_cluster_version(self) -> str:
        """The Ray version of the cluster, e.g. ``"2.60.0"``."""
        return self._run(self._version_call())

    def tail_job_logs(self, job_id: str) -> Iterator[str]:
        """Yield log text as the job writes it, until the job ends (dashboard websocket)."""
        from airflow_provider_raydatallm.hooks._logs_ws import tail_sync

        self.get_job_info(job_id)  # a typed 404 instead of a websocket handshake error
        streamed = ""
        for chunk in tail_sync(self.config, job_id):
            streamed += chunk
            yield chunk
        if rest := _unstreamed(streamed, self.get_job_logs(job_id)):
            yield rest

    def upload_working_dir(self, path: str, *, excludes: tuple[str, ...] = ()) -> str:
        """
        Ship a local directory to the cluster's package store; return its ``gcs://`` URI.

        Use the URI as ``runtime_env={"working_dir": uri}``: the job then runs with the
        directory's files in its cwd. The name is a content hash, so an unchanged directory
        is uploaded once.
        """
        return self._upload(path, zip_directory(path, excludes=excludes))

    def upload_py_module(self, path: str, *, excludes: tuple[str, ...] = ()) -> str:
        """Ship a local package directory for ``runtime_env={"py_modules": [uri]}``."""
        return self._upload(path, zip_directory(path, excludes=excludes, include_parent=True))

    def _upload(self, path: str, data: bytes) -> str:
        uri, package_path = package_uri(data)
        if not self._package_exists(package_path):
            self._run(_Call("PUT", package_path, lambda r: None, content=data, expect_json=False))
            self.log.info("Uploaded %s (%d bytes) to %s as %s", path, len(data), self.address, uri)
        return uri

    def _package_exists(self, package_path: str) -> bool:
        config = self.config
        call = _Call("GET", package_path, lambda r: None, expect_json=False)
        try:
            response = self._client.get(package_path)
        except httpx.TransportError as err:
            raise self._unreachable(call, config, err) from None
        if response.status_code == 404:
            return False
        self._read(call, config, response)
        return True

    def test_connection(self) -> tuple[bool, str]:
        """Check the address answers as a Ray dashboard and accepts the token."""
        try:
            version = self.get_cluster_version()
            self.list_jobs()  # the version endpoint may be open; the jobs endpoint checks the token
        except Exception as err:
            return False, str(err)
        return True, f"Ray {version} at {self.address}"

    # -- async API (triggers) -------------------------------------------------------------

    async def asubmit_job(self, entrypoint: str, **options: Any) -> str:
        """Async twin of :meth:`submit_job` (same keyword options)."""
        return await self._arun(self._submit_call(await self.aconfig(), entrypoint, **options))

    async def aget_job_info(self, job_id: str) -> RayJobInfo:
        return await self._arun(self._info_call(job_id))

    async def aget_job_status(self, job_id: str) -> RayJobStatus:
        return (await self.aget_job_info(job_id)).status

    async def aget_job_logs(self, job_id: str) -> str:
        return await self._arun(self._logs_call(job_id))

    async def astop_job(self, job_id: str) -> bool:
        return await self._arun(self._stop_call(job_id))

    async def adelete_job(self, job_id: str) -> bool:
        return await self._arun(self._delete_call(job_id))

    async def alist_jobs(self) -> list[RayJobInfo]:
        return await self._arun(self._list_call())

    async def aget_pending_demands(self, job_hex_id: str) -> list[Demand]:
        """Async twin of :meth:`get_pending_demands`."""
        actors, groups, nodes = [await self._arun(call) for call in self._demand_calls(job_hex_id)]
        return _state.demands(job_hex_id, actors, groups, nodes)

    async def aget_cluster_version(self) -> str:
        return await self._arun(self._version_call())

    async def aget_serve_state(self) -> ServeState:
        """Async twin of :meth:`get_serve_state`."""
        return await self._arun(self._serve_state_call())

    async def aput_serve_applications(self, body: Mapping[str, Any]) -> None:
        """Async twin of :meth:`put_serve_applications`."""
        await self._arun(self._serve_put_call(body))

    async def atail_job_logs(self, job_id: str) -> AsyncIterator[str]:
        """Async twin of :meth:`tail_job_logs`."""
        from airflow_provider_raydatallm.hooks._logs_ws import tail_async

        await self.aget_job_info(job_id)
        streamed = ""
        async for chunk in tail_async(await self.aconfig(), job_id):
            streamed += chunk
            yield chunk
        if rest := _unstreamed(streamed, await self.aget_job_logs(job_id)):
            yield rest


def _unstreamed(streamed: str, full_log: str) -> str:
    """What the websocket did not deliver: Ray closes it without a word when a job ends
    before its supervisor starts, and may close before the last lines are flushed."""
    if full_log.startswith(streamed):
        return full_log[len(streamed) :]
    return "" if streamed else full_log
