"""The operator's arguments, checked before anything is submitted.

Each error names the task, the argument and the value: ``task classify: poll_interval=-1:
must be a number > 0``. Arguments that are never templated are checked when the operator is
built (so a DAG with them fails to parse, visibly, in the UI); templated ones once rendered.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from airflow_provider_raydatallm.exceptions import RayLLMConfigError

# Schemes the cluster side reads and writes (fsspec / pyarrow); a bare path is a local path.
SCHEMES = frozenset({"file", "local", "s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "hdfs", "http", "https"})
INPUT_FORMATS = ("csv", "parquet", "json", "jsonl")
OUTPUT_FORMATS = ("parquet", "jsonl", "csv")
_IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.S)


class ArgumentChecker:
    """Collects nothing: the first bad argument raises, naming the task."""

    def __init__(self, task_id: str):
        self.task_id = task_id

    def fail(self, name: str, value: Any, why: str) -> None:
        shown = repr(value) if len(repr(value)) <= 120 else repr(value)[:117] + "..."
        raise RayLLMConfigError(f"task {self.task_id}: {name}={shown}: {why}")

    # -- kinds of values ---------------------------------------------------------------------

    def number(self, name: str, value: Any, *, minimum: float = 0, inclusive: bool = False, optional: bool = True) -> None:
        if value is None and optional:
            return
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN
        if not ok or value < minimum or (value == minimum and not inclusive):
            self.fail(name, value, f"must be a number {'>=' if inclusive else '>'} {minimum:g}")

    def ratio(self, name: str, value: Any) -> None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
        if not ok:
            self.fail(name, value, "must be a number from 0 to 1")

    def flag(self, name: str, value: Any) -> None:
        if not isinstance(value, bool):
            self.fail(name, value, "must be True or False")

    def log_choice(self, name: str, value: Any) -> None:
        from airflow_provider_raydatallm.relay import LOG_CHOICES

        if not isinstance(value, bool) and value not in LOG_CHOICES:
            self.fail(name, value, f"must be True, False or one of {', '.join(map(repr, LOG_CHOICES))}")

    def name(self, name: str, value: Any, optional: bool = True) -> None:
        if value is None and optional:
            return
        if not isinstance(value, str) or not value.strip():
            self.fail(name, value, "must be a non-empty string")

    def positive_int(self, name: str, value: Any) -> int | None:
        """A templated count: None (unset), an int, or a string of digits once rendered."""
        if value is None or (isinstance(value, str) and value.strip() in ("", "None")):
            return None
        if isinstance(value, bool):
            self.fail(name, value, "must be a positive integer")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if not isinstance(value, int) or value < 1:
            self.fail(name, value, "must be a positive integer")
        return value

    def callable_(self, name: str, value: Any) -> None:
        if value is None or callable(value):
            return
        if isinstance(value, str) and _IMPORT_PATH.fullmatch(value):
            return
        self.fail(name, value, "must be a function or a 'package.module:function' string importable on the cluster")

    def uri(self, name: str, value: Any) -> None:
        if not isinstance(value, str):
            self.fail(name, value, f"must be a URI string, got {type(value).__name__}")
        if not value.strip():
            self.fail(name, value, "is empty (did its template render to nothing?)")
        if value != value.strip():
            self.fail(name, value, "has leading or trailing whitespace")
        if "://" in value:
            scheme = value.split("://", 1)[0].lower()
            if scheme not in SCHEMES:
                self.fail(name, value, f"scheme {scheme!r} is not one of {', '.join(sorted(SCHEMES))}")
        if "{{" in value or "{%" in value:
            self.fail(name, value, "still holds Jinja after rendering (a template inside a template?)")

    def uris(self, name: str, value: Any) -> list[str]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not items:
            self.fail(name, value, "must be a URI string or a non-empty list of them")
        for item in items:
            self.uri(name, item)
        return list(items)

    def choice(self, name: str, value: Any, choices: tuple[str, ...], optional: bool = False) -> None:
        if value is None and optional:
            return
        if value not in choices:
            self.fail(name, value, f"must be one of {', '.join(choices)}")

    def string_list(self, name: str, value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
            self.fail(name, value, "must be a non-empty list of column names")

    def mapping(self, name: str, value: Any, check: Callable[[Any, Any], str] | None = None) -> None:
        if value is None:
            return
        if not isinstance(value, Mapping):
            self.fail(name, value, f"must be a dict, got {type(value).__name__}")
        for key, item in value.items():
            why = check(key, item) if check else ""
            if why:
                self.fail(f"{name}[{key!r}]", item, why)

    def runtime_env(self, value: Any) -> None:
        self.mapping("runtime_env", value)
        if not value:
            return
        env = value.get("env_vars")
        if env is not None:
            self.mapping("runtime_env['env_vars']", env,
                         lambda k, v: "" if isinstance(k, str) and isinstance(v, str) else "names and values must be strings")  # fmt: skip
        for key in ("py_modules", "pip"):
            if key in value and not isinstance(value[key], (list, tuple, Mapping)):
                self.fail(f"runtime_env[{key!r}]", value[key], "must be a list")
        if "working_dir" in value and not isinstance(value["working_dir"], str):
            self.fail("runtime_env['working_dir']", value["working_dir"], "must be a path or URI string")


def _string_value(key: Any, value: Any) -> str:
    return "" if isinstance(key, str) and isinstance(value, str) else "metadata keys and values must be strings"


def _amount(key: Any, value: Any) -> str:
    ok = isinstance(key, str) and isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    return "" if ok else "must map resource names to amounts >= 0"


def check_constructed(op: Any) -> None:
    """The arguments Airflow never renders: checked when the DAG file is parsed."""
    check = ArgumentChecker(op.task_id)
    check.number("poll_interval", op.poll_interval)
    check.number("timeout", op.timeout)
    check.number("pending_timeout", op.pending_timeout)
    check.ratio("max_error_ratio", op.max_error_ratio)
    for flag in ("should_continue_on_error", "overwrite", "deferrable", "wait_for_completion"):
        check.flag(flag, getattr(op, flag))
    check.log_choice("fetch_logs", op.fetch_logs)
    check.callable_("preprocess", op.preprocess)
    check.callable_("postprocess", op.postprocess)
    check.name("ray_conn_id", op.ray_conn_id, optional=False)
    check.name("http_conn_id", op.http_conn_id)
    check.name("id_column", op.id_column)
    check.number("entrypoint_num_cpus", op.entrypoint_num_cpus, inclusive=True)
    check.number("entrypoint_num_gpus", op.entrypoint_num_gpus, inclusive=True)
    check.mapping("entrypoint_resources", op.entrypoint_resources, _amount)
    config = op.processor_config
    if not isinstance(config, (Mapping, str)) and not hasattr(config, "model_dump"):
        check.fail("processor_config", config, "must be a ray.data.llm processor config or a dict with its 'type'")


def check_rendered(op: Any) -> tuple[list[str], int | None, int | None]:
    """The templated arguments, once rendered; returns (input URIs, limit, num_partitions)."""
    check = ArgumentChecker(op.task_id)
    uris = check.uris("input_uri", op.input_uri)
    check.choice("input_format", op.input_format, INPUT_FORMATS, optional=True)
    check.string_list("input_columns", op.input_columns)
    limit = check.positive_int("limit", op.limit)
    partitions = check.positive_int("num_partitions", op.num_partitions)
    if op.output_uri is None and getattr(op, "output_table", None) is None:
        check.fail("output_uri", None, "output_uri or output_table is required")
    elif op.output_uri is not None:  # with output_table: optional (the directory its rows wait in)
        check.uri("output_uri", op.output_uri)
    check.choice("output_format", op.output_format, OUTPUT_FORMATS)
    if op.error_output_uri is not None:
        check.uri("error_output_uri", op.error_output_uri)
    check.runtime_env(op.runtime_env)
    check.mapping("job_metadata", op.job_metadata, _string_value)
    if isinstance(op.processor_config, str):
        check.fail("processor_config", op.processor_config, "rendered to a string; it must be a dict or a config object")
    return uris, limit, partitions


def refuse_shared_mapped_output(op: Any, map_index: int) -> None:
    """A mapped task instance whose ``output_uri`` (or explicit ``error_output_uri``) another
    instance of the same task also gets would replace its sibling's committed files: refuse
    it before anything is submitted, unless ``overwrite=True``.

    Read from the mapped task in the DAG, as written (before rendering): a ``partial()``
    value is every instance's, unless its template names ``map_index`` (``{{ ti.map_index
    }}``) or an expanded argument; an ``expand()`` list is shared when another list makes a
    combination with each of its values, or when it holds the value twice; an
    ``expand_kwargs()`` list of dicts, when two dicts hold the same value. What only an
    upstream task's XCom decides is left to the cluster's pre-flight.
    """
    mapped = _mapped_task(op) if map_index >= 0 and not op.overwrite else None
    if mapped is None:
        return
    for name, what in (("output_uri", "output"), ("error_output_uri", "failed rows")):
        value = getattr(op, name)  # an unset error_output_uri is <output>/_errors: it follows the output
        why = None if value is None else _sharing(mapped, name, map_index, value)
        if why:
            raise RayLLMConfigError(
                f"task {op.task_id}[{map_index}]: {name}={value!r} {why}: each would replace the others' {what}. "
                + _advice(mapped, name)
            )


def _mapped_task(op: Any) -> Any:
    """The DAG's task of this id when it is a mapped operator (it holds ``partial()``'s
    arguments as written and ``expand()``'s input), else None."""
    task = op.dag.task_dict.get(op.task_id) if op.has_dag() else None
    if not isinstance(getattr(task, "partial_kwargs", None), Mapping) or not hasattr(task, "expand_input"):
        return None
    return task


