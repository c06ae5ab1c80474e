"""What a finished batch tells Airflow: the task log's summary line, the XCom value, the
extra of the asset events it emits, and its OpenLineage facets.

The model, input and output locations are recorded at submission (XCom ``ray_job``) so a
task that resumes after deferral, in a fresh operator instance, reports the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from airflow_provider_raydatallm.job.metrics import JobMetrics, JobResult
    from airflow_provider_raydatallm.job.spec import JobSpec


def model_label(spec: JobSpec) -> str:
    """What ran the rows: the model path or id, the Serve app and deployment, or the endpoint."""
    kwargs = spec.processor.kwargs
    if kwargs.get("model_source"):
        source = kwargs["model_source"]
        return str(source.get("model_id") or source) if isinstance(source, dict) else str(source)
    if kwargs.get("deployment_name"):
        app = kwargs.get("app_name") or "default"
        return f"serve:{app}/{kwargs['deployment_name']}"
    if kwargs.get("url"):
        return f"http:{kwargs['url']}"
    return spec.processor.type


def submission_record(spec: JobSpec, job_id: str, url: str, ray_conn_id: str) -> dict[str, Any]:
    """The XCom ``ray_job`` value: enough to find and describe the job from anywhere."""
    return {
        "submission_id": job_id,
        "dashboard_url": url,
        "ray_conn_id": ray_conn_id,
        "model": model_label(spec),
        "processor": spec.processor.type,
        "input_uris": list(spec.input.uris),
        "output_uri": spec.output.uri,
        "error_output_uri": spec.output.error_uri,
        **({"output_table": spec.output.table.display()} if spec.output.table else {}),
        **({"error_table": spec.output.error_table.display()} if spec.output.error_table else {}),
    }


def committed_table(table: dict[str, Any] | None) -> str:
    """A committed table as people read it: ``iceberg:ns.t (day=...) snapshot 123``."""
    if not table:
        return ""
    slice_ = ", ".join(f"{k}={v}" for k, v in (table.get("partition") or {}).items())
    which = f"snapshot {table.get('snapshot_id')}" if table.get("format") == "iceberg" else f"version {table.get('version')}"
    return f"{table.get('format')}:{table.get('table')}" + (f" ({slice_})" if slice_ else "") + f" {which}"


def rate(value: float) -> str:
    """A rate as a person reads it: 1,234 / 12.3 / 0.188 / 0.00042, never "0.0"."""
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.1f}"
    return f"{value:.2g}"


def summary_line(job_id: str, m: JobMetrics, output_uri: str, table: dict[str, Any] | None = None) -> str:
    return (
        f"Ray job {job_id}: {m.rows_in:,} rows in, {m.rows_out:,} out, {m.error_rows:,} errors; "
        + (f"{m.resumed_rows:,} rows carried over from an earlier try; " if m.resumed_rows else "")
        + f"{m.input_tokens:,} input / {m.output_tokens:,} output tokens; {rate(m.rows_per_second)} rows/s, "
        f"{rate(m.output_tokens_per_second)} output tokens/s; {m.wall_seconds:.1f} s "
        f"({m.startup_seconds:.1f} s start-up and other stages, {m.inference_seconds:.1f} s inference); "
        + (f"table {committed_table(table)}" if table else f"output {output_uri}")
    )


def with_job_phases(m: JobMetrics, info: Any) -> JobMetrics:
    """The job's phases with submission and teardown from Ray's job record (``info``:
    start_time, end_time in ms)."""
    from airflow_provider_raydatallm.job.phases import with_job_record

    if not m.phases:
        return m
    full = with_job_record(m.phases, m.started_at, m.ended_at, getattr(info, "start_time", None),
                           getattr(info, "end_time", None))  # fmt: skip
    return m.model_copy(update={"phases": full})


def phases_table(phases: dict[str, float]) -> str:
    from airflow_provider_raydatallm.job.phases import table

    return table(phases)


def asset_extra(result: dict[str, Any]) -> dict[str, Any]:
    """The extra of an asset event this task emits: counts, tokens, model, where rows went."""
    m = result.get("metrics") or {}
    return {
        "rows_in": m.get("rows_in"),
        "rows_out": m.get("rows_out"),
        "error_rows": m.get("error_rows"),
        "input_tokens": m.get("input_tokens"),
        "output_tokens": m.get("output_tokens"),
        "rows_per_second": m.get("rows_per_second"),
        "model": result.get("model"),
        "output_uri": result.get("output_uri"),
        "error_output_uri": result.get("error_output_uri"),
        "ray_submission_id": result.get("submission_id"),
        **({"table": _table_extra(result["table"])} if result.get("table") else {}),
        **({"error_table": _table_extra(result["error_table"])} if result.get("error_table") else {}),
    }


def _table_extra(table: dict[str, Any]) -> dict[str, Any]:
    keys = ("format", "table", "partition", "snapshot_id", "version", "rows", "location")
    return {k: table[k] for k in keys if k in table}


def reported_model(record: dict[str, Any], result: JobResult | None) -> str | None:
    """The model as people read it: for an endpoint (``http:<url>``), the model names its
    answers gave and the endpoint's host (``smollm2-135m @ 10.0.0.5:8000``); else the label
    recorded at submission."""
    model = record.get("model")
    if isinstance(model, str) and model.startswith("http:") and "://" in model:
        parts = urlsplit(model[len("http:") :])
        host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname or "")  # never user:key@
        names = ", ".join(result.models) if result and result.models else "endpoint"
        return f"{names} @ {host}"
    return model


def result_value(job_id: str | None, submission_id: str, record: dict[str, Any], result: JobResult | None) -> dict[str, Any]:
    """The task's XCom return value."""
    return {
        "job_id": job_id,
        "submission_id": submission_id,
        "model": reported_model(record, result),
        "input_uris": record.get("input_uris", []),
        "output_uri": result.output_uri if result else record.get("output_uri"),
        "error_output_uri": result.error_output_uri if result else record.get("error_output_uri"),
        "output_format": result.output_format if result else None,
        "dashboard_url": record.get("dashboard_url"),
        "metrics": result.metrics.model_dump() if result else None,
        "first_errors": result.first_errors if result else [],
        "table": result.table if result else None,
        "error_table": result.error_table if result else None,
    }


