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
from airflow_provider_raydatallm.job.spec import JobSpec, TableSpec, secret_property_values

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


def scrub(text: str, props: dict[str, str]) -> str:
    """``text`` without the secret values of ``props``: catalog errors may quote them."""
    for secret in secret_property_values(props):
        text = text.replace(secret, "***")
    return text


def load_catalog(table: TableSpec, secrets: dict[str, str]) -> Any:
    """The table's pyiceberg catalog; an error that names the catalog never quotes its secrets."""
    from pyiceberg.catalog import load_catalog as load

    props = catalog_properties(table, secrets)
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            return load(table.catalog_name, **props)
        except Exception as err:
            if _transient(err) and attempt < COMMIT_ATTEMPTS:
                time.sleep(min(5.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.0))
                continue
            raise TableOutputError(
                f"{table.display()}: cannot load catalog {table.catalog_name!r}: {type(err).__name__}: "
                f"{scrub(str(err), props)}"
            ) from None
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
    """Rows of ``data_type`` may be written into a column of ``table_type`` (cast to it): the
    same type, a narrower integer or float, an integer into a float, text into text, any
    timestamp into a timestamp, nulls into anything."""
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


def _normalized(arrow_type: Any) -> Any:
    """A new column's type as both table formats store it: no null type (text), timestamps
    in microseconds, zoned ones in UTC."""
    import pyarrow as pa

    t = pa.types
    if t.is_null(arrow_type):
        return pa.string()
    if t.is_timestamp(arrow_type):
        return pa.timestamp("us", tz="UTC" if arrow_type.tz else None)
    if t.is_list(arrow_type) or t.is_large_list(arrow_type):
        return pa.list_(_normalized(arrow_type.value_type))
    return arrow_type


def _refuse(table: TableSpec, where: str, name: str, got: Any, have: Any) -> TableOutputError:
    return TableOutputError(
        f"{where}: column {name!r} is {_shown(got)} but {table.display()} has it as {_shown(have)}; a run's rows "
        f"are cast to the table's types only where nothing is lost (int32 -> int64, int -> double, float -> double, "
        "any timestamp): convert it in the postprocess (or declare it with columns=), or write to another table"
    )


def check_schema(table: TableSpec, existing: Any, incoming: Any, where: str) -> None:
    """Fail naming the first column whose type the table cannot take."""
    for field in incoming:
        if field.name in existing.names and not _compatible(existing.field(field.name).type, field.type):
            raise _refuse(table, where, field.name, field.type, existing.field(field.name).type)


_ALIASES = {"int": "int64", "integer": "int64", "long": "int64", "str": "string", "text": "string",
            "date": "date32", "boolean": "bool", "float64": "double", "timestamp": "timestamp[us]"}  # fmt: skip


def arrow_type(name: str) -> Any:
    """An Arrow type from its name: Arrow's aliases (string, int64, double, bool, date32,
    timestamp[us]) and ``int``, ``date``, ``decimal(10,2)``, ``timestamp[us, tz=UTC]``."""
    import re

    import pyarrow as pa

    text = name.strip().lower()
    decimal = re.fullmatch(r"decimal(?:128)?\(\s*(\d+)\s*,\s*(\d+)\s*\)", text)
    if decimal:
        return pa.decimal128(int(decimal.group(1)), int(decimal.group(2)))
    stamp = re.fullmatch(r"timestamp\[(s|ms|us|ns)\s*,\s*tz\s*=\s*([^\]]+)\]", name.strip(), re.I)
    if stamp:
        return pa.timestamp(stamp.group(1).lower(), tz=stamp.group(2).strip())
    return pa.type_for_alias(_ALIASES.get(text, text))


def declared_schema(table: TableSpec) -> Any:
    import pyarrow as pa

    fields = []
    for name, type_name in (table.columns or {}).items():
        try:
            fields.append(pa.field(name, arrow_type(type_name)))
        except (ValueError, KeyError, TypeError):
            raise TableOutputError(
                f"output_table columns: {name!r} has type {type_name!r}, not a type name (string, int64, double, "
                "bool, date, timestamp[us], timestamp[us, tz=UTC], decimal(10,2), ...)"
            ) from None
    return pa.schema(fields)


