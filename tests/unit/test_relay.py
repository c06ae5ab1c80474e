"""How a Ray job's log lines read in the task log (relay.py): the line forms below are those
of real job logs (Ray 2.60, vLLM CPU: Ray's worker, raylet and autoscaler prefixes, C++ log
lines, Python warnings, vLLM's format, this provider's job), colour codes included."""

from __future__ import annotations

import logging

import pytest

from airflow_provider_raydatallm.relay import MAX_LINE_CHARS, LineRelay, choice

E = "\x1b"
WORKER = f"{E}[36m(MapWorker(MapBatches(vLLMEngineStageUDF)) pid=4411, ip=10.0.0.5){E}[0m "
LINES = [
    "2026-12-01 06:30:01,123 INFO [raydllm] starting dag.task run manual (submission raydllm-x-a1)",
    "2026-12-01 06:30:02,004\tINFO streaming_executor.py:108 -- Starting execution of Dataset dataset_3_0.",
    WORKER + f"(EngineCore pid=4420) {E}[1;33mWARNING{E}[0m 12-01 06:30:05 [cpu.py:212] Pin memory is not "
    "supported on CPU.",
    WORKER + "INFO 12-01 06:30:06 [core.py:93] Initializing a V1 LLM engine",
    "2026-12-01 06:30:09,500 WARNING [vllm] a library's warning through the job's root logger",
    "a plain print() of the job",
    "Traceback (most recent call last):",
    '  File "/tmp/job/run.py", line 10, in <module>',
    "    main()",
    "ValueError: this preprocess rejects every row",
    "2026-12-01 06:30:10,000 INFO [raydllm] committed 4 rows to /data/out (0 error rows to /data/out/_errors)",
]


def _relay(mode=True, lines=LINES):
    relay = LineRelay(mode)
    return [r for r in map(relay, lines) if r is not None]


def test_every_line_loses_its_colour_codes_timestamps_and_ray_prefix_and_keeps_its_level():
    out = _relay()
    assert out == [
        (logging.INFO, "[ray:raydllm] starting dag.task run manual (submission raydllm-x-a1)"),
        (logging.INFO, "[ray:ray] Starting execution of Dataset dataset_3_0."),
        (logging.WARNING, "[ray:vLLMEngineStageUDF pid=4411] Pin memory is not supported on CPU."),
        (logging.INFO, "[ray:vLLMEngineStageUDF pid=4411] Initializing a V1 LLM engine"),
        (logging.WARNING, "[ray:vllm] a library's warning through the job's root logger"),
        (logging.INFO, "[ray] a plain print() of the job"),
        (logging.ERROR, "[ray] Traceback (most recent call last):"),
        (logging.ERROR, '[ray]   File "/tmp/job/run.py", line 10, in <module>'),
        (logging.ERROR, "[ray]     main()"),
        (logging.ERROR, "[ray] ValueError: this preprocess rejects every row"),
        (logging.INFO, "[ray:raydllm] committed 4 rows to /data/out (0 error rows to /data/out/_errors)"),
    ]
    assert not any(E in text for _, text in out)


def test_a_long_line_is_cut_saying_where_the_whole_line_is():
    (level, text), = _relay(lines=["x" * 5000])
    assert level == logging.INFO and len(text) < MAX_LINE_CHARS + 100
    assert text.endswith("... [+4600 characters: the whole line is in the Ray job's log]")


def test_summary_keeps_the_providers_lines_and_every_warning_and_error():
    texts = [t for _, t in _relay("summary")]
    assert texts[0].startswith("[ray:raydllm] starting") and texts[-1].startswith("[ray:raydllm] committed 4 rows")
    assert "[ray] a plain print() of the job" not in texts and len(texts) == 8
    assert [lvl for lvl, _ in _relay("warnings")] == [logging.WARNING] * 2 + [logging.ERROR] * 4
    assert _relay(False) == _relay("none") == []


@pytest.mark.parametrize("bad", ["ALL", 1, "verbose", None])
def test_fetch_logs_takes_booleans_and_the_named_choices_only(bad):
    with pytest.raises(ValueError, match="fetch_logs="):
        choice(bad)
    assert choice(True) == "all" and choice(False) == "none" and choice("summary") == "summary"


