"""Scale: the provider's batch job vs a hand-written Ray Data pipeline, and resume.

The seed's industry pipeline (seed 003: customers CSV -> industry label) against a local
OpenAI-compatible stand-in that answers at once (benchmarks/standin_server.py), through
Ray's HttpRequestProcessorConfig, so the pipeline itself is what is measured:

- ``provider``: the provider's cluster-side job, from the spec RayLLMBatchOperator builds
  (streaming pass, per-block files and records, counts, commit), submitted through the Jobs API;
- ``raw``: read_csv -> the same processor and functions -> write_parquet (benchmarks/raw_pipeline.py).

Both run side by side in one run, alternating, at each size; the object store of the whole
cluster is sampled every 0.5 s (benchmarks/sampler.py). ``--resume`` adds a run stopped at
about half way and its retry. ``--plot`` draws rows/s and object-store use over the run.

``python benchmarks/scale.py --sizes 20000 200000 --repeat 3 --resume``  (make bench)
``python benchmarks/scale.py --sizes 2000000 --kinds provider --plot``  (make bench-2m)
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common, pipeline  # noqa: E402

RATIO_TARGET, RATIO_AT = 1.05, 200_000  # provider job / raw Ray Data pipeline, at this many rows and more
CONCURRENCY, BATCH_SIZE = 2, 256
JOB_ENV: dict[str, str] = {}  # --env: settings for the provider's job (e.g. RAYDLLM_OBJECT_STORE_BUDGET)


def _hook():
    from airflow_provider_raydatallm.hooks.ray import RayHook

    return RayHook()


def customers(rows: int) -> Path:
    from demo_helpers import write_customers_csv

    path = common.WORK / "input" / f"customers-{rows}.csv"
    if not path.exists():
        started = time.monotonic()
        write_customers_csv(path, rows)
        print(f"generated {rows:,} customers in {time.monotonic() - started:.1f} s: {path}", flush=True)
    return path


def provider_spec(source: Path, out: Path, url: str, run_id: str, resume_key: str = "") -> Any:
    """The spec RayLLMBatchOperator builds for this task (its own build_spec, no Airflow run)."""
    from airflow_provider_raydatallm.job.spec import RunIdentity
    from airflow_provider_raydatallm.operators import RayLLMBatchOperator

    op = RayLLMBatchOperator(
        task_id="classify", processor_config=pipeline.http_config(url, CONCURRENCY, BATCH_SIZE),
        preprocess=pipeline.preprocess, postprocess=pipeline.postprocess, input_uri=str(source),
        output_uri=str(out), id_column="Customer Id", num_partitions=3 * CONCURRENCY,
    )  # fmt: skip
    identity = RunIdentity(dag_id="bench", task_id="classify", run_id=run_id, try_number=1,
                           resume_key=resume_key, keep_progress=bool(resume_key))  # fmt: skip
    return op.build_spec(identity)


def run_provider(hook, source: Path, out: Path, url: str, resume_key: str = "", stop_at: float | None = None):
    """Submit the provider's job; (wall s, result metrics or None, job id)."""
    from airflow_provider_raydatallm.job.metrics import find_result
    from airflow_provider_raydatallm.operators import _jobs

    spec = provider_spec(source, out, url, f"bench-{uuid.uuid4().hex[:8]}", resume_key)
    job_id = f"bench-provider-{uuid.uuid4().hex[:10]}"
    started = time.monotonic()
    _jobs.submit(hook, spec, job_id, _jobs.Submission(runtime_env={"env_vars": JOB_ENV} if JOB_ENV else {}))
    if stop_at is not None:
        _stop_when_written(hook, job_id, out, stop_at)
    info = common.wait_job(hook, job_id)
    wall = time.monotonic() - started
    result = find_result(hook.get_job_logs(job_id))
    if stop_at is None and info.status.value != "SUCCEEDED":
        raise RuntimeError(f"provider job {job_id} ended {info.status.value}: {info.message}")
    return wall, (result.metrics.model_dump() if result else None), job_id


def _written(out: Path) -> int:
    total = 0
    for record in out.glob("_raydllm/staging/*/_blocks/*.json"):
        try:
            total += int(json.loads(record.read_text()).get("ok") or 0)
        except (ValueError, OSError):
            pass
    return total


def _stop_when_written(hook, job_id: str, out: Path, rows: float) -> None:
    while not hook.get_job_status(job_id).is_terminal:
        if _written(out) >= rows:
            hook.stop_job(job_id)
            return
        time.sleep(0.5)


def run_raw(hook, source: Path, out: Path, url: str) -> float:
    bench_dir = str(Path(__file__).resolve().parent)
    working_dir = hook.upload_working_dir(bench_dir, excludes=("__pycache__",))
    job_id = f"bench-raw-{uuid.uuid4().hex[:10]}"
    started = time.monotonic()
    hook.submit_job(
        f"python raw_pipeline.py {source} {out} {url} {CONCURRENCY} {BATCH_SIZE} {3 * CONCURRENCY}",
        submission_id=job_id, runtime_env={"working_dir": working_dir},
    )  # fmt: skip
    info = common.wait_job(hook, job_id)
    if info.status.value != "SUCCEEDED":
        raise RuntimeError(f"raw job {job_id} ended {info.status.value}: {hook.get_job_logs(job_id)[-3000:]}")
    return time.monotonic() - started


