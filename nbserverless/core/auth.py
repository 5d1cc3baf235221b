"""Ray's token authentication when connecting to an existing cluster.

``ray start --head`` (Ray 2.60) turns token authentication on and writes the token to
``~/.ray/auth_token``; a client connects only with ``RAY_AUTH_MODE=token`` and the token (that
file, ``RAY_AUTH_TOKEN_PATH``, ``RAY_AUTH_TOKEN``, or ``nbs.connect(address, token=...)``). This
module sets the mode for the user when a token is at hand, hands the token to Ray, and takes
it out of the kernel's environment once Ray has read it (child processes do not inherit it).
The token is never printed, logged or stored.

Example::

    auth.connect(lambda: ray.init(address=addr), addr, token=None)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import RemoteError

DEFAULT_TOKEN_FILE = Path.home() / ".ray" / "auth_token"


class AuthenticationError(RemoteError, ConnectionError):
    """The cluster refused this kernel's token (or it has none)."""


def token_available(token: str | None = None) -> bool:
    """Whether a token is at hand: given, ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``'s file
    or ``~/.ray/auth_token``."""
    if token or os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(path).expanduser().is_file() if path else DEFAULT_TOKEN_FILE.is_file()


def _is_auth_failure(exc: BaseException | None) -> bool:
    """Ray wraps the refusal (``AuthenticationError``) in a ``ConnectionError``."""
    seen = 0
    while exc is not None and seen < 10:
        text = f"{type(exc).__name__} {exc}"
        if any(s in text for s in ("AuthenticationError", "InvalidAuthToken", "Unauthenticated")):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _refresh_ray_config() -> None:
    """Ray reads ``RAY_AUTH_MODE`` and the token once, when its config is first used: make
    it read them again (what Ray's own ``ray start`` does after enabling token mode)."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except Exception:  # an older Ray without token authentication
        pass


def connect(init: Callable[[], Any], address: str, token: str | None = None) -> Any:
    """Run ``init`` (Ray's ``ray.init`` to ``address``) with token authentication set up;
    a refused token raises one clear line (``AuthenticationError``)."""
    if token:
        os.environ["RAY_AUTH_TOKEN"] = token  # read by Ray during init; removed below
    if not os.environ.get("RAY_AUTH_MODE") and token_available(token):
        os.environ["RAY_AUTH_MODE"] = "token"
    _refresh_ray_config()
    try:
        return init()
    except Exception as exc:
        if not _is_auth_failure(exc):
            raise
        _reset_ray()
        how = (
            "the token given to nbs.connect(token=...)"
            if token
            else "RAY_AUTH_TOKEN"
            if os.environ.get("RAY_AUTH_TOKEN")
            else "the token file (RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
            if token_available()
            else "no token (none given, no RAY_AUTH_TOKEN, no ~/.ray/auth_token)"
        )
        raise AuthenticationError(
            f"the Ray cluster at {address} refused this kernel's authentication: it was sent "
            f"{how}; pass the cluster's token with nbs.connect(address, token=...) or put it "
            "in ~/.ray/auth_token (`ray get-auth-token` on the head prints it)."
        ) from None
    finally:
        os.environ.pop("RAY_AUTH_TOKEN", None)  # Ray has read it; no child process gets it


def _reset_ray() -> None:
    """Undo a failed connect so that the next one starts clean."""
    try:
        import ray

        ray.shutdown()
    except Exception:
        pass
