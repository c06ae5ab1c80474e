"""Owning and committing an output directory (cluster side, through fsspec; no Ray import).

The provider owns only what it wrote. Layout of a committed output directory::

    <output>/
      <data files>                 named by Ray's writer (unique per write)
      _SUCCESS                     the manifest: JSON naming exactly the committed files
      _raydllm/staging/<tag>/      an attempt's files before its commit (hidden from readers:
                                   Parquet/Arrow/Spark readers skip names starting with "_");
                                   with resumable runs ``<tag>`` is the task instance's resume
                                   key, so a retry finds what the failed try wrote, and
                                   ``_blocks/`` in it records each written block (resume.py)
      _raydllm/pending-<tag>.json  the files a commit in progress is moving in

A commit, run while the attempt holds the output's lock (``job/lock.py``):

1. check that every file in the directory is the previous manifest's or a pending commit's
   (else refuse, naming one, unless ``overwrite``);
2. record the new files in ``pending-<tag>.json``, move them from staging into place;
3. write ``_SUCCESS`` naming exactly the new files (one object put; a rename on local disk);
4. delete the previous manifest's files that are not in the new one, then the pending record.

Readers that go by ``_SUCCESS`` see the previous version until step 3 and the new one after;
an interrupted commit leaves the previous ``_SUCCESS`` and its files intact, and the next
commit removes the files its pending record names.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("raydllm.job")

MANIFEST = "_SUCCESS"
MANIFEST_KIND = "airflow-provider-raydatallm/manifest"
WORK_DIR = "_raydllm"
PROGRESS_DIR = "_blocks"  # inside a staging directory: block records, never committed


class OutputNotOwnedError(RuntimeError):
    """The output directory holds files this provider did not write."""


def is_local(fs) -> bool:
    """Whether ``fs`` is a local (or mounted) filesystem, where a rename is atomic."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocols


def _fs(uri: str):
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(uri)
    return fs, path.rstrip("/")


@dataclass
class Manifest:
    """What ``_SUCCESS`` says: which files make the committed version, and which run made it."""

    files: list[str] = field(default_factory=list)  # relative to the directory
    submission_id: str = ""
    run: dict[str, Any] = field(default_factory=dict)
    rows: int = 0
    committed_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        body = {"kind": MANIFEST_KIND, "version": 1, "files": sorted(self.files), "submission_id": self.submission_id,
                "run": self.run, "rows": self.rows, "committed_at": self.committed_at, **self.extra}  # fmt: skip
        return json.dumps(body, indent=2, default=str).encode()

    @classmethod
    def parse(cls, data: bytes) -> Manifest | None:
        """The manifest in ``data``, or None when it is not one of ours (e.g. Spark's empty _SUCCESS)."""
        try:
            body = json.loads(data or b"null")
        except ValueError:
            return None
        if not isinstance(body, dict) or body.get("kind") != MANIFEST_KIND:
            return None
        known = {"kind", "version", "files", "submission_id", "run", "rows", "committed_at"}
        return cls(
            files=list(body.get("files") or []), submission_id=body.get("submission_id", ""), run=body.get("run") or {},
            rows=int(body.get("rows") or 0), committed_at=float(body.get("committed_at") or 0),
            extra={k: v for k, v in body.items() if k not in known},
        )  # fmt: skip


