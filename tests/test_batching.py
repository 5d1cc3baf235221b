"""Dynamic batching: concurrent single calls packed into batches; map sends full batches."""

from __future__ import annotations

import pytest

import nbserverless as nbs


@nbs.remote(cpus=0.1, max_replicas=1, batch_size=4, batch_wait_ms=200)
def sizes(items):
    return [(x, len(items)) for x in items]


def test_map_packs_full_batches(ray_cluster):
    out = list(sizes.map(range(10)))
    assert [x for x, _ in out] == list(range(10))
    assert [n for _, n in out] == [4] * 8 + [2] * 2  # full batches, the last smaller


def test_concurrent_single_calls_are_batched(ray_cluster):
    sizes(-1)  # warm: the batch wait below is not spent on a cold start
    futures = [sizes.submit(i) for i in range(8)]
    results = [f.result(timeout=60) for f in futures]
    assert [x for x, _ in results] == list(range(8))
    assert max(n for _, n in results) > 1  # packed together...
    assert all(n <= 4 for _, n in results)  # ...never beyond batch_size


def test_a_single_call_gets_its_own_item_back(ray_cluster):
    assert sizes(7) == (7, 1)


def test_batched_function_must_return_a_list_as_long(ray_cluster):
    @nbs.remote(cpus=0.1, batch_size=3, batch_wait_ms=1)
    def short(items):
        return items[:-1]

    with pytest.raises(ValueError, match="list as long as its input"):
        list(short.map(range(3)))


def test_batched_class_call(ray_cluster):
    @nbs.remote(cpus=0.1, max_replicas=1, batch_size=5, batch_wait_ms=1)
    class Upper:
        def __init__(self, suffix):
            self.suffix = suffix

        def __call__(self, texts):
            return [t.upper() + self.suffix for t in texts]

        def size(self):
            return len(self.suffix)

    u = Upper("!")
    assert u("a") == "A!"
    assert list(u.map(["x", "y", "z"] * 4)) == ["X!", "Y!", "Z!"] * 4
    assert u.size() == 1  # other methods are not batched
    with pytest.raises(TypeError, match="exactly one positional item"):
        u("a", "b")
