"""Which Airflow deployment a Ray job belongs to.

Two Airflow deployments (staging and production) may share one Ray cluster and run the same
DAG with the same run id (``scheduled__2026-11-30T00:00:00+00:00``). Submission ids and job
metadata carry a namespace, so that each deployment reattaches to, adopts and stops only its
own jobs. The first of these that is set names it:

1. the ``ray`` connection's extra ``namespace``;
2. the Airflow option ``[raydatallm] namespace`` (``AIRFLOW__RAYDATALLM__NAMESPACE``);
3. a short hash of an address every worker of one deployment shares and two deployments do
   not: the metadata database (``[database] sql_alchemy_conn`` without its password, so a
   rotated password keeps the namespace) when it is configured; else the Execution API
   (``[core] execution_api_server_url``, which remote workers must set), or ``[api]
   base_url``; else the default database, a SQLite file under ``AIRFLOW_HOME``.

Two deployments whose databases have the same address (the same Helm release name in two
Kubernetes namespaces, say) get the same default: give them a namespace each.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from airflow_provider_raydatallm.exceptions import RayLLMConfigError

PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
CONFIG_SECTION, CONFIG_KEY = "raydatallm", "namespace"


def is_valid(name: str) -> bool:
    """1 to 63 letters, digits, ``_``, ``.`` or ``-``, starting with a letter or digit."""
    return bool(PATTERN.fullmatch(name))


def resolve(from_connection: str | None = None) -> str:
    """This deployment's namespace (see the module docstring).

    :param from_connection: the ``ray`` connection's extra ``namespace`` ("" or None: unset),
        already checked by the connection's parser.
    """
    if from_connection:
        return from_connection
    from airflow.sdk import conf  # the Airflow side only; never imported on the cluster

    configured = (conf.get(CONFIG_SECTION, CONFIG_KEY, fallback="") or "").strip()
    if configured:
        if not is_valid(configured):
            raise RayLLMConfigError(
                f"[{CONFIG_SECTION}] {CONFIG_KEY}={configured!r}: use 1 to 63 letters, digits, '_', '.' or '-'"
            )
        return configured
    return "af-" + hashlib.sha256(f"raydatallm\0{deployment_address(conf)}".encode()).hexdigest()[:10]


def deployment_address(conf: Any) -> str:
    """What the default namespace hashes: an address shared by one deployment's workers."""
    database = conf.get("database", "sql_alchemy_conn", fallback="") or ""
    default_database = _default(conf, "database", "sql_alchemy_conn")
    if database and database != default_database:
        return "database " + without_password(database)
    for section, key in (("core", "execution_api_server_url"), ("api", "base_url")):
        value = conf.get(section, key, fallback="") or ""
        if value:
            return f"{section}.{key} {value}"
    return "database " + without_password(database)


def without_password(url: str) -> str:
    """``postgresql://user:secret@db:5432/airflow`` -> ``postgresql://user@db:5432/airflow``."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, location = rest.rpartition("@")
    return f"{scheme}://{credentials.split(':', 1)[0]}@{location}"


def _default(conf: Any, section: str, key: str) -> str | None:
    try:
        return conf.get_default_value(section, key)
    except Exception:  # an older config parser without defaults: treat the value as set
        return None
