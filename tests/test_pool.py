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
    # how many took part depends on how fast the machine starts them: on a loaded one the
    # first replica may have run all 12 before the others were placed
    assert 1 <= s.peak_replicas <= 3 and 1 <= len(pids) <= 3
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


# -- settling exactly once, races -----------------------------------------------------------


def _race_once(pool, ident) -> list:
    """One call whose reply, timeout, force-cancel and death are handled at the same moment
    from four threads (and its own completion callback)."""
    import threading

    import ray
    from ray import exceptions as rex

    from nbserverless.core.pool import Job

    calls: list = []
    job = Job("call", None, ((1,), {}), 1, lambda j, ok, value: calls.append(ok))
    pool.submit(job)
    wait_until(lambda: job.ref is not None, timeout=120, what="dispatch")
    envelope = ray.get(job.ref, timeout=60)
    barrier = threading.Barrier(4)
    racers = [
        lambda: pool._finish(job, envelope),
        lambda: pool._on_timeout(job),
        lambda: pool.force_cancel(job),
        lambda: pool._on_death(job, rex.RayActorError()),
    ]
    threads = [threading.Thread(target=lambda f=f: (barrier.wait(), f())) for f in racers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    wait_until(lambda: ident.stats().in_flight == 0 and ident.stats().queued == 0,
               what="counts back to zero")  # fmt: skip
    assert job not in pool.queue
    return calls


def test_settle_happens_once_under_racing_reply_timeout_cancel_and_death(ray_cluster):
    @nbs.remote(cpus=0.25, max_replicas=1, keep_alive=30, retries=1)
    def ident(x):
        return x

    assert ident(0) == 0
    pool = ident._get_pool()
    for _ in range(5):
        assert len(_race_once(pool, ident)) == 1  # settled exactly once
    assert ident(2) == 2  # the pool stays usable


def test_a_slow_output_sink_does_not_stall_other_pools(ray_cluster):
    import threading

    from nbserverless.core.output import Sink
    from nbserverless.core.pool import Job

    release = threading.Event()

    class SlowSink(Sink):
        """A caller whose output stream is slow: streamed frames arrive late, and finishing
        waits for them (the real one waits up to 2 s; this one until released)."""

        def write(self, chunks):
            release.wait(60)
            super().write(chunks)

        def finish(self, rest, seq):
            while seq and self.received < seq and not release.wait(0.05):
                pass
            super().finish(rest, seq)

    @nbs.remote(cpus=0.25, keep_alive=30)
    def loud(x):
        print("streamed")
        time.sleep(0.6)  # longer than STREAM_AFTER_S: its output streams before the reply
        return x

    @nbs.remote(cpus=0.25, keep_alive=30)
    def quiet(x):
        return x

    assert loud(0) == 0 and quiet(0) == 0
    results = []
    job = Job("call", None, ((1,), {}), 1, lambda j, ok, v: results.append(v), sink=SlowSink())
    loud._get_pool().submit(job)
    try:
        wait_until(lambda: job.rep is not None and job not in job.rep.jobs, timeout=60,
                   what="the reply of the slow-output call")  # fmt: skip
        assert quiet.submit(5).result(timeout=60) == 5  # another pool's completion went on
        assert not results  # while the slow one still waits for its output
    finally:
        release.set()
    wait_until(lambda: results == [1], what="the slow call settled")


def test_the_completion_thread_and_the_loop_stop_and_come_back(ray_cluster):
    from nbserverless.core.completions import COMPLETIONS
    from nbserverless.core.loop import SUPERVISOR

    @nbs.remote(cpus=0.25, keep_alive=30)
    def ident(x):
        return x

    assert ident.submit(1).result(timeout=120) == 1
    assert COMPLETIONS.alive()
    ident._get_pool().close()  # as shutdown does: pools closed, then the threads stop
    COMPLETIONS.stop()
    SUPERVISOR.stop()
    assert not COMPLETIONS.alive() and SUPERVISOR._thread is None

    @nbs.remote(cpus=0.25, keep_alive=30)
    def again(x):
        return x

    assert again.submit(2).result(timeout=120) == 2  # both start again on demand
    assert COMPLETIONS.alive() and SUPERVISOR._thread is not None


# -- start-up crashes and timeouts -------------------------------------------------------------


def _slow_init_class(tmp_path):
    @nbs.remote(cpus=0.25, retries=1, keep_alive=30)
    class Held:
        def __init__(self, folder):
            import pathlib

            pathlib.Path(folder, f"pid-{os.getpid()}").touch()
            deadline = time.monotonic() + 60
            while not pathlib.Path(folder, "go").exists() and time.monotonic() < deadline:
                time.sleep(0.02)

        def __call__(self, x):
            return x

    return Held(str(tmp_path))


@pytest.mark.parametrize("prewarm", [0, 2])
def test_a_crash_while_a_class_loads_does_not_fail_its_queued_calls(ray_cluster, tmp_path,
                                                                    prewarm):  # fmt: skip
    import signal

    nbs.config(prewarm=prewarm)
    held = _slow_init_class(tmp_path)
    futures = [held.submit(i) for i in range(10)]
    pids = wait_until(lambda: list(tmp_path.glob("pid-*")), timeout=120, what="a replica loading")
    os.kill(int(pids[0].name.split("-")[1]), signal.SIGKILL)  # during its __init__
    (tmp_path / "go").touch()
    assert [f.result(timeout=120) for f in futures] == list(range(10))
    s = held.stats()
    assert s.errors == 0 and s.invocations == 10


def test_replicas_that_never_start_fail_the_queued_calls_after_retries(ray_cluster):
    nbs.config(prewarm=0)

    @nbs.remote(cpus=0.25, retries=1)
    class Doomed:
        def __init__(self):
            import signal

            os.kill(os.getpid(), signal.SIGKILL)

        def __call__(self, x):
            return x

    doomed = Doomed()
    with pytest.raises(nbs.RemoteError, match="could not start") as info:
        doomed(1)
    assert "memory" not in str(info.value) and "env=" not in str(info.value)
    assert doomed._get_pool().start_failures == 2  # retries=1: two starts, then it gave up


def test_timeout_does_not_count_the_wait_for_a_replica(ray_cluster):
    nbs.config(prewarm=0)

    @nbs.remote(cpus=0.25, timeout=1)
    class SlowStart:
        def __init__(self):
            time.sleep(2)  # the cold start, longer than the timeout

        def __call__(self, x):
            return x

    assert SlowStart()(3) == 3


def test_a_timed_out_call_is_never_started_again(ray_cluster, tmp_path):
    @nbs.remote(cpus=0.25, timeout=1, retries=2, keep_alive=30)
    def side_effect(folder, seconds):
        import pathlib

        with open(pathlib.Path(folder, "runs"), "a") as f:
            f.write("run\n")
        time.sleep(seconds)
        return seconds

    with pytest.raises(nbs.CallTimeoutError):
        side_effect(str(tmp_path), 30)
    pool = side_effect._get_pool()
    wait_until(lambda: not pool.queue and side_effect.stats().in_flight == 0, what="settled")
    futures = [side_effect.submit(str(tmp_path), 0) for _ in range(3)]
    assert [f.result(timeout=120) for f in futures] == [0, 0, 0]
    assert (tmp_path / "runs").read_text().count("run") == 4  # the slow one ran once
    assert side_effect.stats().retries == 0


def test_map_with_a_timeout_fails_only_the_slow_item(ray_cluster):
    @nbs.remote(cpus=0.25, timeout=2, max_replicas=2, keep_alive=30)
    def item(x):
        time.sleep(30 if x == 3 else 0)
        return x

    out = list(item.map(range(12), return_exceptions=True))
    assert isinstance(out[3], nbs.CallTimeoutError)
    assert [x for i, x in enumerate(out) if i != 3] == [i for i in range(12) if i != 3]


# -- one bad pool, many dead pools ------------------------------------------------------------


def test_a_failing_pool_tick_stays_that_pools_and_others_keep_their_timeouts(ray_cluster):
    from nbserverless.core.loop import registry

    class Broken:  # a pool whose tick raises (a bug): the loop contains it
        name = "broken"
        closed = True  # (not one for close_all)
        failed: list = []

        def tick(self, now):
            raise RuntimeError("tick bug")

        def fail_all(self, exc):
            self.failed.append(exc)

        def waiting_for_resources(self, now):
            return False

        def give_way(self):
            return False

    broken = Broken()
    registry.add(broken)
    try:

        @nbs.remote(cpus=0.25, timeout=1, keep_alive=30)
        def nap(seconds):
            time.sleep(seconds)
            return seconds

        assert nap(0) == 0
        with pytest.raises(nbs.CallTimeoutError):
            nap.submit(30).result(timeout=60)  # honoured by the loop, despite the broken pool
        assert broken.failed and "tick bug" in str(broken.failed[0])
    finally:
        registry.remove(broken)


def test_pools_with_nothing_left_leave_the_loop_and_come_back(ray_cluster):
    from nbserverless.core.loop import registry

    handles = []
    for i in range(6):
        fn = nbs.remote(cpus=0.1, keep_alive=0.2)(lambda x, i=i: x + i)
        handles.append(fn)
    assert [f.submit(1).result(timeout=120) for f in handles] == [1 + i for i in range(6)]
    pools = [f._get_pool() for f in handles]
    wait_until(lambda: not any(p in registry.all() for p in pools), timeout=60,
               what="idle pools to leave the loop")  # fmt: skip
    assert all(p.replicas() == 0 and not p.reps for p in pools)
    assert handles[0](5) == 5  # the next call brings it back
    assert pools[0] in registry.all()


def test_no_ray_call_that_creates_or_removes_runs_under_a_pool_lock(ray_cluster, monkeypatch):
    import ray

    from nbserverless.core import replicas, warm
    from nbserverless.core.loop import SUPERVISOR

    nbs.config(prewarm=2)
    SUPERVISOR.ensure_running()
    wait_until(lambda: warm.STOCK.available() >= 1, timeout=90, what="a warm replica")
    pools: list = []
    seen: list = []

    def held() -> bool:  # does this thread hold any pool's lock?
        return any(p.lock._is_owned() for p in pools)

    def spy(name, real):
        def call(*args, **kwargs):
            seen.append((name, held()))
            return real(*args, **kwargs)

        return call

    class ActorSpy:
        def __init__(self, real):
            self.real = real

        def options(self, **kw):
            made = self.real.options(**kw)
            return type("Opts", (), {"remote": staticmethod(spy("actor", made.remote))})

    monkeypatch.setattr(ray.util, "placement_group", spy("pg", ray.util.placement_group))
    monkeypatch.setattr(ray.util, "remove_placement_group",
                        spy("rm_pg", ray.util.remove_placement_group))  # fmt: skip
    monkeypatch.setattr(ray, "kill", spy("kill", ray.kill))
    monkeypatch.setattr(replicas, "ReplicaActor", ActorSpy(replicas.ReplicaActor))

    @nbs.remote(cpus=0.25, keep_alive=0.3)
    def claimed(x):
        return x

    @nbs.remote(cpus=0.25, concurrency=2, keep_alive=0.3)
    def started(x):
        return x

    pools += [claimed._get_pool(), started._get_pool()]
    assert claimed(1) == 1 and started(2) == 2
    wait_until(lambda: claimed.stats().replicas == 0 and started.stats().replicas == 0,
               timeout=60, what="keep-alive removals")  # fmt: skip
    wait_until(lambda: {n for n, _ in seen} >= {"pg", "actor", "kill", "rm_pg"}, what="calls")
    assert not [name for name, under_lock in seen if under_lock]


def test_map_chunks_are_pickled_outside_the_pool_lock(ray_cluster, monkeypatch):
    # pickling a chunk of map items can take long (large items): under the pool lock it would
    # stall every reply, dispatch and tick of that function meanwhile
    from nbserverless.core import pool as pool_mod

    @nbs.remote(cpus=0.25, keep_alive=0.3)
    def echo(x):
        return x

    pool = echo._get_pool()
    seen: list[bool] = []
    real = pool_mod.codec.dumps

    def spy(value, *args, **kwargs):
        seen.append(pool.lock._is_owned())
        return real(value, *args, **kwargs)

    monkeypatch.setattr(pool_mod.codec, "dumps", spy)
    items = [b"x" * 1000] * 200
    assert list(echo.map(items, progress=False)) == items
    assert seen and not any(seen), f"{seen.count(True)} of {len(seen)} chunks under the lock"


def test_keep_alive_auto_learns_from_the_functions_idle_gaps(ray_cluster):
    """keep_alive="auto": the fixed fallback while learning, then a keep-alive learned from
    the idle gaps (core/keepalive.py), shown in stats() and applied by the pool."""

    @nbs.remote(cpus=0.25, keep_alive="auto")
    def tick(x):
        return x

    assert tick.stats()["keep_alive"] is None or "learning" in tick.stats()["keep_alive"]
    for i in range(12):  # the arrivals: one call every ~1.1 s (gaps above the 1 s floor)
        assert tick(i) == i
        time.sleep(1.1)
    label = wait_until(
        lambda: (
            (tick.stats()["keep_alive"] or "").endswith("(learned)") and tick.stats()["keep_alive"]
        ),
        timeout=10,
        what="a learned keep-alive",
    )
    assert label.startswith("keep-alive")
    with pytest.raises(ValueError, match="keep_alive"):
        nbs.remote(keep_alive="sometimes")(lambda x: x)


def test_a_start_lost_with_its_node_is_told_apart_from_a_replica_that_failed():
    # an autoscaler may remove a node it has just added while a replica is being placed there
    # (Ray's "Terminated by autoscaler"; raw Ray actors fail then): the pool starts another
    # without counting it against `retries`; a process that died by itself still counts
    from ray import exceptions as rex
    from ray.core.generated.common_pb2 import ActorDiedErrorContext, NodeDeathInfo

    from nbserverless.core.replicas import node_lost

    def died(message: str, **kw) -> rex.ActorDiedError:
        ctx = ActorDiedErrorContext(error_message=message, class_name="Replica",
                                    actor_id=b"\0" * 16, **kw)  # fmt: skip
        return rex.ActorDiedError(ctx)

    removed = died("The actor died because its node has died. Node Id: ff\n\tthe actor's node "
                   "was terminated expectedly: Terminated by autoscaler.", never_started=True)  # fmt: skip
    drained = died(
        "", node_death_info=NodeDeathInfo(reason=NodeDeathInfo.AUTOSCALER_DRAIN_PREEMPTED)
    )
    assert node_lost(removed) and node_lost(drained) and node_lost(rex.NodeDiedError("n"))
    assert not node_lost(died("Worker exited unexpectedly: SIGKILL (out of memory?)"))
    assert not node_lost(ValueError("bad options"))
