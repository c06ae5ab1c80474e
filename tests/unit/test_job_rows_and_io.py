"""The job's pure parts: row wrappers, metrics parsing and the checks before a commit
(Ray is not needed for these; the commit itself: test_commit.py)."""

from __future__ import annotations

import json
import time

import pytest

from airflow_provider_raydatallm.job import rows
from airflow_provider_raydatallm.job.metrics import JobMetrics, JobResult, find_result, stage_seconds

COLUMNS = ["Index", "Company"]


def test_preprocess_keeps_an_id_and_turns_failures_into_error_rows():
    wrap = rows.Preprocess(lambda r: {"messages": [r["Company"]]}, COLUMNS, "Index", continue_on_error=True)
    before = time.time()
    out = wrap({"Index": 7, "Company": "Acme"})
    assert before <= out.pop(rows.T_IN) <= time.time()  # when the row reached the processor (phases)
    assert out == {"messages": ["Acme"], rows.ROW_ID: "7", rows.RAY_ERROR: ""}
    failing = rows.Preprocess(lambda r: 1 / 0, COLUMNS, None, continue_on_error=True)
    out = failing({"Index": 7, "Company": "Acme"})
    assert out[rows.RAY_ERROR].startswith("preprocess: ZeroDivisionError") and out[rows.ROW_ID].startswith("sha1:")


def test_preprocess_without_continue_names_the_row():
    failing = rows.Preprocess(lambda r: 1 / 0, COLUMNS, "Index", continue_on_error=False)
    with pytest.raises(rows.RowError, match="preprocess failed on row 7: ZeroDivisionError"):
        failing({"Index": 7, "Company": "Acme"})


def test_content_ids_are_stable_and_distinguish_rows():
    a = rows.row_id({"Index": 1, "Company": "A"}, COLUMNS, None)
    assert a == rows.row_id({"Company": "A", "Index": 1}, COLUMNS, None)
    assert a != rows.row_id({"Index": 2, "Company": "A"}, COLUMNS, None)


def test_postprocess_carries_tokens_and_catches_errors():
    wrap = rows.Postprocess(lambda r: {"label": r["generated_text"]}, COLUMNS, continue_on_error=True)
    row = {rows.ROW_ID: "1", "Index": 1, "Company": "A", "generated_text": "Retail",
           "num_input_tokens": 30, "num_generated_tokens": 2}  # fmt: skip
    out = wrap(row)
    assert out["label"] == "Retail" and (out[rows.IN_TOKENS], out[rows.OUT_TOKENS]) == (30, 2)
    assert not rows.is_error(out) and out[rows.INFERRED] is True
    broken = rows.Postprocess(lambda r: r["missing"], COLUMNS, continue_on_error=True)(row)
    assert rows.is_error(broken)
    record = rows.ToErrorRecord(COLUMNS)(broken)
    assert record["stage"] == "postprocess" and record["error"].startswith("KeyError")
    assert json.loads(record["row"]) == {"Index": 1, "Company": "A"}
    # What the model answered stays beside the input row: the thing needed to see what went wrong.
    assert (record["model_output"], record["input_tokens"], record["output_tokens"]) == ("Retail", 30, 2)


def test_the_model_output_of_each_processor_type_is_kept_for_a_failed_postprocess():
    http = {"http_response": {"choices": [{"message": {"content": '{"category": "bil'}}], "usage": {}}}
    serve = {"choices": [{"message": {"content": "positive"}}], "usage": {"prompt_tokens": 9, "completion_tokens": 1}}
    assert rows.model_output_of(http) == '{"category": "bil' and rows.model_output_of(serve) == "positive"
    assert rows.model_output_of({"http_response": {"error": "x"}}) == '{"error": "x"}'
    assert rows.model_output_of({"Index": 1}) is None
    record = rows.ToErrorRecord(COLUMNS)(rows.Postprocess(json.loads, COLUMNS, True)({rows.ROW_ID: "7", **serve}))
    assert (record["model_output"], record["input_tokens"], record["output_tokens"]) == ("positive", 9, 1)


def test_inference_errors_from_ray_become_records_with_the_original_row():
    # vLLM puts (a cut of) the chat-templated prompt on a row it failed: the record keeps it.
    row = {rows.ROW_ID: "9", "Index": 9, "Company": "Z", rows.RAY_ERROR: "engine exploded", "messages": [],
           "prompt": "<|im_start|>user\nZ<|im_end|>"}  # fmt: skip
    assert rows.ToErrorRecord(COLUMNS)(row) == {
        "row_id": "9", "stage": "inference", "error": "engine exploded", "row": '{"Index": 9, "Company": "Z"}',
        "prompt": "<|im_start|>user\nZ<|im_end|>", "model_output": None, "input_tokens": None, "output_tokens": None,
    }  # fmt: skip
    # An endpoint's failed request: the payload it was sent, as JSON.
    http = {rows.ROW_ID: "3", "Index": 3, rows.RAY_ERROR: "HTTP 500", "payload": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}
    assert json.loads(rows.ToErrorRecord(COLUMNS)(http)["prompt"])["messages"][0]["content"] == "hi"
    # A preprocess failure never reached the model: no prompt.
    pre = {rows.ROW_ID: "4", rows.RAY_ERROR: "preprocess: ValueError: x", "messages": [{"role": "user", "content": "x"}]}
    assert rows.ToErrorRecord(COLUMNS)(pre)["prompt"] is None


