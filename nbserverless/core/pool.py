"""One elastic replica pool per function, class handle or ``%%serverless`` cell.

From zero, replicas start as queued demand needs them (at most ``max_replicas``); calls go to
the least loaded replica, at most ``concurrency`` at once (map chunks pipeline one more, so a
replica never waits for the kernel); a replica idle for ``keep_alive`` seconds is removed,
down to ``min_replicas``. A replica that dies has its calls re-run elsewhere, up to
``retries``. The pool owns replica state and reports every change to its meter.

Example::

    pool = Pool("square", "function", code, {}, None, Options.resolve())
    job = Job("call", None, ((3,), {}), 1, done=set_result)
    pool.submit(job)
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import ray
from ray import exceptions as rex

from .. import settings
from ..errors import (
    CallTimeoutError,
    CancelledError,
    InfeasibleError,
    RemoteError,
    ReplicaDiedError,
)
from ..metering.meter import METER
from ..options import Options
from ..shipping import diagnose_args
from ..worker.replica import Replica
from . import cluster
from . import warm as bridge
from .completions import on_ready as _on_ready
from .loop import SUPERVISOR
from .loop import registry as _registry
from .output import ROUTER, Sink

log = logging.getLogger("nbserverless")

ReplicaActor = ray.remote(Replica)
DEATH_ERRORS = (
    rex.RayActorError,
    rex.WorkerCrashedError,
    rex.NodeDiedError,
    rex.ObjectLostError,
    rex.OutOfMemoryError,
)
DEFAULT_START_S = 1.0
GIVE_WAY_AFTER_S = 0.3
_call_ids = itertools.count(1)

#: done(job, ok, value): value is the envelope's value (ok) or an exception (not ok)
DoneFn = Callable[["Job", bool, Any], None]


class Job:
    """One request to a replica: a call, a batch of items, or a chunk of map items."""

    __slots__ = (
        "kind",
        "method",
        "payload",
        "n",
        "star",
        "done",
        "sink",
        "t_submit",
        "t_dispatch",
        "cold",
        "attempts",
        "rep",
        "ref",
        "call_id",
        "deadline",
        "pipelined",
        "cancelled",
        "finished",
        "error",
        "exec_s",
        "bridged",
        "host",
    )

    def __init__(
        self,
        kind: str,
        method: str | None,
        payload: Any,
        n: int,
        done: DoneFn,
        *,
        star: bool = False,
        sink: Sink | None = None,
        pipelined: bool = False,
    ):
        self.kind = kind
        self.method = method
        self.payload = payload
        self.n = n
        self.star = star
        self.done = done
        self.sink = sink if sink is not None else Sink()
        self.t_submit = time.perf_counter()
        self.t_dispatch = 0.0
        self.cold = False
        self.attempts = 0
        self.rep: Rep | None = None
        self.ref: Any = None
        self.call_id = 0
        self.deadline: float | None = None
        self.pipelined = pipelined
        self.cancelled = False
        self.finished = False
        self.error: BaseException | None = None  # set when it could not be sent
        self.exec_s = 0.0  # execution time the replica measured
        self.bridged = False  # ran on a stand-in while replicas started (bridge.py)
        self.host: bridge.Host | None = None  # the stand-in process, None for a Ray task


class Rep:
    """The pool's view of one replica."""

    __slots__ = (
        "rid",
        "actor",
        "state",
        "outstanding",
        "t_created",
        "t_ready",
        "last_idle",
        "jobs",
    )

    def __init__(self, rid: str, actor: Any):
        self.rid = rid
        self.actor = actor
        self.state = "pending"  # pending -> loading (placed, billed) -> ready -> dead
        self.outstanding = 0
        self.t_created = time.monotonic()
        self.t_ready = 0.0
        self.last_idle = time.monotonic()
        self.jobs: set[Job] = set()


