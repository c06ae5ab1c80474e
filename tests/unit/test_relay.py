"""How a Ray job's log lines read in the task log (relay.py): the lines below are copied
from real job logs of this provider's runs (Ray 2.60, vLLM CPU), colour codes included."""

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
    "2026-12-01 06:30:10,000 INFO [raydllm] 4 of 4 rows, 0.8 rows/s",
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
        (logging.INFO, "[ray:raydllm] 4 of 4 rows, 0.8 rows/s"),
    ]
    assert not any(E in text for _, text in out)


def test_a_long_line_is_cut_saying_where_the_whole_line_is():
    (level, text), = _relay(lines=["x" * 5000])
    assert level == logging.INFO and len(text) < MAX_LINE_CHARS + 100
    assert text.endswith("... [4600 more characters: the whole line is in the Ray job's log]")


def test_summary_keeps_the_providers_lines_and_every_warning_and_error():
    texts = [t for _, t in _relay("summary")]
    assert texts[0].startswith("[ray:raydllm] starting") and texts[-1] == "[ray:raydllm] 4 of 4 rows, 0.8 rows/s"
    assert "[ray] a plain print() of the job" not in texts and len(texts) == 8
    assert [lvl for lvl, _ in _relay("warnings")] == [logging.WARNING] * 2 + [logging.ERROR] * 4
    assert _relay(False) == _relay("none") == []


@pytest.mark.parametrize("bad", ["ALL", 1, "verbose"])
def test_fetch_logs_takes_booleans_and_the_named_choices_only(bad):
    with pytest.raises(ValueError, match="fetch_logs="):
        choice(bad)
    assert choice(True) == "all" and choice(False) == "none" and choice("summary") == "summary"
