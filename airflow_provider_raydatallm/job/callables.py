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


MAX_PICKLED_BYTES = 5 * 1024 * 1024
_PROVIDER = __name__.split(".", 1)[0]


def _by_value_modules(module: types.ModuleType | None) -> list[types.ModuleType]:
    """The function's module, when the cluster cannot import it (a DAG file), and every
    loaded module from the same folder (helpers a DAG file imports): they travel by value.
    A DAG file run as a script (``python my_dag.py`` with ``dag.test()``) is ``__main__``,
    which cloudpickle ships by value anyway; its folder's modules travel by value too."""
    if module is None or _is_installed(module):
        return []
    found = [] if module.__name__ == "__main__" else [module]
    folder = str(Path(module.__file__).resolve().parent) if getattr(module, "__file__", None) else None
    if folder is None:
        return found
    for other in list(sys.modules.values()):
        file = getattr(other, "__file__", None)
        if other is module or not file or other.__name__ == "__main__" or other.__name__.split(".", 1)[0] == _PROVIDER:
            continue
        if str(Path(file).resolve()).startswith(folder + "/") and not _is_installed(other):
            found.append(other)
    return found


def _too_big(label: str, fn: Callable[..., Any], size: int) -> str:
    """Name the captured object that makes a pickled function too big to ship."""
    import cloudpickle

    captured: dict[str, Any] = {}
    code = getattr(fn, "__code__", None)
    for var in getattr(code, "co_names", ()):
        if var in getattr(fn, "__globals__", {}):
            captured[var] = fn.__globals__[var]
    for var, cell in zip(getattr(code, "co_freevars", ()), getattr(fn, "__closure__", None) or ()):
        try:
            captured[var] = cell.cell_contents
        except ValueError:
            pass
    sizes = []
    for var, value in captured.items():
        if isinstance(value, types.ModuleType):
            continue
        try:
            sizes.append((len(cloudpickle.dumps(value)), var, type(value).__name__))
        except Exception:
            continue
    biggest = max(sizes, default=None)
    what = f": it captures {biggest[1]!r} ({biggest[0] / 1e6:.1f} MB, a {biggest[2]})" if biggest else ""
    return (
        f"{label} pickles to {size / 1e6:.1f} MB, over the {MAX_PICKLED_BYTES / 1e6:.0f} MB a job spec may carry{what}. "
        "Load large data inside the function (from storage the cluster reads) instead of capturing it."
    )


def pack(fn: Callable[..., Any] | str | None, name: str) -> CallableSpec | None:
    """Describe ``fn`` for the spec; raise ``CallableShippingError`` naming it if it cannot travel."""
    # Imported here: the cluster side loads callables and never fingerprints them.
    from airflow_provider_raydatallm.fingerprint import FingerprintError, fingerprint

    if fn is None:
        return None
    if isinstance(fn, str):
        try:
            return CallableSpec(
                name=name, import_path=fn, python_version=_python_version(), fingerprint=fingerprint(fn)
            )
        except ValueError as err:
            raise CallableShippingError(f"{name}: {err}") from None
    if not callable(fn):
        raise CallableShippingError(f"{name} must be a callable or a 'package.module:function' string, got {fn!r}")
    import cloudpickle

    label = f"{name} ({getattr(fn, '__qualname__', repr(fn))} from {getattr(fn, '__module__', '?')})"
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    by_value = _by_value_modules(module)
    for each in by_value:
        cloudpickle.register_pickle_by_value(each)
    try:
        data = cloudpickle.dumps(fn)
    except Exception as err:
        raise CallableShippingError(
            f"{label} cannot be shipped to the cluster: {type(err).__name__}: {err}. Keep it free of "
            "open files, locks, connections and clients (create those inside the function), or pass "
            "it as a 'package.module:function' string importable on the cluster."
        ) from None
    finally:
        for each in by_value:
            cloudpickle.unregister_pickle_by_value(each)
    if len(data) > MAX_PICKLED_BYTES:
        raise CallableShippingError(_too_big(label, fn, len(data)))
    try:
        identity: str | None = fingerprint(fn)
    except FingerprintError as err:
        # The job's identity then counts the pickled bytes: a retry in another process may
        # not reattach to (or adopt) its job, but a changed function is never taken for this one.
        import logging

        logging.getLogger(__name__).warning(
            "%s has no identity that is the same in every process (%s): a retry on another worker "
            "runs its job again instead of reattaching to it",
            label,
            err,
        )
        identity = None
    return CallableSpec(
        name=name,
        pickled=base64.b64encode(data).decode("ascii"),
        python_version=_python_version(),
        cloudpickle_version=cloudpickle.__version__,
        fingerprint=identity,
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
