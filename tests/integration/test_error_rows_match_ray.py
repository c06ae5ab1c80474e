"""The provider's idea of an error row is Ray's: run the installed Ray's own stage wrappers
(``ray.llm._internal.batch.stages.base``) over blocks that mix failed and good rows, and
check that the rows Ray let through untouched are exactly the rows the job calls errors.

Runs in the cluster venv (.venv-ray), where Ray is installed; no cluster is started: Ray
Data's block building is reproduced with pyarrow (missing values in a block become None).
"""

from __future__ import annotations

import json
import subprocess

from tests.conftest import ROOT

SCRIPT = r"""
import asyncio, json
import pyarrow as pa
from ray.llm._internal.batch.stages.base import StatefulStageUDF, wrap_postprocess, wrap_preprocess
from airflow_provider_raydatallm.job import rows

COLUMNS = ["Index"]
inferred = []


def user_pre(row):
    if row["Index"] % 3 == 0:
        raise ValueError("bad row")
    return {"prompt": f"row {row['Index']}"}


class Echo(StatefulStageUDF):
    async def udf(self, batch):
        for row in batch:
            inferred.append(row["Index"])
            yield {self.IDX_IN_BATCH_COLUMN: row[self.IDX_IN_BATCH_COLUMN], "generated_text": row["prompt"].upper()}


async def stage(block):
    out = []
    async for part in Echo("__data")({"__data": block.column("__data").to_pylist()}):
        out.extend(part["__data"])
    return out


pre = wrap_preprocess(rows.Preprocess(user_pre, COLUMNS, "Index", True), "__data")
post = wrap_postprocess(
    rows.Postprocess(lambda r: {"label": r["generated_text"], "Index": r["Index"]}, COLUMNS, True, ("generated_text",)),
    "__data", include_error_column=True,
)
report = {}
for size in (1, 4, 7):  # blocks of one row, and blocks mixing failed and good rows
    inferred.clear()
    block = pa.Table.from_pylist([pre({"Index": i}) for i in range(1, size + 1)])  # as Ray Data builds it
    processed = asyncio.run(stage(block))
    out = pa.Table.from_pylist([post({"__data": row}) for row in processed]).to_pylist()
    report[size] = {
        "ray_inferred": sorted(inferred),
        "provider_errors": sorted(int(r[rows.ROW_ID]) for r in out if rows.is_error(r)),
        "provider_ok_inferred": all(r.get(rows.INFERRED) is True for r in out if not rows.is_error(r)),
        "labels": sorted(r["label"] for r in out if not rows.is_error(r)),
    }
print(json.dumps(report))
"""


def test_rows_ray_skips_are_exactly_the_provider_error_rows():
    done = subprocess.run(
        [str(ROOT / ".venv-ray" / "bin" / "python"), "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for size, seen in report.items():
        everything = set(range(1, int(size) + 1))
        failing = {i for i in everything if i % 3 == 0}
        assert set(seen["ray_inferred"]) == everything - failing, seen
        assert set(seen["provider_errors"]) == failing, seen
        assert seen["provider_ok_inferred"], seen
        assert seen["labels"] == sorted(f"ROW {i}" for i in everything - failing), seen