def _sharing(mapped: Any, name: str, map_index: int, value: str) -> str | None:
    """How other instances of the mapped task get this instance's ``name`` too (None: they
    do not, or it cannot be known before they run)."""
    partial = mapped.partial_kwargs.get(name)
    expanded = getattr(mapped.expand_input, "value", None)
    if isinstance(expanded, Mapping) and name in expanded:  # expand(name=[...], ...)
        items, others = expanded[name], [v for k, v in expanded.items() if k != name]
        if not all(map(_literal, [items, *others])) or any(_per_instance(item) for item in items):
            return None
        if math.prod(len(v) for v in others) > 1:
            return "is given to several mapped task instances (expand() makes every combination of its lists)"
        return "appears more than once in expand()" if list(items).count(value) > 1 else None
    if isinstance(expanded, Mapping):  # a partial() value: every instance's
        fixed = isinstance(partial, str) and not _per_instance(partial, expanded)
        return "is the same for every mapped task instance" if fixed and not _one_instance(expanded) else None
    if isinstance(expanded, Sequence) and all(isinstance(each, Mapping) for each in expanded):  # expand_kwargs([...])
        given = [each.get(name, partial) for each in expanded]
        mine = given[map_index] if map_index < len(given) else None
        if not isinstance(mine, str) or _per_instance(mine, expanded[map_index]) or given.count(mine) < 2:
            return None
        return "is the same in more than one expand_kwargs() dict"
    # expand_kwargs() over an upstream's XCom: a partial() value is every instance's (unless a
    # dict with strict=False overrode it, which shows as a literal that did not render to itself)
    fixed = isinstance(partial, str) and not _per_instance(partial) and (partial == value or _JINJA.search(partial))
    return "is the same for every mapped task instance" if fixed else None


