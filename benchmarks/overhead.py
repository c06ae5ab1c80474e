"""Operator overhead: seed 003 as a hand-written script submitted with ``ray job submit``
vs the same config, functions and rows through RayLLMBatchOperator (dag.test), alternated.

Both run the seed's pipeline with the default model on vLLM CPU: the script as the seed
writes it (benchmarks/seed003_script.py: read, limit, repartition, process, materialize,
write Parquet), the operator from benchmarks/dags/bench_dags.py. Wall time: from the
``ray job submit`` command's start to its exit, and the task's run in dag.test (building
the spec, upload, submit, wait, result, commit).

``python benchmarks/overhead.py --repeat 3 --rows 100``  (part of make bench)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

TARGET = 1.05
PARTITIONS = 4


def script_run(csv: Path, rows: int, out: Path) -> float:
    from airflow_provider_raydatallm.configs import default_model_path

    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(common.PROFILE.state_dir / "auth_token")}
    cmd = [str(common.RAY_PYTHON.parent / "ray"), "job", "submit", "--address", common.PROFILE.address,
           "--submission-id", f"bench-seed003-script-{uuid.uuid4().hex[:8]}", "--working-dir", str(common.ROOT / "benchmarks"),
           "--", "python", "seed003_script.py", str(csv), str(rows), str(PARTITIONS), str(out), default_model_path()]  # fmt: skip
    started = time.monotonic()
    with open(common.WORK / "overhead-script.log", "a") as log:
        subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.monotonic() - started


def operator_run(csv: Path, rows: int, out: Path) -> float:
    import dagrun

    conf = {"input": str(csv), "output": str(out), "limit": rows, "partitions": PARTITIONS}
    _, seconds, states, _ = dagrun.run(common.ROOT / "benchmarks" / "dags" / "bench_dags.py", "bench_seed003", conf,
                                       common.WORK / "overhead-operator.log")  # fmt: skip
    if states != {"classify": "success"}:
        raise RuntimeError(f"bench_seed003 ended {states}; see {common.WORK / 'overhead-operator.log'}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    common.dag_environment()
    from demo_helpers import write_customers_csv

    csv = common.WORK / "input" / f"customers-{args.rows}.csv"
    if not csv.exists():
        write_customers_csv(csv, args.rows)
    walls: dict[str, list[float]] = {"script": [], "operator": []}
    for i in range(args.repeat):
        for kind, runner in (("script", script_run), ("operator", operator_run)):
            out = common.WORK / "out" / f"overhead-{kind}"
            shutil.rmtree(out, ignore_errors=True)
            walls[kind].append(runner(csv, args.rows, out))
            print(f"run {i + 1}: {kind} {walls[kind][-1]:.1f} s", flush=True)
    med = {k: statistics.median(v) for k, v in walls.items()}
    ratio = med["operator"] / med["script"]
    pairs = [o / s for o, s in zip(walls["operator"], walls["script"])]
    verdict = "pass" if ratio <= TARGET else "miss"
    body = "\n".join([
        f"Command: `python benchmarks/overhead.py --repeat {args.repeat} --rows {args.rows}` ({time.strftime('%Y-%m-%d')}; "
        f"{common.machine()}). The customer-industries use case (industry of {args.rows} customers, {PARTITIONS} "
        "partitions, its preprocess and postprocess and vLLMEngineProcessorConfig with the default model on CPU, "
        "batch_size 256, concurrency 1): "
        "the hand-written script through `ray job submit` (waits and prints the log) vs RayLLMBatchOperator in "
        "dag.test, alternated.",
        "",
        "| path | runs (s) | median s |", "|---|---|---:|",
        *(f"| {k} | {', '.join(f'{w:.1f}' for w in v)} | {med[k]:.1f} |" for k, v in walls.items()),
        "",
        f"Median ratio operator / script: **{ratio:.3f}** (target <= {TARGET}: {verdict}); per pair "
        f"{', '.join(f'{p:.2f}' for p in pairs)}.",
    ])  # fmt: skip
    print(body)
    if not args.no_doc:
        common.update_doc("Operator overhead", body)


if __name__ == "__main__":
    main()