def commit_schema(table: TableSpec, existing: Any | None, staged: Any) -> Any:
    """The schema the run's rows are written with: a column the table has keeps the table's
    type (the rows are cast to it; one it cannot take fails naming it), a new column gets
    the declared or the run's type (normalized), a partition column is text unless the table
    has it typed; for Delta, the table's other columns follow (null in this run's rows)."""
    import pyarrow as pa

    declared = declared_schema(table)
    fields = []
    for field in staged:
        if field.name in table.partition:
            continue
        got = declared.field(field.name).type if field.name in declared.names else field.type
        if existing is not None and field.name in existing.names:
            have = existing.field(field.name).type
            if not _compatible(have, got):
                raise _refuse(table, "this run's rows", field.name, got, have)
            fields.append(pa.field(field.name, have))
        else:
            fields.append(pa.field(field.name, _normalized(got)))
    names = {f.name for f in fields} | set(table.partition)
    for field in declared:
        if field.name not in names:
            have = existing.field(field.name).type if existing is not None and field.name in existing.names else None
            fields.append(pa.field(field.name, have or _normalized(field.type)))
    for column in table.partition:
        have = existing.field(column).type if existing is not None and column in existing.names else None
        fields.append(pa.field(column, have or pa.string()))
    if table.format == "delta" and existing is not None:
        names = {f.name for f in fields}
        fields += [f for f in existing if f.name not in names]
    return pa.schema(fields)


def partition_value(table: TableSpec, column: str, typ: Any) -> Any:
    """The slice's value of ``column`` as ``arrow_type`` (text, or an existing table's type:
    ``"2026-12-01"`` into a date column); one that does not convert fails naming it."""
    import pyarrow as pa

    try:
        return pa.array([table.partition[column]], pa.string()).cast(typ)[0]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        raise TableOutputError(
            f"{table.display()}: partition value {table.partition[column]!r} of column {column!r} does not convert "
            f"to the table's type {_shown(typ)}"
        ) from None


def existing_schema(table: TableSpec, secrets: dict[str, str]) -> Any | None:
    """The table's schema as Arrow, or None when it does not exist yet."""
    if table.format == "iceberg":
        from pyiceberg.exceptions import NoSuchTableError

        try:
            return load_catalog(table, secrets).load_table(table.identifier).schema().as_arrow()
        except NoSuchTableError:
            return None
    dt = _delta(table, secrets)
    if dt is None:
        return None
    import pyarrow as pa

    return pa.schema(dt.schema().to_arrow())


def _delta(table: TableSpec, secrets: dict[str, str]) -> Any | None:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(table.identifier, storage_options=storage_options(table, secrets) or None)
    except TableNotFoundError:
        return None


def preflight(table: TableSpec, secrets: dict[str, str], run: dict[str, Any], overwrite: bool, known_owner: bool) -> None:
    """Before inference: the catalog or store answers, the declared types are types, an
    existing table takes the declared columns and the slice's partition values (and, for
    Delta, is partitioned by the slice's columns), and the slice is this task's to replace."""
    try:
        existing = existing_schema(table, secrets)
    except TableOutputError:
        raise
    except Exception as err:  # noqa: BLE001 (the catalog's or the store's own error, named)
        raise TableOutputError(f"{table.display()}: cannot open it: {type(err).__name__}: "
                               f"{scrub(str(err), catalog_properties(table, secrets))}") from None  # fmt: skip
    declared = declared_schema(table)
    if existing is None:
        return
    check_schema(table, existing, declared, "the declared columns (output_table columns=)")
    for column in table.partition:
        if column in existing.names:
            partition_value(table, column, existing.field(column).type)
    if table.format == "delta":
        layout = list(_delta(table, secrets).metadata().partition_columns)
        if sorted(layout) != sorted(table.partition):
            raise TableOutputError(
                f"{table.display()}: the Delta table is partitioned by {layout or 'nothing'}, this run's slice by "
                f"{sorted(table.partition) or 'nothing'}: give partition= the table's columns (Delta cannot change "
                "a table's partitioning)"
            )
    check_owned(table, secrets, run, overwrite, known_owner)


