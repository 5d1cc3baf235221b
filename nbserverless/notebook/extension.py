"""What ``%load_ext nbserverless`` turns on in a kernel, and ``%unload_ext`` turns off.

Loading stays light: Ray's import and the cluster's start run in the background connect, so
the kernel is free again at once and the first call waits only for what is still missing.
"""

from __future__ import annotations

import logging
from typing import Any

from ..core import cluster
from ..core.loop import SUPERVISOR
from . import comm, magics, widgets

log = logging.getLogger("nbserverless")


def load(ip: Any) -> None:
    import nbserverless

    nbserverless._install_budget_hook()  # %%serverless cells can run before nbs.remote
    cluster.connect(background=True)
    SUPERVISOR.ensure_running()  # warms the stand-ins once connected (bridge.py)
    magics.register(ip)
    widgets.register(ip)
    try:
        comm.start()
    except Exception as exc:  # no frontend comm (terminal IPython): panel unavailable
        log.debug("lab comm not started: %s", exc)


def unload(ip: Any) -> None:
    magics.unregister(ip)
    widgets.unregister(ip)
    comm.stop()
