"""A real HTTP(S) server on 127.0.0.1 with canned answers, for the hook's error paths.

It answers what a test sets per (method, path) and records every request it saw, so a test
can check both sides: what the hook sent (headers, body) and how it read the answer.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class CannedServer:
    routes: dict[tuple[str, str], list[tuple[int, str, str]]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    address: str = ""
    delays: dict[tuple[str, str], float | list[float]] = field(default_factory=dict)  # seconds before answering

    def answer(self, method: str, path: str, status: int, body: object, content_type: str = "application/json"):
        """Answer this from now on (replacing earlier answers for the route)."""
        self.routes[(method, path)] = []
        self.then(method, path, status, body, content_type)

    def then(self, method: str, path: str, status: int, body: object, content_type: str = "application/json"):
        """Queue a further answer: each answer is given once, the last one from then on."""
        text = body if isinstance(body, str) else json.dumps(body)
        self.routes.setdefault((method, path), []).append((status, text, content_type))


def _handler(server: CannedServer):
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            server.seen.append(Seen(self.command, self.path, dict(self.headers.items()), body))
            queue = server.routes.get((self.command, self.path)) or [
                (404, f"{self.command} {self.path}: no route", "text/plain")
            ]
            status, text, content_type = queue.pop(0) if len(queue) > 1 else queue[0]
            delay = server.delays.get((self.command, self.path))
            if isinstance(delay, list):  # one delay per request, the last one from then on
                delay = delay.pop(0) if len(delay) > 1 else delay[0]
            if delay:
                time.sleep(delay)
            payload = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

    return Handler


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A cert for 127.0.0.1 and its key, written as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def start(tls: tuple[Path, Path] | None = None) -> tuple[CannedServer, ThreadingHTTPServer]:
    canned = CannedServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(canned))
    scheme = "http"
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*tls)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        scheme = "https"
    canned.address = f"{scheme}://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return canned, httpd
