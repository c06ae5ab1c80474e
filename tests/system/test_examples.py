"""The example DAGs, run as written with dag.test() on the real cluster and default model.
Counts come from params (run_conf), not from edits to the DAG files."""

from __future__ import annotations

import json
import sqlite3

import pyarrow.parquet as pq
import pytest

from tests.system.conftest import ROOT, DagRunner

pytestmark = pytest.mark.system

LABELS = {"positive", "negative", "neutral"}


@pytest.fixture(scope="module")
def examples(airflow_db, ray_cluster) -> DagRunner:
    import os

    os.environ["AIRFLOW_CONN_RAY_DEFAULT"] = json.dumps(ray_cluster)
    return DagRunner(ROOT / "example_dags")


def _sql_rows(db, day):
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT label, count FROM daily_sentiment WHERE day = ?", (day,)).fetchall())


def test_daily_sentiment_partitions_classifies_writes_and_reruns_idempotently(examples, tmp_path):
    day = "2026-11-22"
    conf = {"posts_root": str(tmp_path / "posts"), "output_root": str(tmp_path / "out"),
            "num_partitions": 2, "posts_per_day": 12, "sql_conn_id": "sentiment_test_db"}  # fmt: skip
    run = examples.run("example_daily_sentiment", conf)
    states = examples.states(run)
    assert states == {"partition_posts": "success", "classify": "success", "write_summary": "success"}
    day_dir = tmp_path / "out" / "sentiment" / f"date={day}"
    parts = sorted(p.name for p in day_dir.iterdir())
    assert parts == ["part=0", "part=1"] and all((day_dir / p / "_SUCCESS").exists() for p in parts)
    table = pq.read_table(day_dir)
    assert table.num_rows == 12 and set(table.column("sentiment").to_pylist()) <= LABELS
    assert len(set(table.column("post_id").to_pylist())) == 12
    db = tmp_path / "out" / "sentiment.db"
    counts = _sql_rows(db, day)
    assert set(counts) == LABELS | {"error"} and sum(counts.values()) == 12
    summary = examples.xcom(run, "write_summary")
    assert summary["posts"] == 12 and summary["labels"] == {k: counts[k] for k in LABELS}

    # Re-running the day with one partition replaces the day's data; nothing is added.
    again = examples.run("example_daily_sentiment", {**conf, "num_partitions": 1})
    assert examples.states(again)["write_summary"] == "success"
    assert sorted(p.name for p in day_dir.iterdir()) == ["part=0"]
    assert pq.read_table(day_dir).num_rows == 12
    assert sum(_sql_rows(db, day).values()) == 12
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM daily_sentiment WHERE day = ?", (day,)).fetchone()[0] == 4
