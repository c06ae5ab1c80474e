"""Per-row wrappers around the user's preprocess and postprocess (run on Ray workers).

They give every row an id, turn a failing row into an error row (when the task continues
on error) or into an error that names the row (when it does not), and carry token counts
past the user's postprocess, which may drop them. Column names starting with
``__raydllm_`` are internal and never reach the output.

What an error row is, is Ray's rule, kept in one place (:func:`ray_error_of`): every
``ray.data.llm`` stage passes a row through untouched, and skips the postprocess, when
``row.get("__inference_error__", "") != ""``. A missing key is a good row; ``None`` is an
error row. Ray Data fills a column with ``None`` for the rows of a block that lack it, so
every row we emit carries the column: ``""`` when it is good.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

ROW_ID = "__raydllm_row_id"
ERROR = "__raydllm_error"
ROW_JSON = "__raydllm_row_json"
IN_TOKENS = "__raydllm_in_tokens"
OUT_TOKENS = "__raydllm_out_tokens"
# True once a row went through the user's postprocess with the processor's result in it.
INFERRED = "__raydllm_inferred"
# JSON list of the keys the user's postprocess returned for the row: the output's columns.
COLUMNS = "__raydllm_columns"
# What the model answered for a row whose postprocess failed (kept for its error record).
MODEL_OUTPUT = "__raydllm_model_output"
# The model an endpoint says answered the row (HTTP processor, Serve): for the job's report.
MODEL_NAME = "__raydllm_model"
# What was sent to the model for a row whose postprocess failed (kept for its error record).
PROMPT = "__raydllm_prompt"
PROMPT_CHARS = 2000  # of a prompt kept in an error record
# JSON list of the input columns the postprocess returned unchanged (the very value it was
# given): only those get their input type back (sink.restore_types).
PASSED = "__raydllm_passed"
# When the row reached the user's preprocess and left the processor (epoch seconds), and the
# engine's own seconds on it: the start-up breakdown (job/phases.py) reads them per block.
T_IN = "__raydllm_t_in"
T_OUT = "__raydllm_t_out"
ENGINE_SECONDS = "__raydllm_engine_s"
RAY_ERROR = "__inference_error__"  # set by ray.data.llm stages when should_continue_on_error
INTERNAL_COLUMNS = (ROW_ID, ERROR, ROW_JSON, IN_TOKENS, OUT_TOKENS, INFERRED, COLUMNS, MODEL_OUTPUT, MODEL_NAME, PASSED,
                    PROMPT, RAY_ERROR, T_IN, T_OUT, ENGINE_SECONDS)  # fmt: skip
# Columns a processor adds to a row it ran on; a row without any of them was not inferred.
RESULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "vLLMEngineProcessorConfig": ("generated_text", "embeddings"),
    "SGLangEngineProcessorConfig": ("generated_text",),
    "HttpRequestProcessorConfig": ("http_response",),
    "ServeDeploymentProcessorConfig": ("request_id",),
}
NO_MESSAGE = "row marked failed by a ray.data.llm stage without a message"


ERROR_COLUMNS = ("row_id", "stage", "error", "row", "prompt", "model_output", "input_tokens", "output_tokens")


def error_schema():
    """The error output's columns, the same whatever failed: the row's id, the stage that
    failed (preprocess, inference, postprocess), the error, the input row (JSON), what was
    sent to the model (a row that failed in the engine or its postprocess), and for a row the
    model answered (its postprocess failed) the model's text and token counts."""
    import pyarrow as pa

    return pa.schema(
        [(name, pa.string()) for name in ERROR_COLUMNS[:6]] + [(name, pa.int64()) for name in ERROR_COLUMNS[6:]]
    )


def prompt_of(row: dict[str, Any]) -> str | None:
    """What was sent to the model for a processed row, cut to PROMPT_CHARS: the engine's
    prompt (vLLM and SGLang put the chat-templated prompt on the row, Ray cuts it on a failed
    row), else the request an endpoint got (HTTP ``payload``, Serve ``request_kwargs``) or
    the chat ``messages``, as JSON."""
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        sent = next((row[k] for k in ("payload", "request_kwargs", "messages") if row.get(k) is not None), None)
        if sent is None:
            return None
        prompt = json.dumps(jsonable(sent), default=str, ensure_ascii=False)
    return prompt[:PROMPT_CHARS]