def count_rows(out: Path) -> int:
    import pyarrow.parquet as pq

    files = [p for p in out.rglob("*.parquet") if not any(part.startswith("_") for part in p.relative_to(out).parts)]
    return sum(pq.read_metadata(p).num_rows for p in files)


def measure(kind: str, rows: int, url: str, hook, trace: bool = False) -> dict[str, Any]:
    source = customers(rows)
    out = common.WORK / "out" / f"{kind}-{rows}"
    shutil.rmtree(out, ignore_errors=True)
    progress: list[tuple[float, int]] = []
    stop = threading.Event()

    def watch() -> None:  # the stand-in's request count: rows through the engine stage
        while not stop.is_set():
            progress.append((time.time(), common.served(url)))
            stop.wait(1.0)

    watcher = threading.Thread(target=watch, daemon=True)
    with common.sampling(f"{kind}-{rows}") as mem_path:
        started_at = time.time()
        watcher.start()
        if kind == "provider":
            wall, metrics, _ = run_provider(hook, source, out, url)
        else:
            wall, metrics = run_raw(hook, source, out, url), None
        stop.set()
        watcher.join()
    mem = [s for s in common.samples(mem_path) if s["t"] >= started_at]
    written = count_rows(out)
    if written != rows:
        raise RuntimeError(f"{kind} at {rows:,} rows wrote {written:,} rows")
    row = {
        "kind": kind, "rows": rows, "wall_s": round(wall, 1), "rows_per_s": round(rows / wall, 1),
        "peak_object_store": max((s["used"] for s in mem), default=0),
        "spilled": max((s.get("spilled", 0) for s in mem), default=0), "metrics": metrics,
    }  # fmt: skip
    if trace:
        row["trace"] = {"progress": progress, "memory": [(s["t"], s["used"]) for s in mem], "start": started_at}
    shutil.rmtree(out, ignore_errors=True)
    print(f"{kind:>8} {rows:>9,} rows: {wall:7.1f} s, {rows / wall:8.1f} rows/s, peak object store "
          f"{common.mib(row['peak_object_store'])}", flush=True)  # fmt: skip
    return row


def resume_bench(rows: int, url: str, hook, uninterrupted: float) -> dict[str, Any]:
    source = customers(rows)
    out = common.WORK / "out" / f"resume-{rows}"
    shutil.rmtree(out, ignore_errors=True)
    key = f"resume-bench-{uuid.uuid4().hex[:8]}"
    first_wall, _, first_id = run_provider(hook, source, out, url, resume_key=key, stop_at=rows / 2)
    kept = _written(out)
    before = common.served(url)
    retry_wall, metrics, _ = run_provider(hook, source, out, url, resume_key=key)
    sent = common.served(url) - before
    written = count_rows(out)
    shutil.rmtree(out, ignore_errors=True)
    if written != rows:
        raise RuntimeError(f"resume at {rows:,} rows committed {written:,} rows")
    result = {"rows": rows, "stopped_job": first_id, "first_wall_s": round(first_wall, 1), "kept_rows": kept,
              "retry_wall_s": round(retry_wall, 1), "retry_processed": sent, "resumed_rows": metrics["resumed_rows"],
              "total_wall_s": round(first_wall + retry_wall, 1), "uninterrupted_wall_s": round(uninterrupted, 1)}  # fmt: skip
    print(f"  resume {rows:,}: stopped after {first_wall:.1f} s with {kept:,} rows kept; retry {retry_wall:.1f} s "
          f"processed {sent:,} rows ({metrics['resumed_rows']:,} resumed)", flush=True)  # fmt: skip
    return result