# -- the rows ----------------------------------------------------------------------------------


def staged_schema(files: list[str]) -> Any:
    """The run's columns as staged (the postprocess's), unified over the staged files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schemas = []
    for path in files:
        fs, local = dirs.location(path)
        with fs.open(local, "rb") as handle:
            schemas.append(pq.read_schema(handle))
    return pa.unify_schemas(schemas, promote_options="permissive") if schemas else pa.schema([])


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
            columns.append(pa.array([partition_value(table, field.name, field.type).as_py()] * data.num_rows, field.type))
        elif field.name in data.column_names:
            try:
                columns.append(pc.cast(data[field.name], field.type, safe=not pa.types.is_timestamp(field.type)))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise TableOutputError(f"{table.display()}: column {field.name!r} does not convert to "
                                       f"{_shown(field.type)}: {err}") from None  # fmt: skip
        else:
            columns.append(pa.nulls(data.num_rows, field.type))
    return pa.table(columns, schema=schema)


# -- ownership ---------------------------------------------------------------------------------


@dataclass
class Record:
    owner: dict[str, Any]
    rows: int
    where: str  # snapshot id / version, for messages


HISTORY_LIMIT = 1000  # Delta commits searched for the slice's last record (newest first)


def check_slice_owned(table: TableSpec, record: Record | None, rows_now: int, owner: dict[str, Any], overwrite: bool,
                      known_owner: bool = False) -> None:  # fmt: skip
    """Refuse to replace a slice holding rows this task did not commit. ``known_owner``: the
    slice's work directory says this task committed it last (its table record may be gone:
    Iceberg snapshots expired, Delta log entries cleaned up)."""
    if overwrite or rows_now == 0:
        return
    if record is None:
        if known_owner:
            return
        why = f"it holds {rows_now} rows that this provider did not commit"
    elif not dirs.same_owner(record.owner, owner):
        why = f"its rows were committed by {dirs.describe_owner(record.owner)} ({record.where})"
    elif record.rows != rows_now:
        why = (f"it holds {rows_now} rows, but this task's last commit ({record.where}) wrote {record.rows}: "
               "another writer changed it since")  # fmt: skip
    else:
        return
    raise TableOutputError(
        f"{table.display()}: not replacing this slice: {why}. Pass overwrite=True to replace it anyway, "
        "or write another slice (partition)"
    )


def _iceberg_filter(table: TableSpec, names: list[str] | None = None) -> Any:
    """The slice as a row filter; None when the table lacks one of its columns (no row of
    the table can be in the slice)."""
    from pyiceberg.expressions import AlwaysTrue, And, EqualTo

    if names is not None and any(c not in names for c in table.partition):
        return None
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


def _iceberg_state(table: TableSpec, ice: Any) -> tuple[int, Record | None]:
    row_filter = _iceberg_filter(table, ice.schema().as_arrow().names)
    rows_now = ice.scan(row_filter=row_filter).count() if row_filter is not None else 0
    return rows_now, _iceberg_record(ice, table.slice_key())


def _delta_state(table: TableSpec, dt: Any) -> tuple[int, Record | None]:
    import pyarrow.dataset as pds

    import pyarrow as pa

    schema = pa.schema(dt.schema().to_arrow())
    if any(c not in schema.names for c in table.partition):
        return 0, None
    expr = None
    for column in table.partition:  # the value as the column's type ("2026-12-01" into a date column)
        term = pds.field(column) == partition_value(table, column, schema.field(column).type)
        expr = term if expr is None else expr & term
    rows_now = dt.to_pyarrow_dataset().count_rows(filter=expr)
    return rows_now, _delta_record(dt, table.slice_key())


def check_owned(table: TableSpec, secrets: dict[str, str], run: dict[str, Any], overwrite: bool, known_owner: bool) -> None:
    """The slice is this task's to replace (see ``check_slice_owned``); read from the table."""
    if overwrite:
        return
    if table.format == "iceberg":
        from pyiceberg.exceptions import NoSuchTableError

        try:
            ice = load_catalog(table, secrets).load_table(table.identifier)
        except NoSuchTableError:
            return
        rows_now, record = _iceberg_state(table, ice)
    else:
        dt = _delta(table, secrets)
        if dt is None:
            return
        rows_now, record = _delta_state(table, dt)
    check_slice_owned(table, record, rows_now, dirs.owner_of(run), overwrite, known_owner)


