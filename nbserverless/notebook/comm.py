"""Kernel end of the ``nbserverless`` comm that feeds the JupyterLab side panel: it sends the
snapshots of ``snapshot.py`` (DESIGN.md "Comm message schema") and runs the lab's commands.

lab -> kernel: ``{"type": "command", "command": "scale_to_zero" | "reset" | "refresh"}``;
anything else is ignored and logged.

``start()`` opens a comm from the kernel (a comm the browser opens to a target the kernel
has not registered yet is closed at once) and registers the target ``nbserverless`` so a lab
that reloads the page can open its own comm later. A daemon thread sends a snapshot to every
open comm at most ``MAX_RATE`` times a second, and only when ``METER.version`` changed (or a
lab asked with ``refresh``). ``stop()`` closes the comms and ends the thread.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ..metering.meter import METER
from .snapshot import (
    SCHEMA_VERSION,
    build_snapshot,
    cluster_entry,
    cluster_now,
    meter_version,
)

log = logging.getLogger(__name__)

TARGET = "nbserverless"
# node costs grow every second: alone they trigger a snapshot at most this often
NODE_COST_REFRESH_S = 10.0
_NODE_COSTS = ("node_cost", "node_cost_always_on")
MAX_RATE = 4.0  # snapshots per second, at most
_INTERVAL = 1.0 / MAX_RATE


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def _scale_to_zero() -> None:
    from nbserverless.core import pool

    pool.scale_all_to_zero()


def _reset() -> None:
    METER.reset()


# --------------------------------------------------------------------------------------------
# The channel: comms + sender thread
# --------------------------------------------------------------------------------------------


class _Channel:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._comms: dict[str, Any] = {}
        self._clients: dict[str, str] = {}  # comm id -> the lab tab that opened it
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._force = True  # send one snapshot as soon as the thread runs
        self._thread: threading.Thread | None = None
        self._last_version: Any = object()
        self._target_registered = False
        # cluster.summary() can block while Ray starts; a probe thread keeps the latest one
        self._cluster: dict[str, Any] = cluster_entry({})
        self._probe: threading.Thread | None = None
        self.sent = 0  # snapshots sent (for tests and debugging)

    # -- comms -------------------------------------------------------------------------------
    def _add(self, c: Any, client: str | None = None) -> None:
        c.on_msg(self._on_msg)
        c.on_close(self._on_close)
        stale = []
        with self._lock:
            if client is not None:
                # the same browser tab reopened after a page reload: its old comm is dead
                stale = [k for k, v in self._clients.items() if v == client]
                self._clients[c.comm_id] = client
            self._comms[c.comm_id] = c
            old = [self._comms.pop(k) for k in stale if k in self._comms]
            for k in stale:
                self._clients.pop(k, None)
        for o in old:
            try:
                o.close()
            except Exception:
                log.debug("nbserverless comm: close failed", exc_info=True)
        self.request_refresh()

    def _on_close(self, msg: dict) -> None:
        try:
            cid = msg["content"]["comm_id"]
        except Exception:
            return
        with self._lock:
            self._comms.pop(cid, None)
            self._clients.pop(cid, None)

    def _on_target(self, c: Any, open_msg: dict) -> None:
        """A lab opened its own comm (after a page reload or on a kernel it found later)."""
        if self._stop.is_set() or self._thread is None:
            c.close()
            return
        try:
            client = open_msg["content"]["data"].get("client")
        except Exception:
            client = None
        self._add(c, client if isinstance(client, str) and client else None)

    def _on_msg(self, msg: dict) -> None:
        try:
            data = msg["content"]["data"]
        except Exception:
            log.warning("nbserverless comm: message without data ignored")
            return
        try:
            self.handle_command(data)
        except Exception:  # never raise into the kernel's comm dispatch
            log.exception("nbserverless comm: command %r failed", data)

    def handle_command(self, data: Any) -> bool:
        """Run one lab -> kernel command; return whether it was understood."""
        if not isinstance(data, dict) or data.get("type") != "command":
            log.warning("nbserverless comm: unknown message ignored: %r", data)
            return False
        command = data.get("command")
        if command == "scale_to_zero":
            _scale_to_zero()
        elif command == "reset":
            _reset()
        elif command == "refresh":
            pass
        else:
            log.warning("nbserverless comm: unknown command ignored: %r", command)
            return False
        self.request_refresh()
        return True

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        import comm as comm_pkg

        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._force = True
        manager = comm_pkg.get_comm_manager()
        if not self._target_registered:
            manager.register_target(TARGET, self._on_target)
            self._target_registered = True
        c = comm_pkg.create_comm(
            target_name=TARGET, data={"type": "hello", "version": SCHEMA_VERSION}
        )
        self._add(c)
        self._thread = threading.Thread(target=self._run, name="nbserverless-comm", daemon=True)
        self._thread.start()
        if self._probe is None or not self._probe.is_alive():
            self._probe = threading.Thread(
                target=self._probe_cluster, name="nbserverless-comm-cluster", daemon=True
            )
            self._probe.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5)
        self._thread = None
        with self._lock:
            comms = list(self._comms.values())
            self._comms.clear()
            self._clients.clear()
        for c in comms:
            try:
                c.close()
            except Exception:
                log.debug("nbserverless comm: close failed", exc_info=True)
        if self._target_registered:
            try:
                import comm as comm_pkg

                comm_pkg.get_comm_manager().unregister_target(TARGET, self._on_target)
            except Exception:
                log.debug("nbserverless comm: unregister failed", exc_info=True)
            self._target_registered = False

    def request_refresh(self) -> None:
        self._force = True
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    # -- sender ------------------------------------------------------------------------------
    def _probe_cluster(self) -> None:
        """Refresh the cluster summary about once a second; a change triggers a snapshot."""
        costs_at = time.monotonic()
        while not self._stop.is_set():
            summary = cluster_now()
            old = self._cluster
            if summary != old:
                self._cluster = summary
                moved = [k for k in summary if summary.get(k) != old.get(k)]
                due = time.monotonic() - costs_at >= NODE_COST_REFRESH_S
                if due or any(k not in _NODE_COSTS for k in moved):
                    costs_at = time.monotonic()
                    self.request_refresh()
            self._stop.wait(1.0)

    def _run(self) -> None:
        next_ok = 0.0
        while not self._stop.is_set():
            self._wake.wait(timeout=_INTERVAL)
            if self._stop.is_set():
                break
            wait = next_ok - time.monotonic()
            if wait > 0:  # rate limit: at most MAX_RATE snapshots a second
                self._stop.wait(wait)
                if self._stop.is_set():
                    break
            self._wake.clear()
            version = meter_version()
            if not self._force and version == self._last_version:
                continue
            self._force = False
            self._last_version = version
            try:
                self.send_snapshot()
            except Exception:
                log.exception("nbserverless comm: snapshot failed")
            next_ok = time.monotonic() + _INTERVAL

    def send_snapshot(self) -> None:
        with self._lock:
            comms = list(self._comms.values())
        if not comms:
            return
        msg = build_snapshot(cluster=dict(self._cluster))
        for c in comms:
            try:
                c.send(msg)
            except Exception:
                log.debug("nbserverless comm: send failed", exc_info=True)
        self.sent += 1


_CHANNEL = _Channel()


def start() -> None:
    """Open the ``nbserverless`` comm to the lab and start sending snapshots (idempotent).

    Outside a running kernel (terminal IPython, plain Python) this does nothing.
    """
    if not _in_kernel():
        log.debug("nbserverless comm: not in a kernel, not started")
        return
    _CHANNEL.start()


def stop() -> None:
    """Close the comms and stop the sender thread (idempotent)."""
    _CHANNEL.stop()


def running() -> bool:
    return _CHANNEL.running


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except Exception:
        return False
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None
