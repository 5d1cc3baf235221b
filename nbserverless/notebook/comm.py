"""Kernel end of the ``nbserverless`` comm that feeds the JupyterLab side panel.

The schema is DESIGN.md "Comm message schema". Kernel -> lab::

    {"type": "snapshot", "version": 2, "time": ..., "cluster": {...},
     "functions": [{...}, ...], "totals": {...}}

Version 2 adds to ``cluster`` the nodes (``worker_nodes``, ``nodes_pending``, ``nodes_peak``,
``autoscaling``, ``node_cost``, ``node_cost_always_on`` and ``node_history``, the last
``NODE_HISTORY_POINTS`` changes as ``[[unix time, nodes], ...]``) and to each function
``waiting_for_node``, ``waiting_for_node_s`` and ``keep_alive`` (text). The cluster's address
is sent as before; a token never is (only the fields listed here leave the kernel).

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
import math
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

TARGET = "nbserverless"
SCHEMA_VERSION = 2
NODE_HISTORY_POINTS = 60  # node-count changes sent, newest last
# node costs grow every second: alone they trigger a snapshot at most this often
NODE_COST_REFRESH_S = 10.0
_NODE_COSTS = ("node_cost", "node_cost_always_on")
MAX_RATE = 4.0  # snapshots per second, at most
_INTERVAL = 1.0 / MAX_RATE

# Fields of a function entry that the panel reads; anything else the meter offers that is a
# JSON scalar is passed through as well.
FUNCTION_FIELDS = (
    "name",
    "kind",
    "invocations",
    "errors",
    "retries",
    "cold_starts",
    "cancellations",
    "in_flight",
    "queued",
    "replicas",
    "peak_replicas",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "exec_p50_ms",
    "exec_p95_ms",
    "cost",
    "cost_idle",
    "always_on_cost",
    "saving",
    "waiting_for_node",
    "waiting_for_node_s",
    "keep_alive",
)
CLUSTER_FIELDS = (
    "address",
    "nodes",
    "cpus",
    "cpus_used",
    "gpus",
    "gpus_used",
    "worker_nodes",
    "nodes_pending",
    "nodes_peak",
    "autoscaling",
    "node_cost",
    "node_cost_always_on",
)


# --------------------------------------------------------------------------------------------
# Snapshot building (pure, usable without a kernel)
# --------------------------------------------------------------------------------------------


def _json_scalar(v: Any) -> Any:
    """A JSON-safe scalar or ``None``: NaN/inf and non-scalars become ``None``."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    # numpy scalars and the like
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(f):
        return None
    return int(f) if f.is_integer() and "int" in type(v).__name__ else f


def _clean_dict(d: Any, fields: tuple[str, ...] | None = None) -> dict[str, Any]:
    if not isinstance(d, dict):
        return {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        if not isinstance(k, str):
            continue
        if isinstance(v, (dict, list, tuple, set)):
            continue
        out[k] = _json_scalar(v)
    if fields:
        for k in fields:
            out.setdefault(k, None)
    return out


def _meter() -> Any:
    try:
        from nbserverless.metering.meter import METER
    except Exception:  # not written yet, or broken: the panel shows an empty table
        return None
    return METER


def _meter_version() -> Any:
    """What a new snapshot depends on: the meter's version and the budget's state."""
    m = _meter()
    version = getattr(m, "version", None) if m is not None else None
    try:
        from nbserverless import settings
        from nbserverless.metering import budget

        b = budget._BUDGET
        version = (version, settings.get("budget"), b.warn, b.exceeded)
    except Exception:
        pass
    try:  # a wait for a node and the keep-alive change without a meter record
        live = tuple(
            (fm.waiting_for_node, int(fm.waiting_for_node_s or 0), fm.keep_alive_label)
            for fm in m.functions()
        )
    except Exception:
        live = ()
    return (version, live)


def _node_history(raw: Any) -> list[list[float]]:
    """The last ``NODE_HISTORY_POINTS`` ``[time, nodes]`` pairs that are finite numbers."""
    out: list[list[float]] = []
    for p in raw if isinstance(raw, (list, tuple)) else ():
        if isinstance(p, (list, tuple)) and len(p) == 2:
            t, n = _json_scalar(p[0]), _json_scalar(p[1])
            if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (t, n)):
                out.append([t, n])
    return out[-NODE_HISTORY_POINTS:]


def cluster_entry(summary: Any) -> dict[str, Any]:
    """The snapshot's ``cluster`` from a ``cluster.summary()`` dict: only the schema's fields
    (so nothing else the summary may hold, such as credentials, leaves the kernel).

    Example: ``cluster_entry({"address": "local", "nodes": 1})["nodes_peak"]`` -> ``None``."""
    src = summary if isinstance(summary, dict) else {}
    out = _clean_dict({k: src[k] for k in CLUSTER_FIELDS if k in src}, CLUSTER_FIELDS)
    out["node_history"] = _node_history(src.get("node_history"))
    return out


def _cluster_summary() -> dict[str, Any]:
    try:
        from nbserverless.core import cluster

        return cluster_entry(cluster.summary())
    except Exception:
        log.debug("nbserverless comm: cluster.summary() failed", exc_info=True)
        return cluster_entry({})


def build_snapshot(
    now: float | None = None, cluster: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One snapshot message per DESIGN.md from ``METER.snapshot()`` and ``cluster.summary()``
    (or the given cluster summary)."""
    now = time.time() if now is None else now
    meter = _meter()
    raw: dict[str, Any] = {}
    if meter is not None:
        try:
            raw = meter.snapshot(now=now) or {}
        except TypeError:
            raw = meter.snapshot() or {}
    functions = []
    for f in raw.get("functions") or []:
        entry = _clean_dict(f, FUNCTION_FIELDS)
        if entry.get("name") is None:
            continue
        entry["name"] = str(entry["name"])
        if not entry.get("invocations"):  # no finished call: no latency (shown as "–")
            for k in ("p50_ms", "p95_ms", "p99_ms", "exec_p50_ms", "exec_p95_ms"):
                entry[k] = None
        functions.append(entry)
    totals = _clean_dict(raw.get("totals"))
    totals.setdefault("invocations", sum(int(f.get("invocations") or 0) for f in functions))
    totals.setdefault("cost", sum(float(f.get("cost") or 0.0) for f in functions))
    totals["replicas"] = sum(int(f.get("replicas") or 0) for f in functions)
    msg: dict[str, Any] = {
        "type": "snapshot",
        "version": SCHEMA_VERSION,
        "time": _json_scalar(raw.get("time", now)) or now,
        "cluster": _cluster_summary() if cluster is None else cluster_entry(cluster),
        "functions": functions,
        "totals": totals,
    }
    platform = raw.get("platform")
    if isinstance(platform, dict):
        msg["platform"] = _clean_dict(platform)
    prices = raw.get("prices")
    if isinstance(prices, dict):
        msg["prices"] = _clean_dict(prices)
    try:
        from nbserverless.metering import budget

        b = budget.state()
    except Exception:
        log.debug("nbserverless comm: budget state failed", exc_info=True)
        b = None
    if b is not None:
        msg["budget"] = _clean_dict(b)
    return msg


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def _scale_to_zero() -> None:
    from nbserverless.core import pool

    pool.scale_all_to_zero()


def _reset() -> None:
    meter = _meter()
    if meter is None:
        log.warning("nbserverless comm: reset ignored, no meter")
        return
    meter.reset()


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
            summary = _cluster_summary()
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
            version = _meter_version()
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
