"""Cold starts: first calls run on Ray's prestarted workers while the replica starts."""

from __future__ import annotations

import os

import pytest
from conftest import wait_until

import nbserverless as nbs


def test_first_call_does_not_wait_for_a_replica(ray_cluster):
    nbs.config(prewarm=1)

    @nbs.remote(cpus=0.25, keep_alive=30)
    def where(x):
        return os.getpid(), x

    pid, _ = where(1)
    s = where.stats()
    assert s.cold_starts == 0 and s.invocations == 1
    assert s.replica_seconds_busy > 0  # the borrowed worker's time is billed as busy
    # meanwhile the function's own replica started; later calls run there
    pool = where._get_pool()
    wait_until(lambda: any(r.state == "ready" for r in pool.reps.values()), timeout=60,
               what="the replica to start")  # fmt: skip
    replica_pid, _ = where(2)
    assert replica_pid != pid
    assert where.stats().peak_replicas == 1  # the borrowed worker is no replica


def test_strict_zero_waits_for_the_replica(ray_cluster):
    nbs.config(prewarm=0)

    @nbs.remote(cpus=0.25)
    def ident(x):
        return x

    assert ident(3) == 3
    assert ident.stats().cold_starts == 1


def test_bridged_calls_keep_errors_and_output(ray_cluster, capsys):
    nbs.config(prewarm=1)

    @nbs.remote(cpus=0.25)
    def loud(x):
        print(f"said {x}")
        if x < 0:
            raise ValueError("negative")
        return x

    with pytest.raises(ValueError, match="negative") as info:
        loud(-1)
    assert "raise ValueError" in str(info.value.__cause__)
    assert loud.stats().cold_starts == 0
    assert "said -1" in capsys.readouterr().out


def test_classes_never_bridge(ray_cluster):
    nbs.config(prewarm=4)

    @nbs.remote(cpus=0.25)
    class Model:
        def __init__(self):
            self.pid = os.getpid()

        def __call__(self, x):
            return self.pid

    m = Model()
    assert m(1) == m(2)  # one instance: __init__ ran in a replica, not per call
    assert m.stats().cold_starts == 1


def test_bridged_calls_do_not_wait_for_cpus_held_by_replicas(ray_cluster, tmp_path):
    # every CPU of the test cluster busy (as while a function's replicas start): a new
    # function's first call still runs on a borrowed idle worker instead of queueing
    from conftest import TEST_CPUS

    release = tmp_path / "release"

    @nbs.remote(cpus=TEST_CPUS, keep_alive=0)
    def hog(path):
        import pathlib
        import time

        deadline = time.monotonic() + 120
        while not pathlib.Path(path).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return "released"

    nbs.config(prewarm=0)  # the hog itself on its replica, holding every CPU
    held = hog.submit(str(release))
    wait_until(lambda: hog.stats().in_flight == 1 and hog.stats().replicas == 1, timeout=60,
               what="every CPU held")  # fmt: skip
    nbs.config(prewarm=1)

    @nbs.remote(cpus=1)
    def quick(x):
        return x * 3

    try:
        assert quick.submit(5).result(timeout=60) == 15
        assert quick.stats().cold_starts == 0
    finally:
        release.touch()
    assert held.result(timeout=60) == "released"
