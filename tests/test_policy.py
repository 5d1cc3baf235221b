"""The scaling policy on synthetic arrival sequences: pure, no cluster, no clock."""

from __future__ import annotations

from nbserverless.core import policy
from nbserverless.core.policy import Demand


def simulate(arrivals, *, max_replicas=4, concurrency=1, service_ticks=3, start_ticks=2,
             warm=0, keep_alive=5.0, ticks=40):  # fmt: skip
    """A discrete pool driven only by the policy: ``arrivals[t]`` jobs arrive at tick t, each
    runs ``service_ticks``; a started replica is ready ``start_ticks`` later, a claimed warm
    one at the next tick. Returns per-tick (live, ready, queued, added) and the decisions."""
    queue = 0
    replicas = []  # dicts: ready_at, busy (list of remaining ticks), idle_since
    trace = []
    warm_left = warm
    for t in range(ticks):
        queue += arrivals[t] if t < len(arrivals) else 0
        for r in replicas:
            r["busy"] = [b - 1 for b in r["busy"] if b > 1]
            if not r["busy"] and r["idle_since"] is None:
                r["idle_since"] = float(t)
        ready = [r for r in replicas if r["ready_at"] <= t]
        while queue:  # route: least loaded with room, as the pool does
            i = policy.pick([(i, len(x["busy"])) for i, x in enumerate(ready)], concurrency)
            if i is None:
                break
            ready[i]["busy"].append(service_ticks)
            ready[i]["idle_since"] = None
            queue -= 1
        d = Demand(queued=queue, running=sum(len(r["busy"]) for r in replicas),
                   live=len(replicas), ready=len(ready), concurrency=concurrency,
                   max_replicas=max_replicas, keep_alive=keep_alive)  # fmt: skip
        n = policy.replicas_to_add(d)
        claims, starts = policy.plan_new(n, warm_left, True)
        warm_left -= claims
        for _ in range(claims):
            replicas.append({"ready_at": t + 1, "busy": [], "idle_since": float(t)})
        for _ in range(starts):
            replicas.append({"ready_at": t + start_ticks, "busy": [], "idle_since": float(t)})
        idle = [(i, r["idle_since"] if r["idle_since"] is not None else float(t), len(r["busy"]))
                for i, r in enumerate(replicas) if r["ready_at"] <= t]  # fmt: skip
        gone = set(policy.keep_alive_victims(idle, 0, float(t), policy.fixed_keep_alive(d, t)))
        replicas = [r for i, r in enumerate(replicas) if i not in gone]
        trace.append((len(replicas), len(ready), queue, n, claims))
    return trace


def test_a_burst_asks_for_every_replica_it_needs_in_one_tick():
    trace = simulate([10], max_replicas=4)
    live, _, _, added, _ = trace[0]
    assert added == 4 and live == 4  # from zero, the whole cap at once, not one per tick


def test_scale_up_is_bounded_by_max_replicas_and_the_backlog():
    assert policy.replicas_to_add(Demand(queued=2, running=0, live=0, ready=0)) == 2
    assert policy.replicas_to_add(Demand(queued=50, running=0, live=0, ready=0,
                                         max_replicas=8)) == 8  # fmt: skip
    assert policy.replicas_to_add(Demand(queued=5, running=3, live=8, ready=8)) == 0
    # concurrency: one replica per `concurrency` calls
    assert policy.desired_replicas(Demand(queued=7, running=0, live=0, ready=0,
                                          concurrency=3)) == 3  # fmt: skip


def test_warm_replicas_are_claimed_first():
    assert policy.plan_new(3, warm=2, can_claim=True) == (2, 1)
    assert policy.plan_new(1, warm=2, can_claim=True) == (1, 0)
    assert policy.plan_new(3, warm=2, can_claim=False) == (0, 3)
    trace = simulate([3], warm=2, max_replicas=4)
    assert trace[0][3] == 3 and trace[0][4] == 2


