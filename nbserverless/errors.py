"""Exceptions raised by nbserverless itself (user exceptions keep their own type)."""

from __future__ import annotations

from .worker.codec import SerializationError  # noqa: F401  (raised on both sides; defined there)


class RemoteError(Exception):
    """Base class of infrastructure failures: a replica or node died, a timeout, an
    infeasible resource request. The message says what happened and what to change."""


class ReplicaDiedError(RemoteError):
    """The replica running the call died (process exit, out of memory, node lost) and the
    call had no retries left.

    Example: ``@remote(retries=3)`` re-runs the call on another replica up to 3 times.
    """


class CallTimeoutError(RemoteError, TimeoutError):
    """A call ran longer than the handle's ``timeout``; its replica was recycled.
    ``except TimeoutError`` catches it."""


class InfeasibleError(RemoteError):
    """The cluster can never provide the requested resources (e.g. ``gpus=1`` and no GPU)."""


class CancelledError(RemoteError):
    """The call was cancelled (Ctrl-C in the notebook, or ``future.cancel()``)."""


class RemoteExitError(RemoteError):
    """The remote code raised ``SystemExit``, ``KeyboardInterrupt`` or ``GeneratorExit``: it is
    reported as this error (re-raising it in the kernel would stop the kernel's flow).
    ``original`` is the exception raised remotely.

    Example: ``except nbs.RemoteExitError as e: e.original.code``.
    """

    def __init__(self, message: str, original: BaseException | None = None):
        super().__init__(message)
        self.original = original


class BudgetExceededError(RemoteError):
    """The session's cost budget (``nbs.config(budget=...)``) is spent: new calls are
    refused until it is raised. The message says what was spent and how to raise it."""


class RemoteTraceback(Exception):
    """Carries the traceback text of an exception raised on a replica. It is attached as
    the ``__cause__`` of the re-raised user exception, so the notebook shows both."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return "the call failed on a replica; the remote traceback:\n" + self.tb.rstrip("\n")
