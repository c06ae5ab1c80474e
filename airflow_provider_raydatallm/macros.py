"""Template helpers for DAGs that run batches by day.

``{{ ds }}`` does not exist for a run triggered with ``logical_date: null`` (the Airflow 3
UI's and REST API's default for manual runs), so a template naming the day with it fails
for those runs. ``run_day`` works for both::

    from airflow_provider_raydatallm.macros import MACROS

    with DAG("triage", schedule="@daily", user_defined_macros=MACROS, ...):
        RayLLMBatchOperator(..., output_uri="s3://lake/triage/{{ run_day(dag_run) }}")
"""

from __future__ import annotations


def run_day(dag_run: object) -> str:
    """The day a run is for, as ``YYYY-MM-DD``: its logical date, or, for a run triggered
    with ``logical_date: null``, the day of its ``run_after`` (in UTC, as Airflow keeps it).
    A scheduled run and a manual run for a date give that date, so a rerun of a day
    replaces that day's output."""
    when = getattr(dag_run, "logical_date", None) or getattr(dag_run, "run_after", None)
    if when is None:
        raise ValueError(f"run {getattr(dag_run, 'run_id', dag_run)!r} has neither a logical date nor run_after")
    return when.strftime("%Y-%m-%d")


# Pass as ``DAG(user_defined_macros=MACROS)`` (or merge into your own macros).
MACROS = {"run_day": run_day}
