"""Warm vs cold engines: the daily sentiment run (4 partitions x 50 posts) three ways, in one run.

- (a) cold: ``example_daily_sentiment`` with 4 partitions: each mapped task's Ray job starts
  its own vLLM engine;
- (b) one job: ``example_daily_sentiment`` with 1 partition: one task, one engine, Ray Data
  splits the rows into blocks inside the job;
- (c) warm: ``example_warm_sentiment`` with 4 partitions: a Serve LLM deployment made by the
  setup task, the 4 mapped tasks' jobs send their rows to it, the teardown deletes it (deploy
  and teardown included in the wall time).

All through dag.test() (which runs mapped tasks one after another), the default model on
vLLM CPU, the same 200 posts; wall time of the whole DAG run.

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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=200)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    common.dag_environment()
    os.environ["AIRFLOW_CONN_BENCH_SENTIMENT_DB"] = json.dumps({"conn_type": "sqlite", "host": str(common.WORK / "sentiment.db")})
    rows, walls, timelines = [], {}, {}
    for tag, what, dag_id, partitions in WAYS:
        seconds, xcoms, timelines[tag] = run_way(dag_id, partitions, args.posts, tag)
        walls[tag] = seconds
        results = xcoms["classify"]
        labelled = sum(r["metrics"]["rows_out"] for r in results)
        job_s = sum(r["metrics"]["wall_seconds"] for r in results)
        rows.append(f"| ({tag}) {what} | `{dag_id}` | {len(results)} | {labelled} | {job_s:.0f} | {seconds:.0f} | "
                    f"{labelled / seconds:.2f} |")  # fmt: skip
        print(rows[-1], flush=True)
    ratio = walls["c"] / walls["a"]
    verdict = "pass" if ratio <= TARGET else "miss"
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
    ])  # fmt: skip
    if not args.no_doc:
        plot(timelines, common.DOC.parent / "images" / "bench-warm-cold.png")
    print(body)
    if not args.no_doc:
        common.update_doc("Warm vs cold engines", body)


if __name__ == "__main__":
    main()
