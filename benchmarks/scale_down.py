"""Scale down: an idle replica is gone after ``keep_alive``. Time from the last result to
``f.stats()["replicas"] == 0`` (polled every 20 ms), a new function each round."""

from __future__ import annotations

import itertools
import time

from ._common import CLUSTER, Side, add_rows, interleave, notebook_def, wait_until, wait_warm

SC = "scale_down"
KEEP_ALIVE = 2.0
_tag = itertools.count()


def run(ctx) -> None:
    CLUSTER.ensure()

    def one():
        nbs = CLUSTER.nbserverless()
        salt = f"sd{next(_tag)}"
        fn = notebook_def("def idle(x):\n    return (x, SALT)\n", SALT=salt)["idle"]
        f = nbs.remote(cpus=0.25, keep_alive=KEEP_ALIVE, name=f"idle_{salt}")(fn)
        f(3)

        # the first calls may be served before the function's own replica is up (prewarm /
        # task fallback): wait for the replica, then take the last result from it
        def replica_up() -> bool:  # keep calling until the function has a replica
            f(3)
            return f.stats()["replicas"] >= 1

        waited = wait_until(replica_up, 30, 0.05)
        y = f(3)
        t_last = time.perf_counter()
        up = f.stats()["replicas"]
        if waited is None:
            return {"gone_s": None, "ok": False, "why": "no replica came up within 30 s"}
        gone = None
        while time.perf_counter() - t_last < KEEP_ALIVE + 30:
            if f.stats()["replicas"] == 0:
                gone = time.perf_counter() - t_last
                break
            time.sleep(0.02)
        ok = y == (3, salt) and up >= 1 and gone is not None
        why = f"result {y!r}, replicas right after the call {up}, gone after {gone}"
        wait_warm()
        return {
            "gone_s": gone,
            "over_keep_alive_s": None if gone is None else gone - KEEP_ALIVE,
            "ok": ok,
            "why": why,
        }

    side = Side(f"nbs replica gone after last result (keep_alive={KEEP_ALIVE:g})", one)
    interleave(ctx, SC, [side])
    rows = add_rows(ctx, SC, side, [("gone_s", "s"), ("over_keep_alive_s", "s")])
    g = rows["gone_s"]
    valid = g.ok and not g.error and not g.skipped and bool(g.samples)
    ctx.check(
        SC,
        f"time to zero replicas, keep_alive={KEEP_ALIVE:g} s",
        g.value if valid else float("nan"),
        "<=",
        KEEP_ALIVE + 1.0,
        KEEP_ALIVE + 1.0,
        unit=" s",
        valid=valid,
    )
    if valid:
        worst = max(g.samples)
        ctx.note(SC, f"worst round {worst:.2f} s (target {KEEP_ALIVE + 1:.1f} s)")
