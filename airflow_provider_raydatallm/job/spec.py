"""The job spec: the one contract between the operator (Airflow side) and the job (cluster side).

Pure pydantic, importable on both sides without Ray. The operator builds and validates a
``JobSpec``, ships it as JSON; the job validates it again before touching any data.
Bump ``SPEC_VERSION`` on any change a job of the previous version could misread.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SPEC_VERSION = 1
# With should_continue_on_error, a run fails (and commits nothing; its error rows are kept for
# reading in the error output's work area) when more than this share
# of its rows failed: a tenth of the rows failing says something is wrong with the input, the
# prompt or the model, not with a few odd rows.
DEFAULT_MAX_ERROR_RATIO = 0.1
# Beside spec.json in the shipped spec package: secret values the spec refers to by name.
SECRETS_FILE = "secrets.json"

InputFormat = Literal["csv", "parquet", "json", "jsonl"]
OutputFormat = Literal["parquet", "jsonl", "csv"]

# The ray.data.llm processor configs a spec may name, with the field that must be set.
PROCESSOR_TYPES: dict[str, str | None] = {
    "vLLMEngineProcessorConfig": "model_source",
    "SGLangEngineProcessorConfig": "model_source",
    "HttpRequestProcessorConfig": "url",
    "ServeDeploymentProcessorConfig": "deployment_name",
}
_EXTENSIONS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "json"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Model):
    """Where the rows come from. ``uris`` are read with Ray Data (local, s3://, gs://, https://)."""

    uris: list[str] = Field(min_length=1)
    format: InputFormat
    columns: list[str] | None = None
    limit: int | None = Field(default=None, gt=0)
    num_partitions: int | None = Field(default=None, gt=0)
    id_column: str | None = None

    @field_validator("uris")
    @classmethod
    def _non_empty(cls, uris: list[str]) -> list[str]:
        if any(not u or not u.strip() for u in uris):
            raise ValueError("input URIs must be non-empty strings")
        return uris


class SecretRef(_Model):
    """A secret by reference: ``env``, an environment variable the Ray nodes already have
    (e.g. from a Kubernetes Secret; Airflow never sees it), or ``shipped``, an entry of the
    spec package's secrets file. The value used is ``prefix + value`` (``"Bearer "``)."""

    source: Literal["env", "shipped"]
    name: str = Field(min_length=1)
    prefix: str = ""


TableFormat = Literal["iceberg", "delta"]
# Partition columns and their values are names a table format and a file path both take.
_PARTITION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class TableSpec(_Model):
    """A table output (``job/tables.py``): an Iceberg table in a catalog, or a Delta table at a
    path. ``partition`` is the run's slice (column -> value, strings): the run's rows carry
    these values and its commit replaces exactly the rows that have them."""

    format: TableFormat
    # Iceberg: "namespace.table" in the catalog; Delta: the table's URI (local path, s3://, gs://).
    identifier: str = Field(min_length=1)
    partition: dict[str, str] = Field(default_factory=dict)
    # Declared column types (Arrow type names, e.g. {"label": "string", "score": "double"}):
    # checked against an existing table before inference, and the rows are cast to them.
    columns: dict[str, str] | None = None
    # Iceberg: the catalog's name and properties (a shipped secret: a JSON object, since
    # catalog properties hold credentials); ``label``, what may be shown (no secrets).
    catalog_name: str = "default"
    catalog: SecretRef | None = None
    catalog_uri: str = ""  # the catalog's URI without credentials (lineage, the UI)
    # Delta: storage options (not secret), and secret ones (a shipped JSON object).
    storage_options: dict[str, str] = Field(default_factory=dict)
    secret_options: SecretRef | None = None
    label: str = ""

    @field_validator("partition")
    @classmethod
    def _plain_partition(cls, partition: dict[str, str]) -> dict[str, str]:
        for column, value in partition.items():
            if not _PARTITION_NAME.fullmatch(column):
                raise ValueError(f"partition column {column!r} is not a plain column name (letters, digits, _)")
            if not isinstance(value, str) or not value or "\n" in value or "'" in value:
                raise ValueError(
                    f"partition value {value!r} of column {column!r} must be a non-empty one-line string "
                    "without quotes (a rendered template such as '{{ ds }}')"
                )
        return partition

    @model_validator(mode="after")
    def _identifier_form(self) -> TableSpec:
        if self.format == "iceberg" and not re.fullmatch(r"[\w-]+(\.[\w-]+)+", self.identifier):
            raise ValueError(f"Iceberg table {self.identifier!r} is not 'namespace.table'")
        return self

    def slice_key(self) -> str:
        """The slice as a path: ``day=2026-12-01/part=3``, ``_all`` for the whole table."""
        from urllib.parse import quote

        return "/".join(f"{c}={quote(v, safe='')}" for c, v in sorted(self.partition.items())) or "_all"

    def display(self) -> str:
        """The table as people read it: ``iceberg:ns.table`` or ``delta:<uri>``, and the slice."""
        where = f"{self.format}:{self.identifier}"
        return f"{where} ({', '.join(f'{c}={v}' for c, v in self.partition.items())})" if self.partition else where


class OutputSpec(_Model):
    """Where results go. ``uri`` is a directory; errors go to ``error_uri``. ``overwrite``
    lets a commit delete files in them that this provider did not write.

    With ``table`` the rows are committed to that table, and ``uri`` is the work directory
    where they wait for the commit (one per table slice; the cluster side derives it from
    the table's location when it is empty). ``error_table`` commits the error rows to a
    table too (same slice); otherwise they go to the ``error_uri`` directory."""

    uri: str = ""
    format: OutputFormat = "parquet"
    error_uri: str = ""
    overwrite: bool = False
    table: TableSpec | None = None
    error_table: TableSpec | None = None

    @model_validator(mode="after")
    def _default_error_uri(self) -> OutputSpec:
        if self.table is None and self.error_table is not None:
            raise ValueError("error_table needs a table output (output_table)")
        if self.table is not None and self.format != "parquet":
            raise ValueError(f"a table output is written as Parquet, not {self.format!r}")
        if self.error_table is not None and self.table is not None:
            if self.error_table.format != self.table.format:
                raise ValueError("error_table must be of the output table's format")
            if normalize_uri(self.error_table.identifier) == normalize_uri(self.table.identifier):
                raise ValueError(f"error_table {self.error_table.identifier!r} is the output table: give failed rows "
                                 "their own table")  # fmt: skip
        if not self.uri:
            if self.table is None:
                raise ValueError("output_uri or output_table is required")
            return self  # the work directory is found on the cluster (job/tables.py)
        if not self.error_uri:
            # Under a "_" name: Parquet readers skip it when reading the output directory.
            object.__setattr__(self, "error_uri", self.uri.rstrip("/") + "/_errors")
        out, err = normalize_uri(self.uri), normalize_uri(self.error_uri)
        if err == out:
            raise ValueError(f"error_output_uri {self.error_uri!r} is output_uri: give failed rows their own directory")
        if is_inside(out, err):
            raise ValueError(
                f"error_output_uri {self.error_uri!r} contains output_uri {self.uri!r}: committing the errors "
                "would replace the output"
            )
        return self


class ProcessorSpec(_Model):
    """A ``ray.data.llm`` processor config by type name and keyword arguments."""

    type: str
    kwargs: dict[str, Any]
    # Header name -> where its value (an API key) is. Never in the spec, runtime_env or
    # metadata: any Jobs API client reads those back.
    secret_headers: dict[str, SecretRef] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_type(self) -> ProcessorSpec:
        if self.type not in PROCESSOR_TYPES:
            raise ValueError(
                f"processor type {self.type!r} is not one of {sorted(PROCESSOR_TYPES)}"
            )
        required = PROCESSOR_TYPES[self.type]
        if required and not self.kwargs.get(required):
            raise ValueError(f"{self.type} needs {required!r}" + (" (or http_conn_id)" if required == "url" else ""))
        return self


class CallableSpec(_Model):
    """A user function: an import path (``pkg.mod:func``) or a cloudpickled function."""

    name: str
    import_path: str | None = None
    pickled: str | None = None  # base64 of cloudpickle.dumps(fn)
    python_version: str  # "3.11": pickles only load on the same minor version
    cloudpickle_version: str | None = None
    # What the user wrote, the same in every process (fingerprint.py): the job's identity
    # counts this, not the pickled bytes. None: it could not be rendered; the bytes count.
    fingerprint: str | None = None

    @model_validator(mode="after")
    def _one_form(self) -> CallableSpec:
        if (self.import_path is None) == (self.pickled is None):
            raise ValueError(f"callable {self.name!r} needs exactly one of import_path or pickled")
        if self.import_path is not None and not re.fullmatch(r"[\w.]+:[\w.]+", self.import_path):
            raise ValueError(f"callable {self.name!r}: {self.import_path!r} is not 'package.module:function'")
        return self


class RunIdentity(_Model):
    """Which Airflow task try the job belongs to (for logs, metadata, error messages, and
    the owner recorded in the outputs it commits: namespace, dag, task, map index)."""

    # The Airflow deployment: two deployments sharing a Ray cluster never touch each
    # other's jobs or outputs.
    namespace: str = ""
    dag_id: str = ""
    task_id: str = ""
    run_id: str = ""
    map_index: int = -1
    try_number: int = 0
    submission_id: str = ""
    # Resumable runs (job/resume.py): the tries of one task instance since it was last
    # cleared, with the same spec, share this key; empty: every attempt starts from zero.
    resume_key: str = ""
    # Another try will follow if this one fails: keep the rows it wrote for that try.
    keep_progress: bool = False


class JobSpec(_Model):
    """Everything the cluster-side job needs to run one batch."""

    spec_version: int = SPEC_VERSION
    run: RunIdentity = RunIdentity()
    input: InputSpec
    output: OutputSpec
    processor: ProcessorSpec
    preprocess: CallableSpec | None = None
    postprocess: CallableSpec | None = None
    should_continue_on_error: bool = False
    max_error_ratio: float = Field(default=DEFAULT_MAX_ERROR_RATIO, ge=0, le=1)

    @model_validator(mode="after")
    def _output_apart_from_input(self) -> JobSpec:
        tables = [("output_table", t.identifier) for t in (self.output.table, self.output.error_table)
                  if t is not None and t.format == "delta"]  # fmt: skip
        for name, uri in [("output_uri", self.output.uri), ("error_output_uri", self.output.error_uri), *tables]:
            if not uri:
                continue
            target = normalize_uri(uri)
            for source in self.input.uris:
                src = normalize_uri(source)
                if target == src or is_inside(target, src) or is_inside(src, target):
                    relation = "is" if target == src else ("is inside" if is_inside(target, src) else "contains")
                    raise ValueError(
                        f"{name} {uri!r} {relation} input_uri {source!r}: a commit replaces its directory, "
                        "which would delete the input. Write the output somewhere else."
                    )
        return self

    @field_validator("spec_version")
    @classmethod
    def _supported(cls, version: int) -> int:
        if version != SPEC_VERSION:
            raise ValueError(
                f"job spec version {version} is not supported by this job (it reads version "
                f"{SPEC_VERSION}): install the same airflow-provider-raydatallm on both sides"
            )
        return version


_SECRET_KEY = re.compile(r"secret|password|passwd|token|credential|key|authorization|auth", re.I)


def secret_property_values(props: dict[str, Any]) -> list[str]:
    """The secret values of a dict of properties (catalog properties, storage options): the
    values of keys that name a secret (``credential``, ``token``, ``*_KEY``, ``*password*``
    ...) and the password in any ``scheme://user:password@host`` value. The Airflow side
    masks them in the task log; the cluster side scrubs them from catalog errors."""
    from urllib.parse import urlsplit

    found = []
    for key, value in props.items():
        if not isinstance(value, str) or not value:
            continue
        if _SECRET_KEY.search(str(key)):
            found.append(value)
        elif "://" in value and "@" in value:
            try:
                password = urlsplit(value).password
            except ValueError:  # not a URL after all: the whole value may be one
                password = value
            if password:
                found.append(password)
    return found


def infer_input_format(uris: list[str]) -> InputFormat:
    """The format implied by the URIs' extension, e.g. ``posts.csv`` -> ``csv``."""
    found = set()
    for uri in uris:
        path = uri.split("?", 1)[0].lower()
        for ext, fmt in _EXTENSIONS.items():
            if path.endswith(ext) or path.endswith(ext + ".gz"):
                found.add(fmt)
                break
    if len(found) != 1:
        raise ValueError(
            f"cannot infer the input format from {uris!r}: pass input_format "
            "(csv, parquet, json or jsonl)"
        )
    return found.pop()


def normalize_uri(uri: str) -> str:
    """A URI in one spelling, for every comparison and for the job's own paths: ``file://``
    and ``local://`` dropped, ``.``, ``..`` and ``//`` resolved, no trailing slash
    (``./out/``, ``out`` and, on the cluster, ``file:///<cwd>/out`` are one place)."""
    scheme, rest = uri.split("://", 1) if "://" in uri else ("", uri)
    scheme = scheme.lower()
    if scheme in ("file", "local"):
        scheme = ""
    rest = posixpath.normpath(rest) if rest else rest
    if rest.startswith("//") and not scheme:
        rest = "/" + rest.lstrip("/")
    return f"{scheme}://{rest}" if scheme else rest


def is_inside(path: str, parent: str) -> bool:
    """``path`` lies strictly under ``parent`` (both normalized)."""
    return path.startswith(parent.rstrip("/") + "/")
