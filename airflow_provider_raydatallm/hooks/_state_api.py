"""What a job is waiting for, from the dashboard's state API (``/api/v0/...``).

A job whose actors ask for resources no node has (``accelerator_type="L4"`` on a cluster
without L4s) stays RUNNING with no error: Ray keeps the actors PENDING_CREATION and logs
"No available node types can fulfill resource request" now and then. These helpers name
such demands so the task can say so, and stop the job after ``pending_timeout``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

ACTORS_PATH = "/api/v0/actors"
PLACEMENT_GROUPS_PATH = "/api/v0/placement_groups"
NODES_PATH = "/api/v0/nodes"
LIMIT = 10000


def actors_query(job_hex_id: str) -> dict[str, Any]:
    return {"detail": "true", "limit": LIMIT, "filter_keys": ["job_id", "state"], "filter_predicates": ["=", "="],
            "filter_values": [job_hex_id, "PENDING_CREATION"]}  # fmt: skip


def pending_groups_query() -> dict[str, Any]:
    return {"detail": "true", "limit": LIMIT, "filter_keys": "state", "filter_predicates": "=", "filter_values": "PENDING"}


def nodes_query() -> dict[str, Any]:
    return {"detail": "true", "limit": LIMIT, "filter_keys": "state", "filter_predicates": "=", "filter_values": "ALIVE"}


def rows_of(body: Any) -> list[dict[str, Any]]:
    """The list in a state API answer: ``{"data": {"result": {"result": [...]}}}``."""
    data = (body or {}).get("data") or {}
    result = data.get("result") or {}
    rows = result.get("result") if isinstance(result, dict) else result
    return list(rows or [])


def _fmt_amount(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class Demand:
    """Resources asked for by ``count`` pending actors or bundles of one job."""

    resources: tuple[tuple[str, float], ...]
    count: int
    missing: tuple[str, ...]  # resources no alive node has enough of, even when idle

    @property
    def placeable(self) -> bool:
        return not self.missing

    def describe(self) -> str:
        shape = "{" + ", ".join(f"'{k}': {_fmt_amount(v)}" for k, v in self.resources) + "}"
        why = f"no node has {', '.join(self.missing)}" if self.missing else "waiting for busy nodes"
        return f"{shape} x{self.count} pending: {why}"


def _missing(resources: Mapping[str, float], nodes: list[Mapping[str, float]]) -> tuple[str, ...]:
    """Resources of one demand that no single node could ever give it."""
    if any(all(node.get(k, 0) >= v for k, v in resources.items()) for node in nodes):
        return ()
    absent = [k for k, v in resources.items() if not any(node.get(k, 0) >= v for node in nodes)]
    return tuple(absent) or ("a node with all of it at once",)


def demands(
    job_hex_id: str, actors: Iterable[Mapping[str, Any]], groups: Iterable[Mapping[str, Any]],
    nodes: Iterable[Mapping[str, Any]],
) -> list[Demand]:  # fmt: skip
    """The job's pending demands, grouped by shape, each with what no node has."""
    totals = [dict(n.get("resources_total") or {}) for n in nodes]
    shapes: dict[tuple[tuple[str, float], ...], int] = {}
    for actor in actors:
        if actor.get("job_id") == job_hex_id and actor.get("state") == "PENDING_CREATION":
            wanted = {k: float(v) for k, v in (actor.get("required_resources") or {}).items() if v}
            if wanted and not actor.get("placement_group_id"):
                key = tuple(sorted(wanted.items()))
                shapes[key] = shapes.get(key, 0) + 1
    for group in groups:
        if group.get("creator_job_id") == job_hex_id and group.get("state") == "PENDING":
            for bundle in group.get("bundles") or []:
                wanted = {k: float(v) for k, v in (bundle.get("unit_resources") or {}).items() if v}
                if wanted:
                    key = tuple(sorted(wanted.items()))
                    shapes[key] = shapes.get(key, 0) + 1
    return [Demand(key, count, _missing(dict(key), totals)) for key, count in sorted(shapes.items())]
