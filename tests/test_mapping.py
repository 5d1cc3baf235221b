"""Streaming ``map`` at scale: a million-item generator in bounded kernel memory, results that
stream back while the input is still being read, input-iterator failures that stop the map,
and per-item failures."""

from __future__ import annotations

import gc
import os
import threading

import pytest
from conftest import TEST_CPUS

import nbserverless as nbs
from nbserverless.errors import RemoteTraceback
from nbserverless.handles.mapping import MAX_CHUNK

N = 1_000_000
RSS_LIMIT = 200 * 2**20
PAGE = os.sysconf("SC_PAGE_SIZE")


@nbs.remote(cpus=0.25, max_replicas=2)
def noop(x):
    return x


@nbs.remote(cpus=0.25, max_replicas=2)
def picky(x):
    if x % 1000 == 999:
        raise ValueError(f"bad item {x}")
    return x


def _rss() -> int:
    """This process's resident set size in bytes (``/proc/self/statm``, Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _hwm_reset() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process, if allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """Peak RSS over a block: the kernel's own high-water mark when it can be reset, and a
    sampler (every 10 ms, plus explicit ``sample()`` calls) as a floor and a fallback."""

    def __init__(self) -> None:
        self.base = 0
        self.peak = 0
        self._stop = threading.Event()
        self._hwm_ok = False

    def sample(self) -> None:
        rss = _rss()
        if rss > self.peak:
            self.peak = rss

    def _run(self) -> None:
        while not self._stop.wait(0.01):  # a measurement cadence, not a synchronisation
            self.sample()

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.base = self.peak = _rss()
        self._hwm_ok = _hwm_reset()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()
        if self._hwm_ok:
            self.peak = max(self.peak, _hwm())

    @property
    def growth(self) -> int:
        return self.peak - self.base


def _counting(n: int, pos: list[int], fail_at: int | None = None):
    """A generator of ``n`` ints that records how far it has been pulled in ``pos[0]``."""
    for i in range(n):
        if i == fail_at:
            raise KeyError(f"input broke at {i}")
        pos[0] = i + 1
        yield i


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_a_million_items_stream_in_bounded_memory(ray_cluster, ordered):
    assert noop(-1) == -1  # replicas warm: the measurement is of the map, not of start-up
    pos = [0]
    first_at = None
    count = total = 0
    expected_next = 0
    in_order = True
    with PeakRSS() as mem:
        for i, value in enumerate(noop.map(_counting(N, pos), ordered=ordered, progress=False)):
            if first_at is None:
                first_at = pos[0]
            count += 1
            total += value
            if value != expected_next:
                in_order = False
            expected_next += 1
            if i % 4096 == 0:
                mem.sample()
    print(
        f"\nmap of {N:,} items (ordered={ordered}): kernel RSS growth "
        f"{mem.growth / 2**20:.1f} MB (base {mem.base / 2**20:.0f} MB, peak "
        f"{mem.peak / 2**20:.0f} MB); first result after {first_at:,} items were read"
    )
    assert count == N and total == N * (N - 1) // 2  # every item exactly once
    if ordered:
        assert in_order
    assert pos[0] == N
    # results stream back while the input is still being read: the first one is consumed
    # when only a window (2 replicas x 2 slots x 2 rounds of chunks, +1 being filled) was read
    assert first_at <= 9 * MAX_CHUNK < N
    assert mem.growth < RSS_LIMIT, f"kernel RSS grew {mem.growth / 2**20:.0f} MB"


def _consume(run, out: list, box: dict) -> None:
    try:
        for value in run:
            out.append(value)
    except BaseException as exc:  # noqa: BLE001 - the thread hands it to the test
        box["error"] = exc


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
@pytest.mark.parametrize("fail_at", [0, 5000, 200_000])
def test_an_input_iterator_error_stops_the_map_with_that_error(ray_cluster, ordered, fail_at):
    pos = [0]
    run = noop.map(_counting(N, pos, fail_at=fail_at), ordered=ordered, progress=False)
    out: list = []
    box: dict = {}
    t = threading.Thread(target=_consume, args=(run, out, box), daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive(), "the map hung after its input iterator raised"
    err = box.get("error")
    assert isinstance(err, KeyError) and f"input broke at {fail_at}" in str(err)
    # every item read before the failure came back first, once
    assert pos[0] == fail_at
    assert (out if ordered else sorted(out)) == list(range(fail_at))
    assert noop(7) == 7  # the function is still usable


def test_an_input_iterator_error_is_raised_even_with_return_exceptions(ray_cluster):
    pos = [0]
    run = noop.map(_counting(100, pos, fail_at=50), return_exceptions=True, progress=False)
    out = []
    with pytest.raises(KeyError, match="input broke at 50"):
        for value in run:
            out.append(value)
    assert out == list(range(50))  # the input's failure is not an item's result


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_failed_items_are_reported_per_item(ray_cluster, ordered):
    n = 20_000
    pos = [0]
    before = picky.stats()
    out = list(
        picky.map(_counting(n, pos), ordered=ordered, return_exceptions=True, progress=False)
    )
    assert len(out) == n
    failed = [r for r in out if isinstance(r, BaseException)]
    values = [r for r in out if not isinstance(r, BaseException)]
    assert all(isinstance(e, ValueError) for e in failed)
    assert sorted(str(e) for e in failed) == sorted(f"bad item {x}" for x in range(999, n, 1000))
    assert sorted(values) == [x for x in range(n) if x % 1000 != 999]
    if ordered:  # each failure sits at its own item's position
        for i, r in enumerate(out):
            if i % 1000 == 999:
                assert str(r) == f"bad item {i}"
            else:
                assert r == i
    s = picky.stats()
    assert s.errors - before.errors == n // 1000  # counted per item, too
    assert s.invocations - before.invocations == n


def test_without_return_exceptions_the_first_failed_item_raises(ray_cluster):
    got = []
    with pytest.raises(ValueError, match="bad item 999") as info:
        for value in picky.map(range(5000), progress=False):
            got.append(value)
    assert got == list(range(999))  # everything before it, in order
    exc = info.value
    assert type(exc) is ValueError  # the user's own type...
    assert isinstance(exc.__cause__, RemoteTraceback)  # ...with the remote traceback
    # which item failed, and how many have failed so far, in the message and as attributes
    assert exc.index == 999 and exc.failures >= 1
    assert str(exc).startswith("map item 999 failed (")
    assert f"({exc.failures} failure" in str(exc)


def test_unordered_failure_names_its_own_item(ray_cluster):
    with pytest.raises(ValueError) as info:
        for _ in picky.map(range(5000), ordered=False, progress=False):
            pass
    exc = info.value
    assert exc.index % 1000 == 999  # the item that failed, not a position in the output
    assert (
        str(exc)
        == f"map item {exc.index} failed ({exc.failures} failure"
        + ("s" if exc.failures != 1 else "")
        + f" so far): bad item {exc.index}"
    )


@nbs.remote(cpus=0.25, max_replicas=2)
def lookup(x):
    return {0: "zero"}[x % 50]


def test_a_failure_whose_message_is_not_plain_gets_a_note(ray_cluster):
    """KeyError's message is the repr of its key: it keeps it, and gains a note instead."""
    with pytest.raises(KeyError) as info:
        list(lookup.map(range(120), progress=False))
    exc = info.value
    assert exc.args == (1,) and exc.index == 1  # the first failure in input order
    plural = "s" if exc.failures != 1 else ""
    assert exc.__notes__ == [f"map item 1 failed ({exc.failures} failure{plural} so far)"]
    assert exc.failures >= 1


