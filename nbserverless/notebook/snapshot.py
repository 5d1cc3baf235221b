"""The snapshot message the kernel sends the JupyterLab side panel: the schema of DESIGN.md
"Comm message schema", built from ``METER.snapshot()`` and ``cluster.summary()``; pure, usable
without a kernel (``comm.py`` sends it). Kernel -> lab::

    {"type": "snapshot", "version": 2, "time": ..., "cluster": {...},
     "functions": [{...}, ...], "totals": {...}}

Version 2 adds to ``cluster`` the nodes (``worker_nodes``, ``nodes_pending``, ``nodes_peak``,
``autoscaling``, ``node_cost``, ``node_cost_always_on`` and ``node_history``, the last
``NODE_HISTORY_POINTS`` changes as ``[[unix time, nodes], ...]``) and to each function
``waiting_for_node``, ``waiting_for_node_s`` and ``keep_alive`` (text). The cluster's address
is sent as before; a token never is (only the fields listed here leave the kernel).

Example: ``build_snapshot(cluster={"address": "local", "nodes": 1})["version"]`` -> ``2``.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from .. import settings
from ..metering import budget
from ..metering.meter import METER

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
NODE_HISTORY_POINTS = 60  # node-count changes sent, newest last

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


def json_scalar(v: Any) -> Any:
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


def clean_dict(d: Any, fields: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The JSON-scalar items of ``d`` with string keys, each of ``fields`` present (``None``
    if missing). Example: ``clean_dict({"a": float("nan"), "b": [1]}, ("c",))`` ->
    ``{"a": None, "c": None}``."""
    if not isinstance(d, dict):
        return {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        if not isinstance(k, str):
            continue
        if isinstance(v, (dict, list, tuple, set)):
            continue
        out[k] = json_scalar(v)
    if fields:
        for k in fields:
            out.setdefault(k, None)
    return out


def meter_version() -> Any:
    """What a new snapshot depends on: the meter's version and the budget's state."""
    b = budget._BUDGET
    version = (METER.version, settings.get("budget"), b.warn, b.exceeded)
    # a wait for a node and the keep-alive change without a meter record
    live = tuple(
        (fm.waiting_for_node, int(fm.waiting_for_node_s or 0), fm.keep_alive_label)
        for fm in METER.functions()
    )
    return (version, live)


def node_history_points(raw: Any) -> list[list[float]]:
    """The last ``NODE_HISTORY_POINTS`` ``[time, nodes]`` pairs that are finite numbers."""
    out: list[list[float]] = []
    for p in raw if isinstance(raw, (list, tuple)) else ():
        if isinstance(p, (list, tuple)) and len(p) == 2:
            t, n = json_scalar(p[0]), json_scalar(p[1])
            if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (t, n)):
                out.append([t, n])
    return out[-NODE_HISTORY_POINTS:]


def cluster_entry(summary: Any) -> dict[str, Any]:
    """The snapshot's ``cluster`` from a ``cluster.summary()`` dict: only the schema's fields
    (so nothing else the summary may hold, such as credentials, leaves the kernel).

    Example: ``cluster_entry({"address": "local", "nodes": 1})["nodes_peak"]`` -> ``None``."""
    src = summary if isinstance(summary, dict) else {}
    out = clean_dict({k: src[k] for k in CLUSTER_FIELDS if k in src}, CLUSTER_FIELDS)
    out["node_history"] = node_history_points(src.get("node_history"))
    return out


def cluster_now() -> dict[str, Any]:
    """``cluster_entry(cluster.summary())``; the empty entry if the summary fails."""
    try:
        from nbserverless.core import cluster

        return cluster_entry(cluster.summary())
    except Exception:
        log.debug("nbserverless snapshot: cluster.summary() failed", exc_info=True)
        return cluster_entry({})


def build_snapshot(
    now: float | None = None, cluster: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One snapshot message per DESIGN.md from ``METER.snapshot()`` and ``cluster.summary()``
    (or the given cluster summary)."""
    now = time.time() if now is None else now
    raw = METER.snapshot(now=now)
    functions = []
    for f in raw.get("functions") or []:
        entry = clean_dict(f, FUNCTION_FIELDS)
        if entry.get("name") is None:
            continue
        entry["name"] = str(entry["name"])
        if not entry.get("invocations"):  # no finished call: no latency (shown as "–")
            for k in ("p50_ms", "p95_ms", "p99_ms", "exec_p50_ms", "exec_p95_ms"):
                entry[k] = None
        functions.append(entry)
    totals = clean_dict(raw.get("totals"))
    totals.setdefault("invocations", sum(int(f.get("invocations") or 0) for f in functions))
    totals.setdefault("cost", sum(float(f.get("cost") or 0.0) for f in functions))
    totals["replicas"] = sum(int(f.get("replicas") or 0) for f in functions)
    msg: dict[str, Any] = {
        "type": "snapshot",
        "version": SCHEMA_VERSION,
        "time": json_scalar(raw.get("time", now)) or now,
        "cluster": cluster_now() if cluster is None else cluster_entry(cluster),
        "functions": functions,
        "totals": totals,
    }
    platform = raw.get("platform")
    if isinstance(platform, dict):
        msg["platform"] = clean_dict(platform)
    prices = raw.get("prices")
    if isinstance(prices, dict):
        msg["prices"] = clean_dict(prices)
    try:
        b = budget.state()
    except Exception:
        log.debug("nbserverless snapshot: budget state failed", exc_info=True)
        b = None
    if b is not None:
        msg["budget"] = clean_dict(b)
    return msg
