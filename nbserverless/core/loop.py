"""The kernel's tick thread (the supervisor): keep-alive, timeouts, cancellation grace, giving
way between pools, and registered hooks (the warm stock's refill).

Example: ``SUPERVISOR.ensure_running()``; ``SUPERVISOR.hooks.append(fn)``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from . import cluster

log = logging.getLogger("nbserverless")
CANCEL_GRACE_S = 2.0


class _Registry:
    """The live pools of this kernel (anything with ``tick``, ``waiting_for_resources``,
    ``give_way``, ``lock`` and the cancellation hooks)."""

    def __init__(self) -> None:
        self._pools: dict[int, Any] = {}
        self._lock = threading.Lock()

    def add(self, pool: Any) -> None:
        with self._lock:
            self._pools[id(pool)] = pool

    def remove(self, pool: Any) -> None:
        with self._lock:
            self._pools.pop(id(pool), None)

    def all(self) -> list[Any]:
        with self._lock:
            return list(self._pools.values())


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
            pool.force_cancel(job)
        if cluster.address() is not None:
            for hook in list(self.hooks):
                hook(now)
        pools = registry.all()
        for pool in pools:
            pool.tick(now)
        waiting = [p for p in pools if p.waiting_for_resources(now)]
        if waiting:
            for other in pools:
                if other not in waiting and other.give_way():
                    break


SUPERVISOR = Supervisor()
