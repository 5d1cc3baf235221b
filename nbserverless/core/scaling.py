"""A pool's scaling: it asks the pure policy (core/policy.py) and applies the answers — scale
up (claiming warm replicas first), keep-alive, cancelling starts nobody needs, the timeout
sweep, giving way to another pool's waiting work, leaving the loop when there is nothing left.

Example: ``Scaling`` is a base of ``Pool``; the loop calls ``pool.tick(now)``.
"""

from __future__ import annotations

import time

from .. import settings
from . import capacity, cluster, policy, warm
from .loop import registry as _registry

GIVE_WAY_AFTER_S = 0.3


class Scaling:
    """Scaling decisions of a :class:`~nbserverless.core.pool.Pool` (a base class of it)."""

    def _demand_locked(self) -> policy.Demand:
        o = self.options
        ready = sum(1 for r in self.reps.values() if r.state == "ready")
        warm_ok = self._can_claim and settings.get("prewarm") and warm.STOCK.available()
        return policy.Demand(
            queued=len(self.queue),
            running=sum(r.outstanding for r in self.reps.values()),
            live=len(self.reps),
            ready=ready,
            concurrency=o.concurrency,
            max_replicas=o.max_replicas,
            min_replicas=max(
                o.min_replicas if self.hold_min else 0,
                1 if time.monotonic() < self.prewarm_until else 0,
            ),  # fmt: skip
            queued_items=sum(j.n for j in self.queue) + sum(self.unsent_items.values()),
            item_s=self.item_s,
            start_s=policy.CLAIM_S if warm_ok else self.start_s,
            keep_alive=o.keep_alive,
        )

    def _scale_locked(self) -> None:
        if not self._feasible or self.closed:
            return
        n = policy.replicas_to_add(self._demand_locked())
        if n <= 0:
            return
        can = self._can_claim and bool(settings.get("prewarm"))
        claims, starts = policy.plan_new(n, warm.STOCK.available() if can else 0, can)
        for _ in range(claims):
            host = warm.STOCK.claim()
            if host is None:
                starts += 1
            else:
                self._claim_locked(host)
        for _ in range(starts):
            self._start_locked()

    def tick(self, now: float) -> None:
        """Loop work: keep-alive, timeouts, unneeded starts, min_replicas, leaving the loop."""
        expired: list = []
        with self._locked():
            d = self._demand_locked()
            if (
                self.learner is not None
                and not self._idle_seen
                and not self.queue
                and not any(r.outstanding for r in self.reps.values())
            ):
                self._idle_seen = True
                self.learner.observe_idle(now)
            keep_alive = 0.0 if self.retiring else self.keep_alive_s(d, now)
            if now < self.prewarm_until:
                d = self._demand_locked()  # a learned pre-warm: one replica up before the call
            ready = [(r, r.last_idle, r.outstanding) for r in self.reps.values()
                     if r.state == "ready"]  # fmt: skip
            for rep in policy.keep_alive_victims(ready, d.min_replicas, now, keep_alive):
                self._stop_locked(rep)
            idle_for = now - self.last_demand
            pending = [r for r in self.reps.values() if r.state == "pending"]
            cut = policy.unneeded_starts(len(pending), len(self.reps), d.min_replicas,
                                         len(self.queue), idle_for, keep_alive)  # fmt: skip
            for rep in pending[:cut]:
                self._stop_locked(rep)
            if self.options.timeout is not None:
                pnow = time.perf_counter()
                for rep in self.reps.values():
                    expired += [j for j in rep.jobs if j.deadline and pnow > j.deadline]
            self._scale_locked()
            running = sum(r.outstanding for r in self.reps.values())
            if policy.should_unregister(len(self.reps), len(self.queue), running, idle_for,
                                        keep_alive) and not expired:  # fmt: skip
                self._registered = False
                _registry.remove(self)
        for job in expired:
            self._on_timeout(job)
        capacity.tick(self, now)  # waiting_for_node in stats(); node_timeout

    def waiting_for_resources(self, now: float) -> bool:
        """Work waits and a replica of ours has waited for placement a while, for want of
        free resources: another pool's idle replica should give way."""
        with self.lock:
            waiting = bool(self.queue) and any(
                r.state == "pending" and now - r.t_created > GIVE_WAY_AFTER_S
                for r in self.reps.values()
            )
        if not waiting:
            return False
        free = cluster.summary()
        o = self.options
        return (
            free["cpus"] - free["cpus_used"] < o.cpus - 1e-9
            or free["gpus"] - free["gpus_used"] < o.gpus - 1e-9
        )

    def give_way(self) -> bool:
        """Remove one idle replica (above min_replicas) for another pool's waiting work."""
        with self._locked():
            idle = [(r, r.last_idle, r.outstanding) for r in self.reps.values()
                    if r.state == "ready"]  # fmt: skip
            rep = policy.give_way_victim(idle, self.options.min_replicas if self.hold_min else 0)
            if rep is not None:
                self._stop_locked(rep)
        return rep is not None

    def retire(self) -> None:
        """The handle was redefined: queued and running calls finish, then every replica goes
        at once (no keep-alive, no ``min_replicas``); the next tick removes idle ones."""
        with self._locked():
            self.retiring = True
            self.hold_min = False

    def scale_to_zero(self) -> None:
        """Remove every idle replica, ``min_replicas`` ones too (until the next call)."""
        with self._locked():
            self.hold_min = False
            for rep in list(self.reps.values()):
                if rep.outstanding == 0:
                    self._stop_locked(rep)
