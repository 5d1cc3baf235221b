"""Every failure reports clearly and loses nothing."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from conftest import wait_until

import nbserverless as nbs


def test_user_exception_keeps_its_type_and_remote_traceback(ray_cluster):
    class Custom(Exception):
        pass

    @nbs.remote(cpus=0.1)
    def fails(x):
        helper = x * 2
        raise Custom(f"bad input {helper}")

    with pytest.raises(Custom, match="bad input 6") as info:
        fails(3)
    tb = str(info.value.__cause__)
    assert isinstance(info.value.__cause__, nbs.RemoteTraceback)
    assert "in fails" in tb and 'raise Custom(f"bad input {helper}")' in tb
    assert fails.stats().errors == 1


def test_unpicklable_argument_fails_before_sending_and_names_it(ray_cluster):
    @nbs.remote(cpus=0.1)
    def ident(x):
        return x

    with pytest.raises(nbs.SerializationError, match="argument 0") as info:
        ident(threading.Lock())
    assert "lock" in str(info.value).lower()
    assert ident(1) == 1  # nothing broke


def test_unpicklable_closure_fails_naming_the_variable(ray_cluster):
    held_lock = threading.Lock()

    @nbs.remote(cpus=0.1)
    def uses_lock():
        return held_lock.locked()

    with pytest.raises(nbs.SerializationError, match="held_lock"):
        uses_lock()


def test_timeout_raises_timeout_error_and_recycles_the_replica(ray_cluster):
    nbs.config(prewarm=0)  # on the function's own replica, which must be replaced

    @nbs.remote(cpus=0.1, timeout=0.5, max_replicas=1)
    def sleepy(seconds):
        time.sleep(seconds)
        return os.getpid()

    first_pid = sleepy(0)
    with pytest.raises(TimeoutError, match="timeout=0.5") as info:
        sleepy(30)
    assert isinstance(info.value, nbs.RemoteError)
    assert sleepy(0) != first_pid  # a fresh replica: the stuck one was removed


def test_timeout_of_submitted_calls(ray_cluster):
    @nbs.remote(cpus=0.1, timeout=0.5)
    def sleepy(seconds):
        time.sleep(seconds)
        return seconds

    fut = sleepy.submit(30)
    with pytest.raises(nbs.CallTimeoutError):
        fut.result(timeout=60)


def test_dead_replica_is_retried_elsewhere(ray_cluster, tmp_path):
    @nbs.remote(cpus=0.1, retries=1)
    def die_once(marker):
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return "ok"

    assert die_once(str(tmp_path / "m")) == "ok"
    s = die_once.stats()
    assert s.retries == 1 and s.errors == 0 and s.invocations == 1


def test_replica_death_without_retries_raises_remote_error(ray_cluster):
    @nbs.remote(cpus=0.1, retries=0)
    def die():
        os._exit(1)

    with pytest.raises(nbs.ReplicaDiedError, match="died"):
        die()


def test_map_survives_a_replica_death_without_losing_or_duplicating(ray_cluster, tmp_path):
    marker = str(tmp_path / "died")

    @nbs.remote(cpus=0.1, max_replicas=2, retries=2)
    def item(x):
        if x == 7 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return x * 10

    assert list(item.map(range(40), progress=False)) == [x * 10 for x in range(40)]
    assert item.stats().retries >= 1


def test_infeasible_request_fails_fast_naming_the_resource(ray_cluster):
    @nbs.remote(gpus=1)
    def needs_gpu():
        return 1

    with pytest.raises(nbs.InfeasibleError, match="gpus=1"):
        needs_gpu()


def _interrupt_main_when(predicate):
    main = threading.main_thread().ident

    def run():
        wait_until(predicate, timeout=60, what="the call to be running")
        signal.pthread_kill(main, signal.SIGINT)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_ctrl_c_cancels_a_call_and_leaves_the_pool_usable(ray_cluster):
    @nbs.remote(cpus=0.1, max_replicas=1)
    def sleepy(seconds):
        time.sleep(seconds)
        return seconds

    assert sleepy(0) == 0
    _interrupt_main_when(lambda: sleepy.stats().in_flight == 1)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        sleepy(60)
    assert time.monotonic() - t0 < 30  # not the whole 60 s call
    wait_until(lambda: sleepy.stats().in_flight == 0, what="the cancelled call to clear")
    assert sleepy(0) == 0


def test_ctrl_c_cancels_a_map(ray_cluster):
    @nbs.remote(cpus=0.1, max_replicas=2)
    def sleepy(seconds):
        time.sleep(seconds)
        return seconds

    _interrupt_main_when(lambda: sleepy.stats().in_flight >= 1)
    with pytest.raises(KeyboardInterrupt):
        list(sleepy.map([60] * 6, progress=False))
    wait_until(
        lambda: sleepy.stats().in_flight == 0 and sleepy.stats().queued == 0,
        what="the map's calls to clear",
    )
    assert sleepy(0) == 0
