"""What the commit writes about an output: the manifest (``_SUCCESS``) and the intent of a
commit in progress (``_raydllm/commit-<id>.json``). Plain JSON, readable without this package."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MANIFEST_KIND = "airflow-provider-raydatallm/manifest"
MANIFEST_VERSION = 2


@dataclass
class Manifest:
    """What ``_SUCCESS`` says: which files make the committed version, and which task made it."""

    files: list[str] = field(default_factory=list)  # relative to the directory
    submission_id: str = ""
    run: dict[str, Any] = field(default_factory=dict)
    rows: int = 0
    committed_at: float = 0.0
    commit_id: str = ""
    owner: dict[str, Any] | None = None  # None: written before owners were recorded
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        body = {  # extra first: the manifest's own fields always win
            **self.extra,
            "kind": MANIFEST_KIND, "version": MANIFEST_VERSION, "commit_id": self.commit_id, "owner": self.owner,
            "files": sorted(self.files), "submission_id": self.submission_id, "run": self.run, "rows": self.rows,
            "committed_at": self.committed_at,
        }  # fmt: skip
        return json.dumps(body, indent=2, default=str).encode()

    @classmethod
    def parse(cls, data: bytes) -> Manifest | None:
        """The manifest in ``data``, or None when it is not one of ours (e.g. Spark's empty _SUCCESS)."""
        try:
            body = json.loads(data or b"null")
        except ValueError:
            return None
        if not isinstance(body, dict) or body.get("kind") != MANIFEST_KIND:
            return None
        known = {"kind", "version", "files", "submission_id", "run", "rows", "committed_at", "commit_id", "owner"}
        return cls(
            files=list(body.get("files") or []),
            submission_id=body.get("submission_id", ""),
            run=body.get("run") or {},
            rows=int(body.get("rows") or 0),
            committed_at=float(body.get("committed_at") or 0),
            commit_id=str(body.get("commit_id") or ""),
            owner=body.get("owner"),
            extra={k: v for k, v in body.items() if k not in known},
        )


@dataclass
class Intent:
    """A commit in progress, written before its first file operation."""

    commit_id: str
    add: dict[str, str]  # staged path -> committed name (relative to the directory)
    remove: list[str]  # relative names removed once the manifest names the new version
    owner: dict[str, Any] = field(default_factory=dict)  # the task committing

    def to_json(self) -> bytes:
        body = {"commit_id": self.commit_id, "owner": self.owner, "add": self.add, "remove": sorted(self.remove)}
        return json.dumps(body).encode()

    @classmethod
    def parse(cls, data: bytes) -> Intent:
        body = json.loads(data)
        return cls(
            commit_id=str(body["commit_id"]),
            add=dict(body.get("add") or {}),
            remove=list(body.get("remove") or []),
            owner=dict(body.get("owner") or {}),
        )
