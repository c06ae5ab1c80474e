"""What the example DAGs beside this file share: deterministic demo data, the sentiment
prompt, the SQL summary and where the examples keep their files. Demo code, not part of the
provider (it is not installed with it): a DAG of your own needs none of it (the date macro
is ``airflow_provider_raydatallm.macros.run_day``, the CPU configs are in
``airflow_provider_raydatallm.configs``, readers in ``airflow_provider_raydatallm.reading``).

Airflow puts the DAGs folder on ``sys.path``, so the examples import this as
``demo_helpers``; the provider ships it to the cluster by value with the example's
callables, as it does any module beside a DAG file. Nothing is downloaded: the
2,000,000-row customers CSV of the industries use case and a day's social posts are
generated here, the same rows for the same arguments on every machine.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import random
from pathlib import Path


CUSTOMER_COLUMNS = [
    "Index", "Customer Id", "First Name", "Last Name", "Company", "City", "Country",
    "Phone 1", "Phone 2", "Email", "Subscription Date", "Website",
]  # fmt: skip
MAX_CUSTOMERS = 2_000_000

_FIRST = ["Sheryl", "Preston", "Roy", "Linda", "Joanna", "Aimee", "Darren", "Brett", "Sheryl", "Jamie",
          "Maria", "Kenji", "Ana", "Omar", "Chloe", "Ivan", "Priya", "Lucas", "Fatima", "Noah"]  # fmt: skip
_LAST = ["Baxter", "Lozano", "Berry", "Hodge", "Cook", "Bowers", "Rice", "Mayer", "Frederick", "Kidd",
         "Garcia", "Tanaka", "Silva", "Haddad", "Martin", "Petrov", "Nair", "Moreau", "Khan", "Larsen"]  # fmt: skip
_COMPANY_WORDS = {
    "Law Firm": ["& Partners LLP", "Legal Group", "Attorneys at Law", "Law Offices"],
    "Healthcare": ["Medical Center", "Health Systems", "Clinic Group", "Pharma Inc"],
    "Technology": ["Software Ltd", "Cloud Systems", "Data Labs", "Technologies Inc"],
    "Retail": ["Outlet Stores", "Market Co", "Retail Group", "Boutique"],
    "Consulting": ["Consulting Group", "Advisors LLC", "Strategy Partners", "Consultants"],
    "Manufacturing": ["Industrial Works", "Manufacturing Co", "Steel & Tools", "Fabrication Inc"],
    "Finance": ["Capital Partners", "Bank Corp", "Investments LLC", "Financial Services"],
    "Real Estate": ["Realty Group", "Properties LLC", "Estates & Homes", "Land Holdings"],
    "Other": ["and Sons", "Group", "PLC", "Ltd"],
}
_CITIES = [("Acevedoville", "Chile"), ("East Leonard", "Djibouti"), ("Lake Ariel", "Germany"),
           ("Port Ellen", "Scotland"), ("Springfield", "United States of America"), ("Osaka", "Japan"),
           ("Porto", "Portugal"), ("Lyon", "France"), ("Pune", "India"), ("Bergen", "Norway")]  # fmt: skip
_POST_TEMPLATES = {
    "positive": ["Loving the new {thing}, works perfectly!", "Great service from the {thing} team today.",
                 "Best {thing} I have bought this year, highly recommend."],
    "negative": ["The {thing} broke after two days, really disappointed.", "Terrible support for my {thing}.",
                 "Worst {thing} ever, asking for a refund."],
    "neutral": ["Picked up a {thing} today.", "Does anyone know when the {thing} update ships?",
                "The {thing} arrived on Tuesday."],
}  # fmt: skip
_THINGS = ["phone", "laptop", "coffee maker", "headphones", "app", "bike", "camera", "watch"]


def customer_rows(count: int, seed: int = 0):
    """Yield ``count`` customers in the use case's schema (its CSV has up to 2,000,000)."""
    if not 0 < count <= MAX_CUSTOMERS:
        raise ValueError(f"count must be between 1 and {MAX_CUSTOMERS}, got {count}")
    rng = random.Random(seed)
    industries = list(_COMPANY_WORDS)
    start = dt.date(2020, 1, 1)
    for index in range(1, count + 1):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        company = f"{rng.choice(_LAST)} {rng.choice(_COMPANY_WORDS[rng.choice(industries)])}"
        city, country = rng.choice(_CITIES)
        domain = company.split()[0].lower()
        yield {
            "Index": index,
            "Customer Id": f"{rng.getrandbits(60):015x}"[:15].upper(),
            "First Name": first,
            "Last Name": last,
            "Company": company,
            "City": city,
            "Country": country,
            "Phone 1": f"+1-{rng.randint(200, 999)}-{rng.randint(200, 999)}-{rng.randint(1000, 9999)}",
            "Phone 2": f"({rng.randint(200, 999)}){rng.randint(200, 999)}-{rng.randint(1000, 9999)}",
            "Email": f"{first.lower()}.{last.lower()}{index}@{domain}.example.com",
            "Subscription Date": (start + dt.timedelta(days=rng.randint(0, 1500))).isoformat(),
            "Website": f"https://www.{domain}.example.com/",
        }


