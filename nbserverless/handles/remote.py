"""``remote``: the decorator that makes a function or a class run on elastic replicas.

Example::

    @nbs.remote
    def square(x): return x * x
"""

from __future__ import annotations

import inspect
from typing import Any

from ..options import Options
from .cls import RemoteClass
from .function import RemoteFunction


def remote(obj: Any = None, /, **options: Any) -> Any:
    """Make a function or class run on elastic replicas. Bare or with options.

    Example::

        @nbs.remote
        def square(x): return x * x

        @nbs.remote(max_replicas=2, batch_size=64)
        class Embedder: ...
    """
    resolved = Options.resolve(**options)

    def wrap(target: Any) -> Any:
        if inspect.isclass(target):
            return RemoteClass(target, resolved)
        if callable(target):
            return RemoteFunction(target, resolved)
        raise TypeError(f"@remote applies to a function or a class, not {type(target).__name__}")

    if obj is None:
        return wrap
    if options:
        raise TypeError("use @remote or @remote(option=...), not both")
    return wrap(obj)
