"""The batch job: read, repartition, run the ``ray.data.llm`` processor, write, commit.

The only provider module that imports Ray. It runs as the Ray job's driver (see
``__main__.py``) and can be run by hand with a spec file to debug a job without Airflow.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from airflow_provider_raydatallm.job import callables, commit, io, lock, preflight, resume, rows, sink
from airflow_provider_raydatallm.job.metrics import JobMetrics, JobResult, first_error_records, split_wall, stage_seconds
from airflow_provider_raydatallm.job.spec import JobSpec, ProcessorSpec, SecretRef

log = logging.getLogger("raydllm.job")
# How long a job waits for another job writing the same output (e.g. one being stopped).
LOCK_WAIT_SECONDS = float(os.environ.get("RAYDLLM_LOCK_WAIT_SECONDS") or 120)


class JobConfigError(ValueError):
    """The spec's processor config or callables are not usable on this cluster."""


def resolve_secret(ref: SecretRef, shipped: dict[str, str]) -> str:
    """The value behind a secret reference: an environment variable here, or a shipped value."""
    value = os.environ.get(ref.name) if ref.source == "env" else shipped.get(ref.name)
    if not value:
        where = (f"the environment variable {ref.name} on the Ray nodes" if ref.source == "env"
                 else f"the shipped secret {ref.name}")  # fmt: skip
        raise JobConfigError(f"{where} is not set (a header of the processor config needs it)")
    return ref.prefix + value


def build_config(spec: ProcessorSpec, continue_on_error: bool, secrets: dict[str, str] | None = None) -> Any:
    import ray.data.llm as llm

    cls = getattr(llm, spec.type, None)
    if cls is None:
        raise JobConfigError(f"ray.data.llm on this cluster has no {spec.type} (Ray {_ray_version()})")
    kwargs = dict(spec.kwargs)
    fields = getattr(cls, "model_fields", {})
    # The seeds' has_image=True became prepare_multimodal_stage in newer Ray releases.
    if "has_image" in kwargs and "has_image" not in fields and "prepare_multimodal_stage" in fields:
        kwargs.setdefault("prepare_multimodal_stage", kwargs.pop("has_image"))
        log.info("has_image is prepare_multimodal_stage on Ray %s: translated", _ray_version())
    if spec.type == "ServeDeploymentProcessorConfig":
        kwargs["dtype_mapping"] = request_classes(kwargs.get("dtype_mapping"))
    for header, ref in spec.secret_headers.items():
        kwargs["headers"] = {**(kwargs.get("headers") or {}), header: resolve_secret(ref, secrets or {})}
    if continue_on_error and "should_continue_on_error" in getattr(cls, "model_fields", {}):
        kwargs.setdefault("should_continue_on_error", True)
    try:
        return cls(**kwargs)
    except Exception as err:  # pydantic's ValidationError: the same shape as the Airflow side's check
        details = getattr(err, "errors", None)
        if callable(details):
            found = "; ".join(
                "processor_config" + "".join(f".{p}" for p in e.get("loc", ())) + f": {e.get('msg')}" for e in details()
            )
        else:
            found = f"{type(err).__name__}: {err}"
        raise JobConfigError(
            f"processor_config is not a valid {spec.type} (Ray {_ray_version()}): {found}"
        ) from None


# The OpenAI request classes a Serve LLM deployment takes, by the names rows give as ``dtype``.
OPENAI_REQUESTS = ("ChatCompletionRequest", "CompletionRequest", "EmbeddingRequest")


def request_classes(names: dict[str, str] | None) -> dict[str, Any]:
    """dtype_mapping as classes: ``"module:Class"`` imported, a bare name taken from
    ``ray.serve.llm.openai_api_models``; unset: the OpenAI request classes by name."""
    import importlib

    models = importlib.import_module("ray.serve.llm.openai_api_models")
    if not names:
        # Some names are unions of request classes in some releases: only classes qualify.
        return {name: getattr(models, name) for name in OPENAI_REQUESTS if isinstance(getattr(models, name, None), type)}
    classes = {}
    for key, path in names.items():
        module, _, attr = path.rpartition(":")
        try:
            target = importlib.import_module(module) if module else models
            for part in attr.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as err:
            raise JobConfigError(f"processor_config.dtype_mapping[{key!r}]={path!r} cannot be imported here: {err}") from None
        classes[key] = target
    return classes


