"""The call surface shared by function handles, class handles and their methods: calls,
``submit``, ``map``, ``starmap``, ``stats``, and the pool a handle owns.

Example: ``Invoker(handle, None, batched=False).call((3,), {})``.
"""

from __future__ import annotations

import contextvars
import os
import threading
import traceback
from concurrent.futures import Future
from typing import Any

from ..core.pool import Job, Pool
from ..errors import RemoteError, RemoteExitError, RemoteTraceback, SerializationError
from ..metering import budget
from ..shipping import cell_display_name, diagnose_args
from ..worker import codec
from ..worker.replica import UserError

#: True while ``.local()`` runs: calls of remote handles made meanwhile run locally too
LOCAL_MODE: contextvars.ContextVar[bool] = contextvars.ContextVar("nbs_local", default=False)
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE_MARK = "  -- on a replica --"


def rebuild_error(value: Any) -> BaseException:
    """The exception object a caller sees for a failed call: the user's own exception type
    with the remote traceback as its cause, or one of ours for infrastructure failures.
    ``SystemExit``/``KeyboardInterrupt`` raised remotely come back as ``RemoteExitError``."""
    if isinstance(value, BaseException):
        return value
    if not isinstance(value, UserError):
        return RemoteError(f"unexpected reply: {value!r}")
    exc: BaseException | None = None
    if value.blob is not None:
        try:
            exc = codec.loads(value.blob)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteError(f"{value.type_name}: {value.message}")
    elif not isinstance(exc, Exception):  # SystemExit, KeyboardInterrupt, GeneratorExit
        what = f"{type(exc).__name__}({', '.join(map(repr, exc.args))})"
        exc = RemoteExitError(
            f"the remote code raised {what} on a replica; it is reported as this error so that "
            "it does not stop the kernel (the replica did not exit). `.original` is that "
            "exception.",
            exc,
        )
    if value.tb:
        exc.__cause__ = RemoteTraceback(value.tb)
        exc.__suppress_context__ = True
        _render_user_frames(exc, value.tb)
    elif isinstance(exc, SerializationError):
        _render_user_frames(exc, "")
    return exc


def _render_user_frames(exc: BaseException, remote_tb: str) -> None:
    """Make IPython show the user's code only: the notebook frames that made the call, then
    the replica's frames (as ipyparallel does, through ``_render_traceback_``). ``%tb`` and
    ``%debug`` still see the local exception."""

    def render() -> list[str]:
        frames = [
            f
            for f in traceback.extract_tb(exc.__traceback__)
            if not f.filename.startswith(_PACKAGE_DIR) and "/IPython/" not in f.filename
        ]
        lines = ["Traceback (most recent call last):"]
        for line in traceback.format_list(frames):
            for filename in {f.filename for f in frames}:
                display = cell_display_name(filename)
                if display:
                    line = line.replace(f'File "{filename}"', f'File "{display}"')
            lines.append(line.rstrip("\n"))
        remote = remote_tb.rstrip("\n").splitlines()
        if remote and remote[0].startswith("Traceback (most recent call last)"):
            remote = remote[1:]
        if remote:
            lines.append(REMOTE_MARK)
            lines.extend(remote)
        else:
            lines.extend(traceback.format_exception_only(type(exc), exc)[-1:])
        return lines

    try:
        exc._render_traceback_ = render  # type: ignore[attr-defined]
    except Exception:
        pass


def encode_args(args: tuple, kwargs: dict, name: str) -> bytes:
    """A call's arguments pickled in the kernel, by the one pickler, before anything is sent
    (an unpicklable argument fails here, naming it, and no replica starts)."""
    try:
        return codec.encode_args(args, kwargs)
    except Exception:
        raise diagnose_args(args, kwargs, name) from None


