"""The scaling policy of a pool: pure decisions over a snapshot of its state.

No Ray, no threads, no clock: ``now`` is an argument, so every decision is unit-tested on
synthetic arrival sequences without a cluster (tests/test_policy.py), as Ray Serve tests its
autoscaling policy. The pool takes a snapshot under its lock, asks, and acts.

Example::

    d = Demand(queued=5, running=1, live=1, ready=1, concurrency=1, max_replicas=4)
    replicas_to_add(d)             # -> 3: the backlog asks for all at once, up to the cap
    plan_new(3, warm=2, can_claim=True)   # -> (2, 1): warm replicas first
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

#: What a claim of a warm replica costs before it serves (seconds), for the backlog rule.
CLAIM_S = 0.05


@dataclass(frozen=True)
class Demand:
    """One pool at one moment: the work and the replicas (counts, seconds)."""

    queued: int  # jobs waiting for a replica
    running: int  # jobs on replicas now
    live: int  # replicas starting or ready
    ready: int  # replicas that take calls
    concurrency: int = 1
    max_replicas: int = 8
    min_replicas: int = 0  # 0 once scaled to zero by hand, until the next call
    queued_items: int = 0  # items in the queued jobs (a map chunk holds several)
    item_s: float | None = None  # measured execution time of one item
    start_s: float = 1.0  # what adding a replica takes (a start, or a claim: CLAIM_S)
    keep_alive: float = 60.0  # the fixed keep-alive option


def fixed_keep_alive(demand: Demand, now: float) -> float:
    """The default keep-alive: the option. A learned one has this signature too.
    Example: ``fixed_keep_alive(Demand(0, 0, 1, 1, keep_alive=30), now=0.0)`` -> ``30``."""
    return demand.keep_alive


KeepAliveFn = Callable[[Demand, float], float]


def desired_replicas(d: Demand) -> int:
    """Replicas the queued and running work calls for: all at once, up to ``max_replicas``.
    A replica more only helps if the backlog outlasts adding it (fast items drain first).
    Example: ``desired_replicas(Demand(queued=7, running=1, live=0, ready=0))`` -> ``8``."""
    want = math.ceil((d.queued + d.running) / max(1, d.concurrency))
    if d.ready and d.item_s is not None and want > d.live:
        backlog_s = d.queued_items * d.item_s / (d.ready * max(1, d.concurrency))
        if backlog_s < d.start_s:
            want = d.live
    want = max(want, d.min_replicas)
    return max(0, min(want, d.max_replicas))


def replicas_to_add(d: Demand) -> int:
    """How many replicas to start or claim now (never negative; scale-down is keep-alive)."""
    return max(0, desired_replicas(d) - d.live)


def plan_new(n: int, warm: int, can_claim: bool) -> tuple[int, int]:
    """``(claims, starts)`` for ``n`` new replicas: warm replicas first, when the pool's
    options let it use them. Example: ``plan_new(3, warm=1, can_claim=True)`` -> ``(1, 2)``."""
    claims = min(n, warm) if can_claim else 0
    return claims, n - claims


def pick(loads: Sequence[tuple[Hashable, int]], cap: int) -> Hashable | None:
    """The least loaded replica with room (``outstanding < cap``), first on ties; ``loads``
    lists ready replicas as ``(key, outstanding)``. Example: ``pick([("a", 1), ("b", 0)], 1)``
    -> ``"b"``."""
    best, best_load = None, cap
    for key, load in loads:
        if load < best_load:
            best, best_load = key, load
            if load == 0:
                break
    return best


def keep_alive_victims(
    idle: Sequence[tuple[Hashable, float, int]], keep: int, now: float, keep_alive: float
) -> list[Hashable]:
    """Ready replicas to remove: idle (no call) for at least ``keep_alive`` seconds, the
    longest idle first, never going below ``keep``. ``idle`` lists every ready replica as
    ``(key, idle_since, outstanding)``."""
    victims: list[Hashable] = []
    left = len(idle)
    for key, since, outstanding in sorted(idle, key=lambda e: e[1]):
        if left <= keep:
            break
        if outstanding == 0 and now - since >= keep_alive:
            victims.append(key)
            left -= 1
    return victims


def unneeded_starts(pending: int, live: int, keep: int, queued: int, idle_for: float,
                    keep_alive: float) -> int:  # fmt: skip
    """Starting replicas to cancel: nobody has asked for work for ``keep_alive`` and nothing
    waits, so they would only sit idle (down to ``keep``)."""
    if queued or idle_for < keep_alive:
        return 0
    return max(0, min(pending, live - keep))


def give_way_victim(idle: Sequence[tuple[Hashable, float, int]], keep: int) -> Hashable | None:
    """The replica that gives way to another pool's waiting work: the longest idle one with no
    call, if the pool keeps more than ``keep`` ready replicas."""
    free = [e for e in idle if e[2] == 0]
    if not free or len(idle) <= keep:
        return None
    return min(free, key=lambda e: e[1])[0]


def should_unregister(live: int, queued: int, running: int, idle_for: float,
                      keep_alive: float) -> bool:  # fmt: skip
    """A pool with nothing (no replica, no work) idle past its keep-alive leaves the tick
    loop's registry; its next call brings it back."""
    return live == 0 and queued == 0 and running == 0 and idle_for >= keep_alive
