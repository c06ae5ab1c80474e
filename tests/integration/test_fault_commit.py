"""A job killed after each file operation of its commit, on local disk and on a local S3
server (moto): the commit state machine of job/commit.py, driven through job/outputs.py
(the code the Ray job runs after its pass) in a subprocess that ``os._exit``s right after
its Nth operation (tests/fault_commit_driver.py: the fault comes from outside the package).

Invariants, checked after every kill point:
- a reader that follows ``_SUCCESS`` sees exactly one complete version (every file there,
  ids 1-4 once each, all of one version), in the output and in the error output;
- the next run of the task succeeds and leaves exactly its own rows and files, and no
  work area;
- no file another task or the user wrote is touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from airflow_provider_raydatallm.job import commit
from airflow_provider_raydatallm.job.spec import InputSpec, JobSpec, OutputSpec, ProcessorSpec, RunIdentity
from tests.conftest import ROOT
from tests.fault_commit_driver import run_whole

pytestmark = pytest.mark.integration
DRIVER = ROOT / "tests" / "fault_commit_driver.py"
MAX_KILL_POINTS = 60


def _spec(uri: str, submission_id: str, task_id: str = "classify") -> str:
    return JobSpec(
        run=RunIdentity(namespace="prod", dag_id="daily", task_id=task_id, run_id="r1", submission_id=submission_id),
        input=InputSpec(uris=["/nowhere/in.jsonl"], format="jsonl"),
        output=OutputSpec(uri=uri),
        processor=ProcessorSpec(type="HttpRequestProcessorConfig", kwargs={"url": "http://127.0.0.1:1/v1"}),
    ).model_dump_json()


def _run(uri: str, version: str, kill_after: int, env: dict[str, str], task_id: str = "classify"):
    return subprocess.run(
        [sys.executable, str(DRIVER), _spec(uri, f"job-{version}-{kill_after}", task_id), version, str(kill_after)],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def _read_version(uri: str, id_key: str, value_key: str) -> tuple[list, set]:
    """(ids, versions) of the files ``_SUCCESS`` names; every named file must be there."""
    fs, path = commit.location(uri)
    fs.invalidate_cache()  # another process wrote: this one's cached listings are stale
    manifest = commit.Manifest.parse(fs.cat_file(f"{path}/{commit.MANIFEST}"))
    ids, versions = [], set()
    for name in manifest.files:
        for line in fs.cat_file(f"{path}/{name}").decode().splitlines():
            row = json.loads(line)
            ids.append(row[id_key])
            versions.add(row[value_key])
    return sorted(ids), versions


def _files(uri: str) -> list[str]:
    fs, path = commit.location(uri)
    fs.invalidate_cache()
    found = (posixpath_rel(p, path) for p in fs.find(path))
    return sorted(f for f in found if f and f != ".")


def posixpath_rel(path: str, root: str) -> str:
    return path[len(root) :].lstrip("/")


def _kill_everywhere(base: str, env: dict[str, str], neighbours) -> int:
    """Kill a commit after each of its operations in turn; return how many there were."""
    for kill_after in range(1, MAX_KILL_POINTS + 1):
        uri = f"{base}/case{kill_after}/out"
        run_whole(_spec(uri, f"job-v1-{kill_after}"), "v1")
        planted = neighbours(f"{base}/case{kill_after}")
        killed = _run(uri, "v2", kill_after, env)
        if killed.returncode == 0:  # more kill points than operations: every one was tried
            assert kill_after > 5, killed.stdout
            return kill_after - 1
        assert killed.returncode == 137, killed.stdout + killed.stderr
        where = f"killed after operation {kill_after}: {killed.stdout.splitlines()[-2:]}"
        ids, versions = _read_version(uri, "id", "version")
        assert ids == [1, 2, 3, 4] and len(versions) == 1, where
        error_ids, error_versions = _read_version(f"{uri}/_errors", "row_id", "error")
        assert error_ids == ["5", "6"] and len(error_versions) == 1, where

        run_whole(_spec(uri, f"job-v3-{kill_after}"), "v3")  # the next run of the task
        assert _read_version(uri, "id", "version") == ([1, 2, 3, 4], {"v3"}), where
        assert _read_version(f"{uri}/_errors", "row_id", "error") == (["5", "6"], {"v3"}), where
        fs, path = commit.location(uri)
        manifest = commit.Manifest.parse(fs.cat_file(f"{path}/{commit.MANIFEST}"))
        errors = commit.Manifest.parse(fs.cat_file(f"{path}/_errors/{commit.MANIFEST}"))
        expected = [commit.MANIFEST, f"_errors/{commit.MANIFEST}", *manifest.files, *(f"_errors/{f}" for f in errors.files)]
        assert _files(uri) == sorted(expected), where  # exactly its own files; no work area left
        for name, content in planted.items():
            assert fs.cat_file(name) == content, f"{where}: {name} was touched"
    raise AssertionError(f"the commit took more than {MAX_KILL_POINTS} file operations")


def _plant(fs):
    """Another task's committed output beside ours, and a file of the user's above it."""

    def plant(case: str) -> dict[str, bytes]:
        _, root = commit.location(case)
        theirs = commit.OutputDir(f"{case}/theirs", "other-a1", {"dag_id": "daily", "task_id": "other"})
        fs.makedirs(theirs.staging_path, exist_ok=True)
        fs.pipe_file(f"{theirs.staging_path}/block-x.jsonl", b'{"id": 99}\n')
        theirs.commit(["block-x.jsonl"], commit.Manifest(), False)
        fs.pipe_file(f"{root}/notes.txt", b"the user's")
        names = [f"{root}/notes.txt", f"{root}/theirs/{commit.MANIFEST}", *(f"{root}/theirs/{f}" for f in theirs.manifest().files)]
        return {name: fs.cat_file(name) for name in names}

    return plant


def test_a_commit_killed_after_any_file_operation_on_local_disk(tmp_path):
    fs, _ = commit.location(str(tmp_path))
    operations = _kill_everywhere(str(tmp_path), {}, _plant(fs))
    assert operations >= 12  # intent, moves, manifest, removals, in both outputs


def test_a_commit_killed_after_any_file_operation_on_s3(s3):
    fs, _ = commit.location("s3://raydllm-test")
    operations = _kill_everywhere("s3://raydllm-test/fault-commit", s3, _plant(fs))
    assert operations >= 12


def test_another_task_sharing_the_output_is_refused_before_its_commit_and_changes_nothing(tmp_path):
    uri = str(tmp_path / "shared")
    assert _run(uri, "v1", 0, {}).returncode == 0
    before = {name: (tmp_path / "shared" / name).read_bytes() for name in _files(uri)}
    sibling = _run(uri, "v2", 0, {}, task_id="classify_other")
    assert sibling.returncode != 0
    assert "is the committed output of task daily.classify in Airflow namespace 'prod'" in sibling.stderr
    assert {name: (tmp_path / "shared" / name).read_bytes() for name in _files(uri)} == before
