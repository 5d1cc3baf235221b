"""A pool's replicas: start or claim, reserve, ready, stop — and their billing events.

A replica is either a Ray actor the pool starts (``num_cpus=cpus``, billed from the moment its
process runs) or a warm replica it claims from the stock (core/warm.py), billed from the moment
a placement group holding the pool's resources on that replica's node is ready. Either way:
pending -> loading (billed, idle) -> ready -> dead, busy while it runs calls. Ray calls that
create or remove things (actor creation, placement groups, kills) never run under the pool
lock: methods named ``*_locked`` queue them on ``pool._outbox``, run once the lock is released.

A crash while a replica starts (its process killed, its ``__init__``'s process killed) does not
fail the queued calls: another replica starts, up to ``retries`` + 1 failed starts in a row.
A start whose node went away before the replica ran (an autoscaler removing a node it had just
added, a node lost) says nothing about the function: it is tried again, up to
``NODE_LOSSES`` in a row.

Example: ``ReplicaSet`` is a base of ``Pool``; ``pool._start_locked()`` asks for one replica.
"""

from __future__ import annotations

import time
from typing import Any

import ray
from ray import exceptions as rex

from ..errors import RemoteError
from ..worker.replica import Replica
from . import capacity
from .completions import on_ready as _on_ready
from .output import ROUTER

ReplicaActor = ray.remote(Replica)
NODE_LOSSES = 10  # starts in a row lost with their node before a replica is given up
DEATH_ERRORS = (
    rex.RayActorError,
    rex.WorkerCrashedError,
    rex.NodeDiedError,
    rex.ObjectLostError,
    rex.OutOfMemoryError,
)


class Rep:
    """The pool's view of one replica."""

    __slots__ = ("rid", "actor", "state", "outstanding", "t_created", "t_ready", "last_idle",
                 "jobs", "claimed", "node", "pg", "loaded")  # fmt: skip

    def __init__(self, rid: str, actor: Any, claimed: bool = False, node: str = ""):
        self.rid = rid
        self.actor = actor  # None until launched (outside the lock)
        self.state = "pending"  # pending -> loading (billed) -> ready -> dead
        self.outstanding = 0
        self.t_created = time.monotonic()
        self.t_ready = 0.0
        self.last_idle = time.monotonic()
        self.jobs: set = set()
        self.claimed = claimed  # a warm replica claimed from the stock
        self.node = node
        self.pg: Any = None  # the placement group holding a claimed replica's resources
        self.loaded = False


