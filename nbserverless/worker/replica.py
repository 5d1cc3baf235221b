"""The Ray actor that hosts user code on the cluster.

A replica starts generic (``ping`` answers once its process runs, which is when billing
starts), then ``load`` builds the function or the class instance once: its cold start. Calls
come back as envelopes, never as Ray exceptions, so user errors keep their type and
infrastructure errors stay Ray's.

Envelope of a call: ``[ok, value_or_error, exec_s, out, out_seq]`` where ``out`` is output
not yet streamed (``[(stream, text), ...]`` or None) and ``out_seq`` the number of output
frames streamed live over the output socket for this call.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
import threading
import time
import traceback
from typing import Any

from . import codec, watchdog
from .streams import (
    _LOCAL,
    FLUSH_EVERY_S,
    STREAM_AFTER_S,
    _CallOutput,
    _install_streams,
    _OutputLink,
)
from .threads import apply_cpu_share, idle_priority


class UserError:
    """A user exception, pickled apart from the envelope so an unpicklable one still reports."""

    __slots__ = ("blob", "type_name", "message", "tb")

    def __init__(self, exc: BaseException, tb: str):
        self.type_name = f"{type(exc).__module__}.{type(exc).__qualname__}"
        self.message = str(exc)
        self.tb = tb
        try:
            self.blob = codec.dumps(exc)
        except Exception:
            self.blob = None

    def __getstate__(self):
        return (self.blob, self.type_name, self.message, self.tb)

    def __setstate__(self, state):
        self.blob, self.type_name, self.message, self.tb = state


_WORKER_DIR = os.path.dirname(os.path.abspath(__file__))
_RUNTIME_DIRS = (
    _WORKER_DIR,
    os.path.dirname(asyncio.__file__),
    os.path.dirname(os.path.abspath(threading.__file__)) + os.sep + "threading.py",
    os.path.dirname(os.path.abspath(threading.__file__)) + os.sep + "concurrent",
)


def _format_tb(exc: BaseException, names: dict[str, str]) -> str:
    """The traceback of a user exception as the notebook shows it: the user's frames only
    (none of the replica's, asyncio's or threading's), notebook files as ``<cell N>``."""
    te = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    te.stack = traceback.StackSummary.from_list(
        [f for f in te.stack if not f.filename.startswith(_RUNTIME_DIRS)]
    )
    text = "".join(te.format())
    for filename, display in names.items():
        text = text.replace(f'File "{filename}"', f'File "{display}"')
    return text


def _serialization_error(what: str, value: Any, exc: BaseException) -> UserError:
    if isinstance(value, list):  # a batch's results: name the first that cannot be pickled
        for item in value:
            try:
                codec.dumps(item)
            except Exception as item_exc:
                value, exc = item, item_exc
                break
    kind = type(value)
    err = codec.SerializationError(
        f"{what} cannot be pickled: a {kind.__module__}.{kind.__qualname__} "
        f"({type(exc).__name__}: {_first_line(exc)}). Return plain data instead (convert it, "
        "or build such objects in the kernel)."
    )
    return UserError(err, "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def _settle_value(value: Any) -> Any:
    """The value of a call: an ``async def`` function's coroutine is run here."""
    if inspect.iscoroutine(value):
        return asyncio.run(value)
    return value


class Replica:
    """Hosts one function or one class instance. Created by the pool, never by users."""

    def __init__(self, rid: str, out_address: tuple[str, int, str] | None):
        self.t_start = time.time()
        self.rid = rid
        self.target: Any = None
        self.kind = None
        self.names: dict[str, str] = {}
        self.version = 0  # of the code loaded (fresh code: see _refresh)
        self._refresh_lock = threading.Lock()
        self._link = _OutputLink(out_address)
        self._active: dict[int, _CallOutput] = {}
        self._active_lock = threading.Lock()
        _install_streams()
        threading.Thread(target=self._flusher, name="nbs-output", daemon=True).start()
        watchdog.start()  # exit when the raylet is gone (a killed kernel's cluster)

    def ping(self) -> dict[str, Any]:
        return {"t_start": self.t_start, "pid": os.getpid(), "node": _node_ip()}

    def load(self, spec: dict[str, Any], background: bool = False) -> dict[str, Any]:
        """Build the function or class instance: the replica's cold start; ``background``
        when a stand-in serves the calls meanwhile (then on otherwise idle CPU only)."""
        if background:
            with idle_priority():
                return self._load(spec)
        return self._load(spec)

    def _load(self, spec: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        apply_cpu_share(spec.get("cpus"), spec.get("env"))  # before user code loads a model
        self._add_sources(spec.get("sources", {}))
        obj = codec.loads(spec["code"])
        self.kind = spec["kind"]
        if self.kind == "class":
            args, kwargs = codec.decode(spec.get("init") or ((), {}))
            self._begin(-1)
            try:
                self.target = obj(*args, **(kwargs or {}))
            except BaseException as exc:
                return {"ok": False, "error": UserError(exc, _format_tb(exc, self.names))}
            finally:
                rest, _ = self._end()
                self._emit_remaining(rest)
        else:
            self.target = obj
        return {"ok": True, "init_s": time.perf_counter() - t0, **self.ping()}

    def _add_sources(self, sources: dict) -> None:
        import linecache

        for filename, (display, lines, _) in sources.items():
            linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
            self.names[filename] = display

    def _refresh(self, code: Any) -> None:
        """Fresh code: a request carries ``(version, [ref])`` once the kernel re-pickled the
        function (a helper redefined, a global rebound); load it if this replica's is older."""
        if code is None or code[0] <= self.version:
            return
        with self._refresh_lock:
            if code[0] <= self.version:
                return
            import ray

            spec = ray.get(code[1][0])
            self._add_sources(spec.get("sources", {}))
            self.target = codec.loads(spec["code"])
            self.version = code[0]

    # -- calls ---------------------------------------------------------------------------

    def _fn(self, method: str | None) -> Any:
        return self.target if method is None else getattr(self.target, method)

    def _register_output(self, call_id: int) -> _CallOutput:
        """A call's first write: from now on its output is buffered (and streamed if long)."""
        out = _CallOutput(call_id)
        with self._active_lock:
            self._active[call_id] = out
        return out

    def _begin(self, call_id: int) -> None:
        local = _LOCAL
        local.call_id = call_id
        local.out = None
        local.begin = self._register_output

    def _end(self) -> tuple[list | None, int]:
        local = _LOCAL
        out = local.out
        local.call_id = local.out = None
        if out is None:
            return None, 0
        with self._active_lock:
            self._active.pop(out.call_id, None)
        with out.lock:
            chunks, out.chunks = out.chunks, []
        # keep order: once a call streamed, the rest streams too
        if out.seq and chunks and self._link.send(out.call_id, chunks):
            out.seq += 1
            chunks = []
        return (chunks or None), out.seq

    def _emit_remaining(self, chunks: list | None) -> None:
        for stream, text in chunks or ():
            getattr(sys, stream)._original.write(text)

    def _run(self, call_id: int, thunk: Any, what: str = "the return value") -> list:
        """Run ``thunk()`` as call ``call_id``: its output captured, its time measured, its
        value pickled (the one pickler), a user exception wrapped; returns the envelope."""
        self._begin(call_id)
        t0 = time.perf_counter()
        try:
            value, ok = _settle_value(thunk()), True
        except BaseException as exc:
            value, ok = UserError(exc, _format_tb(exc, self.names)), False
        exec_s = time.perf_counter() - t0
        if ok:
            try:
                value = codec.dumps(value)
            except Exception as exc:
                value, ok = _serialization_error(what, value, exc), False
        rest, seq = self._end()
        return [ok, value, exec_s, rest, seq]

    def call(self, req: list) -> list:
        """One call; ``req`` is ``[method, args, call_id, code]`` in one argument (``args``
        the bytes of ``(args, kwargs)``, ``code`` None or a newer version of the code)."""
        method, payload, call_id, code = req
        if code is not None:
            self._refresh(code)
        args, kwargs = codec.decode(payload)
        fn = self._fn(method)
        return self._run(call_id, (lambda: fn(*args, **kwargs)) if kwargs else (lambda: fn(*args)))

    def batch(self, method: str | None, payload: Any, call_id: int, code: Any = None) -> list:
        """One call of a batched function with a list; checks it returns a list as long."""
        self._refresh(code)
        items = codec.decode(payload)
        fn = self._fn(method)
        return self._run(
            call_id, lambda: _as_batch_result(fn(items), len(items)), "a result of the batch"
        )

    def chunk(
        self, method: str | None, payload: Any, star: bool, call_id: int, code: Any = None
    ) -> list:
        """Several items of a map in one round trip; every item succeeds or fails alone.
        The value is ``[values, errors]``: values pickled as one list, errors None or
        ``{index: UserError}`` (with None at that index in values), so an all-good chunk
        carries no per-item wrapping."""
        self._refresh(code)
        items = codec.decode(payload)
        self._begin(call_id)
        fn = self._fn(method)
        values: list = []
        append = values.append
        errors: dict[int, UserError] | None = None
        t0 = time.perf_counter()
        start, n = 0, len(items)
        while start < n:
            rest_items = items if start == 0 else items[start:]
            try:
                if star:
                    for item in rest_items:
                        append(_settle_value(fn(*item)))
                else:
                    for item in rest_items:
                        append(_settle_value(fn(item)))
                break
            except BaseException as exc:
                if errors is None:
                    errors = {}
                errors[len(values)] = UserError(exc, _format_tb(exc, self.names))
                append(None)
                start = len(values)
        exec_s = time.perf_counter() - t0
        try:
            blob = codec.dumps(values)
        except Exception:
            blob, errors = _pickle_items(values, errors)
        rest, seq = self._end()
        return [True, [blob, errors], exec_s, rest, seq]

    # -- live output ---------------------------------------------------------------------

    def _flusher(self) -> None:
        while True:
            time.sleep(FLUSH_EVERY_S)  # a replica-side cadence, not a synchronisation
            now = time.monotonic()
            with self._active_lock:
                active = list(self._active.values())
            for out in active:
                if now - out.t0 < STREAM_AFTER_S:
                    continue
                with out.lock:
                    chunks, out.chunks = out.chunks, []
                    if chunks:
                        if self._link.send(out.call_id, chunks):
                            out.seq += 1
                        else:
                            out.chunks = chunks + out.chunks


def _pickle_items(values: list, errors: dict | None) -> tuple[bytes, dict]:
    """A chunk's values when some cannot be pickled: those become that item's error."""
    errors = dict(errors or {})
    for i, value in enumerate(values):
        try:
            codec.dumps(value)
        except Exception as exc:
            errors[i] = _serialization_error("the return value", value, exc)
            values[i] = None
    return codec.dumps(values), errors


def _as_batch_result(value: Any, n_items: int) -> list:
    try:
        n = len(value)
    except TypeError:
        n = None
    if n != n_items:
        got = f"{n} results" if n is not None else f"a {type(value).__name__}"
        raise ValueError(
            f"a batched function must return a list as long as its input: it got "
            f"{n_items} items and returned {got}"
        )
    return list(value)


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:
        return "?"
