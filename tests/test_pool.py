"""The elastic pool: scale from zero, caps, warm minimum, concurrency, routing, keep-alive."""

from __future__ import annotations

import os
import time

import pytest
from conftest import wait_until

import nbserverless as nbs


@pytest.fixture(autouse=True)
def strict_zero(ray_cluster):
    """Pool mechanics without the cold-start bridge (tests/test_bridge.py covers it)."""
    nbs.config(prewarm=0)


def test_burst_scales_up_to_the_cap_and_back_to_zero(ray_cluster):
    nbs.config(prewarm=0)

    @nbs.remote(cpus=0.1, max_replicas=3, keep_alive=1.0)
    def slow(x):
        time.sleep(0.3)
        return os.getpid()

    futures = [slow.submit(i) for i in range(12)]
    pids = {f.result(timeout=120) for f in futures}
    s = slow.stats()
    pool = slow._get_pool()
    assert pool.starts == 3  # demand for 12 asked for the cap, 3, and no more
    assert 2 <= s.peak_replicas <= 3 and 2 <= len(pids) <= 3  # (a slow start may miss it)
    assert s.invocations == 12
    assert max(n for _, n in pool.replica_history) == s.peak_replicas
    # idle for keep_alive: every replica goes, down to zero
    wait_until(lambda: slow.stats().replicas == 0, timeout=30, what="scale to zero")
    assert pool.replica_history[-1][1] == 0


def test_a_single_caller_never_starts_a_replica_per_call(ray_cluster):
    @nbs.remote(cpus=0.1, max_replicas=8)
    def ident(x):
        return x

    for i in range(20):
        assert ident(i) == i
    assert ident._get_pool().starts == 1  # one replica asked for, however many calls
    assert ident.stats().peak_replicas <= 1


def test_min_replicas_stay_warm_after_keep_alive(ray_cluster):
    @nbs.remote(cpus=0.1, min_replicas=1, max_replicas=2, keep_alive=0.2)
    def ident(x):
        return x

    futures = [ident.submit(i) for i in range(6)]
    assert [f.result(timeout=60) for f in futures] == list(range(6))
    pool = ident._get_pool()

    def settled():  # one warm replica, none still starting from the burst
        return len(pool.reps) == 1 and pool.replicas() == 1 and ident.stats().replicas == 1

    wait_until(settled, timeout=30, what="scale down to min_replicas")
    # it stays there: give keep-alive several chances to remove it, then check again
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert pool.replicas() == 1
        time.sleep(0.1)
    cold_before = ident.stats().cold_starts
    assert ident(5) == 5
    assert ident.stats().cold_starts == cold_before  # the warm replica answered


def test_concurrency_runs_calls_at_once_on_one_replica(ray_cluster):
    @nbs.remote(cpus=0.1, max_replicas=1, concurrency=3)
    def span(x):
        t0 = time.time()
        time.sleep(0.5)
        return os.getpid(), t0, time.time()

    spans = [f.result(timeout=60) for f in [span.submit(i) for i in range(3)]]
    assert len({pid for pid, _, _ in spans}) == 1
    latest_start = max(t0 for _, t0, _ in spans)
    earliest_end = min(t1 for _, _, t1 in spans)
    assert latest_start < earliest_end  # all three ran at the same time


def test_calls_go_to_the_least_loaded_replica(ray_cluster):
    @nbs.remote(cpus=0.1, max_replicas=2, min_replicas=2)
    def where(x):
        time.sleep(0.2)
        return os.getpid()

    where(0)
    pool = where._get_pool()
    wait_until(lambda: sum(r.state == "ready" for r in pool.reps.values()) == 2, timeout=60,
               what="two warm replicas")  # fmt: skip
    pids = [f.result(timeout=60) for f in [where.submit(i) for i in range(2)]]
    assert len(set(pids)) == 2  # two concurrent calls, two idle replicas: one each


def test_idle_replica_gives_way_to_another_functions_waiting_work(ray_cluster):
    # the test cluster has 4 CPUs: `hog` holds 3, keeps them for a minute if nobody asks
    @nbs.remote(cpus=3, keep_alive=60)
    def hog(x):
        return x

    @nbs.remote(cpus=2, keep_alive=1)
    def other(x):
        return x + 1

    assert hog(1) == 1
    assert hog.stats().replicas == 1
    assert other(1) == 2  # could only start once hog's idle replica gave way
    assert hog.stats().replicas == 0