def write_customers_csv(path: str | Path, count: int, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CUSTOMER_COLUMNS)
        writer.writeheader()
        writer.writerows(customer_rows(count, seed))
    return path


def social_posts(day: str, count: int, seed: int = 0) -> list[dict]:
    """``count`` posts for ``day`` (YYYY-MM-DD); the same day gives the same posts."""
    rng = random.Random(f"{day}:{seed}")
    base = dt.datetime.fromisoformat(day)
    posts = []
    for i in range(count):
        mood = rng.choice(list(_POST_TEMPLATES))
        text = rng.choice(_POST_TEMPLATES[mood]).format(thing=rng.choice(_THINGS))
        posted = base + dt.timedelta(seconds=rng.randint(0, 86_399))
        posts.append({"post_id": f"{day}-{i:05d}", "posted_at": posted.isoformat(), "user": f"user{rng.randint(1, 999)}", "text": text})
    return posts


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


SENTIMENT_LABELS = ["positive", "negative", "neutral"]


def sentiment_messages(text: str, labels: list[str] = SENTIMENT_LABELS) -> list[dict[str, str]]:
    """The chat messages that ask for one post's sentiment, as one of ``labels``."""
    return [
        {"role": "system", "content": f"You classify the sentiment of social media posts. Answer with one word: {', '.join(labels)}."},
        {"role": "user", "content": text},
    ]


def partition_day(posts_root: str, output_root: str, day: str, num_partitions: int, generate: bool,
                  posts_per_day: int, output_dirs: bool = True) -> list[dict[str, str]]:  # fmt: skip
    """Split a day's posts into ``num_partitions`` JSONL files (a missing day is generated
    when ``generate``); returns one ``{input_uri}`` per partition, with its ``output_uri``
    when ``output_dirs`` (directory outputs: partitions a rerun with fewer of them no longer
    writes are removed from the day's output)."""
    import shutil

    source = Path(posts_root) / f"{day}.jsonl"
    if not source.exists():
        if not generate:
            raise FileNotFoundError(f"no posts for {day} at {source}")
        write_jsonl(source, social_posts(day, posts_per_day))
    posts = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    n = min(num_partitions, max(1, len(posts)))
    day_dir = Path(output_root) / "sentiment" / f"date={day}"
    if output_dirs:
        for stale in day_dir.glob("part=*"):
            if int(stale.name.split("=")[1]) >= n:
                shutil.rmtree(stale)
    partitions = []
    for k in range(n):
        path = write_jsonl(Path(output_root) / "staging" / f"date={day}" / f"part-{k}.jsonl", posts[k::n])
        partitions.append({"input_uri": str(path), **({"output_uri": str(day_dir / f"part={k}")} if output_dirs else {})})
    return partitions


def demo_catalog(output_root: str) -> dict[str, str]:
    """The examples' Iceberg catalog: pyiceberg's SQL catalog on a SQLite file, tables in a
    local warehouse folder, both under ``output_root`` (nothing to run beside the cluster)."""
    return {"name": "raydllm_examples", "type": "sql", "uri": f"sqlite:///{output_root}/iceberg_catalog.db",
            "warehouse": f"file://{output_root}/warehouse"}  # fmt: skip


