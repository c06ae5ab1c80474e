"""Ray Serve's REST API (the dashboard's ``/api/serve/applications/``), as pure functions.

Serve's REST API is declarative and cluster-wide: ``PUT`` replaces the whole set of
applications (an app left out is deleted) and ``GET`` describes every app with the config
it was deployed from. So adding, updating or removing one application is read -> edit ->
write of the whole set, keeping every other app's config as it was deployed. An app this
provider deployed carries two environment variables in its ``runtime_env`` (who deployed
it, and a hash of its config): the provider updates or removes only apps that carry them,
and a second deploy of the same config is recognised by the hash and changes nothing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

APPLICATIONS_PATH = "/api/serve/applications/"
OPENAI_APP_IMPORT_PATH = "ray.serve.llm:build_openai_app"
OWNER_ENV = "RAYDLLM_DEPLOYED_BY"
OWNER = "airflow-provider-raydatallm"
HASH_ENV = "RAYDLLM_APP_HASH"
# The LLMConfig fields of Ray 2.60 (ray.serve.llm.LLMConfig); anything else is a typo.
LLM_CONFIG_FIELDS = frozenset({
    "runtime_env", "model_loading_config", "llm_engine", "engine_kwargs", "accelerator_type",
    "accelerator_config", "placement_group_config", "lora_config", "deployment_config", "server_cls",
    "experimental_configs", "log_engine_metrics", "callback_config",
})  # fmt: skip
APP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# Application statuses (ray.serve.schema.ApplicationStatus).
FAILED_STATUSES = frozenset({"DEPLOY_FAILED", "UNHEALTHY"})
# A deployment whose replicas cannot be placed says so in its message, e.g. "Deployment X has
# 1 replicas that have taken more than 30s to be scheduled. ... Resources required for each
# replica: {...}, total resources available: {...}".
UNSCHEDULED = re.compile(r"taken more than \d+s to be scheduled", re.I)


class ServeConfigError(ValueError):
    """An LLM app config that cannot be deployed (said before anything is sent)."""


def llm_server_name(llm_config: Mapping[str, Any]) -> str:
    """The LLMServer deployment's name for one LLMConfig, as Ray Serve LLM 2.60 derives it."""
    named = (llm_config.get("deployment_config") or {}).get("name")
    model_id = str((llm_config.get("model_loading_config") or {}).get("model_id", ""))
    return "LLMServer:" + (named or model_id.replace("/", "--").replace(".", "_"))


def check_llm_configs(llm_configs: list[Mapping[str, Any]]) -> None:
    """What Ray would refuse after the PUT (or never say): unknown fields, missing or
    duplicate model ids, values that are not JSON."""
    if not llm_configs:
        raise ServeConfigError("llm_configs is empty: give at least one LLMConfig (a dict of its fields)")
    seen: set[str] = set()
    for index, config in enumerate(llm_configs):
        where = f"llm_configs[{index}]"
        if not isinstance(config, Mapping):
            raise ServeConfigError(f"{where} must be a dict of LLMConfig fields, got {type(config).__name__}")
        unknown = sorted(set(config) - LLM_CONFIG_FIELDS)
        if unknown:
            raise ServeConfigError(
                f"{where}: LLMConfig has no field {', '.join(map(repr, unknown))} (known: {', '.join(sorted(LLM_CONFIG_FIELDS))})"
            )
        loading = config.get("model_loading_config")
        model_id = loading.get("model_id") if isinstance(loading, Mapping) else None
        if not isinstance(model_id, str) or not model_id.strip():
            raise ServeConfigError(f"{where}.model_loading_config.model_id must be a non-empty string (the name clients ask for)")
        if model_id in seen:
            raise ServeConfigError(f"{where}: model_id {model_id!r} appears twice; model ids in one app must be unique")
        seen.add(model_id)
        try:
            json.dumps(config)
        except (TypeError, ValueError) as err:
            raise ServeConfigError(f"{where} is not JSON-serializable ({err}); pass plain values") from None


