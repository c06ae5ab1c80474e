"""Checks only the cluster can make, made before any actor or engine starts.

The Airflow worker's filesystem is not the cluster's: whether the input exists, the output
can be written and the model is there can only be told here. Each failure names the path
and says what to do, within seconds of the job starting, instead of minutes of actor
restarts ending in ``ActorDiedError`` or a ``ReadCSV`` traceback.
"""

from __future__ import annotations

import posixpath
from typing import Any

from airflow_provider_raydatallm.job.commit import canonical
from airflow_provider_raydatallm.job.spec import JobSpec, is_inside

MODEL_TYPES = ("vLLMEngineProcessorConfig", "SGLangEngineProcessorConfig")


class PreflightError(ValueError):
    """Something the job needs is missing or unusable on the cluster."""


def _fs(uri: str):
    from fsspec.core import url_to_fs

    return url_to_fs(uri)


def check_input(uris: list[str]) -> None:
    for uri in uris:
        if uri.startswith(("http://", "https://")):
            continue  # read as it comes; a HEAD may not be allowed
        fs, path = _fs(uri)
        matches = fs.glob(path) if any(c in path for c in "*?[") else ([path] if fs.exists(path) else [])
        if not matches:
            raise PreflightError(
                f"input_uri {uri!r} does not exist as seen from the Ray cluster (the Airflow worker's files "
                "are not the cluster's: use storage both reach, e.g. s3://, gs:// or a shared volume)"
            )
        files = [m for m in matches if not fs.isdir(m)] or [f for m in matches for f in fs.find(m)]
        if not files:
            raise PreflightError(f"input_uri {uri!r} is a directory with no files in it")
        if all((fs.size(f) or 0) == 0 for f in files):
            raise PreflightError(f"input_uri {uri!r} is empty (0 bytes): there are no rows to process")


def check_writable(uri: str, tag: str) -> None:
    """Write and delete a probe under the output's work area, which the provider owns; leave
    no directory behind that was not there (a failed run leaves the output untouched)."""
    try:
        fs, path = _fs(uri)
        path = path.rstrip("/")
        work = posixpath.join(path, "_raydllm")
        created = [d for d in (path, work) if not fs.exists(d)]
        probe = posixpath.join(work, f"probe-{tag}")
        fs.makedirs(work, exist_ok=True)
        fs.pipe_file(probe, b"")
        fs.rm(probe)
        for directory in reversed(created):  # innermost first, and only if still empty
            if fs.exists(directory) and not fs.ls(directory):
                fs.rmdir(directory)
    except Exception as err:
        raise PreflightError(f"{uri!r} cannot be written from the Ray cluster: {type(err).__name__}: {err}") from None


def check_model(processor_type: str, kwargs: dict[str, Any]) -> None:
    """A model given as a path must be there; a hub id is left to the engine."""
    if processor_type not in MODEL_TYPES:
        return
    source = str(kwargs.get("model_source") or "")
    is_path = source.startswith(("/", "./", "../", "~", "file://", "s3://", "gs://"))
    if not is_path:
        return
    fs, path = _fs(source)
    if not fs.exists(path):
        raise PreflightError(f"model_source {source!r} does not exist on the Ray cluster")
    if fs.isdir(path) and not fs.exists(posixpath.join(path, "config.json")):
        raise PreflightError(f"model_source {source!r} is a directory without config.json: not a model folder")


def check_id_column(id_column: str | None, columns: list[str]) -> None:
    if id_column and id_column not in columns:
        raise PreflightError(f"id_column {id_column!r} is not a column of the input; its columns are: {', '.join(columns)}")


def check_types(types: bytes) -> None:
    """Refuse, before inference, an input column whose values Ray Data cannot hand to the
    callables and back: a map whose keys and values differ in type (Ray turns a map into a
    list of [key, value] pairs, which then mixes types and cannot be stored)."""
    if not types:
        return
    import pyarrow as pa

    def mixed_maps(kind: Any, where: str) -> list[str]:
        if pa.types.is_map(kind):
            found = [where] if kind.key_type != kind.item_type else []
            return found + mixed_maps(kind.item_type, f"{where} (its values)")
        if pa.types.is_struct(kind):
            return [m for i in range(kind.num_fields) for m in mixed_maps(kind.field(i).type, f"{where}.{kind.field(i).name}")]
        if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
            return mixed_maps(kind.value_type, f"{where}[]")
        return []

    schema = pa.ipc.read_schema(pa.py_buffer(types))
    for field in schema:
        bad = mixed_maps(field.type, repr(field.name))
        if bad:
            raise PreflightError(
                f"input column {bad[0]} is a {field.type}: Ray Data hands a map to the callables as a list of "
                "[key, value] pairs, which cannot be stored when keys and values differ in type. Turn it into "
                "a struct or a JSON string before this task, or drop it with input_columns."
            )


def run_all(spec: JobSpec, tag: str) -> None:
    check_input(spec.input.uris)
    check_model(spec.processor.type, spec.processor.kwargs)
    check_writable(spec.output.uri, tag)
    if not is_inside(canonical(spec.output.error_uri), canonical(spec.output.uri)):
        check_writable(spec.output.error_uri, tag)
