"""A DAG whose callables read what users put at module level: a set, a frozenset, a dict
built from a set, an Enum, a dataclass, functools.partial, lambdas, closures and a helper
module beside the file. tests/unit/test_fault_identity.py imports it, as Airflow does, in
processes with different hash seeds: the spec hash of every task must come out the same.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
from typing import Any

from airflow.sdk import DAG

from airflow_provider_raydatallm.operators import RayLLMBatchOperator
from identity import identity_helpers as helpers  # beside this file; the DAG folder is on sys.path

LABELS = {"positive", "negative", "neutral", "mixed", "unclear"}
STOPWORDS = frozenset({"the", "a", "an", "and", "or", "of", "to"})
# Insertion order follows the set's iteration order, so the hash seed.
WEIGHTS = {label: len(label) for label in LABELS}


class Tone(enum.Enum):
    FORMAL = "formal"
    CASUAL = "casual"


@dataclasses.dataclass(frozen=True)
class Style:
    tone: Tone
    max_words: int
    banned: frozenset[str] = frozenset({"lol", "omg", "btw"})


STYLE = Style(Tone.FORMAL, max_words=40)
PROMPT = functools.partial(helpers.instruction, "Classify the post", labels=LABELS)


def make_cleaner(words: frozenset[str]):
    def clean(text: str) -> str:
        return " ".join(w for w in text.split() if w.lower() not in words)

    return clean


CLEAN = make_cleaner(STOPWORDS)


def make_postprocess(threshold: int):
    def postprocess(row: dict[str, Any]) -> dict[str, Any]:
        label = row["generated_text"].strip().lower()
        return {"id": row["id"], "label": label, "heavy": WEIGHTS.get(label, 0) >= threshold}

    return postprocess


def preprocess(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": PROMPT(style=STYLE)},
            {"role": "user", "content": CLEAN(row["text"])},
        ],
        "sampling_params": {"temperature": 0.0, "max_tokens": STYLE.max_words},
    }


def postprocess(row: dict[str, Any]) -> dict[str, Any]:
    label = row["generated_text"].strip().lower()
    return {
        "id": row["id"],
        "label": label if label in LABELS else "unclear",
        "weight": WEIGHTS.get(label, 0),
        "tone": Tone.FORMAL.value,
        "banned": any(word in row["generated_text"] for word in STYLE.banned),
    }


CONFIG = {"type": "vLLMEngineProcessorConfig", "model_source": "/models/smol", "concurrency": 1}

with DAG("identity_probe", schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)) as dag:
    common: dict[str, Any] = {"processor_config": CONFIG, "input_uri": "/data/posts/2026-11-30.jsonl"}
    RayLLMBatchOperator(
        task_id="functions",
        preprocess=preprocess,
        postprocess=postprocess,
        output_uri="/data/out/functions",
        **common,
    )
    RayLLMBatchOperator(
        task_id="lambdas",
        preprocess=lambda row: {"messages": [{"role": "user", "content": f"{sorted(LABELS)} {row['text']}"}]},
        postprocess=lambda row, keep=frozenset({"id", "generated_text"}): {k: row[k] for k in keep},
        output_uri="/data/out/lambdas",
        **common,
    )
    RayLLMBatchOperator(
        task_id="partials",
        preprocess=functools.partial(helpers.build_request, labels=LABELS, style=STYLE),
        postprocess=helpers.parse_label,
        output_uri="/data/out/partials",
        **common,
    )
    RayLLMBatchOperator(
        task_id="closures",
        preprocess=helpers.make_preprocess(STOPWORDS),
        postprocess=make_postprocess(threshold=7),
        output_uri="/data/out/closures",
        **common,
    )