class ReplicaSet:
    """Replica lifecycle of a :class:`~nbserverless.core.pool.Pool` (a base class of it)."""

    # -- asking for replicas (under the lock; the Ray calls run after it) ------------------

    def _start_locked(self) -> None:
        rid = f"{self.name}-{next(self._rep_ids)}"
        rep = Rep(rid, None)
        self.reps[rid] = rep
        self.starts += 1
        self._outbox.append(lambda: self._launch_start(rep))

    def _claim_locked(self, host: Any) -> None:
        rid = f"{self.name}-{next(self._rep_ids)}"
        rep = Rep(rid, host.actor, claimed=True, node=host.node)
        self.reps[rid] = rep
        self.starts += 1
        self.claims += 1
        self._outbox.append(lambda: self._launch_claim(rep))

    def _launch_start(self, rep: Rep) -> None:
        opts = self.options.ray_actor_options()  # the one place they are built
        try:
            actor = ReplicaActor.options(**opts).remote(rep.rid, ROUTER.address)
        except Exception as exc:  # Ray refused the request itself: no retry can help
            self._start_failed(rep, exc, fatal=True)
            return
        with self._locked():
            if rep.state == "dead":
                self._outbox.append(lambda: _kill(actor, None))
                return
            rep.actor = actor
        _on_ready(actor.ping.remote(), self._on_placed, rep)
        _on_ready(actor.load.remote(self._spec_ref), self._on_loaded, rep)

    def _launch_claim(self, rep: Rep) -> None:
        o = self.options
        bundle = {"CPU": o.cpus, "memory": o.memory or 0}
        bundle = {k: v for k, v in bundle.items() if v}
        pg = None
        if bundle:
            if rep.node:
                bundle[f"node:{rep.node}"] = 0.001  # on the warm replica's own node
            try:
                pg = ray.util.placement_group([bundle])
            except Exception as exc:
                self._start_failed(rep, exc, fatal=True)
                return
        with self._locked():
            if rep.state == "dead":
                self._outbox.append(lambda: _kill(rep.actor, pg))
                return
            rep.pg = pg
        if pg is not None:
            _on_ready(pg.ready(), self._on_reserved, rep)
        else:
            self._on_reserved(rep, None)
        ref = rep.actor.claim.remote(rep.rid, ROUTER.address, o.env, self._spec_ref, o.cpus)
        _on_ready(ref, self._on_loaded, rep)

    # -- replies ----------------------------------------------------------------------------

    def _on_placed(self, rep: Rep, fut: Any) -> None:
        """A started replica's process runs: billed from its start."""
        try:
            info = fut.result()
        except Exception:
            return  # reported by _on_loaded
        with self._locked():
            if rep.state == "pending":
                self._billed_locked(rep, info["t_start"])

    def _on_reserved(self, rep: Rep, fut: Any) -> None:
        """A claimed replica's resources are held: billed from now."""
        if fut is not None:
            try:
                fut.result()
            except Exception as exc:
                self._start_failed(rep, exc)
                return
        with self._locked():
            if rep.state == "pending":
                self._billed_locked(rep, time.time())
                if rep.loaded:
                    self._ready_locked(rep)
        self._pump()

    def _billed_locked(self, rep: Rep, t: float) -> None:
        rep.state = "loading"
        self.meter.replica_started(rep.rid, t)
        self._record_count_locked()

    def _ready_locked(self, rep: Rep) -> None:
        rep.state = "ready"
        rep.t_ready = time.perf_counter()
        took = time.monotonic() - rep.t_created
        if not rep.claimed:
            self.start_s = 0.5 * (self.start_s + took)
        rep.last_idle = time.monotonic()
        self.start_failures = 0
        self.nodes_lost = 0
        self._record_count_locked()

    def _on_loaded(self, rep: Rep, fut: Any) -> None:
        try:
            info = fut.result()
        except Exception as exc:
            self._start_failed(rep, exc)
            return
        if not info.get("ok"):  # the class's __init__ raised: every queued call gets it
            with self._locked():
                self._stop_locked(rep)
                failed = self._take_queue_locked()
            for job in failed:
                self._report(job, False, info.get("error"), errors=job.n)
            return
        with self._locked():
            if rep.state == "dead":
                return
            rep.loaded = True
            if rep.state == "pending" and not rep.claimed:  # ping's callback may come later
                self._billed_locked(rep, info.get("t_start") or time.time())
            if rep.state == "loading":
                self._ready_locked(rep)
        self._pump()

    def _start_failed(self, rep: Rep, exc: BaseException, fatal: bool = False) -> None:
        """A replica could not start. Its process died (killed, out of memory, node lost):
        start another, up to ``retries`` + 1 failures in a row, then fail the queued calls."""
        with self._locked():
            if rep.state == "dead" and not fatal:
                return  # stopped on purpose (keep-alive, timeout, shutdown)
            self._stop_locked(rep)
            if not fatal and node_lost(exc):
                self.nodes_lost += 1
                give_up = self.nodes_lost > NODE_LOSSES
                tries = self.nodes_lost
            else:
                self.start_failures += 1
                give_up = fatal or self.start_failures > self.options.retries
                tries = self.start_failures
            failed = self._take_queue_locked() if give_up else []
            if not give_up:
                self._scale_locked()
        if failed:
            err = RemoteError(
                f"{self.name}: a replica could not start ({tries} failed "
                f"start(s) in a row): {start_cause(exc)}"
            )
            for job in failed:
                self._report(job, False, err, errors=job.n)

    # -- removing -----------------------------------------------------------------------------

    def _stop_locked(self, rep: Rep) -> None:
        if rep.state == "dead":
            return
        billed = rep.state in ("loading", "ready")
        rep.state = "dead"
        self.reps.pop(rep.rid, None)
        actor, pg = rep.actor, rep.pg
        rep.pg = None
        if actor is not None or pg is not None:
            self._outbox.append(lambda: _kill(actor, pg))
        if billed:
            now = time.time()
            if rep.outstanding:
                self.meter.replica_idle(rep.rid, now)
            self.meter.replica_stopped(rep.rid, now)
            self._record_count_locked()

    def _record_count_locked(self) -> None:
        n = sum(1 for r in self.reps.values() if r.state in ("loading", "ready"))
        self.replica_history.append((time.time(), n))

    def replicas(self) -> int:
        """Replicas holding resources now (starting or ready)."""
        with self.lock:
            return sum(1 for r in self.reps.values() if r.state in ("loading", "ready"))

    def _check_feasible(self) -> None:
        capacity.check_feasible(self.name, self.options)  # pending on a node type is not infeasible


def _kill(actor: Any, pg: Any) -> None:
    if actor is not None:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:
            pass
    if pg is not None:
        try:
            ray.util.remove_placement_group(pg)
        except Exception:
            pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return next((line for line in text if line.strip()), type(exc).__name__)[:300]


def death_cause(exc: BaseException) -> str:
    """What killed a replica, in one line: "out of memory" only when Ray says so."""
    if isinstance(exc, rex.OutOfMemoryError):
        return "out of memory: " + _first_line(exc) + " (ask for more with memory=...)"
    return _first_line(exc)


def node_lost(exc: BaseException) -> bool:
    """Whether a replica's start failed because its node went away (removed by the
    autoscaler, or lost) rather than because of the replica itself."""
    if isinstance(exc, rex.NodeDiedError):
        return True
    if isinstance(exc, rex.ActorDiedError) and not getattr(exc, "actor_init_failed", False):
        text = str(exc)
        return bool(getattr(exc, "preempted", False)) or "node has died" in text
    return False


def start_cause(exc: BaseException) -> str:
    """Why a replica could not start, and what to change."""
    if isinstance(exc, rex.RuntimeEnvSetupError):
        return f"its environment could not be set up: {_first_line(exc)} (check env=/pip=)"
    if isinstance(exc, DEATH_ERRORS):
        return f"its process died while starting: {death_cause(exc)}"
    return f"{_first_line(exc)} (check the options and the cluster's resources)"