def _advice(mapped: Any, name: str) -> str:
    partial = mapped.partial_kwargs.get(name)
    if isinstance(partial, str):  # one value for all, from partial()
        example = partial.rstrip("/") + "/part-{{ ti.map_index }}"
        return f"Put {{{{ ti.map_index }}}} in it (e.g. {example!r}), map over {name} too, or set overwrite=True"
    return (
        f"Give each instance its own {name} (pair it with its input in expand_kwargs(), or put "
        "{{ ti.map_index }} in it), or set overwrite=True"
    )


def _literal(value: Any) -> bool:
    """A list, tuple or dict written in the DAG (an XComArg's length is known only at run time)."""
    return isinstance(value, (list, tuple, dict))


def _one_instance(expanded: Mapping[str, Any]) -> bool:
    """expand() over literal values that make a single task instance."""
    return all(map(_literal, expanded.values())) and math.prod(len(v) for v in expanded.values()) == 1


def _per_instance(raw: Any, expanded: Collection[str] = ()) -> bool:
    """A template that renders differently per instance: it names ``map_index`` or an
    expanded argument (``{{ task.input_uri }}``)."""
    code = " ".join(_JINJA.findall(raw)) if isinstance(raw, str) else ""
    return any(re.search(rf"\b{re.escape(word)}\b", code) for word in ("map_index", *expanded))
