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


def _stage(directory: OutputDir, files: dict[str, str]) -> None:
    staging = directory.staging_uri
    directory.fs.makedirs(staging, exist_ok=True)
    for name, text in files.items():
        directory.fs.pipe_file(f"{staging}/{name}", text.encode())


def _commit(uri, tag, files, overwrite=False, skip=None) -> OutputDir:
    directory = OutputDir(uri, tag, skip=skip)
    directory.check_owned(overwrite)
    directory.clear_stale()
    _stage(directory, files)
    directory.commit(Manifest(submission_id=tag, rows=len(files)), overwrite)
    return directory


def _names(path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


def test_a_commit_writes_the_manifest_last_and_a_rerun_replaces_exactly_its_files(tmp_path):
    out = tmp_path / "out"
    _commit(str(out), "job-a1", {"a.parquet": "1", "b.parquet": "2"})
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["files"] == ["a.parquet", "b.parquet"] and manifest["submission_id"] == "job-a1"
    assert _names(out) == [MANIFEST, "a.parquet", "b.parquet"]

    _commit(str(out), "job-a2", {"c.parquet": "3"})
    assert _names(out) == [MANIFEST, "c.parquet"]
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "c.parquet"]  # no empty work area left
    assert committed_files(str(out)) == [str(out / "c.parquet")]


def test_a_directory_with_files_we_did_not_write_is_refused_naming_one(tmp_path):
    out = tmp_path / "shared"
    out.mkdir()
    (out / "input.jsonl").write_text("{}")
    (out / "other_table.parquet").write_text("theirs")
    with pytest.raises(OutputNotOwnedError, match=r"holds files this provider did not write, e.g. 'input.jsonl' and 1 more"):
        _commit(str(out), "job-a1", {"a.parquet": "1"})
    assert _names(out) == ["input.jsonl", "other_table.parquet"]


def test_a_spark_style_empty_success_marker_is_not_ours(tmp_path):
    out = tmp_path / "spark"
    out.mkdir()
    (out / MANIFEST).write_text("")
    (out / "part-0.parquet").write_text("spark")
    with pytest.raises(OutputNotOwnedError):
        OutputDir(str(out), "t").check_owned(overwrite=False)


def test_overwrite_deletes_what_is_not_part_of_the_new_output(tmp_path):
    out = tmp_path / "shared"
    out.mkdir()
    (out / "old.csv").write_text("x")
    _commit(str(out), "job-a1", {"a.parquet": "1"}, overwrite=True)
    assert _names(out) == [MANIFEST, "a.parquet"]


def test_an_interrupted_commit_leaves_the_previous_version_and_the_next_commit_cleans_up(tmp_path):
    out = tmp_path / "out"
    _commit(str(out), "job-a1", {"old.parquet": "old"})
    # A commit killed after moving its first file in: pending record written, no new manifest.
    broken = OutputDir(str(out), "job-a2")
    _stage(broken, {"new1.parquet": "n1", "new2.parquet": "n2"})
    broken.fs.pipe_file(broken._pending("job-a2"), json.dumps({"files": ["new1.parquet", "new2.parquet"]}).encode())
    broken.fs.mv(f"{broken.staging_uri}/new1.parquet", str(out / "new1.parquet"))
    assert committed_files(str(out)) == [str(out / "old.parquet")]  # readers: the old version, whole
    assert broken.foreign_files() == []  # what it left is known to be ours

    _commit(str(out), "job-a3", {"fresh.parquet": "f"})
    assert _names(out) == [MANIFEST, "fresh.parquet"]


def test_staging_of_other_attempts_is_cleared_and_our_own_kept(tmp_path):
    out = tmp_path / "out"
    mine, other = OutputDir(str(out), "job-a2"), OutputDir(str(out), "job-a1")
    _stage(other, {"partial.parquet": "x"})
    _stage(mine, {"mine.parquet": "y"})
    removed = mine.clear_stale()
    assert removed == [other.fs._strip_protocol(other.staging_uri)]
    assert mine.staged_files() == ["mine.parquet"]


def test_a_nested_error_directory_is_committed_on_its_own(tmp_path):
    out = tmp_path / "out"
    errors = OutputDir(str(out / "_errors"), "job-a1")
    errors.check_owned(False)
    _stage(errors, {"e.parquet": "e"})
    errors.commit(Manifest(rows=1), False)
    _commit(str(out), "job-a1", {"a.parquet": "a"}, skip=str(out / "_errors"))
    assert _names(out) == [MANIFEST, "_errors/" + MANIFEST, "_errors/e.parquet", "a.parquet"]
    assert committed_files(str(out)) == [str(out / "a.parquet")]


def test_an_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(OutputNotOwnedError, match="is a file, not a directory"):
        OutputDir(str(tmp_path / "out"), "t").check_owned(False)


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

    fresh = commit.OutputDir(str(tmp_path / "new-out"), "a1")
    mine = tmp_path / "user-made"
    mine.mkdir()
    kept = commit.OutputDir(str(mine), "a1")
    for directory in (fresh, kept):
        sink.write_table(pa.table({"x": [1]}), directory.staging_uri, "parquet")
        assert directory.staged_files()
        directory.discard_staging()
    assert not (tmp_path / "new-out").exists()  # created by the attempt: gone
    assert mine.is_dir() and not list(mine.iterdir())  # the user's empty directory stays