def model_output_of(row: dict[str, Any]) -> str | None:
    """The model's answer in a processed row: ``generated_text`` (vLLM, SGLang, Serve), or
    an OpenAI-compatible response's message (HTTP processor), else the response as JSON."""
    text = row.get("generated_text")
    if isinstance(text, str):
        return text
    response = row.get("http_response")
    if response is None and isinstance(row.get("choices"), (list, tuple)):
        response = {"choices": row["choices"]}  # a Serve LLM deployment's OpenAI response
    if isinstance(response, dict):
        try:
            choice = response["choices"][0]
            return str(choice.get("message", {}).get("content") or choice.get("text") or "")
        except (KeyError, IndexError, TypeError, AttributeError):
            return json.dumps(jsonable(response), default=str, ensure_ascii=False)
    return None


class RowError(RuntimeError):
    """A row failed and the task does not continue on error."""


def jsonable(value: Any) -> Any:
    """A value as JSON can hold it: numpy arrays and scalars as lists and numbers."""
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def row_json(row: dict[str, Any], columns: list[str]) -> str:
    return json.dumps({c: jsonable(row.get(c)) for c in columns}, default=str, ensure_ascii=False)


def row_id(row: dict[str, Any], columns: list[str], id_column: str | None) -> str:
    """The row's id: its ``id_column`` value, else a hash of its content (stable across reruns)."""
    if id_column and row.get(id_column) is not None:
        return str(row[id_column])
    return "sha1:" + hashlib.sha1(row_json(row, columns).encode()).hexdigest()[:16]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Preprocess:
    """Wraps the user's preprocess: ``row -> {**user_output, ROW_ID}``."""

    def __init__(self, fn: Callable | None, columns: list[str], id_column: str | None, continue_on_error: bool):
        self.fn, self.columns, self.id_column, self.continue_on_error = fn, columns, id_column, continue_on_error

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        rid = row_id(row, self.columns, self.id_column)
        try:
            out = dict(self.fn(row)) if self.fn else {}
        except Exception as exc:
            if not self.continue_on_error:
                raise RowError(f"preprocess failed on row {rid}: {_describe(exc)}") from exc
            # A non-empty RAY_ERROR makes every ray.data.llm stage pass the row through untouched.
            return {ROW_ID: rid, RAY_ERROR: f"preprocess: {_describe(exc)}", T_IN: now}
        out[ROW_ID] = rid
        out[T_IN] = now
        out[RAY_ERROR] = ""  # "" is good to Ray; a missing value in a mixed block is None: an error
        return out


class Postprocess:
    """Wraps the user's postprocess; keeps the row id, token counts and whether the
    processor's result was there beside its output."""

    def __init__(
        self, fn: Callable | None, columns: list[str], continue_on_error: bool, result_columns: tuple[str, ...] = ()
    ):
        self.fn, self.columns, self.continue_on_error = fn, columns, continue_on_error
        self.result_columns = result_columns

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        rid = str(row.get(ROW_ID, ""))
        tokens = token_counts(row)
        times = {T_IN: row.get(T_IN), T_OUT: time.time(), ENGINE_SECONDS: engine_seconds(row)}
        given = {k: row[k] for k in self.columns if k in row}  # before the postprocess can reassign them
        try:
            out = dict(self.fn(row)) if self.fn else dict(row)
        except Exception as exc:
            if not self.continue_on_error:
                raise RowError(f"postprocess failed on row {rid}: {_describe(exc)}") from exc
            return {
                ROW_ID: rid, ERROR: f"postprocess: {_describe(exc)}", RAY_ERROR: "", ROW_JSON: row_json(row, self.columns),
                MODEL_OUTPUT: model_output_of(row), PROMPT: prompt_of(row), **tokens, **times,
            }  # fmt: skip
        inferred = not self.result_columns or any(row.get(c) is not None for c in self.result_columns)
        returned = json.dumps([k for k in out if not str(k).startswith("__raydllm_") and k != RAY_ERROR])
        passed = json.dumps([k for k in out if k in given and unchanged(out[k], given[k])])
        out.update({ROW_ID: rid, ERROR: "", RAY_ERROR: "", INFERRED: inferred, COLUMNS: returned, **tokens, **times})
        out[MODEL_NAME] = model_name_of(row)
        out[PASSED] = passed
        return out


