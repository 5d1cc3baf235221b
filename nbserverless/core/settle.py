"""Settling a pool's jobs: exactly once, whatever comes first — the reply, the timeout, a
cancel, the death of the replica (then a retry, up to ``retries``), or shutdown.

``job.finished`` is checked and set under the pool lock by the thread that settles the job
(``_take_locked``); every other path sees it set and does nothing. A job taken while it waits
in the queue for a retry leaves the queue, so a timed-out call is never started again. Waiting
for a call's streamed output (``Sink.finish``, bounded) runs off the completion thread.

Example: ``Settling`` is a base of ``Pool``; replies arrive at ``pool._finish(job, result)``.
"""

from __future__ import annotations

import time
from typing import Any

import ray
from ray import exceptions as rex

from ..errors import CallTimeoutError, CancelledError, RemoteError, ReplicaDiedError
from ..worker import codec
from .completions import defer as _defer
from .jobs import Job
from .loop import SUPERVISOR
from .output import ROUTER
from .replicas import DEATH_ERRORS, death_cause


class Settling:
    """How a :class:`~nbserverless.core.pool.Pool` settles jobs (a base class of it)."""

    def _release_locked(self, job: Job) -> None:
        rep = job.rep
        if rep is None or job not in rep.jobs:
            return
        rep.jobs.discard(job)
        rep.outstanding -= 1
        if rep.outstanding == 0:
            rep.last_idle = time.monotonic()
            if rep.state != "dead":
                self.meter.replica_idle(rep.rid, time.time())

    def _detach_locked(self, job: Job) -> None:
        """Take a job off its replica and remove that replica (dead, stuck or cancelled)."""
        rep = job.rep
        self._release_locked(job)
        if rep is not None:
            self._stop_locked(rep)

    def _take_locked(self, job: Job) -> bool:
        """Take the right to settle ``job``: True once per job. A job queued again for a
        retry leaves the queue, so it never starts after it was settled."""
        if job.finished:
            return False
        job.finished = True
        if job.ref is None and job in self.queue:
            self.queue.remove(job)
            self.meter.dispatched(job.n)
        return True

    def _finish(self, job: Job, result: Any) -> None:
        """A job's reply (an envelope) or failure (a Ray exception) arrived."""
        call_id = job.call_id  # a retry dispatches the job again under a new one
        if isinstance(result, DEATH_ERRORS):
            self._on_death(job, result)
            ROUTER.sinks.pop(call_id, None)
            return
        with self._locked():
            if not self._take_locked(job):
                ROUTER.sinks.pop(call_id, None)
                return
            self._release_locked(job)
        if job.cancelled or isinstance(result, rex.TaskCancelledError):
            ROUTER.sinks.pop(call_id, None)
            self._cancelled(job, was_queued=False)
        elif isinstance(result, BaseException):
            ROUTER.sinks.pop(call_id, None)
            err = RemoteError(f"{self.name}: the call failed in Ray: {result}")
            self._report(job, False, err, errors=job.n)
        else:
            ok, value, exec_s, rest, seq = result
            ok, value = codec.decode_reply(job.kind, ok, value)
            errors = (
                (len(value[1]) if value[1] else 0)
                if ok and job.kind == "chunk"
                else (0 if ok else job.n)
            )
            if seq and job.sink.received < seq:  # streamed frames still on their way: wait
                _defer(self._complete, job, call_id, ok, value, errors, exec_s, rest, seq)
            else:
                self._complete(job, call_id, ok, value, errors, exec_s, rest, seq)
        self._pump()

    def _complete(self, job: Job, call_id: int, ok: bool, value: Any, errors: int,
                  exec_s: float, rest: Any, seq: int) -> None:  # fmt: skip
        job.sink.finish(rest, seq)
        ROUTER.sinks.pop(call_id, None)  # only now: frames sent just before the reply count
        self._report(job, ok, value, errors=errors, exec_s=exec_s)

    def _report(self, job: Job, ok: bool, value: Any, *, errors: int, exec_s: float = 0.0) -> None:
        """Settle a job whose ``finished`` this thread has set (under the lock)."""
        job.finished = True
        job.exec_s = exec_s
        if ok and job.n:
            item_s = exec_s / job.n
            self.item_s = item_s if self.item_s is None else 0.7 * self.item_s + 0.3 * item_s
        now = time.perf_counter()
        waited = (job.t_dispatch or now) - job.t_submit
        self.meter.finished(job.n, errors=errors, total_s=now - job.t_submit,
                            queue_s=0.0 if job.cold else waited,
                            cold_s=waited if job.cold else 0.0,
                            exec_s=exec_s / job.n if job.n else exec_s, cold=job.cold)  # fmt: skip
        job.release_sink()
        job.done(job, ok, value)

    def _cancelled(self, job: Job, *, was_queued: bool) -> None:
        self.meter.cancelled(job.n, was_queued=was_queued)
        job.release_sink()
        job.done(job, False, CancelledError(f"{self.name}: the call was cancelled"))

    def _on_death(self, job: Job, exc: BaseException) -> None:
        with self._locked():
            if job.finished:
                return
            self._detach_locked(job)
            retry = not job.cancelled and job.attempts < self.options.retries and not self.closed
            if retry:
                job.attempts += 1
                job.rep, job.ref, job.t_dispatch, job.deadline = None, None, 0.0, None
                self.meter.retried(job.n)
                self.queue.appendleft(job)
                self._scale_locked()
            else:
                job.finished = True
        if job.cancelled:
            self._cancelled(job, was_queued=False)
        elif not retry:
            err = ReplicaDiedError(
                f"{self.name}: the replica running this call died ({death_cause(exc)}) and the "
                f"call was run {job.attempts + 1} time(s); to re-run more often, raise retries= "
                f"(now {self.options.retries})."
            )
            self._report(job, False, err, errors=job.n)
        self._pump()

    def _on_timeout(self, job: Job) -> None:
        with self._locked():
            if not self._take_locked(job):  # from here no retry can start it again
                return
            self._detach_locked(job)  # recycle: the call may still be running there
        err = CallTimeoutError(
            f"{self.name}: the call ran longer than timeout={self.options.timeout:g} s and was "
            "stopped (its replica was recycled). Raise timeout= if it needs longer."
        )
        self._report(job, False, err, errors=job.n)
        self._pump()

    def cancel(self, job: Job) -> None:
        """Cancel a queued or running job (Ctrl-C); the pool stays usable."""
        with self._locked():
            if job.finished:
                return
            job.cancelled = True
            queued = job in self.queue
            if queued:
                self.queue.remove(job)
                job.finished = True
        if queued:
            self._cancelled(job, was_queued=True)
            return
        if job.ref is not None:
            try:
                ray.cancel(job.ref)
            except Exception:
                pass
            SUPERVISOR.watch_cancel(self, job)

    def force_cancel(self, job: Job) -> None:
        """A cancelled call still running after its grace: remove its replica."""
        with self._locked():
            if not self._take_locked(job):
                return
            self._detach_locked(job)
        self._cancelled(job, was_queued=False)
        self._pump()

    def _take_queue_locked(self) -> list[Job]:
        """Empty the queue, marking every job settled by the caller; for failing them."""
        jobs = list(self.queue)
        self.queue.clear()
        for job in jobs:
            job.finished = True
            self.meter.dispatched(job.n)
        return jobs

    def fail_all(self, exc: BaseException) -> None:
        """This pool broke (a bug, a refused request): its queued calls fail with the error."""
        with self._locked():
            failed = self._take_queue_locked()
        err = RemoteError(f"{self.name}: the pool failed: {type(exc).__name__}: {exc}")
        for job in failed:
            self._report(job, False, err, errors=job.n)
