"""The ``ray`` connection form, declared as Airflow 3.2+ reads it from provider info."""

from __future__ import annotations

CONN_FIELDS = {
    "verify": {
        "label": "Verify TLS",
        "schema": {"type": ["boolean", "string", "null"], "default": True},
        "description": "true (default), false, or the path of a CA bundle for an https dashboard.",
    },
    "headers": {
        "label": "Extra headers (JSON)",
        "schema": {"type": ["object", "null"]},
        "description": 'Sent with every request, e.g. {"X-Proxy-Auth": "..."} for a proxy in front of Ray.',
    },
    "timeout": {
        "label": "Request timeout (s)",
        "schema": {"type": ["number", "null"], "default": 30},
    },
    "external_url": {
        "label": "Dashboard URL for people",
        "schema": {"type": ["string", "null"]},
        "description": "Where a browser reaches the Ray dashboard (e.g. behind an ingress); "
        "the Ray Job link uses it. Default: the address above.",
    },
    "runtime_env": {
        "label": "Default runtime_env (JSON)",
        "schema": {"type": ["object", "null"]},
        "description": "Merged under each job's own runtime_env (env_vars key by key).",
    },
    "metadata": {
        "label": "Default job metadata (JSON)",
        "schema": {"type": ["object", "null"]},
        "description": "String key/values attached to every submitted job.",
    },
    "namespace": {
        "label": "Airflow deployment namespace",
        "schema": {"type": ["string", "null"]},
        "description": "Names this Airflow deployment's jobs on a Ray cluster that others share "
        "(e.g. staging, prod): it reattaches to and stops only jobs of its own namespace. "
        "Default: [raydatallm] namespace, else a hash of the metadata database address.",
    },
}

UI_FIELD_BEHAVIOUR = {
    "hidden-fields": ["login"],
    "relabeling": {
        "host": "Dashboard host or URL",
        "port": "Dashboard port",
        "schema": "Scheme (http or https)",
        "password": "Ray auth token",
    },
    "placeholders": {
        "host": "127.0.0.1 or https://ray.example.com",
        "port": "8265",
        "schema": "http",
        "password": "output of `ray get-auth-token`",
    },
}
