"""Cold starts: calls run on stand-ins (a claimed prewarmed process, or Ray's prestarted
workers) while the function's replicas start."""

from __future__ import annotations

import os

import pytest
import ray
from conftest import wait_until

import nbserverless as nbs
from nbserverless.core import warm as bridge
from nbserverless.metering.meter import METER


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


def test_a_class_instance_is_never_shared_or_rebuilt_per_call(ray_cluster):
    nbs.config(prewarm=4)

    @nbs.remote(cpus=0.25)
    class Model:
        def __init__(self):
            self.calls = 0

        def __call__(self, x):
            self.calls += 1
            return os.getpid(), id(self), self.calls

    m = Model()
    seen: dict[int, list] = {}
    for i in range(4):
        pid, instance, calls = m(i)
        seen.setdefault(pid, []).append((instance, calls))
    for runs in seen.values():  # per process (stand-in or replica): one instance, kept
        assert len({instance for instance, _ in runs}) == 1
        assert [calls for _, calls in runs] == list(range(1, len(runs) + 1))


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


def _warm(n: int) -> None:
    from nbserverless.core.loop import SUPERVISOR

    SUPERVISOR.ensure_running()  # as nbs.connect() and %load_ext do (conftest connects lower)
    wait_until(lambda: sum(h.ready for h in bridge.STOCK.warm) == n, timeout=60,
               what=f"{n} warm stand-in(s)")  # fmt: skip


def _rendezvous(tmp_path, n: int):
    """A function whose calls each wait until ``n`` calls run at the same time."""

    @nbs.remote(cpus=0.25, max_replicas=n, keep_alive=30)
    def meet(i, folder=str(tmp_path)):
        import pathlib
        import time

        pathlib.Path(folder, f"in-{i}").touch()
        deadline = time.monotonic() + 60
        while len(list(pathlib.Path(folder).glob("in-*"))) < n:
            if time.monotonic() > deadline:
                raise TimeoutError("the calls did not run at the same time")
            time.sleep(0.01)
        return os.getpid()

    return meet


def test_stand_in_runs_every_starting_slot_at_once_and_serves_one_function(ray_cluster, tmp_path):
    nbs.config(prewarm=1)
    _warm(1)
    assert METER.snapshot()["totals"]["platform_replicas"] == 1  # shown as platform overhead
    meet = _rendezvous(tmp_path / "a", 4)
    (tmp_path / "a").mkdir()
    # 4 calls at once from zero: more than prewarm=1, all on the claimed stand-in at once
    pids = [f.result(timeout=90) for f in [meet.submit(i) for i in range(4)]]
    assert len(set(pids)) == 1
    s = meet.stats()
    assert s.cold_starts == 0 and s.invocations == 4 and s.errors == 0
    assert s.replica_seconds_busy > 0  # the stand-in's time is billed to the function
    pool = meet._get_pool()
    assert len(pool._hosts) == 1  # a function's calls share one stand-in
    stand_in = pool._hosts[0]
    assert stand_in.owner == pool.key
    # a second function gets a different (refilled) stand-in: one serves only one function
    _warm(1)

    @nbs.remote(cpus=0.25)
    def other(x):
        return os.getpid()

    assert other(1) != pids[0]
    # once the replicas are ready the stand-in is retired; later calls run on replicas
    wait_until(lambda: not pool._hosts, timeout=90, what="the stand-in to retire")
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(stand_in.actor.ping.remote(), timeout=30)
    assert meet(9) not in pids
    assert meet.stats().peak_replicas <= 4


def test_a_stuck_stand_in_call_times_out_and_the_function_stays_usable(ray_cluster):
    nbs.config(prewarm=1)
    _warm(1)

    @nbs.remote(cpus=0.25, timeout=2, keep_alive=30)
    def nap(seconds):
        import time

        time.sleep(seconds)
        return seconds

    with pytest.raises(nbs.CallTimeoutError):
        nap(600)
    assert nap.stats().cold_starts == 0  # it ran (and was stopped) on the stand-in
    assert nap(0) == 0


def test_strict_zero_keeps_no_stand_in_warm(ray_cluster):
    nbs.config(prewarm=0)
    wait_until(lambda: not bridge.STOCK.warm, what="no stand-in warm")
    wait_until(lambda: METER.snapshot()["totals"]["platform_replicas"] == 0,
               what="no platform replicas")  # fmt: skip


def test_a_class_runs_on_its_stand_in_one_call_at_a_time_on_one_instance(ray_cluster):
    nbs.config(prewarm=1)
    _warm(1)

    @nbs.remote(cpus=0.25, max_replicas=2, keep_alive=30)
    class Counter:
        def __init__(self):
            self.calls, self.busy, self.most = 0, 0, 0

        def __call__(self, x):
            import time

            self.busy += 1
            self.most = max(self.most, self.busy)
            time.sleep(0.05)
            self.calls += 1
            self.busy -= 1
            return os.getpid(), id(self), self.calls, self.most

    counter = Counter()
    futures = [counter.submit(i) for i in range(6)]
    pool = counter._get_pool()
    (stand_in,) = pool._hosts  # prewarm=1: one stand-in, holding one replica's resources
    assert stand_in.reservation is not None
    # max_replicas=2: a replica only for the slot it does not cover (read now: once the
    # stand-in retires, remaining work may rightly start a second one)
    assert pool.starts == 1
    results = [f.result(timeout=90) for f in futures]
    stand_in_pid = results[0][0]  # no replica can be ready at the first call: the stand-in
    on_it = [r for r in results if r[0] == stand_in_pid]
    assert len({r[1] for r in on_it}) == 1  # __init__ ran once there: one instance
    assert sorted(r[2] for r in on_it) == list(range(1, len(on_it) + 1))  # its state kept
    assert max(r[3] for r in on_it) == 1  # concurrency=1 holds on the stand-in too
    # retired, its placement group removed with it (the pool lets go first, then retires it)
    wait_until(lambda: not pool._hosts and stand_in.reservation is None, timeout=90,
               what="the stand-in to retire")  # fmt: skip
    assert counter(0)[0] != stand_in_pid


def test_stand_ins_import_what_the_kernel_has_imported(ray_cluster):
    import json5  # noqa: F401  (a package neither Ray nor nbserverless imports)

    nbs.config(prewarm=0)

    @nbs.remote(cpus=0.25)
    def has(name):
        import sys

        return name in sys.modules

    assert has("json5") is False  # a replica does not import it by itself
    nbs.config(prewarm=1)
    _warm(1)
    host = bridge.STOCK.warm[0]
    wait_until(lambda: "json5" in host.warmed, what="the kernel's imports sent")
    assert "json5" in ray.get(host.warming, timeout=60)

    @nbs.remote(cpus=0.25)
    def has_too(name):
        import sys

        return name in sys.modules

    assert has_too("json5") is True
    assert has_too.stats().cold_starts == 0  # it ran on the stand-in
