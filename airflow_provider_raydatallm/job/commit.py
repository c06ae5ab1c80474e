"""Owning and committing an output directory (cluster side, through fsspec; no Ray import).

The provider owns only what it wrote, and an output belongs to one task. Layout::

    <output>/
      part-<commit>-<block>.<ext>    the committed data files: <commit> names the commit,
                                     <block> the block (a hash of its row ids)
      _SUCCESS                       the manifest: JSON naming exactly the committed files,
                                     the owner (namespace, dag, task, map index), the commit id
      _raydllm/staging/<name>/       a job's blocks before the commit (``block-<block>.<ext>``:
                                     a write Ray retries lands on the same name); with
                                     resumable runs ``<name>`` is the resume key and
                                     ``_blocks/`` in it records each written block (resume.py)
      _raydllm/commit-<commit>.json  the intent of a commit in progress: what it adds, what it
                                     removes once its manifest is in place

The commit is a state machine (docs/lifecycle.md draws it), run under the output's lock:

    INTENT   write commit-<id>.json: the files to add (new names, never an existing file)
             and the files to remove (the previous version's, and with ``overwrite`` files
             we did not write)
    MOVING   move each staged block to its new name
    SWITCHED write _SUCCESS naming the new files (one rename on local disk, one PUT on an
             object store): readers now see the new version
    CLEANING remove the files the intent lists for removal
    DONE     delete the intent, then the staging directory

``recover()``, run by the next job before anything else, finishes or undoes a commit that
was interrupted: when ``_SUCCESS`` names the intent's commit it removes what the intent
lists for removal (roll forward), otherwise it removes the files the intent added (roll
back). Either way a reader going by ``_SUCCESS`` sees one complete version at every step.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
import uuid
from typing import Any

from airflow_provider_raydatallm.job.manifest import Intent, Manifest
from airflow_provider_raydatallm.job.spec import normalize_uri

log = logging.getLogger("raydllm.job")

MANIFEST = "_SUCCESS"
WORK_DIR = "_raydllm"
PROGRESS_DIR = "_blocks"  # inside a staging directory: block records, never committed
OWNER_FIELDS = ("namespace", "dag_id", "task_id", "map_index")
DERIVED_NAMESPACE_PREFIX = "af-"  # namespace.py's default
# In the work area: the error rows of the last run that failed because too many rows failed,
# kept for reading (never part of a committed version; a later success removes them).
FAILED_RUN_DIR = "failed-run"
FAILED_RUN_RECORD = "failed-run.json"
FAILED_RUN_NEXT = ".next"  # failed-run.next/: a failed run's rows and record before they take failed-run/'s place
OWNER_RECORD = "_owner.json"  # in a staging directory: the task whose rows it holds


class OutputNotOwnedError(RuntimeError):
    """The output directory holds files this provider did not write, or another task's output."""


def is_local(fs) -> bool:
    """Whether ``fs`` is a local (or mounted) filesystem, where a rename is atomic."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def location(uri: str) -> tuple[Any, str]:
    """(filesystem, absolute path without a trailing slash) of a URI: the one way the job
    turns a URI into a place (relative local paths are resolved here, on the cluster)."""
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(normalize_uri(uri))
    return fs, path.rstrip("/") or "/"


def canonical(uri: str) -> str:
    """The URI as one string per place, for equality and containment checks and lock keys."""
    fs, path = location(uri)
    return normalize_uri(fs.unstrip_protocol(path))


def owner_of(run: dict[str, Any]) -> dict[str, Any]:
    """The task an output belongs to: the same task in a later run replaces it; another task
    (a sibling mapped task, another DAG, another Airflow deployment) may not."""
    return {key: run.get(key, -1 if key == "map_index" else "") for key in OWNER_FIELDS}


def same_owner(one: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether two owner records name one task. A namespace the provider derived by itself
    (``af-<hash>`` of the metadata database's address) moves when that address does (a new
    database host): it tells deployments apart only when both were named explicitly."""
    one, other = owner_of(one), owner_of(other)
    derived = any(str(o["namespace"]).startswith(DERIVED_NAMESPACE_PREFIX) or not o["namespace"] for o in (one, other))
    keys = [k for k in OWNER_FIELDS if not (derived and k == "namespace")]
    return all(one[k] == other[k] for k in keys)


