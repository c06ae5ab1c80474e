"""Turns an Airflow ``ray`` connection into the settings the Jobs API client needs.

Connection shape (all optional; an empty connection means the local head on
``http://127.0.0.1:8265`` with no token):

- host: ``127.0.0.1``, ``ray-head.svc`` or a full URL ``https://ray.example.com/proxy``
- port: the dashboard port (default 8265; omitted when host is a URL with a port)
- schema: ``http`` or ``https`` (default ``http``; a URL host's own scheme wins)
- password: the cluster's token (``ray get-auth-token``), sent as ``Authorization: Bearer``
- extra (JSON): ``headers`` (object), ``verify`` (bool or CA bundle path, default true),
  ``timeout`` (seconds, default 30), ``runtime_env`` and ``metadata`` (objects merged under
  every submitted job's own), ``serve`` (``{"http_options": {...}, "proxy_location": ...}``:
  how a Serve deploy starts Serve on this cluster when it is not running yet), ``namespace``
  (this Airflow deployment's name on a cluster shared with others: ``namespace.py``).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_raydatallm import __version__
from airflow_provider_raydatallm import namespace as deployment
from airflow_provider_raydatallm.exceptions import RayConnectionConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8265
DEFAULT_TIMEOUT = 30.0
# Connect errors should surface quickly: an unreachable cluster is a config error, not load.
CONNECT_TIMEOUT = 5.0
# The dashboard refuses POST/PUT from a User-Agent starting with "Mozilla" (CSRF guard).
USER_AGENT = f"airflow-provider-raydatallm/{__version__}"
EXTRA_KEYS = ("headers", "verify", "timeout", "runtime_env", "metadata", "serve", "namespace")


@dataclass(frozen=True)
class RayConnectionConfig:
    """Resolved settings of one ``ray`` connection. ``repr`` hides the token and headers."""

    base_url: str
    token: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    verify: bool | str = True
    timeout: float = DEFAULT_TIMEOUT
    runtime_env: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    serve: Mapping[str, Any] = field(default_factory=dict)
    # Where a person's browser reaches the dashboard (an ingress), when not at base_url.
    external_url: str = ""
    # This Airflow deployment's jobs on the cluster ("": the default, namespace.resolve).
    namespace: str = ""

    @property
    def link_base_url(self) -> str:
        """The dashboard address for links people click."""
        return self.external_url or self.base_url

    def request_headers(self) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        headers.update(self.headers)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def client_kwargs(self, max_timeout: float | None = None) -> dict[str, Any]:
        """Arguments of an ``httpx`` client for the dashboard: address, auth headers, TLS,
        timeouts (``max_timeout`` caps the connection's for callers that must answer fast)."""
        import httpx

        timeout = min(self.timeout, max_timeout) if max_timeout else self.timeout
        return {
            "base_url": self.base_url,
            "headers": self.request_headers(),
            "verify": self.ssl_context() or True,
            "timeout": httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout)),
            "follow_redirects": True,
        }

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS settings for an https dashboard; None for plain http."""
        if not self.base_url.startswith("https://"):
            return None
        if self.verify is False:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        return ssl.create_default_context(cafile=self.verify if isinstance(self.verify, str) else None)

    def secrets(self) -> list[str]:
        """Values that must never appear in a log line or an error message."""
        values = [self.token or ""]
        values += [v for k, v in self.headers.items() if k.lower() not in {"accept", "content-type"}]
        return [v for v in values if v and len(v) >= 4]


def _extra_value(extra: Mapping[str, Any], key: str) -> Any:
    # The UI may store form fields prefixed with the conn type (older Airflow versions).
    if key in extra:
        return extra[key]
    return extra.get(f"extra__ray__{key}")


def _json_object(value: Any, name: str) -> dict[str, Any]:
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise RayConnectionConfigError(f"ray connection extra '{name}' is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise RayConnectionConfigError(
            f"ray connection extra '{name}' must be a JSON object, got {type(value).__name__}"
        )
    return value


def _verify(value: Any) -> bool | str:
    if value is None or value == "":
        return True
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "false", "1", "0", "yes", "no"}:
        return value.strip().lower() in {"true", "1", "yes"}
    if isinstance(value, str):
        return value  # a CA bundle path
    raise RayConnectionConfigError(f"ray connection extra 'verify' must be a bool or a CA path, got {value!r}")


def _base_url(host: str | None, port: int | None, schema: str | None) -> str:
    host = (host or "").strip() or DEFAULT_HOST
    scheme = (schema or "").strip().lower() or "http"
    if "://" in host:
        parts = urlsplit(host)
        scheme, netloc, path = parts.scheme.lower(), parts.netloc, parts.path.rstrip("/")
        if port and parts.port is None:
            netloc = f"{netloc}:{port}"
    else:
        netloc, path = f"{host}:{port or DEFAULT_PORT}", ""
    if scheme not in {"http", "https"}:
        raise RayConnectionConfigError(
            f"ray connection scheme must be http or https, got {scheme!r} (set it in the schema field)"
        )
    return f"{scheme}://{netloc}{path}"


def config_from_connection(
    host: str | None,
    port: int | None,
    schema: str | None,
    password: str | None,
    extra: Mapping[str, Any] | None,
) -> RayConnectionConfig:
    """Build the client settings from a connection's fields (see the module docstring)."""
    extra = extra or {}
    headers = {str(k): str(v) for k, v in _json_object(_extra_value(extra, "headers"), "headers").items()}
    timeout_raw = _extra_value(extra, "timeout")
    try:
        timeout = float(timeout_raw) if timeout_raw not in (None, "") else DEFAULT_TIMEOUT
    except (TypeError, ValueError):
        raise RayConnectionConfigError(f"ray connection extra 'timeout' must be a number, got {timeout_raw!r}")
    metadata = _json_object(_extra_value(extra, "metadata"), "metadata")
    external = str(_extra_value(extra, "external_url") or "").strip().rstrip("/")
    if external and urlsplit(external).scheme not in {"http", "https"}:
        raise RayConnectionConfigError(f"ray connection extra 'external_url' must be an http(s) URL, got {external!r}")
    namespace = str(_extra_value(extra, "namespace") or "").strip()
    if namespace and not deployment.is_valid(namespace):
        raise RayConnectionConfigError(
            f"ray connection extra 'namespace' must be 1 to 63 letters, digits, '_', '.' or '-', got {namespace!r}"
        )
    return RayConnectionConfig(
        base_url=_base_url(host, port, schema),
        token=password or None,
        headers=headers,
        verify=_verify(_extra_value(extra, "verify")),
        timeout=timeout,
        runtime_env=_json_object(_extra_value(extra, "runtime_env"), "runtime_env"),
        metadata={str(k): str(v) for k, v in metadata.items()},
        serve=_json_object(_extra_value(extra, "serve"), "serve"),
        external_url=external,
        namespace=namespace,
    )
