"""`make demo`: the seed 000 questions answered by the default model on the local Ray head.

Runs in .venv (the Airflow side): ships scripts/demo_job to the cluster through RayHook's
package upload, submits it, streams its log, and prints the answers.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct"


def main() -> int:
    sys.path.insert(0, str(ROOT / "scripts"))
    import local_ray
    os.environ.setdefault("AIRFLOW_HOME", str(ROOT / ".cache" / "airflow-home"))
    os.environ["AIRFLOW_CONN_RAY_DEFAULT"] = json.dumps(local_ray.connection(local_ray.PROFILES["dev"]))
    from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobStatus

    hook = RayHook()
    ok, message = hook.test_connection()
    print(message)
    if not ok:
        return 1
    started = time.monotonic()
    job_id = hook.submit_job(
        "python common_questions.py",
        runtime_env={"working_dir": hook.upload_working_dir(str(ROOT / "scripts" / "demo_job")),
                     "env_vars": {"RAYDLLM_MODEL": str(MODEL_DIR)}},
    )  # fmt: skip
    print(f"submitted {job_id}; dashboard: {hook.address}/#/jobs/{job_id}")
    log = ""
    for chunk in hook.tail_job_logs(job_id):
        log += chunk
        if os.environ.get("DEMO_VERBOSE"):
            print(chunk, end="")
    info = hook.get_job_info(job_id)
    if info.status is not RayJobStatus.SUCCEEDED:
        print(f"job {job_id} {info.status.value}: {info.message}\n{log[-3000:]}")
        return 1
    line = next(l for l in log.splitlines() if l.startswith("ANSWERS_JSON "))
    print(f"\n{info.status.value} in {time.monotonic() - started:.0f}s\n")
    for row in json.loads(line.removeprefix("ANSWERS_JSON ")):
        print(f"Q: {row['question']}\nA: {row['answer'].strip()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