# -- Iceberg -----------------------------------------------------------------------------------


@dataclass
class _Written:
    """Data files written for a commit, and the table state they were written for."""

    files: list[Any]
    paths: list[str]
    state: tuple[Any, ...]  # the table (uuid), schema and partition spec they were written for


def _state(tx: Any) -> tuple[Any, ...]:
    meta = tx.table_metadata
    # The schema itself, not only its id: two writers' schema 1 may hold other columns or ids.
    return str(meta.table_uuid), meta.current_schema_id, meta.default_spec_id, meta.schema()


def _write_files(table: TableSpec, tx: Any, io: Any, files: list[str], schema: Any) -> _Written:
    from pyiceberg.io.pyarrow import _dataframe_to_data_files

    written = _Written([], [], _state(tx))
    try:
        for path in files:
            rows = slice_rows(table, path, schema)
            if rows.num_rows == 0:
                continue
            for data_file in _dataframe_to_data_files(table_metadata=tx.table_metadata, df=rows, io=io):
                written.paths.append(data_file.file_path)
                written.files.append(data_file)
    except BaseException:
        _remove(written.paths)  # never referenced
        raise
    return written


def _iceberg_attempt(table: TableSpec, catalog: Any, files: list[str], staged: Any, props: dict[str, str],
                     run: dict[str, Any], overwrite: bool, known_owner: bool, written: _Written | None) -> tuple[Any, _Written, Any]:  # fmt: skip
    """One attempt: (the transaction ready to commit, the data files, whether created).
    Data files written by an earlier attempt are reused when the table's schema and
    partition spec did not change since."""
    from pyiceberg.exceptions import NoSuchTableError

    try:
        ice = catalog.load_table(table.identifier)
    except NoSuchTableError:
        ice = None
    if ice is None:
        namespace, _ = _split(table.identifier)
        ensure_namespace(catalog, namespace)
        schema = commit_schema(table, None, staged)
        tx = catalog.create_table_transaction(table.identifier, schema=schema)
        if table.partition:
            with tx.update_spec() as spec:
                for column in table.partition:
                    spec.add_identity(column)
        io = tx._table.io  # a table being created: its staged table's FileIO
    else:
        existing = ice.schema().as_arrow()
        schema = commit_schema(table, existing, staged)
        rows_now, record = _iceberg_state(table, ice)
        check_slice_owned(table, record, rows_now, dirs.owner_of(run), overwrite, known_owner)
        tx = ice.transaction()
        if any(f.name not in existing.names for f in schema):
            with tx.update_schema() as update:
                update.union_by_name(schema)
        row_filter = _iceberg_filter(table, existing.names)
        if rows_now and row_filter is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                tx.delete(row_filter, snapshot_properties=props)
        io = ice.io
    # Reused only for the same table (a table another writer created meanwhile has its own
    # uuid and field ids), schema and partition spec.
    if written is None or written.state != _state(tx):
        if written is not None:
            _remove(written.paths)  # written for another schema or spec: written again
        written = _write_files(table, tx, io, files, schema)
    if written.files:
        with tx.update_snapshot(snapshot_properties=props).fast_append() as append:
            for data_file in written.files:
                append.append_data_file(data_file)
    return tx, written, ice is None


def _remove(paths: list[str]) -> None:
    for path in paths:
        try:
            fs, local = dirs.location(path)
            fs.rm(local)
        except Exception:  # noqa: BLE001 (an unreferenced file: harmless if it stays)
            pass