def test_result_line_round_trip_and_stage_parsing():
    metrics = JobMetrics(rows_in=3, rows_out=2, error_rows=1, wall_seconds=1.5)
    result = JobResult(output_uri="o", error_output_uri="o/_errors", output_format="parquet", metrics=metrics)
    log = "noise\n2026 INFO something\n" + result.to_log_line() + "\nafter\n"
    assert find_result(log) == result and metrics.rows_in == metrics.rows_out + metrics.error_rows
    assert find_result("no result here") is None
    # A worker's line Ray relayed glued after the result (seen: the result's newline came
    # after it) or before it on one line.
    relayed = "(MapWorker(MapBatches(vLLMEngineStageUDF)) pid=16475) INFO Parent process exited"
    assert find_result("noise\n" + result.to_log_line() + relayed + "\n\n") == result
    assert find_result(relayed + result.to_log_line() + "\n") == result
    stats = (
        "Operator 1 ReadCSV->SplitBlocks(4): 4 tasks executed, 4 blocks produced in 0.5s\n"
        "Operator 3 MapBatches(vLLMEngineStageUDF): 2 tasks executed, 2 blocks produced in 12.25s\n"
    )
    assert stage_seconds(stats) == {"ReadCSV->SplitBlocks(4)": 0.5, "MapBatches(vLLMEngineStageUDF)": 12.25}


def test_a_missing_error_value_is_an_error_row_as_ray_says():
    # Ray's stages: row.get("__inference_error__", "") != "" -> pass through, skip postprocess.
    assert not rows.is_error({"x": 1}) and not rows.is_error({rows.RAY_ERROR: ""})
    assert rows.error_of({rows.RAY_ERROR: None}) == rows.NO_MESSAGE
    assert rows.error_of({rows.RAY_ERROR: "", rows.ERROR: "postprocess: boom"}) == "postprocess: boom"


def test_postprocess_marks_rows_without_the_processors_result():
    wrap = rows.Postprocess(None, COLUMNS, True, rows.RESULT_COLUMNS["vLLMEngineProcessorConfig"])
    assert wrap({rows.ROW_ID: "1", "generated_text": "x"})[rows.INFERRED] is True
    assert wrap({rows.ROW_ID: "1", "messages": []})[rows.INFERRED] is False


def _counts(ok=0, errors=0, not_inferred=0):
    return {"ok": ok, "errors": errors, "not_inferred": not_inferred, "input_tokens": 0, "output_tokens": 0}


def test_job_refuses_output_rows_that_skipped_the_processor():
    from airflow_provider_raydatallm.job.run import JobIntegrityError, check_counts

    with pytest.raises(JobIntegrityError, match="90 of 90 output rows lack the processor's result"):
        check_counts(100, _counts(ok=90, errors=10, not_inferred=90), [], 0.5)
    with pytest.raises(JobIntegrityError, match="row count mismatch: 100 in, 90 out, 9 errors"):
        check_counts(100, _counts(ok=90, errors=9), [], 0.5)


def test_job_fails_when_too_many_or_all_rows_failed():
    from airflow_provider_raydatallm.job.run import TooManyErrorRowsError, check_counts

    first = [{"row_id": "3", "stage": "preprocess", "error": "ValueError: no"}]
    check_counts(100, _counts(ok=90, errors=10), first, 0.1)  # exactly the ratio is allowed
    with pytest.raises(TooManyErrorRowsError, match=r"11 of 100 rows failed \(more than max_error_ratio=0.1\)"):
        check_counts(100, _counts(ok=89, errors=11), first, 0.1)
    with pytest.raises(TooManyErrorRowsError, match=r"every row failed.*row 3 \(preprocess\): ValueError: no"):
        check_counts(4, _counts(errors=4), first, 1.0)
    with pytest.raises(TooManyErrorRowsError, match=r"4 of 4 rows failed \(every row failed\); nothing was committed\. "
                                                     r"First errors: row 3"):
        check_counts(4, _counts(errors=4), first, 1.0)
    cut = [{"row_id": "5", "stage": "postprocess", "error": "JSONDecodeError: x", "model_output": '{"a": ' + "9" * 500}]
    with pytest.raises(TooManyErrorRowsError, match=r"row 5 \(postprocess\): JSONDecodeError: x \[the model answered '\{\"a\": 9+'\]") as err:
        check_counts(4, _counts(errors=4), cut, 1.0)
    assert len(str(err.value)) < 400
    check_counts(0, _counts(), [], 0.1)  # an empty input is not a failure of every row


