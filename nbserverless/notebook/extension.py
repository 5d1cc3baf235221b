"""What ``%load_ext nbserverless`` turns on in a kernel, and ``%unload_ext`` turns off.

Loading stays light: Ray's import and the cluster's start run in the background connect, so
the kernel is free again at once and the first call waits only for what is still missing.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any

from ..core import cluster
from ..core.loop import SUPERVISOR
from . import comm, late, magics, widgets

log = logging.getLogger("nbserverless")


def load(ip: Any) -> None:
    import nbserverless

    nbserverless._install_budget_hook()  # %%serverless cells can run before nbs.remote
    cluster.connect(background=True)
    SUPERVISOR.ensure_running()  # warms the stand-ins once connected (bridge.py)
    magics.register(ip)
    widgets.register(ip)
    late.register(ip)  # output of calls still running when their cell ended; %debug
    ip.events.register("post_run_cell", _quiet_sigterm)
    try:
        comm.start()
    except Exception as exc:  # no frontend comm (terminal IPython): panel unavailable
        log.debug("lab comm not started: %s", exc)


def _quiet_sigterm(*args: Any) -> None:
    """Once Ray is connected, give SIGTERM back to Python (the kernel's main thread, after a
    cell). Ray's core worker installs a C++ failure-signal handler for SIGTERM too: a kernel
    shut down with SIGTERM (Jupyter does, after its shutdown request) printed a native stack
    dump into the Jupyter server's log. Python's own handler (the default: exit) is restored;
    crash signals (SIGSEGV, SIGABRT) keep Ray's handler."""
    ray = sys.modules.get("ray")
    if ray is None or threading.current_thread() is not threading.main_thread():
        return
    try:
        if not ray.is_initialized():
            return
        handler = signal.getsignal(signal.SIGTERM)
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)
    except Exception:
        log.debug("nbserverless: SIGTERM handler not restored", exc_info=True)
    ip = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    if ip is not None:
        try:
            ip.events.unregister("post_run_cell", _quiet_sigterm)
        except ValueError:
            pass


def unload(ip: Any) -> None:
    try:
        ip.events.unregister("post_run_cell", _quiet_sigterm)
    except ValueError:
        pass
    magics.unregister(ip)
    widgets.unregister(ip)
    late.unregister(ip)
    comm.stop()