def test_read_ahead_follows_running_replicas_not_max_replicas(ray_cluster):
    """max_replicas in the thousands must not let the kernel read a long input ahead of the
    replicas that run: the read-ahead is bounded by (a few chunks of) the replicas running."""
    n = 2_000_000

    @nbs.remote(cpus=1, max_replicas=1000)
    def noop1(x):
        return x

    pos = [0]
    consumed = 0
    ahead = 0
    total = 0
    with PeakRSS() as mem:
        for value in noop1.map(_counting(n, pos), progress=False):
            consumed += 1
            total += value
            if not consumed & 1023:
                ahead = max(ahead, pos[0] - consumed)
                mem.sample()
    assert consumed == n and total == n * (n - 1) // 2
    # at most TEST_CPUS replicas of 1 CPU run; the read-ahead feeds twice that many, each
    # 2 x (concurrency + 1) chunks of at most MAX_CHUNK items, plus the chunk being read and
    # the done chunk whose results the caller is still iterating through (read, not consumed)
    bound = (2 * 2 * TEST_CPUS * 2 + 2) * MAX_CHUNK
    print(f"\nread-ahead peak {ahead:,} items (bound {bound:,}), RSS +{mem.growth / 2**20:.0f} MB")
    assert ahead <= bound < n // 3


def test_a_blocking_input_does_not_hold_back_results(ray_cluster):
    """An input that blocks until a result was consumed (a reader waiting on its consumer):
    results must keep flowing while the input is being read."""
    consumed = threading.Event()
    waited = []

    def source():
        yield from range(10)
        waited.append(consumed.wait(10))  # blocks until the first result reached the caller
        yield from range(10, 20)

    out = []
    for value in noop.map(source(), progress=False):
        out.append(value)
        consumed.set()
    assert out == list(range(20))
    assert waited == [True], "no result reached the caller while the input was being read"


def test_a_long_map_counts_its_unsent_items_as_backlog(ray_cluster):
    # the feeder sends a read-ahead window only; the rest of the map is work the scaling
    # policy must see, or a replica lost mid-map (a node that died) is never replaced when
    # starting one takes longer than the window's work
    import time

    @nbs.remote(cpus=0.25, max_replicas=1, keep_alive=0.3)
    def slow(x):
        time.sleep(0.01)
        return x

    n = 3000
    results = iter(slow.map(range(n), progress=False))
    first = next(results)
    pool = slow._get_pool()
    with pool.lock:
        backlog = pool._demand_locked().queued_items
        sent = sum(j.n for j in pool.queue) + sum(j.n for r in pool.reps.values() for j in r.jobs)
    assert sent < n // 2 and backlog >= n // 2, (sent, backlog)
    assert [first, *results] == list(range(n))
    assert pool.unsent_items == {}  # a finished map holds nothing back
