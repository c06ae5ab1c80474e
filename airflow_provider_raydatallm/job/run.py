"""The batch job: read, repartition, run the ``ray.data.llm`` processor, write, commit.

With ``processor.py``, the only provider code that imports Ray. It runs as the Ray job's
driver (see ``__main__.py``) and can be run by hand with a spec file to debug a job
without Airflow. ``run`` is a sequence of named steps; ``outputs.py`` owns the outputs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from airflow_provider_raydatallm.job import callables, io, phases, preflight, progress as progress_log, resume, rows, sink, tables
from airflow_provider_raydatallm.job.metrics import JobMetrics, JobResult, first_error_records, split_wall, stage_seconds
from airflow_provider_raydatallm.job.outputs import Outputs
from airflow_provider_raydatallm.job.processor import build_config, build_processor, max_concurrency, prewarm
from airflow_provider_raydatallm.job.spec import JobSpec

log = logging.getLogger("raydllm.job")


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

    return pa.table({"rows": [table.num_rows], "columns": [json.dumps(table.column_names)],
                     "schema": [table.schema.remove_metadata().serialize().to_pybytes()]})  # fmt: skip


# A text input up to this size (its files' bytes) is counted in the driver with Ray Data's own
# reader (the same read tasks, run in this process), not by a Ray Data pass: that pass would
# start a worker process for the job first (5-8 s on a small node, for a few rows).
LOCAL_COUNT_BYTES = int(os.environ.get("RAYDLLM_LOCAL_COUNT_BYTES") or 32 * 2**20)
LOCAL_COUNT_FILES = 64  # more files than this are read by a pass (spread over the cluster)
_COMPRESSED = (".gz", ".bz2", ".zst", ".zstd", ".xz", ".lz4", ".snappy", ".zip", ".br")


def _local_probes(ds: Any, columns: list[str] | None, limit: int | None) -> list[dict[str, Any]] | None:
    """The probes of a small text input, read in this process by the dataset's own read
    tasks; None when the input is larger than LOCAL_COUNT_BYTES or the dataset is not a
    plain read (with the spec's column selection and limit), to count it by a Ray Data pass."""
    try:
        from ray.data._internal.logical.operators.read_operator import Read
        from ray.data.block import BlockAccessor

        op, steps = ds._logical_plan.dag, []
        while op.input_dependencies:
            steps.append(type(op).__name__)
            op = op.input_dependencies[0]
        if not isinstance(op, Read) or set(steps) - {"Project", "Limit"}:
            return None
        source = op.datasource
        paths, sizes = list(source._paths()), list(source._file_sizes())
        # Only a few files of known size, not compressed (their bytes say little of the rows).
        if (not paths or len(paths) > LOCAL_COUNT_FILES or any(s is None for s in sizes)
                or sum(sizes) > LOCAL_COUNT_BYTES or any(str(p).lower().endswith(_COMPRESSED) for p in paths)
                or (getattr(source, "_open_stream_args", None) or {}).get("compression")):  # fmt: skip
            return None
        tasks = source.get_read_tasks(1)
    except Exception:  # noqa: BLE001 (Ray's internals moved: count by a pass, as before)
        return None
    probes, left = [], limit
    for task in tasks:
        for block in task():
            table = BlockAccessor.for_block(block).to_arrow()
            if columns:
                if set(columns) - set(table.column_names):
                    return None  # the pass names the missing column, as it always did
                table = table.select(columns)
            if left is not None:
                table, left = table.slice(0, left), max(0, left - table.num_rows)
            probes.append(_probe(table).to_pylist()[0])
            if left == 0:
                return probes
    return probes


def columns_and_rows(ds: Any, fmt: str, columns: list[str] | None = None, limit: int | None = None) -> tuple[list[str], int, bytes]:
    """The input's columns, row count and Arrow schema (serialized: the types the output's
    pass-through columns are given back, ``sink.restore_types``). Parquet files say all in
    their footers; a small text input is read in the driver (``_local_probes``); a larger
    one once, streaming, block by block: ``schema()`` would read a whole file to give one
    row, and hold what it read."""
    import pyarrow as pa

    if fmt == "parquet":
        schema = ds.schema()
        arrow = getattr(schema, "base_schema", None)
        types = arrow.serialize().to_pybytes() if isinstance(arrow, pa.Schema) else b""
        return list(schema.names), ds.count(), types
    probes = _local_probes(ds, columns, limit)
    if probes is None:
        probes = ds.map_batches(_probe, batch_format="pyarrow", batch_size=None).take_all()
    columns = next((json.loads(p["columns"]) for p in probes if p["rows"]), None)
    if columns is None:  # no rows: the schema Ray infers for an empty read
        schema = ds.schema()
        columns = list(schema.names) if schema is not None else []
    schemas = [pa.ipc.read_schema(pa.py_buffer(p["schema"])) for p in probes if p["rows"]]
    try:
        types = pa.unify_schemas(schemas, promote_options="permissive").serialize().to_pybytes() if schemas else b""
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise preflight.PreflightError(_type_clash(schemas, fmt) or f"the input's files disagree on types: {err}") from None
    return columns, sum(int(p["rows"]) for p in probes), types


def _type_clash(schemas: list[Any], fmt: str) -> str | None:
    """Name the first column whose type differs between the input's blocks, and the types."""
    import pyarrow as pa

    seen: dict[str, Any] = {}
    for schema in schemas:
        for field in schema:
            first = seen.setdefault(field.name, field.type)
            try:
                pa.unify_schemas([pa.schema([(field.name, first)]), pa.schema([(field.name, field.type)])],
                                 promote_options="permissive")  # fmt: skip
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                return (
                    f"input column {field.name!r} is read as {first} in one part of the {fmt} input and as "
                    f"{field.type} in another (types are inferred per file or block): make the values of one "
                    "kind in every file, or read it as text and convert it in the preprocess"
                )
    return None


def block_rows(rows: int, partitions: int) -> int:
    """Rows per block: the partitions' share of the rows, at most MAX_BLOCK_ROWS."""
    return max(1, min(-(-rows // max(1, partitions)), MAX_BLOCK_ROWS))


def _cluster_slots(config: Any) -> int:
    import ray

    resources = ray.cluster_resources()
    uses_gpu = bool(getattr(config, "accelerator_type", None)) or resources.get("GPU", 0) > 0
    return int(resources.get("GPU" if uses_gpu else "CPU", 0))


MODEL_OUTPUT_SHOWN = 200  # characters of the model's answer shown per failed row in a failure message


class JobIntegrityError(RuntimeError):
    """The processed rows break the job's invariants; nothing is committed."""


class TooManyErrorRowsError(RuntimeError):
    """More rows failed than the task allows: nothing is committed (the error rows are
    kept beside the error output for reading)."""

    def __init__(self, summary: str, shown: str):
        super().__init__(f"{summary}. First errors: {shown}")
        self.summary, self.shown = summary, shown


def check_counts(
    rows_in: int, counts: dict[str, int], first_errors: list[dict[str, Any]], max_error_ratio: float,
    files: dict[str, list[str]] | None = None,
) -> None:  # fmt: skip
    """Fail the job, before anything is committed, when its rows do not add up, when a row
    counted as output never reached the processor, when two blocks wrote one file, or when
    too many rows failed."""
    rows_out, error_rows = counts["ok"], counts["errors"]
    for kind, names in (files or {}).items():
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise JobIntegrityError(f"two blocks of {kind} rows wrote the same file {doubled[0]} (identical rows and no id_column?)")
    if rows_in != rows_out + error_rows:
        raise JobIntegrityError(f"row count mismatch: {rows_in} in, {rows_out} out, {error_rows} errors")
    if counts["not_inferred"]:
        raise JobIntegrityError(
            f"{counts['not_inferred']} of {rows_out} output rows lack the processor's result "
            "(they skipped inference or the postprocess): refusing to commit them as output"
        )
    if rows_in and error_rows and (rows_out == 0 or error_rows / rows_in > max_error_ratio):
        shown = "; ".join(
            f"row {e['row_id']} ({e['stage']}): {e['error']}"
            + (f" [the model answered {e['model_output'][:MODEL_OUTPUT_SHOWN]!r}]" if e.get("model_output") else "")
            for e in first_errors
        )
        why = "every row failed" if rows_out == 0 else f"more than max_error_ratio={max_error_ratio:g}"
        raise TooManyErrorRowsError(f"{error_rows} of {rows_in} rows failed ({why}); nothing was committed", shown)


def _with_failed_rows(err: TooManyErrorRowsError, outputs: Outputs, files: list[str], rows: int) -> TooManyErrorRowsError:
    """The failure, saying where its error rows were kept for reading (best effort: when
    they cannot be kept, the failure says so and stays the error)."""
    try:
        where = outputs.keep_failed_errors(files, rows, str(err))
    except Exception as keep_err:  # noqa: BLE001 (the rows are a debugging aid; the failure is what matters)
        log.warning("could not keep this run's %d error rows for reading: %s", rows, keep_err)
        return TooManyErrorRowsError(f"{err.summary}; its error rows could not be kept ({keep_err})", err.shown)
    log.info("this run's %d error rows are kept for reading in %s (not committed)", rows, where)
    return TooManyErrorRowsError(f"{err.summary}; its {rows} error rows are in {where} (kept for reading, not "
                                 "committed)", err.shown)  # fmt: skip


def _skip_written(ds: Any, progress: resume.Progress, spec: JobSpec, columns: list[str], rows_in: int, outputs: Outputs) -> tuple[Any, int, resume.Progress]:
    """The input without the rows earlier tries wrote: (dataset, rows left, progress), or
    the whole input and no progress when the ids do not match one row each."""
    import ray

    ids = ray.put(frozenset(progress.ids))
    left = ds.map_batches(resume.SkipDone(ids, spec.input.id_column, columns), batch_format="pyarrow")
    remaining = left.count()
    if rows_in - remaining != progress.rows:
        log.warning(
            "resume: %d input rows match the %d rows earlier tries wrote (values of id_column %r are not "
            "unique); starting from zero", rows_in - remaining, progress.rows, spec.input.id_column,
        )  # fmt: skip
        outputs.output.discard_staging()  # every recorded block goes
        outputs.progress()  # records the input's fingerprint again
        return ds, rows_in, resume.Progress()
    log.info(
        "resuming: %d of %d rows were written by an earlier try of this task (%d blocks); %d to process",
        progress.rows, rows_in, progress.blocks, remaining,
    )  # fmt: skip
    return left, remaining, progress


def read(spec: JobSpec, config: Any, progress: resume.Progress, outputs: Outputs) -> tuple[Any, list[str], int, int, resume.Progress, bytes]:
    """The input, less what earlier tries wrote, cut into bounded blocks: (dataset, input
    columns, rows in, partitions, progress, the input's Arrow schema serialized)."""
    bound_memory()
    ds = io.read_input(spec.input)
    columns, rows_in, types = columns_and_rows(ds, spec.input.format, spec.input.columns, spec.input.limit)
    preflight.check_id_column(spec.input.id_column, columns)
    preflight.check_types(types)
    to_process = rows_in
    if progress.rows:
        ds, to_process, progress = _skip_written(ds, progress, spec, columns, rows_in, outputs)
    partitions = choose_partitions(spec.input.num_partitions, max_concurrency(config), _cluster_slots(config), to_process)
    rows_per_block = block_rows(to_process, partitions)
    log.info(
        "read %d rows (%s) from %s; %d partitions (blocks of at most %d rows)",
        rows_in, ", ".join(columns), spec.input.uris, partitions, rows_per_block,
    )  # fmt: skip
    # Streaming repartition: blocks are cut as rows arrive, never the whole input at once
    # (repartition(n) is an all-to-all step that holds every row in the object store).
    return ds.repartition(target_num_rows_per_block=rows_per_block), columns, rows_in, partitions, progress, types


def process(
    spec: JobSpec, config: Any, user: tuple[Any, Any], ds: Any, columns: list[str], outputs: Outputs, empty: bool,
    types: bytes = b"", shown: progress_log.ProgressLog | None = None, clock: phases.Clock | None = None,
) -> tuple[dict, list, dict, str, list[str]]:
    """One streaming pass: every block is written (good rows to the output's staging, error
    records to the error output's) as it leaves the processor; only tallies come back, and
    ``shown`` (the job's progress line) counts them. Returns (counts, first error records, files written per output, stats text, the
    model names an endpoint reported)."""
    if empty:  # an earlier try wrote every row: nothing to run
        counts, first_errors, files = sink.totals([])
        return counts, first_errors, files, "", []
    preprocess, postprocess = user
    go_on = spec.should_continue_on_error
    processor = build_processor(
        config,
        preprocess=rows.Preprocess(preprocess, columns, spec.input.id_column, go_on),
        postprocess=rows.Postprocess(postprocess, columns, go_on, rows.RESULT_COLUMNS.get(spec.processor.type, ())),
    )
    write = sink.WriteBlock(outputs.output.staging_uri, outputs.errors.staging_uri, spec.output.format, columns,
                            record=outputs.resumable, input_types=types)  # fmt: skip
    pipeline = processor(ds).map_batches(write, batch_format="pyarrow", batch_size=None)
    if clock is not None:
        clock.mark("built")
    # The tallies (one small row per written block) come back as blocks are written: the
    # progress line counts them as they come, and the pass keeps its stats.
    tallies: list[dict[str, Any]] = []
    for batch in pipeline.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
        for tally in batch.to_pylist():
            tallies.append(tally)
            if shown is not None:
                shown.block(int(tally["ok"]), int(tally["errors"]))
    counts, first_errors, files = sink.totals(tallies)
    if clock is not None:
        clock.pass_times(tallies)
        clock.mark("pass_end")
    return counts, first_errors, files, pipeline.stats(), sink.models(tallies)


def run(spec: JobSpec, tag: str, secrets: dict[str, str] | None = None, started_at: float | None = None) -> JobResult:
    """Run one batch; ``tag`` names this job's staging (the submission id); ``secrets`` are
    the shipped values the spec refers to; ``started_at``: when the driver started (epoch
    seconds; now by default)."""
    import ray

    clock = phases.Clock(started_at)
    started = time.monotonic() - (time.time() - clock.marks["started"])
    ray.init(ignore_reinit_error=True, log_to_driver=True)
    log.info("Ray %s, cluster resources %s", ray.__version__, ray.cluster_resources())
    user = callables.load(spec.preprocess), callables.load(spec.postprocess)
    config = build_config(spec.processor, spec.should_continue_on_error, secrets)
    # The engine's library loads while the lock, pre-flight and count run (seconds for vLLM).
    prewarm(spec.processor.type)
    spec = tables.with_work_dirs(spec, secrets or {})  # a table output's rows wait in its work directory
    clock.mark("connected")
    outputs = Outputs.open(spec, tag)
    outputs.claim()  # before any actor or engine starts
    clock.mark("locked")
    try:
        preflight.run_all(spec, tag)
        if spec.output.table is not None:
            outputs.check_slice(secrets or {})
        clock.mark("checked")
        # The progress line, every RAYDLLM_PROGRESS_SECONDS: reading the input, then rows done.
        with progress_log.ProgressLog(None) as shown:
            ds, columns, rows_in, partitions, progress, types = read(spec, config, outputs.progress(), outputs)
            clock.mark("counted")
            shown.rows_known(rows_in, progress.rows)
            counts, first_errors, files, stats_text, models = process(
                spec, config, user, ds, columns, outputs, rows_in == progress.rows, types, shown, clock
            )  # fmt: skip
        for key in resume.COUNTED:
            counts[key] += progress.counts[key]
        try:
            check_counts(rows_in, counts, first_errors, spec.max_error_ratio, files)
        except TooManyErrorRowsError as err:
            raise _with_failed_rows(err, outputs, files["errors"], counts["errors"]) from None
        if not files["errors"]:  # readers of an error output without rows still get its columns
            files["errors"] += filter(None, [sink.write_empty_errors(outputs.errors.staging_uri, spec.output.format)])
    except BaseException:
        outputs.discard(spec.run.keep_progress)
        raise
    metrics = _metrics(time.monotonic() - started, rows_in, counts, partitions, stats_text, progress)
    committed = outputs.commit(files, progress, counts, {"metrics": metrics.model_dump(), "format": spec.output.format},
                               secrets)  # fmt: skip
    clock.mark("committed")
    metrics = metrics.model_copy(update={"phases": phases.phase_seconds(clock.marks), "started_at": clock.marks["started"],
                                         "ended_at": clock.marks["committed"], "moments": phases.moments(clock.marks)})  # fmt: skip
    log.info("where the time went (driver start to commit):\n%s", phases.table(metrics.phases))
    where = spec.output.table.display() if spec.output.table else spec.output.uri
    errors_where = spec.output.error_table.display() if spec.output.error_table else spec.output.error_uri
    log.info("committed %d rows to %s (%d error rows to %s)", counts["ok"], where, counts["errors"], errors_where)
    return JobResult(
        output_uri=spec.output.uri, error_output_uri=spec.output.error_uri, output_format=spec.output.format,
        metrics=metrics, first_errors=first_error_records(first_errors), models=models,
        table=committed.get("table"), error_table=committed.get("error_table"),
    )  # fmt: skip


def _metrics(wall: float, rows_in: int, counts: dict[str, int], partitions: int, stats_text: str,
             progress: resume.Progress) -> JobMetrics:  # fmt: skip
    stages = stage_seconds(stats_text)
    inference_seconds, startup_seconds = split_wall(wall, stages)
    done_here = counts["output_tokens"] - progress.counts["output_tokens"]
    return JobMetrics(
        rows_in=rows_in, rows_out=counts["ok"], error_rows=counts["errors"], input_tokens=counts["input_tokens"],
        output_tokens=counts["output_tokens"], wall_seconds=round(wall, 3),
        rows_per_second=round((rows_in - progress.rows) / wall, 3) if wall else 0.0,
        output_tokens_per_second=round(done_here / wall, 3) if wall else 0.0, num_partitions=partitions,
        stage_seconds=stages, inference_seconds=inference_seconds, startup_seconds=startup_seconds,
        resumed_rows=progress.rows,
    )  # fmt: skip
