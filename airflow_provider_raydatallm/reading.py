"""Reading what a task wrote, from a DAG's downstream task or anywhere with the provider
installed (pyarrow and fsspec; ``s3fs``/``gcsfs`` for those schemes).

Read the committed version, named by the output's ``_SUCCESS`` manifest, never the directory
listing (a commit in progress has new files in it too)::

    from airflow_provider_raydatallm.reading import read_committed, read_failed_run

    table = read_committed("s3://lake/triage/2026-11-30")              # the output
    errors = read_committed("s3://lake/triage/2026-11-30/_errors")     # its error rows
    failed = read_failed_run("s3://lake/triage/2026-11-30/_errors")    # a failed run's error rows

A table output is read through its table format (pyiceberg or deltalake, installed where
you read), with the slice you want::

    from airflow_provider_raydatallm.reading import read_table
    from airflow_provider_raydatallm.tables import IcebergTable

    day = read_table(IcebergTable("analytics.post_sentiment", conn_id="lake"), where={"day": "2026-11-30"})

Files are read one by one and concatenated, so a column that is all null in one block's
file and typed in another's comes back typed (and integers beside floats as floats); the
format (Parquet, JSON lines, CSV) is told by each file's extension. CSV carries no types:
an error output's columns are read as the error schema says, an output's are inferred file
by file, and when the files disagree every column comes back as a string (write Parquet to
keep types).
"""

from __future__ import annotations

import json
from typing import Any

from airflow_provider_raydatallm.job.commit import (
    FAILED_RUN_DIR,
    FAILED_RUN_NEXT,
    FAILED_RUN_RECORD,
    WORK_DIR,
    committed_files,
    location,
)

__all__ = ["committed_files", "read_committed", "read_failed_run", "read_files", "read_table"]


def _read_one(fs: Any, path: str, columns: list[str] | None, schema: Any, as_strings: bool) -> Any:
    """One file; ``schema``: its columns' types (error files); CSV and JSON-lines files whose
    columns are the error schema's are read with it in any case."""
    import pyarrow as pa

    from airflow_provider_raydatallm.job.rows import ERROR_COLUMNS, error_schema

    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path, filesystem=fs, columns=columns)
    with fs.open(path, "rb") as handle:
        data = handle.read()
    if path.endswith(".csv"):
        import csv
        import io

        import pyarrow.csv as pacsv

        header = next(csv.reader(io.StringIO(data.decode(errors="replace").split("\n", 1)[0])), [])
        if tuple(header) == ERROR_COLUMNS:
            schema = error_schema()
        if schema is not None:
            types = {n: schema.field(n).type for n in header if n in schema.names}
        else:
            types = {n: pa.string() for n in header} if as_strings else {}
        table = pacsv.read_csv(pa.py_buffer(data), convert_options=pacsv.ConvertOptions(column_types=types))
    else:
        rows = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        if rows and tuple(rows[0]) == ERROR_COLUMNS:
            schema = error_schema()
        table = pa.Table.from_pylist(rows, schema=schema) if schema is not None else pa.Table.from_pylist(rows)
    return table.select(columns) if columns else table


def read_files(uris: list[str], columns: list[str] | None = None, errors: bool = False) -> Any:
    """One pyarrow Table of the given files (all in one filesystem), in order; ``errors``:
    they are error-output files (read with the error schema's types)."""
    import pyarrow as pa

    from airflow_provider_raydatallm.job.rows import error_schema

    if not uris:
        return error_schema().empty_table() if errors else pa.table({})
    fs, _ = location(uris[0])
    schema = error_schema() if errors else None
    paths = [location(uri)[1] for uri in uris]
    tables = [_read_one(fs, path, columns, schema, False) for path in paths]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        if not any(p.endswith(".csv") for p in paths) or errors:
            raise
        # CSV files whose inferred types disagree: every column as written, as strings.
        tables = [_read_one(fs, path, columns, None, True) for path in paths]
        return pa.concat_tables(tables, promote_options="permissive")


def read_committed(uri: str, columns: list[str] | None = None) -> Any:
    """The committed version of an output (or error output) as one pyarrow Table; raises
    FileNotFoundError when nothing was committed there."""
    return read_files(committed_files(uri), columns)


def read_failed_run(error_output_uri: str, columns: list[str] | None = None) -> Any:
    """The error rows of the last run that failed because too many rows failed, kept in the
    error output's work area (``_raydllm/failed-run/``); FileNotFoundError when there are none."""
    fs, path = location(error_output_uri)
    base = error_output_uri.rstrip("/")
    # failed-run.next/: a newer failed run whose job stopped before its rows took failed-run/'s place.
    for folder in (FAILED_RUN_DIR + FAILED_RUN_NEXT, FAILED_RUN_DIR):
        try:
            record = json.loads(fs.cat_file(f"{path}/{WORK_DIR}/{folder}/{FAILED_RUN_RECORD}"))
        except FileNotFoundError:
            continue
        return read_files([f"{base}/{WORK_DIR}/{folder}/{name}" for name in record["files"]], columns, errors=True)
    raise FileNotFoundError(f"{error_output_uri} keeps no failed run's error rows")


def read_table(table: Any, where: dict[str, Any] | None = None, columns: list[str] | None = None) -> Any:
    """The rows of an ``IcebergTable`` or ``DeltaTable`` (``airflow_provider_raydatallm.tables``)
    at its current snapshot or version, as an Arrow table: ``where`` picks partitions
    (column -> a value, or a list of values), e.g. ``{"day": "2026-11-30"}``. Looks the
    table's connection up like the operator does (call it inside a task)."""
    where = where or {}
    if table.format == "iceberg":
        from pyiceberg.catalog import load_catalog
        from pyiceberg.expressions import AlwaysTrue, And, EqualTo, In

        name, props = table.properties()
        terms = [In(c, [str(x) for x in v]) if isinstance(v, (list, tuple, set)) else EqualTo(c, str(v))
                 for c, v in where.items()]  # fmt: skip
        row_filter = AlwaysTrue() if not terms else terms[0] if len(terms) == 1 else And(*terms)
        scan = load_catalog(name, **props).load_table(table.table).scan(row_filter=row_filter,
                                                                       selected_fields=tuple(columns or ("*",)))
        return scan.to_arrow()
    from deltalake import DeltaTable

    _, shipped = table.to_spec("read_table")
    options = {**(table.storage_options or {}), **{k: v for blob in shipped.values() for k, v in json.loads(blob).items()}}
    filters = [(c, "in", [str(x) for x in v]) if isinstance(v, (list, tuple, set)) else (c, "=", str(v))
               for c, v in where.items()]  # fmt: skip
    return DeltaTable(table.uri, storage_options=options or None).to_pyarrow_table(filters=filters or None, columns=columns)
