"""A small OpenAI-compatible chat endpoint on 127.0.0.1 for the lifecycle and S3 tests: it answers
at once with the request's last user message, and refuses requests without its API key.

The drills are about what Airflow and Ray do to a job, not about the model: a real HTTP
endpoint through Ray's own HttpRequestProcessorConfig keeps each job to Ray Data's start-up
time instead of a vLLM engine's.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The last user message of every authorized request, in arrival order (a drill counts
# which rows a try sent to the endpoint).
SEEN: list[str] = []


def start(api_key: str) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if self.headers.get("Authorization") != f"Bearer {api_key}":
                self._send(401, {"error": {"message": "missing or wrong API key"}})
                return
            user = [m["content"] for m in body.get("messages", []) if m.get("role") == "user"]
            SEEN.append(user[-1] if user else "")
            text = f"echo: {user[-1] if user else ''}"
            self._send(200, {
                "id": "chatcmpl-echo", "object": "chat.completion", "model": body.get("model", "echo"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": len(json.dumps(body)) // 4, "completion_tokens": len(text.split()),
                          "total_tokens": 0},
            })  # fmt: skip

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
