"""@remote functions: call, local, submit, map, starmap, stats, shipping by value."""

from __future__ import annotations

import concurrent.futures
import itertools
import threading

import pytest
from conftest import wait_until

import nbserverless as nbs
from nbserverless.handles.mapping import MAX_CHUNK


@nbs.remote
def square(x):
    return x * x


@nbs.remote(cpus=0.25, max_replicas=2, name="power")
def pow_(a, b):
    return a**b


def test_bare_decorator_call_and_local(ray_cluster):
    assert square(3) == 9
    assert square.local(4) == 16
    assert square.name == "square"


def test_options_and_name(ray_cluster):
    assert pow_(2, 5) == 32
    assert pow_.name == "power"
    assert pow_.options.cpus == 0.25 and pow_.options.max_replicas == 2


def test_submit_returns_a_concurrent_future(ray_cluster):
    fut = pow_.submit(3, 2)
    assert isinstance(fut, concurrent.futures.Future)
    assert fut.result(timeout=60) == 9


def test_submit_works_with_asyncio(ray_cluster):
    import asyncio

    async def main():
        return await asyncio.wrap_future(pow_.submit(2, 3))

    assert asyncio.run(main()) == 8


def test_map_ordered_unordered_and_starmap(ray_cluster):
    xs = list(range(50))
    assert list(pow_.map(xs, itertools.repeat(2))) == [x**2 for x in xs]
    assert sorted(pow_.map(xs, [2] * 50, ordered=False)) == [x**2 for x in xs]
    assert list(pow_.starmap([(2, 3), (3, 2)])) == [8, 9]


def test_map_return_exceptions_keeps_every_item(ray_cluster):
    @nbs.remote(cpus=0.25)
    def inv(x):
        return 1 / x

    out = list(inv.map([1, 0, 2, 0, 4], return_exceptions=True))
    assert out[0] == 1 and out[2] == 0.5 and out[4] == 0.25
    assert isinstance(out[1], ZeroDivisionError) and isinstance(out[3], ZeroDivisionError)
    with pytest.raises(ZeroDivisionError):
        list(inv.map([1, 0, 2]))


def test_map_work_starts_before_iteration(ray_cluster):
    @nbs.remote(cpus=0.25)
    def ident(x):
        return x

    run = ident.map(range(5))  # not iterated yet
    wait_until(lambda: ident.stats()["invocations"] >= 5, what="the map to run un-iterated")
    assert list(run) == [0, 1, 2, 3, 4]


def test_map_pulls_a_bounded_window_of_an_endless_input(ray_cluster):
    pulled = [0]

    def endless():
        for i in itertools.count():
            pulled[0] = i + 1
            yield i

    @nbs.remote(cpus=0.25, max_replicas=2)
    def ident(x):
        return x

    run = ident.map(endless(), progress=False)
    seen = []
    for value in run:
        seen.append(value)
        if len(seen) == 2001:
            break
    run.cancel()  # what breaking out of the loop does too; explicit so the check is exact
    assert seen == list(range(2001))
    stopped_at = pulled[0]
    # a window of 2 replicas x 2 slots x 2 rounds of chunks (+1 being filled), not the input
    assert stopped_at <= 2001 + 9 * MAX_CHUNK
    assert ident(1) == 1 and pulled[0] == stopped_at  # nothing pulled after the map ended


def test_closures_ship_by_value_and_code_ships_once_per_replica(ray_cluster):
    nbs.config(prewarm=0)  # every call on the one replica
    factor = 7

    @nbs.remote(cpus=0.25, max_replicas=1)
    def scaled(x, _calls=[]):  # noqa: B006 - state that lives as long as the replica
        _calls.append(x)
        return x * factor, len(_calls)

    results = [scaled(i) for i in range(5)]
    assert [r[0] for r in results] == [0, 7, 14, 21, 28]
    # one replica built the function once and kept it: its state accumulates
    assert [r[1] for r in results] == [1, 2, 3, 4, 5]


def test_stats_has_every_spec_field(ray_cluster):
    nbs.config(prewarm=0)  # strict scale from zero: the first call waits for its replica

    @nbs.remote(cpus=0.25)
    def noop(x):
        return x

    assert noop.stats()["invocations"] == 0
    for i in range(3):
        noop(i)
    s = noop.stats()
    for key in (
        "invocations", "errors", "retries", "cold_starts", "in_flight", "queued", "replicas",
        "peak_replicas", "p50_ms", "p95_ms", "p99_ms", "queue_p50_ms", "cold_p50_ms",
        "exec_p50_ms", "replica_seconds_busy", "replica_seconds_idle",
    ):  # fmt: skip
        assert key in s, key
    assert s.invocations == 3 and s["errors"] == 0
    assert s.cold_starts == 1  # only the first call waited for a new replica
    assert s.replicas == 1 and s.peak_replicas == 1
    assert s.p50_ms > 0 and s.p99_ms >= s.p50_ms
    assert s.in_flight == 0 and s.queued == 0


def test_calls_from_many_threads(ray_cluster):
    @nbs.remote(cpus=0.25, max_replicas=3)
    def double(x):
        return 2 * x

    results = {}

    def worker(k):
        results[k] = [double(k * 100 + i) for i in range(10)]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == {k: [2 * (k * 100 + i) for i in range(10)] for k in range(4)}
    assert double.stats().invocations == 40


def test_redefining_a_notebook_function_replaces_it(ray_cluster):
    from nbserverless.metering.meter import METER

    nbs.config(prewarm=0, keep_alive=60)
    ns: dict = {"nbs": nbs, "__name__": "__main__"}  # as a notebook cell defines it
    cell = "@nbs.remote(cpus=0.25)\ndef greet(name):\n    return {greeting!r} + name\n"
    exec(cell.format(greeting="hello "), ns)
    old = ns["greet"]
    assert old("ann") == "hello ann"
    old_pool = old._pool_obj
    assert old_pool.replicas() == 1
    exec(cell.format(greeting="hi "), ns)  # the cell re-run
    new = ns["greet"]
    assert new("bob") == "hi bob"
    # the old pool's replica goes at once, not after keep_alive=60
    wait_until(lambda: old_pool.replicas() == 0, timeout=20, what="the old replica to go")
    rows = [f for f in METER.snapshot()["functions"] if f["name"] == "greet"]
    assert len(rows) == 1 and rows[0]["invocations"] == 2
    assert new.stats().invocations == 2 and new.stats().replicas == 1
