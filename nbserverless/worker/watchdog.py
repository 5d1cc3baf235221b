"""A replica's watchdog: the process ends as soon as the node that started it is gone.

Ray starts every worker process from its node's raylet. When the kernel that owns an embedded
cluster is killed (SIGKILL leaves it no time to clean up), the raylet goes with it (Ray starts
its daemons with ``PR_SET_PDEATHSIG``), but a worker only notices after its GCS reconnection
timeout (``RAY_gcs_rpc_server_reconnect_timeout_s``, set to 300 s for the kernel's cluster):
until then it lives on, reparented to PID 1 (or the nearest subreaper), holding its memory
and whatever it imported. A worker whose parent changed has lost its raylet for good, so the
watchdog ends it at once.

Example::

    from nbserverless.worker import watchdog
    watchdog.start()          # in the replica process, once; a no-op when already running
"""

from __future__ import annotations

import os
import threading

INTERVAL_S = 0.5
_started = threading.Lock()
_thread: threading.Thread | None = None


def orphaned(parent: int) -> bool:
    """Whether this process lost ``parent`` (it was reparented)."""
    return os.getppid() != parent


def start(interval: float = INTERVAL_S) -> bool:
    """Watch this process's parent (the raylet) from a daemon thread; exit when it is gone.

    Returns whether a watchdog is running now. Example: ``watchdog.start()`` -> ``True``.
    """
    global _thread
    with _started:
        if _thread is not None and _thread.is_alive():
            return True
        parent = os.getppid()
        if parent <= 1:  # already an orphan, or not started by a raylet: nothing to watch
            return False
        _thread = threading.Thread(
            target=_watch, args=(parent, interval), name="nbs-watchdog", daemon=True
        )
        _thread.start()
        return True


def _watch(parent: int, interval: float) -> None:
    stop = threading.Event()
    while not stop.wait(interval):
        if orphaned(parent):
            os._exit(1)  # no cleanup can reach a kernel or raylet that are gone
