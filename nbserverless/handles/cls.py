"""``@remote`` on a class: a handle factory. ``Model(args)`` makes a handle and no replica;
each replica runs ``__init__(args)`` once, at its cold start. ``__call__`` and every public
method run remotely, with ``submit``/``map``/``starmap`` too.

Fresh code: a handle runs the class's code as it was when the handle was made (its replicas
keep their instance); a handle made after a method, a helper or a global it reads changed
gets the new code. ``__init__`` arguments are pickled when the handle is made.

Example::

    @nbs.remote(max_replicas=2, batch_size=64)
    class Embedder:
        def __init__(self, path): self.model = load(path)
        def __call__(self, texts): return self.model.encode(texts)
        def dim(self): return self.model.dim

    emb = Embedder("/models/minilm")
    emb("one sentence"); list(emb.map(sentences)); emb.dim()
"""

from __future__ import annotations

import inspect
import itertools
import threading
from typing import Any

from ..core.pool import Pool
from ..options import Options
from ..shipping import Watch, dumps_code, notebook_sources
from .invoker import Invoker, PoolOwner, _Callable, encode_args

_handle_ids = itertools.count(1)


class RemoteClass:
    """What ``@remote`` makes of a class: call it to get a ``ClassHandle``."""

    def __init__(self, cls: type, options: Options):
        self._cls = cls
        self.options = options
        self.name = options.name or cls.__qualname__
        self.__doc__ = cls.__doc__
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__module__ = cls.__module__
        self._code: bytes | None = None
        self._watch: Watch | None = None
        self._funcs: list[Any] = []

    def __call__(self, *args: Any, **kwargs: Any) -> ClassHandle:
        if self._watch is None or self._watch.changed():  # fresh code for each new handle
            watch = Watch(self._cls)
            self._code = dumps_code(self._cls, self.name)
            self._watch, self._funcs = watch, watch.funcs
        # pickled now, by the one pickler: fails here, not at cold start
        init = encode_args(args, kwargs, f"{self.name}()")
        return ClassHandle(self, init, self._code, self._funcs)

    def local(self, *args: Any, **kwargs: Any) -> Any:
        """An ordinary instance in this kernel. Example: ``Embedder.local(path).dim()``."""
        return self._cls(*args, **kwargs)

    def __reduce__(self):
        return (_identity, (self._cls,))

    def __repr__(self) -> str:
        return f"<nbserverless class {self.name}>"


def _identity(x: Any) -> Any:
    return x


class ClassHandle(PoolOwner, _Callable):
    """Replicas of one class with one set of ``__init__`` arguments, and their pool."""

    _kind = "class"
    _batch_method = "__call__"

    def __init__(self, rc: RemoteClass, init: bytes, code: bytes, funcs: list[Any]):
        self._rc = rc
        self._options = rc.options
        self._init = init  # the pickled (args, kwargs) of __init__
        self._code = code
        self._sources = notebook_sources(rc._cls, funcs)
        n = next(_handle_ids)
        self.name = rc.name if n == 1 else f"{rc.name}[{n}]"
        self._key = f"{rc.name}#handle{n}"
        self._lock = threading.Lock()
        self._invoker = Invoker(self, "__call__", rc.options.batch_size is not None)
        self._methods: dict[str, MethodHandle] = {}

    def _new_pool(self) -> Pool:
        rc = self._rc
        return Pool(
            self.name, "class", self._code, self._sources, self._init, rc.options, key=self._key
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if "__call__" not in vars(self._rc._cls) and not any(
            "__call__" in vars(base) for base in self._rc._cls.__mro__[1:-1]
        ):
            raise TypeError(f"{self._rc.name} has no __call__ method; call one of its methods")
        return self._invoker.call(args, kwargs)

    def __getattr__(self, name: str) -> MethodHandle:
        if name.startswith("_"):
            raise AttributeError(name)
        attr = inspect.getattr_static(self._rc._cls, name, None)
        if attr is None:
            raise AttributeError(f"{self._rc.name} has no method {name!r}")
        if not callable(attr) and not isinstance(attr, staticmethod | classmethod):
            raise AttributeError(f"{self._rc.name}.{name} is not a method")
        handle = self._methods.get(name)
        if handle is None:
            handle = self._methods[name] = MethodHandle(self, name)
        return handle

    def __repr__(self) -> str:
        return f"<nbserverless handle {self.name}>"


class MethodHandle(_Callable):
    """One public method of a class handle: call, ``submit``, ``map``, ``starmap``."""

    def __init__(self, handle: ClassHandle, method: str):
        self._handle = handle
        self.name = f"{handle.name}.{method}"
        self._invoker = Invoker(handle, method, batched=False)

    def __repr__(self) -> str:
        return f"<nbserverless method {self.name}>"
