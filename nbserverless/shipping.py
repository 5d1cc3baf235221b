"""What goes to a replica: code pickled by value (notebook code) or by reference (modules),
clear errors naming what cannot be pickled, and the notebook source for remote tracebacks.

Example::

    blob = dumps_code(square, "square")     # once per pool, never per call
"""

from __future__ import annotations

import functools
import inspect
import linecache
import sys
import types
from typing import Any

from cloudpickle import cloudpickle as _cp

from .errors import SerializationError
from .worker import codec

MAX_DIAGNOSE_DEPTH = 3


def dumps(obj: Any) -> bytes:
    """The one pickler (``worker/codec.py``): cloudpickle, keeping code objects' filenames."""
    return codec.dumps(obj)


def _try_pickle(obj: Any) -> Exception | None:
    try:
        dumps(obj)
        return None
    except Exception as exc:
        return exc


def find_unpicklable(obj: Any, label: str, depth: int = 0) -> tuple[str, Exception] | None:
    """Walk into ``obj`` (closures, globals, containers, attributes) and return the path and
    error of the innermost object that cannot be pickled. Only runs after a failure."""
    err = _try_pickle(obj)
    if err is None:
        return None
    if depth < MAX_DIAGNOSE_DEPTH:
        children: list[tuple[str, Any]] = []
        if inspect.isfunction(obj):
            try:
                cv = inspect.getclosurevars(obj)
                children += [(n, v) for n, v in cv.nonlocals.items()]
                children += [(n, v) for n, v in cv.globals.items()]
            except Exception:
                pass
        elif inspect.isclass(obj):
            for n, v in vars(obj).items():
                if inspect.isfunction(v):
                    children.append((f"{obj.__name__}.{n}", v))
        elif isinstance(obj, dict):
            children += [(f"{label}[{k!r}]", v) for k, v in list(obj.items())[:1000]]
        elif isinstance(obj, list | tuple | set | frozenset):
            children += [(f"{label}[{i}]", v) for i, v in enumerate(list(obj)[:1000])]
        elif hasattr(obj, "__dict__") and not inspect.ismodule(obj):
            children += [(f"{label}.{k}", v) for k, v in vars(obj).items()]
        for child_label, child in children:
            if inspect.ismodule(child):
                continue
            found = find_unpicklable(child, child_label, depth + 1)
            if found is not None:
                return found
    return label, err


def _describe(label: str, obj_err: Exception, what: str) -> str:
    return (
        f"{what} cannot be pickled: {label!r} ({obj_err.__class__.__name__}: {obj_err}). "
        "Create it inside the remote function (or the class's __init__) instead of passing or "
        "capturing it, or make it picklable."
    )


def dumps_code(obj: Any, name: str) -> bytes:
    """Pickle a function or class for its replicas; raise ``SerializationError`` naming the
    object that cannot be pickled (a global or closure variable, an attribute...)."""
    try:
        return dumps(obj)
    except Exception as exc:
        found = find_unpicklable(obj, name)
        label, err = found if found else (name, exc)
        raise SerializationError(_describe(label, err, f"{name}: a value it uses")) from None


def dumps_value(obj: Any, label: str) -> bytes:
    """Pickle one value (``%%serverless`` inputs and outputs)."""
    try:
        return dumps(obj)
    except Exception as exc:
        found = find_unpicklable(obj, label)
        where, err = found if found else (label, exc)
        raise SerializationError(_describe(where, err, "a value")) from None


def diagnose_args(args: tuple, kwargs: dict, name: str) -> SerializationError:
    """Build the error for call arguments that Ray could not serialize."""
    for i, a in enumerate(args):
        found = find_unpicklable(a, f"argument {i}")
        if found:
            return SerializationError(_describe(found[0], found[1], f"{name}(): an argument"))
    for k, a in (kwargs or {}).items():
        found = find_unpicklable(a, f"argument {k}=")
        if found:
            return SerializationError(_describe(found[0], found[1], f"{name}(): an argument"))
    return SerializationError(f"{name}(): the arguments could not be serialized")


def loads(blob: bytes) -> Any:
    return codec.loads(blob)


def notebook_sources(obj: Any, funcs: list[Any] | None = None) -> dict[str, tuple]:
    """The lines of the notebook cells that define ``obj`` (its methods for a class) and the
    notebook functions in ``funcs``, so that a remote traceback can show them, with each
    file's display name (``<cell N>``). Only those functions' own lines are kept; every other
    line of the cell is blank (a secret elsewhere in the cell is never shipped).

    Example: ``notebook_sources(f)`` -> ``{"<ipython-input-3-...>": ("<cell 3>", lines, None)}``.
    """
    spans: dict[str, list[tuple[int, int]]] = {}
    for f in [*_functions_of(obj), *(funcs or ())]:
        code = getattr(f, "__code__", None)
        if code is not None:
            spans.setdefault(code.co_filename, []).append(_code_span(code))
    out = {}
    for filename, ranges in spans.items():
        src = cell_source(filename)
        if src is not None:
            keep = {n for first, last in ranges for n in range(first, last + 1)}
            lines = [line if i in keep else "\n" for i, line in enumerate(src[1], 1)]
            out[filename] = (src[0], lines, None)
    return out