def _conflicted(table: TableSpec, err: BaseException) -> TableOutputError:
    return TableOutputError(f"{table.display()}: {COMMIT_ATTEMPTS} commits conflicted with other writers; last: {err}")


def _pause(attempt: int) -> float:
    return min(10.0, 0.2 * 2**attempt) * random.uniform(0.5, 1.0)


def commit_iceberg(table: TableSpec, files: list[str], rows: int, run: dict[str, Any], overwrite: bool,
                   secrets: dict[str, str], known_owner: bool = False) -> dict[str, Any]:  # fmt: skip
    from pyiceberg.exceptions import CommitFailedException, TableAlreadyExistsError

    catalog = load_catalog(table, secrets)
    staged = staged_schema(files)
    props = {OWNER_KEY: json.dumps(dirs.owner_of(run), sort_keys=True), SLICE_KEY: table.slice_key(), ROWS_KEY: str(rows),
             SUBMISSION_KEY: str(run.get("submission_id") or "")}  # fmt: skip
    written: _Written | None = None
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            tx, written, created = _iceberg_attempt(table, catalog, files, staged, props, run, overwrite, known_owner,
                                                    written)  # fmt: skip
        except (CommitFailedException, TableAlreadyExistsError) as err:  # created by another writer meanwhile
            if attempt == COMMIT_ATTEMPTS:
                _remove(written.paths if written else [])
                raise _conflicted(table, err) from None
            time.sleep(_pause(attempt))
            continue
        except BaseException:
            _remove(written.paths if written else [])  # nothing was committed: the files are ours alone
            raise
        try:
            committed = tx.commit_transaction()
        except (CommitFailedException, TableAlreadyExistsError) as err:  # another writer first: nothing of ours landed
            if attempt == COMMIT_ATTEMPTS:
                _remove(written.paths)
                raise _conflicted(table, err) from None
            pause = _pause(attempt)
            log.info("%s: another writer committed first; retrying on the new table state in %.1f s", table.display(),
                     pause)  # fmt: skip
            time.sleep(pause)
            continue
        except Exception as err:
            if _transient(err) and attempt < COMMIT_ATTEMPTS:  # the catalog's database was busy: not committed
                time.sleep(_pause(attempt))
                continue
            # The outcome is unknown (a timeout, a 5xx after the catalog may have swapped the
            # metadata): the data files stay, since the table may now reference them.
            raise TableOutputError(
                f"{table.display()}: the commit's outcome is unknown ({type(err).__name__}: "
                f"{scrub(str(err), catalog_properties(table, secrets))}); check the table's last snapshot "
                f"(summary {SUBMISSION_KEY}={run.get('submission_id')!r}) before running the task again"
            ) from None
        snapshot = _our_snapshot(committed, run)
        return {"format": "iceberg", "table": table.identifier, "catalog": table.catalog_name,
                "catalog_uri": table.catalog_uri, "partition": dict(table.partition),
                "snapshot_id": snapshot, "rows": rows, "location": committed.location(), "attempts": attempt,
                "created": created}  # fmt: skip
    raise AssertionError("unreachable")


def _our_snapshot(ice: Any, run: dict[str, Any]) -> int | None:
    """The newest snapshot this job committed (None: the run changed nothing, e.g. no rows
    into an empty slice)."""
    submission = str(run.get("submission_id") or "")
    for snapshot in sorted(ice.snapshots(), key=lambda s: s.sequence_number or 0, reverse=True):
        props = snapshot.summary.additional_properties if snapshot.summary else {}
        if props.get(SUBMISSION_KEY) == submission:
            return snapshot.snapshot_id
    return None


# -- Delta -------------------------------------------------------------------------------------


def _delta_predicate(table: TableSpec) -> str | None:
    if not table.partition:
        return None
    return " AND ".join(f"\"{c}\" = '{v}'" for c, v in sorted(table.partition.items()))


