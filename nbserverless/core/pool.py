"""One elastic replica pool per function, class handle or ``%%serverless`` cell.

The queue, dispatch, settling (exactly once), retry, timeout and cancellation. Scaling
decisions come from core/policy.py (pure); replicas are started, claimed from the warm stock,
reserved and stopped by core/replicas.py. Calls go to the least loaded ready replica, at most
``concurrency`` at once (map chunks pipeline one more when no timeout is set). A replica that
dies has its calls re-run elsewhere, up to ``retries``. ``timeout`` counts execution only, from
the dispatch to a ready replica; a timed-out call is never started again.

Example::

    pool = Pool("square", "function", code, {}, None, Options.resolve())
    job = Job("call", None, ((3,), {}), 1, done=set_result)
    pool.submit(job)
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ray
from ray import exceptions as rex

from ..metering.meter import METER
from ..options import Options
from ..shipping import diagnose_args
from ..worker import codec
from . import cluster, policy, warm
from .completions import on_ready as _on_ready
from .jobs import DoneFn, Job
from .keepalive import LearnedKeepAlive
from .loop import SUPERVISOR
from .loop import registry as _registry
from .output import ROUTER
from .replicas import Rep, ReplicaSet
from .scaling import Scaling
from .settle import Settling

__all__ = ["DoneFn", "Job", "Pool", "all_pools", "close_all", "scale_all_to_zero"]

DEFAULT_START_S = 1.0
_call_ids = itertools.count(1)


def _send(actor: Any, job: Job, code: Any) -> Any:
    """The one place a replica request is built: the payload pickled by the one pickler (a
    call's arguments arrive pickled by its handle), with ``code``, the version the handle set
    when it re-pickled changed code (fresh code; None when unchanged)."""
    if job.kind == "call":
        return actor.call.remote([job.method, codec.call_payload(job.payload), job.call_id, code])
    blob = job.blob if job.blob is not None else codec.dumps(job.payload)
    if job.kind == "batch":
        return actor.batch.remote(job.method, blob, job.call_id, code)
    return actor.chunk.remote(job.method, blob, job.star, job.call_id, code)


class Pool(Settling, Scaling, ReplicaSet):
    """The replicas of one function, class handle or cell, and their queue."""

    fresh_code: Any = None  # (version, [ObjectRef]) of re-pickled code, set by the handle
    retiring = False  # see retire()

    def __init__(self, name: str, kind: str, code: bytes, sources: dict, init: tuple | None,
                 options: Options, key: str | None = None):  # fmt: skip
        self.name = name
        self.kind = kind
        self.options = options
        self.key = key or f"{name}#{id(self)}"
        self.meter = METER.function(self.key, name=name, kind=kind, cpus=options.cpus,
                                    gpus=options.gpus, memory=options.memory)  # fmt: skip
        self._spec = {"code": code, "sources": sources, "kind": kind, "init": init,
                      "cpus": options.cpus, "env": sorted(options.env or {})}  # fmt: skip
        self._spec.update(cpus=options.cpus, env=list(options.env or ()))  # thread counts
        self._spec_ref: Any = None
        self.lock = threading.RLock()
        self._depth = 0  # nesting of _locked() in the thread holding the lock
        self._outbox: list[Callable[[], None]] = []  # Ray calls to make once the lock is free
        self.queue: deque[Job] = deque()
        self.reps: dict[str, Rep] = {}
        self.hold_min = True
        self.closed = False
        self._feasible = False
        self._rep_ids = itertools.count(1)
        self.replica_history: deque[tuple[float, int]] = deque(maxlen=10_000)
        self.item_s: float | None = None  # measured execution time per item (EMA)
        self.last_demand = time.monotonic()
        self.starts = 0  # replicas ever asked for (started or claimed)
        self.claims = 0  # of which claimed from the warm stock
        self.start_failures = 0  # failed starts in a row
        self.unsent_items: dict[int, int] = {}  # map -> items its feeder has not sent yet
        self.nodes_lost = 0  # starts in a row whose node went away before the replica ran
        self.start_s = DEFAULT_START_S  # measured replica start time (EMA)
        self.keep_alive_s: policy.KeepAliveFn = policy.fixed_keep_alive
        self.learner: LearnedKeepAlive | None = None  # keep_alive="auto"
        self.prewarm_until = 0.0  # a learned pre-warm holds one replica until then
        self._idle_seen = True
        if options.keep_alive_auto:
            self.learner = LearnedKeepAlive(fallback_s=options.keep_alive)
            self.keep_alive_s = self._learned_keep_alive
        self.meter.keep_alive_label = _fixed_label(options)
        self._can_claim = warm.eligible(options)
        self._registered = False
        with self.lock:
            self._register_locked()

    def _learned_keep_alive(self, demand: policy.Demand, now: float) -> float:
        decision = self.learner.decide(now)
        if decision.prewarm_at is not None and now >= decision.prewarm_at:
            self.prewarm_until = max(self.prewarm_until, now + decision.keep_alive_s)
        self.meter.keep_alive_label = decision.label
        return decision.keep_alive_s

    def _observe_call(self, now: float) -> None:
        self.last_demand = now
        if self.learner is not None:
            self.learner.observe_call(now)
            self._idle_seen = False
            self.prewarm_until = 0.0

    # -- the lock and what runs after it --------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the pool lock; on leaving the outermost hold, run the queued Ray calls."""
        with self.lock:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                outer = self._depth == 0
                todo, self._outbox = (self._outbox, []) if outer else ([], self._outbox)
        for fn in todo:
            fn()

    def _register_locked(self) -> None:
        if not self._registered:
            self._registered = True
            _registry.add(self)
            SUPERVISOR.ensure_running()

    # -- submitting ----------------------------------------------------------------------

    def prepare(self) -> None:
        """Connect and check the request can ever be placed; raises before anything is sent."""
        if self._feasible:
            return
        cluster.ensure_connected()
        if ROUTER.address is None:
            ROUTER.start("127.0.0.1" if cluster.is_embedded() else ray.util.get_node_ip_address())
        self._check_feasible()
        if self._spec_ref is None:
            self._spec_ref = ray.put(self._spec)
        self._feasible = True
        with self._locked():
            self._scale_locked()

    def _place_locked(self, job: Job) -> bool:
        """Send ``job`` to a ready replica with room (True), else queue it (False)."""
        if self.closed:
            raise RuntimeError(f"{self.name}: the session was shut down; call it again")
        job.hold_sink()
        self._register_locked()
        self.hold_min = True
        rep = None if self.queue else self._pick(job)
        if rep is not None:
            self._dispatch_locked(job, rep)
        else:
            self.queue.append(job)
        if rep is None or job.pipelined:  # a plain call sent to a replica with room needs none
            self._scale_locked()
        return rep is not None

    def unsent(self, key: int, items: int) -> None:
        """A map's feeder holds ``items`` more beyond what it sent (its read-ahead window):
        work the backlog rule counts, so a long map keeps its replicas, and replaces one that
        died, though only a window of it is queued here. ``items=0``: nothing more."""
        with self._locked():
            if items > 0:
                self.unsent_items[key] = items
            else:
                self.unsent_items.pop(key, None)

    def submit(self, job: Job) -> None:
        """Dispatch at once if a replica has room, else queue (and scale up)."""
        if job.kind != "call" and job.blob is None:  # pickle a chunk here, not under the lock
            try:
                job.blob = codec.dumps(job.payload)
            except Exception:
                pass  # _send tries again under the lock and reports which item cannot go
        self.meter.submitted(job.n)
        self._observe_call(time.monotonic())
        with self._locked():
            self._place_locked(job)
        self._watch([job])

    def call_sync(self, method: str | None, args: tuple, kwargs: dict, done: DoneFn) -> Job:
        """The warm-call hot path: dispatch in the caller's thread and ``ray.get`` here.
        Queues (settled by the completion thread) when no replica has room."""
        job = Job("call", method, (args, kwargs), 1, done)
        self.meter.submitted(1)
        self._observe_call(time.monotonic())
        with self._locked():
            sent = self._place_locked(job)
        if not sent:
            return job
        if job.ref is None:  # could not be sent (an unpicklable argument)
            self._report(job, False, job.error, errors=1)
            return job
        try:
            result: Any = ray.get(job.ref, timeout=self.options.timeout)
        except rex.GetTimeoutError:
            self._on_timeout(job)
            return job
        except KeyboardInterrupt:
            self.cancel(job)
            raise
        except Exception as exc:
            result = exc
        self._finish(job, result)
        return job

    def _watch(self, jobs: list[Job]) -> None:
        """After dispatch (outside the lock): follow replies, report what could not be sent."""
        for job in jobs:
            if job.ref is not None:
                _on_ready(job.ref, self._on_ref, job)
            elif job.error is not None:
                self._report(job, False, job.error, errors=job.n)

    def _on_ref(self, job: Job, fut: Any) -> None:
        try:
            result = fut.result()
        except Exception as exc:
            result = exc
        self._finish(job, result)

    # -- routing and dispatch ------------------------------------------------------------

    def _pick(self, job: Job) -> Rep | None:
        o = self.options
        cap = o.concurrency + (1 if job.pipelined and o.timeout is None else 0)
        loads = [(r, r.outstanding) for r in self.reps.values() if r.state == "ready"]
        return policy.pick(loads, cap)

    def _dispatch_locked(self, job: Job, rep: Rep) -> None:
        job.rep = rep
        job.call_id = next(_call_ids)
        job.t_dispatch = now = time.perf_counter()
        if rep.t_ready > job.t_submit:
            job.cold = True
        try:
            ref = _send(rep.actor, job, self.fresh_code)
        except Exception:  # Ray could not serialize the arguments
            job.rep = None
            job.finished = True
            job.error = _serialization_error(job, self.name)
            self.meter.dispatched(job.n)
            return
        job.ref = ref
        if ROUTER.address is not None:
            ROUTER.sinks[job.call_id] = job.sink
        if rep.outstanding == 0:
            self.meter.replica_busy(rep.rid, time.time())
        rep.outstanding += 1
        rep.jobs.add(job)
        if self.options.timeout is not None:  # execution only: from here, per item
            job.deadline = now + self.options.timeout * max(1, job.n if job.kind == "chunk" else 1)
        self.meter.dispatched(job.n)

    def _pump(self) -> None:
        """Send queued jobs to ready replicas with room."""
        sent = []
        with self._locked():
            while self.queue:
                rep = self._pick(self.queue[0])
                if rep is None:
                    break
                job = self.queue.popleft()
                self._dispatch_locked(job, rep)
                sent.append(job)
            if self.queue:
                self._scale_locked()
        self._watch(sent)

    def close(self) -> None:
        """Cancel queued work and remove every replica (session shutdown)."""
        with self._locked():
            self.closed = True
            queued = list(self.queue)
            self.queue.clear()
            running = [j for r in self.reps.values() for j in r.jobs if not j.finished]
            for job in [*queued, *running]:
                job.finished = True
            for rep in list(self.reps.values()):
                self._stop_locked(rep)
            self._registered = False
            _registry.remove(self)
        for job in queued:
            self._cancelled(job, was_queued=True)
        for job in running:
            self._cancelled(job, was_queued=False)


def _serialization_error(job: Job, name: str) -> Exception:
    if job.kind == "call":
        args, kwargs = job.payload
    else:
        args, kwargs = (tuple(job.payload), {})
    return diagnose_args(args, kwargs, name)


def all_pools() -> list[Pool]:
    """Every pool of this kernel that is still referenced (ticked by the loop or not)."""
    return [p for p in _registry.every() if not p.closed]


def scale_all_to_zero() -> None:
    """Remove every idle replica of every pool (the lab panel's "Scale to zero")."""
    for pool in all_pools():
        pool.scale_to_zero()


def close_all() -> None:
    for pool in all_pools():
        pool.close()


def _fixed_label(options: Options) -> str:
    """The keep-alive in force as the widgets show it, before anything is learned."""
    if options.keep_alive_auto:
        return f"keep-alive {options.keep_alive:g} s (learning)"
    return f"keep-alive {options.keep_alive:g} s"
