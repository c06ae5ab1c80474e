"""What a user's callable is, as a digest that is the same in every process.

Pickled bytes are no identity: pickle writes a set (a frozenset, a dict built from one) in
iteration order, and strings iterate in an order that follows the interpreter's hash seed,
which differs in every process (``PYTHONHASHSEED``). Every task try may be a fresh process
on another worker, so the identity is built from what the user wrote, rendered canonically:

- a function: its source (its bytecode when it has no source file), its constants (nested
  code objects and lambdas too), defaults, closure values and the globals its code names,
  followed into the functions and classes it uses that are not installed packages;
- sets and frozensets: members sorted by their rendering; dicts: items sorted by their
  key's rendering (a dict built from a set has its insertion order from the hash seed);
- enums: class, member name and value; dataclasses: class and fields; ``functools.partial``:
  function, arguments, keywords; classes defined beside the DAG: name, bases and their own
  attributes (methods by the rule for functions);
- installed functions, classes and modules: their import name and their distribution's
  version; modules beside the DAG (helpers): their source text;
- anything else: its pickle reduction (class and state) rendered by these rules, or, when
  it has none, its ``repr`` if that holds no memory address. The reduction comes first: a
  ``repr`` may embed a set in iteration order (``SimpleNamespace``) or elide (numpy).

A value that cannot be rendered raises ``FingerprintError``: "could not render" is never
taken for "nothing to render" (the caller falls back to the pickled bytes, which change
between processes but never hide a change). Stdlib only: imported on the Airflow side.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import inspect
import json
import os
import re
import sys
import sysconfig
import types
from collections.abc import Callable, Mapping, Set
from pathlib import Path
from typing import Any

# Part of every digest: bump it when the rendering changes (every identity changes with it).
FORMAT = 1
# Airflow imports DAG files as unusual_prefix_<sha1 of the file's path>_<name>: the path may
# differ between workers and bundle versions, the name the user gave does not.
_DAG_MODULE_PREFIX = re.compile(r"unusual_prefix_[0-9a-f]{40}_")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{4,}")
# A DAG that captures a whole dataset is refused by the 5 MB pickle limit anyway.
MAX_VALUES = 1_000_000
# Class attributes that say where a class was defined, or cache what its own definition
# (rendered beside them) implies: ABC registries, pydantic's schema, validator, serializer,
# a snapshot of the defining module's namespace, and the docstring (a dataclass's is made
# from the reprs of its defaults, a set's in iteration order).
_CLASS_PLACEMENT = frozenset(
    {
        "__doc__",
        "__dict__",
        "__weakref__",
        "__module__",
        "__firstlineno__",
        "__static_attributes__",
        "_abc_impl",
        "__signature__",
        "__pydantic_parent_namespace__",
        "__pydantic_core_schema__",
        "__pydantic_validator__",
        "__pydantic_serializer__",
    }
)
_BUILTIN_CALLABLES = (
    types.BuiltinFunctionType,
    types.MethodWrapperType,
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
    types.ClassMethodDescriptorType,
)


class FingerprintError(ValueError):
    """A value cannot be rendered canonically (e.g. it holds a lock or a client)."""


def fingerprint(target: Callable[..., Any] | str) -> str:
    """The stable hex digest of a callable, or of a ``"package.module:function"`` path.

    :param target: a function (lambda, closure, partial, bound method...) or an import path;
        for a path the digest covers the path and, when the module can be found on this side
        (it is not imported), its source file.
    """
    renderer = _Renderer()
    try:
        rendered = _import_path(target) if isinstance(target, str) else renderer.render(target)
    except RecursionError:
        raise FingerprintError(f"{_label(target)} nests too deeply to fingerprint") from None
    payload = json.dumps({"format": FORMAT, "target": rendered}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def _order(rendered: Any) -> str:
    return json.dumps(rendered, sort_keys=True, separators=(",", ":"))


def _label(value: Any) -> str:
    name = getattr(value, "__qualname__", None)
    return _DAG_MODULE_PREFIX.sub("", name if isinstance(name, str) else type(value).__qualname__)


class _Renderer:
    """One traversal: renders values to JSON-able structures, cutting cycles."""

    def __init__(self) -> None:
        self._active: set[int] = set()  # ids on the current path: meeting one again is a cycle
        # Finished renderings by id, with the object kept alive so its id is not reused.
        # Only cycle-free ones: where a cycle is cut depends on where the walk entered it.
        self._done: dict[int, tuple[Any, Any]] = {}
        self._cuts = 0
        self._count = 0

    def render(self, value: Any) -> Any:
        self._count += 1
        if self._count > MAX_VALUES:
            raise FingerprintError(f"over {MAX_VALUES:,} values to render: load large data inside the function")
        if value is None or type(value) in (bool, int, float):
            return value
        if type(value) is str:
            return _DAG_MODULE_PREFIX.sub("", value)
        key = id(value)
        if key in self._done:
            return self._done[key][1]
        if key in self._active:
            self._cuts += 1
            return {"cycle": _label(value)}
        self._active.add(key)
        cuts = self._cuts
        try:
            rendered = self._render_new(value)
        finally:
            self._active.discard(key)
        if self._cuts == cuts:
            self._done[key] = (value, rendered)
        return rendered

    def _render_new(self, value: Any) -> Any:  # one branch per kind of value
        if isinstance(value, enum.Enum):
            return {"enum": self._name(type(value)), "member": value.name, "value": self.render(value.value)}
        if isinstance(value, (bytes, bytearray)):
            return {"bytes": hashlib.sha256(value).hexdigest()}
        if isinstance(value, (str, int, float)):  # a subclass of a plain value
            return {"instance_of": self.render(type(value)), "value": self.render(_plain(value))}
        if isinstance(value, (list, tuple)):
            items = [self.render(item) for item in value]
            if type(value) in (list, tuple):
                return {type(value).__name__: items}
            return {"sequence": items, "type": self.render(type(value))}  # a namedtuple, a list subclass
        if isinstance(value, Set):
            return {"set": sorted((self.render(item) for item in value), key=_order)}
        if isinstance(value, Mapping):
            return self._mapping(value)
        if isinstance(value, functools.partial):
            arguments = {"args": self.render(value.args), "keywords": self.render(value.keywords)}
            return {"partial": self.render(value.func), **arguments}
        if isinstance(value, types.FunctionType):
            return self._function(value)
        wrapped = getattr(value, "__wrapped__", None)
        if callable(value) and callable(wrapped):  # functools.lru_cache, cache, wraps-made objects
            return {"wrapper": self._name(type(value)), "wrapped": self.render(wrapped)}
        if isinstance(value, types.MethodType):
            return {"method": self.render(value.__func__), "of": self.render(value.__self__)}
        if isinstance(value, _BUILTIN_CALLABLES):
            return self._builtin(value)
        if isinstance(value, (staticmethod, classmethod)):
            return {type(value).__name__: self.render(value.__func__)}
        if isinstance(value, property):
            return {"property": [self.render(value.fget), self.render(value.fset), self.render(value.fdel)]}
        if isinstance(value, types.CodeType):
            return self._code(value, source=None, with_bytecode=True)
        if isinstance(value, types.ModuleType):
            return self._module(value)
        if isinstance(value, type):
            return self._class(value)
        if dataclasses.is_dataclass(value):
            fields = {f.name: self.render(getattr(value, f.name)) for f in dataclasses.fields(value)}
            return {"dataclass": self.render(type(value)), "fields": fields}
        return self._reduced(value)

    def _mapping(self, value: Mapping[Any, Any]) -> dict[str, Any]:
        items = [[self.render(k), self.render(v)] for k, v in value.items()]
        node: dict[str, Any] = {"dict": sorted(items, key=lambda item: _order(item[0]))}
        if type(value) is not dict:
            node["type"] = self.render(type(value))
            if getattr(value, "default_factory", None) is not None:  # a defaultdict
                node["default_factory"] = self.render(value.default_factory)  # type: ignore[attr-defined]
        return node

    def _function(self, fn: types.FunctionType) -> dict[str, Any]:
        module = sys.modules.get(fn.__module__ or "")
        if module is not None and _installed(module):
            return {"function": f"{fn.__module__}:{fn.__qualname__}", "version": _version(fn.__module__)}
        code = fn.__code__
        try:
            source: str | None = inspect.getsource(fn)
        except Exception:  # defined by exec() or in a REPL (no file), or a lambda inspect cannot cut out
            source = None
        closure = {}
        for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
            try:
                contents = cell.cell_contents
            except ValueError:  # a cell not filled yet
                closure[name] = {"empty_cell": True}
            else:
                closure[name] = self.render(contents)
        node = {
            "function": _label(fn),
            "code": self._code(code, source=source, with_bytecode=source is None),
            "defaults": self.render(fn.__defaults__),
            "kwdefaults": self.render(fn.__kwdefaults__),
            "closure": closure,
            # Names a builtin answers (len, print) are the same everywhere: not rendered.
            "globals": {name: self.render(fn.__globals__[name]) for name in _global_names(code, fn.__globals__)},
        }
        if fn.__dict__:  # functools.wraps' __wrapped__, attributes set on the function
            node["attributes"] = self.render(fn.__dict__)
        return node

    def _code(self, code: types.CodeType, *, source: str | None, with_bytecode: bool) -> dict[str, Any]:
        """A code object: its source when known (nested code is inside it), else its
        bytecode, which is stable between processes of one Python minor version."""
        consts = [
            self._code(const, source=None, with_bytecode=with_bytecode)
            if isinstance(const, types.CodeType)
            else self.render(const)
            for const in code.co_consts
        ]
        node: dict[str, Any] = {"name": code.co_name, "consts": consts, "names": list(code.co_names)}
        if source is not None:
            node["source"] = source
        if with_bytecode:
            node["bytecode"] = code.co_code.hex()
        return node

    def _builtin(self, value: Any) -> dict[str, Any]:
        owner = getattr(value, "__self__", None)
        if owner is None or isinstance(owner, types.ModuleType):
            owner_class = getattr(value, "__objclass__", None)  # str.lower's is str
            module = getattr(value, "__module__", None) or getattr(owner_class, "__module__", "")
            return {"builtin": f"{module}:{value.__qualname__}"}
        return {"builtin": value.__qualname__, "of": self.render(owner)}

    def _module(self, module: types.ModuleType) -> dict[str, Any]:
        name = _DAG_MODULE_PREFIX.sub("", module.__name__)
        if _installed(module):
            return {"module": name, "version": _version(module.__name__)}
        file = getattr(module, "__file__", None)
        if file:
            try:
                node: dict[str, Any] = {"module": name, "source": hashlib.sha256(Path(file).read_bytes()).hexdigest()}
            except OSError:
                pass
            else:
                if hasattr(module, "__path__"):  # a package: ``pkg.sub.fn(...)`` runs its loaded submodules too
                    subs = sorted(m for m in sys.modules if m.startswith(module.__name__ + "."))
                    node["submodules"] = {_DAG_MODULE_PREFIX.sub("", m): self.render(sys.modules[m]) for m in subs}
                return node
        # No file (a namespace package, a module built at run time): what it holds.
        own = {k: v for k, v in vars(module).items() if not k.startswith("__")}
        return {"module": name, "attributes": self.render(own)}

    def _class(self, cls: type) -> dict[str, Any]:
        module = sys.modules.get(cls.__module__)
        if module is not None and _installed(module):
            return {"class": self._name(cls), "version": _version(cls.__module__)}
        if issubclass(cls, enum.Enum):
            members = [[name, self.render(member.value)] for name, member in cls.__members__.items()]
            behaviour = (types.FunctionType, classmethod, staticmethod, property)
            own = {k: v for k, v in vars(cls).items() if k not in cls.__members__}
            methods = {k: self.render(v) for k, v in own.items() if isinstance(v, behaviour)}
            return {"enum_class": _label(cls), "members": members, "methods": methods}
        attributes = {k: v for k, v in vars(cls).items() if k not in _CLASS_PLACEMENT}
        return {"class": _label(cls), "bases": self.render(cls.__bases__), "attributes": self.render(attributes)}

    def _name(self, cls: type) -> str:
        return f"{_DAG_MODULE_PREFIX.sub('', cls.__module__)}:{cls.__qualname__}"

    def _reduced(self, value: Any) -> Any:
        """Any other object, by how pickle would rebuild it: class, arguments, state."""
        try:
            reduced = value.__reduce_ex__(4)
        except Exception as err:
            text = _repr(value)
            if text is not None and not _ADDRESS.search(text):
                return {"repr": _DAG_MODULE_PREFIX.sub("", text), "type": self.render(type(value))}
            raise FingerprintError(
                f"a {type(value).__qualname__} cannot be fingerprinted ({type(err).__name__}: {err})"
            ) from None
        if isinstance(reduced, str):  # a module-level singleton, pickled by name
            module = getattr(value, "__module__", None) or type(value).__module__
            return {"global": f"{_DAG_MODULE_PREFIX.sub('', module)}:{reduced}"}
        rebuild, args, *rest = reduced
        node = {"type": self.render(type(value)), "rebuild": self.render(rebuild), "args": self.render(args)}
        state, items, entries = (list(rest) + [None, None, None])[:3]
        if state is not None:
            node["state"] = self.render(state)
        if items is not None:
            node["items"] = self.render(list(items))
        if entries is not None:
            node["entries"] = self.render(dict(entries))
        return node


def _plain(value: str | int | float) -> str | int | float:
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return value


def _repr(value: Any) -> str | None:
    try:
        return repr(value)
    except Exception:
        return None


def _global_names(code: types.CodeType, namespace: Mapping[str, Any]) -> list[str]:
    """The names a code object and the code nested in it look up that ``namespace`` (the
    function's module globals) defines. co_names also holds attribute names (``row.get``):
    those the module does not define are left out."""
    names = [name for name in code.co_names if name in namespace]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names += [name for name in _global_names(const, namespace) if name not in names]
    return names


@functools.lru_cache(maxsize=1)
def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    keys = ("purelib", "platlib", "stdlib", "platstdlib")
    return tuple(sorted({str(Path(paths[k]).resolve()) + os.sep for k in keys if k in paths}))


def _installed(module: types.ModuleType) -> bool:
    """Stdlib and site-packages modules: the same code wherever the same version is installed."""
    file = getattr(module, "__file__", None)
    if not file:
        spec = getattr(module, "__spec__", None)
        builtin = module.__name__ in sys.builtin_module_names
        return builtin or getattr(spec, "origin", None) in ("built-in", "frozen")
    return str(Path(file).resolve()).startswith(_installed_roots())


@functools.lru_cache(maxsize=None)
def _version(module_name: str) -> str:
    """The version of the distribution that installs ``module_name`` ('' if none does)."""
    top = module_name.split(".", 1)[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return f"python {sys.version_info.major}.{sys.version_info.minor}"
    candidates = [top] + list(_distributions().get(top, ()))
    for dist in candidates:
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except (importlib.metadata.PackageNotFoundError, ValueError):
            continue
    return ""


@functools.lru_cache(maxsize=1)
def _distributions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _import_path(path: str) -> dict[str, Any]:
    """Code passed by reference: the path, and the source file of its module when it can be
    found here without running it (Airflow need not be able to import the cluster's code)."""
    module_name = path.partition(":")[0]
    node: dict[str, Any] = {"import_path": path}
    origin = _module_file(module_name)
    if origin is not None:
        try:
            node["source"] = hashlib.sha256(Path(origin).read_bytes()).hexdigest()
        except OSError:
            pass
        if str(Path(origin).resolve()).startswith(_installed_roots()):
            node["version"] = _version(module_name)
    return node


def _module_file(module_name: str) -> str | None:
    """Where ``module_name``'s source is, found without importing it (or its parents)."""
    loaded = sys.modules.get(module_name)
    if loaded is not None:
        return getattr(loaded, "__file__", None)
    parts = module_name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])  # a top-level name: nothing is run
        for depth in range(1, len(parts)):
            if spec is None or not spec.submodule_search_locations:
                return None
            name = ".".join(parts[: depth + 1])
            spec = importlib.machinery.PathFinder.find_spec(name, spec.submodule_search_locations)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None)
    return origin if origin and os.path.isfile(origin) else None
