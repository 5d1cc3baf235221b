"""Map, real work: 100 CPU-bound items (a pure-Python loop of ~40 ms each, which threads in
one process cannot speed up) with ``max_replicas=2, cpus=1``, a NEW function from zero replicas
each round.

Anchors in the same rounds:

- raw Ray tasks ``num_cpus=1`` on Ray's prestarted workers (warmed up: no process start);
- the ideal, N × item time / 2, the item time measured in this process each round (the loop
  is calibrated to ~40 ms once per run; on a loaded machine it drifts, the round's own
  measurement keeps the ideal honest), plus one cold start: a raw Ray actor create + first call
  with ``num_cpus=1`` measured in the same rounds.

Every result is checked (each item returns its own loop's sum and the round's salt).
"""

from __future__ import annotations

import itertools
import time

from ._common import CLUSTER, Side, add_rows, interleave, notebook_def, ratio, wait_until, wait_warm

SC = "map_work"
ITEM_S = 0.04
MAX_REPLICAS = 2
_tag = itertools.count()

SRC = """
def work(x):
    acc = 0
    for i in range(LOOPS):
        acc += i * i % 7
    return (x, acc, SALT)
"""

ACTOR_SRC = """
class Cold:
    def f(self, x):
        return (x, SALT)
"""


def _loop_s(loops: int) -> float:
    """The best of 3 timings of one item's loop, in this process."""
    fn = notebook_def(SRC, LOOPS=loops, SALT="")["work"]
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        fn(0)
        best = min(best, time.perf_counter() - t0)
    return best


def calibrate(target_s: float = ITEM_S) -> int:
    """Loop iterations that take ``target_s`` in this process (best of 3)."""
    loops = 20_000
    while True:
        took = _loop_s(loops)
        if took > 0.01:
            return max(1, int(loops * target_s / took))
        loops *= 4


def run(ctx) -> None:
    ray = CLUSTER.ensure()
    n = 40 if ctx.quick else 100
    loops = calibrate()
    expect_acc = notebook_def(SRC, LOOPS=loops, SALT="")["work"](0)[1]
    ctx.note(SC, f"{loops:,} loop iterations per item (~{ITEM_S * 1e3:.0f} ms when calibrated)")
    item_s: list[float] = []

    def expected(salt: str) -> list[tuple]:
        return [(i, expect_acc, salt) for i in range(n)]

    def nbs_one():
        nbs = CLUSTER.nbserverless()
        salt = f"w{next(_tag)}"
        fn = notebook_def(SRC, SALT=salt, LOOPS=loops)["work"]
        f = nbs.remote(cpus=1, max_replicas=MAX_REPLICAS, keep_alive=1.0, name=f"cpu_{salt}")(fn)
        t0 = time.perf_counter()
        first = None
        out = []
        for y in f.map(range(n), progress=False):
            if first is None:
                first = time.perf_counter() - t0
            out.append(y)
        dt = time.perf_counter() - t0
        st = f.stats()
        wait_until(lambda: f.stats()["replicas"] == 0, 30, 0.1)
        wait_warm()
        item_s.append(_loop_s(loops))  # this round's item time, measured here
        return {
            "s": dt,
            "first_s": first or 0.0,
            "peak_replicas": float(st.get("peak_replicas", 0)),
            "ok": out == expected(salt),
            "why": "results differ from [(i, acc, salt)]",
        }

    def ray_one():
        CLUSTER.make_room(2.0)
        salt = f"r{next(_tag)}"
        fn = notebook_def(SRC, SALT=salt, LOOPS=loops)["work"]
        t = ray.remote(num_cpus=1)(fn)
        t0 = time.perf_counter()
        out = ray.get([t.remote(i) for i in range(n)])
        dt = time.perf_counter() - t0
        return {"s": dt, "ok": out == expected(salt), "why": "wrong results"}

    def actor_one():
        CLUSTER.make_room(1.0)
        salt = f"a{next(_tag)}"
        cls = notebook_def(ACTOR_SRC, SALT=salt)["Cold"]
        t0 = time.perf_counter()
        a = ray.remote(num_cpus=1)(cls).remote()
        y = ray.get(a.f.remote(1))
        dt = time.perf_counter() - t0
        ray.kill(a)
        return {"s": dt, "ok": y == (1, salt), "why": f"got {y!r}"}

    nbs_side = Side("nbs f.map CPU-bound from zero, max_replicas=2 cpus=1", nbs_one, warmup=1)
    ray_side = Side("raw Ray tasks num_cpus=1 (prestarted workers)", ray_one, warmup=1)
    cold_side = Side("one cold start: raw Ray actor create+call cpus=1", actor_one)
    interleave(ctx, SC, [nbs_side, ray_side, cold_side])

    rows = add_rows(ctx, SC, nbs_side, [("s", "s"), ("first_s", "s"), ("peak_replicas", "")], n=n)
    cold_rows = add_rows(ctx, SC, cold_side, [("s", "s")])
    ray_rows = add_rows(ctx, SC, ray_side, [("s", "s")], n=n)
    ideal_samples = [n * s / MAX_REPLICAS for s in item_s]
    ideal = ctx.row(
        SC, f"ideal {n} × item time / {MAX_REPLICAS}", "s", "s", samples=ideal_samples, n=n
    )
    cold = cold_rows["s"]
    _, valid = ratio(rows["s"], cold)
    valid = valid and ideal.value == ideal.value  # not NaN
    ctx.check(
        SC,
        "(ideal + one cold start) / nbs time",
        (ideal.value + cold.value) / rows["s"].value if valid else float("nan"),
        ">=",
        0.8,
        0.8,
        valid=valid,
    )
    r, v = ratio(rows["s"], ray_rows["s"])
    ctx.check(SC, "nbs time / raw Ray tasks time", r, "<=", 1.0, 1.0, valid=v)
