"""The cluster's autoscaler as a client sees it: its worker node types, whether it exists,
nodes it is launching, and what nodes cost over time.

Node types come from the autoscaler's own config: Ray's monitor on the head node was started
with ``--autoscaling-config`` (the cluster launcher, ``ray start``, the fake provider; v1 and
v2), so a 0-CPU task pinned to the head reads that file. Where no monitor runs on the head
(KubeRay's autoscaler sidecar) they are unknown and autoscaler v2's / v1's status tells
whether an autoscaler exists. Nothing here imports ``cluster`` (which imports this).

Example::

    autoscaler.node_types(address)    # {"cpu_node": {"CPU": 1.0}} / {} / None
    autoscaler.pending_nodes()        # 1
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from typing import Any

log = logging.getLogger("nbserverless")

NODE_TYPES_TTL_S = 300.0  # node types rarely change; reading them runs a task on the head
HISTORY_LEN = 2_000
HEAD_READ_TIMEOUT_S = 60.0
_lock = threading.Lock()
_cache: dict[str | None, tuple[float, dict[str, dict[str, float]] | None]] = {}
_present: dict[str | None, tuple[float, bool]] = {}


def _head_reader() -> Any:
    """The function that runs on the head node. Defined here, inside a function, so that
    cloudpickle ships it by value: the head needs Ray, not nbserverless."""

    def _read_autoscaling_config(gcs_address: str) -> dict[str, Any] | None:
        """On the head node: the config file Ray's monitor for ``gcs_address`` was started
        with (``{}``: a monitor without one; None: no monitor here)."""
        import json
        import os

        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    args = f.read().decode(errors="replace").split("\0")
            except OSError:
                continue
            if not any(a.endswith("monitor.py") for a in args):
                continue
            opts = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
            port = gcs_address.rsplit(":", 1)[-1]
            if opts.get("gcs-address", "").rsplit(":", 1)[-1] != port:
                continue
            path = opts.get("autoscaling-config")
            if not path:
                return {}
            with open(os.path.expanduser(path)) as f:
                text = f.read()
            try:
                return json.loads(text)
            except ValueError:
                import yaml

                return yaml.safe_load(text)
        return None

    return _read_autoscaling_config


def _types_from_config(config: dict[str, Any]) -> dict[str, dict[str, float]]:
    head = config.get("head_node_type")
    out = {}
    for name, spec in (config.get("available_node_types") or {}).items():
        if name == head or not spec.get("max_workers", config.get("max_workers", 0)):
            continue
        out[name] = {k: float(v) for k, v in (spec.get("resources") or {}).items()}
    return out


def _from_head() -> dict[str, dict[str, float]] | None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    head = next(
        (
            n["NodeID"]
            for n in ray.nodes()
            if n.get("Alive") and "node:__internal_head__" in n.get("Resources", {})
        ),
        None,
    )
    if head is None:
        return None
    gcs = ray.get_runtime_context().gcs_address
    task = ray.remote(_head_reader()).options(
        num_cpus=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False),
        max_retries=0,
    )
    config = ray.get(task.remote(gcs), timeout=HEAD_READ_TIMEOUT_S)
    if config is None:
        return None  # no monitor process there (e.g. KubeRay's autoscaler sidecar)
    return _types_from_config(config)


def node_types(address: str | None) -> dict[str, dict[str, float]] | None:
    """Worker node types the autoscaler of the connected cluster may launch, name ->
    resources; ``{}`` when it may launch none (no autoscaler, or a read-only one);
    ``None`` when they cannot be learnt. Cached for 5 min per ``address``."""
    now = time.monotonic()
    with _lock:
        cached = _cache.get(address)
        if cached is not None and now - cached[0] < NODE_TYPES_TTL_S:
            return cached[1]
    types: dict[str, dict[str, float]] | None = None
    try:
        types = _from_head()
    except Exception as exc:  # unknown: a request waits (bounded by node_timeout)
        log.debug("autoscaler node types unknown: %s", exc)
    with _lock:
        _cache[address] = (now, types)
    return types


def present(address: str | None) -> bool:
    """Whether an autoscaler can add worker nodes: its config has worker node types, or
    (config unknown) autoscaler v2 or v1 reports state."""
    types = node_types(address)
    if types is not None:
        return bool(types)
    now = time.monotonic()
    with _lock:
        cached = _present.get(address)
        if cached is not None and now - cached[0] < NODE_TYPES_TTL_S:
            return cached[1]
    found = v2_status() is not None or bool(v1_status().get("autoscaler_report"))
    with _lock:
        _present[address] = (now, found)
    return found


def v1_status() -> dict[str, Any]:
    """What autoscaler v1 last wrote to the GCS (``ray status`` reads it), or ``{}``."""
    try:
        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        return json.loads(raw) if raw else {}
    except Exception:
        return {}


def v2_status() -> Any:
    """Autoscaler v2's cluster status, or None (v1, no autoscaler, or unreachable)."""
    try:
        import ray
        from ray.autoscaler.v2.sdk import get_cluster_status

        return get_cluster_status(ray.get_runtime_context().gcs_address, timeout=5)
    except Exception:
        return None


def pending_nodes() -> int:
    """Worker nodes the autoscaler is launching now (v2's status, else v1's report)."""
    status = v2_status()
    if status is not None:
        return len(getattr(status, "pending_launches", []) or []) + len(
            getattr(status, "pending_nodes", []) or []
        )
    report = v1_status().get("autoscaler_report") or {}
    return sum((report.get("pending_launches") or {}).values()) + len(
        report.get("pending_nodes") or []
    )


def node_rate(resources: dict[str, float]) -> float:
    """USD per second one node with these Ray resources costs at the price table (its CPUs,
    GPUs and memory, as a replica of that size). Example: ``node_rate({"CPU": 4})``."""
    from ..metering import pricing

    memory = resources.get("memory")
    return pricing.current().replica_rate(
        cpus=float(resources.get("CPU", 0.0)),
        gpus=float(resources.get("GPU", 0.0)),
        memory=int(memory) if memory else None,
    )


class NodeLedger:
    """Alive nodes over time: count history, peak, and node cost (node-seconds at the price
    table) beside its always-on equivalent (the peak set of nodes kept up all along)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.history: deque[tuple[float, int]] = deque(maxlen=HISTORY_LEN)
        self.peak = 0
        self.cost = 0.0
        self.peak_rate = 0.0
        self.since: float | None = None
        self.last: float | None = None
        self.last_rate = 0.0

    def observe(self, now: float, nodes: list[dict[str, float]]) -> None:
        rate = sum(node_rate(n) for n in nodes)
        if self.last is not None:
            self.cost += self.last_rate * max(0.0, now - self.last)
        if self.since is None:
            self.since = now
        if not self.history or self.history[-1][1] != len(nodes):
            self.history.append((time.time(), len(nodes)))
        self.peak = max(self.peak, len(nodes))
        self.peak_rate = max(self.peak_rate, rate)
        self.last, self.last_rate = now, rate

    def always_on(self, now: float) -> float:
        return 0.0 if self.since is None else self.peak_rate * (now - self.since)


NODES = NodeLedger()


def forget() -> None:
    """Drop what was learnt (disconnect)."""
    with _lock:
        _cache.clear()
        _present.clear()
    NODES.reset()
