"""Node-level scale from zero on Ray's own autoscaler (v1 and v2), on real raylets.

Each test starts Ray's fake multi-node provider (tests/autoscaling_cluster.py: a 0-CPU head,
``cpu_node`` workers of 1 CPU, 0..2 of them, 6 s idle timeout) and drives it from a
subprocess through the public API (this pytest process already has the session's embedded
cluster, and a process has one Ray driver).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from autoscaling_cluster import AutoscalingCluster

SCALE_FROM_ZERO = textwrap.dedent(
    """
    import json, threading, time
    import ray
    import nbserverless as nbs
    from nbserverless.core import cluster
    from nbserverless.core.capacity import NodeTimeoutError
    from nbserverless.errors import InfeasibleError

    def say(key, value):
        print(key, json.dumps(value), flush=True)

    def workers():
        return sum(1 for n in ray.nodes()
                   if n["Alive"] and "node:__internal_head__" not in n["Resources"])

    nbs.connect()  # RAY_ADDRESS: a token-auth cluster started with plain `ray start --head`
    from nbserverless.core.autoscaler import NODES
    say("history_at_connect", [n for _, n in NODES.history])  # counted from connect on
    say("autoscaling", cluster.autoscaling())
    say("node_types", cluster.node_types())
    say("prewarm", nbs.config.get("prewarm"))
    say("workers_before", workers())
    nbs.config(keep_alive=1)

    @nbs.remote(cpus=64)
    def huge():
        return 1

    t = time.monotonic()
    try:
        huge()
        say("infeasible", None)
    except InfeasibleError as exc:
        say("infeasible", [round(time.monotonic() - t, 1), str(exc)])

    @nbs.remote(cpus=1)
    def where(x):
        return x * 2, ray.get_runtime_context().get_node_id()

    fut = where.submit(21)
    waiting = 0
    while not fut.done():  # the call waits for a node to come up, and says so
        waiting = max(waiting, where.stats()["waiting_for_node"])
        time.sleep(0.05)
    value, node = fut.result()
    head = next(n["NodeID"] for n in ray.nodes() if "node:__internal_head__" in n["Resources"])
    say("result", value)
    say("ran_on_worker", node != head)
    say("waiting_for_node", waiting)
    s = cluster.summary()
    say("summary", {k: s[k] for k in ("nodes", "worker_nodes", "nodes_peak", "autoscaling")})
    say("node_cost", [s["node_cost"] > 0, s["node_cost_always_on"] >= s["node_cost"]])
    t = time.monotonic()
    while workers() and time.monotonic() - t < 180:  # keep_alive, then the idle timeout
        time.sleep(0.5)
    say("workers_after", workers())
    say("stats_after", {k: where.stats()[k] for k in ("replicas", "waiting_for_node")})
    t = time.monotonic()  # the supervisor feeds the ledger; no view asks for a summary here
    while NODES.history[-1][1] != 1 and time.monotonic() - t < 10:
        time.sleep(0.1)
    say("history", [n for _, n in NODES.history])

    nbs.config(node_timeout=2)  # waiting for a node is bounded: then a clear error

    @nbs.remote(cpus=1)
    def impatient():
        return 1

    try:
        impatient()
        say("node_timeout", None)
    except NodeTimeoutError as exc:
        say("node_timeout", str(exc))
    say("after_timeout", {k: impatient.stats()[k] for k in ("queued", "waiting_for_node")})
    nbs.shutdown()
    """
)


def _run_driver(c: AutoscalingCluster, script: str, timeout: float = 400) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=c.client_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = json.loads(value)
        except ValueError:
            pass
    if proc.returncode != 0:
        pytest.fail(f"driver failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}", False)
    return out


@pytest.mark.timeout(900)
@pytest.mark.parametrize("v2", [False, True], ids=["autoscaler_v1", "autoscaler_v2"])
def test_scale_from_zero_nodes_and_back(v2):
    with AutoscalingCluster(v2=v2) as c:
        out = _run_driver(c, SCALE_FROM_ZERO)
    assert out["history_at_connect"] == [1]  # the head alone
    assert out["autoscaling"] is True
    assert out["node_types"] == {"cpu_node": {"CPU": 1.0}}
    assert out["prewarm"] == 0  # warm stand-ins would keep a node up for nobody
    assert out["workers_before"] == 0
    seconds, message = out["infeasible"]  # no node type has 64 CPUs: fails at once
    assert "cpus=64" in message and "cpu_node (1 CPU/0 GPU)" in message
    assert out["result"] == 42 and out["ran_on_worker"] is True
    assert out["waiting_for_node"] == 1  # visible in stats() while the node came up
    assert out["summary"]["worker_nodes"] >= 1 and out["summary"]["nodes_peak"] >= 2
    assert out["summary"]["autoscaling"] is True
    assert out["node_cost"] == [True, True]
    assert out["workers_after"] == 0  # back to zero worker nodes
    assert out["stats_after"] == {"replicas": 0, "waiting_for_node": 0}
    assert out["history"][0] == 1 and max(out["history"]) >= 2 and out["history"][-1] == 1
    assert "node_timeout=2 s" in out["node_timeout"] and "cpus=1" in out["node_timeout"]
    assert out["after_timeout"] == {"queued": 0, "waiting_for_node": 0}


NODE_DIES = textwrap.dedent(
    """
    import json, os, signal, time
    import ray
    import nbserverless as nbs

    def say(key, value):
        print(key, json.dumps(value), flush=True)

    def raylet_pid(node_id):
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    args = f.read().split(b"\\0")
            except OSError:
                continue
            if args[0].endswith(b"raylet") and f"--node_id={node_id}".encode() in args:
                return int(pid)
        return None

    nbs.connect()
    nbs.config(keep_alive=1)
    head = next(n["NodeID"] for n in ray.nodes() if "node:__internal_head__" in n["Resources"])

    @nbs.remote(cpus=1, max_replicas=2, retries=3)
    def item(i):
        time.sleep(0.05)
        return i, ray.get_runtime_context().get_node_id()

    N = 2000
    results, nodes, killed, before = [], [], None, []
    for i, node in item.map(range(N), progress=False):
        results.append(i)
        if node not in nodes:
            nodes.append(node)
        if killed is None and len(nodes) >= 2 and len(results) >= 100:
            victim = nodes[-1]  # a worker node running part of the map now
            pid = raylet_pid(victim)
            if pid is not None and victim != head:
                os.kill(pid, signal.SIGKILL)  # the node dies mid-map
                killed, before = victim, list(nodes)
    say("killed", killed is not None)
    say("nodes", len(nodes))
    # the autoscaler replaced the dead node: a node that was not there before the kill ran
    # part of the map
    say("replaced", any(n not in before for n in nodes))
    say("exactly_once", results == list(range(N)))
    s = item.stats()
    say("retries", s["retries"])
    say("counts", {k: s[k] for k in ("in_flight", "queued", "waiting_for_node")})
    nbs.shutdown()
    """
)


@pytest.mark.timeout(900)
def test_a_node_dies_mid_map_and_every_result_arrives_once():
    # a 2,000-item map across two worker nodes; one node's raylet is SIGKILLed midway: the
    # calls on it run again elsewhere (retries), every item returns its own index once, and
    # the autoscaler brings up a node in its place that takes part of the rest
    # the autoscaler gives up on a node that sent no heartbeat for 10 s (Ray's default is 30 s,
    # longer than the rest of the map when the machine is loaded)
    with AutoscalingCluster(extra_env={"AUTOSCALER_HEARTBEAT_TIMEOUT_S": "10"}) as c:
        out = _run_driver(c, NODE_DIES, timeout=800)
    assert out["killed"] is True and out["nodes"] >= 2, out
    assert out["exactly_once"] is True
    assert out["retries"] >= 1  # the calls that were on the dead node ran again
    assert out["replaced"] is True, out
    assert out["counts"] == {"in_flight": 0, "queued": 0, "waiting_for_node": 0}