def drop_stale_parts(table, day: str, parts: int) -> int:
    """Delete the rows of ``day`` in parts a rerun with fewer partitions no longer writes
    (``part`` >= ``parts``) from the example's Iceberg table; returns how many went."""
    from pyiceberg.catalog import load_catalog
    from pyiceberg.exceptions import NoSuchTableError
    from pyiceberg.expressions import And, EqualTo, NotIn

    name, props = table.properties()
    try:
        ice = load_catalog(name, **props).load_table(table.table)
    except NoSuchTableError:
        return 0
    stale = And(EqualTo("day", day), NotIn("part", [str(k) for k in range(parts)]))
    count = ice.scan(row_filter=stale).count()
    if count:
        ice.delete(stale)
    return count


def summarize_day(results: list[dict], labels: list[str], day: str, sql_conn_id: str, output_root: str,
                  table=None) -> dict:  # fmt: skip
    """Count labels over a day's partition outputs and replace the day's rows in the SQL
    table ``daily_sentiment`` (day, label, count); returns the summary. With ``table`` (an
    IcebergTable or DeltaTable the partitions were committed to) the day's rows are read
    back through the table format, only the parts this run's tasks committed."""
    from collections import Counter

    from airflow_provider_raydatallm.reading import read_committed, read_table

    counted: Counter[str] = Counter()
    rows_in = errors = 0
    if table is not None:
        parts = [r["table"]["partition"]["part"] for r in results]
        read = read_table(table, where={"day": day, "part": parts}, columns=["sentiment"])
        counted.update(read.column("sentiment").to_pylist())
    for result in results:
        if table is None:  # only the committed version: the files the output's _SUCCESS manifest names
            read = read_committed(result["output_uri"])
            counted.update(read.column("sentiment").to_pylist() if read.num_rows else [])
        rows_in += result["metrics"]["rows_in"]
        errors += result["metrics"]["error_rows"]
    rows = [(day, label, counted.get(label, 0)) for label in labels]
    rows.append((day, "error", errors))
    replace_day_rows(sql_hook(sql_conn_id, f"{output_root}/sentiment.db"), "daily_sentiment", day, rows)
    summary = {"day": day, "posts": rows_in, "errors": errors, "labels": {k: counted.get(k, 0) for k in labels}}
    if table is not None:
        summary["table"] = [r["table"] for r in results]
    return summary


def sql_hook(conn_id: str, sqlite_fallback: str):
    """The DbApiHook of ``conn_id``; a SQLite file at ``sqlite_fallback`` if it is not defined.

    Call inside a task (it looks the connection up); never at DAG parse time.
    """
    import os

    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id).get_hook()
    except AirflowNotFoundException:
        Path(sqlite_fallback).parent.mkdir(parents=True, exist_ok=True)
        # Defined for this task's process only: the embedded default, as a connection would be.
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps({"conn_type": "sqlite", "host": sqlite_fallback})
        return BaseHook.get_connection(conn_id).get_hook()


def replace_day_rows(hook, table: str, day: str, rows: list[tuple]) -> None:
    """Replace ``table``'s rows for ``day`` with ``rows`` (day, label, count) in one transaction."""
    p = hook.placeholder
    conn = hook.get_conn()
    try:
        cur = conn.cursor()
        cur.execute(f"CREATE TABLE IF NOT EXISTS {table} (day VARCHAR(10), label VARCHAR(32), count INTEGER)")
        cur.execute(f"DELETE FROM {table} WHERE day = {p}", (day,))
        cur.executemany(f"INSERT INTO {table} (day, label, count) VALUES ({p}, {p}, {p})", rows)
        conn.commit()
    except Exception:
        conn.rollback()
        raise
    finally:
        conn.close()


def ensure_customers_csv(path: str, rows: int, generate: bool) -> str:
    """The customers CSV at ``path``; with ``generate``, a deterministic one of ``rows`` rows
    is written there when it is missing (the examples' stand-in for the use case's download)."""
    target = Path(path)
    if not target.exists():
        if not generate:
            raise FileNotFoundError(f"customers CSV not found at {target}")
        write_customers_csv(target, rows)
    return str(target)


EXAMPLES_DIR_ENV = "RAYDLLM_EXAMPLES_DIR"


def examples_dir(*parts: str) -> str:
    """Where the example DAGs keep their inputs and outputs by default: ``$RAYDLLM_EXAMPLES_DIR``
    if set (a path or URI the Ray cluster can also reach), else ``~/raydllm-examples``."""
    import os

    base = os.environ.get(EXAMPLES_DIR_ENV) or str(Path.home() / "raydllm-examples")
    return "/".join([base.rstrip("/"), *parts])

