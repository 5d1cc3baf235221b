"""``map``: items streamed through the pool in chunks (or full batches), a bounded window in
flight, results in input order (or as they finish).

Chunks are sized by measured item time (start at one item, grow toward ``TARGET_CHUNK_S`` of
work), so tiny items cost one round trip per thousands of items while slow items still spread
over every replica. Every item succeeds or fails alone, and progress and metrics count items.
The read-ahead follows the replicas that are running (twice as many, so the pool can grow),
never ``max_replicas`` alone. With ``bucket_by`` (batched handles), a window of upcoming items
is sorted by key and cut into batches of similar items (less padding for text models); results
still come back in input order.

Example::

    run = MapRun(pool, None, iter(range(10)), star=False, ordered=True,
                 return_exceptions=False, total=10, progress=True, rebuild=rebuild_error)
    list(run)
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from .. import settings
from ..core.output import Sink
from ..core.pool import Job, Pool
from ..metering import budget
from .buckets import Window, buckets

#: ``progress_factory(total, name, meter, enabled)`` -> an object with ``update(done, errors)``
#: and ``close(ok)``; the notebook layer sets it (``nbserverless.notebook.progress``).
progress_factory: Any = None
TARGET_CHUNK_S = 0.05
MIN_CHUNK_S = TARGET_CHUNK_S / 10
MAX_CHUNK = 16384
WAIT_SLICE_S = 0.5
#: replicas the read-ahead feeds before any runs (the pool may start this many at once)
FIRST_REPLICAS = 4
#: batches per ``bucket_by`` window: the first (results start sooner), then every later one
BUCKET_FIRST_BATCHES = 16
BUCKET_BATCHES = 32


def label_failure(exc: BaseException, index: int, failures: int) -> BaseException:
    """Name the failed item in the exception itself, keeping its type: ``exc.index``,
    ``exc.failures``, and the message prefixed (or a note when the message is not plain).

    Example: ``ValueError("bad")`` -> ``ValueError("map item 7 failed (1 failure so far): bad")``.
    """
    what = f"map item {index} failed ({failures} failure{'s' if failures != 1 else ''} so far)"
    try:
        exc.index = index  # type: ignore[attr-defined]
        exc.failures = failures  # type: ignore[attr-defined]
    except AttributeError:  # an exception type with __slots__
        pass
    plain = type(exc).__str__ is BaseException.__str__
    if plain and len(exc.args) == 1 and isinstance(exc.args[0], str):
        exc.args = (f"{what}: {exc.args[0]}",)
    elif plain and not exc.args:
        exc.args = (what,)
    elif hasattr(exc, "add_note"):
        exc.add_note(what)
    return exc


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
        bucket_by: Callable[[Any], Any] | None = None,
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
        if bucket_by is not None and not self._batch:
            raise TypeError(
                f"{pool.name}: bucket_by groups items into batches; it needs a batched handle "
                "(set batch_size)"
            )
        self._key = bucket_by
        self._windows = 0
        self._cond = threading.Condition(threading.RLock())
        self._sink = Sink()
        self._next_in = 0
        self._exhausted = False
        self._input_error: BaseException | None = None
        self._input_error_at = -1
        self._outstanding = 0  # items submitted and not yet handed to the consumer
        self._inflight: set[Job] = set()
        self._done_chunks: dict[int, tuple] = {}  # ordered: start index -> (values, errors)
        self._done_queue: deque[tuple] = deque()  # unordered: (indices, values, errors)
        self._completed = 0
        self._errors = 0
        # measured per map (one-item chunks first): an input that blocks until its first
        # results were consumed gets them, whatever the pool measured before
        self._item_s: float | None = None
        self._closed = False
        self._running = 0  # the pool's running replicas, read by the feeder outside our lock
        if progress is None:
            progress = settings.get("progress")
        factory = progress_factory or _NoProgress
        self._bar = factory(total, pool.name, pool.meter, bool(progress))
        self._feeder_thread = threading.Thread(
            target=self._feeder, name="nbs-map-feeder", daemon=True
        )
        self._feeder_thread.start()

    # -- feeding -------------------------------------------------------------------------

    def _replicas(self) -> int:
        """Replicas the read-ahead feeds: twice those running (so the pool can grow), at
        least ``FIRST_REPLICAS``, at most ``max_replicas``."""
        o = self.pool.options
        return max(1, min(o.max_replicas, max(FIRST_REPLICAS, 2 * self._running)))

    def _max_jobs(self) -> int:
        return 2 * self._replicas() * (self.pool.options.concurrency + 1)

    def _chunk_size(self) -> int:
        if self._key is not None:
            first = self._windows == 0
            batches = BUCKET_FIRST_BATCHES if first else BUCKET_BATCHES
            slots = self._replicas() * self.pool.options.concurrency
            return self._batch * max(batches, 2 * slots)
        if self._batch:
            return self._batch
        if self.pool.options.timeout is not None:
            return 1  # timeout is per item: a slow item must not fail the fast ones of a chunk
        if self._item_s is None:
            return 1
        item_s = max(self._item_s, 1e-7)
        size = int(TARGET_CHUNK_S / item_s)
        if self.total is not None:
            # the tail is split for balance across replicas, but never below MIN_CHUNK_S of
            # work: tiny items would otherwise end in dozens of one-item round trips
            left = self.total - self._next_in
            size = min(size, max(1, left // (2 * self._replicas()), int(MIN_CHUNK_S / item_s)))
        return max(1, min(size, MAX_CHUNK))

    def _window_ok(self) -> bool:
        jobs = len(self._inflight)
        if self._key is not None:
            # the next window once the running one is down to two batches per replica slot
            slots = self._replicas() * (self.pool.options.concurrency + 1)
            return jobs <= slots and self._outstanding < 3 * self._chunk_size()
        if self._item_s is None and not self._batch:
            # before the first measurement, one item per replica slot: scale-up starts at once
            return jobs < self._replicas() * self.pool.options.concurrency
        max_jobs = self._max_jobs()
        return jobs < max_jobs and self._outstanding < max_jobs * max(self._chunk_size(), 1)

    def _feed(self) -> None:
        """Wake the feeder: the window may have room again."""
        with self._cond:
            self._cond.notify_all()

    def _read(self, size: int) -> tuple[list[Any], BaseException | None, bool]:
        """Up to ``size`` items, the input's own error if it failed, and whether a slow
        input was cut short (it sends what it has after ``TARGET_CHUNK_S``)."""
        chunk: list[Any] = []
        deadline = time.perf_counter() + TARGET_CHUNK_S
        try:
            # 256 items at a time at C speed (extend keeps what was read if the input raises)
            while len(chunk) < size:
                before = len(chunk)
                chunk.extend(itertools.islice(self._items, min(256, size - before)))
                if len(chunk) - before < min(256, size - before) or self._closed:
                    break  # the input is exhausted, or cancelled while reading: pull no more
                if not self._batch and time.perf_counter() > deadline:
                    return chunk, None, len(chunk) < size
        except BaseException as exc:  # the input iterator itself failed
            return chunk, exc, False
        return chunk, None, False

    def _feeder(self) -> None:
        """Read the input on this map's own thread, outside the lock: an input that is slow
        or blocks (a reader waiting on its consumer) never holds back finished results."""
        while True:
            self._running = self.pool.replicas()  # takes the pool's lock: never under ours
            with self._cond:
                if self._closed:
                    return
                if not self._window_ok():
                    self._cond.wait(WAIT_SLICE_S)
                    continue
                size = self._chunk_size()
            chunk, error, short = self._read(size)
            keys = None
            if self._key is not None and chunk:
                keys, key_error = self._keys(chunk)
                if key_error is not None:  # the key failed: like the input failing there
                    del chunk[len(keys) :]
                    error = key_error
            with self._cond:
                if self._closed:
                    return
                start = self._next_in
                if error is not None:
                    self._input_error = error
                    self._input_error_at = start + len(chunk)
                if error is not None or (len(chunk) < size and not short):
                    self._exhausted = True
                jobs: list[Job] = []
                if chunk:
                    if self.star:
                        chunk = [tuple(c) for c in chunk]
                    self._next_in += len(chunk)
                    self._outstanding += len(chunk)
                    if keys is not None:
                        jobs = self._bucketed_jobs(start, chunk, keys)
                    else:
                        jobs = [self._job(start, chunk)]
                    self._inflight.update(jobs)
                self._cond.notify_all()
            self.pool.unsent(id(self), self._unsent())
            for k, job in enumerate(jobs):
                try:
                    budget.check()  # a map started before the budget was spent stops there
                    self.pool.submit(job)
                except BaseException as exc:  # the session was shut down, the budget spent
                    self._submit_failed(jobs[k:], exc)
                    return
            if self._exhausted:
                return

    def _unsent(self) -> int:
        """Items still to send after this chunk: the rest of a sized input, a window more of
        an unsized one that is not exhausted, else 0 (read without our lock: an estimate)."""
        if self._exhausted or self._closed:
            return 0
        if self.total is not None:
            return max(0, self.total - self._next_in)
        return self._max_jobs() * max(self._chunk_size(), 1)

    def _submit_failed(self, jobs: list[Job], exc: BaseException) -> None:
        """Jobs that could not be sent fail as items (the map raises ``exc`` for them)."""
        self.pool.unsent(id(self), 0)
        for job in jobs:
            job.release_sink()  # if the pool took it before failing
            job.done(job, False, exc)
        with self._cond:
            self._exhausted = True
            self._cond.notify_all()

    def _keys(self, chunk: list[Any]) -> tuple[list[Any], BaseException | None]:
        keys: list[Any] = []
        try:
            for item in chunk:
                keys.append(self._key(item))  # type: ignore[misc]
        except Exception as exc:
            return keys, exc
        return keys, None

    def _bucketed_jobs(self, start: int, chunk: list[Any], keys: list[Any]) -> list[Job]:
        """The window sorted by key, largest first (the slowest batches start first), and
        cut into batches of similar items."""
        self._windows += 1
        window = Window(start, len(chunk))
        return [
            self._job(start, [chunk[p] for p in positions], window, positions)
            for positions in buckets(keys, self._batch)
        ]

    def _job(
        self,
        start: int,
        chunk: list[Any],
        window: Window | None = None,
        positions: list[int] | None = None,
    ) -> Job:
        def done(job: Job, ok: bool, value: Any) -> None:
            self._on_done(job, start, ok, value, window, positions)

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

    def _on_done(
        self,
        job: Job,
        start: int,
        ok: bool,
        value: Any,
        window: Window | None,
        positions: list[int] | None,
    ) -> None:
        # results of a job as (values, errors): errors None or {index in job: error}
        if job.kind == "chunk" and ok:
            values, errs = value
        elif ok:  # a batch
            values, errs = value, None
        else:  # the whole job failed (a batch's exception, a dead replica, a timeout)
            values, errs = [None] * job.n, dict.fromkeys(range(job.n), value)
        with self._cond:
            if job not in self._inflight:
                return  # cancelled, or already settled
            self._inflight.discard(job)
            if job.kind == "chunk" and ok and job.n:
                item_s = job.exec_s / job.n
                self._item_s = item_s if self._item_s is None else 0.5 * (self._item_s + item_s)
            if window is None:
                self._publish(start, values, errs)
            elif self.ordered:
                seg = window.put(positions, values, errs)  # type: ignore[arg-type]
                if seg is not None:
                    self._publish(*seg)
            else:
                self._publish([window.start + p for p in positions], values, errs)  # type: ignore[union-attr]
            self._completed += job.n
            self._errors += len(errs) if errs else 0
            self._cond.notify_all()
        self._bar.update(self._completed, self._errors)

    def _publish(self, where: int | list[int], values: list[Any], errors: dict | None) -> None:
        if self.ordered:
            self._done_chunks[where] = (values, errors)  # type: ignore[index]
        else:
            self._done_queue.append((where, values, errors))

    # -- consuming -----------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        try:
            pos = 0
            while True:
                done = self._next_outcomes(pos)
                if done is None:
                    break
                where, values, errors = done
                pos += len(values)
                with self._cond:
                    self._outstanding -= len(values)
                    self._cond.notify_all()
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
                        index = where + i if isinstance(where, int) else where[i]
                        raise label_failure(exc, index, self._errors)
            self._bar.update(self._completed, self._errors)
            self._bar.close(True)
        except BaseException:
            self.cancel()
            # items read and not finished were cancelled, not failed; the reply's thread may
            # not have updated the bar yet: close it with the map's own counts
            with self._cond:
                done, errors, read = self._completed, self._errors, self._next_in
            self._bar.cancelled = max(0, read - done)
            self._bar.update(done, errors)
            self._bar.close(False)
            raise
        finally:
            if not self._closed:
                self.cancel()

    def _next_outcomes(self, pos: int) -> tuple | None:
        with self._cond:
            while True:
                if self.ordered and pos in self._done_chunks:
                    return (pos, *self._done_chunks.pop(pos))
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
        self.pool.unsent(id(self), 0)
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
