from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from airflow_provider_raydatallm import __version__
from airflow_provider_raydatallm.get_provider_info import get_provider_info


def test_entry_point_is_registered():
    (entry,) = [e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("airflow_provider_raydatallm")]
    assert entry.load() is get_provider_info


def test_provider_info_names_importable_classes():
    info = get_provider_info()
    assert info["package-name"] == "airflow-provider-raydatallm" and info["versions"] == [__version__]
    for section in ("hooks", "operators", "sensors", "triggers"):
        for entry in info[section]:
            for module in entry["python-modules"]:
                importlib.import_module(module)
    for dotted in [c["hook-class-name"] for c in info["connection-types"]] + info["extra-links"]:
        module, _, name = dotted.rpartition(".")
        assert hasattr(importlib.import_module(module), name), dotted


def test_airflow_discovers_the_ray_connection_type():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert "airflow-provider-raydatallm" in manager.providers
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    hook = ProvidersManagerTaskRuntime().hooks["ray"]
    assert hook is not None and hook.hook_class_name == "airflow_provider_raydatallm.hooks.ray.RayHook"
    assert "extra__ray__verify" in manager.connection_form_widgets
    assert manager.field_behaviours["ray"]["relabeling"]["password"] == "Ray auth token"


def test_the_namespace_option_is_declared_and_read():
    from airflow_provider_raydatallm import namespace
    from airflow_provider_raydatallm.get_provider_info import get_provider_info

    option = get_provider_info()["config"]["raydatallm"]["options"]["namespace"]
    assert option["default"] == "" and option["type"] == "string"
    assert namespace.CONFIG_SECTION == "raydatallm" and namespace.CONFIG_KEY == "namespace"
