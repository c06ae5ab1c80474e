"""Run with the cluster's Python (.venv-ray): counts each input of argv[1] (a JSON list of
[format, uris, columns, limit]) both ways, in the driver with Ray Data's read tasks and by a
Ray Data pass, and prints one JSON line per input with both results (tests/integration/
test_input_count.py compares them). Starts its own small local Ray instance."""

from __future__ import annotations

import json
import sys

import pyarrow as pa
import ray

from airflow_provider_raydatallm.job import io, run
from airflow_provider_raydatallm.job.spec import InputSpec

ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
for fmt, uris, columns, limit in json.loads(sys.argv[1]):
    ds = io.read_input(InputSpec(uris=uris, format=fmt, columns=columns, limit=limit))
    local = run._local_probes(ds, columns, limit)
    passed = ds.map_batches(run._probe, batch_format="pyarrow", batch_size=None).take_all()

    def summary(probes):
        if probes is None:
            return None
        cols = next((json.loads(p["columns"]) for p in probes if p["rows"]), [])
        schemas = [pa.ipc.read_schema(pa.py_buffer(p["schema"])) for p in probes if p["rows"]]
        unified = pa.unify_schemas(schemas, promote_options="permissive") if schemas else None
        return {"rows": sum(int(p["rows"]) for p in probes), "columns": cols,
                "types": {f.name: str(f.type) for f in unified} if unified else {}}

    print(json.dumps({"input": [fmt, columns, limit], "local": summary(local), "pass": summary(passed)}), flush=True)
