"""The one owner of numbers: per-function counters, latency sketches, replica lifetimes, cost.

The pool calls the hooks; views (widgets, progress bars, comm, CLI report) read snapshots.
Hooks are O(1): counters change under a short per-function lock and latencies are appended to a
small buffer that is folded into DDSketch quantile sketches lazily (at snapshot time, or when
it passes ``FOLD_AT`` entries). Costs come from ``pricing.current()`` at snapshot time, so a
price change applies to the whole history.

Example::

    >>> from nbserverless.meter import Meter
    >>> m = Meter()
    >>> fm = m.function("k", name="square", cpus=1)
    >>> fm.replica_started("r1", t=0.0); fm.submitted(); fm.dispatched()
    >>> fm.replica_busy("r1", t=0.5); fm.replica_idle("r1", t=1.0)
    >>> fm.finished(1, total_s=0.5, exec_s=0.5)
    >>> fm.snapshot(now=2.0)["replica_seconds_busy"]
    0.5
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from . import pricing
from .scope import COUNTERS as _COUNTERS
from .scope import Scope, Sketches
from .scope import costs as _costs
from .scope import totals as _totals

__all__ = ["METER", "Meter", "FunctionMeter", "Scope"]

log = logging.getLogger(__name__)

FOLD_AT = 2048  # buffered latency records before the recording thread folds them
_UNSET: Any = object()


class FunctionMeter:
    """Numbers of one function, class handle, ``%%serverless`` cell (or the platform)."""

    def __init__(
        self,
        meter: Meter,
        key: Any,
        name: str,
        kind: str = "function",
        cpus: float = 1.0,
        gpus: float = 0.0,
        memory: int | float | str | None = None,
        gpu_type: str | None = None,
    ) -> None:
        self._meter = meter
        self.key = key
        self.name = name
        self.kind = kind
        self._lock = threading.Lock()  # counters and buffer; held for a few bytecodes
        self._fold_lock = threading.Lock()  # sketches
        self._gen = 0  # scope generation at which on_activity last fired
        self.keep_alive_label: str | None = None  # set by the pool: the keep-alive in force
        self.set_resources(cpus=cpus, gpus=gpus, memory=memory, gpu_type=gpu_type)
        self._zero(time.time())

    def set_resources(
        self,
        cpus: float = 1.0,
        gpus: float = 0.0,
        memory: int | float | str | None = None,
        gpu_type: str | None = None,
    ) -> None:
        """Resources of each replica (used for cost). The latest call applies to the whole
        history. Example: ``fm.set_resources(cpus=2, memory="4GiB")``."""
        pricing.memory_gib(memory)  # validate early
        self.cpus, self.gpus, self.memory, self.gpu_type = (
            float(cpus or 0),
            float(gpus or 0),
            memory,
            gpu_type,
        )

    def _zero(self, now: float) -> None:
        for c in _COUNTERS:
            setattr(self, c, 0)
        self.in_flight = self.queued = 0
        self.waiting_for_node, self.waiting_for_node_s = 0, 0.0  # set by core.capacity.tick
        self.first_call: float | None = None
        self._buf: list[tuple] = []
        self._sk = Sketches()
        self._live: dict[Any, list] = {}  # rid -> [start, busy_since | None, busy_acc]
        self.first_billed: float | None = None  # earliest replica start since zero
        self._closed_life = self._closed_busy = 0.0
        self.peak_replicas = 0
        self._rate_marks: deque = deque(maxlen=64)

    # ---- hot path ------------------------------------------------------------------------
    def submitted(self, n: int = 1, t: float | None = None) -> None:
        """``n`` items entered the pool (queued += n); the first one sets ``first_call`` (``t``
        or now). Fires ``on_activity`` at this function's first submit after the newest scope."""
        m = self._meter
        fire = False
        with self._lock:
            self.queued += n
            if self.first_call is None:
                self.first_call = time.time() if t is None else t
            if self._gen != m._scope_gen and m._scopes:
                self._gen = fire = m._scope_gen
        m.version += 1
        if fire:
            cb = m.on_activity
            if cb is not None:
                try:
                    cb(self)
                except Exception:  # a view must never break a call
                    log.exception("nbserverless: on_activity callback failed")

    def dispatched(self, n: int = 1) -> None:
        """``n`` queued items started on a replica."""
        with self._lock:
            self.queued -= n
            self.in_flight += n
        self._meter.version += 1

    def finished(
        self,
        n: int = 1,
        errors: int = 0,
        total_s: float = 0.0,
        queue_s: float = 0.0,
        cold_s: float = 0.0,
        exec_s: float = 0.0,
        cold: bool = False,
    ) -> None:
        """``n`` items done, each with these latencies (seconds); ``errors`` of them failed."""
        rec = (n, total_s, queue_s, cold_s, exec_s, cold, self._meter._scope_gen)
        with self._lock:
            self.in_flight -= n
            self.invocations += n
            self.errors += errors
            if cold:
                self.cold_starts += n
            buf = self._buf
            buf.append(rec)
            full = len(buf) >= FOLD_AT
        self._meter.version += 1
        if full:
            self._fold()

    def retried(self, n: int = 1) -> None:
        """A replica died under ``n`` running items; they go back to the queue."""
        with self._lock:
            self.in_flight -= n
            self.queued += n
            self.retries += n
        self._meter.version += 1

    def cancelled(self, n: int = 1, was_queued: bool = True) -> None:
        """``n`` items left without an invocation (Ctrl-C, shutdown)."""
        with self._lock:
            if was_queued:
                self.queued -= n
            else:
                self.in_flight -= n
            self.cancellations += n
        self._meter.version += 1

    # ---- replica lifetimes (wall clock) --------------------------------------------------
    def replica_started(self, rid: Any, t: float | None = None) -> None:
        """Replica ``rid`` exists from ``t``: billed from now on (idle until busy)."""
        t = time.time() if t is None else t
        with self._lock:
            if rid in self._live:  # never billed twice: the first start stands
                return
            self._live[rid] = [t, None, 0.0]
            if self.first_billed is None or t < self.first_billed:
                self.first_billed = t
            n = len(self._live)
            if n > self.peak_replicas:
                self.peak_replicas = n
        self._meter._replicas_changed(self, n)

    def replica_busy(self, rid: Any, t: float | None = None) -> None:
        """Replica ``rid`` went from 0 to >= 1 running calls."""
        t = time.time() if t is None else t
        with self._lock:
            r = self._live.get(rid)
            if r is not None and r[1] is None:
                r[1] = t
        self._meter.version += 1

    def replica_idle(self, rid: Any, t: float | None = None) -> None:
        """Replica ``rid`` went back to 0 running calls."""
        t = time.time() if t is None else t
        with self._lock:
            r = self._live.get(rid)
            if r is not None and r[1] is not None:
                r[2] += max(0.0, t - r[1])
                r[1] = None
        self._meter.version += 1

    def replica_stopped(self, rid: Any, t: float | None = None) -> None:
        """Replica ``rid`` was removed at ``t``; billing stops."""
        t = time.time() if t is None else t
        with self._lock:
            r = self._live.pop(rid, None)
            if r is not None:
                if r[1] is not None:
                    r[2] += max(0.0, t - r[1])
                self._closed_life += max(0.0, t - r[0])
                self._closed_busy += r[2]
            n = len(self._live)
        self._meter._replicas_changed(self, n)

    # ---- reading --------------------------------------------------------------------------
    def _fold(self) -> None:
        """Move buffered latency records into the sketches (and into open scopes)."""
        with self._fold_lock:
            with self._lock:
                buf, self._buf = self._buf, []
            if not buf:
                return
            sk = self._sk
            scopes = list(self._meter._scopes)
            for n, total_s, queue_s, cold_s, exec_s, cold, gen in buf:
                sk.add(n, total_s, queue_s, cold_s, exec_s, cold)
                for s in scopes:
                    if gen >= s.gen:
                        s._sketches(self).add(n, total_s, queue_s, cold_s, exec_s, cold)

    def _raw(self, now: float) -> dict[str, Any]:
        """Counters and replica-seconds at ``now`` (one consistent read)."""
        with self._lock:
            busy, life = self._closed_busy, self._closed_life
            for start, busy_since, acc in self._live.values():
                life += max(0.0, now - start)
                busy += acc + (max(0.0, now - busy_since) if busy_since is not None else 0.0)
            raw = {c: getattr(self, c) for c in _COUNTERS}
            raw.update(
                in_flight=max(0, self.in_flight),
                queued=max(0, self.queued),
                replicas=len(self._live),
                peak_replicas=self.peak_replicas,
                first_call=self.first_call,
                since=_earliest(self.first_call, self.first_billed),
                busy=busy,
                idle=max(0.0, life - busy),
            )
        return raw

    def _rate(self) -> float:
        return pricing.current().replica_rate(self.cpus, self.gpus, self.memory, self.gpu_type)

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """Every ``stats()`` field (SPEC "Metrics and cost"); costs are estimates in USD.
        Example: ``METER.function("k", name="f").snapshot()["p50_ms"]`` -> ``0.0``."""
        now = time.time() if now is None else now
        self._fold()
        raw = self._raw(now)
        rate, prices = self._rate(), pricing.current()
        snap: dict[str, Any] = {"name": self.name, "kind": self.kind}
        snap.update((c, raw[c]) for c in _COUNTERS)
        for k in ("in_flight", "queued", "replicas", "peak_replicas"):
            snap[k] = raw[k]
        snap["waiting_for_node"] = self.waiting_for_node  # calls waiting for a node to come up
        snap["waiting_for_node_s"] = self.waiting_for_node_s  # for how long
        snap["replica_seconds_busy"] = raw["busy"]
        snap["replica_seconds_idle"] = raw["idle"]
        with self._fold_lock:
            self._sk.fields(snap)
        _costs(snap, raw, rate, prices.request)
        first, since = raw["first_call"], raw["since"]
        always_on = 0.0
        if first is not None:  # the interval the cost covers: first call (or start) to now
            always_on = raw["peak_replicas"] * max(0.0, now - since) * rate
        snap["always_on_cost"] = always_on
        snap["saving"] = 1.0 - snap["cost"] / always_on if always_on > 0 else 0.0
        snap["first_call"] = first
        snap.update(
            cpus=self.cpus, gpus=self.gpus, memory=self.memory, gpu_type=self.gpu_type,
            cost_per_s=rate, items_per_s=self._items_per_s(now, raw["invocations"]),
        )  # fmt: skip
        snap["keep_alive"] = self.keep_alive_label  # the keep-alive in force, as text
        snap["estimate"] = True
        return snap

    def _items_per_s(self, now: float, invocations: int) -> float:
        """Throughput over roughly the last 10 s of snapshots."""
        marks = self._rate_marks
        if not marks or now - marks[-1][0] >= 0.25:
            marks.append((now, invocations))
        while len(marks) > 2 and now - marks[1][0] >= 10.0:
            marks.popleft()
        t0, n0 = marks[0]
        return (invocations - n0) / (now - t0) if now - t0 >= 0.5 else 0.0


