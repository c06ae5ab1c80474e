"""The processor_config schemas the package ships are the installed Ray's: regenerate them
from .venv-ray and compare, so a Ray upgrade without a new export fails here."""

from __future__ import annotations

import json
import subprocess

from airflow_provider_raydatallm import schemas
from tests.conftest import ROOT


def test_shipped_schemas_match_the_installed_ray(tmp_path):
    out = tmp_path / "fresh.json"
    done = subprocess.run(
        [str(ROOT / ".venv-ray" / "bin" / "python"), str(ROOT / "scripts" / "export_processor_schemas.py"), str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    fresh = json.loads(out.read_text())
    shipped = json.loads((ROOT / "airflow_provider_raydatallm" / "schemas" / schemas.SCHEMA_FILE).read_text())
    assert fresh["ray_version"] == shipped["ray_version"], "Ray changed: run scripts/export_processor_schemas.py"
    for name in fresh["configs"]:
        assert fresh["configs"][name] == shipped["configs"][name], f"{name} drifted: run scripts/export_processor_schemas.py"
    assert sorted(fresh["configs"]) == schemas.known_types()
