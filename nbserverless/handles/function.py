"""The function handle ``@remote`` makes of a function: ``__call__``, ``local``, ``submit``,
``map``, ``starmap``, ``stats``. Thin: it turns calls into pool jobs.

Example::

    @nbs.remote(cpus=0.5)
    def square(x):
        return x * x

    square(3), list(square.map(range(4))), square.submit(2).result()
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from ..core.pool import Pool
from ..options import Options
from ..shipping import dumps_code, notebook_sources
from .invoker import Invoker, PoolOwner, _Callable


class RemoteFunction(PoolOwner, _Callable):
    """The handle ``@remote`` makes of a function."""

    def __init__(self, fn: Any, options: Options):
        functools.update_wrapper(self, fn)
        self._fn = fn
        self.options = self._options = options
        self.name = options.name or fn.__qualname__
        self._key = f"{self.name}#{id(self)}"
        self._lock = threading.Lock()
        self._invoker = Invoker(self, None, options.batch_size is not None)

    def _new_pool(self) -> Pool:
        code = dumps_code(self._fn, self.name)
        sources = notebook_sources(self._fn)
        return Pool(self.name, "function", code, sources, None, self.options, key=self._key)

    def local(self, *args: Any, **kwargs: Any) -> Any:
        """Run in this kernel, no cluster. Example: ``square.local(3)`` -> ``9``."""
        return self._fn(*args, **kwargs)

    def __reduce__(self):
        # Inside a replica the handle's name refers to the plain function.
        return (_identity, (self._fn,))

    def __repr__(self) -> str:
        return f"<nbserverless function {self.name}>"


def _identity(x: Any) -> Any:
    return x
