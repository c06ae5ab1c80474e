"""The end of the job's one streaming pass (cluster side).

Each processed block is split where it is: its good rows go to the output's staging
directory and its error rows (as error records) to the error output's, each as one file
named after the block (``block-<hash of its row ids>``): when Ray runs a block's write
again (a worker died after writing it), the second write replaces the first instead of
adding a copy. What travels back to the driver is a one-row tally of the block: counts,
tokens, the names of the files it wrote, the first error records. The commit takes exactly
the files the tallies name. Nothing is materialized: the object store holds only blocks in
flight.

The good rows keep exactly the columns the postprocess returned (in a block with error rows
Ray Data adds the error rows' columns to every row; they go), and a value Parquet cannot
hold fails the job naming its column and row instead of being written as a Ray-only pickle.

With resumable runs the sink also records each block whose good rows it wrote (their ids
and counts) in the staging directory's ``_blocks/``, after the data file is complete: a
retry of the task skips exactly the rows of recorded blocks (``resume.py``).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
import uuid
from typing import Any

from airflow_provider_raydatallm.job import commit, rows

EXTENSIONS = {"parquet": "parquet", "jsonl": "jsonl", "csv": "csv"}
FIRST_ERRORS = 5
MAX_MODELS = 5  # model names kept for the report
COUNTS = ("ok", "errors", "not_inferred", "input_tokens", "output_tokens")
# Arrow extension types of Ray's that only Ray reads back.
RAY_PICKLE_TYPES = ("ray.data.arrow_pickled_object",)
# Ray's tensor types (fixed and variable shaped): written as plain lists of numbers.
RAY_EXTENSION_PREFIX = "ray.data.arrow_"


class UnstorableValueError(ValueError):
    """A postprocess returned a value the output format cannot hold."""


def block_name(row_ids: list[str], fmt: str) -> str:
    """A block's file name, the same every time the same rows are written: a hash of its
    row ids, and of the index Ray gives the task (two blocks of identical rows differ)."""
    digest = hashlib.sha1("\n".join(sorted(row_ids)).encode())
    index = _task_index()
    if index is not None:
        digest.update(f"\0task {index}".encode())
    return f"block-{digest.hexdigest()[:20]}.{EXTENSIONS[fmt]}"


def _task_index() -> int | None:
    """The index of the Ray Data task running this block (kept when Ray retries the task)."""
    try:
        from ray.data._internal.execution.interfaces.task_context import TaskContext

        context = TaskContext.get_current()
    except Exception:  # another Ray release: the row ids alone name the block
        return None
    return getattr(context, "task_idx", None) if context is not None else None


def write_table(table: Any, uri: str, name: str, fmt: str) -> str:
    """Write one Arrow table as ``name`` under ``uri``, whole or not at all: on local disk
    it is written beside the block records and renamed in (replacing an earlier write of
    the same block); an object store makes an upload visible when it ends."""
    fs, path = commit.location(uri)
    fs.makedirs(path, exist_ok=True)
    target = f"{path}/{name}"
    local = commit.is_local(fs)
    written = f"{path}/{commit.PROGRESS_DIR}/.tmp-{uuid.uuid4().hex}" if local else target
    if local:
        fs.makedirs(posixpath.dirname(written), exist_ok=True)
    with fs.open(written, "wb") as handle:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, handle)
        elif fmt == "csv":
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, handle)
        else:
            for record in table.to_pylist():
                handle.write((json.dumps(rows.jsonable(record), default=str, ensure_ascii=False) + "\n").encode())
    if local:
        fs.mv(written, target)
    return name


def write_empty_errors(uri: str, fmt: str) -> str | None:
    """An error output without rows still has its columns: one empty file with the error
    schema (Parquet and CSV; an empty JSON-lines file has nothing to carry them)."""
    if fmt == "jsonl":
        return None
    return write_table(rows.error_schema().empty_table(), uri, f"block-empty.{EXTENSIONS[fmt]}", fmt)


def record_block(ok_uri: str, name: str, ok_rows: list[dict[str, Any]], tally: dict[str, int]) -> None:
    """Record a written block of good rows (file, ids, counts) for a retry to skip; named
    after the block, so a write Ray runs twice leaves one record."""
    fs, path = commit.location(ok_uri)
    body = {"file": name, "ids": [str(r.get(rows.ROW_ID, "")) for r in ok_rows], **tally}
    record = f"{path}/{commit.PROGRESS_DIR}/{name.rsplit('.', 1)[0]}.json"
    commit.put_whole(fs, record, json.dumps(body).encode())


def output_columns(table: Any) -> list[str]:
    """The columns the postprocess returned, in its order, over the block's good rows."""
    if rows.COLUMNS not in table.column_names:
        return [c for c in table.column_names if c not in rows.INTERNAL_COLUMNS]
    names: dict[str, None] = {}
    for listed in table.column(rows.COLUMNS).to_pylist():
        names.update(dict.fromkeys(json.loads(listed or "[]")))
    return [n for n in names if n in table.column_names and n not in rows.INTERNAL_COLUMNS]


