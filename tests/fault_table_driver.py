"""Run one job's claim and table commit (``job/outputs.py`` and ``job/tables.py``, the code
the Ray job runs after its pass), killed with ``os._exit`` at a named point: the fault
injection of tests/integration/test_fault_tables.py, from outside the shipped code.

    python tests/fault_table_driver.py SPEC_JSON SECRETS_JSON VERSION KILL_AT

Stages two blocks of good rows (ids 1-4) and one block of error rows (id 5) whose values
say VERSION, then commits. KILL_AT:

- ``none``: never killed;
- ``staged``: after the rows are staged, before the commit starts;
- ``data-files``: while the table's data files are being written (Iceberg: after the first
  data file; Delta: after delta-rs took the first batch);
- ``before-swap``: (Iceberg) every data file written, just before the catalog commit;
- ``after-swap``: right after the table commit, before the work directory is cleaned.

Exits 0 after a whole commit, 137 when killed.
"""

from __future__ import annotations

import json
import os
import sys


def _kill(point: str) -> None:
    print(f"killed at {point}", flush=True)
    os._exit(137)


def main(spec_json: str, secrets_json: str, version: str, kill_at: str) -> int:
    import pyarrow as pa

    from airflow_provider_raydatallm.job import lock, resume, sink, tables
    from airflow_provider_raydatallm.job.outputs import Outputs
    from airflow_provider_raydatallm.job.spec import JobSpec

    secrets = json.loads(secrets_json)
    spec = tables.with_work_dirs(JobSpec.model_validate_json(spec_json), secrets)
    table = spec.output.table
    if kill_at == "data-files":
        if table.format == "iceberg":
            import pyiceberg.io.pyarrow as ice_io

            original = ice_io._dataframe_to_data_files

            def written(*args, **kwargs):
                for data_file in original(*args, **kwargs):
                    yield data_file
                    _kill("data-files")

            ice_io._dataframe_to_data_files = written
        else:
            original_batches = tables._batches

            def batches(*args, **kwargs):
                for index, batch in enumerate(original_batches(*args, **kwargs)):
                    if index == 1:
                        _kill("data-files")
                    yield batch

            tables._batches = batches
    if kill_at == "before-swap":
        from pyiceberg.table import Transaction

        Transaction.commit_transaction = lambda self: _kill("before-swap")
    if kill_at == "after-swap":
        original_commit = tables.commit

        def commit_then_die(*args, **kwargs):
            original_commit(*args, **kwargs)
            _kill("after-swap")

        tables.commit = commit_then_die

    lock.acquire = lambda *args, **kwargs: []  # the Ray lock: one process at a time writes here
    outputs = Outputs.open(spec, spec.run.submission_id)
    outputs.claim()
    outputs.check_slice(secrets)
    ok = [sink.write_table(pa.table({"id": [i, i + 1], "answer": [version] * 2}), outputs.output.staging_uri,
                           f"block-{i}.parquet", "parquet") for i in (1, 3)]  # fmt: skip
    errors = [sink.write_table(pa.table({"row_id": ["5"], "stage": ["postprocess"], "error": [version]}),
                               outputs.errors.staging_uri, "block-e.parquet", "parquet")]  # fmt: skip
    if kill_at == "staged":
        _kill("staged")
    done = outputs.commit({"ok": ok, "errors": errors}, resume.Progress(), {"ok": 4, "errors": 1}, {}, secrets)
    print(json.dumps(done["table"], default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
