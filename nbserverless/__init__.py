"""nbserverless: serverless computing from inside a Jupyter notebook.

Example::

    import nbserverless as nbs

    @nbs.remote
    def square(x):
        return x * x

    square(3)                        # runs on a replica that starts on demand
    list(square.map(range(10)))      # parallel, in input order
    square.stats()                   # calls, latency, replicas, estimated cost
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import settings as _settings
from .errors import (
    BudgetExceededError,
    CallTimeoutError,
    CancelledError,
    InfeasibleError,
    RemoteError,
    RemoteExitError,
    RemoteTraceback,
    ReplicaDiedError,
    SerializationError,
)

if TYPE_CHECKING:
    from .handles.remote import remote

__version__ = "0.1.0"

__all__ = [
    "BudgetExceededError",
    "CallTimeoutError",
    "CancelledError",
    "InfeasibleError",
    "RemoteError",
    "RemoteExitError",
    "RemoteTraceback",
    "ReplicaDiedError",
    "SerializationError",
    "config",
    "connect",
    "dashboard",
    "prices",
    "remote",
    "shutdown",
]


def __getattr__(name: str) -> Any:
    # ``remote`` brings Ray with it (a second of CPU to import): on first use, so that
    # ``%load_ext nbserverless`` returns at once and imports Ray in the background.
    if name == "remote":
        from .handles import mapping
        from .handles.remote import remote
        from .notebook import progress

        mapping.progress_factory = progress.progress_bar
        _install_budget_hook()

        globals()["remote"] = remote
        return remote
    if name == "cluster":  # connection helpers; not imported by replicas, which import us too
        from .core import cluster

        globals()["cluster"] = cluster
        return cluster
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})  # completion offers ``remote`` before its import


def _scale_all_to_zero() -> None:
    from .core import pool

    pool.scale_all_to_zero()


def _install_budget_hook() -> None:
    """When the session's budget is spent, every pool scales to zero (metering/budget.py).
    Imports no Ray (``%load_ext`` calls it)."""
    from .metering import budget

    if _scale_all_to_zero not in budget.on_exceeded:
        budget.on_exceeded.append(_scale_all_to_zero)


def connect(address: str | None = None, *, token: str | None = None) -> str:
    """Connect to the embedded local cluster (no address) or an existing one.

    Example: ``nbs.connect()``; ``nbs.connect("ray://head:10001")``; ``nbs.connect("auto")``.
    """
    from .core import session

    return session.connect(address, token=token)  # the loop keeps the warm stock filled


class _Config:
    """``nbs.config(...)``: set defaults for handles made afterwards; with no arguments,
    return the current ones. ``nbs.config.get(key)`` reads one.

    Example: ``nbs.config(keep_alive=30, inline=False)``; ``nbs.config(prewarm=0)``.
    """

    def __call__(self, **settings: Any) -> dict[str, Any]:
        if not settings:
            return _settings.current()
        if "budget" in settings:
            from .metering import budget

            settings["budget"] = budget.validate(settings["budget"])
        from .options import Options

        given = {k: v for k, v in settings.items() if k in Options.__dataclass_fields__}
        if given:  # a bad default fails here, naming it, not at the next decoration
            Options.resolve(**given)
        return _settings.update(**settings)

    get = staticmethod(_settings.get)
    current = staticmethod(_settings.current)
    reset = staticmethod(_settings.reset)

    def __repr__(self) -> str:
        return f"nbs.config({_settings.current()})"


config = _Config()


def prices(**table: Any) -> Any:
    """Set prices (USD per cpu-second, GiB-second, gpu-second, request); no arguments: the
    current table with its source.

    Example: ``nbs.prices(cpu=0.000024, gpu={"A100": 0.0011})``.
    """
    from .metering import pricing

    if table:
        pricing.set_prices(**table)
    return pricing.current()


def dashboard() -> Any:
    """The live dashboard: every function of this kernel and the cluster."""
    from .notebook import dashboard as dash

    return dash.dashboard()


def shutdown() -> None:
    """Scale everything to zero and disconnect (the embedded cluster stops)."""
    from .core import session

    session.shutdown()


def load_ipython_extension(ip: Any) -> None:
    """``%load_ext nbserverless``: magics, inline widgets, the lab comm, and the cluster
    starting in the background so the first cell does not wait for all of it."""
    from .notebook import extension

    extension.load(ip)


def unload_ipython_extension(ip: Any) -> None:
    from .notebook import extension

    extension.unload(ip)
