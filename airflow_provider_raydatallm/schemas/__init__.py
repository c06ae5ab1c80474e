"""processor_config checked against Ray's own schema, without importing Ray.

``ray_data_llm.json`` holds the JSON Schemas of ``ray.data.llm``'s processor configs for
the Ray version the project pins (``scripts/export_processor_schemas.py`` writes it; a test
fails when it drifts from the installed Ray). On top of Ray's types the provider checks
the bounds Ray leaves to run time (``batch_size >= 1``, ``concurrency``).
"""

from __future__ import annotations

import difflib
import json
from functools import lru_cache
from importlib.resources import files
from typing import Any

SCHEMA_FILE = "ray_data_llm.json"


@lru_cache(maxsize=1)
def _shipped() -> dict[str, Any]:
    return json.loads(files(__package__).joinpath(SCHEMA_FILE).read_text())


def ray_version() -> str:
    return _shipped()["ray_version"]


def known_types() -> list[str]:
    return sorted(_shipped()["configs"])


def fields(type_name: str) -> dict[str, Any]:
    return _shipped()["configs"][type_name]["properties"]


def _where(path: Any) -> str:
    return "processor_config" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _bounds(kwargs: dict[str, Any]) -> list[str]:
    problems = []
    size = kwargs.get("batch_size")
    if isinstance(size, int) and not isinstance(size, bool) and size < 1:
        problems.append(f"processor_config.batch_size: must be >= 1, got {size}")
    conc = kwargs.get("concurrency")
    if isinstance(conc, int) and not isinstance(conc, bool) and conc < 1:
        problems.append(f"processor_config.concurrency: must be >= 1 or a range (m, n) with 1 <= m <= n, got {conc}")
    if isinstance(conc, (list, tuple)) and len(conc) == 2 and all(isinstance(c, int) for c in conc):
        low, high = conc
        if not 1 <= low <= high:
            problems.append(f"processor_config.concurrency: a range (m, n) needs 1 <= m <= n, got {tuple(conc)}")
    for name in ("max_retries", "max_concurrent_batches"):
        value = kwargs.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            problems.append(f"processor_config.{name}: must be >= 0, got {value}")
    qps = kwargs.get("qps")
    if isinstance(qps, (int, float)) and not isinstance(qps, bool) and qps <= 0:
        problems.append(f"processor_config.qps: must be > 0, got {qps}")
    return problems


def problems(type_name: str, kwargs: dict[str, Any]) -> list[str]:
    """What is wrong with these keyword arguments for ``type_name`` (empty: nothing)."""
    from jsonschema import Draft202012Validator

    schema = _shipped()["configs"][type_name]
    known = schema["properties"]
    found = []
    for key in kwargs:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f": did you mean {close[0]!r}?" if close else f" (known: {', '.join(sorted(known))})"
            found.append(f"processor_config.{key}: {type_name} has no field {key!r}{hint}")
    # Python tuples (concurrency=(2, 4)) are JSON arrays, as the spec ships them.
    checked = json.loads(json.dumps({k: v for k, v in kwargs.items() if k in known}, default=str))
    validator = Draft202012Validator(schema)
    for error in sorted(validator.iter_errors(checked), key=lambda e: list(e.absolute_path)):
        if error.validator == "additionalProperties":
            continue  # said above, with a suggestion
        message = error.message if len(error.message) <= 200 else error.message[:197] + "..."
        if error.validator == "required":
            found.append(f"processor_config: {type_name} {message}")
        else:
            found.append(f"{_where(error.absolute_path)}: {message}")
    return found + _bounds(kwargs)
