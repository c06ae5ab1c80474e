"""Turning the operator's rendered arguments into a validated job spec (all the checks made
before submission end here), and a task instance into a submission id."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from airflow_provider_raydatallm import schemas
from airflow_provider_raydatallm.exceptions import RayLLMConfigError
from airflow_provider_raydatallm.job import callables
from airflow_provider_raydatallm.job.spec import (
    PROCESSOR_TYPES,
    InputSpec,
    JobSpec,
    OutputSpec,
    ProcessorSpec,
    RunIdentity,
    SecretRef,
    infer_input_format,
    secret_property_values,
)
from airflow_provider_raydatallm.operators import _checks

# Fields that only mean something on the Airflow side of a config object.
_MODEL_ALIASES = {"vLLMEngineProcessorConfig", "SGLangEngineProcessorConfig"}


def build_spec(op: Any, identity: RunIdentity) -> JobSpec:
    """The validated job spec for an operator's rendered arguments (no I/O, no Ray): every
    check that can be made before submission is made here or in ``_checks``."""
    uris, limit, num_partitions = _checks.check_rendered(op)
    if not op.output_uri and getattr(op, "output_table", None) is None:
        raise RayLLMConfigError(f"task {op.task_id}: output_uri or output_table is required")
    if getattr(op, "error_table", None) is not None and op.error_output_uri:
        raise RayLLMConfigError(f"task {op.task_id}: give error_table or error_output_uri, not both")
    try:
        fmt = op.input_format or infer_input_format(uris)
        spec = JobSpec(
            run=identity,
            input=InputSpec(
                uris=uris,
                format=fmt,
                columns=op.input_columns,
                limit=limit,
                num_partitions=num_partitions,
                id_column=op.id_column,
            ),
            output=OutputSpec(
                uri=op.output_uri or "", format=op.output_format, error_uri=op.error_output_uri or "",
                overwrite=op.overwrite, table=_table_shape(getattr(op, "output_table", None)),
                error_table=_table_shape(getattr(op, "error_table", None)),
            ),
            processor=processor_spec(op.processor_config, op.task_id, url_from_connection=bool(op.http_conn_id)),
            preprocess=callables.pack(op.preprocess, "preprocess"),
            postprocess=callables.pack(op.postprocess, "postprocess"),
            should_continue_on_error=op.should_continue_on_error,
            max_error_ratio=op.max_error_ratio,
        )
    except ValidationError as err:
        raise spec_error(err, op.task_id) from None
    except (ValueError, callables.CallableShippingError) as err:
        raise RayLLMConfigError(f"task {op.task_id}: {err}") from None
    return spec


def _table_shape(table: Any) -> Any:
    """The table's spec without its connection (resolved at execute, ``with_tables``): what
    ``build_spec`` can check with no connection at hand (names, partition values, format)."""
    if table is None:
        return None
    from airflow_provider_raydatallm.job.spec import TableSpec

    where = table.table if table.format == "iceberg" else table.uri
    return TableSpec(format=table.format, identifier=where, partition=table.partition, columns=table.columns)


def with_tables(op: Any, spec: JobSpec) -> tuple[JobSpec, dict[str, str]]:
    """The spec with its table outputs' connections resolved: catalog properties and storage
    credentials go into the shipped secrets, never the spec. Returns (spec, secrets)."""
    out, shipped, update = spec.output, {}, {}
    for name in ("table", "error_table"):
        table = getattr(op, "output_table" if name == "table" else "error_table", None)
        if table is None:
            continue
        resolved, secrets = table.to_spec(op.task_id)
        update[name] = resolved
        shipped.update(secrets)
    if not update:
        return spec, {}
    output = OutputSpec.model_validate({**out.model_dump(), **{k: v.model_dump() for k, v in update.items()}})
    return spec.model_copy(update={"output": output}), shipped


def secret_values(shipped: str) -> list[str]:
    """What to mask of a shipped JSON object of properties (``secret_property_values``)."""
    try:
        values = json.loads(shipped)
    except ValueError:
        return [shipped]
    return secret_property_values(values) if isinstance(values, dict) else [shipped]


def processor_spec(config: Any, task_id: str, url_from_connection: bool = False) -> ProcessorSpec:
    """A ``ray.data.llm`` config object, or a dict with its ``type`` name, as a ProcessorSpec.

    Checked here, before submission and without importing Ray: a known type, its required
    field, and JSON-serializable arguments. Ray validates every field again on the cluster.
    """
    if isinstance(config, Mapping):
        kwargs = dict(config)
        type_name = kwargs.pop("type", None) or kwargs.pop("processor_type", None)
        if not type_name:
            raise RayLLMConfigError(
                f"task {task_id}: processor_config dict needs a 'type' key, one of {sorted(PROCESSOR_TYPES)}"
            )
    elif hasattr(config, "model_dump"):
        type_name = type(config).__name__
        kwargs = config.model_dump(exclude_unset=True)
    else:
        raise RayLLMConfigError(
            f"task {task_id}: processor_config must be a ray.data.llm processor config or a dict, "
            f"got {type(config).__name__}"
        )
    # The seeds' vLLM example says model=...; Ray 2.60 calls it model_source.
    if type_name in _MODEL_ALIASES and "model" in kwargs and "model_source" not in kwargs:
        kwargs["model_source"] = kwargs.pop("model")
    if type_name == "ServeDeploymentProcessorConfig" and kwargs.get("dtype_mapping") is not None:
        kwargs["dtype_mapping"] = _dtype_names(kwargs["dtype_mapping"], task_id)
    if url_from_connection and type_name == "HttpRequestProcessorConfig" and not kwargs.get("url"):
        kwargs["url"] = "<from connection>"  # resolved at execute time, when connections may be read
    for key, value in kwargs.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise RayLLMConfigError(
                f"task {task_id}: processor_config field {key!r} is not JSON-serializable "
                f"({type(value).__name__}); pass plain values (dicts, lists, strings, numbers)"
            ) from None
    if type_name in schemas.known_types():
        fields = schemas.fields(type_name)
        # The seeds' has_image=True is prepare_multimodal_stage in newer Ray releases.
        if "has_image" in kwargs and "has_image" not in fields and "prepare_multimodal_stage" in fields:
            kwargs.setdefault("prepare_multimodal_stage", kwargs.pop("has_image"))
        found = schemas.problems(type_name, kwargs)
        if found:
            raise RayLLMConfigError(
                f"task {task_id}: processor_config is not a valid {type_name} (Ray {schemas.ray_version()}): "
                + "; ".join(found)
            )
    try:
        return ProcessorSpec(type=type_name, kwargs=kwargs)
    except ValidationError as err:
        raise RayLLMConfigError(f"task {task_id}: invalid processor_config: {_first_error(err)}") from None


def _dtype_names(mapping: Any, task_id: str) -> dict[str, str]:
    """ServeDeploymentProcessorConfig's dtype_mapping (name -> request class) as names the
    cluster imports: a class becomes ``"module:Class"``; a bare name means the class of that
    name in ``ray.serve.llm.openai_api_models`` (``"ChatCompletionRequest"``)."""
    if not isinstance(mapping, Mapping):
        raise RayLLMConfigError(f"task {task_id}: processor_config.dtype_mapping must be a dict of name -> request class")
    names = {}
    for key, value in mapping.items():
        if isinstance(value, type):
            value = f"{value.__module__}:{value.__qualname__}"
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?", value):
            raise RayLLMConfigError(
                f"task {task_id}: processor_config.dtype_mapping[{key!r}]={value!r}: give a request class, its "
                "'module:Class' path, or a class name of ray.serve.llm.openai_api_models"
            )
        names[str(key)] = value
    return names


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    message = first.get("msg", str(err)).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def spec_error(err: ValidationError, task_id: str) -> RayLLMConfigError:
    return RayLLMConfigError(f"task {task_id}: {_first_error(err)}")


def _slug(text: str, limit: int) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:limit] or "x"


def submission_base(dag_id: str, task_id: str, run_id: str, map_index: int, *, namespace: str) -> str:
    """Deterministic per task instance of one Airflow deployment: a readable prefix, plus a
    hash that makes it unique. ``namespace`` (``namespace.resolve``) keeps two deployments
    that run the same DAG with the same run id on one Ray cluster apart."""
    identity = f"{namespace}\0{dag_id}\0{task_id}\0{run_id}\0{map_index}"
    digest = hashlib.sha1(identity.encode()).hexdigest()[:12]
    index = f"-m{map_index}" if map_index >= 0 else ""
    return f"raydllm-{_slug(dag_id, 40)}-{_slug(task_id, 40)}{index}-{digest}"


def submission_id(base: str, attempt: int) -> str:
    return f"{base}-a{attempt}"


def first_try_of_series(try_number: int, max_tries: int | None, retries: int) -> int:
    """The key of the try series this try belongs to (the tries of a task instance since it
    was last cleared): Airflow's ``max_tries`` for the task instance, which a retry keeps and
    every clear raises (to the current try plus ``retries``), so later series have larger
    keys. Not ``max_tries - retries + 1``: that moves when the DAG's ``retries`` is edited
    while a job runs. The same in every process: it reads only what Airflow stored.

    :param max_tries: ``ti.max_tries``; None without a scheduler (a bare ``execute()``):
        then this try starts its own series.
    :param retries: the task's ``retries`` (used only without ``max_tries``).
    """
    if max_tries is None:
        max_tries = try_number - 1 + retries
    return max(0, max_tries)  # 0 with retries=0 before the first clear: not clamped, a clear makes it 1


def with_resume(identity: RunIdentity, max_tries: int | None, retries: int, spec_digest: str) -> RunIdentity:
    """The identity with its resume key: shared by the tries of one series of one task
    instance in one deployment (``first_try_of_series``, ``identity.namespace``), and by the
    same spec only (a spec changed by the user starts from zero). ``keep_progress``: another
    try follows if this one fails."""
    first_try = first_try_of_series(identity.try_number, max_tries, retries)
    if max_tries is None:  # no scheduler behind the task (e.g. a bare execute())
        max_tries = identity.try_number - 1 + retries
    parts = [identity.namespace, identity.dag_id, identity.task_id, identity.run_id, str(identity.map_index)]
    key = hashlib.sha1("\0".join([*parts, str(first_try), spec_digest]).encode()).hexdigest()[:20]
    return identity.model_copy(
        update={"resume_key": f"resume-{key}", "keep_progress": identity.try_number <= max_tries}
    )


_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.I)


def refuse_secret_env(runtime_env: Mapping[str, Any] | None, task_id: str) -> None:
    """runtime_env goes to the Ray job as is, and every Jobs API client reads it back
    (Ray redacts it for browsers only): a secret there is a secret published."""
    env = (runtime_env or {}).get("env_vars") or {}
    named = sorted(str(k) for k, v in env.items() if _SECRET_NAME.search(str(k)) and v)
    if named:
        raise RayLLMConfigError(
            f"task {task_id}: runtime_env env_vars {', '.join(named)} look like secrets, and every Ray Jobs API "
            "client can read runtime_env back (GET /api/jobs/). Set them on the Ray nodes instead (e.g. from a "
            "Kubernetes Secret): Ray workers inherit the nodes' environment. For an endpoint's API key use "
            "http_conn_id (password, or extra api_key_env). See docs/security.md."
        )


def endpoint_url(host: str | None, port: int | None, schema: str | None, path: str | None) -> str:
    """An OpenAI-compatible endpoint's URL from a connection: a full URL host is kept as is."""
    if not host:
        raise RayLLMConfigError("the endpoint connection has no host (e.g. https://api.openai.com)")
    if "://" in host:
        base = host.rstrip("/")
    else:
        base = f"{schema or 'https'}://{host}{f':{port}' if port else ''}"
    if path is None and base.rstrip("/").endswith(("/completions", "/embeddings", "/responses")):
        return base
    return base + (path if path is not None else "/v1/chat/completions")