def _dataset_name(uri: str) -> tuple[str, str]:
    """OpenLineage naming: ``s3://bucket`` + key, ``gs://bucket`` + key, ``file`` + path."""
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        return "file", parts.path or uri
    return f"{parts.scheme}://{parts.netloc}", parts.path.lstrip("/") or "/"


def _table_dataset(table: dict[str, Any], cls: Any, output_facets: dict[str, Any]) -> Any:
    """A table as an OpenLineage dataset: named by its location; an Iceberg table also by
    its catalog's URI and name (a symlink, as the Spark integration adds for catalog tables)."""
    facets = {}
    if table.get("format") == "iceberg" and table.get("catalog_uri"):
        from airflow.providers.common.compat.openlineage.facet import Identifier, SymlinksDatasetFacet

        facets["symlinks"] = SymlinksDatasetFacet(identifiers=[
            Identifier(namespace=str(table["catalog_uri"]), name=str(table.get("table")), type="TABLE")])
    return cls(*table_dataset_name(table), facets=facets, outputFacets=output_facets)


def table_dataset_name(table: dict[str, Any]) -> tuple[str, str]:
    """OpenLineage naming of a table, as the Iceberg and Delta integrations name them: the
    table's storage location (``s3://bucket`` + path, ``file`` + path), the namespace and
    name the Spark integration gives both formats' tables."""
    return _dataset_name(str(table.get("location") or table.get("table") or ""))


def openlineage(result: dict[str, Any]) -> Any:
    """OperatorLineage for a finished batch; None when the OpenLineage provider is absent."""
    try:
        from airflow.providers.common.compat.openlineage.facet import (
            Dataset,
            OutputDataset,
            OutputStatisticsOutputDatasetFacet,
        )
        from airflow.providers.openlineage.extractors import OperatorLineage
    except ImportError:
        return None
    from airflow_provider_raydatallm.lineage import RayDataLLMRunFacet

    m = result.get("metrics") or {}
    inputs = [Dataset(*_dataset_name(uri)) for uri in result.get("input_uris") or []]
    outputs = []
    if result.get("table"):
        stats = OutputStatisticsOutputDatasetFacet(rowCount=m.get("rows_out"))
        outputs.append(_table_dataset(result["table"], OutputDataset, {"outputStatistics": stats}))
        if result.get("error_table"):
            stats = OutputStatisticsOutputDatasetFacet(rowCount=m.get("error_rows"))
            outputs.append(_table_dataset(result["error_table"], OutputDataset, {"outputStatistics": stats}))
    elif result.get("output_uri"):
        namespace, name = _dataset_name(result["output_uri"])
        stats = OutputStatisticsOutputDatasetFacet(rowCount=m.get("rows_out"))
        outputs.append(OutputDataset(namespace, name, outputFacets={"outputStatistics": stats}))
    facet = RayDataLLMRunFacet(
        model=str(result.get("model") or ""),
        raySubmissionId=str(result.get("submission_id") or ""),
        rowsIn=m.get("rows_in"),
        rowsOut=m.get("rows_out"),
        errorRows=m.get("error_rows"),
        inputTokens=m.get("input_tokens"),
        outputTokens=m.get("output_tokens"),
    )
    return OperatorLineage(inputs=inputs, outputs=outputs, run_facets={"rayDataLLM": facet})
