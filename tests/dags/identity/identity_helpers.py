"""Helpers beside identity_dag.py, as a user keeps prompts and parsers next to a DAG: the
cluster cannot import this module, so it travels by value with the functions that use it."""

from __future__ import annotations

from typing import Any

SYSTEM_PROMPT = "You label the sentiment of one social media post."
ALIASES = {"pos": "positive", "neg": "negative", "neu": "neutral"}


def instruction(task: str, *, labels: set[str], style: Any) -> str:
    return (
        f"{SYSTEM_PROMPT} {task}: answer with one of {', '.join(sorted(labels))}, "
        f"in a {style.tone.value} tone, in at most {style.max_words} words."
    )


def build_request(row: dict[str, Any], *, labels: set[str], style: Any) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": instruction("Classify the post", labels=labels, style=style)},
            {"role": "user", "content": row["text"]},
        ],
        "sampling_params": {"temperature": 0.0, "max_tokens": style.max_words},
    }


def parse_label(row: dict[str, Any]) -> dict[str, Any]:
    answer = row["generated_text"].strip().lower()
    return {"id": row["id"], "label": ALIASES.get(answer, answer)}


def make_preprocess(stopwords: frozenset[str]):
    """A closure over the words to drop, as a factory in a helper module builds one."""

    def preprocess(row: dict[str, Any]) -> dict[str, Any]:
        kept = [w for w in row["text"].split() if w.lower() not in stopwords]
        return {"messages": [{"role": "user", "content": " ".join(kept)}]}

    return preprocess