def unchanged(returned: Any, given: Any) -> bool:
    """Whether the postprocess returned the value it was given for a column: the same
    object, or an equal value of the very same type (``0.0`` for ``0`` is a change)."""
    if returned is given:
        return True
    if type(returned) is not type(given):
        return False
    try:
        return bool(returned == given)
    except (TypeError, ValueError):  # arrays compare element-wise: not a plain pass-through
        return False


def engine_seconds(row: dict[str, Any]) -> float | None:
    """The engine's own seconds on a row (vLLM and SGLang ``time_taken_llm``, Serve
    ``time_taken``), None when the stage reports none (HTTP) or the row failed there."""
    for key in ("time_taken_llm", "time_taken"):
        try:
            value = float(row[key]) if row.get(key) is not None else -1.0  # numpy scalars too
        except (TypeError, ValueError):
            continue
        if value >= 0:
            return value
    return None


def model_name_of(row: dict[str, Any]) -> str:
    """The model an OpenAI-compatible answer names (``http_response.model``, or a Serve
    deployment's ``model``), "" when the row has none (vLLM and SGLang stages)."""
    response = row.get("http_response")
    name = response.get("model") if isinstance(response, dict) else row.get("model") if "choices" in row else None
    return name if isinstance(name, str) else ""


def token_counts(row: dict[str, Any]) -> dict[str, int]:
    """Tokens of one processed row: the engine's counts (vLLM, SGLang, Serve), or an
    OpenAI-compatible endpoint's ``usage`` (HTTP processor)."""
    usage = row.get("http_response", {}).get("usage") if isinstance(row.get("http_response"), dict) else None
    if usage is None and isinstance(row.get("usage"), dict):  # a Serve LLM deployment's OpenAI response
        usage = row["usage"]
    if row.get("num_input_tokens") is None and isinstance(usage, dict):
        return {IN_TOKENS: int(usage.get("prompt_tokens") or 0), OUT_TOKENS: int(usage.get("completion_tokens") or 0)}
    return {IN_TOKENS: int(row.get("num_input_tokens") or 0), OUT_TOKENS: int(row.get("num_generated_tokens") or 0)}


def ray_error_of(row: dict[str, Any]) -> str:
    """The ray.data.llm stages' verdict on a row: "" for a good row, else why it failed."""
    value = row.get(RAY_ERROR, "")
    if value != "":  # Ray's own test, so the provider and the stages never disagree
        return str(value) if value is not None else NO_MESSAGE
    return ""


def error_of(row: dict[str, Any]) -> str:
    """Why a row failed ("" for a good row): a stage's error, else the postprocess's."""
    return ray_error_of(row) or str(row.get(ERROR) or "")


def is_error(row: dict[str, Any]) -> bool:
    return error_of(row) != ""


class ToErrorRecord:
    """An error row in the error output's fixed schema (:func:`error_schema`)."""

    def __init__(self, columns: list[str]):
        self.columns = columns

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        error = error_of(row)
        stage, _, message = error.partition(": ") if error.split(":", 1)[0] in ("preprocess", "postprocess") else (
            "inference", "", error
        )  # fmt: skip
        original = row.get(ROW_JSON) or row_json(row, self.columns)
        answered = stage == "postprocess" and row.get(MODEL_OUTPUT) is not None
        prompt = row.get(PROMPT) if stage == "postprocess" else prompt_of(row) if stage == "inference" else None
        return {
            "row_id": str(row.get(ROW_ID, "")), "stage": stage, "error": message, "row": original, "prompt": prompt,
            "model_output": row.get(MODEL_OUTPUT) if answered else None,
            "input_tokens": int(row.get(IN_TOKENS) or 0) if answered else None,
            "output_tokens": int(row.get(OUT_TOKENS) or 0) if answered else None,
        }  # fmt: skip
