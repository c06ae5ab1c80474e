"""What a finished batch reports to Airflow: summary line, asset extra, lineage datasets."""

from __future__ import annotations

from airflow_provider_raydatallm.job.metrics import JobMetrics, JobResult
from airflow_provider_raydatallm.job.spec import InputSpec, JobSpec, OutputSpec, ProcessorSpec
from airflow_provider_raydatallm.operators import _report


def _spec(**kwargs) -> JobSpec:
    return JobSpec(
        input=InputSpec(uris=["s3://bucket/in/customers.csv"], format="csv"),
        output=OutputSpec(uri="/data/out/2026-11-25", error_uri="/data/out/2026-11-25/_errors"),
        processor=ProcessorSpec(**kwargs),
    )


def test_rates_read_well_at_every_size():
    assert [_report.rate(v) for v in (0, 0.00042, 0.188, 1.6, 12.34, 1234.5)] == ["0", "0.00042", "0.19", "1.6", "12.3", "1,234"]


def test_summary_line_never_rounds_a_slow_run_to_zero():
    m = JobMetrics(rows_in=8, rows_out=6, error_rows=2, wall_seconds=42.5, rows_per_second=0.188,
                   output_tokens_per_second=0.0421, inference_seconds=2.5, startup_seconds=40.0)  # fmt: skip
    line = _report.summary_line("raydllm-x", m, "/out")
    assert "0.19 rows/s" in line and "0.042 output tokens/s" in line and "0.0 rows/s" not in line
    assert "8 rows in, 6 out, 2 errors" in line and "40.0 s start-up and other stages, 2.5 s inference" in line


def test_model_labels_per_processor():
    assert _report.model_label(_spec(type="vLLMEngineProcessorConfig", kwargs={"model_source": "/models/q"})) == "/models/q"
    assert _report.model_label(_spec(type="HttpRequestProcessorConfig", kwargs={"url": "http://e/v1"})) == "http:http://e/v1"
    serve = _spec(type="ServeDeploymentProcessorConfig", kwargs={"deployment_name": "llm", "app_name": "a"})
    assert _report.model_label(serve) == "serve:a/llm"


def test_record_result_and_asset_extra_agree():
    spec = _spec(type="vLLMEngineProcessorConfig", kwargs={"model_source": "/models/q"})
    record = _report.submission_record(spec, "raydllm-1", "http://ray/#/jobs/raydllm-1", "ray_default")
    m = JobMetrics(rows_in=3, rows_out=2, error_rows=1, input_tokens=30, output_tokens=4, wall_seconds=2.0)
    result = JobResult(output_uri=spec.output.uri, error_output_uri=spec.output.error_uri, output_format="parquet",
                       metrics=m, first_errors=[{"row_id": "2", "stage": "preprocess", "error": "boom"}])  # fmt: skip
    value = _report.result_value("02000000", "raydllm-1", record, result)
    assert value["model"] == "/models/q" and value["input_uris"] == ["s3://bucket/in/customers.csv"]
    assert value["first_errors"][0]["row_id"] == "2" and value["metrics"]["rows_in"] == 3
    extra = _report.asset_extra(value)
    assert (extra["rows_in"], extra["rows_out"], extra["error_rows"], extra["output_tokens"]) == (3, 2, 1, 4)
    assert extra["model"] == "/models/q" and extra["ray_submission_id"] == "raydllm-1"


def test_openlineage_datasets_follow_the_naming_convention():
    value = {"model": "/models/q", "submission_id": "raydllm-1", "input_uris": ["s3://bucket/in/c.csv", "/local/in.jsonl"],
             "output_uri": "gs://b2/out/day", "metrics": {"rows_in": 3, "rows_out": 2, "error_rows": 1}}  # fmt: skip
    lineage = _report.openlineage(value)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("s3://bucket", "in/c.csv"), ("file", "/local/in.jsonl")]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("gs://b2", "out/day")]
    assert lineage.outputs[0].outputFacets["outputStatistics"].rowCount == 2
    facet = lineage.run_facets["rayDataLLM"]
    assert facet.model == "/models/q" and facet.rowsIn == 3 and facet.errorRows == 1


def test_an_endpoints_model_is_reported_by_name_and_host():
    from airflow_provider_raydatallm.job import rows, sink

    # The names come from the endpoint's answers, block by block, through the tallies.
    answered = {"http_response": {"model": "smollm2-135m", "choices": [{"message": {"content": "hi"}}]}}
    assert rows.model_name_of(answered) == "smollm2-135m"
    assert rows.model_name_of({"generated_text": "hi"}) == ""  # an engine stage: the config names the model
    assert rows.MODEL_NAME in rows.INTERNAL_COLUMNS  # never an output column
    tallies = [{"models": '["smollm2-135m"]'}, {"models": '["smollm2-135m", "qwen"]'}, {"models": "[]"}]
    assert sink.models(tallies) == ["qwen", "smollm2-135m"]

    spec = _spec(type="HttpRequestProcessorConfig", kwargs={"url": "http://10.0.0.5:8000/v1/chat/completions"})
    record = _report.submission_record(spec, "raydllm-2", "http://ray/#/jobs/raydllm-2", "ray_default")
    m = JobMetrics(rows_in=1, rows_out=1, error_rows=0, wall_seconds=1.0)
    result = JobResult(output_uri="/o", error_output_uri="/o/_errors", output_format="parquet", metrics=m, models=["smollm2-135m"])
    assert _report.result_value(None, "raydllm-2", record, result)["model"] == "smollm2-135m @ 10.0.0.5:8000"
    assert _report.result_value(None, "raydllm-2", record, None)["model"] == "endpoint @ 10.0.0.5:8000"
