"""`make demo`: the daily sentiment DAG for one day, on the local Ray head, with real Airflow.

Runs in .venv (the Airflow side): migrates a SQLite Airflow DB under .cache/, points
`ray_default` at the head `make ray-up` started, runs `example_daily_sentiment` (a vLLM
engine in each partition task's job) with dag.test() for today, and prints what a user
wants to see: label counts, three sample rows, the output locations and the throughput.
`--warm` runs `example_warm_sentiment` instead (the model deployed once with Ray Serve LLM,
the partition tasks on it, then deleted): on this 2-core machine with the 135M model both
took ~100 s for 2 partitions, so the default stays the simpler cold run. `--questions` runs
`example_common_questions` and prints the seed's four questions with their answers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / ".cache" / "demo"


def _environment() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import dagrun
    import local_ray

    dagrun.environment(local_ray.PROFILES["dev"], ROOT / ".cache" / "airflow-home", ROOT / "example_dags")
    os.environ.setdefault("AIRFLOW_CONN_SENTIMENT_DB", json.dumps({"conn_type": "sqlite", "host": str(OUT / "sentiment.db")}))


def _run(dag_id: str, conf: dict, **test_kwargs):
    """dag.test() with its (long) log in a file; returns the run, its task states and XComs."""
    import dagrun

    log_path = OUT / f"{dag_id}.log"
    print(f"running {dag_id} on the local Ray head (task logs: {log_path.relative_to(ROOT)}) ...", flush=True)
    run, seconds, states, xcoms = dagrun.run(ROOT / "example_dags" / f"{dag_id}.py", dag_id, conf, log_path, **test_kwargs)
    print(f"dag run {run.state} in {seconds:.0f}s: {states}")
    return run, states, xcoms


def sentiment(warm: bool) -> int:
    import pyarrow.parquet as pq

    from airflow_provider_raydatallm.job.commit import committed_files

    dag_id = "example_warm_sentiment" if warm else "example_daily_sentiment"
    conf = {"posts_root": str(OUT / "posts"), "output_root": str(OUT / dag_id.removeprefix("example_")),
            "num_partitions": 2, "posts_per_day": 40}  # fmt: skip
    run, states, xcoms = _run(dag_id, conf)
    if set(states.values()) != {"success"}:
        print("the run did not succeed; see the log above")
        return 1
    summary, results = xcoms["write_summary"][0], xcoms["classify"]
    print(f"\nsentiment of {summary['posts']} posts on {summary['day']} ({summary['errors']} error rows):")
    for label, count in summary["labels"].items():
        print(f"  {label:<9} {count:>4}  {'#' * count}")
    if warm:
        sample = pq.read_table(committed_files(results[0]["output_uri"]), columns=["post_id", "sentiment", "text"]).to_pylist()[:3]
    else:
        sample = _day_from_table(conf["output_root"], summary["day"], summary)
    print("\nthree rows:")
    for row in sample[:3]:
        print(f"  {row['post_id']}  {row['sentiment']:<9} {row['text']}")
    print("\noutputs:")
    for result in results:
        m = result["metrics"]
        where = _committed(result["table"]) if result.get("table") else result["output_uri"]
        print(f"  {where}  ({m['rows_out']} rows, {m['error_rows']} errors)")
    print(f"  SQL table daily_sentiment in {json.loads(os.environ['AIRFLOW_CONN_SENTIMENT_DB'])['host']}")
    if warm:
        deployed = xcoms["deploy_llm"][0]
        print(f"\nwarm engine: Serve application {deployed['app_name']} (deployment {deployed['deployment_name']}, "
              f"OpenAI route {deployed['base_url']}), deleted by the teardown task")  # fmt: skip
    started = "the job's start-up; the engine was already warm" if warm else "vLLM start-up"
    print(f"\nthroughput per partition task (wall time includes {started}):")
    for i, result in enumerate(results):
        m = result["metrics"]
        stage = sum(v for k, v in m["stage_seconds"].items() if "vLLM" in k or "ServeDeployment" in k)
        print(f"  classify[{i}]: {m['rows_in']} rows in {m['wall_seconds']:.0f}s = {m['rows_per_second']:.2f} rows/s, "
              f"{m['output_tokens_per_second']:.1f} output tokens/s; inference stage {stage:.1f}s")  # fmt: skip
    print(f"\nXCom of classify[0]:\n{json.dumps(results[0], indent=2)}")
    return 0


def _committed(table: dict) -> str:
    slice_ = ", ".join(f"{k}={v}" for k, v in table["partition"].items())
    return f"iceberg table {table['table']} ({slice_}) snapshot {table['snapshot_id']}"


def _day_from_table(output_root: str, day: str, summary: dict) -> list[dict]:
    """The day's partition read back through Iceberg (a scan of day = <day>), printed as
    the table shows it: rows per part and label."""
    from collections import Counter

    sys.path.insert(0, str(ROOT / "example_dags"))
    from demo_helpers import demo_catalog

    from airflow_provider_raydatallm.reading import read_table
    from airflow_provider_raydatallm.tables import IcebergTable

    table = IcebergTable("demo.post_sentiment", catalog_properties=demo_catalog(output_root))
    rows = read_table(table, where={"day": day}).sort_by([("part", "ascending"), ("post_id", "ascending")]).to_pylist()
    print(f"\nthe day's partition read back from Iceberg (demo.post_sentiment where day = '{day}'): {len(rows)} rows")
    for (part, label), count in sorted(Counter((r["part"], r["sentiment"]) for r in rows).items()):
        print(f"  part={part}  {label:<9} {count:>4}")
    return rows


def questions() -> int:
    import pyarrow.parquet as pq

    from airflow_provider_raydatallm.job.commit import committed_files

    run, states, xcoms = _run("example_common_questions", {"output_root": str(OUT / "questions")},
                              mark_success_pattern="write_prompts")  # fmt: skip
    if states.get("answer_questions") != "success":
        print("the questions task did not succeed; see the log above")
        return 1
    result = xcoms["answer_questions"][0]
    print()
    for row in pq.read_table(committed_files(result["output_uri"])).to_pylist():
        print(f"Q: {row['item']}\nA: {row['answer'].strip()}\n")
    print(f"XCom of answer_questions:\n{json.dumps(result, indent=2)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", action="store_true", help="run the seed 000 questions instead")
    parser.add_argument("--warm", action="store_true", help="one Serve LLM deployment shared by the partition tasks")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    _environment()
    return questions() if args.questions else sentiment(args.warm)


if __name__ == "__main__":
    sys.exit(main())