def _delta_record(dt: Any, key: str) -> Record | None:
    for entry in dt.history(limit=HISTORY_LIMIT):
        if entry.get(SLICE_KEY) == key and OWNER_KEY in entry and ROWS_KEY in entry:
            return Record(json.loads(entry[OWNER_KEY]), int(entry[ROWS_KEY]), f"version {entry.get('version')}")
    return None


def _batches(table: TableSpec, files: list[str], schema: Any) -> Iterator[Any]:
    for path in files:
        yield from slice_rows(table, path, schema).to_batches()


def commit_delta(table: TableSpec, files: list[str], rows: int, run: dict[str, Any], overwrite: bool,
                 secrets: dict[str, str], known_owner: bool = False) -> dict[str, Any]:  # fmt: skip
    import pyarrow as pa
    from deltalake import CommitProperties, write_deltalake
    from deltalake.exceptions import CommitFailedError

    options = storage_options(table, secrets) or None
    staged = staged_schema(files)
    metadata = {OWNER_KEY: json.dumps(dirs.owner_of(run), sort_keys=True), SLICE_KEY: table.slice_key(), ROWS_KEY: str(rows),
                SUBMISSION_KEY: str(run.get("submission_id") or "")}  # fmt: skip
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        dt = _delta(table, secrets)
        if dt is not None:
            schema = commit_schema(table, pa.schema(dt.schema().to_arrow()), staged)
            rows_now, record = _delta_state(table, dt)
            check_slice_owned(table, record, rows_now, dirs.owner_of(run), overwrite, known_owner)
        else:
            schema = commit_schema(table, None, staged)
        reader = pa.RecordBatchReader.from_batches(schema, _batches(table, files, schema))
        try:
            # A table not there yet: appended to (creating it), never overwritten: another
            # writer may create it first, and an overwrite without predicate would replace
            # its slices. An existing table keeps its partitioning (checked before inference).
            write_deltalake(
                dt if dt is not None else table.identifier, reader, mode="overwrite" if dt is not None else "append",
                predicate=_delta_predicate(table) if dt is not None else None,
                partition_by=None if dt is not None else (list(table.partition) or None), schema_mode="merge",
                storage_options=options,
                commit_properties=CommitProperties(custom_metadata=metadata, max_commit_retries=COMMIT_ATTEMPTS),
            )  # fmt: skip
        except CommitFailedError as err:  # the log moved on in a way delta-rs does not retry by itself
            if attempt == COMMIT_ATTEMPTS:
                raise _conflicted(table, err) from None
            pause = _pause(attempt)
            log.info("%s: another writer committed first (%s); retrying in %.1f s", table.display(), err, pause)
            time.sleep(pause)
            continue
        version = _our_version(_delta(table, secrets), run)
        return {"format": "delta", "table": table.identifier, "partition": dict(table.partition),
                "version": version, "rows": rows, "location": table.identifier, "attempts": attempt}  # fmt: skip
    raise AssertionError("unreachable")


def _our_version(dt: Any, run: dict[str, Any]) -> int | None:
    """The version this job committed (a sibling's later commit may already be on top)."""
    submission = str(run.get("submission_id") or "")
    for entry in dt.history(limit=HISTORY_LIMIT):
        if entry.get(SUBMISSION_KEY) == submission:
            return entry.get("version")
    return None


def commit(table: TableSpec, files: list[str], rows: int, run: dict[str, Any], overwrite: bool,
           secrets: dict[str, str], known_owner: bool = False) -> dict[str, Any]:  # fmt: skip
    """Replace the table's slice with the staged files' rows in one commit; returns what was
    committed (table, snapshot or version, partition, rows)."""
    how = commit_iceberg if table.format == "iceberg" else commit_delta
    started = time.monotonic()
    done = how(table, files, rows, run, overwrite, secrets, known_owner)
    which = f"snapshot {done['snapshot_id']}" if table.format == "iceberg" else f"version {done['version']}"
    log.info("committed %d rows to %s as %s in %.1f s", rows, table.display(), which, time.monotonic() - started)
    return done
