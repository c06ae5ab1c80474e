"""Table outputs on the Airflow side: connections become shipped secrets (never the spec),
arguments are checked before submission, each task instance renders its own table, and
XCom, asset events, lineage and the runs page name the table, its slice and its snapshot."""

from __future__ import annotations

import json

import pytest

from airflow_provider_raydatallm.exceptions import RayLLMConfigError
from airflow_provider_raydatallm.job.metrics import JobMetrics, JobResult
from airflow_provider_raydatallm.job.spec import RunIdentity
from airflow_provider_raydatallm.operators import RayLLMBatchOperator, _report, _submission as sub
from airflow_provider_raydatallm.plugins.data import output_shown
from airflow_provider_raydatallm.tables import DeltaTable, IcebergTable

CONFIG = {"type": "HttpRequestProcessorConfig", "url": "http://127.0.0.1:1/v1"}


def _op(**kwargs) -> RayLLMBatchOperator:
    return RayLLMBatchOperator(task_id="classify", processor_config=CONFIG, input_uri="/data/in.jsonl", **kwargs)


def _spec(op: RayLLMBatchOperator):
    spec = op.build_spec(RunIdentity(dag_id="d", task_id="classify", run_id="r"))
    return sub.with_tables(op, spec)


def test_an_iceberg_connection_is_shipped_as_a_secret_and_never_in_the_spec(monkeypatch):
    conn = {"conn_type": "iceberg", "host": "https://catalog.example.com/api", "login": "client-id",
            "password": "s3cr3t-client-secret", "extra": {"warehouse": "s3://lake/wh", "name": "lake"}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_LAKE", json.dumps(conn))
    spec, secrets = _spec(_op(output_table=IcebergTable("analytics.sentiment", conn_id="lake", partition={"day": "2026-12-01"})))
    assert "s3cr3t-client-secret" not in spec.model_dump_json() and spec.output.uri == ""
    table = spec.output.table
    assert (table.format, table.identifier, table.catalog_name, table.partition) == (
        "iceberg", "analytics.sentiment", "lake", {"day": "2026-12-01"})
    props = json.loads(secrets[table.catalog.name])
    assert props == {"warehouse": "s3://lake/wh", "uri": "https://catalog.example.com/api", "type": "rest",
                     "credential": "client-id:s3cr3t-client-secret"}  # fmt: skip
    assert sub.secret_values(secrets[table.catalog.name]) == ["client-id:s3cr3t-client-secret"]
    assert table.label == "rest catalog lake @ https://catalog.example.com/api"


def test_a_sql_catalogs_password_is_masked_and_not_in_the_label(monkeypatch):
    extra = {"type": "sql", "uri": "postgresql+psycopg2://iceberg:pa55word-x@db:5432/catalog", "warehouse": "s3://w"}
    monkeypatch.setenv("AIRFLOW_CONN_ICEBERG_DEFAULT", json.dumps({"conn_type": "iceberg", "extra": extra}))
    spec, secrets = _spec(_op(output_table=IcebergTable("a.b")))
    assert "pa55word-x" not in spec.model_dump_json() and "pa55word-x" not in spec.output.table.label
    assert sub.secret_values(next(iter(secrets.values()))) == ["pa55word-x"]


def test_a_delta_tables_aws_connection_becomes_secret_storage_options(monkeypatch):
    conn = {"conn_type": "aws", "login": "AKIAEXAMPLE", "password": "aws-secret-key-123",
            "extra": {"region_name": "eu-west-1", "endpoint_url": "http://minio:9000"}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_LAKE_S3", json.dumps(conn))
    table = DeltaTable("s3://lake/tickets", partition={"day": "2026-12-01"}, conn_id="lake_s3",
                       storage_options={"AWS_S3_ALLOW_UNSAFE_RENAME": "true"})  # fmt: skip
    spec, secrets = _spec(_op(output_table=table))
    assert "aws-secret-key-123" not in spec.model_dump_json()
    assert spec.output.table.storage_options == {"AWS_S3_ALLOW_UNSAFE_RENAME": "true"}
    shipped = json.loads(secrets[spec.output.table.secret_options.name])
    assert shipped == {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "aws-secret-key-123",
                       "AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://minio:9000", "AWS_ALLOW_HTTP": "true"}
    assert set(sub.secret_values(json.dumps(shipped))) == {"AKIAEXAMPLE", "aws-secret-key-123"}


@pytest.mark.parametrize(
    ("kwargs", "said"),
    [
        ({}, "output_uri or output_table is required"),
        ({"output_table": {"table": "a.b"}}, "output_table must be an IcebergTable or a DeltaTable"),
        ({"output_table": IcebergTable("nodots", catalog_properties={"type": "in-memory"})}, "is not 'namespace.table'"),
        ({"output_table": DeltaTable("/lake/t", partition={"day": "it's"})}, "without quotes"),
        ({"output_table": DeltaTable("/lake/t", partition={"day; drop": "x"})}, "is not a plain column name"),
        ({"output_table": DeltaTable("/lake/t"), "output_format": "csv"}, "a table output is written as Parquet"),
        ({"output_table": DeltaTable("/lake/t"), "error_table": DeltaTable("/lake/e"), "error_output_uri": "/e"},
         "give error_table or error_output_uri, not both"),
        ({"output_table": DeltaTable("/data/in.jsonl/t")}, "output_table '/data/in.jsonl/t' is inside input_uri"),
    ],
)
def test_bad_table_arguments_fail_before_submission_naming_them(kwargs, said):
    with pytest.raises(RayLLMConfigError) as err:
        _op(**kwargs).build_spec(RunIdentity(dag_id="d", task_id="classify", run_id="r"))
    assert said in str(err.value) and "classify" in str(err.value)


def test_each_task_instance_renders_its_own_table():
    import jinja2

    shared = IcebergTable("demo.t", catalog_properties={"type": "sql", "uri": "sqlite:///{{ params.root }}/c.db"},
                          partition={"day": "{{ ds }}", "part": "{{ ti.map_index }}"})  # fmt: skip
    first, second = _op(output_table=shared), _op(output_table=shared)
    for op, index in ((first, 0), (second, 1)):
        ti = type("TI", (), {"map_index": index})()
        op.render_template_fields({"ds": "2026-12-01", "ti": ti, "params": {"root": "/r"}}, jinja2.Environment())
    assert first.output_table.partition == {"day": "2026-12-01", "part": "0"}
    assert second.output_table.partition == {"day": "2026-12-01", "part": "1"}
    assert first.output_table.catalog_properties["uri"] == "sqlite:////r/c.db"
    assert shared.partition["part"] == "{{ ti.map_index }}"  # the DAG's object is never rendered in place


def test_two_runs_of_one_task_in_one_process_each_render_their_own_day():
    """Airflow runs a shallow copy of the DAG's task: the table inside is shared until rendered."""
    import copy

    import jinja2

    task = _op(output_table=DeltaTable("/lake/t", partition={"day": "{{ ds }}"}))
    days = []
    for ds in ("2026-11-30", "2026-12-01"):
        run = copy.copy(task)
        run.render_template_fields({"ds": ds}, jinja2.Environment())
        days.append(run.output_table.partition["day"])
    assert days == ["2026-11-30", "2026-12-01"] and task.output_table.partition == {"day": "{{ ds }}"}


def test_xcom_assets_lineage_and_the_runs_page_name_the_committed_table():
    op = _op(output_table=DeltaTable("s3://lake/tickets", partition={"day": "2026-12-01"}))
    spec, _ = _spec(op)
    record = _report.submission_record(spec, "raydllm-1", "http://ray/#/jobs/raydllm-1", "ray_default")
    assert record["output_table"] == "delta:s3://lake/tickets (day=2026-12-01)"
    assert output_shown({}, record) == "delta:s3://lake/tickets (day=2026-12-01)"  # while it runs
    committed = {"format": "delta", "table": "s3://lake/tickets", "partition": {"day": "2026-12-01"}, "version": 7,
                 "rows": 3, "location": "s3://lake/tickets"}  # fmt: skip
    result = JobResult(output_uri="s3://lake/tickets/_raydllm/work/day=2026-12-01", error_output_uri="s3://e",
                       output_format="parquet", metrics=JobMetrics(rows_in=3, rows_out=3, error_rows=0, wall_seconds=1.0), table=committed)
    value = _report.result_value("02", "raydllm-1", record, result)
    assert value["table"]["version"] == 7
    assert _report.asset_extra(value)["table"] == committed
    assert output_shown(value, record) == "delta:s3://lake/tickets (day=2026-12-01) version 7"
    assert "table delta:s3://lake/tickets (day=2026-12-01) version 7" in _report.summary_line(
        "raydllm-1", result.metrics, result.output_uri, committed)
    lineage = _report.openlineage(value)
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("s3://lake", "tickets")]
    assert "symlinks" not in lineage.outputs[0].facets  # a path-based Delta table: its location only
    iceberg = {"format": "iceberg", "table": "analytics.s", "catalog": "lake", "catalog_uri": "https://cat.example/api",
               "partition": {}, "snapshot_id": 42, "location": "s3://wh/analytics/s"}  # fmt: skip
    errors = {**iceberg, "table": "analytics.s_errors", "location": "s3://wh/analytics/s_errors"}
    lineage = _report.openlineage({**value, "table": iceberg, "error_table": errors})
    symlink = lineage.outputs[0].facets["symlinks"].identifiers[0]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("s3://wh", "analytics/s"), ("s3://wh", "analytics/s_errors")]
    assert (symlink.namespace, symlink.name, symlink.type) == ("https://cat.example/api", "analytics.s", "TABLE")
