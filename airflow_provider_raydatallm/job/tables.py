"""Table outputs (cluster side): an Iceberg table (pyiceberg, any catalog) or a Delta table
(delta-rs ``deltalake``), one atomic commit per run that replaces only the run's slice.

The run's rows reach the table in two steps, as with a directory output:

1. the streaming pass writes every block's good rows as a Parquet file into the slice's work
   directory (``<table location>/_raydllm/work/<slice>``), block by block and idempotently
   under Ray's retries (``sink.py``); the counts are checked (rows in = rows out + error rows);
2. ``commit`` then replaces the slice in one table transaction: Iceberg deletes the slice's
   rows and appends the new data files in one catalog commit (the catalog swaps its metadata
   pointer only if nobody committed since this transaction began); Delta writes the files
   and commits one log entry (``mode="overwrite"`` with the slice as ``predicate``). A
   conflicting commit of another writer (a sibling mapped task's slice) is retried on the
   new table state; a job stopped before the commit leaves the table exactly as it was.

Each commit records its owner (the Airflow task), its slice and its row count in the
snapshot summary (Iceberg) or the commit's metadata (Delta). A slice holding rows that this
task did not commit (no record, another task's record, or a count that differs from the
last record) is refused unless ``overwrite=True``: the provider never deletes what it did
not write.
"""

from __future__ import annotations

import json
import logging
import random
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from airflow_provider_raydatallm.job import commit as dirs
from airflow_provider_raydatallm.job.processor import resolve_secret
from airflow_provider_raydatallm.job.spec import JobSpec, TableSpec

log = logging.getLogger("raydllm.job")

# Snapshot summary (Iceberg) / commit metadata (Delta) keys of this provider's commits.
OWNER_KEY, SLICE_KEY, ROWS_KEY, SUBMISSION_KEY = "raydllm.owner", "raydllm.slice", "raydllm.rows", "raydllm.submission_id"
COMMIT_ATTEMPTS = 12  # conflicting commits of other writers, retried on the new table state
WORK_DIR = "_raydllm"


class TableOutputError(RuntimeError):
    """A table output cannot take this run's rows (schema, ownership, catalog); nothing was
    committed."""


# -- where -------------------------------------------------------------------------------------


def catalog_properties(table: TableSpec, secrets: dict[str, str]) -> dict[str, str]:
    if table.catalog is None:
        return {}
    return json.loads(resolve_secret(table.catalog, secrets))


def storage_options(table: TableSpec, secrets: dict[str, str]) -> dict[str, str]:
    shipped = json.loads(resolve_secret(table.secret_options, secrets)) if table.secret_options else {}
    return {**table.storage_options, **shipped}


def _transient(err: BaseException) -> bool:
    """A catalog database busy with another writer: a SQLite file locked, or its tables
    being created by another process at the same moment."""
    text = str(err).lower()
    if type(err).__name__ == "IntegrityError":  # two writers adding the same namespace row at once
        return "unique" in text
    return type(err).__name__ == "OperationalError" and ("locked" in text or "already exists" in text)


def ensure_namespace(catalog: Any, namespace: str) -> None:
    """Create the namespace unless it is there (another writer may be creating it too)."""
    from pyiceberg.exceptions import NamespaceAlreadyExistsError

    try:
        catalog.create_namespace_if_not_exists(namespace)
    except NamespaceAlreadyExistsError:
        pass
    except Exception as err:
        if not _transient(err):
            raise


def load_catalog(table: TableSpec, secrets: dict[str, str]) -> Any:
    from pyiceberg.catalog import load_catalog as load

    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            return load(table.catalog_name, **catalog_properties(table, secrets))
        except Exception as err:
            if not _transient(err) or attempt == COMMIT_ATTEMPTS:
                raise
            time.sleep(min(5.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.0))
    raise AssertionError("unreachable")


def _split(identifier: str) -> tuple[str, str]:
    namespace, _, name = identifier.rpartition(".")
    return namespace, name


def location(table: TableSpec, secrets: dict[str, str]) -> str:
    """The table's root: Delta's URI; an Iceberg table's location (the one the catalog would
    give it, for a table not created yet)."""
    if table.format == "delta":
        return table.identifier.rstrip("/")
    from pyiceberg.exceptions import NoSuchTableError

    catalog = load_catalog(table, secrets)
    try:
        return catalog.load_table(table.identifier).location().rstrip("/")
    except NoSuchTableError:
        pass
    resolve = getattr(catalog, "_resolve_table_location", None)
    if resolve is None:
        raise TableOutputError(
            f"Iceberg table {table.identifier} does not exist yet and catalog {table.catalog_name!r} "
            f"({type(catalog).__name__}) does not say where it would be: pass output_uri, a directory "
            "for the run's rows to wait in until the commit"
        )
    namespace, name = _split(table.identifier)
    ensure_namespace(catalog, namespace)  # where the table would go depends on it
    return str(resolve(None, namespace, name)).rstrip("/")


