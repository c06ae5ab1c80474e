"""Reading what a task wrote, from a DAG's downstream task or anywhere with the provider
installed (pyarrow and fsspec; ``s3fs``/``gcsfs`` for those schemes).

Read the committed version, named by the output's ``_SUCCESS`` manifest, never the directory
listing (a commit in progress has new files in it too)::

    from airflow_provider_raydatallm.reading import read_committed, read_failed_run

    table = read_committed("s3://lake/triage/2026-11-30")              # the output
    errors = read_committed("s3://lake/triage/2026-11-30/_errors")     # its error rows
    failed = read_failed_run("s3://lake/triage/2026-11-30/_errors")    # a failed run's error rows

Files are read one by one and concatenated, so a column that is all null in one block's
file and typed in another's comes back typed; the format (Parquet, JSON lines, CSV) is
told by each file's extension.
"""

from __future__ import annotations

import json
from typing import Any

from airflow_provider_raydatallm.job.commit import (
    FAILED_RUN_DIR,
    FAILED_RUN_RECORD,
    WORK_DIR,
    committed_files,
    location,
)

__all__ = ["committed_files", "read_committed", "read_failed_run", "read_files"]


def read_files(uris: list[str], columns: list[str] | None = None) -> Any:
    """One pyarrow Table of the given files (all in one filesystem), in order."""
    import pyarrow as pa

    if not uris:
        return pa.table({})
    fs, _ = location(uris[0])
    tables = []
    for uri in uris:
        path = location(uri)[1]
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq

            tables.append(pq.read_table(path, filesystem=fs, columns=columns))
            continue
        with fs.open(path, "rb") as handle:
            if path.endswith(".csv"):
                import pyarrow.csv as pacsv

                table = pacsv.read_csv(handle)
            else:
                rows = [json.loads(line) for line in handle.read().decode().splitlines() if line.strip()]
                table = pa.Table.from_pylist(rows)
        tables.append(table.select(columns) if columns else table)
    return pa.concat_tables(tables, promote_options="default")


def read_committed(uri: str, columns: list[str] | None = None) -> Any:
    """The committed version of an output (or error output) as one pyarrow Table; raises
    FileNotFoundError when nothing was committed there."""
    return read_files(committed_files(uri), columns)


def read_failed_run(error_output_uri: str, columns: list[str] | None = None) -> Any:
    """The error rows of the last run that failed because too many rows failed, kept in the
    error output's work area (``_raydllm/failed-run/``); FileNotFoundError when there are none."""
    fs, path = location(error_output_uri)
    folder = f"{path}/{WORK_DIR}/{FAILED_RUN_DIR}"
    try:
        record = json.loads(fs.cat_file(f"{folder}/{FAILED_RUN_RECORD}"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{error_output_uri} keeps no failed run's error rows") from None
    base = error_output_uri.rstrip("/")
    return read_files([f"{base}/{WORK_DIR}/{FAILED_RUN_DIR}/{name}" for name in record["files"]], columns)
