"""Item 2 of the exactly-once work: an output belongs to one task. Another task naming it
is refused before it changes anything: not the other task's committed files, not its
staged rows waiting for a retry, not its interrupted commit (which that task's next run
finishes)."""

from __future__ import annotations

import json

import pytest

from airflow_provider_raydatallm.job.commit import Manifest, OutputDir, OutputNotOwnedError, committed_files

A = {"namespace": "prod", "dag_id": "daily", "task_id": "classify", "map_index": 0}
B = {**A, "map_index": 1}


def _files(path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _stage(directory: OutputDir, name: str, text: str) -> None:
    directory.record_owner()
    directory.fs.pipe_file(f"{directory.staging_path}/{name}", text.encode())


def test_another_task_leaves_rows_staged_for_a_retry_alone(tmp_path):
    out = tmp_path / "out"
    first_try = OutputDir(str(out), "resume-a", A)
    _stage(first_try, "block-1.jsonl", '{"id": 1}\n')  # the try failed; its rows wait for the retry
    before = _files(out)
    sibling = OutputDir(str(out), "job-b1", B)
    with pytest.raises(OutputNotOwnedError, match=r"rows staged by another job \(resume-a\) of task daily\.classify\[0\]"):
        sibling.check_owned(overwrite=False)
    assert _files(out) == before

    retry = OutputDir(str(out), "resume-a", A)  # the same task's retry carries on
    retry.check_owned(False)
    retry.recover()
    retry.commit(["block-1.jsonl"], Manifest(rows=1), False)
    assert [json.loads(open(f).read()) for f in committed_files(str(out))] == [{"id": 1}]


def test_another_task_never_undoes_an_interrupted_commit_and_its_own_next_run_finishes_it(tmp_path):
    out = tmp_path / "out"
    mine = OutputDir(str(out), "job-a1", A)
    _stage(mine, "block-1.jsonl", '{"id": 1}\n')
    real_pipe, calls = mine.fs.pipe_file, []

    def stop_at_manifest(path, data, **kw):
        calls.append(path)
        if len(calls) == 2:  # the intent went in; the manifest does not
            raise KeyboardInterrupt("killed")
        return real_pipe(path, data, **kw)

    mine.fs.pipe_file = stop_at_manifest
    with pytest.raises(KeyboardInterrupt):
        mine.commit(["block-1.jsonl"], Manifest(rows=1), False)
    del mine.fs.pipe_file
    before = _files(out)
    assert any(name.startswith("part-") for name in before)  # moved in, not yet committed
    with pytest.raises(OutputNotOwnedError, match=r"holds an unfinished commit \(\w+\) of task daily\.classify\[0\]"):
        OutputDir(str(out), "job-b1", B).check_owned(overwrite=False)
    assert _files(out) == before

    again = OutputDir(str(out), "job-a2", A)
    again.check_owned(False)
    again.recover()
    assert sorted(_files(out)) == []  # rolled back: nothing of it stays, the directory was empty before


def test_namespaces_tell_deployments_apart_only_when_named(tmp_path):
    out = tmp_path / "out"
    first = OutputDir(str(out), "job-1", {**A, "namespace": "af-1234567890"})
    _stage(first, "block-1.jsonl", "{}\n")
    first.commit(["block-1.jsonl"], Manifest(), False)
    # The same task after the database moved (a derived namespace changed): still its output.
    OutputDir(str(out), "job-2", {**A, "namespace": "af-0987654321"}).check_owned(False)
    named = OutputDir(str(tmp_path / "named"), "job-1", {**A, "namespace": "prod"})
    _stage(named, "block-1.jsonl", "{}\n")
    named.commit(["block-1.jsonl"], Manifest(), False)
    with pytest.raises(OutputNotOwnedError, match="in Airflow namespace 'prod'"):
        OutputDir(str(tmp_path / "named"), "job-2", {**A, "namespace": "staging"}).check_owned(False)
