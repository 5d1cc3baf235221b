"""What ``%load_ext nbserverless`` turns on in a kernel, and ``%unload_ext`` turns off."""

from __future__ import annotations

import logging
from typing import Any

from . import cluster

log = logging.getLogger("nbserverless")


def load(ip: Any) -> None:
    cluster.connect(background=True)
    try:
        from . import magics

        magics.register(ip)
    except ImportError:  # magics land separately
        pass
    try:
        from . import widgets

        widgets.register(ip)
    except ImportError:
        pass
    try:
        from . import comm

        comm.start()
    except Exception as exc:  # no frontend comm (terminal IPython): panel unavailable
        log.debug("lab comm not started: %s", exc)


def unload(ip: Any) -> None:
    for name, fn in (("magics", "unregister"), ("widgets", "unregister"), ("comm", "stop")):
        try:
            module = __import__(f"nbserverless.{name}", fromlist=[fn])
            getattr(module, fn)(*([ip] if name != "comm" else []))
        except ImportError:
            pass