def plot(row: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trace, start = row["trace"], row["trace"]["start"]
    progress = trace["progress"]
    times, rates = [], []
    for (t0, n0), (t1, n1) in zip(progress, progress[1:]):
        if t1 > t0:
            times.append(t1 - start)
            rates.append((n1 - n0) / (t1 - t0))
    fig, left = plt.subplots(figsize=(9, 4))
    left.plot(times, rates, color="tab:blue", linewidth=1)
    left.set_xlabel("seconds since submission")
    left.set_ylabel("rows/s through the endpoint", color="tab:blue")
    right = left.twinx()
    right.plot([t - start for t, _ in trace["memory"]], [u / 2**20 for _, u in trace["memory"]], color="tab:red",
               linewidth=1)  # fmt: skip
    right.set_ylabel("object store used (MiB)", color="tab:red")
    right.set_ylim(bottom=0)
    left.set_title(f"{row['kind']} job, {row['rows']:,} rows: {row['rows_per_s']:,.0f} rows/s over {row['wall_s']:,.0f} s")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


def report(rows: list[dict[str, Any]], resumed: dict[str, Any] | None, command: str) -> str:
    by = {(r["kind"], r["rows"]): r for r in rows}
    sizes = sorted({r["rows"] for r in rows})
    lines = [f"Command: `{command}` ({time.strftime('%Y-%m-%d')}; {common.machine()}). Stand-in endpoint: "
             f"HttpRequestProcessorConfig, concurrency {CONCURRENCY}, batch_size {BATCH_SIZE}; 3x{CONCURRENCY} "
             "partitions; each row the median run at that size (of an even number of runs, the slower middle one), "
             "its peak object store the median of the runs' peaks.", "",
             "| rows | job | wall s | rows/s | peak object store | spilled |", "|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    for size in sizes:
        for kind in ("raw", "provider"):
            if (kind, size) in by:
                r = by[(kind, size)]
                lines.append(f"| {size:,} | {kind} | {r['wall_s']:,} | {r['rows_per_s']:,.0f} | "
                             f"{common.mib(r['peak_object_store'])} | {common.mib(r['spilled'])} |")  # fmt: skip
    ratios = [(s, by[("provider", s)]["wall_s"] / by[("raw", s)]["wall_s"]) for s in sizes
              if ("provider", s) in by and ("raw", s) in by]  # fmt: skip
    if ratios:
        # The target is the start-up issue's: at 200,000 rows and above, the provider's job within 5% of raw.
        def verdict(size: int, ratio: float) -> str:
            return f" (target <= {RATIO_TARGET}: {'pass' if ratio <= RATIO_TARGET else 'miss'})" if size >= RATIO_AT else ""

        lines += ["", "Wall ratio provider / raw: " + ", ".join(f"{s:,} rows **{x:.2f}**{verdict(s, x)}" for s, x in ratios)]
    if len(sizes) > 1:
        for kind in ("raw", "provider"):
            peaks = [by[(kind, s)]["peak_object_store"] for s in sizes if (kind, s) in by]
            if len(peaks) > 1 and peaks[0]:
                lines.append(f"Peak object store, {kind}, {sizes[-1]:,} vs {sizes[0]:,} rows: **{peaks[-1] / peaks[0]:.2f}x** "
                             "(target for the provider: flat)")  # fmt: skip
    if resumed:
        r = resumed
        lines += ["", f"Resume at {r['rows']:,} rows: the job stopped after {r['first_wall_s']} s with "
                  f"{r['kept_rows']:,} rows written; the retry processed **{r['retry_processed']:,}** rows "
                  f"({r['resumed_rows']:,} carried over; target about {r['rows'] - r['kept_rows']:,}) in "
                  f"{r['retry_wall_s']} s; stopped + retry {r['total_wall_s']} s vs uninterrupted "
                  f"{r['uninterrupted_wall_s']} s (**{r['total_wall_s'] / r['uninterrupted_wall_s']:.2f}x**)."]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--kinds", nargs="+", default=["raw", "provider"], choices=["raw", "provider"])
    parser.add_argument("--repeat", type=int, default=1, help="runs of each kind at each size (alternated)")
    parser.add_argument("--resume", action="store_true", help="also stop a provider run half way and retry it")
    parser.add_argument("--plot", action="store_true", help="plot rows/s and memory of the largest provider run")
    parser.add_argument("--section", default="Scale: provider job vs raw Ray Data")
    parser.add_argument("--env", nargs="*", default=[], help="KEY=VALUE environment of the provider's job")
    parser.add_argument("--no-doc", action="store_true", help="print the figures only")
    args = parser.parse_args()
    JOB_ENV.update(item.split("=", 1) for item in args.env)
    command = "python benchmarks/scale.py " + shlex.join(sys.argv[1:])
    common.connect()
    hook = _hook()
    results: list[dict[str, Any]] = []
    resumed = None
    with common.standin_server() as url:
        measure("raw", 1000, url, hook)  # warm-up: package upload, worker start
        for size in args.sizes:
            runs: dict[str, list[dict[str, Any]]] = {k: [] for k in args.kinds}
            for _ in range(args.repeat):
                for kind in args.kinds:
                    runs[kind].append(measure(kind, size, url, hook, trace=args.plot))
            for kind, done in runs.items():
                median = sorted(done, key=lambda r: r["wall_s"])[len(done) // 2]
                median["peak_object_store"] = statistics.median(r["peak_object_store"] for r in done)
                results.append(median)
        if args.resume:
            size = max(args.sizes)
            uninterrupted = next(r["wall_s"] for r in results if r["kind"] == "provider" and r["rows"] == size)
            resumed = resume_bench(size, url, hook, uninterrupted)
    body = report(results, resumed, command)
    if args.plot:
        largest = max((r for r in results if r["kind"] == "provider"), key=lambda r: r["rows"])
        image = common.ROOT / "docs" / "images" / f"bench-scale-{largest['rows']}.png"
        plot(largest, image)
        body += f"\n\n![rows/s and object-store use over the run]({image.relative_to(common.ROOT / 'docs')})"
    print(body)
    if args.no_doc:
        return
    common.update_doc(args.section, body)
    (common.WORK / "scale.json").write_text(json.dumps({"results": [{k: v for k, v in r.items() if k != "trace"}
                                                                     for r in results], "resume": resumed}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
