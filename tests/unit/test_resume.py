"""Resumable runs: block records written by the sink, read back by a retry; resume keys."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from airflow_provider_raydatallm.job import commit, resume, rows, sink
from airflow_provider_raydatallm.job.spec import RunIdentity
from airflow_provider_raydatallm.operators import _submission as sub

COLUMNS = ["id", "text"]


def _block(ids: list[int], bad: set[int] = frozenset()) -> pa.Table:
    def row(i: int) -> dict:
        failed = i in bad
        return {"id": i, "text": f"t{i}", "label": None if failed else "pos", rows.ROW_ID: str(i),
                rows.ERROR: "postprocess: KeyError: x" if failed else "", rows.RAY_ERROR: "",
                rows.INFERRED: None if failed else True, rows.IN_TOKENS: 0 if failed else 5,
                rows.OUT_TOKENS: 0 if failed else 1, rows.ROW_JSON: json.dumps({"id": i}) if failed else None}  # fmt: skip

    return pa.Table.from_pylist([row(i) for i in ids])


OWNER = {"dag_id": "d", "task_id": "t"}


def _dirs(tmp_path, key="resume-abc"):
    output = commit.OutputDir(str(tmp_path / "out"), key, OWNER)
    errors = commit.OutputDir(str(tmp_path / "out" / "_errors"), "attempt-2", OWNER)
    return output, errors


def _staged(output: commit.OutputDir) -> list[str]:
    return sorted(p.rsplit("/", 1)[1] for p in output.fs.glob(f"{output.staging_path}/block-*"))


def test_a_retry_reads_back_the_recorded_blocks_and_drops_strays(tmp_path):
    output, errors = _dirs(tmp_path)
    write = sink.WriteBlock(output.staging_uri, errors.staging_uri, "parquet", COLUMNS, record=True)
    write(_block([1, 2, 3], bad={2}))
    write(_block([4, 5]))
    write(_block([4, 5]))  # Ray ran that block's write again: one file, one record
    staging = tmp_path / "out" / "_raydllm" / "staging" / "resume-abc"
    assert len(list((staging / commit.PROGRESS_DIR).glob("*.json"))) == 2 and len(_staged(output)) == 2
    # A try that died between a block's data file and its record: the file is a stray.
    sink.write_table(pa.table({"id": [6]}), output.staging_uri, "block-stray.parquet", "parquet")
    # A record whose file is gone is not trusted either.
    (staging / commit.PROGRESS_DIR / "dangling.json").write_text(json.dumps({"file": "block-gone.parquet", "ids": ["9"], "ok": 1}))
    progress = resume.load(output)
    assert progress.ids == {"1", "3", "4", "5"} and progress.blocks == 2
    assert progress.counts == {"ok": 4, "not_inferred": 0, "input_tokens": 20, "output_tokens": 4}
    assert _staged(output) == sorted(progress.files)  # the stray went; records are never staged files
    assert not (staging / commit.PROGRESS_DIR / "dangling.json").exists()


def test_the_commit_moves_data_files_only_and_removes_the_records(tmp_path):
    output, errors = _dirs(tmp_path)
    sink.WriteBlock(output.staging_uri, errors.staging_uri, "jsonl", COLUMNS, record=True)(_block([1, 2]))
    output.commit(resume.load(output).files, commit.Manifest(rows=2), overwrite=False)
    manifest = output.manifest()
    assert len(manifest.files) == 1 and manifest.files[0].startswith("part-")
    assert not (tmp_path / "out" / "_raydllm").exists()


def test_without_a_record_nothing_is_resumed(tmp_path):
    output, errors = _dirs(tmp_path)
    sink.WriteBlock(output.staging_uri, errors.staging_uri, "parquet", COLUMNS)(_block([1, 2]))
    assert resume.load(output).rows == 0 and _staged(output) == []


def test_other_keys_staging_is_stale_and_removed(tmp_path):
    old, _ = _dirs(tmp_path, key="resume-old")
    sink.WriteBlock(old.staging_uri, old.staging_uri + "-e", "parquet", COLUMNS, record=True)(_block([1]))
    new, _ = _dirs(tmp_path, key="resume-new")
    removed = new.recover()
    assert any(r.endswith("resume-old") for r in removed) and resume.load(new).rows == 0


def test_an_input_rewritten_between_tries_is_not_resumed_onto(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1}\n')
    output, errors = _dirs(tmp_path)
    assert resume.changed_input(output, resume.input_fingerprint([str(source)])) == ""  # recorded
    sink.WriteBlock(output.staging_uri, errors.staging_uri, "parquet", COLUMNS, record=True)(_block([1]))
    assert resume.changed_input(output, resume.input_fingerprint([str(source)])) == ""  # same input: resume
    source.write_text('{"id": 1}\n{"id": 2}\n')
    why = resume.changed_input(output, resume.input_fingerprint([str(tmp_path)]))
    assert why.startswith("input file file://") or "in.jsonl" in why
    why = resume.changed_input(output, resume.input_fingerprint([str(source)]))
    assert "in.jsonl changed since the earlier try (10:" in why


class _Ref:
    def hex(self) -> str:
        return "ref-1"


def test_skip_done_drops_written_ids_only():
    resume.SkipDone._cache = {"ref-1": frozenset({"1", "3"})}
    table = pa.table({"id": [1, 2, 3, 4], "text": list("abcd")})
    left = resume.SkipDone(_Ref(), "id", COLUMNS)(table)
    assert left.column("id").to_pylist() == [2, 4]


def test_staging_name_needs_a_key_and_an_id_column():
    run = RunIdentity(resume_key="resume-k")
    assert resume.staging_name(run, "id", "tag-1") == ("resume-k", True)
    assert resume.staging_name(run, None, "tag-1") == ("tag-1", False)
    assert resume.staging_name(RunIdentity(), "id", "tag-1") == ("tag-1", False)


@pytest.mark.parametrize(
    "tries, same_key, keep",
    [
        # (try_number, max_tries) of two tries, with retries=2
        (((1, 2), (2, 2)), True, (True, True)),  # a retry: same series
        (((2, 2), (3, 2)), True, (True, False)),  # the last retry keeps nothing for later
        (((3, 2), (4, 5)), False, (False, True)),  # cleared after try 3: max_tries = 3 + 2
    ],
)
def test_resume_keys_follow_airflow_tries(tries, same_key, keep):
    ids = [
        sub.with_resume(RunIdentity(dag_id="d", task_id="t", run_id="r", try_number=n), m, 2, "spec1")
        for n, m in tries
    ]
    assert (ids[0].resume_key == ids[1].resume_key) is same_key
    assert (ids[0].keep_progress, ids[1].keep_progress) == keep


def test_a_changed_spec_or_another_task_instance_gets_another_key():
    base = RunIdentity(dag_id="d", task_id="t", run_id="r", try_number=2)
    key = sub.with_resume(base, 2, 2, "spec1").resume_key
    assert sub.with_resume(base, 2, 2, "spec2").resume_key != key
    assert sub.with_resume(base.model_copy(update={"map_index": 3}), 2, 2, "spec1").resume_key != key
    assert sub.with_resume(base.model_copy(update={"run_id": "r2"}), 2, 2, "spec1").resume_key != key


def test_blocks_stay_bounded_whatever_the_input_size():
    from airflow_provider_raydatallm.job.run import MAX_BLOCK_ROWS, block_rows

    assert block_rows(24, 6) == 4 and block_rows(5, 10) == 1
    assert block_rows(2_000_000, 6) == MAX_BLOCK_ROWS == block_rows(200_000, 6)
