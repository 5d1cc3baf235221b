"""Warm replicas become replicas: a claimed warm process is one of the pool's replicas with
every rule of a replica (one process, concurrency, __init__ once, counted, billed, removed)."""

from __future__ import annotations

import os
import time

import pytest
import ray
from conftest import wait_until

import nbserverless as nbs
from nbserverless.core import warm
from nbserverless.core.loop import SUPERVISOR
from nbserverless.metering.meter import METER


def _warm(n: int) -> None:
    SUPERVISOR.ensure_running()  # as nbs.connect() and %load_ext do (conftest connects lower)
    wait_until(lambda: warm.STOCK.available() >= n, timeout=90, what=f"{n} warm replica(s)")


def test_concurrency_one_holds_from_zero_under_the_default_config(ray_cluster):
    assert nbs.config.get("prewarm") == 2  # the default
    _warm(2)

    @nbs.remote(cpus=0.25, max_replicas=4, keep_alive=30)
    def span(i):
        t0 = time.time()
        time.sleep(0.02)
        return os.getpid(), t0, time.time()

    spans = [f.result(timeout=120) for f in [span.submit(i) for i in range(60)]]
    by_pid: dict[int, list] = {}
    for pid, t0, t1 in spans:
        by_pid.setdefault(pid, []).append((t0, t1))
    for intervals in by_pid.values():  # never two calls at once in one process
        intervals.sort()
        for (_, end), (start, _) in zip(intervals, intervals[1:], strict=False):
            assert start >= end
    pool = span._get_pool()
    assert pool.claims >= 1  # warm replicas were claimed for it
    s = span.stats()
    assert len(by_pid) <= s.peak_replicas <= 4  # every process that ran a call is a replica
    assert s.invocations == 60 and s.errors == 0


def test_a_claimed_warm_replica_is_a_replica(ray_cluster):
    _warm(2)
    hosts = {h.pid for h in warm.STOCK.warm if h.ready}

    @nbs.remote(cpus=0.5, keep_alive=30)
    def where(x):
        return os.getpid()

    pid = where(1)
    pool = where._get_pool()
    assert pool.claims == 1 and pool.starts == 1  # claimed, and no second replica started
    assert pid in hosts  # it ran in the warm process
    s = where.stats()
    assert s.replicas == 1 and s.peak_replicas == 1 and s.cold_starts == 1  # a fast cold start
    (rep,) = pool.reps.values()
    assert rep.claimed and rep.pg is not None  # the pool's resources reserved for it
    assert ray.get(rep.pg.ready(), timeout=30) is not None
    assert where(2) == pid  # later calls run there too
    _warm(2)  # the stock refills in the background


def test_a_class_inits_once_per_replica_on_claimed_and_started_replicas(ray_cluster, tmp_path):
    _warm(2)

    @nbs.remote(cpus=0.25, max_replicas=3, keep_alive=30)
    class Counter:
        def __init__(self, folder):
            import pathlib

            pathlib.Path(folder, f"init-{os.getpid()}-{id(self)}").touch()
            self.calls = 0

        def __call__(self, x):
            time.sleep(0.02)
            self.calls += 1
            return os.getpid(), id(self), self.calls

    counter = Counter(str(tmp_path))
    results = [f.result(timeout=120) for f in [counter.submit(i) for i in range(12)]]
    inits = sorted(p.name for p in tmp_path.iterdir())
    pids = {r[0] for r in results}
    assert len(inits) == len({name.split("-")[1] for name in inits})  # one __init__ a process
    assert {int(name.split("-")[1]) for name in inits} >= pids
    for pid in pids:  # per process: one instance, its state kept
        runs = sorted(r[2] for r in results if r[0] == pid)
        assert runs == list(range(1, len(runs) + 1))
        assert len({r[1] for r in results if r[0] == pid}) == 1
    assert counter._get_pool().claims >= 1


def test_keep_alive_removes_a_claimed_replica(ray_cluster):
    _warm(1)

    @nbs.remote(cpus=0.25, keep_alive=0.5)
    def ident(x):
        return x

    assert ident(1) == 1
    pool = ident._get_pool()
    assert pool.claims == 1
    (rep,) = pool.reps.values()
    wait_until(lambda: ident.stats().replicas == 0, timeout=30, what="keep-alive removal")
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(rep.actor.ping.remote(), timeout=30)


def test_pools_that_cannot_use_warm_replicas_start_their_own(ray_cluster):
    _warm(2)

    @nbs.remote(cpus=0.25, concurrency=2)
    def two(x):
        return x

    assert two(1) == 1
    assert two._get_pool().claims == 0 and two._get_pool().starts == 1


def test_strict_zero_keeps_no_warm_replica(ray_cluster):
    nbs.config(prewarm=0)
    wait_until(lambda: not warm.STOCK.warm, what="no warm replica")
    wait_until(lambda: METER.snapshot()["totals"]["platform_replicas"] == 0,
               what="no platform replicas")  # fmt: skip


def test_nothing_of_the_kernels_environment_reaches_any_replica(ray_cluster):
    os.environ["NBS_TEST_SECRET"] = "sk-do-not-ship"
    try:
        _warm(2)

        def read(x):
            return os.environ.get("NBS_TEST_SECRET"), os.getpid()

        claimed = nbs.remote(cpus=0.25)(read)  # a claimed warm replica
        started = nbs.remote(cpus=0.25, concurrency=2)(read)  # a replica of its own
        given = nbs.remote(cpus=0.25, env={"NBS_TEST_SECRET": "passed"})(read)
        assert claimed(1)[0] is None and claimed._get_pool().claims == 1
        assert started(1)[0] is None and started._get_pool().claims == 0
        assert given(1)[0] == "passed" and given._get_pool().claims == 1
        # warm replicas made after the secret was set do not see it either
        _warm(2)
        fresh = nbs.remote(cpus=0.25)(read)
        assert fresh(1)[0] is None
    finally:
        del os.environ["NBS_TEST_SECRET"]


def test_warm_replicas_import_module_names_the_kernel_imported(ray_cluster):
    import json5  # noqa: F401  (a package neither Ray nor nbserverless imports)

    assert "json5" in warm.kernel_imports()
    _warm(2)
    wait_until(lambda: all("json5" in h.warmed for h in warm.STOCK.warm if h.ready),
               what="the kernel's import names sent")  # fmt: skip
    wait_until(warm.STOCK.settled, timeout=60, what="imports done")

    @nbs.remote(cpus=0.25)
    def has(name):
        import sys

        return name in sys.modules

    assert has("json5") is True
    assert has._get_pool().claims == 1
