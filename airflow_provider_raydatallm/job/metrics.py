"""What a finished job reports: its metrics, and the one log line that carries them home.

The job writes its metrics into the output's ``_SUCCESS`` manifest and prints the same result as a
single ``RAYDLLM_RESULT {...}`` line, which the operator reads from the job's log: the
Airflow side needs no access to the output storage to know what came out.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

RESULT_MARKER = "RAYDLLM_RESULT "
ERROR_MARKER = "RAYDLLM_ERROR "  # the job's one-line reason for failing, read by the operator
# "Operator 3 MapBatches(vLLMEngineStageUDF): 2 tasks executed, 2 blocks produced in 12.5s"
_STAGE_LINE = re.compile(r"^Operator \d+ (?P<name>.+?): .*?produced in (?P<seconds>[\d.]+)\s*s", re.M)


class JobMetrics(BaseModel):
    """Counts and rates of one batch, computed by the job itself."""

    model_config = ConfigDict(extra="forbid")

    rows_in: int
    rows_out: int
    error_rows: int
    input_tokens: int = 0
    output_tokens: int = 0
    wall_seconds: float
    rows_per_second: float = 0.0
    output_tokens_per_second: float = 0.0
    num_partitions: int = 0
    stage_seconds: dict[str, float] = Field(default_factory=dict)
    # The engine stage's own time (vLLM / SGLang / HTTP / Serve stage in Dataset.stats()), and
    # the rest of the job's wall time: start-up of the engine and the other stages' actors,
    # reading, writing and committing.
    inference_seconds: float = 0.0
    startup_seconds: float = 0.0
    # Rows an earlier try of the same task instance wrote, carried over without processing
    # them again (rows_in counts them; rows_per_second does not).
    resumed_rows: int = 0
    # Where the time went, in order (job/phases.py): seconds per phase from the driver's start
    # to the commit; the Airflow side adds submission and teardown from Ray's job record.
    phases: dict[str, float] = Field(default_factory=dict)
    # The driver's start and the commit's end, seconds since the epoch (the cluster's clock).
    started_at: float = 0.0
    ended_at: float = 0.0
    # The pass's moments, seconds after the driver's start: first_in (the first rows reached
    # the preprocess), engine_ready, first_out (the first rows left the engine), last_out.
    moments: dict[str, float] = Field(default_factory=dict)


class JobResult(BaseModel):
    """The job's final report: where things went and the metrics."""

    model_config = ConfigDict(extra="forbid")

    output_uri: str
    error_output_uri: str
    output_format: str
    metrics: JobMetrics
    # The first few error rows (row_id, stage, error), as in the error output, for the UI.
    first_errors: list[dict[str, str]] = Field(default_factory=list)
    # The model names an OpenAI-compatible endpoint reported in its answers (HTTP processor,
    # Serve); empty for engine stages, whose model is the config's.
    models: list[str] = Field(default_factory=list)
    # A table output: what was committed (format, table, partition, snapshot_id or version,
    # rows, location); the directories above are then the rows' work directories.
    table: dict[str, Any] | None = None
    error_table: dict[str, Any] | None = None

    def to_log_line(self) -> str:
        return RESULT_MARKER + self.model_dump_json()


def find_result(log_text: str) -> JobResult | None:
    """The last result line in a job log, or None if the job printed none. Ray relays the
    workers' lines into the driver's output from another thread, so a worker's line can be
    glued before or after the result on one line: the result is the JSON object after the
    marker, whatever follows it."""
    for line in reversed(log_text.splitlines()):
        index = line.find(RESULT_MARKER)
        if index != -1:
            start = index + len(RESULT_MARKER)
            start += len(line[start:]) - len(line[start:].lstrip())
            data, _ = json.JSONDecoder().raw_decode(line, start)
            return JobResult.model_validate(data)
    return None


def say(line: str) -> None:
    """Print one line of the job's own (a result or error line) in one write: ``print`` writes
    the text and its newline apart, and a worker's line Ray relays meanwhile lands between."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


ENGINE_STAGES = ("EngineStage", "HttpRequest", "ServeDeployment")
FIRST_ERROR_CHARS = 500


def split_wall(wall: float, stages: dict[str, float]) -> tuple[float, float]:
    """(inference, start-up and the rest) seconds of a job: the engine stage's time and the
    remainder of its wall time."""
    inference = sum(t for name, t in stages.items() if any(k in name for k in ENGINE_STAGES))
    inference = min(inference, wall)
    return round(inference, 3), round(wall - inference, 3)


def first_error_records(records: list[dict[str, object]]) -> list[dict[str, str]]:
    """Error rows as the UI shows them: id, stage and the message cut to a few hundred chars."""
    return [
        {"row_id": str(r.get("row_id", "")), "stage": str(r.get("stage", "")), "error": str(r.get("error", ""))[:FIRST_ERROR_CHARS]}
        for r in records
    ]


def stage_seconds(stats_text: str) -> dict[str, float]:
    """Per-operator wall time from a Ray Data ``Dataset.stats()`` text."""
    stages: dict[str, float] = {}
    for match in _STAGE_LINE.finditer(stats_text):
        name = match.group("name")
        stages[name] = round(stages.get(name, 0.0) + float(match.group("seconds")), 3)
    return stages
