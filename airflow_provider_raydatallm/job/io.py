"""Reading the input and committing the output of one job (cluster side; imports Ray lazily).

Commit protocol, so readers never see a partial or duplicated result:

1. write everything (data, ``_errors/``, ``_metrics.json``) into ``<output>.__staging__<tag>``;
2. move any previous ``<output>`` aside, move the staging directory into its place, delete
   the previous one;
3. write ``<output>/_SUCCESS`` last.

A rerun for the same output therefore replaces it; a failed run leaves only a staging
directory, which the next run for that output removes before it starts.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from airflow_provider_raydatallm.job.spec import InputSpec, OutputSpec

if TYPE_CHECKING:
    import ray.data

STAGING = ".__staging__"
PREVIOUS = ".__previous__"
SUCCESS_MARKER = "_SUCCESS"
METRICS_FILE = "_metrics.json"


def _fs(uri: str):
    from fsspec.core import url_to_fs

    return url_to_fs(uri)


def read_input(spec: InputSpec) -> ray.data.Dataset:
    import ray.data

    readers = {
        "csv": lambda: ray.data.read_csv(spec.uris),
        "parquet": lambda: ray.data.read_parquet(spec.uris, columns=spec.columns),
        "json": lambda: ray.data.read_json(spec.uris),
        "jsonl": lambda: ray.data.read_json(spec.uris, lines=True),
    }
    ds = readers[spec.format]()
    if spec.columns and spec.format != "parquet":
        ds = ds.select_columns(spec.columns)
    if spec.limit:
        ds = ds.limit(spec.limit)
    return ds


def write_rows(ds: ray.data.Dataset, uri: str, fmt: str) -> None:
    writers = {"parquet": ds.write_parquet, "jsonl": ds.write_json, "csv": ds.write_csv}
    writers[fmt](uri)


def staging_uri(output: OutputSpec, tag: str) -> str:
    return f"{output.uri.rstrip('/')}{STAGING}{tag}"


def error_staging_uri(output: OutputSpec, staging: str) -> str:
    """Errors under the output directory travel inside its staging directory."""
    base = output.uri.rstrip("/")
    if output.error_uri.startswith(base + "/"):
        return staging + output.error_uri[len(base) :]
    return f"{output.error_uri.rstrip('/')}{STAGING}{staging.rsplit(STAGING, 1)[1]}"


def clear_stale_staging(output: OutputSpec) -> list[str]:
    """Remove staging directories that failed runs left for this output; return them."""
    removed = []
    for uri in {output.uri, output.error_uri}:
        fs, path = _fs(uri)
        for stale in fs.glob(f"{path.rstrip('/')}{STAGING}*"):
            fs.rm(stale, recursive=True)
            removed.append(stale)
    return removed


def write_metrics(staging: str, payload: dict[str, Any]) -> None:
    fs, path = _fs(staging)
    fs.makedirs(path, exist_ok=True)
    fs.pipe_file(f"{path}/{METRICS_FILE}", json.dumps(payload, indent=2).encode())


def _swap_in(staging: str, final: str) -> None:
    fs, staging_path = _fs(staging)
    _, final_path = _fs(final)
    final_path = final_path.rstrip("/")
    if not fs.exists(staging_path):
        fs.makedirs(staging_path, exist_ok=True)
    previous = final_path + PREVIOUS + staging_path.rsplit(STAGING, 1)[1]
    had_previous = fs.exists(final_path)
    if had_previous:
        fs.mv(final_path, previous, recursive=True)
    fs.mv(staging_path, final_path, recursive=True)
    if had_previous:
        fs.rm(previous, recursive=True)


def commit(output: OutputSpec, staging: str) -> None:
    error_staging = error_staging_uri(output, staging)
    if not error_staging.startswith(staging + "/"):
        _swap_in(error_staging, output.error_uri)
    _swap_in(staging, output.uri)
    fs, path = _fs(output.uri)
    fs.pipe_file(f"{path.rstrip('/')}/{SUCCESS_MARKER}", b"")
