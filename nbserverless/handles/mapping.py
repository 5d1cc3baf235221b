"""``map``: items streamed through the pool in chunks (or full batches), a bounded window in
flight, results in input order (or as they finish).

Chunks are sized by measured item time (start at one item, grow toward ``TARGET_CHUNK_S`` of
work), so tiny items cost one round trip per thousands of items while slow items still spread
over every replica. Every item succeeds or fails alone, and progress and metrics count items.

Example::

    run = MapRun(pool, None, iter(range(10)), star=False, ordered=True,
                 return_exceptions=False, total=10, progress=True)
    list(run)
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from .. import settings
from ..core.output import Sink
from ..core.pool import Job, Pool

#: ``progress_factory(total, name, meter, enabled)`` -> an object with ``update(done, errors)``
#: and ``close(ok)``; the notebook layer sets it (``nbserverless.notebook.progress``).
progress_factory: Any = None
TARGET_CHUNK_S = 0.05
MAX_CHUNK = 16384
WAIT_SLICE_S = 0.5


class MapRun:
    """One running map; iterate it for the results. Work starts when it is created."""

    def __init__(
        self,
        pool: Pool,
        method: str | None,
        items: Iterator[Any],
        *,
        star: bool,
        ordered: bool,
        return_exceptions: bool,
        total: int | None,
        progress: bool | None,
        rebuild: Any,
    ):
        self.pool = pool
        self.method = method
        self.star = star
        self.ordered = ordered
        self.return_exceptions = return_exceptions
        self.total = total
        self._rebuild = rebuild
        self._items = items
        self._batch = pool.options.batch_size
        self._cond = threading.Condition(threading.RLock())
        self._sink = Sink()
        self._next_in = 0
        self._exhausted = False
        self._input_error: BaseException | None = None
        self._input_error_at = -1
        self._outstanding = 0  # items submitted and not yet handed to the consumer
        self._inflight: set[Job] = set()
        self._done_chunks: dict[int, tuple] = {}  # ordered: start index -> (values, errors)
        self._done_queue: deque[tuple] = deque()  # unordered: (values, errors)
        self._completed = 0
        self._errors = 0
        self._item_s: float | None = None
        self._closed = False
        o = pool.options
        self._max_jobs = 2 * o.max_replicas * (o.concurrency + 1)
        if progress is None:
            progress = settings.get("progress")
        factory = progress_factory or _NoProgress
        self._bar = factory(total, pool.name, pool.meter, bool(progress))
        self._feeder_thread = threading.Thread(
            target=self._feeder, name="nbs-map-feeder", daemon=True
        )
        self._feeder_thread.start()

    # -- feeding -------------------------------------------------------------------------

    def _chunk_size(self) -> int:
        if self._batch:
            return self._batch
        if self.pool.options.timeout is not None:
            return 1  # timeout is per item: a slow item must not fail the fast ones of a chunk
        if self._item_s is None:
            return 1
        size = int(TARGET_CHUNK_S / max(self._item_s, 1e-7))
        if self.total is not None:
            replicas = max(1, self.pool.options.max_replicas)
            left = self.total - self._next_in
            size = min(size, max(1, left // (2 * replicas)))
        return max(1, min(size, MAX_CHUNK))

    def _window_ok(self) -> bool:
        jobs = len(self._inflight)
        if self._item_s is None and not self._batch:
            # before the first measurement, one item per replica slot: scale-up starts at once
            return jobs < self.pool.options.max_replicas * self.pool.options.concurrency
        return jobs < self._max_jobs and self._outstanding < self._max_jobs * max(
            self._chunk_size(), 1
        )

    def _feed(self) -> None:
        """Wake the feeder: the window may have room again."""
        with self._cond:
            self._cond.notify_all()

    def _feeder(self) -> None:
        """Read the input on this map's own thread, outside the lock: an input that is slow
        or blocks (a reader waiting on its consumer) never holds back finished results."""
        while True:
            with self._cond:
                while not self._closed and not self._window_ok():
                    self._cond.wait(WAIT_SLICE_S)
                if self._closed:
                    return
                size = self._chunk_size()
            chunk: list[Any] = []
            error: BaseException | None = None
            # a slow input sends what it has after TARGET_CHUNK_S instead of a full chunk
            deadline = time.perf_counter() + TARGET_CHUNK_S
            short = False
            try:
                for item in itertools.islice(self._items, size):
                    chunk.append(item)
                    if not len(chunk) & 255:
                        if self._closed:  # cancelled while reading: pull no more
                            break
                        if not self._batch and time.perf_counter() > deadline:
                            short = True
                            break
            except BaseException as exc:  # the input iterator itself failed
                error = exc
            job = None
            with self._cond:
                if self._closed:
                    return
                start = self._next_in
                if error is not None:
                    self._input_error = error
                    self._input_error_at = start + len(chunk)
                if error is not None or (len(chunk) < size and not short):
                    self._exhausted = True
                if chunk:
                    if self.star:
                        chunk = [tuple(c) for c in chunk]
                    self._next_in += len(chunk)
                    self._outstanding += len(chunk)
                    job = self._job(start, chunk)
                    self._inflight.add(job)
                self._cond.notify_all()
            if job is not None:
                try:
                    self.pool.submit(job)
                except BaseException as exc:  # e.g. the session was shut down
                    with self._cond:
                        self._inflight.discard(job)
                        self._outstanding -= job.n
                        self._next_in -= job.n
                        self._input_error, self._input_error_at = exc, start
                        self._exhausted = True
                        self._cond.notify_all()
                    return
            if self._exhausted:
                return

    def _job(self, start: int, chunk: list[Any]) -> Job:
        def done(job: Job, ok: bool, value: Any, start: int = start) -> None:
            self._on_done(job, start, ok, value)

        if self._batch:
            payload = [c[0] if self.star and len(c) == 1 else c for c in chunk]
            return Job(
                "batch", self.method, payload, len(chunk), done, sink=self._sink, pipelined=True
            )
        return Job(
            "chunk",
            self.method,
            chunk,
            len(chunk),
            done,
            star=self.star,
            sink=self._sink,
            pipelined=True,
        )

    def _on_done(self, job: Job, start: int, ok: bool, value: Any) -> None:
        # results of a job as (values, errors): errors None or {index: error}
        if job.kind == "chunk" and ok:
            done = value
        elif ok:  # a batch
            done = (value, None)
        else:  # the whole job failed (a batch's exception, a dead replica, a timeout)
            done = ([None] * job.n, dict.fromkeys(range(job.n), value))
        errors = len(done[1]) if done[1] else 0
        with self._cond:
            self._inflight.discard(job)
            if job.kind == "chunk" and ok and job.n:
                item_s = job.exec_s / job.n
                self._item_s = item_s if self._item_s is None else 0.5 * (self._item_s + item_s)
            if self.ordered:
                self._done_chunks[start] = done
            else:
                self._done_queue.append(done)
            self._completed += job.n
            self._errors += errors
            self._cond.notify_all()
        self._bar.update(self._completed, self._errors)
        self._feed()

    # -- consuming -----------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        try:
            pos = 0
            while True:
                done = self._next_outcomes(pos)
                if done is None:
                    break
                values, errors = done
                pos += len(values)
                with self._cond:
                    self._outstanding -= len(values)
                self._feed()
                if not errors:
                    yield from values
                    continue
                for i, value in enumerate(values):
                    if i not in errors:
                        yield value
                        continue
                    exc = self._rebuild(errors[i])
                    if self.return_exceptions:
                        yield exc
                    else:
                        raise exc
            self._bar.close(True)
        except BaseException:
            self.cancel()
            self._bar.close(False)
            raise
        finally:
            if not self._closed:
                self.cancel()

    def _next_outcomes(self, pos: int) -> tuple | None:
        with self._cond:
            while True:
                if self.ordered and pos in self._done_chunks:
                    return self._done_chunks.pop(pos)
                if not self.ordered and self._done_queue:
                    return self._done_queue.popleft()
                if self._input_error is not None and (
                    (self.ordered and pos >= self._input_error_at)
                    or (not self.ordered and not self._inflight)
                ):
                    err, self._input_error = self._input_error, None
                    raise err
                if self._exhausted and not self._inflight and not self._pending_results():
                    return None
                self._cond.wait(WAIT_SLICE_S)

    def _pending_results(self) -> bool:
        return bool(self._done_chunks or self._done_queue)

    def cancel(self) -> None:
        """Stop feeding and cancel queued and running chunks (Ctrl-C, an error, or break)."""
        with self._cond:
            self._closed = True
            jobs = list(self._inflight)
            self._inflight.clear()
            self._cond.notify_all()
        if threading.current_thread() is not self._feeder_thread:
            self._feeder_thread.join(WAIT_SLICE_S)  # unless the input itself blocks
        for job in jobs:
            self.pool.cancel(job)


class _NoProgress:
    """No view is installed: progress is not shown."""

    def __init__(self, *args: Any) -> None:
        pass

    def update(self, done: int, errors: int = 0) -> None:
        pass

    def close(self, ok: bool = True) -> None:
        pass
