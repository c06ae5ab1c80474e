"""RayLLMBatchOperator end to end: dag.test() on SQLite, the real local Ray cluster, vLLM on
CPU and the real default model. Labels are checked against the allowed choices, not for
being right: it is a 135M model."""

from __future__ import annotations

import json
import logging
import re
import time

import pyarrow.parquet as pq
import pytest

from demo_helpers import customer_rows, write_customers_csv, write_jsonl

from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobStatus
from airflow_provider_raydatallm.job import progress
from airflow_provider_raydatallm.relay import MAX_LINE_CHARS

pytestmark = pytest.mark.system

QUESTIONS = ["What is the weather like today?", "Tell me a joke.", "Give me a motivational quote.", "What is 2+2?"]
ROWS = 12  # three blocks at batch_size 4; a small model on 2 CPU cores takes ~1 s a row under load
LOG_LINES_BOUND = 220  # relayed job-log lines of a 4-row run, progress aside (~200 measured on 2026-12-01)
CHOICES = ["Law Firm", "Healthcare", "Technology", "Retail", "Consulting", "Manufacturing", "Finance",
           "Real Estate", "Other"]  # fmt: skip


def _data_files(path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if not p.name.startswith("_"))


def test_seed000_questions_non_deferrable(test_dags, tmp_path, capfd, caplog):
    caplog.set_level(logging.INFO, logger="airflow.task.ray")
    questions = write_jsonl(tmp_path / "questions.jsonl", [{"item": q} for q in QUESTIONS])
    out = tmp_path / "answers"
    conf = {"input": str(questions), "output": str(out)}
    run = test_dags.run("test_questions_sync", conf)
    assert test_dags.states(run) == {"answer": "success"}
    table = pq.read_table(out)
    assert table.num_rows == 4
    assert sorted(table.column("item").to_pylist()) == sorted(QUESTIONS)
    assert all(a.strip() for a in table.column("answer").to_pylist())
    manifest = json.loads((out / "_SUCCESS").read_text())
    assert sorted(tmp_path.iterdir()) == sorted([questions, out])  # nothing beside the output
    assert not list((out / "_raydllm").glob("staging/*")) and not list((out / "_raydllm").glob("commit-*"))
    assert sorted(manifest["files"]) == sorted(p.name for p in out.glob("*.parquet"))
    result = test_dags.xcom(run, "answer")
    metrics = result["metrics"]
    assert (metrics["rows_in"], metrics["rows_out"], metrics["error_rows"]) == (4, 4, 0)
    assert metrics["output_tokens"] > 0 and metrics["input_tokens"] > 0
    assert any("vLLMEngineStageUDF" in stage for stage in metrics["stage_seconds"])
    # The manifest is written by the commit, before the commit's end and the job's teardown
    # are known: the same metrics but for the start-up breakdown, which XCom carries whole.
    timing = ("phases", "started_at", "ended_at", "moments")
    assert {k: v for k, v in manifest["metrics"].items() if k not in timing} == {
        k: v for k, v in metrics.items() if k not in timing
    } and manifest["submission_id"] == result["submission_id"]
    assert list(metrics["phases"])[0] == "submission" and list(metrics["phases"])[-1] == "teardown"
    assert {"driver start", "engine start", "inference", "commit"} <= set(metrics["phases"])
    # The phases tile the job from its submission to its end, as Ray's job record has it.
    info = RayHook().get_job_info(result["submission_id"])
    assert abs(sum(metrics["phases"].values()) - (info.end_time - info.start_time) / 1000) < 1.0, metrics["phases"]
    assert result["dashboard_url"].endswith(f"/#/jobs/{result['submission_id']}")
    link = test_dags.xcom(run, "answer", key="ray_job")
    assert link["dashboard_url"] == result["dashboard_url"]
    logged = capfd.readouterr().out
    assert f"Ray job {result['submission_id']}: its log follows" in logged
    assert f"Where the time went (Ray job {result['submission_id']}, submission to its end)" in logged
    # The job's log reads top to bottom: no colour codes, short lines, attributed, bounded.
    # The relayed lines are stdlib records of "airflow.task.ray" (the task log's in a real
    # Airflow; under pytest, dag.test() hands them to pytest's log capture).
    relayed = [r.getMessage() for r in caplog.records if r.name == "airflow.task.ray"]
    assert any(line.startswith("[ray:vLLMEngineStageUDF pid=") for line in relayed), relayed[:20]
    assert any(line.startswith("[ray:raydllm] ") for line in relayed), relayed[:20]
    assert not any("\x1b" in line for line in relayed)
    # At most MAX_LINE_CHARS of a line, plus its source prefix and the note on where the rest is.
    assert max(map(len, relayed)) <= MAX_LINE_CHARS + 120
    # Bounded: the job's own progress line every 10 s here (6 a minute; 2 by default), Ray
    # Data's per-stage block every 10 minutes, the rest is fixed.
    assert len(relayed) <= LOG_LINES_BOUND + 8 * metrics["wall_seconds"] / 60, len(relayed)
    # The job's progress: a line per interval while the engine starts and the rows go through,
    # then the final count, all parsed back to the figures the run reports.
    shown = [progress.parse(line) for line in relayed if line.startswith("[ray:raydllm] progress: ")]
    shown = [figures for figures in shown if figures]
    assert shown and shown[-1]["finished"] and (shown[-1]["done"], shown[-1]["total"]) == (4, 4), relayed
    ticks = [figures["elapsed_seconds"] for figures in shown[:-1]]
    assert ticks == sorted(ticks) and len(ticks) >= min(3, int(metrics["wall_seconds"] // 10) - 3), (ticks, metrics["wall_seconds"])


def test_deferrable_task_and_a_same_date_rerun_replace_the_days_output(test_dags, tmp_path):
    """The industries use case's rows through the stand-in endpoint (the engine is not under
    test here: the use case runs on vLLM in test_examples.py)."""
    customers = write_customers_csv(tmp_path / "customers.csv", ROWS)
    out = tmp_path / "industries"
    conf = {"input": str(customers), "output": str(out)}
    run = test_dags.run("test_industries_deferred", conf)
    assert test_dags.states(run) == {"classify": "success"}
    day = out / "2026-11-22"
    table = pq.read_table(day)
    assert table.num_rows == ROWS and all(a.startswith("echo: What industry") for a in table.column("answer").to_pylist())
    expected_ids = {r["Customer Id"] for r in customer_rows(ROWS)}
    assert set(table.column("Customer Id").to_pylist()) == expected_ids
    first = test_dags.xcom(run, "classify")
    metrics = first["metrics"]
    assert metrics["rows_in"] == metrics["rows_out"] == table.num_rows and metrics["error_rows"] == 0
    assert metrics["rows_per_second"] > 0

    # The same logical date again (dag.test makes a new run id, so a new job runs): the day's
    # output is replaced, not appended to.
    files = _data_files(day)
    again = test_dags.run("test_industries_deferred", conf)
    assert test_dags.states(again) == {"classify": "success"}
    assert test_dags.xcom(again, "classify")["submission_id"] != first["submission_id"]
    assert pq.read_table(day).num_rows == ROWS and len(_data_files(day)) == len(files)
    assert set(_data_files(day)).isdisjoint(files)
    assert [p.name for p in out.iterdir()] == ["2026-11-22"]


def test_failing_job_fails_the_task_with_the_jobs_error(test_dags, tmp_path, capfd):
    customers = write_customers_csv(tmp_path / "c.csv", 10)
    out = tmp_path / "never"
    run = test_dags.run("test_failing_preprocess", {"input": str(customers), "output": str(out)})
    assert test_dags.states(run) == {"classify": "failed"}
    logged = capfd.readouterr().out
    assert "RayJobFailedError" in logged
    # The failure leads with the user's error and its row, then Ray's wrapping; no colour codes.
    headline = re.search(r"ended FAILED: (preprocess failed on row \S+: ValueError: this preprocess rejects every row[^\n]*)", logged)
    assert headline and "\x1b[" not in headline.group(1), logged[-3000:]
    assert not out.exists()  # a failed run leaves no trace in the output


def test_failed_rows_in_every_block_leave_the_other_rows_inferred(test_dags, tmp_path):
    """Preprocess fails on every 4th row and postprocess on every 7th, so every block holds
    failed rows beside good ones: each good row must still reach the model and the user's
    postprocess (issue 7: they used to skip both and count as output)."""
    customers = write_customers_csv(tmp_path / "c.csv", 12)
    out = tmp_path / "out"
    run = test_dags.run("test_continue_on_error", {"input": str(customers), "output": str(out)})
    assert test_dags.states(run) == {"classify": "success"}
    good, bad = pq.read_table(out), pq.read_table(out / "_errors")
    pre_failed, post_failed = {i for i in range(1, 13) if i % 4 == 0}, {7}
    assert sorted(bad.column("row_id").to_pylist(), key=int) == [str(i) for i in sorted(pre_failed | post_failed)]
    stages = dict(zip(bad.column("row_id").to_pylist(), bad.column("stage").to_pylist()))
    assert {int(k) for k, v in stages.items() if v == "preprocess"} == pre_failed
    assert {int(k) for k, v in stages.items() if v == "postprocess"} == post_failed
    assert all("refusing row" in e or "no label for row" in e for e in bad.column("error").to_pylist())
    assert json.loads(bad.column("row").to_pylist()[0])["Company"]

    rows_out = good.to_pylist()
    assert sorted(r["Index"] for r in rows_out) == [i for i in range(1, 13) if i not in pre_failed | post_failed]
    for row in rows_out:  # the model's output and the postprocess's column, on every output row
        assert row["inferred_industry"] in CHOICES and row["generated_text"] == row["inferred_industry"], row
        assert row["num_input_tokens"] > 0 and row["num_generated_tokens"] > 0, row
    assert not any(c.startswith("__") for c in good.column_names)
    metrics = test_dags.xcom(run, "classify")["metrics"]
    assert (metrics["rows_in"], metrics["rows_out"], metrics["error_rows"]) == (12, 8, 4)
    assert metrics["input_tokens"] == sum(r["num_input_tokens"] for r in rows_out)
    assert metrics["output_tokens"] == sum(r["num_generated_tokens"] for r in rows_out)
    print(f"mixed failures: output columns {good.column_names}; tokens in {metrics['input_tokens']}, "
          f"out {metrics['output_tokens']}")  # fmt: skip


def test_a_run_where_every_row_failed_commits_nothing_and_keeps_its_error_rows_with_the_models_text(
    test_dags, tmp_path, capfd
):
    customers = write_customers_csv(tmp_path / "c.csv", 8)
    out = tmp_path / "out"
    run = test_dags.run("test_every_row_fails_on_error", {"input": str(customers), "output": str(out)})
    assert test_dags.states(run) == {"classify": "failed"}
    logged = capfd.readouterr().out
    kept = out / "_errors" / "_raydllm" / "failed-run"
    assert f"8 of 8 rows failed (every row failed); nothing was committed; its 8 error rows are in {kept} " in logged
    assert "row 1 (postprocess): ValueError: this postprocess wants JSON: echo: What i" in logged
    assert "[the model answered 'echo: " in logged
    # No committed version anywhere: no _SUCCESS, no data file; the rows are kept for reading.
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        f"_errors/_raydllm/failed-run/{name}" for name in [*json.loads((kept / "failed-run.json").read_text())["files"],
                                                         "failed-run.json"]
    )  # fmt: skip
    record = json.loads((kept / "failed-run.json").read_text())
    assert record["failed_run"] is True and record["rows"] == 8 and "8 of 8 rows failed" in record["failure"]
    errors = pq.read_table([str(kept / f) for f in record["files"]])
    assert sorted(errors.column("row_id").to_pylist(), key=int) == [str(i) for i in range(1, 9)]
    assert set(errors.column("stage").to_pylist()) == {"postprocess"}
    answers = errors.column("model_output").to_pylist()
    assert all(a.startswith("echo: What industry is this company in: ") for a in answers), answers
    assert all(n > 0 for n in errors.column("input_tokens").to_pylist() + errors.column("output_tokens").to_pylist())
    companies = {r["Index"]: r["Company"] for r in customer_rows(8)}
    for rid, row, answer in zip(errors.column("row_id").to_pylist(), errors.column("row").to_pylist(), answers):
        assert json.loads(row)["Company"] == companies[int(rid)] and companies[int(rid)] in answer


def test_on_kill_stops_the_ray_job(test_dags, tmp_path, ray_conn):
    questions = write_jsonl(tmp_path / "q.jsonl", [{"item": q} for q in QUESTIONS])
    run = test_dags.run("test_killed_task", {"input": str(questions), "output": str(tmp_path / "out")})
    assert test_dags.states(run) == {"slow": "failed"}
    job_id = test_dags.xcom(run, "slow", key="ray_job")["submission_id"]
    hook = RayHook()
    deadline = time.monotonic() + 10
    while hook.get_job_status(job_id) is not RayJobStatus.STOPPED and time.monotonic() < deadline:
        time.sleep(0.5)
    assert hook.get_job_status(job_id) is RayJobStatus.STOPPED


def _job_seconds(job_id: str) -> float:
    info = RayHook().get_job_info(job_id)
    return (info.end_time - info.start_time) / 1000


def test_a_model_the_cluster_does_not_have_fails_fast_naming_it(test_dags, tmp_path, ray_conn, capfd):
    customers = write_customers_csv(tmp_path / "c.csv", 4)
    run = test_dags.run("test_missing_model", {"input": str(customers), "output": str(tmp_path / "out")})
    assert test_dags.states(run) == {"classify": "failed"}
    logged = capfd.readouterr().out
    assert "ended FAILED: PreflightError: model_source '/nonexistent/models/SmolLM2' does not exist on the Ray cluster" in logged
    job_id = test_dags.xcom(run, "classify", key="ray_job")["submission_id"]
    assert _job_seconds(job_id) < 30
    print(f"\nmissing model: the job failed {_job_seconds(job_id):.1f}s after it started")


def test_an_id_column_missing_from_the_input_fails_naming_the_columns(test_dags, tmp_path, capfd):
    customers = write_customers_csv(tmp_path / "c.csv", 4)
    run = test_dags.run("test_missing_id_column", {"input": str(customers), "output": str(tmp_path / "out")})
    assert test_dags.states(run) == {"classify": "failed"}
    logged = capfd.readouterr().out
    assert "id_column 'Customer Number' is not a column of the input; its columns are: Index, Customer Id" in logged


def test_a_preprocess_using_a_helper_module_beside_the_dag_file_works_on_the_cluster(test_dags, tmp_path):
    questions = write_jsonl(tmp_path / "q.jsonl", [{"item": q} for q in QUESTIONS])
    out = tmp_path / "out"
    run = test_dags.run("test_helper_module", {"input": str(questions), "output": str(out)})
    assert test_dags.states(run) == {"ask": "success"}
    answers = sorted(pq.read_table(out).column("answer").to_pylist())
    assert answers == sorted(f"echo: helper says: {q}" for q in QUESTIONS)


def test_accelerator_type_l4_with_concurrency_2_puts_one_engine_on_each_worker_node(
    test_dags, tmp_path, worker_nodes
):
    """The session's head plus two worker nodes with ``accelerator_type:L4`` (the
    ``worker_nodes`` fixture, scripts/local_ray.py profile test): the vLLM replicas must
    land there, one per node.
    A replica is an actor with a worker process (pid); the state API's worker list says which
    node each process runs on. It is read while the job runs: a replica still starting when
    the work is done ends without ever being ALIVE, and its actor record then has no node."""
    import threading

    customers = write_customers_csv(tmp_path / "customers.csv", 32)
    out = tmp_path / "industries"
    hook = RayHook()
    node_of_pid: dict[int, str] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for worker in hook.state_rows("/api/v0/workers", {"detail": "true", "limit": 10000}):
                if worker.get("pid") and worker.get("node_id"):
                    node_of_pid[int(worker["pid"])] = worker["node_id"]
            done.wait(1.0)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        run = test_dags.run("test_placement_l4", {"input": str(customers), "output": str(out)})
    finally:
        done.set()
        watcher.join()
    assert test_dags.states(run) == {"classify": "success"}
    labels = pq.read_table(out).column("inferred_industry").to_pylist()
    assert len(labels) == 32 and set(labels) <= set(CHOICES)

    job_hex = hook.get_job_info(test_dags.xcom(run, "classify")["submission_id"]).job_id
    actors = hook.state_rows(
        "/api/v0/actors", {"detail": "true", "limit": 1000, "filter_keys": "job_id", "filter_predicates": "=",
                           "filter_values": job_hex},
    )  # fmt: skip
    engines = [a for a in actors if "vLLMEngineStageUDF" in (a.get("class_name") or "")]
    placed = sorted(a.get("node_id") or node_of_pid.get(int(a.get("pid") or 0), "?") for a in engines)
    assert len(placed) == 2 and len(set(placed)) == 2 and "?" not in placed, [
        (a.get("pid"), a.get("node_id"), a.get("state")) for a in engines
    ]
    nodes = {n["node_id"]: n for n in hook.state_rows("/api/v0/nodes", {"detail": "true", "limit": 100})}
    for node_id in placed:  # one replica on each worker node, none on the head
        node = nodes[node_id]
        assert not node.get("is_head_node") and node["resources_total"].get("accelerator_type:L4") == 1, node
