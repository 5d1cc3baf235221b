"""Whether a replica's request fits a node now, fits a node the autoscaler can add, or never.

A request that no alive node can hold is *pending* when some node type of the cluster's
autoscaler could hold it (the autoscaler sees the pending replica as demand and adds a node),
and *infeasible* when none can: that fails at once, naming the resource and the node types.
The node types come from the autoscaler's own config (read on the head node, where Ray's
monitor was started with ``--autoscaling-config``: the cluster launcher, ``ray start``, the
fake provider; v1 and v2; see ``autoscaler``). When they cannot be learnt the request
waits. A wait for a node shows as ``waiting_for_node`` in ``stats()`` and is bounded by
``nbs.config(node_timeout=...)`` (default 600 s), then fails saying what to change.

Example::

    capacity.check_feasible("train", options)   # raises InfeasibleError, or returns
    capacity.tick(pool, now)                    # waiting_for_node; node_timeout
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import InfeasibleError
from . import cluster

log = logging.getLogger("nbserverless")


def need(options: Any) -> dict[str, float]:
    """Ray resources one replica asks for. Example: ``{"CPU": 1.0, "GPU": 0.0, "memory": 0}``."""
    return {
        "CPU": float(options.cpus or 0),
        "GPU": float(options.gpus or 0),
        "memory": float(options.memory or 0),
    }


def fits(resources: dict[str, float], request: dict[str, float]) -> bool:
    """Whether a node with ``resources`` can hold ``request`` (memory unknown = fits)."""
    for key, value in request.items():
        if not value:
            continue
        if key == "memory" and "memory" not in resources:
            continue  # node types often leave memory to the machine: not a constraint we know
        if resources.get(key, 0.0) < value - 1e-9:
            return False
    return True


def _describe(resources: dict[str, float]) -> str:
    """``4 CPU/0 GPU/15.5 GiB`` (GiB only where the memory is known)."""
    out = f"{resources.get('CPU', 0):g} CPU/{resources.get('GPU', 0):g} GPU"
    if "memory" in resources:
        out += f"/{resources['memory'] / 2**30:.1f} GiB"
    return out


def _what(options: Any, keys: list[str]) -> str:
    names = {
        "CPU": f"cpus={float(options.cpus or 0):g}",
        "GPU": f"gpus={float(options.gpus or 0):g}",
        "memory": f"memory={float(options.memory or 0) / 2**30:.3g} GiB",
    }
    return ", ".join(names[k] for k in keys) or "this request"


def check_feasible(name: str, options: Any) -> None:
    """Return if a node has (or the autoscaler can add a node with) what one replica of
    ``name`` needs; else raise ``InfeasibleError`` naming the resource and the nodes/types.
    Example: ``check_feasible("f", Options(cpus=64))`` -> ``InfeasibleError: ... cpus=64``."""
    request = need(options)
    nodes = cluster.node_resources()
    if any(fits(n, request) for n in nodes):
        return
    missing = [k for k, v in request.items() if v and not any(fits(n, {k: v}) for n in nodes)]
    have = ", ".join(_describe(n) for n in nodes) or "none"
    if cluster.autoscaling():
        types = cluster.node_types()
        if types is None or any(fits(r, request) for r in types.values()):
            return  # a node can be added: the replica waits for it (node_timeout)
        missing = [
            k for k, v in request.items() if v and not any(fits(r, {k: v}) for r in types.values())
        ]
        kinds = ", ".join(f"{t} ({_describe(r)})" for t, r in types.items()) or "none"
        raise InfeasibleError(
            f"{name}: no node type of this cluster's autoscaler can provide "
            f"{_what(options, missing)} (node types: {kinds}; nodes now: {have}). Ask for "
            "less, or add a node type that has it to the cluster's autoscaling config."
        )
    raise InfeasibleError(
        f"{name}: no node of this cluster can ever provide {_what(options, missing)} "
        f"(nodes: {have}) and no autoscaler can add one. Ask for less, or connect to a "
        "cluster that has it with nbs.connect(address)."
    )


WAIT_AFTER_S = 1.0  # a replica unplaced for longer, with no room on any node: waits for one


class NodeTimeoutError(InfeasibleError):
    """No node came up for a replica within ``node_timeout`` seconds."""


def waiting(pool: Any, now: float) -> tuple[int, float]:
    """``(calls, seconds)`` the pool's queued calls have waited for a node to come up: a
    replica of it waits for placement, no node has room for it, an autoscaler can add one."""
    with pool.lock:
        pending = [r.t_created for r in pool.reps.values() if r.state == "pending"]
        calls = sum(j.n for j in pool.queue)
    if not pending or now - min(pending) < WAIT_AFTER_S or not cluster.autoscaling():
        return 0, 0.0
    request = need(pool.options)
    free = cluster.summary()
    room = {
        "CPU": free["cpus"] - free["cpus_used"],
        "GPU": free["gpus"] - free["gpus_used"],
    }
    if fits(room, {k: v for k, v in request.items() if k != "memory"}):
        return 0, 0.0  # room now: the replica is only starting
    return calls, now - min(pending)


def tick(pool: Any, now: float) -> None:
    """Supervisor work for one pool (called each tick): report ``waiting_for_node`` in its
    stats, and past ``nbs.config(node_timeout=...)`` fail the waiting calls with an error
    that says what to change (and stop the replica starts that wait)."""
    from .. import settings

    calls, seconds = waiting(pool, now)
    pool.meter.waiting_for_node, pool.meter.waiting_for_node_s = calls, seconds
    limit = settings.get("node_timeout")
    if not calls or limit is None or seconds < limit:
        return
    what = _what(pool.options, [k for k, v in need(pool.options).items() if v])
    err = NodeTimeoutError(
        f"{pool.name}: no node with {what} came up "
        f"within node_timeout={limit:g} s (the autoscaler may be at its max_workers, or out "
        "of cloud quota: see `ray status`). Raise it with nbs.config(node_timeout=...), ask "
        "for less, or add nodes."
    )
    with pool._locked():
        for rep in [r for r in pool.reps.values() if r.state == "pending"]:
            pool._stop_locked(rep)
        failed = pool._take_queue_locked()  # settled here, exactly once
    pool.meter.waiting_for_node, pool.meter.waiting_for_node_s = 0, 0.0
    for job in failed:
        pool._report(job, False, err, errors=job.n)