def with_work_dirs(spec: JobSpec, secrets: dict[str, str]) -> JobSpec:
    """The spec with its table output's work directory (and error directory) filled in:
    ``<table location>/_raydllm/work/<slice>`` and ``.../errors/<slice>``."""
    out = spec.output
    if out.table is None or (out.uri and out.error_uri):
        return spec
    base = f"{location(out.table, secrets)}/{WORK_DIR}"
    key = out.table.slice_key()
    update = {"uri": out.uri or f"{base}/work/{key}"}
    if not out.error_uri:
        update["error_uri"] = f"{base}/errors/{key}" if out.error_table is None else f"{base}/error-work/{key}"
    return spec.model_copy(update={"output": type(out).model_validate({**out.model_dump(), **update})})


# -- schema ----------------------------------------------------------------------------------


def _compatible(table_type: Any, data_type: Any) -> bool:
    """A column of ``data_type`` may be written into one of ``table_type``: the same type, or
    a narrower integer, float or text type (widened when written)."""
    import pyarrow as pa

    t = pa.types
    if table_type.equals(data_type) or t.is_null(data_type):
        return True
    if t.is_integer(table_type) and t.is_integer(data_type):
        return table_type.bit_width >= data_type.bit_width
    if t.is_floating(table_type) and (t.is_floating(data_type) or t.is_integer(data_type)):
        return t.is_integer(data_type) or table_type.bit_width >= data_type.bit_width
    text = (t.is_string, t.is_large_string, getattr(t, "is_string_view", lambda _: False))
    if any(f(table_type) for f in text) and any(f(data_type) for f in text):
        return True
    if t.is_timestamp(table_type) and t.is_timestamp(data_type):
        return True
    if (t.is_list(table_type) or t.is_large_list(table_type)) and (t.is_list(data_type) or t.is_large_list(data_type)):
        return _compatible(table_type.value_type, data_type.value_type)
    return False


def _shown(arrow_type: Any) -> str:
    """A type as the user wrote it: pyiceberg reads text columns as ``large_string``."""
    return str(arrow_type).replace("large_string", "string").replace("large_list", "list")


def check_schema(table: TableSpec, existing: Any, incoming: Any, where: str) -> None:
    """Fail naming the first column whose type the table cannot take."""
    for field in incoming:
        if field.name in existing.names:
            have = existing.field(field.name).type
            if not _compatible(have, field.type):
                raise TableOutputError(
                    f"{where}: column {field.name!r} is {_shown(field.type)} but {table.display()} has it as "
                    f"{_shown(have)}; "
                    f"{table.format} only widens types (int32 -> int64, float -> double): cast it in the "
                    "postprocess, or write to another table"
                )


def declared_schema(table: TableSpec) -> Any:
    import pyarrow as pa

    fields = []
    for name, type_name in (table.columns or {}).items():
        try:
            fields.append(pa.field(name, pa.type_for_alias(type_name)))
        except (ValueError, KeyError):
            raise TableOutputError(f"output_table columns: {name!r} has type {type_name!r}, not an Arrow type name "
                                   "(string, int64, double, bool, timestamp[us], ...)") from None  # fmt: skip
    return pa.schema(fields)


def existing_schema(table: TableSpec, secrets: dict[str, str]) -> Any | None:
    """The table's schema as Arrow, or None when it does not exist yet."""
    if table.format == "iceberg":
        from pyiceberg.exceptions import NoSuchTableError

        try:
            return load_catalog(table, secrets).load_table(table.identifier).schema().as_arrow()
        except NoSuchTableError:
            return None
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        import pyarrow as pa

        return pa.schema(DeltaTable(table.identifier, storage_options=storage_options(table, secrets) or None).schema().to_arrow())
    except TableNotFoundError:
        return None


