"""Warm vs cold engines: the daily sentiment run (4 partitions x 50 posts) three ways, in one run.

- (a) cold: ``example_daily_sentiment`` with 4 partitions: each mapped task's Ray job starts
  its own vLLM engine;
- (b) one job: ``example_daily_sentiment`` with 1 partition: one task, one engine, Ray Data
  splits the rows into blocks inside the job;
- (c) warm: ``example_warm_sentiment`` with 4 partitions: a Serve LLM deployment made by the
  setup task, the 4 mapped tasks' jobs send their rows to it, the teardown deletes it (deploy
  and teardown included in the wall time).

All through dag.test() (which runs mapped tasks one after another), the default model on
vLLM CPU, the same 200 posts; wall time of the whole DAG run. Beside it, the start-up
breakdown of each way's batch tasks (their ``metrics.phases``, mean per task, with a plot),
a warm task's seconds outside inference, and the break-even number of partitions for the
warm path when an engine starts in minutes (a GPU cluster), computed from these phases.

``python benchmarks/warm_cold.py``  (part of make bench)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

TARGET = 0.4
WARM_OUTSIDE_TARGET = 8.0  # a warm task's seconds outside inference
GPU_ENGINE_STARTS = (60.0, 180.0, 300.0)  # seconds: a GPU engine's start, for the break-even
DAY = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)
WAYS = [
    ("a", "cold: one vLLM engine per partition task", "example_daily_sentiment", 4),
    ("b", "one job, Ray Data partitions inside it", "example_daily_sentiment", 1),
    ("c", "warm: mapped tasks on a shared Serve deployment (deploy + teardown included)", "example_warm_sentiment", 4),
]


def run_way(dag_id: str, partitions: int, posts: int, tag: str) -> tuple[float, dict, list[tuple[str, float, float]]]:
    import dagrun

    out = common.WORK / "out" / f"warm-cold-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    conf = {"posts_root": str(common.WORK / "posts"), "output_root": str(out), "num_partitions": partitions,
            "posts_per_day": posts, "sql_conn_id": "bench_sentiment_db"}  # fmt: skip
    log = common.WORK / f"warm-cold-{tag}.log"
    dag_run, seconds, states, xcoms = dagrun.run(common.ROOT / "example_dags" / f"{dag_id}.py", dag_id, conf, log,
                                                 logical_date=DAY)  # fmt: skip
    if set(states.values()) != {"success"}:
        raise RuntimeError(f"{dag_id} ({tag}) ended {states}; see {log}")
    spans = [(ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""), ti.start_date.timestamp(), ti.end_date.timestamp())
             for ti in dagrun.task_instances(dag_run) if ti.start_date and ti.end_date]  # fmt: skip
    return seconds, xcoms, sorted(spans, key=lambda s: s[1])


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def plot(timelines: dict[str, list[tuple[str, float, float]]], path: Path) -> None:
    """One row per task instance, per way: where each run's time went."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sum(len(spans) for spans in timelines.values())
    fig, ax = plt.subplots(figsize=(9, 0.32 * rows + 1.2))
    colors = {"a": "tab:red", "b": "tab:orange", "c": "tab:green"}
    y, labels = 0, []
    for tag, spans in timelines.items():
        start = min(s[1] for s in spans)
        for name, begin, end in spans:
            ax.barh(y, end - begin, left=begin - start, color=colors[tag], height=0.7)
            labels.append(f"({tag}) {name}")
            y += 1
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds from the start of the DAG run")
    ax.set_title("Task instances of the three ways (dag.test runs mapped tasks one after another)", fontsize=9)
    _save(fig, path)


def mean_phases(results: list[dict]) -> dict[str, float]:
    """The batch tasks' phases, mean per task, in the phases' order."""
    from airflow_provider_raydatallm.job.phases import ORDER

    out = {}
    for name in ORDER:
        values = [r["metrics"].get("phases", {}).get(name, 0.0) for r in results]
        if any(values):
            out[name] = sum(values) / len(values)
    return out


