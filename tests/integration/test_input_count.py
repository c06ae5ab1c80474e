"""A small text input is counted in the driver with Ray Data's own read tasks (no Ray Data
pass, which first starts a worker process for the job): the count, the columns and the
types must be what a pass over the same input finds, with the spec's column selection and
limit, for every text format; an input above the size limit is left to the pass.

Real Ray (a local instance the driver starts), real files."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RAY_PYTHON = ROOT / ".venv-ray" / "bin" / "python"


def _inputs(tmp_path: Path) -> list:
    rows = [{"id": i, "text": f"post {i} – ünïcode", "score": None if i % 4 == 0 else i * 1.5, "flag": i % 2 == 0}
            for i in range(1, 41)]  # fmt: skip
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps(r) + "\n" for r in rows[:25]))
    b.write_text("".join(json.dumps(r) + "\n" for r in rows[25:]))
    (tmp_path / "all.json").write_text(json.dumps(rows))
    (tmp_path / "all.csv").write_text("id,text,score\n" + "".join(
        f'{r["id"]},"{r["text"]}, quoted",{"" if r["score"] is None else r["score"]}\n' for r in rows))  # fmt: skip
    return [
        ["jsonl", [str(a), str(b)], None, None],
        ["jsonl", [str(a), str(b)], ["text", "id"], 30],  # a limit across the two files, columns reordered
        ["json", [str(tmp_path / "all.json")], None, None],
        ["csv", [str(tmp_path / "all.csv")], None, 7],
    ]


def _count(tmp_path: Path, inputs: list, env: dict | None = None) -> list[dict]:
    done = subprocess.run(
        [str(RAY_PYTHON), str(ROOT / "tests" / "count_probe_driver.py"), json.dumps(inputs)],
        capture_output=True, text=True, timeout=240, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_small_text_inputs_are_counted_in_the_driver_as_a_pass_counts_them(tmp_path):
    results = _count(tmp_path, _inputs(tmp_path))
    assert [r["pass"]["rows"] for r in results] == [40, 30, 40, 7]
    for r in results:
        assert r["local"] == r["pass"], r
    assert results[1]["local"]["columns"] == ["text", "id"]
    assert results[0]["local"]["types"]["score"] == "double" and results[0]["local"]["types"]["flag"] == "bool"
    # Above the size limit the driver leaves the count to a pass.
    (big,) = _count(tmp_path, _inputs(tmp_path)[:1], env={"RAYDLLM_LOCAL_COUNT_BYTES": "100"})
    assert big["local"] is None and big["pass"]["rows"] == 40
