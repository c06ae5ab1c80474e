"""The output commit (job/commit.py) on the local filesystem through fsspec: what it owns,
what it refuses, what an interrupted commit leaves. The same code on s3:// against a real
S3-compatible server: tests/integration/test_commit_s3.py."""

from __future__ import annotations

import json
import re

import pytest

from airflow_provider_raydatallm.job.commit import (
    MANIFEST,
    Manifest,
    OutputDir,
    OutputNotOwnedError,
    committed_files,
)


OWNER = {"namespace": "ns", "dag_id": "d", "task_id": "t", "map_index": -1}


def _stage(directory: OutputDir, files: dict[str, str]) -> list[str]:
    directory.fs.makedirs(directory.staging_path, exist_ok=True)
    for name, text in files.items():
        directory.fs.pipe_file(f"{directory.staging_path}/{name}", text.encode())
    return list(files)


def _commit(uri, tag, files, overwrite=False, skip=None, owner=OWNER) -> OutputDir:
    directory = OutputDir(uri, tag, owner, skip=skip)
    directory.recover()
    directory.check_owned(overwrite)
    directory.commit(_stage(directory, files), Manifest(submission_id=tag, rows=len(files)), overwrite)
    return directory


def _names(path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


def _data(path) -> list[str]:
    """The contents of the committed files, in name order."""
    return [(path / f).read_text() for f in json.loads((path / MANIFEST).read_text())["files"]]


def test_a_commit_writes_the_manifest_last_and_a_rerun_replaces_exactly_its_files(tmp_path):
    out = tmp_path / "out"
    _commit(str(out), "job-a1", {"block-a.parquet": "1", "block-b.parquet": "2"})
    manifest = json.loads((out / MANIFEST).read_text())
    assert [re.sub(r"part-\w{12}-", "part-*-", f) for f in manifest["files"]] == ["part-*-a.parquet", "part-*-b.parquet"]
    assert manifest["submission_id"] == "job-a1" and manifest["owner"] == OWNER and manifest["commit_id"]
    assert _names(out) == sorted([MANIFEST, *manifest["files"]])

    # The same blocks again (a rerun over the same rows): new names, never an old file rewritten.
    _commit(str(out), "job-a2", {"block-a.parquet": "3"})
    second = json.loads((out / MANIFEST).read_text())
    assert _names(out) == sorted([MANIFEST, *second["files"]]) and _data(out) == ["3"]
    assert not set(second["files"]) & set(manifest["files"])
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, *second["files"]])  # no empty work area left
    assert committed_files(str(out)) == [str(out / second["files"][0])]
    assert committed_files("file://" + str(out)) == ["file://" + str(out / second["files"][0])]  # the scheme is kept


def test_a_directory_with_files_we_did_not_write_is_refused_naming_one(tmp_path):
    out = tmp_path / "shared"
    out.mkdir()
    (out / "input.jsonl").write_text("{}")
    (out / "other_table.parquet").write_text("theirs")
    with pytest.raises(OutputNotOwnedError, match=r"holds files this provider did not write, e.g. 'input.jsonl' and 1 more"):
        _commit(str(out), "job-a1", {"block-a.parquet": "1"})
    assert _names(out) == ["input.jsonl", "other_table.parquet"]


def test_another_tasks_committed_output_is_refused_and_left_whole(tmp_path):
    out = tmp_path / "shared"
    _commit(str(out), "job-a1", {"block-a.parquet": "mine"})
    before = _names(out)
    for other in ({**OWNER, "map_index": 1}, {**OWNER, "dag_id": "other"}, {**OWNER, "namespace": "staging"}):
        with pytest.raises(OutputNotOwnedError, match=r"is the committed output of task d\.t in Airflow namespace 'ns'"):
            _commit(str(out), "job-b1", {"block-b.parquet": "theirs"}, owner=other)
        assert _names(out) == before and _data(out) == ["mine"]
    # The same task in a later run replaces it; another task only with overwrite=True.
    _commit(str(out), "job-a2", {"block-c.parquet": "again"})
    _commit(str(out), "job-b2", {"block-d.parquet": "taken"}, overwrite=True, owner={**OWNER, "map_index": 1})
    assert _data(out) == ["taken"] and json.loads((out / MANIFEST).read_text())["owner"]["map_index"] == 1


