"""The seed's industry pipeline (seed 003) against an OpenAI-compatible endpoint: the same
functions for the provider's job and for the hand-written Ray Data pipeline."""

from __future__ import annotations

from typing import Any

CHOICES = ["Law Firm", "Healthcare", "Technology", "Retail", "Consulting", "Manufacturing", "Finance",
           "Real Estate", "Other"]  # fmt: skip
SYSTEM = ("You are a helpful assistant that infers company industries. Based on the company name provided, "
          f"output only the industry category. Choose from: {', '.join(CHOICES)}.")  # fmt: skip


def preprocess(row: dict[str, Any]) -> dict[str, Any]:
    return {"payload": {"model": "standin", "temperature": 0, "max_tokens": 16, "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"What industry is this company in: {row['Company']}"}]}}  # fmt: skip


def postprocess(row: dict[str, Any]) -> dict[str, Any]:
    return {"inferred_industry": row["http_response"]["choices"][0]["message"]["content"],
            **{k: v for k, v in row.items() if k not in ("http_response", "payload")}}  # fmt: skip


def http_config(url: str, concurrency: int = 2, batch_size: int = 256) -> dict[str, Any]:
    return {"type": "HttpRequestProcessorConfig", "url": url, "batch_size": batch_size,
            "concurrency": concurrency, "max_retries": 0}  # fmt: skip
