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


@nbs.remote(cpus=0.1, max_replicas=1, batch_size=8)
def batch_of(items):
    """Each item with the whole batch it was sent in."""
    return [(x, tuple(items)) for x in items]


def _words(n: int, seed: int = 7) -> list[str]:
    import random

    rnd = random.Random(seed)
    return [f"{i}:" + "x" * rnd.randrange(60) for i in range(n)]


def test_bucket_by_sends_batches_sorted_within_a_window_and_keeps_input_order(ray_cluster):
    from nbserverless.handles.mapping import BUCKET_BATCHES, BUCKET_FIRST_BATCHES

    words = _words(1000)
    out = list(batch_of.map(words, bucket_by=len, progress=False))
    assert [x for x, _ in out] == words  # results in input order
    batches = {b for _, b in out}
    assert all(len(b) <= 8 for b in batches)
    # windows of upcoming items (16 batches, then 32 per window with one replica): each is
    # sorted by key, longest first, and cut into batches
    expected = set()
    start, sizes = 0, [BUCKET_FIRST_BATCHES * 8] + [BUCKET_BATCHES * 8] * 1000
    for size in sizes:
        window = sorted(words[start : start + size], key=len, reverse=True)
        expected |= {tuple(window[i : i + 8]) for i in range(0, len(window), 8)}
        start += size
        if start >= len(words):
            break
    assert batches == expected
    # far less spread of lengths in a batch than without bucketing
    plain = {b for _, b in batch_of.map(words, progress=False)}

    def spread(bs):
        return sum(max(map(len, b)) - min(map(len, b)) for b in bs) / len(bs)

    assert spread(batches) < spread(plain) / 4


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_bucket_by_streams_a_million_items_in_a_bounded_window(ray_cluster, ordered):
    """A million-item generator: the first result comes back while the input is still being
    read, the kernel never holds more than a few windows, every item comes back once."""
    from nbserverless.handles.mapping import BUCKET_BATCHES

    @nbs.remote(cpus=0.25, max_replicas=2, batch_size=1024)
    def echo(items):
        return list(items)

    n = 1_000_000
    pos = [0]

    def source():
        for i in range(n):
            pos[0] = i + 1
            yield i

    first_at = None
    count = total = ahead = 0
    in_order = True
    run = echo.map(source(), bucket_by=lambda x: x % 97, ordered=ordered, progress=False)
    for i, value in enumerate(run):
        if first_at is None:
            first_at = pos[0]
        count += 1
        total += value
        in_order = in_order and value == i
        if not count & 4095:
            ahead = max(ahead, pos[0] - count)
    assert count == n and total == n * (n - 1) // 2
    if ordered:
        assert in_order
    window = BUCKET_BATCHES * 1024
    assert first_at <= 2 * window < n  # results start at once
    assert ahead <= 4 * window  # a few windows in the kernel, never the whole input


def test_bucket_by_failures_land_on_their_own_items(ray_cluster):
    @nbs.remote(cpus=0.1, max_replicas=1, batch_size=4)
    def fussy(items):
        if any(len(w) > 50 for w in items):
            raise ValueError("too long")
        return [len(w) for w in items]

    words = _words(200)
    out = list(fussy.map(words, bucket_by=len, return_exceptions=True, progress=False))
    assert len(out) == len(words)
    for w, r in zip(words, out, strict=True):
        if len(w) > 50:  # sorted together: their batches fail, the others' do not
            assert isinstance(r, ValueError)
    assert all(r == len(w) for w, r in zip(words, out, strict=True) if isinstance(r, int))
    failed = [i for i, r in enumerate(out) if isinstance(r, BaseException)]
    assert failed and len(failed) < len(words) // 2
    with pytest.raises(ValueError, match=r"map item \d+ failed") as info:
        list(fussy.map(words, bucket_by=len, progress=False))
    assert info.value.index == failed[0]  # the first failure in input order


def test_bucket_by_needs_a_batched_handle(ray_cluster):
    @nbs.remote(cpus=0.1)
    def single(x):
        return x

    with pytest.raises(TypeError, match="bucket_by .* batch_size"):
        single.map(["a"], bucket_by=len)
