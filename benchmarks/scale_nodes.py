"""Scale nodes: 0 worker nodes -> N nodes -> first result, -> all results of a map, -> back to 0
worker nodes, on a real autoscaling cluster (Ray's fake multi-node provider on this machine:
a 0-CPU head, ``cpu_node`` workers of 1 CPU, 0..N of them, 6 s idle timeout; autoscaler v1).

Side by side on the same cluster, in alternating rounds, each from a driver process of its own:
nbserverless (``@remote(cpus=1)``, ``map`` over the items) and raw Ray (N actors with the same
request, items round-robin). Each round starts at 0 worker nodes and ends when the cluster is
back at 0. Targets (issue 12): first result <= 1.1x raw Ray; back to zero nodes <= keep_alive +
idle timeout + 5 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SC = "scale_nodes"
NODES = 2
ITEMS = 40
KEEP_ALIVE = 1.0
IDLE_TIMEOUT_S = 6.0

_COMMON = """
import json, time, ray
T0 = time.perf_counter()

def workers():
    return sum(1 for n in ray.nodes()
               if n["Alive"] and "node:__internal_head__" not in n["Resources"])

def work(x):
    time.sleep(0.5)
    return x * x

def back_to_zero(t_done):
    while workers() and time.perf_counter() - t_done < 300:
        time.sleep(0.1)
    return time.perf_counter() - t_done if not workers() else None
"""

NBS = _COMMON + textwrap.dedent(
    f"""
    import nbserverless as nbs
    nbs.connect()
    assert workers() == 0, "a round must start at 0 worker nodes"
    T0 = time.perf_counter()
    f = nbs.remote(cpus=1, keep_alive={KEEP_ALIVE}, max_replicas={NODES})(work)
    first = all_s = None
    out = []
    for y in f.map(range({ITEMS}), progress=False):
        out.append(y)
        if first is None:
            first = time.perf_counter() - T0
    all_s = time.perf_counter() - T0
    zero = back_to_zero(time.perf_counter())
    print("RESULT", json.dumps(dict(first_s=first, all_s=all_s, zero_s=zero,
                                    ok=out == [x * x for x in range({ITEMS})])))
    """
)

RAW = _COMMON + textwrap.dedent(
    f"""
    ray.init(logging_level="ERROR", log_to_driver=False)
    assert workers() == 0, "a round must start at 0 worker nodes"
    T0 = time.perf_counter()

    @ray.remote(num_cpus=1)
    class Worker:
        def run(self, x):
            return work(x)

    actors = [Worker.remote() for _ in range({NODES})]
    refs = [actors[i % {NODES}].run.remote(i) for i in range({ITEMS})]
    first = None
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        if first is None:
            first = time.perf_counter() - T0
    out = ray.get(refs)
    all_s = time.perf_counter() - T0
    for a in actors:  # as nbserverless does after keep_alive
        ray.kill(a)
    zero = back_to_zero(time.perf_counter())
    print("RESULT", json.dumps(dict(first_s=first, all_s=all_s, zero_s=zero,
                                    ok=out == [x * x for x in range({ITEMS})])))
    """
)


def _driver(script: str, env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"ok": False, "why": (proc.stderr or proc.stdout)[-800:]}


def run(ctx) -> None:
    from ._common import Side, add_rows, interleave

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from autoscaling_cluster import CPU_NODE, AutoscalingCluster

    node = dict(CPU_NODE, max_workers=NODES)
    with AutoscalingCluster(
        worker_types={"cpu_node": node}, idle_timeout_s=IDLE_TIMEOUT_S
    ) as cluster:
        env = cluster.client_env()
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH")) if p
        )
        # raw Ray needs RAY_AUTH_MODE=token by hand when `ray start` turned token
        # authentication on (it does when ~/.ray/auth_token exists); nbserverless sets it
        raw_env = dict(env)
        if (Path.home() / ".ray" / "auth_token").is_file():
            raw_env["RAY_AUTH_MODE"] = "token"
        sides = [
            Side("nbserverless map, cpus=1", lambda: _driver(NBS, env), warmup=0),
            Side("raw Ray actors, num_cpus=1", lambda: _driver(RAW, raw_env), warmup=0),
        ]
        interleave(ctx, SC, sides)
    metrics = [("first_s", "s"), ("all_s", "s"), ("zero_s", "s")]
    rows = {s.name: add_rows(ctx, SC, s, metrics) for s in sides}
    nbs_rows, raw_rows = rows[sides[0].name], rows[sides[1].name]
    first, raw_first = nbs_rows["first_s"], raw_rows["first_s"]
    valid = bool(first.samples and raw_first.samples) and sides[0].ok and sides[1].ok
    ctx.check(
        SC,
        f"0 -> {NODES} nodes -> first result vs raw Ray actors",
        first.value / raw_first.value if valid else float("nan"),
        "<=",
        1.1,
        1.1,
        valid=valid,
    )
    zero = nbs_rows["zero_s"]
    ctx.check(
        SC,
        "back to 0 worker nodes after the last result",
        zero.value if zero.samples else float("nan"),
        "<=",
        KEEP_ALIVE + IDLE_TIMEOUT_S + 5,
        KEEP_ALIVE + IDLE_TIMEOUT_S + 5,
        unit=" s",
        valid=bool(zero.samples) and sides[0].ok,
    )
