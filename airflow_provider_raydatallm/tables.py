"""Table outputs for ``RayLLMBatchOperator(output_table=...)``: an Iceberg table in a catalog
or a Delta table at a path. Each run commits its rows in one transaction that replaces
only its slice of the table (``partition``: column -> value, e.g. the run's day and the
task's map index), so a clear or a retry replaces that slice again and never duplicates it.

Airflow side only: no pyiceberg or deltalake here (the cluster does the writing). Catalog
properties and storage credentials come from Airflow connections and travel to the job as
shipped secrets, never in the job spec, its metadata, runtime_env, XCom or the logs.

    IcebergTable("analytics.post_sentiment", conn_id="iceberg_default",
                 partition={"day": "{{ run_day(dag_run) }}"})
    DeltaTable("s3://lake/tickets", partition={"day": "{{ ds }}"}, conn_id="aws_default")
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from airflow_provider_raydatallm.exceptions import RayLLMConfigError
from airflow_provider_raydatallm.job.spec import SecretRef, TableSpec


def _without_userinfo(uri: str) -> str:
    parts = urlsplit(uri)
    if not parts.netloc or "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


@dataclass
class IcebergTable:
    """An Iceberg table, ``"namespace.table"``, in the catalog of Airflow connection ``conn_id``.

    The connection is Airflow's ``iceberg`` type (apache-airflow-providers-apache-iceberg):
    host = the REST catalog's URI, login/password = its OAuth2 client id and secret, extra =
    pyiceberg catalog properties. Any pyiceberg catalog works through the extra alone, e.g.
    a SQL catalog: ``{"type": "sql", "uri": "sqlite:////data/catalog.db", "warehouse":
    "file:///data/warehouse"}`` (the extra's ``name`` is the catalog's name).

    :param table: ``namespace.table``; created on the first run, partitioned by ``partition``'s
        columns (identity transforms). Templated.
    :param conn_id: the catalog's connection (default ``iceberg_default``).
    :param catalog_properties: instead of a connection, the pyiceberg catalog properties
        themselves (templated), for catalogs without credentials such as a SQL catalog on a
        local SQLite file: ``{"type": "sql", "uri": "sqlite:///...", "warehouse": "file:///..."}``.
        They are part of the DAG and its rendered fields (shown in the UI): put no secret
        here, use ``conn_id`` for a catalog with credentials.
    :param partition: the run's slice: column -> value (text), templated, e.g.
        ``{"day": "{{ ds }}"}``; every row gets these values and the commit replaces exactly
        the rows that have them. Empty: each run replaces the whole table.
    :param columns: optional declared column types (Arrow names: ``{"label": "string",
        "score": "double"}``): checked against an existing table before inference; rows are
        cast to them.
    """

    table: str
    conn_id: str | None = None
    partition: dict[str, str] = field(default_factory=dict)
    columns: dict[str, str] | None = None
    catalog_properties: dict[str, str] | None = None
    template_fields: ClassVar[tuple[str, ...]] = ("table", "partition", "conn_id", "catalog_properties")
    format: ClassVar[str] = "iceberg"

    def properties(self, task_id: str = "?") -> tuple[str, dict[str, str]]:
        """(catalog name, pyiceberg catalog properties) from the connection or as given."""
        if self.catalog_properties is not None:
            if self.conn_id:
                raise RayLLMConfigError(f"task {task_id}: IcebergTable: give conn_id or catalog_properties, not both")
            props = {str(k): str(v) for k, v in self.catalog_properties.items()}
            return props.pop("name", None) or "default", props
        conn_id = self.conn_id or "iceberg_default"
        from airflow.sdk import BaseHook

        try:
            conn = BaseHook.get_connection(conn_id)
        except Exception as err:  # noqa: BLE001 (Airflow's own "not defined" error, named)
            raise RayLLMConfigError(f"task {task_id}: output_table: Iceberg connection {conn_id!r}: {err}") from None
        props = {str(k): (v if isinstance(v, str) else json.dumps(v)) for k, v in (conn.extra_dejson or {}).items()}
        name = props.pop("name", None) or conn_id
        if conn.host:
            host = conn.host if "://" in conn.host else f"https://{conn.host}"
            props.setdefault("uri", f"{host.rstrip('/')}:{conn.port}" if conn.port else host)
            props.setdefault("type", "rest")
        if conn.login and conn.password:
            props.setdefault("credential", f"{conn.login}:{conn.password}")
        elif conn.password:
            props.setdefault("token", conn.password)
        if not props.get("uri") and props.get("type") not in ("in-memory",):
            raise RayLLMConfigError(
                f"task {task_id}: output_table: connection {conn_id!r} names no catalog: set its host (a REST "
                "catalog) or its extra's 'type' and 'uri' (e.g. {\"type\": \"sql\", \"uri\": \"sqlite:////data/cat.db\", "
                "\"warehouse\": \"file:///data/warehouse\"})"
            )
        return name, props

    def to_spec(self, task_id: str) -> tuple[TableSpec, dict[str, str]]:
        """The job spec's table and the secrets to ship (the catalog's properties)."""
        name, props = self.properties(task_id)
        key = f"iceberg_catalog_{name}"
        label = f"{props.get('type', 'catalog')} catalog {name} @ {_without_userinfo(props.get('uri', ''))}"
        spec = TableSpec(
            format="iceberg", identifier=self.table, partition=self.partition, columns=self.columns,
            catalog_name=name, catalog=SecretRef(source="shipped", name=key), label=label,
            catalog_uri=_without_userinfo(props.get("uri", "")),
        )  # fmt: skip
        return spec, {key: json.dumps(props)}


@dataclass
class DeltaTable:
    """A Delta Lake table at ``uri`` (local path, ``s3://``, ``gs://``, ``abfss://``).

    :param uri: the table's root; created on the first run, partitioned by ``partition``'s
        columns. Templated.
    :param partition: the run's slice, as for ``IcebergTable``.
    :param storage_options: delta-rs storage options that are not secret (e.g.
        ``{"AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://minio:9000"}``); without any,
        delta-rs reads the Ray nodes' environment (``AWS_*``) as usual.
    :param conn_id: optional connection with the store's credentials, shipped as secrets: an
        ``aws`` connection (login/password = access key id/secret; extra ``region_name``,
        ``endpoint_url``) or any connection whose extra ``storage_options`` is a dict.
    :param columns: optional declared column types, as for ``IcebergTable``.
    """

    uri: str
    partition: dict[str, str] = field(default_factory=dict)
    storage_options: dict[str, str] | None = None
    conn_id: str | None = None
    columns: dict[str, str] | None = None
    template_fields: ClassVar[tuple[str, ...]] = ("uri", "partition", "conn_id", "storage_options")
    format: ClassVar[str] = "delta"

    def to_spec(self, task_id: str) -> tuple[TableSpec, dict[str, str]]:
        shipped: dict[str, str] = {}
        ref = None
        if self.conn_id:
            from airflow.sdk import BaseHook

            try:
                conn = BaseHook.get_connection(self.conn_id)
            except Exception as err:  # noqa: BLE001
                raise RayLLMConfigError(f"task {task_id}: output_table: connection {self.conn_id!r}: {err}") from None
            extra = conn.extra_dejson or {}
            options = {str(k): str(v) for k, v in (extra.get("storage_options") or {}).items()}
            if conn.login:
                options.setdefault("AWS_ACCESS_KEY_ID", conn.login)
            if conn.password:
                options.setdefault("AWS_SECRET_ACCESS_KEY", conn.password)
            if extra.get("region_name"):
                options.setdefault("AWS_REGION", str(extra["region_name"]))
            endpoint = extra.get("endpoint_url") or (extra.get("service_config") or {}).get("s3", {}).get("endpoint_url")
            if endpoint:
                options.setdefault("AWS_ENDPOINT_URL", str(endpoint))
                if str(endpoint).startswith("http://"):
                    options.setdefault("AWS_ALLOW_HTTP", "true")
            key = f"delta_storage_{self.conn_id}"
            shipped[key] = json.dumps(options)
            ref = SecretRef(source="shipped", name=key)
        spec = TableSpec(
            format="delta", identifier=self.uri, partition=self.partition, columns=self.columns,
            storage_options=dict(self.storage_options or {}), secret_options=ref, label=_without_userinfo(self.uri),
        )  # fmt: skip
        return spec, shipped


TableOutput = IcebergTable | DeltaTable


def as_table(value: Any, argument: str, task_id: str) -> TableOutput | None:
    """``output_table`` / ``error_table`` as given: an IcebergTable, a DeltaTable, or None. A
    copy: rendering fills in its templates in place, and the mapped instances of one task
    (in one process under ``dag.test()``) must each render their own."""
    if value is None:
        return None
    if isinstance(value, (IcebergTable, DeltaTable)):
        return copy.deepcopy(value)
    raise RayLLMConfigError(
        f"task {task_id}: {argument} must be an IcebergTable or a DeltaTable "
        f"(airflow_provider_raydatallm.tables), not {type(value).__name__}"
    )