def app_config(
    name: str, route_prefix: str, llm_configs: list[Mapping[str, Any]], runtime_env: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The Serve application config of an OpenAI-compatible LLM app (``build_openai_app``),
    marked as this provider's with a hash of everything that defines it."""
    body = {
        "name": name,
        "route_prefix": route_prefix,
        "import_path": OPENAI_APP_IMPORT_PATH,
        "args": {"llm_configs": [copy.deepcopy(dict(c)) for c in llm_configs]},
        "runtime_env": copy.deepcopy(dict(runtime_env or {})),
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    env = dict(body["runtime_env"].get("env_vars") or {})
    env.update({OWNER_ENV: OWNER, HASH_ENV: digest})
    body["runtime_env"]["env_vars"] = env
    return body


def config_hash(config: Mapping[str, Any] | None) -> str | None:
    return (((config or {}).get("runtime_env") or {}).get("env_vars") or {}).get(HASH_ENV)


def is_ours(config: Mapping[str, Any] | None) -> bool:
    return (((config or {}).get("runtime_env") or {}).get("env_vars") or {}).get(OWNER_ENV) == OWNER


@dataclass(frozen=True)
class Deployment:
    name: str
    status: str
    message: str = ""
    replicas: int = 0


@dataclass(frozen=True)
class ServeApp:
    """One application as ``GET /api/serve/applications/`` describes it."""

    name: str
    status: str
    message: str = ""
    route_prefix: str | None = None
    source: str = ""
    ingress: str | None = None
    deployments: dict[str, Deployment] = field(default_factory=dict)
    config: dict[str, Any] | None = None  # the deployed_app_config

    @property
    def ours(self) -> bool:
        return is_ours(self.config)

    def unscheduled(self) -> str:
        """The message of a deployment whose replicas wait for resources no node has, or ""."""
        for dep in self.deployments.values():
            if UNSCHEDULED.search(dep.message or ""):
                return f"{dep.name}: {dep.message}"
        return ""

    def progress(self) -> str:
        parts = [f"{d.name} {d.status} ({d.replicas} running)" for d in self.deployments.values()]
        return f"{self.name} {self.status}" + (f": {', '.join(parts)}" if parts else "")


@dataclass(frozen=True)
class ServeState:
    """The cluster's Serve instance: running or not, its HTTP options, its applications."""

    running: bool
    http_options: dict[str, Any]
    proxy_location: str | None
    proxy_ips: list[str]
    apps: dict[str, ServeApp]

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> ServeState:
        apps = {}
        for name, app in (data.get("applications") or {}).items():
            deployments = {
                dep_name: Deployment(
                    dep_name, str(dep.get("status") or ""), str(dep.get("message") or ""),
                    sum(1 for r in dep.get("replicas") or [] if r.get("state") == "RUNNING"),
                )  # fmt: skip
                for dep_name, dep in (app.get("deployments") or {}).items()
            }
            topology = app.get("deployment_topology") or {}
            apps[name] = ServeApp(
                name=name, status=str(app.get("status") or ""), message=str(app.get("message") or ""),
                route_prefix=app.get("route_prefix"), source=str(app.get("source") or ""),
                ingress=topology.get("ingress_deployment"), deployments=deployments,
                config=app.get("deployed_app_config"),
            )  # fmt: skip
        proxies = data.get("proxies") or {}
        return cls(
            running=bool(data.get("controller_info", {}).get("actor_id")),
            http_options=dict(data.get("http_options") or {}),
            proxy_location=data.get("proxy_location"),
            proxy_ips=sorted({p.get("node_ip") for p in proxies.values() if p.get("node_ip")}),
            apps=apps,
        )


def put_body(
    state: ServeState,
    put: Mapping[str, Any] | None = None,
    remove: str | None = None,
    http_options: Mapping[str, Any] | None = None,
    proxy_location: str | None = None,
) -> dict[str, Any]:
    """The whole declarative config to PUT: every declarative app as it was deployed, with
    ``put`` added or replacing its namesake and ``remove`` left out. A running Serve keeps
    its HTTP options and proxy location (Serve ignores changes to them until restarted);
    a Serve this PUT starts takes the ones given."""
    apps = []
    for name, app in state.apps.items():
        if name in {remove, (put or {}).get("name")} or app.config is None:
            continue
        apps.append(app.config)
    if put is not None:
        apps.append(dict(put))
    body: dict[str, Any] = {"applications": apps}
    if state.running:
        kept = {k: state.http_options[k] for k in ("host", "port", "root_path", "request_timeout_s", "keep_alive_timeout_s")
                if state.http_options.get(k) is not None}  # fmt: skip
        body["http_options"] = kept
        if state.proxy_location:
            body["proxy_location"] = state.proxy_location
    else:
        if http_options:
            body["http_options"] = dict(http_options)
        if proxy_location:
            body["proxy_location"] = proxy_location
    return body


def imperative_apps(state: ServeState) -> list[str]:
    """Apps deployed with ``serve.run`` (Python): a declarative PUT would fail or remove them."""
    return sorted(name for name, app in state.apps.items() if app.source == "imperative")


def base_url(state: ServeState, route_prefix: str) -> str:
    """The app's OpenAI base URL as seen from inside the cluster: every node's proxy on
    loopback (``EveryNode``, Serve's default), else the head's proxy."""
    port = state.http_options.get("port") or 8000
    host = state.http_options.get("host") or "127.0.0.1"
    if state.proxy_location in (None, "EveryNode") or host in ("127.0.0.1", "localhost") or not state.proxy_ips:
        where = "127.0.0.1"
    else:
        where = state.proxy_ips[0]
    return f"http://{where}:{port}{route_prefix.rstrip('/')}/v1"