def plot_phases(per_task: dict[str, list[dict[str, float]]], path: Path) -> None:
    """One bar per batch task, a segment per phase: cold (a) and warm (c) side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from airflow_provider_raydatallm.job.phases import ORDER

    bars = [(f"({tag}) task {i}", phases) for tag, tasks in per_task.items() for i, phases in enumerate(tasks)]
    fig, ax = plt.subplots(figsize=(9, 0.36 * len(bars) + 1.6))
    cmap = plt.get_cmap("tab20")
    for y, (_, phases) in enumerate(bars):
        left = 0.0
        for k, name in enumerate(ORDER):
            width = phases.get(name, 0.0)
            if width > 0:
                ax.barh(y, width, left=left, color=cmap(k), height=0.7)
                left += width
    ax.set_yticks(range(len(bars)), [b[0] for b in bars], fontsize=7)
    ax.invert_yaxis()
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(k)) for k in range(len(ORDER))]
    ax.legend(handles, ORDER, fontsize=6, ncol=4, loc="lower right")
    ax.set_xlabel("seconds of the task's Ray job, from its submission to its end")
    ax.set_title("Where each batch task's time went: (a) cold engines, (c) warm Serve deployment", fontsize=9)
    _save(fig, path)


def breakeven(cold_task: float, cold_engine: float, warm_task: float, deploy: float, teardown: float) -> list[str]:
    """Rows of the break-even table: with a GPU engine start E, a cold task takes
    cold_task - cold_engine + E and the deploy deploy - cold_engine + E; the warm way pays
    the deploy and teardown once and warm_task per partition."""
    rows = []
    for engine in GPU_ENGINE_STARTS:
        cold = cold_task - cold_engine + engine
        setup = deploy - cold_engine + engine + teardown
        saving = cold - warm_task
        n = setup / saving if saving > 0 else float("inf")
        need = "never" if n == float("inf") else f"{max(1, -(-setup // saving)):.0f}"
        rows.append(f"| {engine:.0f} s | {cold:.0f} s | {warm_task:.0f} s | {setup:.0f} s | {need} | "
                    f"{(setup + 4 * warm_task) / (4 * cold):.2f} |")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=200)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    common.dag_environment()
    os.environ["AIRFLOW_CONN_BENCH_SENTIMENT_DB"] = json.dumps({"conn_type": "sqlite", "host": str(common.WORK / "sentiment.db")})
    rows, walls, timelines, phases, per_task = [], {}, {}, {}, {}
    for tag, what, dag_id, partitions in WAYS:
        seconds, xcoms, timelines[tag] = run_way(dag_id, partitions, args.posts, tag)
        walls[tag] = seconds
        results = xcoms["classify"]
        results = results if isinstance(results, list) else [results]
        phases[tag] = mean_phases(results)
        per_task[tag] = [r["metrics"].get("phases", {}) for r in results]
        labelled = sum(r["metrics"]["rows_out"] for r in results)
        job_s = sum(r["metrics"]["wall_seconds"] for r in results)
        rows.append(f"| ({tag}) {what} | `{dag_id}` | {len(results)} | {labelled} | {job_s:.0f} | {seconds:.0f} | "
                    f"{labelled / seconds:.2f} |")  # fmt: skip
        print(rows[-1], flush=True)
    ratio = walls["c"] / walls["a"]
    verdict = "pass" if ratio <= TARGET else "miss"
    from airflow_provider_raydatallm.job.phases import outside_work

    warm_outside = sum(outside_work(p) for p in per_task["c"]) / len(per_task["c"])
    outside_verdict = "pass" if warm_outside <= WARM_OUTSIDE_TARGET else "miss"
    names = list(dict.fromkeys(n for p in phases.values() for n in p))
    phase_rows = [f"| {n} | " + " | ".join(f"{phases[t].get(n, 0.0):.1f}" for t in ("a", "b", "c")) + " |" for n in names]
    phase_rows.append("| **total** | " + " | ".join(f"**{sum(phases[t].values()):.1f}**" for t in ("a", "b", "c")) + " |")
    phase_rows.append("| outside inference | " + " | ".join(
        f"{sum(outside_work(p) for p in per_task[t]) / len(per_task[t]):.1f}" for t in ("a", "b", "c")) + " |")  # fmt: skip

    def span(tag: str, task: str) -> float:
        found = [end - begin for name, begin, end in timelines[tag] if name.split("[")[0] == task]
        return sum(found) / len(found) if found else 0.0

    cold_task, warm_task = span("a", "classify"), span("c", "classify")
    deploy, teardown = span("c", "deploy_llm"), span("c", "delete_llm")
    cold_engine = phases["a"].get("engine start", 0.0)
    gpu_rows = breakeven(cold_task, cold_engine, warm_task, deploy, teardown)
    body = "\n".join([
        f"Command: `python benchmarks/warm_cold.py --posts {args.posts}` ({time.strftime('%Y-%m-%d')}; {common.machine()}). "
        f"The daily sentiment run over the same {args.posts} posts, default model on vLLM CPU, through dag.test() "
        "(mapped tasks run one after another there).",
        "",
        "| way | DAG | batch tasks | rows labelled | batch jobs s (sum) | DAG run wall s | rows/s |",
        "|---|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"Warm / cold wall: **{ratio:.2f}** (target <= {TARGET}: {verdict}); one job / cold: {walls['b'] / walls['a']:.2f}.",
        "",
        "![task instances of the three ways over time](images/bench-warm-cold.png)",
        "",
        "Where a batch task's time went (its job's `metrics.phases`, mean seconds per task; (b) is one task):",
        "",
        "| phase | (a) cold | (b) one job | (c) warm |",
        "|---|---:|---:|---:|",
        *phase_rows,
        "",
        f"A warm task's time outside inference: **{warm_outside:.1f} s** (target <= {WARM_OUTSIDE_TARGET:.0f} s: "
        f"{outside_verdict}).",
        "",
        "![phases of each batch task, cold and warm](images/bench-phases.png)",
        "",
        f"On a GPU cluster an engine starts in minutes. From the phases above (a cold task here: {cold_task:.0f} s with "
        f"{cold_engine:.0f} s of engine start; a warm task {warm_task:.0f} s; the deploy {deploy:.0f} s and teardown "
        f"{teardown:.0f} s), with the engine start replaced by E: a cold task takes its time less {cold_engine:.0f} s "
        f"plus E, the deploy likewise; the warm way pays deploy and teardown once, then a warm task per partition.",
        "",
        "| engine start E | cold task | warm task | deploy + teardown | partitions for warm to pay off | warm / cold at 4 partitions |",
        "|---:|---:|---:|---:|---:|---:|",
        *gpu_rows,
    ])  # fmt: skip
    if not args.no_doc:
        plot(timelines, common.DOC.parent / "images" / "bench-warm-cold.png")
        plot_phases({"a": per_task["a"], "c": per_task["c"]}, common.DOC.parent / "images" / "bench-phases.png")
    print(body)
    if not args.no_doc:
        common.update_doc("Warm vs cold engines", body)


if __name__ == "__main__":
    main()