def test_a_failed_jobs_headline_is_the_users_error_and_its_row():
    from airflow_provider_raydatallm.job.__main__ import headline

    try:
        try:
            rows.Preprocess(lambda r: 1 / 0, COLUMNS, "Index", continue_on_error=False)({"Index": 7, "Company": "A"})
        except rows.RowError as err:
            raise RuntimeError("\x1b[36mray::MapWorker(Map(_preprocess))\x1b[0m failed") from err
    except RuntimeError as wrapped:
        line = headline(wrapped)
    assert line.startswith("preprocess failed on row 7: ZeroDivisionError: division by zero (in Ray: RuntimeError: ")
    assert "\x1b[" not in line


def test_http_rows_count_tokens_from_the_endpoint_usage():
    row = {rows.ROW_ID: "4", "http_response": {"choices": [], "usage": {"prompt_tokens": 17, "completion_tokens": 5}}}
    assert rows.token_counts(row) == {rows.IN_TOKENS: 17, rows.OUT_TOKENS: 5}
    # An engine's own counts win; no usage and no counts is zero, not an error.
    assert rows.token_counts({**row, "num_input_tokens": 3, "num_generated_tokens": 1}) == {rows.IN_TOKENS: 3, rows.OUT_TOKENS: 1}
    assert rows.token_counts({"http_response": {"choices": []}}) == {rows.IN_TOKENS: 0, rows.OUT_TOKENS: 0}


def test_wall_time_splits_into_inference_and_the_rest():
    from airflow_provider_raydatallm.job.metrics import first_error_records, split_wall

    stages = {"MapBatches(vLLMEngineStageUDF)": 22.0, "MapBatches(ChatTemplateUDF)": 3.0, "ReadCSV": 1.0}
    assert split_wall(120.0, stages) == (22.0, 98.0)
    assert split_wall(10.0, {"MapBatches(HttpRequestUDF)": 4.5}) == (4.5, 5.5)
    assert split_wall(5.0, {}) == (0.0, 5.0)
    assert split_wall(1.0, {"MapBatches(vLLMEngineStageUDF)": 2.0}) == (1.0, 0.0)  # never more than the wall
    long = first_error_records([{"row_id": 7, "stage": "preprocess", "error": "x" * 2000, "row": "{...}"}])
    assert long == [{"row_id": "7", "stage": "preprocess", "error": "x" * 500}]


def test_input_files_that_disagree_on_a_columns_type_are_named_before_inference():
    import pyarrow as pa

    from airflow_provider_raydatallm.job.run import _type_clash

    clash = _type_clash([pa.schema([("id", pa.int64()), ("t", pa.string())]), pa.schema([("t", pa.string()), ("id", pa.string())])], "csv")
    assert clash and "'id'" in clash and "int64" in clash and "string" in clash and "csv" in clash
    assert _type_clash([pa.schema([("n", pa.int64())]), pa.schema([("n", pa.float64())])], "csv") is None  # promotable


def test_the_jobs_own_lines_are_one_write_and_found_when_a_relayed_line_is_glued_to_them(monkeypatch):
    import io

    from airflow_provider_raydatallm import outcome
    from airflow_provider_raydatallm.job import metrics as job_metrics

    writes: list[str] = []

    class Out(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    monkeypatch.setattr(job_metrics.sys, "stdout", Out())
    job_metrics.say(job_metrics.ERROR_MARKER + "pre-flight: no column 'text'")
    assert writes == [job_metrics.ERROR_MARKER + "pre-flight: no column 'text'\n"]  # text and newline together
    relayed = "(MapWorker pid=7) INFO shutting down"
    log = f"a\n{relayed}{job_metrics.ERROR_MARKER}pre-flight: no column 'text'\nlast\n"
    assert outcome._error_line_of(log, []) == "pre-flight: no column 'text'"
    assert outcome._tail_of(log, [], lines=1).splitlines()[0] == job_metrics.ERROR_MARKER + "pre-flight: no column 'text'"
    # In the tail already (glued or not): shown once.
    assert outcome._tail_of(log, [], lines=3).count(job_metrics.ERROR_MARKER) == 1


def test_a_result_line_with_spaces_after_its_marker_is_read():
    from airflow_provider_raydatallm.job.metrics import RESULT_MARKER

    result = JobResult(output_uri="o", error_output_uri="o/_errors", output_format="parquet",
                       metrics=JobMetrics(rows_in=1, rows_out=1, error_rows=0, wall_seconds=1.0))  # fmt: skip
    line = result.to_log_line().replace(RESULT_MARKER, RESULT_MARKER + "  ", 1)
    assert find_result(line + "\n") == result
