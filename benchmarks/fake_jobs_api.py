"""A local HTTP server that speaks the Ray Jobs API for many fake jobs (for benchmarks/trigger_scale.py).

``GET /api/jobs/{id}`` (RUNNING until the job's end, then SUCCEEDED), ``GET /api/jobs/{id}/logs``
and the websocket ``/api/jobs/{id}/logs/tail`` (a line a second, closed at the end), as the
dashboard answers them. A job ``fake-<seconds>-<n>`` ends ``<seconds>`` after it is first asked about.

``python benchmarks/fake_jobs_api.py PORT``
"""

from __future__ import annotations

import asyncio
import sys
import time

from aiohttp import WSMsgType, web

STARTED: dict[str, float] = {}
LISTED = [0]  # GET /api/jobs/ requests served
INFO = [0]  # GET /api/jobs/{id} requests served


def _job(request: web.Request) -> tuple[str, float, float]:
    job_id = request.match_info["job_id"]
    start = STARTED.setdefault(job_id, time.monotonic())
    duration = float(job_id.split("-")[1])
    return job_id, start, duration


def _log(start: float, upto: float) -> str:
    return "".join(f"fake job line {k}\n" for k in range(int(max(0.0, upto - start)) + 1))


def _body(job_id: str, start: float, duration: float) -> dict:
    done = time.monotonic() - start >= duration
    return {
        "type": "SUBMISSION", "job_id": None, "submission_id": job_id, "entrypoint": "python fake.py",
        "status": "SUCCEEDED" if done else "RUNNING", "message": "done" if done else "running", "metadata": {},
    }  # fmt: skip


async def info(request: web.Request) -> web.Response:
    INFO[0] += 1
    job_id, start, duration = _job(request)
    return web.json_response(_body(job_id, start, duration))


async def jobs(request: web.Request) -> web.Response:
    """Every job asked about so far (as Ray lists every job it knows), counted."""
    LISTED[0] += 1
    return web.json_response([_body(j, s, float(j.split("-")[1])) for j, s in list(STARTED.items())])


async def listed(request: web.Request) -> web.Response:
    return web.json_response({"list_requests": LISTED[0], "info_requests": INFO[0]})


async def logs(request: web.Request) -> web.Response:
    _, start, duration = _job(request)
    return web.json_response({"logs": _log(start, min(time.monotonic(), start + duration))})


async def tail(request: web.Request) -> web.WebSocketResponse:
    _, start, duration = _job(request)
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    sent = 0
    while True:
        now = time.monotonic()
        text = _log(start, min(now, start + duration))
        if len(text) > sent:
            await ws.send_str(text[sent:])
            sent = len(text)
        if now - start >= duration:
            break
        await asyncio.sleep(1.0)
    await ws.close()
    return ws


def main() -> None:
    app = web.Application()
    app.router.add_get("/api/jobs/", jobs)
    app.router.add_get("/fake/listed", listed)
    app.router.add_get("/api/jobs/{job_id}", info)
    app.router.add_get("/api/jobs/{job_id}/logs", logs)
    app.router.add_get("/api/jobs/{job_id}/logs/tail", tail)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, backlog=2048)


if __name__ == "__main__":
    main()
