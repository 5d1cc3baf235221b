"""The kernel's tick thread (the supervisor): keep-alive, timeouts, cancellation grace, giving
way between pools, the node ledger on an autoscaling cluster, and registered hooks (the warm
stock's refill).

Example: ``SUPERVISOR.ensure_running()``; ``SUPERVISOR.hooks.append(fn)``.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from . import cluster

log = logging.getLogger("nbserverless")
CANCEL_GRACE_S = 2.0
NODES_EVERY_S = 1.0  # how often the node ledger is fed on an autoscaling cluster


class _Registry:
    """The pools the loop ticks (anything with ``tick``, ``fail_all``,
    ``waiting_for_resources``, ``give_way`` and the cancellation hooks). A pool with nothing
    left to do leaves it (``remove``) and comes back at its next call, so ticks cost nothing
    for pools that were called once; ``every`` still lists it (weakly) for shutdown."""

    def __init__(self) -> None:
        self._pools: dict[int, Any] = {}
        self._every: weakref.WeakSet = weakref.WeakSet()
        self._lock = threading.Lock()

    def add(self, pool: Any) -> None:
        with self._lock:
            self._pools[id(pool)] = pool
            self._every.add(pool)

    def remove(self, pool: Any) -> None:
        with self._lock:
            self._pools.pop(id(pool), None)

    def all(self) -> list[Any]:
        """The pools the loop ticks now."""
        with self._lock:
            return list(self._pools.values())

    def every(self) -> list[Any]:
        """Every pool still referenced, ticked or not."""
        with self._lock:
            return list(self._every)


registry = _Registry()


class Supervisor:
    """One daemon thread per kernel: keep-alive, timeouts, cancellation grace, giving way."""

    TICK_S = 0.05

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._cancels: list[tuple[float, Any, Any]] = []
        self.hooks: list[Callable[[float], None]] = []  # e.g. the warm stock's refill
        self._lock = threading.Lock()
        self._failing: set[int] = set()  # pools whose last tick failed (logged once)
        self._nodes_due = 0.0

    def ensure_running(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="nbs-supervisor", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(5)
        self._thread = None

    def watch_cancel(self, pool: Any, job: Any) -> None:
        with self._lock:
            self._cancels.append((time.monotonic() + CANCEL_GRACE_S, pool, job))

    def _run(self) -> None:
        while not self._stop.wait(self.TICK_S):
            try:
                self._tick()
            except Exception:  # the supervisor must outlive any one pool's bug
                log.exception("nbserverless supervisor tick failed")

    def _tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [c for c in self._cancels if c[0] <= now]
            self._cancels = [c for c in self._cancels if c[0] > now]
        for _, pool, job in due:
            try:
                pool.force_cancel(job)
            except Exception:
                log.exception("nbserverless: force cancel failed")
        if now >= self._nodes_due and cluster.autoscaling():
            # Node cost is metered between observations: follow the nodes while connected,
            # not only when a view asks.
            self._nodes_due = now + NODES_EVERY_S
            cluster.summary()
        if cluster.address() is not None:
            for hook in list(self.hooks):
                try:
                    hook(now)
                except Exception:
                    log.exception("nbserverless loop hook failed")
        pools = registry.all()
        waiting = []
        for pool in pools:  # one pool's failure stays that pool's
            try:
                pool.tick(now)
                if pool.waiting_for_resources(now):
                    waiting.append(pool)
                self._failing.discard(id(pool))
            except Exception as exc:
                if id(pool) not in self._failing:  # once, not 20 times a second
                    self._failing.add(id(pool))
                    log.exception(
                        "nbserverless: pool %s failed its tick", getattr(pool, "name", "?")
                    )
                try:
                    pool.fail_all(exc)
                except Exception:
                    log.exception("nbserverless: pool %s could not fail its calls", pool)
        if waiting:
            for other in pools:
                try:
                    if other not in waiting and other.give_way():
                        break
                except Exception:
                    log.exception("nbserverless: give-way failed")


SUPERVISOR = Supervisor()
