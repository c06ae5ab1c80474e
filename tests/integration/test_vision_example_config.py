"""The vision example needs a GPU and a vision model: here its config and callables are
validated for real (Ray's own config class, in the cluster environment) without inference."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from airflow_provider_raydatallm.job.spec import RunIdentity

ROOT = Path(__file__).resolve().parents[2]
RAY_PYTHON = ROOT / ".venv-ray" / "bin" / "python"

CHECK = r"""
import io, json, sys
from PIL import Image
from airflow_provider_raydatallm.job import callables
from airflow_provider_raydatallm.job.processor import build_config
from airflow_provider_raydatallm.job.spec import JobSpec

spec = JobSpec.model_validate_json(sys.stdin.read())
config = build_config(spec.processor, spec.should_continue_on_error)
png = io.BytesIO()
Image.new("RGB", (8, 8), "red").save(png, format="PNG")
request = callables.load(spec.preprocess)({"question": "What colour?", "image": {"bytes": png.getvalue()},
                                           "answer": ["red", "blue"]})
content = request["messages"][1]["content"]
print(json.dumps({
    "type": type(config).__name__,
    "multimodal": bool(getattr(config, "has_image", None) or getattr(config, "prepare_multimodal_stage", None)),
    "accelerator_type": config.accelerator_type, "continue": config.should_continue_on_error,
    "parts": [part["type"] for part in content], "image_size": list(content[1]["image"].size),
    "choices": content[2]["text"].strip().splitlines()[-2:],
}))
"""


@pytest.mark.integration
def test_vision_config_and_preprocess_validate_in_the_cluster_environment():
    import json

    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "example_dags" / "example_vision.py")).dags["example_vision"]
    op = dag.get_task("answer_image_questions")
    import datetime as dt
    import types

    run = types.SimpleNamespace(logical_date=dt.datetime(2026, 11, 22), run_after=dt.datetime(2026, 11, 22, 1))
    op.render_template_fields({"params": dag.params.dump(), "dag_run": run})
    spec = op.build_spec(RunIdentity(dag_id="example_vision", task_id=op.task_id, run_id="check"))
    assert spec.input.format == "parquet" and spec.output.uri == "s3://my-bucket/vision_answers/2026-11-22"
    out = subprocess.run([str(RAY_PYTHON), "-c", CHECK], input=spec.model_dump_json(), capture_output=True,
                         text=True, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {
        "type": "vLLMEngineProcessorConfig", "multimodal": True, "accelerator_type": "L4", "continue": True,
        "parts": ["text", "image", "text"], "image_size": [8, 8], "choices": ["A. red", "B. blue"],
    }  # fmt: skip
