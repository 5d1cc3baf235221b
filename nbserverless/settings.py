"""Session settings: defaults for handles made afterwards (``nbs.config``)."""

from __future__ import annotations

import threading
from typing import Any

#: Defaults of ``@remote`` options and session switches. ``nbs.config(key=value)`` changes them.
DEFAULTS: dict[str, Any] = {
    "cpus": 1.0,
    "gpus": 0.0,
    "memory": None,
    "min_replicas": 0,
    "max_replicas": 8,
    "concurrency": 1,
    "keep_alive": 60.0,
    "timeout": None,
    "retries": 1,
    "batch_size": None,
    "batch_wait_ms": 10.0,
    "env": None,
    "pip": None,
    # session switches
    "inline": True,  # inline widget under cells that call remote code
    "progress": True,  # progress bar for map
    "prewarm": 2,  # warm generic replicas a pool claims instead of starting one (core/warm.py);
    # 0 = strict scale to zero
    "warm_imports": True,  # warm replicas import the package names the kernel has imported
    "node_timeout": 600.0,  # seconds a call may wait for the autoscaler to add a node
    "budget": None,  # USD for this kernel's session; None = no budget (metering/budget.py)
}

_lock = threading.Lock()
_current: dict[str, Any] = dict(DEFAULTS)


def get(key: str) -> Any:
    """Current value of one setting. Example: ``config.get("keep_alive")`` -> ``60.0``."""
    return _current[key]


def current() -> dict[str, Any]:
    """A copy of all current settings."""
    with _lock:
        return dict(_current)


def update(**kwargs: Any) -> dict[str, Any]:
    """Change settings; unknown keys raise ``ValueError`` listing the known ones."""
    unknown = sorted(set(kwargs) - set(DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown setting(s) {', '.join(unknown)}; known settings: {', '.join(sorted(DEFAULTS))}"
        )
    with _lock:
        _current.update(kwargs)
        return dict(_current)


def reset() -> None:
    """Back to the built-in defaults."""
    with _lock:
        _current.clear()
        _current.update(DEFAULTS)
