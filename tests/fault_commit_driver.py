"""Run one job's claim and commit (``job/outputs.py``, the code the Ray job runs after its
pass), killed with ``os._exit`` right after its Nth file operation: the fault injection of
tests/integration/test_fault_commit.py, from outside the shipped code.

    python tests/fault_commit_driver.py SPEC_JSON VERSION KILL_AFTER

Claims both outputs (recovering what an earlier job left), stages two blocks of good rows
(ids 1-4) and one block of error rows (ids 5-6) whose values say VERSION, then commits. KILL_AFTER 0 never kills. A file
operation is one call of ``mv``/``copy``/``pipe_file``/``rm`` (on an object store: one
request, so a move is a copy, then a delete) that makes no other such call itself. Exits 0 after
a whole commit, 137 when killed, printing the operations done.
"""

from __future__ import annotations

import json
import os
import sys

from airflow_provider_raydatallm.job import outputs as outputs_mod
from airflow_provider_raydatallm.job.spec import JobSpec

OPERATIONS = ("mv", "copy", "pipe_file", "rm")
# Async filesystems (s3fs) mirror their sync methods onto each instance: count the
# coroutines that do the requests instead (a move there is _cp_file, then _rm).
ASYNC_OPERATIONS = ("_pipe_file", "_cp_file", "_rm", "_put_file")


def _kill_after(limit: int, cls: type) -> list[int]:
    """Count file operations from when ``done[1]`` is set (patch before any instance of
    ``cls`` exists: async filesystems bind their coroutines when created)."""
    done = [0, False]

    def count(name: str, before: int, args: tuple) -> None:
        if done[1] and done[0] == before:  # a leaf: it made no other counted operation
            done[0] += 1
            print(f"op {done[0]}: {name} {args[:2]}", flush=True)
            if limit and done[0] >= limit:
                print(f"killed after operation {done[0]}", flush=True)
                os._exit(137)

    def wrap(original):
        def operation(self, *args, **kwargs):
            before = done[0]
            result = original(self, *args, **kwargs)
            count(original.__name__, before, args)
            return result

        return operation

    def wrap_async(original):
        async def operation(self, *args, **kwargs):
            before = done[0]
            result = await original(self, *args, **kwargs)
            count(original.__name__, before, args)
            return result

        return operation

    if getattr(cls, "async_impl", False):
        for name in ASYNC_OPERATIONS:
            setattr(cls, name, wrap_async(getattr(cls, name)))
    else:
        for name in OPERATIONS:
            setattr(cls, name, wrap(getattr(cls, name)))
    return done


def _outputs(spec: JobSpec) -> outputs_mod.Outputs:
    """The job's two outputs, as ``Outputs.open`` makes them, without the Ray lock (one
    process at a time writes here)."""
    owner = spec.run.model_dump()
    output = outputs_mod.commit.OutputDir(spec.output.uri, spec.run.submission_id, owner, skip=spec.output.error_uri)
    errors = outputs_mod.commit.OutputDir(spec.output.error_uri, spec.run.submission_id, owner)
    return outputs_mod.Outputs(spec, output, errors, nested=True, resumable=False, locks=[])


def _stage(outs: outputs_mod.Outputs, version: str, fmt: str = "jsonl") -> dict[str, list[str]]:
    fs = outs.output.fs
    blocks = {"ok": [], "errors": []}
    for kind, directory, groups in (("ok", outs.output, [[1, 2], [3, 4]]), ("errors", outs.errors, [[5, 6]])):
        fs.makedirs(directory.staging_path, exist_ok=True)
        for ids in groups:
            name = f"block-{kind}{ids[0]}.{fmt}"
            rows = [{"id": i, "version": version} if kind == "ok" else {"row_id": str(i), "error": version} for i in ids]
            fs.pipe_file(f"{directory.staging_path}/{name}", "".join(json.dumps(r) + "\n" for r in rows).encode())
            blocks[kind].append(name)
    return blocks


def main(spec_json: str, version: str, kill_after: int) -> int:
    spec = JobSpec.model_validate_json(spec_json)
    if spec.output.uri.startswith("s3://"):
        import s3fs

        done = _kill_after(kill_after, s3fs.S3FileSystem)
    else:
        from fsspec.implementations.local import LocalFileSystem

        done = _kill_after(kill_after, LocalFileSystem)
    outs = _outputs(spec)
    outs.claim()  # as the job does before its pass: finish or undo what an earlier job left
    files = _stage(outs, version)
    done[1] = True  # armed: the commit starts
    outs.commit(files, outputs_mod.resume.Progress(), {"ok": 4, "errors": 2}, {"label": version})
    print(f"committed after {done[0]} operations", flush=True)
    return 0


def run_whole(spec_json: str, version: str) -> None:
    """The same claim and commit, in this process, never killed."""
    outs = _outputs(JobSpec.model_validate_json(spec_json))
    outs.claim()
    outs.commit(_stage(outs, version), outputs_mod.resume.Progress(), {"ok": 4, "errors": 2}, {"label": version})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