def with_endpoint_connection(spec_processor: ProcessorSpec, conn: Any, task_id: str) -> tuple[ProcessorSpec, dict[str, str]]:
    """Point an HTTP processor at a connection's endpoint, its secrets kept out of the spec.

    The connection's password (the API key) and its extra ``headers`` (which may carry keys
    too) are shipped in the spec package's secrets file; ``api_key_env`` and
    ``headers_from_env`` in the extra name environment variables the Ray nodes already hold,
    so Airflow never sees those values. Returns the updated spec and the values to ship.
    """
    if spec_processor.type != "HttpRequestProcessorConfig":
        raise RayLLMConfigError(f"task {task_id}: http_conn_id only applies to HttpRequestProcessorConfig")
    extra = conn.extra_dejson or {}
    kwargs = dict(spec_processor.kwargs)
    if not kwargs.get("url") or kwargs.get("url") == "<from connection>":
        kwargs["url"] = endpoint_url(conn.host, conn.port, conn.schema, extra.get("path"))
    refs = dict(spec_processor.secret_headers)
    shipped: dict[str, str] = {}
    for index, (header, value) in enumerate(sorted((extra.get("headers") or {}).items())):
        shipped[f"header_{index}"] = str(value)
        refs[header] = SecretRef(source="shipped", name=f"header_{index}")
    for header, env_name in (extra.get("headers_from_env") or {}).items():
        refs[header] = SecretRef(source="env", name=str(env_name))
    if extra.get("api_key_env"):
        refs["Authorization"] = SecretRef(source="env", name=str(extra["api_key_env"]), prefix="Bearer ")
    elif conn.password:
        shipped["api_key"] = conn.password
        refs["Authorization"] = SecretRef(source="shipped", name="api_key", prefix="Bearer ")
    if kwargs.get("headers"):  # a header set in the DAG's config too would travel in the spec
        kwargs["headers"] = {k: v for k, v in kwargs["headers"].items() if k not in refs}
    updated = spec_processor.model_copy(update={"kwargs": kwargs, "secret_headers": refs})
    return updated, shipped