def preflight(table: TableSpec, secrets: dict[str, str]) -> None:
    """Before inference: the catalog answers, and an existing table takes the declared
    columns and the partition columns (text)."""
    import pyarrow as pa

    try:
        existing = existing_schema(table, secrets)
    except TableOutputError:
        raise
    except Exception as err:  # noqa: BLE001 (the catalog's or the store's own error, named)
        raise TableOutputError(f"{table.display()}: cannot open it: {type(err).__name__}: {err}") from None
    if existing is None:
        return
    declared = declared_schema(table)
    check_schema(table, existing, declared, "the declared columns (output_table columns=)")
    check_schema(table, existing, pa.schema([(c, pa.string()) for c in table.partition]), "a partition column")


# -- the rows ----------------------------------------------------------------------------------


def staged_schema(table: TableSpec, files: list[str]) -> Any:
    """The schema of the run's rows as the table gets them: the staged files' columns (the
    postprocess's), the declared types, then the partition columns as text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schemas = []
    for path in files:
        fs, local = dirs.location(path)
        with fs.open(local, "rb") as handle:
            schemas.append(pq.read_schema(handle))
    data = pa.unify_schemas(schemas, promote_options="permissive") if schemas else pa.schema([])
    declared = declared_schema(table)
    fields = [declared.field(f.name) if f.name in declared.names else f for f in data
              if f.name not in table.partition]  # fmt: skip
    fields += [f for f in declared if f.name not in data.names and f.name not in table.partition]
    fields += [pa.field(c, pa.string()) for c in table.partition]
    return pa.schema(fields)


def _read(path: str) -> Any:
    import pyarrow.parquet as pq

    fs, local = dirs.location(path)
    with fs.open(local, "rb") as handle:
        return pq.read_table(handle)


def slice_rows(table: TableSpec, path: str, schema: Any) -> Any:
    """One staged file's rows as the table gets them: the partition columns set to the
    slice's values (a row with another value there fails the job, naming it), every column
    cast to ``schema`` (missing ones null)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    data = _read(path)
    for column, value in table.partition.items():
        if column in data.column_names:
            differs = pc.fill_null(pc.not_equal(pc.cast(data[column], pa.string()), value), True)
            if pc.any(differs).as_py():
                index = pc.index(differs, True).as_py()
                rid = data["row_id"][index].as_py() if "row_id" in data.column_names else index
                raise TableOutputError(
                    f"row {rid}: the postprocess set partition column {column!r} to "
                    f"{data[column][index].as_py()!r}, but this run writes the slice {column}={value!r}"
                )
            data = data.drop_columns([column])
    columns = []
    for field in schema:
        if field.name in table.partition:
            columns.append(pa.array([table.partition[field.name]] * data.num_rows, pa.string()))
        elif field.name in data.column_names:
            columns.append(data[field.name].cast(field.type))
        else:
            columns.append(pa.nulls(data.num_rows, field.type))
    return pa.table(columns, schema=schema)


# -- ownership ---------------------------------------------------------------------------------


@dataclass
class Record:
    owner: dict[str, Any]
    rows: int
    where: str  # snapshot id / version, for messages


def check_slice_owned(table: TableSpec, record: Record | None, rows_now: int, owner: dict[str, Any], overwrite: bool) -> None:
    """Refuse to replace a slice holding rows this task did not commit."""
    if overwrite or rows_now == 0:
        return
    if record is None:
        why = f"it holds {rows_now} rows that this provider did not commit"
    elif not dirs.same_owner(record.owner, owner):
        who = "/".join(str(record.owner.get(k)) for k in ("dag_id", "task_id", "map_index"))
        why = f"its rows were committed by another task ({who}, {record.where})"
    elif record.rows != rows_now:
        why = (f"it holds {rows_now} rows, but this task's last commit ({record.where}) wrote {record.rows}: "
               "another writer changed it since")  # fmt: skip
    else:
        return
    raise TableOutputError(
        f"{table.display()}: not replacing this slice: {why}. Pass overwrite=True to replace it anyway, "
        "or write another slice (partition)"
    )


# -- Iceberg -----------------------------------------------------------------------------------


def _iceberg_filter(table: TableSpec) -> Any:
    from pyiceberg.expressions import AlwaysTrue, And, EqualTo

    terms = [EqualTo(c, v) for c, v in sorted(table.partition.items())]
    if not terms:
        return AlwaysTrue()
    return terms[0] if len(terms) == 1 else And(*terms)


def _iceberg_record(ice: Any, key: str) -> Record | None:
    snapshots = sorted(ice.snapshots(), key=lambda s: s.sequence_number or 0, reverse=True)
    for snapshot in snapshots:
        props = snapshot.summary.additional_properties if snapshot.summary else {}
        if props.get(SLICE_KEY) == key and OWNER_KEY in props and ROWS_KEY in props:
            return Record(json.loads(props[OWNER_KEY]), int(props[ROWS_KEY]), f"snapshot {snapshot.snapshot_id}")
    return None