WORKER_TRACEBACK = [
    "(MapWorker(MapBatches(PreprocessUDF)) pid=5120) Traceback (most recent call last):",
    '(MapWorker(MapBatches(PreprocessUDF)) pid=5120)   File "/tmp/ray/job/rows.py", line 88, in __call__',
    "(MapWorker(MapBatches(PreprocessUDF)) pid=5120)     out = dict(self.fn(row)) if self.fn else {}",
    "(MapWorker(MapBatches(PreprocessUDF)) pid=5120) ValueError: bad",
    "ray.exceptions.RayTaskError(UserCodeException): ray::MapBatches(PreprocessUDF)() (pid=5120, ip=10.0.0.5)",
    '  File "/tmp/ray/job/rows.py", line 88, in __call__',
    "RowError: preprocess failed on row 3: ValueError: bad",
    "RAYDLLM_ERROR preprocess failed on row 3: ValueError: bad",
    "    an indented line after the traceback ended",
]


def test_tracebacks_from_workers_and_rays_wrapped_errors_are_errors_and_keep_their_indentation():
    out = _relay(lines=WORKER_TRACEBACK)
    assert [lvl for lvl, _ in out] == [logging.ERROR] * 8 + [logging.INFO]
    assert out[1][1] == '[ray:PreprocessUDF pid=5120]   File "/tmp/ray/job/rows.py", line 88, in __call__'
    assert out[7] == (logging.ERROR, "[ray:raydllm] RAYDLLM_ERROR preprocess failed on row 3: ValueError: bad")
    assert len(_relay("warnings", WORKER_TRACEBACK)) == 8  # the lines that explain a failure stay


def test_rays_own_warnings_cpp_lines_and_python_warnings_keep_their_level():
    lines = [
        "(raylet) A worker died or was killed while executing a task by an unexpected system error. "
        "(OOM: memory used 23.1GB / 24GB)",
        "(autoscaler +1m3s) Warning: The following resource request cannot be scheduled right now: {'GPU': 1.0}",
        "(autoscaler +2m0s) Error: No available node types can fulfill resource request {'GPU': 8.0}",
        "[2026-12-01 06:30:01,123 E 4411 4412] core_worker.cc:123: Failed to connect to GCS",
        "(MapWorker(MapBatches(ChatTemplateUDF)->MapBatches(TokenizeUDF)) pid=77) /x/transformers/utils.py:12: "
        "FutureWarning: `torch_dtype` is deprecated",
        "(EngineCore_DP0 pid=81) INFO 12-01 06:30:06 [core.py:93] Initializing a V1 LLM engine",
        "(MapWorker(MapBatches(vLLMEngineStageUDF)) pid=4411) hello [repeated 3x across cluster]",
    ]
    assert _relay(lines=lines) == [
        (logging.WARNING, "[ray:raylet] A worker died or was killed while executing a task by an unexpected system "
                          "error. (OOM: memory used 23.1GB / 24GB)"),
        (logging.WARNING, "[ray:autoscaler] Warning: The following resource request cannot be scheduled right now: "
                          "{'GPU': 1.0}"),
        (logging.ERROR, "[ray:autoscaler] Error: No available node types can fulfill resource request {'GPU': 8.0}"),
        (logging.ERROR, "[ray:ray] core_worker.cc:123: Failed to connect to GCS"),
        (logging.WARNING, "[ray:ChatTemplateUDF->TokenizeUDF pid=77] /x/transformers/utils.py:12: FutureWarning: "
                          "`torch_dtype` is deprecated"),
        (logging.INFO, "[ray:EngineCore_DP0 pid=81] Initializing a V1 LLM engine"),
        (logging.INFO, "[ray:vLLMEngineStageUDF pid=4411] hello [repeated 3x across cluster]"),
    ]  # fmt: skip


def test_a_secret_airflow_knows_is_masked_before_a_long_line_is_cut():
    from airflow.sdk.log import mask_secret

    secret = "sk-live-" + "Q" * 40
    mask_secret(secret)
    (_, text), = _relay(lines=["x" * 380 + f" token={secret} " + "y" * 100])
    assert "sk-live-" not in text and "QQQQ" not in text and "***" in text


def test_a_huge_line_opening_with_a_parenthesis_is_not_scanned_whole():
    import time

    started = time.perf_counter()
    (_, text), = _relay(lines=["(" * 5_000_000])
    assert time.perf_counter() - started < 0.5 and len(text) < MAX_LINE_CHARS + 100


def test_the_jobs_own_line_behind_a_glued_worker_line_is_still_the_jobs():
    """Ray relays workers' lines into the driver's output from another thread: one can end up
    in front of the job's error or result line on one line. The job's line keeps its level and
    is shown in the summary modes too."""
    glued = WORKER + "INFO 12-02 09:36:53 [multiproc_executor.py:843] Parent process exitedRAYDLLM_ERROR pre-flight: no column 'text'"
    for mode in (True, "summary", "warnings"):
        assert _relay(mode, [glued]) == [(logging.ERROR, "[ray:raydllm] RAYDLLM_ERROR pre-flight: no column 'text'")]
