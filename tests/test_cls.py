"""@remote classes: handles create no replica; __init__ once per replica; methods remote."""

from __future__ import annotations

import os

import pytest

import nbserverless as nbs


@nbs.remote(cpus=0.1, max_replicas=2)
class Counter:
    def __init__(self, start):
        self.start = start
        self.n = 0
        self.inits = 1
        self.pid = os.getpid()

    def __call__(self, x):
        self.n += 1
        return x + self.start

    def calls(self):
        return self.n

    def identity(self):
        return self.pid, id(self), self.inits


def test_handle_creates_no_replica_until_called(ray_cluster):
    nbs.config(prewarm=0)  # the first call waits for its replica (stand-ins: test_bridge.py)
    c = Counter(10)
    assert c.stats().replicas == 0 and c.stats().invocations == 0
    assert c(1) == 11
    assert c.stats().replicas == 1


def test_init_runs_once_per_replica_and_state_persists(ray_cluster):
    nbs.config(prewarm=0)
    c = Counter(100)
    assert [c(i) for i in range(3)] == [100, 101, 102]
    assert c.calls() == 3
    first = c.identity()
    assert c.identity() == first  # same instance, built once
    assert c.stats().cold_starts == 1


def test_methods_support_submit_and_map(ray_cluster):
    c = Counter(1)
    assert c.submit(4).result(timeout=60) == 5
    assert list(c.map(range(5))) == [1, 2, 3, 4, 5]
    assert c.identity.submit().result(timeout=60)[2] == 1
    assert [r[2] for r in c.identity.starmap([(), ()])] == [1, 1]


def test_two_handles_are_two_pools(ray_cluster):
    a, b = Counter(1), Counter(1000)
    assert a(1) == 2 and b(1) == 1001
    assert a.stats().invocations == 1 and b.stats().invocations == 1


def test_local_and_bad_attributes(ray_cluster):
    assert Counter.local(5)(1) == 6
    c = Counter(0)
    with pytest.raises(AttributeError, match="no method 'nope'"):
        c.nope  # noqa: B018


def test_init_error_reaches_the_caller_with_its_type(ray_cluster):
    @nbs.remote(cpus=0.1)
    class Broken:
        def __init__(self, path):
            raise FileNotFoundError(f"no model at {path}")

        def __call__(self, x):
            return x

    b = Broken("/nowhere")
    with pytest.raises(FileNotFoundError, match="no model at /nowhere") as info:
        b(1)
    assert "raise FileNotFoundError" in str(info.value.__cause__)