def describe_owner(owner: dict[str, Any]) -> str:
    index = f"[{owner['map_index']}]" if owner.get("map_index", -1) not in (-1, None) else ""
    where = f" in Airflow namespace {owner['namespace']!r}" if owner.get("namespace") else ""
    return f"task {owner.get('dag_id') or '?'}.{owner.get('task_id') or '?'}{index}{where}"


def put_whole(fs: Any, path: str, data: bytes, tmp_dir: str | None = None) -> None:
    """Write a small file so that no reader (nor a job after a kill) sees half of it; on
    local disk it is written in ``tmp_dir`` (default: beside it) and renamed in."""
    if is_local(fs):
        tmp = f"{tmp_dir or posixpath.dirname(path)}/.tmp-{uuid.uuid4().hex}"
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    else:  # one object PUT
        fs.pipe_file(path, data)


class OutputDir:
    """One output (or error output) directory, written by the job of ``owner``."""

    def __init__(self, uri: str, staging: str, owner: dict[str, Any], skip: str | None = None):
        """``staging``: the staging directory's name (the job's tag, or the resume key when it
        outlives the job); ``skip``: a directory nested in this one and committed on its own."""
        self.uri = uri.rstrip("/")
        self.staging_name = staging
        self.owner = owner_of(owner)
        self.fs, self.path = location(self.uri)
        self.skip = location(skip)[1] if skip else None
        # Whether the directory was there before this job: a failed job removes only a
        # directory it created itself (and only when nothing is in it).
        self.existed = self.fs.exists(self.path)

    # -- where things go ------------------------------------------------------------------

    @property
    def staging_path(self) -> str:
        return self._abs(f"{WORK_DIR}/staging/{self.staging_name}")

    @property
    def staging_uri(self) -> str:
        return self.fs.unstrip_protocol(self.staging_path)

    def _abs(self, relative: str) -> str:
        return f"{self.path}/{relative}"

    def _rel(self, path: str) -> str:
        return posixpath.relpath(path.rstrip("/"), self.path)

    def uri_of(self, relative: str) -> str:
        """A file of this directory as a URI with the scheme the user gave (``s3a://`` stays
        ``s3a://``; a bare local path stays a path)."""
        scheme = self.uri.split("://", 1)[0] + "://" if "://" in self.uri else ""
        if scheme in ("", "file://", "local://"):
            return scheme + self._abs(relative)
        return scheme + self.fs._strip_protocol(self.fs.unstrip_protocol(self._abs(relative)))

    # -- what is there ---------------------------------------------------------------------

    def _fresh(self) -> None:
        """Forget cached listings: object-store clients (s3fs) cache them per process, and
        other processes (the pass's workers, earlier jobs) wrote here since."""
        self.fs.invalidate_cache()

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

    def _intents(self) -> list[tuple[str, Intent | None]]:
        found = []
        for path in sorted(self.fs.glob(self._abs(f"{WORK_DIR}/commit-*.json"))):
            try:
                found.append((path, Intent.parse(self.fs.cat_file(path))))
            except (ValueError, KeyError, FileNotFoundError):
                found.append((path, None))  # never written whole (object stores: cannot happen)
        return found

    def foreign_files(self) -> list[str]:
        """Files in the directory that the manifest does not name (call after ``recover``)."""
        self._fresh()
        listing = self._listing()
        if not listing:
            return []
        manifest = self.manifest()
        owned = {MANIFEST} if manifest is not None else set()
        owned.update(manifest.files if manifest else [])
        for _, intent in self._intents():  # an unfinished commit's new and old files: ours
            owned.update([*intent.add.values(), *intent.remove] if intent else [])
        return sorted(f for f in listing if f not in owned)

    def check_owned(self, overwrite: bool) -> list[str]:
        """Refuse a directory holding files we did not write, or another task's committed
        output (unless ``overwrite``); return the foreign files."""
        foreign = self.foreign_files()
        if foreign and not overwrite:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            raise OutputNotOwnedError(
                f"output {self.uri} holds files this provider did not write, e.g. {foreign[0]!r}{more}: "
                "refusing to replace them. Point output_uri at an empty or new directory, or set "
                "overwrite=True to delete every file there that is not part of the new output."
            )
        manifest = self.manifest()
        theirs = manifest.owner if manifest is not None else None
        if theirs is not None and not same_owner(theirs, self.owner) and not overwrite:
            raise OutputNotOwnedError(
                f"output {self.uri} is the committed output of {describe_owner(theirs)} (Ray job "
                f"{manifest.submission_id or '?'}), not of {describe_owner(self.owner)}: refusing to replace it. "
                "Give each task its own output_uri and error_output_uri (mapped tasks: put {{ ti.map_index }} "
                "in them), or set overwrite=True to take the directory over."
            )
        for what, owner in self._pending_work():
            if not same_owner(owner, self.owner) and not overwrite:
                raise OutputNotOwnedError(
                    f"output {self.uri} holds {what} of {describe_owner(owner)}, not of {describe_owner(self.owner)}: "
                    "refusing to touch it. Give each task its own output_uri and error_output_uri, or set "
                    "overwrite=True to take the directory over."
                )
        return foreign

    def _pending_work(self) -> list[tuple[str, dict[str, Any]]]:
        """(what, owner) of the commits in progress and of other jobs' staged rows."""
        found = [(f"an unfinished commit ({intent.commit_id})", intent.owner)
                 for _, intent in self._intents() if intent is not None and intent.owner]  # fmt: skip
        for staging in self.fs.glob(self._abs(f"{WORK_DIR}/staging/*")):
            if posixpath.basename(staging.rstrip("/")) == self.staging_name:
                continue
            try:
                owner = json.loads(self.fs.cat_file(f"{staging}/{OWNER_RECORD}"))
            except (FileNotFoundError, ValueError):
                continue  # no record: left by a job that never got to write one
            found.append((f"rows staged by another job ({posixpath.basename(staging.rstrip('/'))})", owner))
        for folder in (self.failed_run_path, self.failed_run_path + FAILED_RUN_NEXT):
            try:
                kept = json.loads(self.fs.cat_file(f"{folder}/{FAILED_RUN_RECORD}"))
            except (FileNotFoundError, ValueError):
                continue
            if isinstance(kept, dict) and kept.get("owner"):
                found.append((f"the error rows kept from a failed run ({kept.get('submission_id') or '?'})", kept["owner"]))
        return found

    def record_owner(self) -> None:
        """Name this job's task in its staging directory, so other tasks leave it alone."""
        self.fs.makedirs(self.staging_path, exist_ok=True)
        put_whole(self.fs, f"{self.staging_path}/{OWNER_RECORD}", json.dumps(self.owner).encode())

    # -- finishing or undoing what earlier jobs left (call with the lock held) ------------------

    def recover(self) -> list[str]:
        """Finish or undo interrupted commits, and remove other jobs' staging; return what
        was removed."""
        removed: list[str] = []
        self._fresh()
        manifest = self.manifest()
        for path, intent in self._intents():
            if intent is not None and manifest is not None and manifest.commit_id == intent.commit_id:
                log.info("finishing commit %s of %s, interrupted after its manifest was written", intent.commit_id, self.uri)
                doomed = [r for r in intent.remove if r not in manifest.files]
            elif intent is not None:
                log.info("undoing commit %s of %s, interrupted before its manifest was written", intent.commit_id, self.uri)
                committed = set(manifest.files) if manifest else set()
                doomed = [r for r in intent.add.values() if r not in committed]
            else:
                doomed = []
            removed.extend(self._remove(doomed))
            self.fs.rm(path)
        for tmp in self.fs.glob(self._abs(f"{WORK_DIR}/.tmp-*")):
            self.fs.rm(tmp)
            removed.append(tmp)
        for staging in self.fs.glob(self._abs(f"{WORK_DIR}/staging/*")):
            if posixpath.basename(staging.rstrip("/")) != self.staging_name:
                self.fs.rm(staging, recursive=True)
                removed.append(staging)
        return removed

    def _remove(self, relative: list[str]) -> list[str]:
        removed = []
        for rel in relative:
            if self.fs.exists(self._abs(rel)):
                self.fs.rm(self._abs(rel))
                removed.append(self._abs(rel))
        return removed

    # -- the commit -------------------------------------------------------------------------

    def commit(self, blocks: list[str], manifest: Manifest, overwrite: bool) -> list[str]:
        """Commit exactly ``blocks`` (names in the staging directory) as the new version;
        return the files removed. Call ``recover`` first, under the lock."""
        foreign = self.check_owned(overwrite)
        previous = self.manifest()
        commit_id = uuid.uuid4().hex[:12]
        add = {}
        for name in sorted(set(blocks)):
            stem = name.removeprefix("block-")
            add[f"{self.staging_path}/{name}"] = f"part-{commit_id}-{stem}"
        missing = [p for p in add if not self.fs.exists(p)]
        if missing:
            raise FileNotFoundError(f"commit of {self.uri}: staged block {missing[0]} is gone (removed by hand?)")
        remove = sorted(set(previous.files if previous else []).union(f for f in foreign if f != MANIFEST))
        intent = Intent(commit_id, add, remove, owner=self.owner)
        self.fs.makedirs(self._abs(WORK_DIR), exist_ok=True)
        intent_path = self._abs(f"{WORK_DIR}/commit-{commit_id}.json")
        put_whole(self.fs, intent_path, intent.to_json())  # INTENT (its temporary file is in the work area)
        log.info("commit %s: moving %d files into %s", commit_id, len(add), self.uri)
        for source, rel in add.items():  # MOVING
            self.fs.mv(source, self._abs(rel))
        manifest.files, manifest.committed_at = sorted(add.values()), time.time()
        manifest.commit_id, manifest.owner = commit_id, self.owner
        put_whole(self.fs, self._abs(MANIFEST), manifest.to_json(), tmp_dir=self._abs(WORK_DIR))  # SWITCHED
        removed = self._remove(remove)  # CLEANING
        self.fs.rm(intent_path)  # DONE
        self.discard_staging()
        return removed

    @property
    def failed_run_path(self) -> str:
        return self._abs(f"{WORK_DIR}/{FAILED_RUN_DIR}")

    def keep_failed_run(self, blocks: list[str], record: dict[str, Any]) -> str:
        """Move ``blocks`` from this job's staging into the work area's failed-run folder,
        replacing what an earlier failed run of the directory's task kept there, with a
        record (``failed-run.json``: the files, the rows, the failure). The committed
        version and its ``_SUCCESS`` are not touched. Returns the folder's URI.

        Crash-safe: the rows and their record are put together in ``failed-run.next/`` first,
        then the earlier folder is dropped and the new one takes its name; a job killed on
        the way leaves the earlier rows or the new ones readable (``read_failed_run`` reads
        ``failed-run.next/`` when the swap did not happen), never a record without its files."""
        target, draft = self.failed_run_path, self.failed_run_path + FAILED_RUN_NEXT
        if self.fs.exists(draft):
            self.fs.rm(draft, recursive=True)
        self.fs.makedirs(draft, exist_ok=True)
        names = sorted(set(blocks))
        for name in names:
            self.fs.mv(f"{self.staging_path}/{name}", f"{draft}/{name}")
        body = {**record, "files": names, "kept_at": time.time(), "owner": self.owner}
        put_whole(self.fs, f"{draft}/{FAILED_RUN_RECORD}", json.dumps(body, indent=2, default=str).encode())
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)
        self.fs.mv(draft, target, recursive=True)
        self.discard_staging()
        return self.uri_of(f"{WORK_DIR}/{FAILED_RUN_DIR}")

    def drop_failed_run(self) -> None:
        for folder in (self.failed_run_path + FAILED_RUN_NEXT, self.failed_run_path):
            if self.fs.exists(folder):
                self.fs.rm(folder, recursive=True)

    def discard_staging(self) -> None:
        """Drop this job's staging (and an emptied work area, and a directory it created)."""
        if self.fs.exists(self.staging_path):
            self.fs.rm(self.staging_path, recursive=True)
        if not is_local(self.fs):
            return  # object stores have no empty directories to leave behind
        for folder in (posixpath.dirname(self.staging_path), self._abs(WORK_DIR)):
            if self.fs.exists(folder) and not self.fs.find(folder):
                self.fs.rm(folder, recursive=True)
        if not self.existed and self.fs.exists(self.path) and not self.fs.find(self.path):
            self.fs.rm(self.path, recursive=True)


def committed_files(uri: str) -> list[str]:
    """The files of the version ``_SUCCESS`` names, as URIs with the scheme ``uri`` has: the
    files a reader should read (readers that list the directory may see a commit mid-way)."""
    directory = OutputDir(uri, staging="reader", owner={})
    manifest = directory.manifest()
    if manifest is None:
        raise FileNotFoundError(f"{uri} has no committed output (no {MANIFEST} manifest)")
    return [directory.uri_of(f) for f in manifest.files]
