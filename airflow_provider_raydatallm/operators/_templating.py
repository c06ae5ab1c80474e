"""Which parts of processor_config Jinja renders: all values but free text that is itself a
template. A vLLM ``chat_template`` is Jinja for the tokenizer (``{% for message in messages
%}``); rendering it with Airflow's context would fail (``'messages' is undefined``) or,
worse, silently change it.
"""

from __future__ import annotations

from typing import Any

# Keys (at any depth of processor_config) whose string values are passed through untouched.
NOT_RENDERED = frozenset({"chat_template", "prompt_template", "jinja_template", "response_format_template"})
_TOKEN = "__raydllm_not_rendered_{}__"


def hold(value: Any, held: list[Any]) -> Any:
    """``value`` with every NOT_RENDERED string replaced by a token Jinja leaves alone."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in NOT_RENDERED and isinstance(item, str):
                held.append(item)
                out[key] = _TOKEN.format(len(held) - 1)
            else:
                out[key] = hold(item, held)
        return out
    if isinstance(value, (list, tuple)):
        return type(value)(hold(v, held) for v in value)
    return value


def restore(value: Any, held: list[Any]) -> Any:
    """Put back what :func:`hold` took out."""
    if isinstance(value, dict):
        return {k: restore(v, held) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(restore(v, held) for v in value)
    if isinstance(value, str) and value.startswith("__raydllm_not_rendered_") and value.endswith("__"):
        return held[int(value[len("__raydllm_not_rendered_") : -2])]
    return value