class Meter:
    """All numbers of this kernel. Use the module-level ``METER``.

    Example: ``METER.snapshot()["totals"]["cost"]``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._functions: dict[Any, FunctionMeter] = {}
        self._scopes: list[Scope] = []
        self._scope_gen = 0
        self.version = 0  # bumped on every record: cheap change detection
        self.on_activity: Callable[[FunctionMeter], None] | None = None
        self.platform = FunctionMeter(self, "__platform__", name="platform", kind="platform")

    def function(
        self,
        key: Any,
        name: str | None = None,
        kind: str | None = None,
        cpus: float = _UNSET,
        gpus: float = _UNSET,
        memory: int | float | str | None = _UNSET,
        gpu_type: str | None = _UNSET,
    ) -> FunctionMeter:
        """Get or create the meter of ``key`` (one per pool). Defaults: ``kind="function"``,
        ``cpus=1``, ``gpus=0``, ``memory=None``, ``gpu_type=None``. On a later call, the
        arguments given replace the old ones (for the whole history of that key).

        Example: ``fm = METER.function(pool_id, name="square", cpus=1)``."""
        given = {"cpus": cpus, "gpus": gpus, "memory": memory, "gpu_type": gpu_type}
        given = {k: v for k, v in given.items() if v is not _UNSET}
        with self._lock:
            fm = self._functions.get(key)
            if fm is None:
                fm = FunctionMeter(self, key, name or str(key), kind or "function", **given)
                self._functions[key] = fm
                self.version += 1
                return fm
        fm.name, fm.kind = name or fm.name, kind or fm.kind
        if given:
            old = {"cpus": fm.cpus, "gpus": fm.gpus, "memory": fm.memory, "gpu_type": fm.gpu_type}
            fm.set_resources(**{**old, **given})
        return fm

    def functions(self) -> list[FunctionMeter]:
        """The function meters, in creation order (not the platform)."""
        with self._lock:
            return list(self._functions.values())

    def get(self, key: Any) -> FunctionMeter | None:
        """The meter of ``key`` if it exists."""
        return self._functions.get(key)

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """``{"time", "functions": [...], "totals": {...}, "platform": {...}}``.

        ``totals.cost`` sums the functions; ``totals.platform_cost`` is the prewarmed generic
        replicas; ``totals.cost_with_platform`` is both."""
        now = time.time() if now is None else now
        rows = [fm.snapshot(now) for fm in self.functions()]
        platform = self.platform.snapshot(now)
        totals = _totals(rows)
        totals["peak_replicas"] = sum(r["peak_replicas"] for r in rows)
        ao = totals["always_on_cost"]
        totals["saving"] = 1.0 - totals["cost"] / ao if ao > 0 else 0.0
        totals["platform_cost"] = platform["cost"]
        totals["platform_replicas"] = platform["replicas"]
        totals["cost_with_platform"] = totals["cost"] + platform["cost"]
        return {
            "time": now,
            "version": self.version,
            "functions": rows,
            "totals": totals,
            "platform": platform,
            "prices": {"source": pricing.current().source, "as_of": pricing.current().as_of},
        }

    def reset(self, now: float | None = None) -> None:
        """Zero every number. Live replicas stay, billed again from ``now``."""
        now = time.time() if now is None else now
        for fm in [*self.functions(), self.platform]:
            with fm._fold_lock, fm._lock:
                live = fm._live
                fm._zero(now)
                fm._live = {rid: [now, now if r[1] is not None else None, 0.0]
                            for rid, r in live.items()}  # fmt: skip
                fm.peak_replicas = len(fm._live)
                fm.first_billed = now if fm._live else None
        with self._lock:
            for s in self._scopes:
                s._base = {id(fm): fm._raw(now) for fm in self._functions.values()}
                s._sk.clear()
        self.version += 1

    def open_scope(self, now: float | None = None) -> Scope:
        """Start collecting deltas (one per notebook cell); ``on_activity`` fires again."""
        now = time.time() if now is None else now
        with self._lock:
            self._scope_gen += 1
            gen = self._scope_gen
        scope = Scope(self, gen, now)
        with self._lock:
            self._scopes.append(scope)
        return scope

    def _close_scope(self, scope: Scope) -> None:
        with self._lock:
            if scope in self._scopes:
                self._scopes.remove(scope)

    def _replicas_changed(self, fm: FunctionMeter, n: int) -> None:
        self.version += 1
        for s in list(self._scopes):
            if n > s._peak.get(id(fm), 0):
                s._peak[id(fm)] = n


def _earliest(*times: float | None) -> float | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None


#: The meter of this kernel.
METER = Meter()