class Pool:
    """The replicas of one function, class handle or cell, and their queue."""

    def __init__(
        self,
        name: str,
        kind: str,
        code: bytes,
        sources: dict,
        init: tuple | None,
        options: Options,
        key: str | None = None,
    ):
        self.name = name
        self.kind = kind
        self.options = options
        self.key = key or f"{name}#{id(self)}"
        self.meter = METER.function(
            self.key,
            name=name,
            kind=kind,
            cpus=options.cpus,
            gpus=options.gpus,
            memory=options.memory,
        )
        self._spec = {"code": code, "sources": sources, "kind": kind, "init": init}
        self._spec_ref: Any = None
        self.lock = threading.RLock()
        self.queue: deque[Job] = deque()
        self.reps: dict[str, Rep] = {}
        self.hold_min = True
        self.closed = False
        self._feasible = False
        self._rep_ids = itertools.count(1)
        self.replica_history: deque[tuple[float, int]] = deque(maxlen=10_000)
        self.item_s: float | None = None  # measured execution time per item (EMA)
        self._bridge_jobs: set[Job] = set()
        self._hosts: list[bridge.Host] = []  # this pool's claimed stand-ins
        self.last_demand = time.monotonic()
        self.starts = 0  # replicas ever requested (scale-up decisions)
        self._can_bridge = bridge.eligible(options)
        self._can_task = bridge.task_eligible(options, kind)
        self.start_s = DEFAULT_START_S  # measured replica start time (EMA)
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
        with self.lock:
            self._scale_locked()

    def _place_locked(self, job: Job) -> bool:
        """Send ``job`` to a replica with room (True), else bridge or queue it (False)."""
        if self.closed:
            raise RuntimeError(f"{self.name}: the session was shut down; call it again")
        self.hold_min = True
        rep = None if self.queue else self._pick(job)
        if rep is not None:
            self._dispatch_locked(job, rep)
        elif not self._bridge_locked(job):
            self.queue.append(job)
        if rep is None or job.pipelined:  # a plain call sent to a replica with room needs none
            self._scale_locked()
        return rep is not None

    def submit(self, job: Job) -> None:
        """Dispatch at once if a replica has room, else queue (and scale up)."""
        self.meter.submitted(job.n)
        self.last_demand = time.monotonic()
        with self.lock:
            self._place_locked(job)
        if job.ref is not None:
            _on_ready(job.ref, self._on_ref, job)
        elif job.error is not None:
            self._report(job, False, job.error, errors=job.n)

    def call_sync(self, method: str | None, args: tuple, kwargs: dict, done: DoneFn) -> Job:
        """The warm-call hot path: dispatch in the caller's thread and ``ray.get`` here.
        Falls back to the bridge or the queue when no replica has room."""
        job = Job("call", method, (args, kwargs), 1, done)
        self.meter.submitted(1)
        self.last_demand = time.monotonic()
        with self.lock:
            sent = self._place_locked(job)
        if not sent:
            if job.ref is not None:  # bridged
                _on_ready(job.ref, self._on_ref, job)
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

    def _on_ref(self, job: Job, fut: Any) -> None:
        try:
            result = fut.result()
        except Exception as exc:
            result = exc
        self._finish(job, result)

    # -- routing and dispatch ------------------------------------------------------------

    def _pick(self, job: Job) -> Rep | None:
        cap = self.options.concurrency + (1 if job.pipelined else 0)
        best = None
        for rep in self.reps.values():
            if (
                rep.state == "ready"
                and rep.outstanding < cap
                and (best is None or rep.outstanding < best.outstanding)
            ):
                best = rep
                if rep.outstanding == 0:
                    break
        return best

    def _dispatch_locked(self, job: Job, rep: Rep) -> None:
        job.rep = rep
        job.call_id = call_id = next(_call_ids)
        job.t_dispatch = now = time.perf_counter()
        if rep.t_ready > job.t_submit:
            job.cold = True
        actor = rep.actor
        try:
            if job.kind == "call":
                args, kwargs = job.payload
                method = actor.call.remote([job.method, list(args), kwargs or None, call_id])
            elif job.kind == "batch":
                method = actor.batch.remote(job.method, job.payload, call_id)
            else:
                method = actor.chunk.remote(job.method, job.payload, job.star, call_id)
        except Exception:  # Ray could not serialize the arguments
            job.rep = None
            job.error = _serialization_error(job, self.name)
            self.meter.dispatched(job.n)
            return
        job.ref = method
        if ROUTER.address is not None:
            ROUTER.sinks[call_id] = job.sink
        if rep.outstanding == 0:
            self.meter.replica_busy(rep.rid, time.time())
        rep.outstanding += 1
        rep.jobs.add(job)
        if self.options.timeout is not None:
            job.deadline = now + self.options.timeout * (1 if job.kind != "chunk" else job.n)
        self.meter.dispatched(job.n)

    def _bridge_locked(self, job: Job) -> bool:
        """Run ``job`` on a stand-in while replicas start (see bridge.py): on one the pool
        has claimed, else (a function without a ready replica) as a task on a prestarted
        worker, at most ``prewarm`` at once. Returns whether it was sent."""
        prewarm = settings.get("prewarm")
        if not self._can_bridge or not prewarm:
            return False
        ready = sum(1 for r in self.reps.values() if r.state == "ready")
        if ready == len(self.reps) and ready and not self._hosts:
            return False  # nothing starting: the work waits for a ready replica
        starting = self._wanted_locked(extra=1) - ready  # counting what this job starts
        host = self._stand_in_locked(job, starting, ready, prewarm)
        if host is None and (  # a task on Ray's prestarted workers instead?
            self._hosts or not self._can_task or ready or len(self._bridge_jobs) >= prewarm
        ):
            return False
        job.call_id = call_id = next(_call_ids)
        job.t_dispatch = now = time.perf_counter()
        o = self.options
        try:
            job.ref = bridge.submit(
                host,
                self.key,
                self._spec_ref,
                job,
                o.env,
                (o.concurrency, o.cpus) if self.kind == "class" else None,
            )
        except Exception:
            return False  # e.g. unpicklable arguments: the normal path reports it
        job.bridged = True
        job.host = host
        self._bridge_jobs.add(job)
        if ROUTER.address is not None:
            ROUTER.sinks[call_id] = job.sink
        if self.options.timeout is not None:
            job.deadline = now + self.options.timeout * (1 if job.kind != "chunk" else job.n)
        self.meter.dispatched(job.n)
        return True

    def _stand_in_locked(
        self, job: Job, starting: int, ready: int, prewarm: int
    ) -> bridge.Host | None:
        """The claimed stand-in with room for ``job`` (claiming more as needed), or None: a
        function's calls share one stand-in, as many at once as replica slots are starting;
        a class gets one stand-in (one instance) per starting replica."""
        o = self.options
        if self.kind == "class":
            if starting <= 0:
                return None
            want = min(starting, o.max_replicas)
            cap = o.concurrency + (1 if job.pipelined else 0)
        else:
            want = 1 if starting > 0 or not ready else 0
            cap = max(0 if ready else prewarm, starting * o.concurrency)
        while len(self._hosts) < want:
            host = bridge.claim(self.key, o if self.kind == "class" else None)
            if host is None:
                break
            self._hosts.append(host)
        if not self._hosts:
            return None
        load = {id(h): 0 for h in self._hosts}
        for j in self._bridge_jobs:
            if j.host is not None:
                load[id(j.host)] = load.get(id(j.host), 0) + 1
        host = min(self._hosts, key=lambda h: load[id(h)])
        return host if load[id(host)] < cap else None

    def _drain_locked(self) -> list[Job]:
        """Dispatch queued jobs to replicas with room; returns the jobs handled."""
        sent = []
        while self.queue:
            job = self.queue[0]
            rep = self._pick(job)
            if rep is None:
                if self._bridge_locked(job):
                    sent.append(self.queue.popleft())
                    continue
                break
            self.queue.popleft()
            self._dispatch_locked(job, rep)
            sent.append(job)
        return sent

    def _pump(self) -> None:
        """Send queued jobs to replicas with room (outside the lock: callbacks, reports)."""
        with self.lock:
            sent = self._drain_locked()
            if self.queue:
                self._scale_locked()
        for job in sent:
            if job.ref is not None:
                _on_ready(job.ref, self._on_ref, job)
            else:
                self._report(job, False, job.error, errors=job.n)

    # -- completion ----------------------------------------------------------------------

    def _release_locked(self, job: Job) -> None:
        if job.bridged:
            if job in self._bridge_jobs:
                self._bridge_jobs.discard(job)
                self.meter.borrowed(time.perf_counter() - job.t_dispatch)
            return
        rep = job.rep
        if rep is None or job not in rep.jobs:
            return
        rep.jobs.discard(job)
        rep.outstanding -= 1
        if rep.outstanding == 0:
            rep.last_idle = time.monotonic()
            if rep.state != "dead":
                self.meter.replica_idle(rep.rid, time.time())

    def _finish(self, job: Job, result: Any) -> None:
        """A job's reply (an envelope) or failure (a Ray exception) arrived."""
        call_id = job.call_id  # a retry dispatches the job again under a new one
        try:
            self._settle(job, result)
        finally:
            # only now: frames streamed just before the reply may still arrive while
            # job.sink.finish waits for them
            ROUTER.sinks.pop(call_id, None)

    def _settle(self, job: Job, result: Any) -> None:
        if isinstance(result, DEATH_ERRORS):
            if job.host is not None:
                self._retire_host(job.host)
            self._on_death(job, result)
            return
        with self.lock:
            if job.finished:
                return
            self._release_locked(job)
        if job.cancelled or isinstance(result, rex.TaskCancelledError):
            self._cancelled(job, was_queued=False)
            self._pump()
            return
        if isinstance(result, BaseException):
            err = RemoteError(f"{self.name}: the call failed in Ray: {result}")
            self._report(job, False, err, errors=job.n)
            self._pump()
            return
        ok, value, exec_s, rest, seq = result
        job.sink.finish(rest, seq)
        errors = 0
        if job.kind == "chunk":
            errors = len(value[1]) if value[1] else 0
        elif not ok:
            errors = job.n
        self._report(job, ok, value, errors=errors, exec_s=exec_s)
        self._pump()

    def _report(self, job: Job, ok: bool, value: Any, *, errors: int, exec_s: float = 0.0) -> None:
        with self.lock:  # a reply and a cancellation racing: the job is metered once
            if job.finished:
                return
            job.finished = True
        job.exec_s = exec_s
        if ok and job.n:
            item_s = exec_s / job.n
            self.item_s = item_s if self.item_s is None else 0.7 * self.item_s + 0.3 * item_s
        now = time.perf_counter()
        waited = (job.t_dispatch or now) - job.t_submit
        self.meter.finished(
            job.n,
            errors=errors,
            total_s=now - job.t_submit,
            queue_s=0.0 if job.cold else waited,
            cold_s=waited if job.cold else 0.0,
            exec_s=exec_s / job.n if job.n else exec_s,
            cold=job.cold,
        )
        job.done(job, ok, value)

    def _detach_locked(self, job: Job) -> None:
        """Take a job off its replica and remove that replica (dead, stuck or cancelled)."""
        rep = job.rep
        self._release_locked(job)
        if rep is not None:
            self._stop_locked(rep)

    def _on_death(self, job: Job, exc: BaseException) -> None:
        with self.lock:
            if job.finished:
                return
            self._detach_locked(job)
            if job.cancelled:
                retry = False
            else:
                retry = job.attempts < self.options.retries and not self.closed
            if retry:
                job.attempts += 1
                job.rep, job.ref, job.t_dispatch, job.bridged = None, None, 0.0, False
                job.host = None
                self.meter.retried(job.n)
                self.queue.appendleft(job)
                self._scale_locked()
        if job.cancelled:
            self._cancelled(job, was_queued=False)
        elif not retry:
            cause = _death_cause(exc)
            err = ReplicaDiedError(
                f"{self.name}: the replica running this call died ({cause}) and the call was "
                f"run {job.attempts + 1} time(s). If it ran out of memory, ask for more with "
                f"memory=...; to re-run more often, raise retries= (now {self.options.retries})."
            )
            self._report(job, False, err, errors=job.n)
        self._pump()

    def _on_timeout(self, job: Job) -> None:
        with self.lock:
            if job.finished:
                return
            self._detach_locked(job)  # recycle: the call may still be running there
        if job.bridged:
            self._stop_stand_in(job)
        err = CallTimeoutError(
            f"{self.name}: the call ran longer than timeout={self.options.timeout:g} s and was "
            "stopped (its replica was recycled). Raise timeout= if it needs longer."
        )
        self._report(job, False, err, errors=job.n)
        self._pump()

    def _stop_stand_in(self, job: Job) -> None:
        """A stand-in call that must stop: a task is force-cancelled, a claimed stand-in
        process is removed (its other calls are re-run like any replica's)."""
        if job.host is not None:
            self._retire_host(job.host)
            return
        try:
            ray.cancel(job.ref, force=True)
        except Exception:
            pass

    def _retire_host(self, host: bridge.Host) -> None:
        with self.lock:
            if host in self._hosts:
                self._hosts.remove(host)
        bridge.retire(host)

    def _cancelled(self, job: Job, *, was_queued: bool) -> None:
        with self.lock:  # see _report: finished or cancelled, never both
            if job.finished:
                return
            job.finished = True
        self.meter.cancelled(job.n, was_queued=was_queued)
        job.done(job, False, CancelledError(f"{self.name}: the call was cancelled"))

    def cancel(self, job: Job) -> None:
        """Cancel a queued or running job (Ctrl-C); the pool stays usable."""
        with self.lock:
            if job.finished:
                return
            job.cancelled = True
            try:
                self.queue.remove(job)
                queued = True
            except ValueError:
                queued = False
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
        if job.finished:
            return
        with self.lock:
            self._detach_locked(job)
        if job.bridged:
            self._stop_stand_in(job)
        self._cancelled(job, was_queued=False)

    # -- replicas ------------------------------------------------------------------------

    def _check_feasible(self) -> None:
        o = self.options
        need = {"CPU": o.cpus, "GPU": o.gpus, "memory": o.memory or 0}
        nodes = cluster.node_resources()
        if any(all(n.get(k, 0.0) >= v for k, v in need.items() if v) for n in nodes):
            return
        if cluster.can_autoscale():
            return
        have = ", ".join(
            f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU/{n.get('memory', 0) / 2**30:.1f} GiB"
            for n in nodes
        )
        missing = [k for k, v in need.items() if v and not any(n.get(k, 0.0) >= v for n in nodes)]
        memory = f"memory={(o.memory or 0) / 2**30:.3g} GiB"
        what = {"CPU": f"cpus={o.cpus:g}", "GPU": f"gpus={o.gpus:g}", "memory": memory}
        raise InfeasibleError(
            f"{self.name}: no node of this cluster can ever provide "
            f"{', '.join(what[m] for m in missing) or 'this request'} (nodes: {have or 'none'}) "
            "and no autoscaler can add one. Ask for less, or connect to a cluster that has it "
            "with nbs.connect(address)."
        )

    def _live(self) -> list[Rep]:
        return [r for r in self.reps.values() if r.state != "dead"]

    def _scale_locked(self) -> None:
        if not self._feasible or self.closed:
            return
        # a class's stand-in holds its slot (and its reservation, bridge.reserve) until it
        # retires: a replica started for that slot would only compete with it for the node
        covered = len(self._hosts) if self.kind == "class" else 0
        for _ in range(self._wanted_locked() - len(self._live()) - covered):
            self._start_locked()

    def _wanted_locked(self, extra: int = 0) -> int:
        """Replicas the queued and running work (plus ``extra`` jobs) calls for."""
        o = self.options
        demand = len(self.queue) + len(self._bridge_jobs) + extra
        demand += sum(r.outstanding for r in self.reps.values())
        want = math.ceil(demand / o.concurrency)
        ready = sum(1 for r in self.reps.values() if r.state == "ready")
        if ready and self.item_s is not None and want > len(self._live()):
            # a new replica only helps if the queue outlasts its start
            backlog_s = sum(j.n for j in self.queue) * self.item_s / (ready * o.concurrency)
            if backlog_s < self.start_s:
                want = len(self._live())
        if self.hold_min:
            want = max(want, o.min_replicas)
        return min(want, o.max_replicas)

    def _start_locked(self) -> None:
        o = self.options
        rid = f"{self.name}-{next(self._rep_ids)}"
        opts: dict[str, Any] = {
            "num_cpus": o.cpus,
            "num_gpus": o.gpus,
            "max_concurrency": o.concurrency,
            "max_restarts": 0,
            "max_task_retries": 0,
        }
        if o.memory:
            opts["memory"] = o.memory
        runtime_env = o.runtime_env()
        if runtime_env:
            opts["runtime_env"] = runtime_env
        actor = ReplicaActor.options(**opts).remote(rid, ROUTER.address)
        self.starts += 1
        rep = Rep(rid, actor)
        self.reps[rid] = rep
        _on_ready(actor.ping.remote(), self._on_placed, rep)
        load = actor.load.remote(self._spec_ref, bool(self._hosts))
        _on_ready(load, self._on_loaded, rep)

    def _on_placed(self, rep: Rep, fut: Any) -> None:
        try:
            info = fut.result()
        except Exception:
            return  # reported by _on_loaded
        with self.lock:
            if rep.state == "pending":
                rep.state = "loading"
                self.meter.replica_started(rep.rid, info["t_start"])
                self._record_count_locked()

    def _on_loaded(self, rep: Rep, fut: Any) -> None:
        try:
            info = fut.result()
        except Exception as exc:
            info = {"ok": False, "error": exc}
        failed: list[Job] = []
        with self.lock:
            if rep.state == "dead":
                return
            if rep.state == "pending":  # ping's callback may run later; bill from start
                rep.state = "loading"
                if info.get("t_start"):
                    self.meter.replica_started(rep.rid, info["t_start"])
            if info.get("ok"):
                rep.state = "ready"
                rep.t_ready = time.perf_counter()
                took = time.monotonic() - rep.t_created
                self.start_s = 0.5 * (self.start_s + took)
                rep.last_idle = time.monotonic()
                self._record_count_locked()
            else:
                self._stop_locked(rep)
                failed = list(self.queue)
                self.queue.clear()
        if info.get("ok"):
            self._pump()
            return
        err = info.get("error")
        if isinstance(err, BaseException):
            err = RemoteError(
                f"{self.name}: a replica could not start: {_death_cause(err)}. Check the "
                "env=/pip= options and the cluster's resources."
            )
        for job in failed:
            self.meter.dispatched(job.n)
            self._report(job, False, err, errors=job.n)

    def _record_count_locked(self) -> None:
        n = sum(1 for r in self.reps.values() if r.state in ("loading", "ready"))
        self.replica_history.append((time.time(), n))

    def _stop_locked(self, rep: Rep) -> None:
        if rep.state == "dead":
            return
        billed = rep.state in ("loading", "ready")
        rep.state = "dead"
        self.reps.pop(rep.rid, None)
        try:
            ray.kill(rep.actor, no_restart=True)
        except Exception:
            pass
        if billed:
            if rep.outstanding:
                self.meter.replica_idle(rep.rid, time.time())
            self.meter.replica_stopped(rep.rid, time.time())
            self._record_count_locked()

    def replicas(self) -> int:
        """Replicas holding resources now (starting or ready)."""
        with self.lock:
            return sum(1 for r in self.reps.values() if r.state in ("loading", "ready"))

    def tick(self, now: float) -> None:
        """Supervisor work: keep-alive, timeouts, unneeded starts, min_replicas."""
        expired: list[Job] = []
        with self.lock:
            o = self.options
            ready = [r for r in self.reps.values() if r.state == "ready"]
            keep = o.min_replicas if self.hold_min else 0
            for rep in sorted(ready, key=lambda r: r.last_idle):
                if len(ready) <= keep:
                    break
                if rep.outstanding == 0 and now - rep.last_idle >= o.keep_alive:
                    self._stop_locked(rep)
                    ready.remove(rep)
            idle_for = now - self.last_demand
            if not self.queue and not self._bridge_jobs and idle_for >= o.keep_alive:
                # a start nobody needs any more (it would only sit idle): cancel it
                for rep in list(self.reps.values()):
                    if rep.state == "pending" and len(self._live()) > keep:
                        self._stop_locked(rep)
            idle_hosts: list[bridge.Host] = []
            if (
                self._hosts
                and not self._bridge_jobs
                and (
                    self.closed
                    or not any(r.state in ("pending", "loading") for r in self.reps.values())
                )
            ):  # its replicas are ready (or gone): no stand-in needed
                idle_hosts, self._hosts = self._hosts, []
            if o.timeout is not None:
                pnow = time.perf_counter()
                for rep in self.reps.values():
                    expired += [j for j in rep.jobs if j.deadline and pnow > j.deadline]
                expired += [j for j in self._bridge_jobs if j.deadline and pnow > j.deadline]
            self._scale_locked()
        for host in idle_hosts:
            bridge.retire(host)
        for job in expired:
            self._on_timeout(job)

    def waiting_for_resources(self, now: float) -> bool:
        """Work waits (queued, or bridged until a replica exists) and a replica of ours has
        waited for placement a while: another pool's idle replica should give way."""
        with self.lock:
            waiting = bool(self.queue or self._bridge_jobs) and any(
                r.state == "pending" and now - r.t_created > GIVE_WAY_AFTER_S
                for r in self.reps.values()
            )
        if not waiting:
            return False
        # pending only because a process is starting? then nobody needs to give way
        free = cluster.summary()
        o = self.options
        return (
            free["cpus"] - free["cpus_used"] < o.cpus - 1e-9
            or free["gpus"] - free["gpus_used"] < o.gpus - 1e-9
        )

    def give_way(self) -> bool:
        """Remove one idle replica (above min_replicas) for another pool's waiting work."""
        with self.lock:
            ready = [r for r in self.reps.values() if r.state == "ready" and not r.outstanding]
            total = sum(1 for r in self.reps.values() if r.state == "ready")
            if ready and total > (self.options.min_replicas if self.hold_min else 0):
                self._stop_locked(min(ready, key=lambda r: r.last_idle))
                return True
        return False

    def scale_to_zero(self) -> None:
        """Remove every idle replica, ``min_replicas`` ones too (until the next call)."""
        with self.lock:
            self.hold_min = False
            for rep in list(self.reps.values()):
                if rep.outstanding == 0:
                    self._stop_locked(rep)

    def close(self) -> None:
        """Cancel queued work and remove every replica (session shutdown)."""
        with self.lock:
            self.closed = True
            queued = list(self.queue)
            self.queue.clear()
            running = [j for r in self.reps.values() for j in r.jobs]
            for rep in list(self.reps.values()):
                self._stop_locked(rep)
            hosts, self._hosts = self._hosts, []
        for host in hosts:
            bridge.retire(host)
        for job in queued:
            self._cancelled(job, was_queued=True)
        for job in running:
            self._cancelled(job, was_queued=False)
        _registry.remove(self)


def _serialization_error(job: Job, name: str) -> Exception:
    if job.kind == "call":
        args, kwargs = job.payload
    else:
        args, kwargs = (tuple(job.payload), {})
    return diagnose_args(args, kwargs, name)


def _death_cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = next((line for line in text if line.strip()), type(exc).__name__)
    if isinstance(exc, rex.OutOfMemoryError) or "memory" in str(exc).lower():
        return "out of memory: " + first[:300]
    return first[:300]


def all_pools() -> list[Pool]:
    """Every live pool of this kernel."""
    return list(_registry.all())


def scale_all_to_zero() -> None:
    """Remove every idle replica of every pool (the lab panel's "Scale to zero")."""
    for pool in all_pools():
        pool.scale_to_zero()


def close_all() -> None:
    for pool in all_pools():
        pool.close()
