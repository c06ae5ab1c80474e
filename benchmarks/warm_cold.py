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


def run_way(dag_id: str, partitions: int, posts: int, tag: str) -> tuple[float, dict]:
    import dagrun

    out = common.WORK / "out" / f"warm-cold-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    conf = {"posts_root": str(common.WORK / "posts"), "output_root": str(out), "num_partitions": partitions,
            "posts_per_day": posts, "sql_conn_id": "bench_sentiment_db"}  # fmt: skip
    log = common.WORK / f"warm-cold-{tag}.log"
    _, seconds, states, xcoms = dagrun.run(common.ROOT / "example_dags" / f"{dag_id}.py", dag_id, conf, log, logical_date=DAY)
    if set(states.values()) != {"success"}:
        raise RuntimeError(f"{dag_id} ({tag}) ended {states}; see {log}")
    return seconds, xcoms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=200)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    common.dag_environment()
    os.environ["AIRFLOW_CONN_BENCH_SENTIMENT_DB"] = json.dumps({"conn_type": "sqlite", "host": str(common.WORK / "sentiment.db")})
    rows, walls = [], {}
    for tag, what, dag_id, partitions in WAYS:
        seconds, xcoms = run_way(dag_id, partitions, args.posts, tag)
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
    ])  # fmt: skip
    print(body)
    if not args.no_doc:
        common.update_doc("Warm vs cold engines", body)


if __name__ == "__main__":
    main()
