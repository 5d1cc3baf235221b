"""The snapshot the kernel sends the lab panel (DESIGN.md "Comm message schema"), built
without a kernel: its fields, nothing else leaving the kernel, JSON-safe values. The comm that
sends it is tested in test_comm.py against a real kernel.
"""

from __future__ import annotations

import json
import math
import time

from nbserverless.notebook import snapshot


def test_schema_v2_cluster_nodes_and_no_secrets():
    now = time.time()
    history = [[now - 200 + i, i % 4] for i in range(100)]
    summary = {
        "address": "ray://head:10001", "nodes": 3, "cpus": 8.0, "cpus_used": 2.0, "gpus": 1.0,
        "gpus_used": 0.0, "worker_nodes": 2, "nodes_pending": 1, "nodes_peak": 4,
        "autoscaling": True, "node_cost": 0.0123, "node_cost_always_on": float("inf"),
        "node_history": history + [[now, float("nan")], "bad"],
        "token": "s3cret-token", "auth": {"token": "s3cret-token"},
    }  # fmt: skip
    snap = snapshot.build_snapshot(now=now, cluster=summary)
    c = snap["cluster"]
    assert snap["version"] == snapshot.SCHEMA_VERSION == 2
    assert set(c) == {*snapshot.CLUSTER_FIELDS, "node_history"}
    assert (c["worker_nodes"], c["nodes_pending"], c["nodes_peak"], c["autoscaling"]) == (
        2, 1, 4, True,
    )  # fmt: skip
    assert c["node_cost"] == 0.0123 and c["node_cost_always_on"] is None  # inf is not JSON
    assert c["node_history"] == history[-snapshot.NODE_HISTORY_POINTS :]
    assert c["address"] == "ray://head:10001"
    assert "s3cret" not in json.dumps(snap, allow_nan=False)
    # an old-style summary still gives every field (None where unknown)
    old = snapshot.build_snapshot(cluster={"address": "local", "nodes": 1})["cluster"]
    assert old["nodes_peak"] is None and old["node_history"] == []


def test_schema_v2_function_rows_carry_the_wait_and_the_keep_alive():
    from nbserverless.metering.meter import METER

    METER.reset()
    fm = METER.function("v2row", name="v2row")
    fm.keep_alive_label = "keep-alive 60 s (fixed, learning 3/10)"
    fm.submitted()
    fm.waiting_for_node, fm.waiting_for_node_s = 1, 4.25
    try:
        (f,) = [f for f in snapshot.build_snapshot(cluster={})["functions"] if f["name"] == "v2row"]
        assert (f["waiting_for_node"], f["waiting_for_node_s"]) == (1, 4.25)
        assert f["keep_alive"] == "keep-alive 60 s (fixed, learning 3/10)"
        before = snapshot.meter_version()
        fm.waiting_for_node_s = 5.5  # a new whole second: the sender must notice
        assert snapshot.meter_version() != before
    finally:
        METER.reset()


def test_json_safe_values():
    d = snapshot.clean_dict(
        {"p50_ms": float("nan"), "cost": float("inf"), "n": 3, "x": [1], "name": "f", 3: 4}
    )
    assert d == {"p50_ms": None, "cost": None, "n": 3, "name": "f"}
    snap = snapshot.build_snapshot()
    text = json.dumps(snap, allow_nan=False)
    assert json.loads(text)["type"] == "snapshot"
    assert not math.isnan(snap["time"])
