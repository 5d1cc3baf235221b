"""The one pickler of everything that crosses between the kernel and a replica: code,
arguments, results, exceptions, class-handle ``__init__`` arguments, ``%%serverless`` names.

Always the ``cloudpickle`` package (never Ray's vendored copy, which keeps a class registry of
its own): a notebook class pickled by value keeps one identity on both sides, so a dataclass
that comes back is ``==`` to one built in the notebook, ``isinstance`` holds, enum members are
``is``-identical. Code objects keep their filenames (remote tracebacks show the cell's lines).
Values of plain types (numbers, strings, bytes, None) take ``pickle``'s fast path.

Example::

    blob = encode_args((3,), {})          # in the kernel
    args, kwargs = loads(blob)            # on the replica
"""

from __future__ import annotations

import io
import pickle
import types
from collections import ChainMap
from typing import Any

import cloudpickle
from cloudpickle import cloudpickle as _cp


class SerializationError(TypeError):
    """An argument, closure or result that cannot be pickled; the message names the object.

    Defined here (the worker imports nothing from the kernel side) and re-exported as
    ``nbserverless.SerializationError``."""


#: types whose instances plain pickle handles exactly like cloudpickle (and faster)
PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})


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
    """cloudpickle, keeping code objects' filenames. Example: ``loads(dumps(Point(1, 2)))``."""
    if type(obj) in PLAIN:
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    with io.BytesIO() as f:
        _Pickler(f, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
        return f.getvalue()


loads = pickle.loads


def encode_args(args: tuple, kwargs: dict) -> bytes:
    """One call's arguments as bytes (plain pickle when every one is of a plain type)."""
    if not kwargs and all(type(a) in PLAIN for a in args):
        return pickle.dumps((args, None), pickle.HIGHEST_PROTOCOL)
    return dumps((args, kwargs or None))


def decode(payload: Any) -> Any:
    """A request payload: bytes made by ``dumps``/``encode_args`` (or, from older callers, the
    value itself)."""
    return loads(payload) if isinstance(payload, bytes) else payload


def call_payload(payload: Any) -> bytes:
    """A call job's arguments as bytes. A handle makes the payload ``(blob, code)`` (the
    arguments pickled, and the code version it shipped or None); ``(args, kwargs)`` of other
    callers is encoded here."""
    if isinstance(payload, bytes):
        return payload
    args, kwargs = payload
    if isinstance(args, bytes):
        return args
    return encode_args(tuple(args), kwargs or {})


def call_code(payload: Any) -> Any:
    """The code version a handle's call payload carries (see ``call_payload``), or None."""
    if isinstance(payload, tuple) and isinstance(payload[0], bytes):
        return payload[1]
    return None


def decode_reply(kind: str, ok: bool, value: Any) -> tuple[bool, Any]:
    """An envelope's value as the kernel hands it on: results unpickled here (a call's value,
    a batch's list, a chunk's ``[values, errors]``); a result that cannot be rebuilt in the
    kernel becomes a ``SerializationError`` naming why."""
    if not ok:
        return ok, value
    try:
        if kind == "chunk":
            return True, [decode(value[0]), value[1]]
        return True, decode(value)
    except Exception as exc:
        return False, SerializationError(
            f"a result could not be rebuilt in the kernel ({type(exc).__name__}: {exc}); is "
            "the module that defines it importable here?"
        )
