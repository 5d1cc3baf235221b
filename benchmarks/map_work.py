"""Map, real work: 200 calls of ``time.sleep(0.1)`` with ``max_replicas=8, cpus=0.25`` from zero
replicas (a new function each round). The yardstick is the ideal N × 0.1 / 8 = 2.5 s plus one cold
start: the time one replica takes to start from nothing, a raw Ray actor create + first call with
``num_cpus=0.25`` measured in the same rounds (were scale-up instant, all 8 replicas would start
at once, in one cold start). The stricter yardstick, 2.5 s plus nbs's own time to the first
result − 0.1 s, is reported as info. For scale, raw Ray tasks with ``num_cpus=0.25`` run the same
200 sleeps in the same rounds."""

from __future__ import annotations

import itertools
import time

from ._common import CLUSTER, Side, add_rows, interleave, notebook_def, ratio, wait_until, wait_warm

SC = "map_work"
WORK_S = 0.1
MAX_REPLICAS = 8
_tag = itertools.count()

SRC = """
import time
def work(x):
    time.sleep(WORK_S)
    return (x, SALT)
"""

ACTOR_SRC = """
class Cold:
    def f(self, x):
        return (x, SALT)
"""


def run(ctx) -> None:
    ray = CLUSTER.ensure()
    n = 80 if ctx.quick else 200
    ideal = n * WORK_S / MAX_REPLICAS

    def nbs_one():
        nbs = CLUSTER.nbserverless()
        salt = f"w{next(_tag)}"
        fn = notebook_def(SRC, SALT=salt, WORK_S=WORK_S)["work"]
        f = nbs.remote(cpus=0.25, max_replicas=MAX_REPLICAS, keep_alive=1.0, name=f"sleep_{salt}")(
            fn
        )
        t0 = time.perf_counter()
        first = None
        out = []
        for y in f.map(range(n), progress=False):
            if first is None:
                first = time.perf_counter() - t0
            out.append(y)
        dt = time.perf_counter() - t0
        ok = out == [(i, salt) for i in range(n)]
        cold = max(0.0, (first or 0.0) - WORK_S)
        st = f.stats()
        wait_until(lambda: f.stats()["replicas"] == 0, 30, 0.1)
        wait_warm()
        return {
            "s": dt,
            "first_cold_s": cold,
            "pct_of_ideal_own_cold": 100.0 * (ideal + cold) / dt,
            "peak_replicas": float(st.get("peak_replicas", 0)),
            "ok": ok,
            "why": "results differ from [(i, salt)]",
        }

    def ray_one():
        CLUSTER.make_room(2.0)
        salt = f"r{next(_tag)}"
        fn = notebook_def(SRC, SALT=salt, WORK_S=WORK_S)["work"]
        t = ray.remote(num_cpus=0.25)(fn)
        t0 = time.perf_counter()
        out = ray.get([t.remote(i) for i in range(n)])
        dt = time.perf_counter() - t0
        return {
            "s": dt,
            "pct_of_ideal": 100.0 * ideal / dt,
            "ok": out == [(i, salt) for i in range(n)],
            "why": "wrong results",
        }

    def actor_one():
        CLUSTER.make_room(0.25)
        salt = f"a{next(_tag)}"
        cls = notebook_def(ACTOR_SRC, SALT=salt)["Cold"]
        t0 = time.perf_counter()
        a = ray.remote(num_cpus=0.25)(cls).remote()
        y = ray.get(a.f.remote(1))
        dt = time.perf_counter() - t0
        ray.kill(a)
        return {"s": dt, "ok": y == (1, salt), "why": f"got {y!r}"}

    nbs_side = Side("nbs f.map sleep(0.1) from zero", nbs_one, warmup=1)
    ray_side = Side("raw Ray tasks num_cpus=0.25 (warm workers)", ray_one, warmup=1)
    cold_side = Side("one cold start: raw Ray actor create+call cpus=0.25", actor_one)
    interleave(ctx, SC, [nbs_side, ray_side, cold_side])

    rows = add_rows(
        ctx,
        SC,
        nbs_side,
        [
            ("s", "s"),
            ("first_cold_s", "s"),
            ("pct_of_ideal_own_cold", "%"),
            ("peak_replicas", ""),
        ],
        n=n,
    )
    cold_rows = add_rows(ctx, SC, cold_side, [("s", "s")])
    ray_rows = add_rows(
        ctx, SC, ray_side, [("s", "s"), ("pct_of_ideal", "%")], n=n, note="ideal without cold start"
    )
    ctx.row(SC, f"ideal {n}×{WORK_S}/{MAX_REPLICAS}", "s", "s", samples=[ideal], n=n)
    cold = cold_rows["s"]
    _, valid = ratio(rows["s"], cold)
    # ≥ 1/1.1 of ideal (+ one cold start) == finishing within 10% of it
    ctx.check(
        SC,
        f"(ideal {ideal:g} s + one cold start) / nbs time",
        (ideal + cold.value) / rows["s"].value if valid else float("nan"),
        ">=",
        0.9,
        1 / 1.1,
        valid=valid,
    )
    own = rows["pct_of_ideal_own_cold"]
    ctx.check(
        SC,
        f"(ideal {ideal:g} s + nbs first result − 0.1 s) / nbs time (info)",
        own.value / 100.0 if valid else float("nan"),
        ">=",
        0.9,
        None,
        valid=valid,
    )
    r, v = ratio(rows["s"], ray_rows["s"])  # vs raw Ray tasks, info
    ctx.check(SC, "nbs time / raw Ray tasks time (info)", r, "<=", 1.0, None, valid=v)
