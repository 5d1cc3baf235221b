"""Map, tiny items: items/s of a noop-like function over many items, results in order.

nbs ``f.map`` over 200,000 items vs one Ray task per item (on fewer items; items/s compared),
``multiprocessing.Pool(2).map``, Dask ``client.map`` + ``gather`` on a 2-process LocalCluster,
and ipyparallel ``DirectView.map`` on a 2-engine ipcluster started (and stopped) here.
Every side's results are checked against ``[x + 1 for x in items]``.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time

from ._common import (
    CLUSTER,
    Side,
    add_rows,
    interleave,
    need,
    notebook_def,
    ratio,
    wait_until,
    wait_warm,
)

SC = "map_tiny"


def inc(x):  # importable: multiprocessing, Dask and ipyparallel need it by reference or value
    return x + 1


def _check(out, n: int) -> tuple[bool, str]:
    out = list(out)
    if len(out) != n:
        return False, f"{len(out)} results for {n} items"
    for i, y in enumerate(out):
        if y != i + 1:
            return False, f"item {i}: got {y!r}, want {i + 1}"
    return True, ""


def _timed(fn, n: int) -> dict:
    t0 = time.perf_counter()
    out = list(fn(n))  # consume inside the timing (nbs map returns an iterator)
    dt = time.perf_counter() - t0
    ok, why = _check(out, n)
    return {"items_per_s": n / dt, "s": dt, "ok": ok, "why": why}


def run(ctx) -> None:
    ray = CLUSTER.ensure()
    n_big = 20_000 if ctx.quick else 200_000  # nbs, multiprocessing, ipyparallel
    n_task = 300 if ctx.quick else 2_000  # one Ray task per item
    n_dask = 2_000 if ctx.quick else 10_000  # Dask: ~ms per future, 200k would take minutes
    sides: list[Side] = []
    sizes: dict[str, int] = {}

    # --- nbserverless: a notebook-defined function, warmed by the warm-up round
    def nbs_setup():
        nbs = CLUSTER.nbserverless()
        fn = notebook_def("def inc(x):\n    return x + 1\n")["inc"]
        # two warm replicas, like the two processes of multiprocessing.Pool(2)
        nbs_side.f = nbs.remote(min_replicas=2, max_replicas=2, keep_alive=5, name="bench_map_inc")(
            fn
        )

    def nbs_one():
        # replicas up first (untimed), like the pre-started pools of the anchors
        nbs = CLUSTER.nbserverless()
        prewarm = nbs.config.get("prewarm")
        nbs.config(prewarm=0)  # warm-up on the replicas themselves
        list(nbs_side.f.map(range(2_000), progress=False))
        # both replicas READY ("replicas" also counts one still starting, whose process start
        # would compete with the timed map); internal state, read only
        pool = nbs_side.f._get_pool()
        wait_until(lambda: sum(r.state == "ready" for r in pool.reps.values()) >= 2, 60, 0.05)
        nbs.config(prewarm=prewarm)
        wait_warm()  # prewarm=0 retired the stand-ins: their restart is no part of the map
        return _timed(lambda n: nbs_side.f.map(range(n), progress=False), n_big)

    nbs_side = Side("nbs f.map (warm replicas)", nbs_one, setup=nbs_setup)
    sides.append(nbs_side)
    sizes[nbs_side.name] = n_big

    # --- one Ray task per item
    task = ray.remote(inc)

    def task_one():
        waited = CLUSTER.make_room(2.0)  # idle nbs replicas hold the CPUs the tasks need
        if waited > 1:
            ctx.log(
                f"{SC}: waited {waited:.1f} s for CPUs; available now "
                f"{ray.available_resources().get('CPU', 0):g}"
            )
        ray.get([task.remote(i) for i in range(20)])  # worker processes up again (untimed)
        return _timed(lambda n: ray.get([task.remote(i) for i in range(n)]), n_task)

    s = Side("raw Ray task per item", task_one)
    sides.append(s)
    sizes[s.name] = n_task

    # --- multiprocessing.Pool(2)
    mp_state = {}

    def mp_setup():
        mp_state["pool"] = multiprocessing.get_context("fork").Pool(2)

    s = Side(
        "multiprocessing.Pool(2).map",
        lambda: _timed(lambda n: mp_state["pool"].map(inc, range(n)), n_big),
        setup=mp_setup,
    )
    sides.append(s)
    sizes[s.name] = n_big

    # --- Dask LocalCluster(2 processes)
    dask_state = {}

    def dask_setup():
        distributed = need("distributed", "dask[distributed] not installed")
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
        dask_state["cluster"] = cluster
        dask_state["client"] = distributed.Client(cluster)

    def dask_map(n):
        c = dask_state["client"]
        futs = c.map(inc, range(n), pure=False)
        out = c.gather(futs)
        del futs
        return out

    s = Side("Dask client.map+gather (2 procs)", lambda: _timed(dask_map, n_dask), setup=dask_setup)
    sides.append(s)
    sizes[s.name] = n_dask

    # --- ipyparallel: ipcluster with 2 engines
    ipp_state = {}

    def ipp_setup():
        ipp = need("ipyparallel", "ipyparallel not installed")
        cluster = ipp.Cluster(n=2, log_level=40)
        ipp_state["cluster"] = cluster
        rc = cluster.start_and_connect_sync(activate=False)
        ipp_state["rc"] = rc
        dv = rc[:]
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        dv.apply_sync(sys.path.insert, 0, here)
        ipp_state["view"] = dv

    s = Side(
        "ipyparallel view.map (2 engines)",
        lambda: _timed(lambda n: ipp_state["view"].map_sync(inc, range(n)), n_big),
        setup=ipp_setup,
    )
    sides.append(s)
    sizes[s.name] = n_big

    try:
        interleave(ctx, SC, sides)
    finally:
        if "pool" in mp_state:
            mp_state["pool"].terminate()
        if "client" in dask_state:
            try:
                dask_state["client"].close()
                dask_state["cluster"].close()
            except Exception:
                pass
        if "cluster" in ipp_state:
            try:
                ipp_state["rc"].close()
            except Exception:
                pass
            try:
                ipp_state["cluster"].stop_cluster_sync()
            except Exception as e:
                ctx.note(SC, f"ipcluster stop: {e}")

    rows = {
        s.name: add_rows(ctx, SC, s, [("items_per_s", "items/s")], n=sizes[s.name]) for s in sides
    }
    nb = rows[nbs_side.name]["items_per_s"]
    r, v = ratio(nb, rows["raw Ray task per item"]["items_per_s"])
    ctx.check(SC, "nbs items/s / Ray task-per-item items/s", r, ">=", 500, 100, valid=v)
    r, v = ratio(nb, rows["multiprocessing.Pool(2).map"]["items_per_s"])
    ctx.check(SC, "nbs items/s / multiprocessing.Pool(2) items/s", r, ">=", 0.5, 0.2, valid=v)
    r, v = ratio(nb, rows["Dask client.map+gather (2 procs)"]["items_per_s"])
    ctx.check(SC, "nbs items/s / Dask items/s (info)", r, ">=", 1.0, None, valid=v)
    r, v = ratio(nb, rows["ipyparallel view.map (2 engines)"]["items_per_s"])
    ctx.check(SC, "nbs items/s / ipyparallel items/s (info)", r, ">=", 1.0, None, valid=v)
