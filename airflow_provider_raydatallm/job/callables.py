"""Ship the user's preprocess/postprocess to the cluster and load them there.

Airflow imports DAG files under mangled module names (``unusual_prefix_<hash>_<file>``)
that do not exist on the cluster, so a function from a DAG file, and any helper or
constant it uses, must travel by value. Functions from installed packages travel by
reference (the cluster imports them), as do ``"package.module:function"`` strings.
"""

from __future__ import annotations

import base64
import importlib
import sys
import sysconfig
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airflow_provider_raydatallm.job.spec import CallableSpec

_INSTALLED_ROOTS = {
    str(Path(p).resolve())
    for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], sysconfig.get_paths()["stdlib"]}
}


class CallableShippingError(ValueError):
    """A callable cannot be shipped to, or loaded on, the cluster."""


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _is_installed(module: types.ModuleType) -> bool:
    """True for stdlib and site-packages modules, which the cluster can import by name."""
    file = getattr(module, "__file__", None)
    if file is None:
        return module.__name__ in sys.builtin_module_names
    resolved = str(Path(file).resolve())
    return any(resolved.startswith(root) for root in _INSTALLED_ROOTS)


def pack(fn: Callable[..., Any] | str | None, name: str) -> CallableSpec | None:
    """Describe ``fn`` for the spec; raise ``CallableShippingError`` naming it if it cannot travel."""
    if fn is None:
        return None
    if isinstance(fn, str):
        try:
            return CallableSpec(name=name, import_path=fn, python_version=_python_version())
        except ValueError as err:
            raise CallableShippingError(f"{name}: {err}") from None
    if not callable(fn):
        raise CallableShippingError(f"{name} must be a callable or a 'package.module:function' string, got {fn!r}")
    import cloudpickle

    label = f"{name} ({getattr(fn, '__qualname__', repr(fn))} from {getattr(fn, '__module__', '?')})"
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    by_value = module is not None and module.__name__ != "__main__" and not _is_installed(module)
    if by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        data = cloudpickle.dumps(fn)
    except Exception as err:
        raise CallableShippingError(
            f"{label} cannot be shipped to the cluster: {type(err).__name__}: {err}. Keep it free of "
            "open files, locks, connections and clients (create those inside the function), or pass "
            "it as a 'package.module:function' string importable on the cluster."
        ) from None
    finally:
        if by_value:
            cloudpickle.unregister_pickle_by_value(module)
    return CallableSpec(
        name=name,
        pickled=base64.b64encode(data).decode("ascii"),
        python_version=_python_version(),
        cloudpickle_version=cloudpickle.__version__,
    )


def load(spec: CallableSpec | None) -> Callable[..., Any] | None:
    """Turn a ``CallableSpec`` back into the function, on the cluster."""
    if spec is None:
        return None
    if spec.import_path:
        module_name, _, attr = spec.import_path.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as err:
            raise CallableShippingError(
                f"{spec.name} {spec.import_path!r} cannot be imported on the cluster: {err}. "
                "Install its package on the cluster or ship it with runtime_env py_modules."
            ) from None
        if not callable(target):
            raise CallableShippingError(f"{spec.name} {spec.import_path!r} is not callable")
        return target
    if spec.python_version != _python_version():
        raise CallableShippingError(
            f"{spec.name} was pickled by Python {spec.python_version} on the Airflow side but the "
            f"cluster runs Python {_python_version()}: pickled functions need the same minor version "
            "on both sides. Match the versions, or pass it as a 'package.module:function' string."
        )
    import cloudpickle

    try:
        return cloudpickle.loads(base64.b64decode(spec.pickled or ""))
    except Exception as err:
        raise CallableShippingError(
            f"{spec.name} could not be unpickled on the cluster: {type(err).__name__}: {err} "
            f"(pickled with cloudpickle {spec.cloudpickle_version}, cluster has {cloudpickle.__version__})"
        ) from None
