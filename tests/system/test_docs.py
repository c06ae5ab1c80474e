"""The code in docs/your-own-dag.md, run as a reader would: the DAG copied into a folder
outside the repository and run with the page's own commands against the session's Ray head;
the structured-output functions run on the real engine (vLLM on CPU, the default model);
every other Python block executed. The page cannot drift from the code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from airflow_provider_raydatallm.configs import default_model_path
from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobStatus
from airflow_provider_raydatallm.reading import read_committed
from tests.conftest import ROOT

pytestmark = pytest.mark.system

PAGE = ROOT / "docs" / "your-own-dag.md"
BLOCK = re.compile(r"<!-- (file|run|output): (\S+) -->\n```(\w+)\n(.*?)```", re.S)


def _blocks(kind: str) -> dict[str, str] | list[str]:
    found = [(what, name, body) for what, name, _, body in BLOCK.findall(PAGE.read_text())]
    if kind in ("file", "output"):
        return {name: body for what, name, body in found if what == kind}
    return [body for what, name, body in found if what == "run" and name == kind]


def test_the_page_marks_its_blocks_and_every_python_block_runs():
    text = PAGE.read_text()
    fenced = re.findall(r"```(\w*)\n", text)[::2]  # opening fences (closing ones alternate)
    marked = BLOCK.findall(text)
    # Every fenced block is one of the page's files or commands: none is left unrun.
    assert len(fenced) == len(marked) and {m[2] for m in marked} == {"python", "csv", "bash", "text"}, fenced
    for body in [_blocks("file")["ticket_triage.py"], *_blocks("python")]:
        exec(compile(body, str(PAGE), "exec"), {"__name__": "docs_block"})


def test_the_pages_progress_lines_are_what_the_job_logs():
    """The page's progress lines, made again by the job's own ProgressLog on the timeline
    they describe (60 rows in six blocks, the first out at 41 s, one failed row)."""
    from airflow_provider_raydatallm.job import progress

    now = [0.0]
    lines: list[str] = []
    shown = progress.ProgressLog(60, every=30, emit=lines.append, clock=lambda: now[0])
    now[0] = 30
    lines.append(shown.line())
    for at, ok, failed in ((41, 10, 0), (45, 9, 1), (49, 10, 0), (53, 10, 0)):
        now[0] = at
        shown.block(ok, failed)
    now[0] = 60
    lines.append(shown.line())
    shown.block(10, 0)
    shown.block(10, 0)
    now[0] = 69
    lines.append(shown.final_line())
    assert _blocks("output")["progress"].splitlines() == [f"[ray:raydllm] {line}" for line in lines]


def test_the_complete_example_of_operators_md_parses_into_a_dag():
    text = (ROOT / "docs" / "operators.md").read_text()
    body = re.search(r"## A complete example.*?```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {"__name__": "docs_operators"}
    exec(compile(body, "docs/operators.md", "exec"), namespace)  # the operator checks its arguments here
    op = namespace["preprocess"]({"Company": "Acme Law LLP"})
    assert op["sampling_params"]["structured_outputs"]["choice"] == namespace["CHOICES"]
    assert namespace["postprocess"]({"generated_text": "Retail", "Company": "A"})["inferred_industry"] == "Retail"


def test_the_pages_reading_functions_read_a_real_error_output_and_a_failed_runs_rows(tmp_path):
    import pyarrow as pa

    from airflow_provider_raydatallm.job import rows, sink
    from airflow_provider_raydatallm.job.commit import Manifest, OutputDir

    (body,) = [b for b in _blocks("python") if "def failed_run_rows" in b]
    namespace: dict = {"__name__": "docs_reading"}
    exec(compile(body, str(PAGE), "exec"), namespace)
    uri, owner = f"file://{tmp_path}/out/_errors", {"dag_id": "ticket_triage", "task_id": "triage"}
    record = {"row_id": "T-1", "stage": "postprocess", "error": "JSONDecodeError: Unterminated string", "row": "{}",
              "prompt": "<|im_start|>user\nTriage this ticket", "model_output": '{"category": "bil', "input_tokens": 61, "output_tokens": 60}  # fmt: skip
    table = pa.Table.from_pylist([record], schema=rows.error_schema())
    day = OutputDir(uri, "job-a1", owner)
    day.commit([sink.write_table(table, day.staging_uri, "block-1.parquet", "parquet")], Manifest(rows=1), False)
    failed = OutputDir(uri, "job-a2", owner)
    failed.keep_failed_run([sink.write_table(table, failed.staging_uri, "block-2.parquet", "parquet")], {"rows": 1})
    assert namespace["error_rows"](uri) == namespace["failed_run_rows"](uri) == [record]


def _structured_output_functions() -> dict:
    (body,) = [b for b in _blocks("python") if "structured_outputs" in b]
    namespace: dict = {"__name__": "docs_structured_outputs"}
    exec(compile(body, str(PAGE), "exec"), namespace)
    return {name: fn for name, fn in namespace.items() if callable(fn) and not name.startswith("__")}


def test_each_structured_output_example_asks_vllm_for_exactly_one_constraint():
    row = {"text": "Great phone, terrible battery.", "date": "2026-11-30"}
    kinds = set()
    for name, fn in _structured_output_functions().items():
        request = fn(row)
        (kind,) = request["sampling_params"]["structured_outputs"]
        assert kind in ("choice", "json", "regex", "grammar") and request["messages"][-1]["content"], name
        kinds.add(kind)
    assert kinds == {"choice", "json", "regex", "grammar"}


def test_the_structured_output_examples_constrain_the_real_engine(ray_conn, tmp_path):
    from airflow_provider_raydatallm.configs import cpu_vllm_config
    from airflow_provider_raydatallm.job.spec import RunIdentity
    from airflow_provider_raydatallm.operators import RayLLMBatchOperator, _jobs

    functions = _structured_output_functions()

    def ask(row):
        return functions[row["function"]](row)

    def answer(row):
        return {"function": row["function"], "answer": row["generated_text"], "keys": sorted(row)}

    source = tmp_path / "rows.jsonl"
    text = "Win a free cruise now, click here"
    source.write_text("".join(json.dumps({"function": f, "text": text, "date": "2026-11-30"}) + "\n" for f in functions))
    op = RayLLMBatchOperator(
        task_id="docs", processor_config=cpu_vllm_config(batch_size=4), preprocess=ask, postprocess=answer,
        input_uri=str(source), output_uri=str(tmp_path / "out"), id_column="function",
    )  # fmt: skip
    spec = op.build_spec(RunIdentity(dag_id="docs", task_id="docs", run_id=f"r{time.time_ns()}"))
    job_id = f"docs-{uuid.uuid4().hex[:10]}"
    _jobs.submit(RayHook(), spec, job_id, _jobs.Submission(runtime_env={}, secrets={}))
    deadline = time.monotonic() + 420
    while not (status := RayHook().get_job_status(job_id)).is_terminal:
        assert time.monotonic() < deadline, RayHook().get_job_logs(job_id)[-3000:]
        time.sleep(2)
    assert status is RayJobStatus.SUCCEEDED, RayHook().get_job_logs(job_id)[-3000:]
    table = read_committed(str(tmp_path / "out"))
    answers = {r["function"]: r["answer"] for r in table.to_pylist()}
    # What the page says the postprocess gets from the vLLM processor: the input row, the
    # preprocess's keys and the engine's.
    (documented,) = re.findall(r"\| `vLLMEngineProcessorConfig` \|[^|]*\|([^|]*)\|", PAGE.read_text())
    promised = set(re.findall(r"`(\w+)`", documented))
    for keys in table.column("keys").to_pylist():
        assert promised | {"function", "text", "date", "messages"} <= set(keys), keys
        assert "sampling_params" not in keys  # the engine consumes it, as the page says
    print(f"\nstructured outputs from the default model: {answers}")
    assert answers["pick_a_label"] in ("positive", "negative", "neutral")
    parsed = json.loads(answers["fill_a_json_schema"])
    assert isinstance(parsed["language"], str) and isinstance(parsed["words"], int)
    assert re.fullmatch(r"\d{2}/\d{2}/\d{4}", answers["match_a_regex"])
    assert re.fullmatch(r"(yes|no), because [a-z ]+", answers["follow_a_grammar"])


def test_the_dag_written_from_the_page_runs_first_time_outside_the_repository(ray_cluster, tmp_path):
    """The page's files written into an empty folder, its commands run there by bash with
    the environment a reader has: no test settings, only ``ray_default`` and ``airflow``."""
    folder = tmp_path / "reader"
    folder.mkdir()
    for name, body in _blocks("file").items():
        (folder / name).write_text(body)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["AIRFLOW_CONN_RAY_DEFAULT"] = json.dumps(ray_cluster)
    env["RAYDLLM_MODEL"] = default_model_path()  # as the page says: the model the cluster reads
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{env['PATH']}"
    (commands,) = _blocks("bash")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", commands], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-5000:]
    day = folder / "triage" / "out" / "2026-11-30"
    table, errors = read_committed(str(day)), read_committed(str(day / "_errors"))
    tickets = [line.split(",", 1)[0] for line in (folder / "tickets.csv").read_text().splitlines()[1:]]
    assert sorted(table.column("ticket_id").to_pylist() + errors.column("row_id").to_pylist()) == sorted(tickets)
    assert table.column_names == ["ticket_id", "category", "urgency"] and table.num_rows >= 5, errors.to_pylist()
    assert set(table.column("urgency").to_pylist()) <= {"low", "medium", "high"}
    assert set(table.column("category").to_pylist()) <= {"billing", "bug", "account", "feature request", "other"}
    # The downstream task ran on the committed rows (its return value is in the log).
    counted = re.search(r"Done\. Returned value was: (\{'tickets': \d+, 'urgent': \d+, 'failed': \d+\})", log)
    assert counted, log[-3000:]
    assert eval(counted.group(1))["tickets"] == table.num_rows  # noqa: S307 (a dict literal Airflow printed)
    relayed = [line for line in log.splitlines() if "[ray:" in line or "[ray] " in line]
    assert any("[ray:raydllm] committed" in line for line in relayed), log[-3000:]  # the job's log is in the output
    assert "\x1b[" not in "\n".join(relayed)
