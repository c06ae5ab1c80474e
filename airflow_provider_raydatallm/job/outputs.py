"""A job's two outputs (its output and its error output) from lock to commit.

The steps, each named for what it guarantees:

1. ``Outputs.open``: where they are (one URI normaliser decides whether the error output
   is nested in the output), and the lock on each, held until the job ends;
2. ``claim``: interrupted commits finished or undone, other jobs' staging removed, and both
   directories checked to be this task's (or empty), before any actor or engine starts;
3. ``progress``: what earlier tries of this task instance staged, resumed only onto the
   same input;
4. ``commit``: the error output, then the output, each committing exactly the files the
   blocks' tallies name (``commit.py``'s state machine); or ``discard`` when the job fails
   (after ``keep_failed_errors`` when it failed because too many rows failed: those rows,
   kept beside the committed version, are what the user needs to see why).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from airflow_provider_raydatallm.job import commit, lock, resume, tables
from airflow_provider_raydatallm.job.spec import JobSpec, is_inside

log = logging.getLogger("raydllm.job")
# How long a job waits for another job writing the same output (e.g. one being stopped).
LOCK_WAIT_SECONDS = float(os.environ.get("RAYDLLM_LOCK_WAIT_SECONDS") or 120)
# In a table output's work directory: the task that last committed its slice.
SLICE_OWNER = "slice-owner.json"


def check_apart(spec: JobSpec, out_key: str, err_key: str) -> None:
    """The Airflow side's containment checks again, on the cluster's absolute paths (a
    relative path there is relative to the job's working directory)."""
    if err_key == out_key or is_inside(out_key, err_key):
        raise commit.OutputNotOwnedError(
            f"error_output_uri {spec.output.error_uri!r} is or contains output_uri {spec.output.uri!r} "
            f"({err_key} on the cluster): committing the errors would replace the output"
        )
    for source in spec.input.uris:
        if source.startswith(("http://", "https://")):
            continue
        src = commit.canonical(source.split("*", 1)[0].rstrip("/") or "/")
        for name, key in (("output_uri", out_key), ("error_output_uri", err_key)):
            if key == src or is_inside(key, src) or is_inside(src, key):
                raise commit.OutputNotOwnedError(
                    f"{name} ({key} on the cluster) overlaps input_uri {source!r} ({src}): a commit "
                    "replaces its directory, which would delete the input. Write the output somewhere else."
                )


@dataclass
class Outputs:
    """The output and the error output of one job, and whether its staging outlives it."""

    spec: JobSpec
    output: commit.OutputDir
    errors: commit.OutputDir
    nested: bool  # the error output lies inside the output, and is committed on its own
    resumable: bool
    locks: list[Any]

    @classmethod
    def open(cls, spec: JobSpec, tag: str) -> Outputs:
        """Lock both outputs (sorted, so two jobs never wait on each other)."""
        staging, resumable = resume.staging_name(spec.run, spec.input.id_column, tag)
        out_key, err_key = commit.canonical(spec.output.uri), commit.canonical(spec.output.error_uri)
        check_apart(spec, out_key, err_key)
        nested = is_inside(err_key, out_key)
        owner = spec.run.model_dump()
        output = commit.OutputDir(spec.output.uri, staging, owner, skip=spec.output.error_uri if nested else None)
        errors = commit.OutputDir(spec.output.error_uri, tag, owner)
        holder = {"submission_id": spec.run.submission_id or tag, "run": spec.run.model_dump()}
        locks = lock.acquire([out_key] if nested else [out_key, err_key], holder, LOCK_WAIT_SECONDS)
        return cls(spec, output, errors, nested, resumable, locks)

    def claim(self) -> None:
        """Refuse outputs that are another task's (reading only), then finish or undo what
        earlier jobs of this task left, and name this job's task in its staging."""
        for directory in (self.output, self.errors):
            try:
                directory.check_owned(self.spec.output.overwrite)
            except commit.OutputNotOwnedError as err:
                table = self.spec.output.table
                if table is None:
                    raise
                raise commit.OutputNotOwnedError(
                    f"{table.display()}: this slice is another task's (its work directory says: {err}). Give each "
                    "task its own partition values (mapped tasks: {{ ti.map_index }} in one), or pass "
                    "overwrite=True to take the slice over"
                ) from None
        for directory in (self.output, self.errors):
            for removed in directory.recover():
                log.info("removed what an earlier job left unfinished: %s", removed)
        # Error rows of a failed try are processed again; its recorded good rows are kept.
        self.errors.discard_staging()
        for directory in (self.output, self.errors):
            directory.record_owner()

    # -- a table output's slice: who committed it last (its work directory says) ----------------

    @property
    def _slice_owner_path(self) -> str:
        return f"{self.output.path}/{commit.WORK_DIR}/{SLICE_OWNER}"

    def slice_owner(self) -> dict[str, Any] | None:
        """The task that last committed this table slice, as its work directory records it."""
        import json

        try:
            found = json.loads(self.output.fs.cat_file(self._slice_owner_path))
        except (FileNotFoundError, ValueError):
            return None
        return found if isinstance(found, dict) else None

    def check_slice(self, secrets: dict[str, str]) -> bool:
        """A table output, before inference: the slice is not another task's (its work
        directory's record, then the tables' own records and rows). Returns whether this
        task committed the slice last (its table records may have been expired since)."""
        out, run = self.spec.output, self.spec.run.model_dump()
        last = self.slice_owner()
        if last is not None and not commit.same_owner(last, run) and not out.overwrite:
            raise tables.TableOutputError(
                f"{out.table.display()}: not replacing this slice: {commit.describe_owner(last)} committed it last "
                "(its work directory says). Give each task its own partition values (mapped tasks: "
                "{{ ti.map_index }} in one), or pass overwrite=True to take the slice over"
            )
        known = last is not None and commit.same_owner(last, run)
        for table in filter(None, (out.table, out.error_table)):
            tables.preflight(table, secrets, run, out.overwrite, known)
        return known

    def progress(self) -> resume.Progress:
        """What earlier tries of this task instance wrote, when it may be resumed here."""
        if not self.resumable:
            return resume.Progress()
        why = resume.changed_input(self.output, resume.input_fingerprint(self.spec.input.uris))
        if why:
            log.warning("not resuming: %s; starting from zero", why)
            self.output.discard_staging()
            resume.changed_input(self.output, resume.input_fingerprint(self.spec.input.uris))
            return resume.Progress()
        return resume.load(self.output)

    def discard(self, keep_progress: bool) -> None:
        """A failed job: the outputs stay as they were. With ``keep_progress`` the good rows
        written so far stay staged for the task's next try (resumable runs)."""
        self.errors.discard_staging()  # error rows are processed again by any later try
        if self.resumable and keep_progress:
            kept = resume.load(self.output)
            log.info(
                "this try failed; the %d rows written so far (%d blocks) stay staged for the task's next try",
                kept.rows, kept.blocks,
            )  # fmt: skip
        else:
            self.output.discard_staging()

    def keep_failed_errors(self, files: list[str], rows: int, why: str) -> str:
        """A run that failed because too many rows failed: its error rows are kept in the
        error output's work area for reading (``_raydllm/failed-run/``), not committed: the
        output and the error output keep their committed versions. Returns where they are."""
        record = {"failed_run": True, "submission_id": self.spec.run.submission_id, "run": self.spec.run.model_dump(),
                  "rows": rows, "failure": why[:2000], "format": self.spec.output.format}  # fmt: skip
        return self.errors.keep_failed_run(files, record)

    def commit(self, files: dict[str, list[str]], progress: resume.Progress, counts: dict[str, int], extra: dict,
               secrets: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
        """Errors first: once the output's manifest names the new version, its errors are in
        place. A table output is committed to its table (one transaction, its slice replaced);
        returns what the tables' commits reported (``{"table": ..., "error_table": ...}``)."""
        identity = {"submission_id": self.spec.run.submission_id, "run": self.spec.run.model_dump()}
        overwrite = self.spec.output.overwrite
        out, done = self.spec.output, {}
        run = {**self.spec.run.model_dump(), "submission_id": self.spec.run.submission_id}
        last = self.slice_owner() if out.table is not None else None
        known = last is not None and commit.same_owner(last, run)  # this task committed the slice last
        # Both tables' slices are checked before either commit: a refused output table must
        # not leave a replaced error slice behind.
        for table in filter(None, (out.table, out.error_table)):
            tables.check_owned(table, secrets or {}, run, overwrite, known)
        if out.error_table is not None:
            staged = [f"{self.errors.staging_uri}/{name}" for name in sorted(set(files["errors"]))]
            done["error_table"] = tables.commit(out.error_table, staged, counts["errors"], run, overwrite, secrets or {},
                                                known)  # fmt: skip
            self.errors.discard_staging()
        else:
            self.errors.commit(files["errors"], commit.Manifest(rows=counts["errors"], **identity), overwrite)
        self.errors.drop_failed_run()  # an earlier failed run's rows: this version supersedes them
        if out.table is not None:
            staged = [f"{self.output.staging_uri}/{name}" for name in sorted(set(files["ok"] + progress.files))]
            done["table"] = tables.commit(out.table, staged, counts["ok"], run, overwrite, secrets or {}, known)
            commit.put_whole(self.output.fs, self._slice_owner_path, json.dumps(commit.owner_of(run)).encode())
            self.output.discard_staging()
            return done
        self.output.commit(
            files["ok"] + progress.files, commit.Manifest(rows=counts["ok"], extra=extra, **identity), overwrite
        )
        return done
