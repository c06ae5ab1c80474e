"""Reading the input of one job (cluster side; imports Ray lazily).

Where the rows go: ``sink.py`` (written per block) and ``commit.py`` (how they become the
output's committed version).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_provider_raydatallm.job.spec import InputSpec

if TYPE_CHECKING:
    import ray.data


def read_input(spec: InputSpec) -> ray.data.Dataset:
    import ray.data

    readers = {
        "csv": lambda: ray.data.read_csv(spec.uris),
        "parquet": lambda: ray.data.read_parquet(spec.uris, columns=spec.columns),
        "json": lambda: ray.data.read_json(spec.uris),
        "jsonl": lambda: ray.data.read_json(spec.uris, lines=True),
    }
    ds = readers[spec.format]()
    if spec.columns and spec.format != "parquet":
        ds = ds.select_columns(spec.columns)
    if spec.limit:
        ds = ds.limit(spec.limit)
    return ds

