"""Resumable runs (cluster side): a retry processes only the rows its failed try did not write.

The tries of one task instance since it was last cleared, with the same spec, share a
resume key (made on the Airflow side, ``RunIdentity.resume_key``); the output's staging
directory is named by it instead of by the attempt, so it outlives a failed try. The sink
writes each block's good rows as one complete file, then a record of that block
(``_blocks/<uuid>.json``: the file, the rows' ids, counts and tokens). A retry:

1. reads the records whose file is there; a data file without a record (the try died
   between the two writes) and a record without its file are removed;
2. drops the error rows of the failed try (they are processed again: a failure may have
   been transient);
3. skips input rows whose id a record names, checking that exactly as many input rows were
   skipped as were written (ids must be unique; if not, it starts from zero instead);
4. adds the records' counts to its own, so the commit and the metrics cover every row.

Only onto the same input: the staging directory holds a fingerprint of the input files
(``_input.json``: each file's size and modification time or ETag, from fsspec), written
before the first block; a retry that finds another fingerprint (the input was rewritten in
place between tries) starts from zero and says why. A run without ``id_column`` has no
stable key for a row and always starts from zero.
"""

from __future__ import annotations

import json
import logging
import posixpath
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_raydatallm.job import commit, rows

log = logging.getLogger("raydllm.job")
COUNTED = ("ok", "not_inferred", "input_tokens", "output_tokens")
INPUT_RECORD = "_input.json"


@dataclass
class Progress:
    """What earlier tries of this task instance wrote and recorded."""

    ids: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTED, 0))
    files: list[str] = field(default_factory=list)  # the staged block files the records name

    @property
    def blocks(self) -> int:
        return len(self.files)

    @property
    def rows(self) -> int:
        return self.counts["ok"]


def input_fingerprint(uris: list[str]) -> dict[str, str]:
    """file URI -> "size:version" for every file the input names (globs and directories
    expanded); the version is the object's ETag, else its modification time."""
    found: dict[str, str] = {}
    for uri in uris:
        if uri.startswith(("http://", "https://")):
            found[uri] = "unversioned"
            continue
        fs, path = commit.location(uri)
        matches = fs.glob(path) if any(c in path for c in "*?[") else [path]
        for match in matches:
            for file in (fs.find(match) if fs.isdir(match) else [match]):
                info = fs.info(file)
                version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
                found[fs.unstrip_protocol(file)] = f"{info.get('size')}:{version}"
    return found


def changed_input(output: commit.OutputDir, fingerprint: dict[str, str]) -> str:
    """Why the staged rows cannot be resumed onto this input ("" when they can), after
    recording ``fingerprint`` for a staging directory that has none yet."""
    fs, record = output.fs, f"{output.staging_path}/{INPUT_RECORD}"
    try:
        before = json.loads(fs.cat_file(record))
    except FileNotFoundError:
        if fs.exists(output.staging_path) and fs.glob(f"{output.staging_path}/{commit.PROGRESS_DIR}/*.json"):
            return "the staged rows carry no input fingerprint"
        fs.makedirs(output.staging_path, exist_ok=True)
        commit.put_whole(fs, record, json.dumps(fingerprint, sort_keys=True).encode())
        return ""
    if before == fingerprint:
        return ""
    for file in sorted(set(before) | set(fingerprint)):
        if before.get(file) != fingerprint.get(file):
            return f"input file {file} changed since the earlier try ({before.get(file)} -> {fingerprint.get(file)})"
    return "the input changed"


def load(output: commit.OutputDir) -> Progress:
    """The recorded blocks in the output's staging directory; strays are removed."""
    fs, staging = output.fs, output.staging_path
    if not fs.exists(staging):
        return Progress()
    progress, kept = Progress(), set()
    records = sorted(fs.glob(f"{staging}/{commit.PROGRESS_DIR}/*.json"))
    for path in records:
        try:
            body = json.loads(fs.cat_file(path))
        except (ValueError, FileNotFoundError):
            body = None
        if not body or not fs.exists(f"{staging}/{body.get('file')}"):
            fs.rm(path)
            continue
        kept.add(body["file"])
        progress.files.append(body["file"])
        progress.ids.update(body.get("ids") or [])
        for key in COUNTED:
            progress.counts[key] += int(body.get(key) or 0)
    for path in fs.glob(f"{staging}/block-*"):
        if posixpath.basename(path) not in kept:  # written, never recorded: the try died in between
            fs.rm(path)
    for tmp in fs.glob(f"{staging}/{commit.PROGRESS_DIR}/.tmp-*"):
        fs.rm(tmp)
    return progress


class SkipDone:
    """Drop input rows whose id an earlier try already wrote (a ``map_batches`` function).

    The ids travel as one object in the object store, fetched once per worker process."""

    _cache: dict[str, frozenset[str]] = {}

    def __init__(self, ids_ref: Any, id_column: str, columns: list[str]):
        self.ids_ref, self.id_column, self.columns = ids_ref, id_column, columns

    def _done(self) -> frozenset[str]:
        key = self.ids_ref.hex()
        if key not in SkipDone._cache:
            import ray

            SkipDone._cache.clear()
            SkipDone._cache[key] = ray.get(self.ids_ref)
        return SkipDone._cache[key]

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        done = self._done()
        values = table.to_pylist()
        keep = [rows.row_id(r, self.columns, self.id_column) not in done for r in values]
        return table.filter(pa.array(keep, type=pa.bool_()))


def staging_name(spec_run: Any, id_column: str | None, tag: str) -> tuple[str, bool]:
    """(the staging directory's name, whether this run resumes): the resume key when the
    run has one and rows have ids, else the attempt's tag."""
    if spec_run.resume_key and id_column:
        return posixpath.basename(spec_run.resume_key), True
    return tag, False