def storable(table: Any, row_ids: list[str], fmt: str) -> Any:
    """The table with Ray's tensor columns as plain lists; a pickled-object column fails,
    naming the column and the first row holding such a value."""
    import pyarrow as pa

    for index, column in enumerate(table.schema):
        kind = getattr(column.type, "extension_name", "")
        if kind in RAY_PICKLE_TYPES:
            values = table.column(index).to_pylist()
            at = next((i for i, v in enumerate(values) if v is not None), 0)
            raise UnstorableValueError(
                f"postprocess returned a {type(values[at]).__name__} in column {column.name!r} (row "
                f"{row_ids[at] if at < len(row_ids) else '?'}), which {fmt} cannot store (Ray would write it as a "
                "pickle only Ray can read). Return str, int, float, bool, None, or lists and dicts of those."
            )
        if kind.startswith(RAY_EXTENSION_PREFIX):
            plain = [v.tolist() if hasattr(v, "tolist") else v for v in table.column(index).to_pylist()]
            table = table.set_column(index, column.name, pa.array(plain))
    return table


def _drifted(have: Any, want: Any) -> bool:
    """Whether ``have`` is what Ray's row conversion makes of an input column of type
    ``want`` passed through the callables: a timestamp without its zone or in another unit,
    a decimal of another precision, integers as floats (a block with nulls goes through
    pandas), an all-null block's null type, or a nested type holding one of those."""
    import pyarrow as pa

    t = pa.types
    if t.is_null(have):
        return True
    if t.is_timestamp(have) and (t.is_timestamp(want) or t.is_date(want)):
        return True
    if t.is_decimal(have) and t.is_decimal(want):
        return True
    if t.is_integer(want) and (t.is_floating(have) or t.is_integer(have)):
        return True
    if t.is_dictionary(want) and have == want.value_type:  # Ray decodes dictionary columns
        return True
    if t.is_map(want) and t.is_list(have):  # Ray hands maps over as lists of [key, value]
        return True
    nested = (t.is_list, t.is_large_list, t.is_struct, t.is_map)
    return any(kind(have) and kind(want) for kind in nested)