def test_a_spark_style_empty_success_marker_is_not_ours(tmp_path):
    out = tmp_path / "spark"
    out.mkdir()
    (out / MANIFEST).write_text("")
    (out / "part-0.parquet").write_text("spark")
    with pytest.raises(OutputNotOwnedError):
        OutputDir(str(out), "t", OWNER).check_owned(overwrite=False)


def test_overwrite_deletes_what_is_not_part_of_the_new_output(tmp_path):
    out = tmp_path / "shared"
    out.mkdir()
    (out / "old.csv").write_text("x")
    directory = _commit(str(out), "job-a1", {"block-a.parquet": "1"}, overwrite=True)
    assert _names(out) == sorted([MANIFEST, *directory.manifest().files])


def test_recover_undoes_a_commit_stopped_before_its_manifest_and_finishes_one_stopped_after(tmp_path):
    out = tmp_path / "out"
    _commit(str(out), "job-a1", {"block-old.parquet": "old"})
    old_files = json.loads((out / MANIFEST).read_text())["files"]
    # Killed while moving its files in: the intent is there, the manifest is the old one.
    broken = OutputDir(str(out), "job-a2", OWNER)
    staged = _stage(broken, {"block-n1.parquet": "n1", "block-n2.parquet": "n2"})
    moves = iter([None, None])  # the intent (written and renamed in), then one data file
    real_mv = broken.fs.mv

    def mv_once(source, target, **kw):
        if next(moves, "stop") == "stop":
            raise KeyboardInterrupt("killed")
        return real_mv(source, target, **kw)

    broken.fs.mv = mv_once
    with pytest.raises(KeyboardInterrupt):
        broken.commit(staged, Manifest(), False)
    del broken.fs.mv
    assert committed_files(str(out)) == [str(out / f) for f in old_files]  # readers: the old version, whole
    again = OutputDir(str(out), "job-a3", OWNER)
    removed = again.recover()
    assert any("part-" in r for r in removed)  # the file it had moved in
    assert _names(out) == sorted([MANIFEST, *old_files])


def test_a_nested_error_directory_is_committed_on_its_own(tmp_path):
    out = tmp_path / "out"
    errors = OutputDir(str(out / "_errors"), "job-a1", OWNER)
    errors.check_owned(False)
    errors.commit(_stage(errors, {"block-e.parquet": "e"}), Manifest(rows=1), False)
    directory = _commit(str(out), "job-a1", {"block-a.parquet": "a"}, skip=str(out / "_errors"))
    assert _names(out) == sorted([MANIFEST, "_errors/" + MANIFEST, *("_errors/" + f for f in errors.manifest().files),
                                  *directory.manifest().files])  # fmt: skip


def test_an_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(OutputNotOwnedError, match="is a file, not a directory"):
        OutputDir(str(tmp_path / "out"), "t", OWNER).check_owned(False)


