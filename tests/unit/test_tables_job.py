"""The cluster side's table helpers that need no table: type names, the schema a run's rows
are written with, casting into an existing table's types, partition values, and errors that
never quote a catalog's secrets."""

from __future__ import annotations

import pyarrow as pa
import pytest

from airflow_provider_raydatallm.job import tables
from airflow_provider_raydatallm.job.spec import TableSpec

ICEBERG = TableSpec(format="iceberg", identifier="a.t", partition={"day": "2026-12-01"})


@pytest.mark.parametrize(
    ("name", "expected"),
    [("string", pa.string()), ("int", pa.int64()), ("double", pa.float64()), ("date", pa.date32()),
     ("decimal(10, 2)", pa.decimal128(10, 2)), ("timestamp[us, tz=UTC]", pa.timestamp("us", tz="UTC")),
     ("timestamp[ms]", pa.timestamp("ms")), ("bool", pa.bool_())],
)  # fmt: skip
def test_declared_type_names(name, expected):
    assert tables.arrow_type(name) == expected


def test_an_unknown_declared_type_is_named():
    table = ICEBERG.model_copy(update={"columns": {"score": "float128"}})
    with pytest.raises(tables.TableOutputError, match="'score' has type 'float128', not a type name"):
        tables.declared_schema(table)


def test_the_commit_schema_keeps_the_tables_types_and_normalizes_new_columns():
    existing = pa.schema([("id", pa.int64()), ("score", pa.float64()), ("day", pa.date32())])
    staged = pa.schema([("id", pa.int32()), ("score", pa.int64()), ("note", pa.null()),
                        ("at", pa.timestamp("ns", tz="Europe/Paris"))])  # fmt: skip
    schema = tables.commit_schema(ICEBERG, existing, staged)
    assert schema == pa.schema([("id", pa.int64()), ("score", pa.float64()), ("note", pa.string()),
                                ("at", pa.timestamp("us", tz="UTC")), ("day", pa.date32())])  # fmt: skip
    assert tables.partition_value(ICEBERG, "day", pa.date32()).as_py().isoformat() == "2026-12-01"
    with pytest.raises(tables.TableOutputError, match="column 'id' is string but iceberg:a.t .* has it as int64"):
        tables.commit_schema(ICEBERG, existing, pa.schema([("id", pa.string())]))
    with pytest.raises(tables.TableOutputError, match="partition value '2026-12-01' of column 'day' does not convert"):
        tables.partition_value(ICEBERG, "day", pa.int32())


def test_staged_rows_are_cast_to_the_commit_schema(tmp_path):
    import datetime as dt

    import pyarrow.parquet as pq

    path = tmp_path / "block.parquet"
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int32()), "score": [1, 2], "note": pa.nulls(2)}), path)
    schema = pa.schema([("id", pa.int64()), ("score", pa.float64()), ("note", pa.string()), ("day", pa.date32())])
    rows = tables.slice_rows(ICEBERG, str(path), schema)
    assert rows.schema == schema
    assert rows.to_pylist() == [{"id": 1, "score": 1.0, "note": None, "day": dt.date(2026, 12, 1)},
                                {"id": 2, "score": 2.0, "note": None, "day": dt.date(2026, 12, 1)}]  # fmt: skip
    pq.write_table(pa.table({"row_id": ["r7"], "day": ["2026-11-30"]}), path)
    with pytest.raises(tables.TableOutputError, match="row r7: the postprocess set partition column 'day' to '2026-11-30'"):
        tables.slice_rows(ICEBERG, str(path), schema)


def test_catalog_errors_never_quote_its_secrets():
    props = {"type": "sql", "uri": "postgresql://cat:pa55-word@db/iceberg", "credential": "id:topsecret"}
    text = "could not connect to postgresql://cat:pa55-word@db/iceberg with id:topsecret"
    assert tables.scrub(text, props) == "could not connect to postgresql://cat:***@db/iceberg with ***"


def test_a_slice_holding_rows_of_another_writer_or_task_is_refused():
    me = {"namespace": "prod", "dag_id": "d", "task_id": "t", "map_index": 0}
    other = {**me, "task_id": "u"}
    ok = tables.Record(me, 3, "snapshot 1")
    tables.check_slice_owned(ICEBERG, ok, 3, me, False)
    tables.check_slice_owned(ICEBERG, None, 0, me, False)  # an empty slice is anyone's
    tables.check_slice_owned(ICEBERG, None, 3, me, False, known_owner=True)  # records expired, the work dir knows
    for record, rows, said in ((None, 3, "holds 3 rows that this provider did not commit"),
                               (tables.Record(other, 3, "snapshot 2"), 3, "committed by task d.u"),
                               (ok, 4, r"holds 4 rows, but this task's last commit \(snapshot 1\) wrote 3")):  # fmt: skip
        with pytest.raises(tables.TableOutputError, match=said):
            tables.check_slice_owned(ICEBERG, record, rows, me, False)
        tables.check_slice_owned(ICEBERG, record, rows, me, True)  # overwrite=True takes it over