def _functions_of(obj: Any) -> list[Any]:
    if inspect.isclass(obj):
        found = []
        for v in vars(obj).values():
            v = getattr(v, "__func__", v)  # staticmethod, classmethod
            if isinstance(v, property):
                v = v.fget
            if inspect.isfunction(v):
                found.append(v)
        return found
    return [obj]


def _code_span(code: types.CodeType) -> tuple[int, int]:
    """First and last line of a function's code (decorators and nested code included)."""
    last = code.co_firstlineno
    stack = [code]
    while stack:
        c = stack.pop()
        for _, _, line in c.co_lines():
            if line is not None and line > last:
                last = line
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    return code.co_firstlineno, last


def cell_source(filename: str) -> tuple[str, list[str], None] | None:
    """``(display name, lines, None)`` of a notebook cell's code file, or None if not a cell."""
    entry = linecache.cache.get(filename)
    if entry is None or len(entry) < 3:
        return None
    lines = entry[2]
    display = cell_display_name(filename)
    if display is None:
        return None
    return display, list(lines), None


def cell_display_name(filename: str) -> str | None:
    """``<cell N>`` for an IPython cell's code file, else None."""
    ip = _ipython()
    if ip is None:
        return None
    number = getattr(ip.compile, "_filename_map", {}).get(filename)
    if number is None:
        return "<cell>" if filename.startswith("<ipython-input-") else None
    return f"<cell {number}>"


def _ipython() -> Any:
    if "IPython" not in sys.modules:
        return None
    try:
        from IPython import get_ipython

        return get_ipython()
    except Exception:
        return None


_MISSING = object()
WALK_CONTAINERS_UP_TO = 64  # items: functions inside small containers are watched too


class Watch:
    """What a function's shipped code depends on: the global names its code (and the code of
    the notebook functions and classes it reaches) reads, and its closure cells. ``changed()``
    is the cheap per-call check (identity of each current value, no pickling) that a helper was
    redefined or a global rebound since the code was pickled. In-place changes to a captured
    object (``lst.append``) are not seen: pass such objects as arguments.

    Example::

        watch = Watch(f)
        ...                       # RATE = 30 in a later cell
        watch.changed()           # -> True: pickle f again
    """

    __slots__ = ("slots", "values", "cells", "cell_values", "funcs")

    def __init__(self, obj: Any):
        self.slots: list[tuple[dict, str]] = []
        self.cells: list[Any] = []
        self.funcs: list[Any] = []  # the notebook functions reached (their lines ship)
        self._walk(obj, set())
        self.values = [g.get(n, _MISSING) for g, n in self.slots]
        self.cell_values = [_cell_value(c) for c in self.cells]

    def changed(self) -> bool:
        """Whether any watched global or closure cell now holds another object."""
        for (g, n), v in zip(self.slots, self.values, strict=True):
            if g.get(n, _MISSING) is not v:
                return True
        for c, v in zip(self.cells, self.cell_values, strict=True):
            if _cell_value(c) is not v:
                return True
        return False

    def _walk(self, obj: Any, seen: set[int]) -> None:
        if id(obj) in seen or inspect.ismodule(obj):
            return
        seen.add(id(obj))
        inner = _remote_target(obj)
        if inner is not None:
            self._walk(inner, seen)
        elif isinstance(obj, functools.partial):
            for part in (obj.func, *obj.args, *obj.keywords.values()):
                self._walk(part, seen)
        elif isinstance(obj, types.FunctionType):
            if not _by_value(obj):
                return
            self.funcs.append(obj)
            g = obj.__globals__
            for name in _global_names(obj.__code__):
                self.slots.append((g, name))
                value = g.get(name, _MISSING)
                if value is not _MISSING:
                    self._walk(value, seen)
            for cell in obj.__closure__ or ():
                self.cells.append(cell)
                value = _cell_value(cell)
                if value is not _MISSING:
                    self._walk(value, seen)
        elif isinstance(obj, type):
            if _by_value(obj):
                for f in _functions_of(obj):
                    self._walk(f, seen)
        elif isinstance(obj, list | tuple | dict | set | frozenset):
            if len(obj) <= WALK_CONTAINERS_UP_TO:  # e.g. a list of notebook functions
                for item in obj.values() if isinstance(obj, dict) else obj:
                    self._walk(item, seen)
        elif callable(obj) and not isinstance(obj, types.BuiltinFunctionType):
            self._walk(type(obj), seen)  # a callable object: its class's methods


def _cell_value(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return _MISSING


def _global_names(code: types.CodeType) -> list[str]:
    names: dict[str, None] = {}
    stack = [code]
    while stack:
        c = stack.pop()
        names.update(dict.fromkeys(c.co_names))
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    return list(names)


def _by_value(obj: Any) -> bool:
    """Whether cloudpickle ships ``obj`` by value (notebook code) rather than by reference."""
    try:
        return not _cp._should_pickle_by_reference(obj)
    except Exception:
        return False


def _remote_target(obj: Any) -> Any:
    """The plain function or class behind an nbserverless handle (what it pickles as)."""
    if type(obj).__module__.startswith("nbserverless.handles"):
        return getattr(obj, "_fn", None) or getattr(obj, "_cls", None)
    return None