def test_preflight_names_what_the_cluster_cannot_find_or_write(tmp_path):
    from airflow_provider_raydatallm.job import preflight

    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "model").mkdir()
    cases = [
        (lambda: preflight.check_input([str(tmp_path / "nope.csv")]), "does not exist as seen from the Ray cluster"),
        (lambda: preflight.check_input([str(tmp_path / "empty.csv")]), "is empty (0 bytes)"),
        (lambda: preflight.check_writable("/proc/nope/out", "t"), "'/proc/nope/out' cannot be written from the Ray cluster"),
        (lambda: preflight.check_model("vLLMEngineProcessorConfig", {"model_source": str(tmp_path / "gone")}),
         "does not exist on the Ray cluster"),
        (lambda: preflight.check_model("vLLMEngineProcessorConfig", {"model_source": str(tmp_path / "model")}),
         "without config.json"),
        (lambda: preflight.check_id_column("Customer Id", ["Index", "Company"]), "its columns are: Index, Company"),
    ]
    for call, fragment in cases:
        with pytest.raises(preflight.PreflightError, match=re.escape(fragment)):
            call()
    preflight.check_model("vLLMEngineProcessorConfig", {"model_source": "Qwen/Qwen2.5-0.5B"})  # hub ids: the engine's
    preflight.check_writable(str(tmp_path / "out"), "t")
    assert not (tmp_path / "out").exists()  # nothing left behind
    (tmp_path / "kept" / "_raydllm").mkdir(parents=True)
    preflight.check_writable(str(tmp_path / "kept"), "t")
    assert (tmp_path / "kept" / "_raydllm").is_dir() and not list((tmp_path / "kept" / "_raydllm").iterdir())


def test_a_failed_attempt_removes_only_what_it_created(tmp_path):
    from airflow_provider_raydatallm.job import commit, sink

    import pyarrow as pa

    fresh = commit.OutputDir(str(tmp_path / "new-out"), "a1", OWNER)
    mine = tmp_path / "user-made"
    mine.mkdir()
    kept = commit.OutputDir(str(mine), "a1", OWNER)
    for directory in (fresh, kept):
        sink.write_table(pa.table({"x": [1]}), directory.staging_uri, "block-x.parquet", "parquet")
        assert directory.fs.exists(f"{directory.staging_path}/block-x.parquet")
        directory.discard_staging()
    assert not (tmp_path / "new-out").exists()  # created by the attempt: gone
    assert mine.is_dir() and not list(mine.iterdir())  # the user's empty directory stays



def test_a_failed_runs_error_rows_are_kept_beside_the_committed_version_and_dropped_by_the_next_success(tmp_path):
    """Invariant: a run failing on max_error_ratio changes no committed version (output and
    error output read back exactly as before), yet its error rows can be read; the next
    successful commit removes them and leaves nothing of them behind."""
    errors_uri = str(tmp_path / "out" / "_errors")
    _commit(errors_uri, "job-a1", {"block-e1.jsonl": "old error"})  # a successful day: 1 error row
    before = committed_files(errors_uri)
    failed = OutputDir(errors_uri, "job-a2", OWNER)
    failed.recover()
    where = failed.keep_failed_run(_stage(failed, {"block-f1.jsonl": "f1", "block-f2.jsonl": "f2"}),
                                   {"failed_run": True, "rows": 2, "failure": "2 of 2 rows failed"})  # fmt: skip
    assert committed_files(errors_uri) == before and _data(tmp_path / "out" / "_errors") == ["old error"]
    kept = tmp_path / "out" / "_errors" / "_raydllm" / "failed-run"
    assert where == str(kept) and sorted(p.name for p in kept.iterdir()) == ["block-f1.jsonl", "block-f2.jsonl",
                                                                              "failed-run.json"]  # fmt: skip
    record = json.loads((kept / "failed-run.json").read_text())
    assert record["failed_run"] is True and record["files"] == ["block-f1.jsonl", "block-f2.jsonl"]
    assert record["owner"]["task_id"] == "t" and not (tmp_path / "out" / "_errors" / "_raydllm" / "staging").exists()
    assert failed.foreign_files() == [] and failed.check_owned(False) == []  # not foreign to the task's next run

    again = OutputDir(errors_uri, "job-a3", OWNER)  # another failed run replaces the kept rows
    again.keep_failed_run(_stage(again, {"block-g1.jsonl": "g1"}), {"rows": 1})
    assert sorted(p.name for p in kept.iterdir()) == ["block-g1.jsonl", "failed-run.json"]

    success = _commit(errors_uri, "job-a4", {"block-e2.jsonl": "new error"})
    success.drop_failed_run()
    assert _data(tmp_path / "out" / "_errors") == ["new error"] and not kept.exists()
