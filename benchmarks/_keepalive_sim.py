"""A small discrete-time model of one function's pool, to compare keep-alive policies on the
whole of a trace in seconds and without a cluster (the live replay measures the real pool).

Model (the same for every policy): replicas of ``concurrency=1``, at most ``max_replicas``; a
request takes an idle ready replica (warm), else starts a new one if allowed (cold: ready after
``start_s``), else waits for the replica that frees first. An idle replica goes once idle for
the keep-alive; the learned policy (core/keepalive.py) may also pre-warm one. Time advances
in ticks of ``tick`` seconds.

Example: ``simulate(load("code", None, 10.0), keep_alive="auto")["cold_starts"]``.
"""

from __future__ import annotations

import math
from typing import Any

from nbserverless.core.keepalive import LearnedKeepAlive

from ._trace import Arrival


class _Rep:
    __slots__ = ("ready", "free", "idle_since")

    def __init__(self, ready: float):
        self.ready = ready  # time it can take work
        self.free = ready  # time its current work ends
        self.idle_since = ready


def simulate(
    arrivals: list[Arrival],
    *,
    keep_alive: float | str,
    fallback_s: float = 60.0,
    start_s: float = 1.0,
    max_replicas: int = 8,
    ms_per_token: float = 0.2,
    tick: float = 0.05,
) -> dict[str, Any]:
    """Cold starts, idle and busy replica-seconds, latency p99 of one policy on ``arrivals``
    (``keep_alive`` seconds, or ``"auto"`` for the learned one with ``fallback_s``)."""
    learned = LearnedKeepAlive(fallback_s=fallback_s, start_s=start_s)
    auto = keep_alive == "auto"
    reps: list[_Rep] = []
    cold = starts = prewarms = 0
    idle = busy = 0.0
    lat: list[float] = []
    i, n = 0, len(arrivals)
    t = 0.0
    was_busy = False
    while i < n or reps:
        # settle the tick: who is idle, who goes
        keep = learned.decide(t) if auto else None
        ka = keep.keep_alive_s if keep else float(keep_alive)
        for r in list(reps):
            if r.free <= t and t - max(r.idle_since, r.free) >= ka:
                idle += t - max(r.idle_since, r.free)
                reps.remove(r)
        now_busy = any(r.free > t for r in reps)
        if was_busy and not now_busy and auto:
            learned.observe_idle(max(r.free for r in reps) if reps else t)
        was_busy = now_busy
        if keep is not None and keep.prewarm_at is not None and keep.prewarm_at <= t and not reps:
            reps.append(_Rep(t + start_s))
            starts += 1
            prewarms += 1
        while i < n and arrivals[i].t <= t + tick:
            a = arrivals[i]
            i += 1
            if auto:
                learned.observe_call(a.t)
            work = a.tokens * ms_per_token / 1000
            ready = [r for r in reps if r.free <= a.t]
            if ready:
                r = max(ready, key=lambda r: r.free)  # the warmest: the others may go
                idle += a.t - max(r.idle_since, r.free)
                begin = a.t
            elif len(reps) < max_replicas:
                r = _Rep(a.t + start_s)
                reps.append(r)
                starts += 1
                cold += 1
                begin = r.ready
            else:
                r = min(reps, key=lambda r: r.free)
                begin = r.free
                if r.ready > a.t and r.ready == r.free:
                    cold += 1  # it waits for a replica that is still starting
            r.free = begin + work
            r.idle_since = r.free
            busy += work
            lat.append(r.free - a.t)
            was_busy = True
        t += tick
        if i >= n and t > arrivals[-1].t + 3600:  # a very long keep-alive: stop counting
            break
    lat.sort()
    return {
        "policy": f"keep_alive={keep_alive}",
        "cold_starts": cold,
        "replica_starts": starts,
        "prewarms": prewarms,
        "idle_replica_s": idle,
        "busy_replica_s": busy,
        "replica_s": busy + idle + starts * start_s,  # what a replica bills, starts included
        "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else math.nan,
        "label": learned.decide(t).label if auto else f"keep-alive {keep_alive} s (fixed)",
    }