def _iceberg_once(table: TableSpec, catalog: Any, files: list[str], schema: Any, props: dict[str, str],
                  owner: dict[str, Any], overwrite: bool, written: list[str]) -> dict[str, Any]:  # fmt: skip
    from pyiceberg.exceptions import NoSuchTableError
    from pyiceberg.io.pyarrow import _dataframe_to_data_files

    try:
        ice = catalog.load_table(table.identifier)
        tx = ice.transaction()
        created = False
    except NoSuchTableError:
        namespace, _ = _split(table.identifier)
        ensure_namespace(catalog, namespace)
        tx = catalog.create_table_transaction(table.identifier, schema=schema)
        if table.partition:
            with tx.update_spec() as spec:
                for column in table.partition:
                    spec.add_identity(column)
        ice, created = None, True
    if ice is not None:
        rows_now = ice.scan(row_filter=_iceberg_filter(table)).count()
        check_slice_owned(table, _iceberg_record(ice, table.slice_key()), rows_now, owner, overwrite)
        check_schema(table, ice.schema().as_arrow(), schema, "this run's rows")
        if any(f.name not in ice.schema().as_arrow().names for f in schema):
            with tx.update_schema() as update:
                update.union_by_name(schema)
        with warnings.catch_warnings():  # "Delete operation did not match any records": a new slice
            warnings.simplefilter("ignore", UserWarning)
            tx.delete(_iceberg_filter(table), snapshot_properties=props)
    io = ice.io if ice is not None else tx._table.io  # a table being created: its staged table's FileIO
    data_files = []
    for path in files:
        rows = slice_rows(table, path, schema)
        if rows.num_rows == 0:
            continue
        for data_file in _dataframe_to_data_files(table_metadata=tx.table_metadata, df=rows, io=io):
            written.append(data_file.file_path)
            data_files.append(data_file)
    if data_files:
        with tx.update_snapshot(snapshot_properties=props).fast_append() as append:
            for data_file in data_files:
                append.append_data_file(data_file)
    committed = tx.commit_transaction()
    snapshot = committed.current_snapshot()
    return {"snapshot_id": snapshot.snapshot_id if snapshot else None, "created": created,
            "location": committed.location()}  # fmt: skip


def _remove(paths: list[str]) -> None:
    for path in paths:
        try:
            fs, local = dirs.location(path)
            fs.rm(local)
        except Exception:  # noqa: BLE001 (an unreferenced file: harmless if it stays)
            pass