def test_short_backlog_does_not_start_a_replica_it_would_not_use():
    # items of 1 ms, 10 queued, one ready replica: done long before a 1 s start
    d = Demand(queued=10, running=1, live=1, ready=1, queued_items=10, item_s=0.001)
    assert policy.replicas_to_add(d) == 0
    # a long backlog does start more
    d = Demand(queued=10, running=1, live=1, ready=1, queued_items=10, item_s=1.0)
    assert policy.replicas_to_add(d) == 7
    # a warm claim is cheap: worth it for a shorter backlog than a start
    d = Demand(queued=10, running=1, live=1, ready=1, queued_items=10, item_s=0.02,
               start_s=policy.CLAIM_S)  # fmt: skip
    assert policy.replicas_to_add(d) > 0


def test_min_replicas_hold_without_work():
    assert policy.replicas_to_add(Demand(0, 0, live=0, ready=0, min_replicas=2)) == 2
    assert policy.replicas_to_add(Demand(0, 0, live=2, ready=2, min_replicas=2)) == 0


def test_routing_picks_the_least_loaded_with_room():
    assert policy.pick([("a", 1), ("b", 0), ("c", 0)], 1) == "b"
    assert policy.pick([("a", 2), ("b", 1)], 3) == "b"
    assert policy.pick([("a", 1), ("b", 1)], 1) is None
    assert policy.pick([], 1) is None


def test_keep_alive_removes_the_longest_idle_down_to_min():
    idle = [("a", 0.0, 0), ("b", 5.0, 0), ("c", 1.0, 1)]
    assert policy.keep_alive_victims(idle, keep=0, now=10.0, keep_alive=5.0) == ["a", "b"]
    assert policy.keep_alive_victims(idle, keep=2, now=10.0, keep_alive=5.0) == ["a"]
    assert policy.keep_alive_victims(idle, keep=0, now=4.0, keep_alive=5.0) == []
    # a busy replica is never a victim
    assert "c" not in policy.keep_alive_victims(idle, keep=0, now=100.0, keep_alive=5.0)


def test_a_burst_then_silence_goes_back_to_zero_after_keep_alive():
    trace = simulate([8], max_replicas=4, service_ticks=2, keep_alive=5.0, ticks=30)
    assert max(t[0] for t in trace) == 4
    assert trace[-1][0] == 0  # every replica removed after its keep-alive
    # and not before: a replica idle for less than keep_alive stays
    first_zero = next(i for i, t in enumerate(trace) if i > 0 and t[0] == 0)
    assert first_zero >= 5


def test_periodic_arrivals_within_keep_alive_keep_one_replica():
    arrivals = [1 if t % 4 == 0 else 0 for t in range(40)]
    trace = simulate(arrivals, max_replicas=4, service_ticks=1, keep_alive=5.0, ticks=40)
    assert max(t[0] for t in trace) == 1  # one replica serves them all, never a second


def test_keep_alive_is_a_seam_for_a_learned_policy():
    d = Demand(0, 0, live=1, ready=1, keep_alive=30.0)
    assert policy.fixed_keep_alive(d, now=123.0) == 30.0

    def learned(demand, now):  # any function of (demand, now) fits
        return 2.0

    idle = [("a", 0.0, 0)]
    assert policy.keep_alive_victims(idle, 0, now=3.0, keep_alive=learned(d, 3.0)) == ["a"]


def test_unneeded_starts_and_give_way():
    assert policy.unneeded_starts(pending=2, live=2, keep=0, queued=0, idle_for=10,
                                  keep_alive=5) == 2  # fmt: skip
    assert policy.unneeded_starts(2, 2, 0, queued=1, idle_for=10, keep_alive=5) == 0
    assert policy.unneeded_starts(2, 2, 1, queued=0, idle_for=10, keep_alive=5) == 1
    idle = [("a", 3.0, 0), ("b", 1.0, 0), ("c", 0.0, 1)]
    assert policy.give_way_victim(idle, keep=0) == "b"
    assert policy.give_way_victim(idle, keep=3) is None
    assert policy.give_way_victim([("c", 0.0, 1)], keep=0) is None


def test_an_idle_empty_pool_leaves_the_loop():
    assert policy.should_unregister(0, 0, 0, idle_for=61, keep_alive=60)
    assert not policy.should_unregister(1, 0, 0, idle_for=61, keep_alive=60)
    assert not policy.should_unregister(0, 1, 0, idle_for=61, keep_alive=60)
    assert not policy.should_unregister(0, 0, 0, idle_for=1, keep_alive=60)