def build_processor(config: Any, preprocess: Any, postprocess: Any) -> Any:
    import ray.data.llm as llm

    # build_processor since Ray 2.5x; the seeds' build_llm_processor on older releases.
    build = getattr(llm, "build_processor", None) or getattr(llm, "build_llm_processor")
    return build(config, preprocess=preprocess, postprocess=postprocess)


def _ray_version() -> str:
    import ray

    return ray.__version__


def _max_concurrency(config: Any) -> int:
    concurrency = getattr(config, "concurrency", 1) or 1
    return max(concurrency) if isinstance(concurrency, (tuple, list)) else int(concurrency)


def choose_partitions(requested: int | None, concurrency: int, cluster_slots: int, rows_in: int) -> int:
    """The seeds' advice: 2-4x the inference workers. We take 3x the workers the cluster can
    hold at once, never more blocks than rows."""
    if requested:
        return requested
    workers = max(1, min(concurrency, cluster_slots) if cluster_slots else concurrency)
    return max(1, min(3 * workers, rows_in))


# Blocks never grow past this many rows, whatever the input's size: the object store holds
# a bounded number of bounded blocks, so its peak does not grow with the row count.
MAX_BLOCK_ROWS = int(os.environ.get("RAYDLLM_MAX_BLOCK_ROWS") or 5000)


# What the pass may hold in the object store at once (blocks read ahead, queued between
# stages, in flight); Ray Data throttles the read when it is reached. 0: Ray's default
# (a share of the cluster's object store, so a large input fills it).
OBJECT_STORE_BUDGET = int(os.environ.get("RAYDLLM_OBJECT_STORE_BUDGET") or 64 * 2**20)
# Read blocks are cut at this size (Ray's default, 128 MiB, reads a 300 MB CSV file as
# three blocks of 128 MiB held at once).
READ_BLOCK_BYTES = int(os.environ.get("RAYDLLM_READ_BLOCK_BYTES") or 8 * 2**20)


