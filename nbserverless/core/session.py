"""The composition root of the kernel side: connect, the loop, the warm stock, the pools,
shutdown. Imports the pieces; nothing below imports it.

Example: ``session.connect()``; ``session.shutdown()``.
"""

from __future__ import annotations

from . import cluster, pool, warm
from .completions import COMPLETIONS
from .loop import SUPERVISOR
from .output import ROUTER

__all__ = ["connect", "shutdown", "all_pools", "scale_all_to_zero", "close_all"]

all_pools = pool.all_pools
scale_all_to_zero = pool.scale_all_to_zero
close_all = pool.close_all


def connect(address: str | None = None, *, token: str | None = None) -> str:
    """Connect to a cluster and start the loop (which keeps the warm stock filled).
    Example: ``connect()`` starts the embedded local cluster."""
    address = cluster.connect(address, token=token)
    SUPERVISOR.ensure_running()
    return address


def shutdown() -> None:
    """Close every pool, stop the loop and the completion thread, remove the warm stock,
    stop the output socket and disconnect."""
    pool.close_all()
    SUPERVISOR.stop()
    warm.STOCK.clear()
    COMPLETIONS.stop()
    ROUTER.stop()
    cluster.disconnect()
