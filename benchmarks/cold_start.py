"""Cold start: a never-called function with zero replicas -> first result.

Sides (interleaved, each round defines NEW code, so nothing is cached):
- nbs, ``cpus=0.25`` and ``cpus=1`` with the default prewarm, and again with ``prewarm=0``;
- raw Ray: define a new actor class, create it with the same request, first call;
- Ray Serve: a new deployment with ``min_replicas=0, initial_replicas=0``; first request from
  zero, then (after Serve scaled it back to zero) the second cold start.
"""

from __future__ import annotations

import itertools
import time

from ._common import (
    CLUSTER,
    Side,
    Skip,
    add_rows,
    interleave,
    notebook_def,
    ratio,
    wait_until,
    wait_warm,
)

SC = "cold_start"
KEEP_ALIVE = 1.0  # nbs: short, so the replica of the previous round is gone quickly
SETTLE_S = 3.0  # after a round, for prewarmed replicas to be replenished
_tag = itertools.count()

FN_SRC = """
def cold_fn(x):
    return (x, SALT)
"""

ACTOR_SRC = """
class ColdActor:
    def f(self, x):
        return (x, SALT)
"""

SERVE_SRC = """
class ColdServe:
    def __call__(self, x):
        return (x, SALT)
"""


def _nbs_side(ctx, cpus: float, prewarm: int | None) -> Side:
    label = f"nbs cpus={cpus:g}" + (" prewarm=0" if prewarm == 0 else "")

    def one():
        nbs = CLUSTER.nbserverless()
        old = None
        if prewarm is not None:
            old = nbs.config().get("prewarm")
            nbs.config(prewarm=prewarm)
        try:
            salt = f"nbs-{next(_tag)}"
            fn = notebook_def(FN_SRC, SALT=salt)["cold_fn"]
            f = nbs.remote(cpus=cpus, keep_alive=KEEP_ALIVE, name=f"cold_{salt}")(fn)
            t0 = time.perf_counter()
            y = f(7)
            dt = time.perf_counter() - t0
            ok = y == (7, salt)
            st = f.stats()
            # wait for this function's replica to go, then let prewarm refill
            wait_until(lambda: f.stats()["replicas"] == 0, 30, 0.1)
        finally:
            if old is not None:
                nbs.config(prewarm=old)
        time.sleep(SETTLE_S)
        wait_warm()
        return {
            "first_result_s": dt,
            "ok": ok,
            "why": f"got {y!r}",
            "cold_starts": st.get("cold_starts"),
        }

    return Side(label, one)


def _actor_side(ctx, ray, cpus: float) -> Side:
    def one():
        CLUSTER.make_room(cpus)
        salt = f"actor-{next(_tag)}"
        cls = notebook_def(ACTOR_SRC, SALT=salt)["ColdActor"]
        t0 = time.perf_counter()
        a = ray.remote(num_cpus=cpus)(cls).remote()
        y = ray.get(a.f.remote(7))
        dt = time.perf_counter() - t0
        ray.kill(a)
        time.sleep(0.5)
        return {"first_result_s": dt, "ok": y == (7, salt), "why": f"got {y!r}"}

    return Side(f"raw Ray actor create+call cpus={cpus:g}", one)


def _serve_side(ctx, cpus: float) -> Side:
    def one():
        serve = CLUSTER.serve()
        salt = f"serve-{next(_tag)}"
        cls = notebook_def(SERVE_SRC, SALT=salt)["ColdServe"]
        dep = serve.deployment(
            name="ColdServe",
            ray_actor_options={"num_cpus": cpus},
            autoscaling_config={
                "min_replicas": 0,
                "initial_replicas": 0,
                "max_replicas": 1,
                "target_ongoing_requests": 1,
                "upscale_delay_s": 0,
                "downscale_delay_s": 1,
                "downscale_to_zero_delay_s": 1,
                "metrics_interval_s": 0.5,
                "look_back_period_s": 1,
            },
        )(cls)
        app = f"bench_cold_{salt}"
        h = serve.run(dep.bind(), name=app, route_prefix=None)

        def running() -> int:
            st = serve.status().applications[app].deployments["ColdServe"]
            return sum(st.replica_states.values()) if st.replica_states else 0

        wait_until(lambda: running() == 0, 30, 0.2)
        t0 = time.perf_counter()
        y1 = h.remote(7).result()
        first = time.perf_counter() - t0
        back_to_zero = wait_until(lambda: running() == 0, 60, 0.2)
        if back_to_zero is None:
            serve.delete(app)
            raise RuntimeError("Serve deployment did not scale back to zero within 60 s")
        t0 = time.perf_counter()
        y2 = h.remote(8).result()
        second = time.perf_counter() - t0
        serve.delete(app)
        ok = y1 == (7, salt) and y2 == (8, salt)
        return {
            "first_s": first,
            "second_s": second,
            "ok": ok,
            "why": f"got {y1!r}, {y2!r}",
            "to_zero_s": back_to_zero,
        }

    return Side(f"Ray Serve min_replicas=0 cpus={cpus:g}", one)


def run(ctx) -> None:
    ray = CLUSTER.ensure()
    cpus_list = [0.25, 1.0]
    sides: list[Side] = []
    for c in cpus_list:
        sides.append(_nbs_side(ctx, c, None))
    for c in cpus_list:
        sides.append(_nbs_side(ctx, c, 0))
    for c in cpus_list:
        sides.append(_actor_side(ctx, ray, c))
    try:
        CLUSTER.serve()
        serve_side = _serve_side(ctx, 1.0)
        sides.append(serve_side)
    except Skip as e:
        print(f"skipped: {SC} / Ray Serve: {e}", flush=True)
        serve_side = None
    interleave(ctx, SC, sides)

    by = {}
    for s in sides:
        if s is serve_side:
            rows = add_rows(
                ctx,
                SC,
                s,
                [("first_s", "s"), ("second_s", "s")],
                note="cold start 1 from zero; 2 after scaling back to zero",
            )
        else:
            rows = add_rows(ctx, SC, s, [("first_result_s", "s")])
        by[s.name] = rows
    for c in cpus_list:
        raw = by[f"raw Ray actor create+call cpus={c:g}"]["first_result_s"]
        for pw in ("", " prewarm=0"):
            nb = by[f"nbs cpus={c:g}{pw}"]["first_result_s"]
            r, v = ratio(nb, raw)
            if pw:  # strict zero: no target of its own; reported for comparison
                ctx.check(
                    SC,
                    f"nbs cpus={c:g} prewarm=0 / raw actor create+call (info)",
                    r,
                    "<=",
                    1.0,
                    None,
                    valid=v,
                )
            else:
                ctx.check(
                    SC, f"nbs cpus={c:g} / raw actor create+call", r, "<=", 0.1, 0.25, valid=v
                )
