"""Warm call: p50/p99 of a noop ``f(x)`` on a warm replica vs raw Ray actor call, raw Ray task
round trip and a Ray Serve handle call, in the same cluster, interleaved."""

from __future__ import annotations

import time

from ._common import CLUSTER, Side, add_rows, interleave, quantile, ratio

SC = "warm_call"
CPUS = 0.25  # the same small request on every side, so nothing waits for a CPU


def noop(x):
    return x


def _timed_calls(call, n: int) -> dict:
    lat = []
    ok = True
    why = ""
    for i in range(n):
        t0 = time.perf_counter()
        y = call(i)
        lat.append((time.perf_counter() - t0) * 1e3)
        if y != i:
            ok, why = False, f"f({i}) returned {y!r}"
    return {"p50": quantile(lat, 0.5), "p99": quantile(lat, 0.99), "ok": ok, "why": why}


def run(ctx) -> None:
    ray = CLUSTER.ensure()
    n = 100 if ctx.quick else 400
    sides: list[Side] = []

    # --- nbserverless
    def nbs_setup():
        nbs = CLUSTER.nbserverless()
        nbs_side.f = nbs.remote(cpus=CPUS, keep_alive=600, name="bench_warm_noop")(noop)
        # on a warm replica: strict zero for the first call, so it waits for the replica
        # instead of running on a prestarted worker while the replica starts
        prewarm = nbs.config.get("prewarm")
        nbs.config(prewarm=0)
        nbs_side.f(0)
        nbs.config(prewarm=prewarm)

    nbs_side = Side("nbs f(x)", lambda: _timed_calls(nbs_side.f, n), setup=nbs_setup)
    sides.append(nbs_side)

    # --- raw Ray actor
    @ray.remote(num_cpus=CPUS)
    class Noop:
        def f(self, x):
            return x

    def actor_setup():
        actor_side.a = Noop.remote()
        ray.get(actor_side.a.f.remote(0))

    actor_side = Side(
        "raw Ray actor call",
        lambda: _timed_calls(lambda x: ray.get(actor_side.a.f.remote(x)), n),
        setup=actor_setup,
    )
    sides.append(actor_side)

    # --- raw Ray task
    task = ray.remote(num_cpus=CPUS)(noop)
    sides.append(Side("raw Ray task", lambda: _timed_calls(lambda x: ray.get(task.remote(x)), n)))

    # --- Ray Serve handle
    def serve_setup():
        serve = CLUSTER.serve()

        @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": CPUS})
        class ServeNoop:
            def __call__(self, x):
                return x

        serve_side.h = serve.run(ServeNoop.bind(), name="bench_warm", route_prefix=None)
        serve_side.h.remote(0).result()

    serve_side = Side(
        "Ray Serve handle call",
        lambda: _timed_calls(lambda x: serve_side.h.remote(x).result(), n),
        setup=serve_setup,
    )
    sides.append(serve_side)

    interleave(ctx, SC, sides)

    rows = {s.name: add_rows(ctx, SC, s, [("p50", "ms"), ("p99", "ms")], n=n) for s in sides}
    nb = rows["nbs f(x)"]
    r, v = ratio(nb["p50"], rows["raw Ray actor call"]["p50"])
    ctx.check(SC, "nbs p50 / raw actor call p50", r, "<=", 1.1, 1.25, valid=v)
    r, v = ratio(nb["p50"], rows["raw Ray task"]["p50"])
    ctx.check(SC, "nbs p50 / raw task p50 (clearly below)", r, "<=", 1.0, 1.0, valid=v)
    r, v = ratio(nb["p50"], rows["Ray Serve handle call"]["p50"])
    ctx.check(SC, "nbs p50 / Serve handle p50 (clearly below)", r, "<=", 1.0, 1.0, valid=v)

    # clean up the anchors (the nbs replica goes with nbs.shutdown at the end)
    if getattr(actor_side, "a", None) is not None:
        ray.kill(actor_side.a)
    if getattr(serve_side, "h", None) is not None:
        try:
            CLUSTER.serve().delete("bench_warm")
        except Exception:
            pass