class OutputDir:
    """One output (or error output) directory, and the attempt ``tag`` writing it."""

    def __init__(self, uri: str, tag: str, skip: str | None = None, staging: str | None = None):
        """``skip``: a directory nested in this one that is committed on its own (``_errors``);
        ``staging``: the staging directory's name when it outlives the attempt (a resume key)."""
        self.uri = uri.rstrip("/")
        self.tag = tag
        self.staging_name = staging or tag
        self.fs, self.path = _fs(self.uri)
        self.skip = _fs(skip)[1] if skip else None
        # Whether the directory was there before this attempt: a failed attempt removes only
        # a directory it created itself (and only when nothing is in it).
        self.existed = self.fs.exists(self.path)

    # -- where things go ------------------------------------------------------------------

    @property
    def staging_uri(self) -> str:
        return f"{self.uri}/{WORK_DIR}/staging/{self.staging_name}"

    def _abs(self, relative: str) -> str:
        return f"{self.path}/{relative}"

    def _rel(self, path: str) -> str:
        return posixpath.relpath(path.rstrip("/"), self.path)

    def _pending(self, tag: str) -> str:
        return self._abs(f"{WORK_DIR}/pending-{tag}.json")

    # -- what is there ---------------------------------------------------------------------

    def manifest(self) -> Manifest | None:
        try:
            return Manifest.parse(self.fs.cat_file(self._abs(MANIFEST)))
        except FileNotFoundError:
            return None

    def _listing(self) -> list[str]:
        """Every file under the directory, relative, except our work area and ``skip``."""
        if not self.fs.exists(self.path):
            return []
        if not self.fs.isdir(self.path):
            raise OutputNotOwnedError(f"output {self.uri} is a file, not a directory: refusing to replace it")
        found = []
        for path in self.fs.find(self.path):
            if self.skip and (path == self.skip or path.startswith(self.skip + "/")):
                continue
            rel = self._rel(path)
            # Object stores may list the directory's own marker object ("out/") as a file.
            if rel != "." and rel.split("/", 1)[0] != WORK_DIR:
                found.append(rel)
        return found

    def _pending_records(self) -> dict[str, list[str]]:
        """tag -> files of commits that started and did not finish."""
        records = {}
        for path in self.fs.glob(self._abs(f"{WORK_DIR}/pending-*.json")):
            tag = posixpath.basename(path)[len("pending-") : -len(".json")]
            try:
                records[tag] = list(json.loads(self.fs.cat_file(path)).get("files") or [])
            except (ValueError, FileNotFoundError):
                records[tag] = []
        return records

    def foreign_files(self) -> list[str]:
        """Files in the directory that no manifest or pending commit of ours names."""
        listing = self._listing()
        if not listing:
            return []
        manifest = self.manifest()
        owned = {MANIFEST} if manifest is not None else set()
        owned.update(manifest.files if manifest else [])
        for files in self._pending_records().values():
            owned.update(files)
        return sorted(f for f in listing if f not in owned)

    def check_owned(self, overwrite: bool) -> list[str]:
        """Refuse a directory holding files we did not write (unless ``overwrite``); return them."""
        foreign = self.foreign_files()
        if foreign and not overwrite:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            raise OutputNotOwnedError(
                f"output {self.uri} holds files this provider did not write, e.g. {foreign[0]!r}{more}: "
                "refusing to replace them. Point output_uri at an empty or new directory, or set "
                "overwrite=True to delete every file there that is not part of the new output."
            )
        return foreign

    # -- cleaning up after attempts that are no longer running (call with the lock held) ----

    def clear_stale(self) -> list[str]:
        """Remove other attempts' staging and the files of their unfinished commits."""
        removed = []
        for staging in self.fs.glob(self._abs(f"{WORK_DIR}/staging/*")):
            if posixpath.basename(staging) != self.staging_name:
                self.fs.rm(staging, recursive=True)
                removed.append(staging)
        manifest = self.manifest()
        committed = set(manifest.files) if manifest else set()
        for tag, files in self._pending_records().items():
            for rel in files:
                if rel not in committed and self.fs.exists(self._abs(rel)):
                    self.fs.rm(self._abs(rel))
                    removed.append(self._abs(rel))
            self.fs.rm(self._pending(tag))
        return removed

    # -- the commit -------------------------------------------------------------------------

    def staged_files(self) -> list[str]:
        """Files the attempt wrote into its staging directory, relative to it."""
        _, staging = _fs(self.staging_uri)
        if not self.fs.exists(staging):
            return []
        found = (posixpath.relpath(p.rstrip("/"), staging) for p in self.fs.find(staging))
        return sorted(f for f in found if f != "." and f.split("/", 1)[0] != PROGRESS_DIR)

    def commit(self, manifest: Manifest, overwrite: bool, pause_seconds: float = 0.0) -> list[str]:
        """Swap the staged files in as the directory's version; return the files removed."""
        foreign = self.check_owned(overwrite)
        previous = self.manifest()
        staged = self.staged_files()
        _, staging = _fs(self.staging_uri)
        for rel in staged:
            if self.fs.exists(self._abs(rel)) and rel not in (previous.files if previous else []):
                raise OutputNotOwnedError(f"output {self.uri} already holds {rel!r}, which this attempt also wrote")
        self.fs.makedirs(self._abs(WORK_DIR), exist_ok=True)
        self.fs.pipe_file(self._pending(self.tag), json.dumps({"files": staged}).encode())
        log.info("commit: moving %d files into %s", len(staged), self.uri)
        for rel in staged:
            target = self._abs(rel)
            parent = posixpath.dirname(target)
            if parent:
                self.fs.makedirs(parent, exist_ok=True)
            self.fs.mv(f"{staging}/{rel}", target)
            if pause_seconds:  # tests interrupt a commit here (RAYDLLM_TEST_COMMIT_PAUSE)
                time.sleep(pause_seconds)
        manifest.files, manifest.committed_at = staged, time.time()
        self._write_manifest(manifest.to_json())
        stale = set(previous.files if previous else []) - set(staged)
        stale.update(f for f in foreign if f != MANIFEST)
        for rel in sorted(stale):
            if self.fs.exists(self._abs(rel)):
                self.fs.rm(self._abs(rel))
        self.fs.rm(self._pending(self.tag))
        if self.fs.exists(staging):
            self.fs.rm(staging, recursive=True)
        self._drop_empty_work_dir()
        return sorted(stale)

    def _drop_empty_work_dir(self) -> None:
        """Leave a committed directory holding only its version: the work area goes when it
        holds no file (nothing staged, no commit pending)."""
        if not self._is_local():
            return  # object stores have no empty directories to leave behind
        work = self._abs(WORK_DIR)
        if self.fs.exists(work) and not self.fs.find(work):
            self.fs.rm(work, recursive=True)

    def _is_local(self) -> bool:
        return is_local(self.fs)

    def _write_manifest(self, data: bytes) -> None:
        target = self._abs(MANIFEST)
        if self._is_local():
            # A rename is atomic on a local or mounted filesystem; readers never see half a file.
            tmp = self._abs(f"{WORK_DIR}/{MANIFEST}.{self.tag}.tmp")
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, target)
        else:  # one object PUT: atomic on object stores
            self.fs.pipe_file(target, data)

    def discard_staging(self) -> None:
        """Drop what this attempt wrote and did not commit (and an emptied work area)."""
        _, staging = _fs(self.staging_uri)
        if self.fs.exists(staging):
            self.fs.rm(staging, recursive=True)
        if self._is_local():
            parent = posixpath.dirname(staging)
            if self.fs.exists(parent) and not self.fs.find(parent):
                self.fs.rm(parent, recursive=True)
        self._drop_empty_work_dir()
        if self._is_local() and not self.existed and self.fs.exists(self.path) and not self.fs.find(self.path):
            self.fs.rm(self.path, recursive=True)


def committed_files(uri: str) -> list[str]:
    """The full paths of the files the last commit of ``uri`` made (what a reader should read)."""
    directory = OutputDir(uri, tag="reader")
    manifest = directory.manifest()
    if manifest is None:
        raise FileNotFoundError(f"{uri} has no committed output (no {MANIFEST} manifest)")
    return [directory._abs(f) for f in manifest.files]
