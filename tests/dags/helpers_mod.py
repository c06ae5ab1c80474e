"""A helper module beside the DAG files, imported by one of them: the cluster cannot import
it (it is not installed there), so it travels with the function that uses it."""

from __future__ import annotations

PREFIX = "helper says:"


def build_payload(item: str) -> dict:
    return {"model": "echo", "messages": [{"role": "user", "content": f"{PREFIX} {item}"}]}
