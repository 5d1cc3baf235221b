"""One request to a pool: a call, a batch of items, or a chunk of map items.

Example: ``Job("call", None, ((3,), {}), 1, done=lambda job, ok, value: ...)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .output import Sink

#: done(job, ok, value): value is the envelope's value (ok) or an exception (not ok)
DoneFn = Callable[["Job", bool, Any], None]


class Job:
    """One request to a replica: a call, a batch of items, or a chunk of map items."""

    __slots__ = ("kind", "method", "payload", "n", "star", "done", "sink", "t_submit",
                 "t_dispatch", "cold", "attempts", "rep", "ref", "call_id", "deadline",
                 "pipelined", "cancelled", "finished", "error", "exec_s", "blob",
                 "held")  # fmt: skip

    def __init__(self, kind: str, method: str | None, payload: Any, n: int, done: DoneFn, *,
                 star: bool = False, sink: Sink | None = None, pipelined: bool = False):  # fmt: skip
        self.kind = kind
        self.method = method
        self.payload = payload  # opaque here: only _send reads it
        self.n = n
        self.star = star
        self.done = done
        self.sink = sink if sink is not None else Sink()
        self.t_submit = time.perf_counter()
        self.t_dispatch = 0.0
        self.cold = False
        self.attempts = 0
        self.rep: Any = None  # the Rep running it (core/replicas.py)
        self.ref: Any = None
        self.call_id = 0
        self.deadline: float | None = None
        self.pipelined = pipelined
        self.cancelled = False
        self.finished = False  # settled: set once, under the pool lock
        self.error: BaseException | None = None  # set when it could not be sent
        self.exec_s = 0.0  # execution time the replica measured
        self.blob: bytes | None = None  # a chunk's or batch's payload, pickled before the lock
        self.held = False  # counted in its sink's pending jobs (output.Sink.hold)

    def hold_sink(self) -> None:
        """The job entered a pool: its sink has work in flight (once per job)."""
        if not self.held:
            self.held = True
            self.sink.hold()

    def release_sink(self) -> None:
        """The job is settled, its output written: before ``done`` runs."""
        if self.held:
            self.held = False
            self.sink.release()
