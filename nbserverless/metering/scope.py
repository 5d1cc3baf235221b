"""Latency sketches, cost arithmetic and per-cell scopes of the meter (see ``meter.py``).

A ``Scope`` holds the deltas of every function since ``METER.open_scope()``: the inline widget
of one notebook cell. Example::

    >>> from nbserverless.metering.meter import Meter
    >>> m = Meter(); fm = m.function("k", name="f")
    >>> scope = m.open_scope(); fm.submitted(); fm.dispatched(); fm.finished(1, total_s=0.01)
    >>> scope.close()["functions"][0]["invocations"]
    1
"""

from __future__ import annotations

import time
from typing import Any

from ddsketch import LogCollapsingLowestDenseDDSketch

from . import pricing

__all__ = ["Scope"]

_QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
_SKETCHES = ("", "queue_", "cold_", "exec_")  # total, queue wait, cold start, execution
COUNTERS = ("invocations", "errors", "retries", "cold_starts", "cancellations")


def _sketch() -> LogCollapsingLowestDenseDDSketch:
    return LogCollapsingLowestDenseDDSketch(0.01, 2048)


class Sketches:
    """Four latency sketches (ms) plus the exact latency sum; quantiles of empty ones are 0.0."""

    __slots__ = ("total", "queue", "cold", "exec", "latency_sum_s")

    def __init__(self) -> None:
        self.total, self.queue, self.cold, self.exec = _sketch(), _sketch(), _sketch(), _sketch()
        self.latency_sum_s = 0.0

    def add(self, n: int, total_s: float, queue_s: float, cold_s: float, exec_s: float, cold: bool):
        w = float(n)
        self.total.add(max(total_s, 0.0) * 1e3, w)
        self.queue.add(max(queue_s, 0.0) * 1e3, w)
        self.exec.add(max(exec_s, 0.0) * 1e3, w)
        if cold:  # cold-start quantiles are over the calls that waited for a new replica
            self.cold.add(max(cold_s, 0.0) * 1e3, w)
        self.latency_sum_s += total_s * n

    def fields(self, out: dict[str, Any]) -> None:
        for prefix, sk in zip(
            _SKETCHES, (self.total, self.queue, self.cold, self.exec), strict=True
        ):
            for name, q in _QUANTILES:
                v = sk.get_quantile_value(q) if sk.count else None
                out[f"{prefix}{name}_ms"] = round(float(v), 4) if v else 0.0
        out["latency_sum_s"] = self.latency_sum_s


def costs(snap: dict[str, Any], raw: dict[str, Any], rate: float, request: float) -> None:
    snap["cost_busy"] = raw["busy"] * rate
    snap["cost_idle"] = raw["idle"] * rate
    snap["cost_requests"] = raw["invocations"] * request
    snap["cost"] = snap["cost_busy"] + snap["cost_idle"] + snap["cost_requests"]


class Scope:
    """Deltas of the meter since ``open_scope()`` (one notebook cell): the inline widget.

    ``snapshot()`` lists the functions the cell called (submitted to) with what they did and
    cost since the scope opened; after ``close()`` it returns the
    final values frozen at close time. Example::

        scope = METER.open_scope(); f(1); final = scope.close(); final["functions"][0]["invocations"]
    """

    def __init__(self, meter: Any, gen: int, t: float) -> None:
        self._meter = meter
        self.gen = gen
        self.opened = t
        self._base: dict[int, dict[str, Any]] = {}  # id(fm) -> raw at open (or zero)
        self._sk: dict[int, Sketches] = {}
        self._peak: dict[int, int] = {}
        self._final: dict[str, Any] | None = None
        for fm in meter.functions():
            self._base[id(fm)] = fm._raw(t)

    def _sketches(self, fm: Any) -> Sketches:
        sk = self._sk.get(id(fm))
        if sk is None:
            sk = self._sk[id(fm)] = Sketches()
        return sk

    def _function(self, fm: Any, now: float) -> dict[str, Any] | None:
        # Only the functions this cell called: another function's keep-alive, or a call
        # submitted by an earlier cell that finishes now, is not this cell's.
        if fm._gen < self.gen:
            return None
        raw = fm._raw(now)
        base = self._base.get(id(fm))
        if base is None:  # made during the cell: everything it has is this cell's
            base = dict.fromkeys(raw, 0)
            base["busy"] = base["idle"] = 0.0
        snap: dict[str, Any] = {"name": fm.name, "kind": fm.kind}
        d = {c: raw[c] - base[c] for c in (*COUNTERS, "busy", "idle")}
        snap.update((c, d[c]) for c in COUNTERS)
        for k in ("in_flight", "queued", "replicas"):
            snap[k] = raw[k]
        snap["peak_replicas"] = max(self._peak.get(id(fm), 0), raw["replicas"])
        snap["replica_seconds_busy"] = max(0.0, d["busy"])
        snap["replica_seconds_idle"] = max(0.0, d["idle"])
        with fm._fold_lock:
            self._sketches(fm).fields(snap)
        costs(snap, {**d, "busy": max(0.0, d["busy"]), "idle": max(0.0, d["idle"])},
               fm._rate(), pricing.current().request)  # fmt: skip
        snap["estimate"] = True
        return snap

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """``{"time", "opened", "functions": [...], "totals": {...}}`` for this scope."""
        if self._final is not None:
            return self._final
        now = time.time() if now is None else now
        fms = self._meter.functions()
        for fm in fms:
            fm._fold()
        rows = [r for r in (self._function(fm, now) for fm in fms) if r is not None]
        return {"time": now, "opened": self.opened, "functions": rows, "totals": totals(rows)}

    def close(self, now: float | None = None) -> dict[str, Any]:
        """Freeze and detach; returns (and keeps) the final snapshot."""
        if self._final is None:
            final = self.snapshot(now)
            self._meter._close_scope(self)
            self._final = final
        return self._final

    @property
    def closed(self) -> bool:
        return self._final is not None


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = (*COUNTERS, "in_flight", "queued", "replicas", "cost", "cost_busy", "cost_idle",
            "cost_requests", "always_on_cost")  # fmt: skip
    tot = {k: sum(r.get(k, 0) for r in rows) for k in keys}
    tot["estimate"] = True
    return tot
