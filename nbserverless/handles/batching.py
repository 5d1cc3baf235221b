"""Dynamic batching: concurrent single calls packed into one batch of at most ``batch_size``,
waiting at most ``batch_wait_ms`` for it to fill. (``map`` packs full batches itself.)

Example::

    batcher = Batcher(pool, "__call__", batch_size=64, wait_s=0.010)
    batcher.add(item, done)          # done(job, ok, value) per item
"""

from __future__ import annotations

import threading
from typing import Any

from ..core.output import Sink
from ..core.pool import DoneFn, Job, Pool


class Batcher:
    """Collects single items for one pool and method; flushes full or timed-out batches."""

    def __init__(self, pool: Pool, method: str | None, batch_size: int, wait_s: float):
        self.pool = pool
        self.method = method
        self.batch_size = batch_size
        self.wait_s = wait_s
        self._lock = threading.Lock()
        self._items: list[Any] = []
        self._dones: list[DoneFn] = []
        self._sink: Sink | None = None
        self._timer: threading.Timer | None = None

    def add(self, item: Any, done: DoneFn) -> None:
        """Queue one item; ``done`` gets that item's own result (or the batch's error)."""
        with self._lock:
            first = not self._items
            if first:
                self._sink = Sink()
            self._items.append(item)
            self._dones.append(done)
            batch = self._take_locked() if len(self._items) >= self.batch_size else None
            if batch is None and first and self.wait_s > 0:
                self._timer = threading.Timer(self.wait_s, self.flush)
                self._timer.daemon = True
                self._timer.start()
        if batch is not None:
            self.pool.submit(batch)
        elif self.wait_s == 0:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            batch = self._take_locked() if self._items else None
        if batch is not None:
            self.pool.submit(batch)

    def _take_locked(self) -> Job:
        items, dones, sink = self._items, self._dones, self._sink
        self._items, self._dones, self._sink = [], [], None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

        def done(job: Job, ok: bool, value: Any) -> None:
            for i, item_done in enumerate(dones):
                item_done(job, ok, value[i] if ok else value)

        return Job("batch", self.method, items, len(items), done, sink=sink)
