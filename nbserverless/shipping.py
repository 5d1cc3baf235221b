"""What goes to a replica: code pickled by value (notebook code) or by reference (modules),
clear errors naming what cannot be pickled, and the notebook source for remote tracebacks.

Example::

    blob = dumps_code(square, "square")     # once per pool, never per call
"""

from __future__ import annotations

import inspect
import io
import linecache
import pickle
import sys
import types
from collections import ChainMap
from typing import Any

import cloudpickle
from cloudpickle import cloudpickle as _cp

from .errors import SerializationError

MAX_DIAGNOSE_DEPTH = 3


def _code_reduce_keep_filename(code: types.CodeType) -> tuple:
    # cloudpickle replaces every filename by "<dynamic-code>"; a remote traceback needs the
    # real one (a notebook cell's) to show the cell's lines.
    fn, args = _cp._code_reduce(code)[:2]
    return fn, tuple(code.co_filename if a == "<dynamic-code>" else a for a in args)


class _Pickler(cloudpickle.Pickler):
    dispatch_table = ChainMap(
        {types.CodeType: _code_reduce_keep_filename}, cloudpickle.Pickler.dispatch_table
    )


def dumps(obj: Any) -> bytes:
    """cloudpickle, keeping code objects' filenames (for remote tracebacks)."""
    with io.BytesIO() as f:
        _Pickler(f, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
        return f.getvalue()


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
    for k, a in kwargs.items():
        found = find_unpicklable(a, f"argument {k}=")
        if found:
            return SerializationError(_describe(found[0], found[1], f"{name}(): an argument"))
    return SerializationError(f"{name}(): the arguments could not be serialized")


def loads(blob: bytes) -> Any:
    return pickle.loads(blob)


def notebook_sources(obj: Any) -> dict[str, tuple[str, list[str], str | None]]:
    """Source lines of the notebook cells that define ``obj`` (and its methods), so that a
    remote traceback can show them, with each file's display name (``<cell N>``).

    Returns ``{filename: (display_name, lines, None)}``.
    """
    files: set[str] = set()
    funcs = [obj]
    if inspect.isclass(obj):
        funcs = [v for v in vars(obj).values() if inspect.isfunction(v)]
    for f in funcs:
        code = getattr(f, "__code__", None)
        if code is not None:
            files.add(code.co_filename)
    return {fn: src for fn in files if (src := cell_source(fn)) is not None}


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
