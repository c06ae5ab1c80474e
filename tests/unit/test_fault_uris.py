"""Item 4 of the exactly-once work: one URI normaliser for every containment and equality
check and for the commit. Spelled differently, a nested error output is still known to be
nested, so the output's commit (even with ``overwrite=True``) never deletes it."""

from __future__ import annotations

from airflow_provider_raydatallm.job.commit import Manifest, OutputDir
from tests.unit.test_commit import OWNER, _commit, _data, _stage


def test_one_normaliser_knows_nested_outputs_whatever_their_spelling(tmp_path, monkeypatch):
    from airflow_provider_raydatallm.job.commit import canonical
    from airflow_provider_raydatallm.job.spec import is_inside

    monkeypatch.chdir(tmp_path)
    pairs = [(f"file://{tmp_path}/out", f"{tmp_path}/out/err"), ("out", "./out/_errors"), (f"{tmp_path}/out/", "out//_e")]
    for out, err in pairs:
        assert is_inside(canonical(err), canonical(out)), (out, err)
    assert not is_inside(canonical(f"{tmp_path}/output"), canonical(f"{tmp_path}/out"))  # a prefix is not a parent
    assert canonical("file:///data/./out/") == canonical("/data/out") == "/data/out"


def test_overwrite_of_the_output_never_deletes_its_nested_error_output_spelled_otherwise(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    errors = OutputDir("./out/_errors", "job-a1", OWNER)
    errors.commit(_stage(errors, {"block-e.parquet": "e"}), Manifest(rows=1), True)
    (tmp_path / "out" / "stray.txt").write_text("not ours")
    _commit(f"file://{tmp_path}/out", "job-a1", {"block-a.parquet": "a"}, overwrite=True, skip="out/_errors")
    assert _data(tmp_path / "out" / "_errors") == ["e"]  # the error output the job just committed is whole
    assert not (tmp_path / "out" / "stray.txt").exists()


def test_the_cluster_checks_containment_again_on_absolute_paths(tmp_path, monkeypatch):
    """Relative paths are resolved on the cluster: ``out`` with an error output at the job's
    working directory would nest the other way round, which the Airflow side cannot see."""
    import pytest

    from airflow_provider_raydatallm.job.commit import OutputNotOwnedError, canonical
    from airflow_provider_raydatallm.job.outputs import check_apart
    from airflow_provider_raydatallm.job.spec import InputSpec, JobSpec, OutputSpec, ProcessorSpec

    monkeypatch.chdir(tmp_path)

    def spec(out, err, source="/elsewhere/in.jsonl"):
        return JobSpec(input=InputSpec(uris=[source], format="jsonl"), output=OutputSpec(uri=out, error_uri=err),
                       processor=ProcessorSpec(type="HttpRequestProcessorConfig", kwargs={"url": "http://x"}))  # fmt: skip

    bad = spec("out", f"file://{tmp_path}")
    with pytest.raises(OutputNotOwnedError, match="is or contains output_uri 'out'"):
        check_apart(bad, canonical("out"), canonical(f"file://{tmp_path}"))
    inside = spec("data/out", "errs", source=f"file://{tmp_path}/data/*.jsonl")
    with pytest.raises(OutputNotOwnedError, match="overlaps input_uri"):
        check_apart(inside, canonical("data/out"), canonical("errs"))
    ok = spec("out", "out/_errors")
    check_apart(ok, canonical("out"), canonical("out/_errors"))
