"""The end of the job's one streaming pass (cluster side).

Each processed block is split where it is: its good rows go to the output's staging
directory and its error rows (as error records) to the error output's, each as one file;
what travels back to the driver is a one-row tally of the block (counts, tokens, the first
error records). Nothing is materialized: the object store holds only blocks in flight.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from airflow_provider_raydatallm.job import rows

EXTENSIONS = {"parquet": "parquet", "jsonl": "jsonl", "csv": "csv"}
FIRST_ERRORS = 5
TALLY_COLUMNS = ("ok", "errors", "not_inferred", "i", "o")


def write_table(table: Any, uri: str, fmt: str) -> str:
    """Write one Arrow table as one new file under ``uri``; return its path."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    fs.makedirs(path, exist_ok=True)
    name = f"{path.rstrip('/')}/part-{uuid.uuid4().hex}.{EXTENSIONS[fmt]}"
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
    return name


class WriteBlock:
    """Split one processed block into output rows and error records, write both, and
    return the block's tally."""

    def __init__(self, ok_uri: str, error_uri: str, fmt: str, columns: list[str]):
        self.ok_uri, self.error_uri, self.fmt, self.columns = ok_uri, error_uri, fmt, columns

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        records = table.to_pylist()
        good = [not rows.is_error(r) for r in records]
        ok_rows = [r for r, g in zip(records, good) if g]
        errors = [rows.ToErrorRecord(self.columns)(r) for r, g in zip(records, good) if not g]
        if ok_rows:
            kept = table.filter(pa.array(good))
            kept = kept.drop_columns([c for c in rows.INTERNAL_COLUMNS if c in kept.column_names])
            write_table(kept, self.ok_uri, self.fmt)
        if errors:
            write_table(pa.Table.from_pylist(errors), self.error_uri, self.fmt)
        return pa.table(
            {
                "ok": [len(ok_rows)],
                "errors": [len(errors)],
                "not_inferred": [sum(r.get(rows.INFERRED) is not True for r in ok_rows)],
                "i": [sum(int(r.get(rows.IN_TOKENS) or 0) for r in ok_rows)],
                "o": [sum(int(r.get(rows.OUT_TOKENS) or 0) for r in ok_rows)],
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
