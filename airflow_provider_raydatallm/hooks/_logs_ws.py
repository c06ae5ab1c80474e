"""Follow a job's log through the dashboard's websocket (``/api/jobs/{id}/logs/tail``).

The dashboard sends log text as messages and closes the socket when the job ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

from airflow_provider_raydatallm.exceptions import RayClusterUnreachableError
from airflow_provider_raydatallm.hooks._connection import CONNECT_TIMEOUT, USER_AGENT, RayConnectionConfig
from airflow_provider_raydatallm.hooks._jobs_api import job_path, redact

CLOSE_TIMEOUT = 0.5


def _ws_url(config: RayConnectionConfig, job_id: str) -> str:
    scheme = "wss" if config.base_url.startswith("https://") else "ws"
    return f"{scheme}://{config.base_url.split('://', 1)[1]}{job_path(job_id, '/logs/tail')}"


def _headers(config: RayConnectionConfig) -> dict[str, str]:
    headers = config.request_headers()
    headers.pop("User-Agent", None)
    return headers


def _as_text(message: str | bytes) -> str:
    return message if isinstance(message, str) else message.decode("utf-8", errors="replace")


def tail_sync(config: RayConnectionConfig, job_id: str) -> Iterator[str]:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    try:
        socket = connect(
            _ws_url(config, job_id),
            additional_headers=_headers(config),
            user_agent_header=USER_AGENT,
            ssl=config.ssl_context(),
            open_timeout=CONNECT_TIMEOUT,
            max_size=None,
            compression=None,
            # The dashboard proxy does not answer pings: keepalive would kill a quiet tail.
            ping_interval=None,
            # Closing early (the job ended) need not wait for the dashboard's next tail turn.
            close_timeout=CLOSE_TIMEOUT,
        )
    except OSError as err:
        raise RayClusterUnreachableError(config.base_url, redact(str(err), config.secrets())) from None
    with socket:
        try:
            for message in socket:
                yield _as_text(message)
        except ConnectionClosed:
            return


async def tail_async(
    config: RayConnectionConfig, job_id: str, gate: AbstractAsyncContextManager[Any] | None = None
) -> AsyncIterator[str]:
    """The job's log as it grows, from its start; ``gate`` is held while the stream opens
    (a triggerer opening hundreds at once opens them a few at a time)."""
    import asyncio

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    ssl_context = await asyncio.to_thread(config.ssl_context)  # reads CA files: off the loop
    try:
        async with gate if gate is not None else contextlib.nullcontext():
            socket = await connect(
                _ws_url(config, job_id),
                additional_headers=_headers(config),
                user_agent_header=USER_AGENT,
                ssl=ssl_context,
                open_timeout=CONNECT_TIMEOUT,
                max_size=None,
                compression=None,
                # The dashboard proxy does not answer pings: keepalive would kill a quiet tail.
                ping_interval=None,
                # Closing early (the job ended) need not wait for the dashboard's next tail turn.
                close_timeout=CLOSE_TIMEOUT,
            )
    except OSError as err:
        raise RayClusterUnreachableError(config.base_url, redact(str(err), config.secrets())) from None
    try:
        async for message in socket:
            yield _as_text(message)
    except ConnectionClosed:
        return
    finally:
        await socket.close()