def bound_memory() -> None:
    """Keep the pass's object-store use bounded whatever the input's size."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.target_max_block_size = min(ctx.target_max_block_size or READ_BLOCK_BYTES, READ_BLOCK_BYTES)
    if OBJECT_STORE_BUDGET:
        ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
            object_store_memory=OBJECT_STORE_BUDGET
        )


def _probe(table: Any) -> Any:
    import pyarrow as pa

    return pa.table({"rows": [table.num_rows], "columns": [json.dumps(table.column_names)]})


def columns_and_rows(ds: Any, fmt: str) -> tuple[list[str], int]:
    """The input's columns and row count. Parquet files say both in their footers; a text
    input is read once, streaming, block by block: ``schema()`` would read a whole file to
    give one row, and hold what it read."""
    if fmt == "parquet":
        return list(ds.schema().names), ds.count()
    probes = ds.map_batches(_probe, batch_format="pyarrow", batch_size=None).take_all()
    columns = next((json.loads(p["columns"]) for p in probes if p["rows"]), None)
    if columns is None:  # no rows: the schema Ray infers for an empty read
        schema = ds.schema()
        columns = list(schema.names) if schema is not None else []
    return columns, sum(int(p["rows"]) for p in probes)


def block_rows(rows: int, partitions: int) -> int:
    """Rows per block: the partitions' share of the rows, at most MAX_BLOCK_ROWS."""
    return max(1, min(-(-rows // max(1, partitions)), MAX_BLOCK_ROWS))


def _cluster_slots(config: Any) -> int:
    import ray

    resources = ray.cluster_resources()
    uses_gpu = bool(getattr(config, "accelerator_type", None)) or resources.get("GPU", 0) > 0
    return int(resources.get("GPU" if uses_gpu else "CPU", 0))


class JobIntegrityError(RuntimeError):
    """The processed rows break the job's invariants; nothing is committed."""


class TooManyErrorRowsError(RuntimeError):
    """More rows failed than the task allows; nothing is committed."""


def check_counts(rows_in: int, counts: dict[str, int], first_errors: list[dict[str, Any]], max_error_ratio: float) -> None:
    """Fail the job, before anything is committed, when its rows do not add up, when a row
    counted as output never reached the processor, or when too many rows failed."""
    rows_out, error_rows = counts["ok"], counts["errors"]
    if rows_in != rows_out + error_rows:
        raise JobIntegrityError(f"row count mismatch: {rows_in} in, {rows_out} out, {error_rows} errors")
    if counts["not_inferred"]:
        raise JobIntegrityError(
            f"{counts['not_inferred']} of {rows_out} output rows lack the processor's result "
            "(they skipped inference or the postprocess): refusing to commit them as output"
        )
    if rows_in and error_rows and (rows_out == 0 or error_rows / rows_in > max_error_ratio):
        shown = "; ".join(f"row {e['row_id']} ({e['stage']}): {e['error']}" for e in first_errors)
        why = "every row failed" if rows_out == 0 else f"more than max_error_ratio={max_error_ratio:g}"
        raise TooManyErrorRowsError(
            f"{error_rows} of {rows_in} rows failed ({why}); nothing was committed. First errors: {shown}"
        )


def _locations(
    spec: JobSpec, tag: str, staging: str | None = None
) -> tuple[commit.OutputDir, commit.OutputDir | None, commit.OutputDir]:
    """The output directory, the error directory when it is not nested in the output (else
    None), and the error directory."""
    out_uri, err_uri = spec.output.uri.rstrip("/"), spec.output.error_uri.rstrip("/")
    nested = err_uri.startswith(out_uri + "/")
    errors = commit.OutputDir(err_uri, tag, staging=staging)
    output = commit.OutputDir(out_uri, tag, skip=err_uri if nested else None, staging=staging)
    return output, (errors if not nested else None), errors


def _skip_written(
    ds: Any, progress: resume.Progress, spec: JobSpec, columns: list[str], rows_in: int, output: commit.OutputDir
) -> tuple[Any, int, resume.Progress]:
    """The input without the rows earlier tries wrote: (dataset, rows left, progress), or
    the whole input and no progress when the ids do not match one row each."""
    import ray

    ids = ray.put(frozenset(progress.ids))
    left = ds.map_batches(resume.SkipDone(ids, spec.input.id_column, columns), batch_format="pyarrow")
    remaining = left.count()
    if rows_in - remaining != progress.rows:
        log.warning(
            "resume: %d input rows match the %d rows earlier tries wrote (values of id_column %r are not "
            "unique, or the input changed); starting from zero", rows_in - remaining, progress.rows,
            spec.input.id_column,
        )  # fmt: skip
        output.discard_staging()  # every recorded block goes
        return ds, rows_in, resume.Progress()
    log.info(
        "resuming: %d of %d rows were written by an earlier try of this task (%d blocks); %d to process",
        progress.rows, rows_in, progress.blocks, remaining,
    )  # fmt: skip
    return left, remaining, progress


def run(spec: JobSpec, tag: str, secrets: dict[str, str] | None = None) -> JobResult:
    """Run one batch; ``tag`` names this attempt's staging directory (the submission id);
    ``secrets`` are the shipped values the spec refers to."""
    import ray

    started = time.monotonic()
    ray.init(ignore_reinit_error=True, log_to_driver=True)
    log.info("Ray %s, cluster resources %s", ray.__version__, ray.cluster_resources())
    preprocess, postprocess = callables.load(spec.preprocess), callables.load(spec.postprocess)
    config = build_config(spec.processor, spec.should_continue_on_error, secrets)

    staging, resumable = resume.staging_name(spec.run, spec.input.id_column, tag)
    output, separate_errors, errors = _locations(spec, tag, staging)
    dirs = [d for d in (output, separate_errors) if d is not None]
    holder = {"submission_id": spec.run.submission_id or tag, "run": spec.run.model_dump()}
    locks = lock.acquire([d.fs.unstrip_protocol(d.path) for d in dirs], holder, LOCK_WAIT_SECONDS)
    for directory in (output, errors):
        directory.check_owned(spec.output.overwrite)  # before any actor or engine starts
        for stale in directory.clear_stale():
            log.info("removed what an earlier attempt left unfinished: %s", stale)
    preflight.run_all(spec, tag)
    # Error rows of a failed try are processed again; its recorded good rows are kept.
    errors.discard_staging()
    progress = resume.load(output) if resumable else resume.Progress()

    bound_memory()
    ds = io.read_input(spec.input)
    columns, rows_in = columns_and_rows(ds, spec.input.format)
    preflight.check_id_column(spec.input.id_column, columns)
    to_process = rows_in
    if progress.rows:
        ds, to_process, progress = _skip_written(ds, progress, spec, columns, rows_in, output)
    num_partitions = choose_partitions(
        spec.input.num_partitions, _max_concurrency(config), _cluster_slots(config), to_process
    )
    rows_per_block = block_rows(to_process, num_partitions)
    log.info(
        "read %d rows (%s) from %s; %d partitions (blocks of at most %d rows)",
        rows_in, ", ".join(columns), spec.input.uris, num_partitions, rows_per_block,
    )  # fmt: skip
    # Streaming repartition: blocks are cut as rows arrive, never the whole input at once
    # (repartition(n) is an all-to-all step that holds every row in the object store).
    ds = ds.repartition(target_num_rows_per_block=rows_per_block)

    go_on = spec.should_continue_on_error
    processor = build_processor(
        config,
        preprocess=rows.Preprocess(preprocess, columns, spec.input.id_column, go_on),
        postprocess=rows.Postprocess(postprocess, columns, go_on, rows.RESULT_COLUMNS.get(spec.processor.type, ())),
    )
    # One streaming pass: every block is written (good rows to the output's staging, error
    # records to the error output's) as it leaves the processor; only tallies come back.
    # (Materializing the tallies holds one small row per block, and keeps the pass's stats.)
    tallies = processor(ds).map_batches(
        sink.WriteBlock(output.staging_uri, errors.staging_uri, spec.output.format, columns, record=resumable),
        batch_format="pyarrow", batch_size=None,
    )  # fmt: skip
    try:
        if to_process:
            tallies = tallies.materialize()
            counts, first_errors = sink.totals(tallies.take_all())
            stats_text = tallies.stats()
        else:  # an earlier try wrote every row: nothing to run
            (counts, first_errors), stats_text = sink.totals([]), ""
        for key in resume.COUNTED:
            counts[key] += progress.counts[key]
        check_counts(rows_in, counts, first_errors, spec.max_error_ratio)
    except BaseException:
        errors.discard_staging()  # error rows are processed again by any later try
        if resumable and spec.run.keep_progress:
            kept = resume.load(output)
            log.info(
                "this try failed; the %d rows written so far (%d blocks) stay staged for the task's next try",
                kept.rows, kept.blocks,
            )  # fmt: skip
        else:
            output.discard_staging()  # a failed attempt leaves the outputs as they were
        raise
    rows_out, error_rows = counts["ok"], counts["errors"]
    wall = time.monotonic() - started
    stages = stage_seconds(stats_text)
    inference_seconds, startup_seconds = split_wall(wall, stages)
    metrics = JobMetrics(
        rows_in=rows_in,
        rows_out=rows_out,
        error_rows=error_rows,
        input_tokens=counts["i"],
        output_tokens=counts["o"],
        wall_seconds=round(wall, 3),
        rows_per_second=round((rows_in - progress.rows) / wall, 3) if wall else 0.0,
        output_tokens_per_second=round((counts["o"] - progress.counts["o"]) / wall, 3) if wall else 0.0,
        num_partitions=num_partitions,
        stage_seconds=stages,
        inference_seconds=inference_seconds,
        startup_seconds=startup_seconds,
        resumed_rows=progress.rows,
    )
    result = JobResult(
        output_uri=spec.output.uri,
        error_output_uri=spec.output.error_uri,
        output_format=spec.output.format,
        metrics=metrics,
        first_errors=first_error_records(first_errors),
    )
    pause = float(os.environ.get("RAYDLLM_TEST_COMMIT_PAUSE") or 0)
    identity = {"submission_id": holder["submission_id"], "run": spec.run.model_dump()}
    # Errors first: once the output's manifest names the new version, its errors are in place.
    errors.commit(commit.Manifest(rows=error_rows, **identity), spec.output.overwrite, pause)
    output.commit(
        commit.Manifest(rows=rows_out, extra={"metrics": metrics.model_dump(), "format": spec.output.format}, **identity),
        spec.output.overwrite,
        pause,
    )
    del locks  # released when the job ends anyway; dropping the handles says we are done
    log.info("committed %d rows to %s (%d error rows to %s)", rows_out, spec.output.uri, error_rows, spec.output.error_uri)
    return result
