"""The function handle ``@remote`` makes of a function: ``__call__``, ``local``, ``submit``,
``map``, ``starmap``, ``stats``. Thin: it turns calls into pool jobs.

Fresh code: each call checks, cheaply (identities, no pickling), whether a notebook function
or class the code reaches was redefined or a global it reads was rebound since the code was
pickled, and then ships the new version before the call. In-place changes to a captured object
(``lst.append(4)``) are not tracked: pass such objects as arguments.

Example::

    @nbs.remote(cpus=0.5)
    def square(x):
        return x * x

    square(3), list(square.map(range(4))), square.submit(2).result()
"""

from __future__ import annotations

import functools
import inspect
import threading
import weakref
from typing import Any

import ray

from ..core.pool import Pool
from ..options import Options
from ..shipping import Watch, dumps_code, notebook_sources
from .invoker import LOCAL_MODE, Invoker, PoolOwner, _Callable


def callable_name(fn: Any) -> str:
    """The qualified name of a function, a ``functools.partial`` (its function's) or a
    callable object (its type's). Example: ``callable_name(partial(pow, 2))`` -> ``"pow"``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__qualname__


def check_not_generator(fn: Any, name: str) -> None:
    """Generator functions cannot return their items through one call: say to use ``map``."""
    target = fn.func if isinstance(fn, functools.partial) else fn
    if inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target):
        raise TypeError(
            f"@remote: {name} is a generator function; a remote call returns one value. To "
            f"stream results, make it return one item per input and use {name}.map(inputs) "
            "(results arrive as they finish with ordered=False), or return a list."
        )


class RemoteFunction(PoolOwner, _Callable):
    """The handle ``@remote`` makes of a function."""

    def __init__(self, fn: Any, options: Options):
        if inspect.isfunction(fn) or inspect.ismethod(fn):
            functools.update_wrapper(self, fn)
        else:  # a functools.partial or a callable object
            self.__name__ = self.__qualname__ = callable_name(fn)
            self.__doc__ = getattr(fn, "__doc__", None)
        self._fn = fn
        self.options = self._options = options
        self.name = options.name or callable_name(fn)
        check_not_generator(fn, self.name)
        self._key = f"{self.name}#{id(self)}"
        self._lock = threading.Lock()
        self._invoker = Invoker(self, None, options.batch_size is not None)
        self._watch: Watch | None = None
        self._version = 0
        self._rep_ids: Any = None  # the replaced handle's replica numbering (one meter row)
        _replace_earlier(self)

    def _new_pool(self) -> Pool:
        self._watch = watch = Watch(self._fn)  # before pickling: a change meanwhile ships
        self._version = 0
        code = dumps_code(self._fn, self.name)
        sources = notebook_sources(self._fn, watch.funcs)
        pool = Pool(self.name, "function", code, sources, None, self.options, key=self._key)
        if self._rep_ids is not None:  # replica ids stay unique within the shared meter row
            pool._rep_ids = self._rep_ids
        return pool

    def _refresh(self, pool: Pool) -> None:
        watch = self._watch
        if watch is None or not watch.changed():
            return
        with self._lock:
            if self._watch is not watch:
                return  # another thread shipped it
            fresh = Watch(self._fn)
            code = dumps_code(self._fn, self.name)
            sources = notebook_sources(self._fn, fresh.funcs)
            ref = ray.put({"code": code, "sources": sources})
            self._version += 1
            pool.fresh_code = (self._version, [ref])
            self._watch = fresh

    def _run_local(self, method: str | None, args: tuple, kwargs: dict) -> Any:
        return self._fn(*args, **kwargs)

    def local(self, *args: Any, **kwargs: Any) -> Any:
        """Run in this kernel, no cluster; calls of remote functions it makes run locally too
        (a recursive function stays local). Example: ``square.local(3)`` -> ``9``."""
        token = LOCAL_MODE.set(True)
        try:
            return self._fn(*args, **kwargs)
        finally:
            LOCAL_MODE.reset(token)

    def __reduce__(self):
        # Inside a replica the handle's name refers to the plain function.
        return (_identity, (self._fn,))

    def __repr__(self) -> str:
        return f"<nbserverless function {self.name}>"


def _identity(x: Any) -> Any:
    return x


#: notebook functions by (module, qualified name): a redefinition replaces the earlier handle
_DEFINED: weakref.WeakValueDictionary[tuple[str, str], RemoteFunction] = (
    weakref.WeakValueDictionary()
)
_DEFINED_LOCK = threading.Lock()


def _replace_earlier(handle: RemoteFunction) -> None:
    """Re-running the cell that defines a function replaces it: the new handle takes the old
    one's meter row, and the old pool drains (running and queued calls finish) and removes
    its replicas at once instead of after ``keep_alive``."""
    fn = handle._fn
    if not inspect.isfunction(fn) or fn.__module__ != "__main__":
        return
    key = (fn.__module__, fn.__qualname__)
    with _DEFINED_LOCK:
        old = _DEFINED.get(key)
        _DEFINED[key] = handle
    if old is None or old is handle:
        return
    handle._key = old._key
    with old._lock:
        pool = old._pool_obj
    if pool is not None:
        handle._rep_ids = pool._rep_ids
        pool.retire()
