"""A fast local stand-in for an LLM endpoint (runs in the cluster environment, ``.venv-ray``).

OpenAI-compatible ``POST /v1/chat/completions`` over real HTTP (aiohttp): it answers at
once with one of the seed's industry choices, picked from the user message's hash, with
``usage`` token counts. It measures the pipeline around the engine, not a model.

``python benchmarks/standin_server.py PORT``
"""

from __future__ import annotations

import json
import sys
import zlib

from aiohttp import web

CHOICES = ["Law Firm", "Healthcare", "Technology", "Retail", "Consulting", "Manufacturing", "Finance",
           "Real Estate", "Other"]  # fmt: skip
BODIES = [
    json.dumps({
        "id": "chatcmpl-standin", "object": "chat.completion", "model": "standin",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": c}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 48, "completion_tokens": 2, "total_tokens": 50},
    }).encode()
    for c in CHOICES
]  # fmt: skip
served = 0


async def chat(request: web.Request) -> web.Response:
    global served
    body = await request.read()
    served += 1
    return web.Response(body=BODIES[zlib.crc32(body) % len(BODIES)], content_type="application/json")


async def count(_: web.Request) -> web.Response:
    return web.json_response({"served": served})


def main() -> None:
    app = web.Application(client_max_size=1 << 20)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/served", count)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
