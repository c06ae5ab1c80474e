"""The Airflow side must not pull the cluster's heavy libraries into DAG parsing."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["ray", "vllm", "torch", "pyarrow", "pandas", "pyiceberg", "deltalake"]
MODULES = [
    "airflow_provider_raydatallm",
    "airflow_provider_raydatallm.get_provider_info",
    "airflow_provider_raydatallm.hooks.ray",
    "airflow_provider_raydatallm.operators",
    "airflow_provider_raydatallm.operators.serve",
    "airflow_provider_raydatallm.triggers.serve",
    "airflow_provider_raydatallm.serve_apps",
    "airflow_provider_raydatallm.sensors",
    "airflow_provider_raydatallm.triggers",
    "airflow_provider_raydatallm.links",
    "airflow_provider_raydatallm.plugins",
    "airflow_provider_raydatallm.tables",
]


def _heavy_after_import(modules: list[str], prelude: str = "") -> list[str]:
    code = (
        f"import importlib, json, sys\n{prelude}\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted(h for h in {HEAVY!r} if h in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_provider_modules_import_none_of_the_heavy_libraries():
    assert _heavy_after_import(MODULES) == []


def test_the_check_sees_a_heavy_module():
    # Guards the test above against passing vacuously.
    prelude = "import types; sys.modules['torch'] = types.ModuleType('torch')"
    assert _heavy_after_import(MODULES[:1], prelude) == ["torch"]


def test_the_plugin_builds_its_web_app_only_in_the_api_server():
    # Every process that loads plugins (DAG processor, task runners) imports the plugin
    # module; only the API server reads fastapi_apps, which builds the app.
    code = (
        "import sys, json\n"
        "import airflow_provider_raydatallm.plugins as p\n"
        "before = ['fastapi' in sys.modules, 'airflow_provider_raydatallm.plugins.app' in sys.modules]\n"
        "apps = p.RayDataLLMPlugin.fastapi_apps\n"
        "print(json.dumps([before, apps[0]['url_prefix'], type(apps[0]['app']).__name__]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [[False, False], "/raydatallm", "FastAPI"]