class Stats(dict):
    """A ``stats()`` snapshot: a dict whose keys also read as attributes.

    Example: ``s = f.stats(); s.invocations == s["invocations"]``.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class CallFuture(Future):
    """A ``concurrent.futures.Future`` whose ``cancel()`` also cancels the remote call."""

    def __init__(self) -> None:
        super().__init__()
        self._nbs_cancel: Any = None

    def cancel(self) -> bool:
        if self.done():
            return False
        if self._nbs_cancel is not None:
            self._nbs_cancel()
        return super().cancel() or self.cancelled()


def _future_done(fut: CallFuture):
    def done(job: Job, ok: bool, value: Any) -> None:
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(rebuild_error(value))

    return done


class _Box:
    """The result slot of one blocking call (cheaper than a Future on the hot path)."""

    __slots__ = ("ok", "value", "event")

    def __init__(self) -> None:
        self.ok: bool | None = None
        self.value: Any = None
        self.event: threading.Event | None = None

    def done(self, job: Job, ok: bool, value: Any) -> None:
        self.value = value
        self.ok = ok
        if self.event is not None:
            self.event.set()


class Invoker:
    """Calls one method (or the function itself) of a pool: the shared call surface of
    function handles, class handles and their methods."""

    def __init__(self, owner: Any, method: str | None, batched: bool):
        self._owner = owner
        self._method = method
        self._batched = batched

    def _pool(self) -> Pool:
        budget.check()  # every call, submit and map of handles and %%serverless cells
        return self._owner._get_pool()

    def _prepare(self, args: tuple, kwargs: dict) -> tuple[Pool, Any]:
        """The pool (fresh code shipped if it changed) and the pickled arguments."""
        payload = None if self._batched else encode_args(args, kwargs, self._owner.name)
        pool = self._pool()
        refresh = getattr(self._owner, "_refresh", None)  # not on %%serverless cell pools
        if refresh is not None:
            refresh(pool)
        return pool, payload

    def call(self, args: tuple, kwargs: dict) -> Any:
        if LOCAL_MODE.get() and hasattr(self._owner, "_run_local"):
            return self._owner._run_local(self._method, args, kwargs)
        pool, payload = self._prepare(args, kwargs)
        box = _Box()
        if self._batched:
            job = None
            self._owner._batcher().add(_one_item(args, kwargs, pool.name), box.done)
        else:
            job = pool.call_sync(self._method, payload, pool.fresh_code, box.done)
        if box.ok is None:
            box.event = threading.Event()
            if box.ok is None:
                try:
                    while not box.event.wait(0.5):
                        pass
                except KeyboardInterrupt:
                    if job is not None:
                        pool.cancel(job)
                    raise
        if box.ok:
            return box.value
        raise rebuild_error(box.value)

    def submit(self, args: tuple, kwargs: dict) -> CallFuture:
        fut = CallFuture()
        if LOCAL_MODE.get() and hasattr(self._owner, "_run_local"):
            try:
                fut.set_result(self._owner._run_local(self._method, args, kwargs))
            except Exception as exc:
                fut.set_exception(exc)
            return fut
        pool, payload = self._prepare(args, kwargs)
        done = _future_done(fut)
        if self._batched:
            self._owner._batcher().add(_one_item(args, kwargs, pool.name), done)
            return fut
        job = Job("call", self._method, (payload, pool.fresh_code), 1, done)
        fut._nbs_cancel = lambda: pool.cancel(job)
        fut.set_running_or_notify_cancel()
        pool.submit(job)
        return fut

    def map(
        self,
        iterables: tuple,
        *,
        star: bool,
        ordered: bool,
        return_exceptions: bool,
        progress: bool | None,
        bucket_by: Any = None,
    ):
        from .mapping import MapRun

        if not iterables:
            raise TypeError("map() needs at least one iterable of inputs")
        if LOCAL_MODE.get() and hasattr(self._owner, "_run_local"):
            run = self._owner._run_local
            if star or len(iterables) > 1:
                rows = iterables[0] if star else zip(*iterables, strict=False)
                return (run(self._method, tuple(r), {}) for r in rows)
            return (run(self._method, (x,), {}) for x in iterables[0])
        if len(iterables) == 1:
            items = iterables[0]
            total = _len(items)
            it = iter(items)
        else:
            lens = [_len(i) for i in iterables]
            total = None if None in lens else min(lens)
            it, star = zip(*iterables, strict=False), True
        pool, _ = self._prepare((), {})
        return MapRun(
            pool,
            self._method,
            iter(it),
            star=star,
            ordered=ordered,
            return_exceptions=return_exceptions,
            total=total,
            progress=progress,
            rebuild=rebuild_error,
            bucket_by=bucket_by,
        )


def _len(obj: Any) -> int | None:
    try:
        return len(obj)
    except TypeError:
        return None


def _one_item(args: tuple, kwargs: dict, name: str) -> Any:
    if len(args) != 1 or kwargs:
        raise TypeError(
            f"{name} is batched (batch_size is set): call it with exactly one positional "
            "item; the function receives a list of items"
        )
    return args[0]


class _Callable:
    """``__call__``/``submit``/``map``/``starmap`` over an Invoker."""

    _invoker: Invoker

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._invoker.call(args, kwargs)

    def submit(self, *args: Any, **kwargs: Any) -> CallFuture:
        """Start the call and return a ``concurrent.futures.Future`` at once.

        Example: ``fut = f.submit(3); fut.result()``; in asyncio,
        ``await asyncio.wrap_future(f.submit(3))``.
        """
        return self._invoker.submit(args, kwargs)

    def map(
        self,
        *iterables: Any,
        ordered: bool = True,
        return_exceptions: bool = False,
        progress: bool | None = None,
        bucket_by: Any = None,
    ):
        """Call for every input, in parallel; results in input order (or as they finish
        with ``ordered=False``). Work starts at once. A batched handle with
        ``bucket_by=key`` gets batches of items of similar key (less padding).

        Example: ``list(f.map(range(10)))``; ``list(f.map(xs, ys))`` zips like ``map``;
        ``list(emb.map(sentences, bucket_by=len))``.
        """
        return self._invoker.map(
            iterables,
            star=False,
            ordered=ordered,
            return_exceptions=return_exceptions,
            progress=progress,
            bucket_by=bucket_by,
        )

    def starmap(
        self,
        iterable: Any,
        *,
        ordered: bool = True,
        return_exceptions: bool = False,
        progress: bool | None = None,
        bucket_by: Any = None,
    ):
        """Like ``map`` with each input unpacked as arguments.

        Example: ``list(pow_.starmap([(2, 3), (3, 2)]))`` -> ``[8, 9]``.
        """
        return self._invoker.map(
            (iterable,),
            star=True,
            ordered=ordered,
            return_exceptions=return_exceptions,
            progress=progress,
            bucket_by=bucket_by,
        )


class PoolOwner:
    """Owns one pool (made on first use, again after a shutdown) and its batcher; shared by
    function handles and class handles. Subclasses give ``_new_pool`` and ``_options``."""

    _pool_obj: Pool | None = None
    _batcher_obj: Any = None
    _batch_method: str | None = None
    _kind = "function"

    def _new_pool(self) -> Pool:
        raise NotImplementedError

    def _refresh(self, pool: Pool) -> None:
        """Fresh code: ship a new version if what the code references changed (functions)."""

    def _get_pool(self) -> Pool:
        pool = self._pool_obj
        if pool is not None and not pool.closed:
            return pool
        with self._lock:
            if self._pool_obj is None or self._pool_obj.closed:
                pool = self._new_pool()
                pool.prepare()
                self._pool_obj, self._batcher_obj = pool, None
            return self._pool_obj

    def _batcher(self) -> Any:
        from .batching import Batcher

        pool = self._get_pool()
        with self._lock:
            if self._batcher_obj is None:
                o = pool.options
                self._batcher_obj = Batcher(
                    pool, self._batch_method, o.batch_size, o.batch_wait_ms / 1000
                )
            return self._batcher_obj

    def _meter(self) -> Any:
        """This handle's meter (before its first call too)."""
        from ..metering.meter import METER

        if self._pool_obj is not None:
            return self._pool_obj.meter
        o = self._options
        return METER.function(
            self._key, name=self.name, kind=self._kind, cpus=o.cpus, gpus=o.gpus, memory=o.memory
        )

    def stats(self) -> Stats:
        """A snapshot of this handle's metrics (SPEC.md "Metrics and cost").

        Example: ``f.stats().p50_ms``, ``f.stats()["cost"]``.
        """
        return Stats(self._meter().snapshot())