def commit_iceberg(table: TableSpec, files: list[str], rows: int, run: dict[str, Any], overwrite: bool,
                   secrets: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    from pyiceberg.exceptions import CommitFailedException, TableAlreadyExistsError

    catalog = load_catalog(table, secrets)
    schema = staged_schema(table, files)
    props = {OWNER_KEY: json.dumps(dirs.owner_of(run), sort_keys=True), SLICE_KEY: table.slice_key(), ROWS_KEY: str(rows),
             SUBMISSION_KEY: str(run.get("submission_id") or "")}  # fmt: skip
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        written: list[str] = []
        try:
            done = _iceberg_once(table, catalog, files, schema, props, dirs.owner_of(run), overwrite, written)
        except Exception as err:
            if not isinstance(err, (CommitFailedException, TableAlreadyExistsError)) and not _transient(err):
                _remove(written)
                raise
            _remove(written)  # this attempt's data files: never referenced
            if attempt == COMMIT_ATTEMPTS:
                raise TableOutputError(f"{table.display()}: {COMMIT_ATTEMPTS} commits conflicted with other writers; "
                                       f"last: {err}") from None  # fmt: skip
            pause = min(10.0, 0.2 * 2**attempt) * random.uniform(0.5, 1.0)
            log.info("%s: another writer committed first (%s); retrying on the new table state in %.1f s",
                     table.display(), type(err).__name__, pause)  # fmt: skip
            time.sleep(pause)
            continue
        except BaseException:  # stopped (KeyboardInterrupt, SystemExit): the files go, the table is as it was
            _remove(written)
            raise
        return {"format": "iceberg", "table": table.identifier, "catalog": table.catalog_name,
                "partition": dict(table.partition), "snapshot_id": done["snapshot_id"], "rows": rows,
                "location": done["location"], "attempts": attempt}  # fmt: skip
    raise AssertionError("unreachable")


# -- Delta -------------------------------------------------------------------------------------


def _delta_predicate(table: TableSpec) -> str | None:
    if not table.partition:
        return None
    return " AND ".join(f"\"{c}\" = '{v}'" for c, v in sorted(table.partition.items()))


def _delta_record(dt: Any, key: str) -> Record | None:
    for entry in dt.history():
        if entry.get(SLICE_KEY) == key and OWNER_KEY in entry and ROWS_KEY in entry:
            return Record(json.loads(entry[OWNER_KEY]), int(entry[ROWS_KEY]), f"version {entry.get('version')}")
    return None


def _batches(table: TableSpec, files: list[str], schema: Any) -> Iterator[Any]:
    for path in files:
        yield from slice_rows(table, path, schema).to_batches()


def commit_delta(table: TableSpec, files: list[str], rows: int, run: dict[str, Any], overwrite: bool,
                 secrets: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    import pyarrow as pa
    import pyarrow.dataset as pds
    from deltalake import CommitProperties, DeltaTable, write_deltalake
    from deltalake.exceptions import CommitFailedError, TableNotFoundError

    options = storage_options(table, secrets) or None
    schema = staged_schema(table, files)
    metadata = {OWNER_KEY: json.dumps(dirs.owner_of(run), sort_keys=True), SLICE_KEY: table.slice_key(), ROWS_KEY: str(rows),
                SUBMISSION_KEY: str(run.get("submission_id") or "")}  # fmt: skip
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            dt = DeltaTable(table.identifier, storage_options=options)
        except TableNotFoundError:
            dt = None
        if dt is not None:
            existing = pa.schema(dt.schema().to_arrow())
            check_schema(table, existing, schema, "this run's rows")
            expr = None
            for column, value in table.partition.items():
                term = pds.field(column) == value
                expr = term if expr is None else expr & term
            rows_now = dt.to_pyarrow_dataset().count_rows(filter=expr) if expr is not None else dt.to_pyarrow_dataset().count_rows()
            check_slice_owned(table, _delta_record(dt, table.slice_key()), rows_now, dirs.owner_of(run), overwrite)
            # Columns the table has and this run does not: null here (the table's type).
            schema = pa.schema([*schema, *(f for f in existing if f.name not in schema.names)])
        reader = pa.RecordBatchReader.from_batches(schema, _batches(table, files, schema))
        try:
            # A table not there yet: appended to (creating it), never overwritten: another
            # writer may create it first, and an overwrite without predicate would replace
            # its slices.
            write_deltalake(
                dt if dt is not None else table.identifier, reader, mode="overwrite" if dt is not None else "append",
                predicate=_delta_predicate(table) if dt is not None else None,
                partition_by=list(table.partition) or None, schema_mode="merge", storage_options=options,
                commit_properties=CommitProperties(custom_metadata=metadata, max_commit_retries=COMMIT_ATTEMPTS),
            )  # fmt: skip
        except CommitFailedError as err:  # the log moved on in a way delta-rs does not retry by itself
            if attempt == COMMIT_ATTEMPTS:
                raise TableOutputError(f"{table.display()}: {COMMIT_ATTEMPTS} commits conflicted with other writers; "
                                       f"last: {err}") from None  # fmt: skip
            pause = min(10.0, 0.2 * 2**attempt) * random.uniform(0.5, 1.0)
            log.info("%s: another writer committed first (%s); retrying in %.1f s", table.display(), err, pause)
            time.sleep(pause)
            continue
        version = DeltaTable(table.identifier, storage_options=options).version()
        return {"format": "delta", "table": table.identifier, "partition": dict(table.partition),
                "version": version, "rows": rows, "location": table.identifier, "attempts": attempt}  # fmt: skip
    raise AssertionError("unreachable")


def commit(table: TableSpec, files: list[str], rows: int, run: dict[str, Any], overwrite: bool,
           secrets: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    """Replace the table's slice with the staged files' rows in one commit; returns what was
    committed (table, snapshot or version, partition, rows)."""
    how = commit_iceberg if table.format == "iceberg" else commit_delta
    started = time.monotonic()
    done = how(table, files, rows, run, overwrite, secrets)
    which = f"snapshot {done['snapshot_id']}" if table.format == "iceberg" else f"version {done['version']}"
    log.info("committed %d rows to %s as %s in %.1f s", rows, table.display(), which, time.monotonic() - started)
    return done
