"""DAG-parse cost: what importing the provider's operator, sensor and plugin modules adds to
a DAG file's parse, beyond ``airflow.sdk`` (which every DAG file imports anyway).

Each sample is a fresh interpreter (``.venv``) that imports what a DAG file imports from
``airflow.sdk``, then the provider's modules, and reports the second step's time; the
median of ``--repeat`` samples is compared with the target (50 ms).

``python benchmarks/parse_cost.py --repeat 5``  (part of make bench)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

TARGET_MS = 50.0
MODULES = [
    "airflow_provider_raydatallm.operators.batch",
    "airflow_provider_raydatallm.operators.serve",
    "airflow_provider_raydatallm.sensors.ray_job",
    "airflow_provider_raydatallm.plugins",
]
PROBE = """
import importlib, json, sys, time
t0 = time.perf_counter()
from airflow.sdk import DAG, Asset, BaseHook, BaseOperator, BaseSensorOperator, Param, task  # what DAG files import
t1 = time.perf_counter()
steps = {}
for name in sys.argv[1:]:
    s = time.perf_counter()
    importlib.import_module(name)
    steps[name] = (time.perf_counter() - s) * 1000
t2 = time.perf_counter()
heavy = sorted(m for m in ("ray", "vllm", "torch", "pyarrow", "pandas", "fastapi") if m in sys.modules)
print(json.dumps({"sdk_ms": (t1 - t0) * 1000, "provider_ms": (t2 - t1) * 1000, "steps": steps, "heavy": heavy}))
"""


def sample() -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, *MODULES], capture_output=True, text=True, check=True, cwd=common.ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    sample()  # warm the file cache: every later sample reads the same .pyc files
    runs = [sample() for _ in range(args.repeat)]
    provider = statistics.median(r["provider_ms"] for r in runs)
    sdk = statistics.median(r["sdk_ms"] for r in runs)
    rows = ["| module (imported in this order) | median ms |", "|---|---:|"]
    for name in MODULES:
        rows.append(f"| `{name}` | {statistics.median(r['steps'][name] for r in runs):.1f} |")
    rows.append(f"| **all four, beyond airflow.sdk** | **{provider:.1f}** |")
    rows.append(f"| (airflow.sdk itself, for scale) | {sdk:.0f} |")
    verdict = "pass" if provider <= TARGET_MS else "miss"
    heavy = sorted({m for r in runs for m in r["heavy"]})
    samples = ", ".join(f"{r['provider_ms']:.1f}" for r in runs)
    body = "\n".join([
        f"Command: `python benchmarks/parse_cost.py --repeat {args.repeat}` ({time.strftime('%Y-%m-%d')}; {common.machine()}). "
        f"Each sample a fresh interpreter: `from airflow.sdk import DAG, Asset, BaseHook, BaseOperator, "
        f"BaseSensorOperator, Param, task`, then the provider's modules; median of {args.repeat}.",
        "",
        *rows,
        "",
        f"Provider import beyond airflow.sdk: **{provider:.1f} ms** median (target <= {TARGET_MS:.0f} ms: {verdict}); "
        f"samples {samples} ms. Heavy modules loaded: {', '.join(heavy) or 'none'} "
        "(ray, vllm, torch, pyarrow, pandas and fastapi stay out of a DAG parse).",
    ])  # fmt: skip
    print(body)
    if not args.no_doc:
        common.update_doc("DAG-parse cost", body)


if __name__ == "__main__":
    main()
