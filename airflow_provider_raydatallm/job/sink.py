"""The end of the job's one streaming pass (cluster side).

Each processed block is split where it is: its good rows go to the output's staging
directory and its error rows (as error records) to the error output's, each as one file;
what travels back to the driver is a one-row tally of the block (counts, tokens, the first
error records). Nothing is materialized: the object store holds only blocks in flight.

With resumable runs the sink also records each block whose good rows it wrote (their ids
and counts) in the staging directory's ``_blocks/``, after the data file is complete: a
retry of the task skips exactly the rows of recorded blocks (``resume.py``).
"""

from __future__ import annotations

import json
import posixpath
import uuid
from typing import Any

from airflow_provider_raydatallm.job import commit, rows

EXTENSIONS = {"parquet": "parquet", "jsonl": "jsonl", "csv": "csv"}
FIRST_ERRORS = 5
TALLY_COLUMNS = ("ok", "errors", "not_inferred", "i", "o")


def put_whole(fs: Any, path: str, data: bytes) -> None:
    """Write a small file so that no reader (nor a retry after a kill) sees half of it."""
    if commit.is_local(fs):
        tmp = f"{posixpath.dirname(path)}/.tmp-{uuid.uuid4().hex}"
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    else:  # one object PUT
        fs.pipe_file(path, data)


def write_table(table: Any, uri: str, fmt: str) -> str:
    """Write one Arrow table as one new file under ``uri``; return its path. The file shows
    up complete or not at all: on local disk it is written beside the staging directory's
    block records and renamed in; an object store makes an upload visible when it ends."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    path = path.rstrip("/")
    fs.makedirs(path, exist_ok=True)
    name = f"{path}/part-{uuid.uuid4().hex}.{EXTENSIONS[fmt]}"
    target, name = name, (f"{path}/{commit.PROGRESS_DIR}/.tmp-{uuid.uuid4().hex}" if commit.is_local(fs) else name)
    if target != name:
        fs.makedirs(posixpath.dirname(name), exist_ok=True)
    with fs.open(name, "wb") as handle:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, handle)
        elif fmt == "csv":
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, handle)
        else:
            for record in table.to_pylist():
                handle.write((json.dumps(record, default=str) + "\n").encode())
    if target != name:
        fs.mv(name, target)
    return target


def record_block(ok_uri: str, written: str, ok_rows: list[dict[str, Any]], tally: dict[str, int]) -> None:
    """Record a written block of good rows (file, ids, counts) for a retry to skip."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(ok_uri)
    body = {"file": posixpath.basename(written), "ids": [str(r.get(rows.ROW_ID, "")) for r in ok_rows], **tally}
    put_whole(fs, f"{path.rstrip('/')}/{commit.PROGRESS_DIR}/{uuid.uuid4().hex}.json", json.dumps(body).encode())


class WriteBlock:
    """Split one processed block into output rows and error records, write both, and
    return the block's tally."""

    def __init__(self, ok_uri: str, error_uri: str, fmt: str, columns: list[str], record: bool = False):
        """``record``: note each written block in ``_blocks/`` (resumable runs)."""
        self.ok_uri, self.error_uri, self.fmt, self.columns = ok_uri, error_uri, fmt, columns
        self.record = record

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        records = table.to_pylist()
        good = [not rows.is_error(r) for r in records]
        ok_rows = [r for r, g in zip(records, good) if g]
        errors = [rows.ToErrorRecord(self.columns)(r) for r, g in zip(records, good) if not g]
        tally = {
            "ok": len(ok_rows),
            "not_inferred": sum(r.get(rows.INFERRED) is not True for r in ok_rows),
            "i": sum(int(r.get(rows.IN_TOKENS) or 0) for r in ok_rows),
            "o": sum(int(r.get(rows.OUT_TOKENS) or 0) for r in ok_rows),
        }
        if ok_rows:
            kept = table.filter(pa.array(good))
            kept = kept.drop_columns([c for c in rows.INTERNAL_COLUMNS if c in kept.column_names])
            written = write_table(kept, self.ok_uri, self.fmt)
            if self.record:
                record_block(self.ok_uri, written, ok_rows, tally)
        if errors:
            write_table(pa.Table.from_pylist(errors), self.error_uri, self.fmt)
        return pa.table(
            {
                **{key: [value] for key, value in tally.items()},
                "errors": [len(errors)],
                "first_errors": [json.dumps(errors[:FIRST_ERRORS], default=str)],
            }
        )


def totals(tallies: list[dict[str, Any]]) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """The job's counts and its first error records, from the blocks' tallies."""
    counts = {key: sum(int(t[key]) for t in tallies) for key in TALLY_COLUMNS}
    first: list[dict[str, Any]] = []
    for tally in tallies:
        first.extend(json.loads(tally["first_errors"] or "[]"))
    first.sort(key=lambda e: (len(str(e.get("row_id"))), str(e.get("row_id"))))
    return counts, first[:FIRST_ERRORS]