def _map_from_pairs(column: Any, want: Any) -> Any:
    """A map column rebuilt from the lists of [key, value] pairs Ray made of it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    pairs = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    inner = pairs.flatten()
    keys = pc.cast(pc.list_element(inner, 0), want.key_type)
    items = pc.cast(pc.list_element(inner, 1), want.item_type)
    return pa.MapArray.from_arrays(pairs.offsets, keys, items, mask=pc.is_null(pairs) if pairs.null_count else None)


def passed_through(records: list[dict[str, Any]]) -> set[str] | None:
    """The input columns every row of a block returned unchanged (``rows.PASSED``); None
    when the rows carry no such record (restore every column, as before it existed)."""
    found: set[str] | None = None
    for record in records:
        listed = record.get(rows.PASSED)
        if listed is None:
            return None
        names = set(json.loads(listed))
        found = names if found is None else found & names
    return found or set()


def restore_types(table: Any, input_types: bytes, only: set[str] | None = None) -> Any:
    """Give a column the postprocess passed through (returned unchanged in every row of the
    block: ``only``) its input type back when Ray's conversion changed it (``_drifted``): a
    time-zone-aware timestamp keeps its zone (Ray hands back naive UTC values), a decimal
    its precision, an integer column with nulls stays integer. A column the postprocess
    changed, even under an input column's name, is written as the postprocess returned it;
    so is one the cast would change."""
    if not input_types:
        return table
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = pa.ipc.read_schema(pa.py_buffer(input_types))
    for index, field in enumerate(table.schema):
        if field.name not in schema.names or (only is not None and field.name not in only):
            continue
        want = schema.field(field.name).type
        if field.type == want or not _drifted(field.type, want):
            continue
        try:
            if pa.types.is_map(want) and pa.types.is_list(field.type):
                column = _map_from_pairs(table.column(index), want)
            else:
                column = pc.cast(table.column(index), want, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            continue
        table = table.set_column(index, pa.field(field.name, want), column)
    return table


class WriteBlock:
    """Split one processed block into output rows and error records, write both, and
    return the block's tally."""

    def __init__(self, ok_uri: str, error_uri: str, fmt: str, columns: list[str], record: bool = False,
                 input_types: bytes = b""):  # fmt: skip
        """``record``: note each written block in ``_blocks/`` (resumable runs);
        ``input_types``: the input's Arrow schema, serialized (``restore_types``)."""
        self.ok_uri, self.error_uri, self.fmt, self.columns = ok_uri, error_uri, fmt, columns
        self.record, self.input_types = record, input_types

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        records = table.to_pylist()
        good = [not rows.is_error(r) for r in records]
        ok_rows = [r for r, g in zip(records, good) if g]
        errors = [rows.ToErrorRecord(self.columns)(r) for r, g in zip(records, good) if not g]
        tally = {
            "ok": len(ok_rows),
            "not_inferred": sum(r.get(rows.INFERRED) is not True for r in ok_rows),
            "input_tokens": sum(int(r.get(rows.IN_TOKENS) or 0) for r in ok_rows),
            "output_tokens": sum(int(r.get(rows.OUT_TOKENS) or 0) for r in ok_rows),
        }
        name = block_name([str(r.get(rows.ROW_ID, "")) for r in records], self.fmt)
        ok_file = error_file = ""
        if ok_rows:
            kept = table.filter(pa.array(good))
            kept = storable(kept.select(output_columns(kept)), [str(r.get(rows.ROW_ID)) for r in ok_rows], self.fmt)
            kept = restore_types(kept, self.input_types, passed_through(ok_rows))
            ok_file = write_table(kept, self.ok_uri, name, self.fmt)
            if self.record:
                record_block(self.ok_uri, name, ok_rows, tally)
        if errors:
            error_file = write_table(pa.Table.from_pylist(errors, schema=rows.error_schema()), self.error_uri, name, self.fmt)
        return pa.table(
            {
                **{key: [value] for key, value in tally.items()},
                **{key: pa.array([value], pa.float64()) for key, value in block_times(records).items()},
                "errors": [len(errors)],
                "ok_file": [ok_file],
                "error_file": [error_file],
                "first_errors": [json.dumps(errors[:FIRST_ERRORS], default=str)],
                "models": [json.dumps(sorted({str(r.get(rows.MODEL_NAME) or "") for r in ok_rows} - {""})[:MAX_MODELS])],
            }
        )


def block_times(records: list[dict[str, Any]]) -> dict[str, float | None]:
    """When the block's first rows entered the processor and left it, when it was written,
    and when the engine began the first of its rows (job/phases.py)."""
    ins = [r[rows.T_IN] for r in records if r.get(rows.T_IN) is not None]
    outs = [r[rows.T_OUT] for r in records if r.get(rows.T_OUT) is not None]
    # When the engine began each row it timed: the earliest is when it took its first request.
    began = [r[rows.T_OUT] - r[rows.ENGINE_SECONDS] for r in records
             if r.get(rows.T_OUT) is not None and r.get(rows.ENGINE_SECONDS) is not None]  # fmt: skip
    return {
        "t_in": float(min(ins)) if ins else None, "t_out": float(min(outs)) if outs else None,
        "t_written": time.time(), "t_engine": float(min(began)) if began else None,
    }  # fmt: skip


def models(tallies: list[dict[str, Any]]) -> list[str]:
    """The model names the endpoint reported across the blocks (HTTP processor, Serve), at
    most MAX_MODELS."""
    found: set[str] = set()
    for tally in tallies:
        found.update(json.loads(tally.get("models") or "[]"))
    return sorted(found)[:MAX_MODELS]


def totals(tallies: list[dict[str, Any]]) -> tuple[dict[str, int], list[dict[str, Any]], dict[str, list[str]]]:
    """The job's counts, its first error records, and the files the blocks wrote (``ok``,
    ``errors``: staged names), from the blocks' tallies."""
    counts = {key: sum(int(t[key]) for t in tallies) for key in COUNTS}
    first: list[dict[str, Any]] = []
    files: dict[str, list[str]] = {"ok": [], "errors": []}
    for tally in tallies:
        first.extend(json.loads(tally["first_errors"] or "[]"))
        for kind, key in (("ok", "ok_file"), ("errors", "error_file")):
            if tally.get(key):
                files[kind].append(tally[key])
    first.sort(key=lambda e: (len(str(e.get("row_id"))), str(e.get("row_id"))))
    return counts, first[:FIRST_ERRORS], files
