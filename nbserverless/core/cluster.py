"""The one place that talks to ``ray.init``: the embedded local cluster, or an existing one.

Example::

    import nbserverless as nbs
    nbs.connect()                    # embedded local cluster owned by this kernel
    nbs.connect("auto")              # or "ray://head:10001", "host:6379"
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

from . import auth, autoscaler, startup
from .startup import ClusterStartError

log = logging.getLogger("nbserverless")

ADDRESS_ENV_VARS = ("NBSERVERLESS_ADDRESS", "RAY_ADDRESS")
CONNECT_TIMEOUT_S = 420.0  # two patient start attempts of the embedded cluster
NOTICE_AFTER_S = 0.5  # a background start still running after this: say so in the cell
SUMMARY_TTL_S = 1.0
GCS_PATIENCE_ENV = {
    "RAY_gcs_rpc_server_reconnect_timeout_s": "300",
    "RAY_gcs_rpc_server_connect_timeout_s": "60",
}


_lock = threading.RLock()
_state: dict[str, Any] = {
    "address": None,  # "local" for the embedded cluster, else what was given
    "embedded": False,
    "thread": None,  # background connect in flight
    "error": None,  # exception of a failed background connect
    "summary": None,
    "summary_at": 0.0,
    "ready": threading.Event(),  # a background connect finished (or failed)
    "stop": threading.Event(),  # lets the background connect thread end (disconnect)
}


def _configured_address() -> str | None:
    for var in ADDRESS_ENV_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return value
    return None


def _ray_initialized() -> bool:
    """``ray.is_initialized()``, without importing Ray (a second of CPU) if nothing has yet:
    ``%load_ext`` leaves that import to the background connect."""
    if "ray" not in sys.modules:
        return False
    import ray  # waits for an import in progress in another thread

    return ray.is_initialized()


def _init(
    address: str | None, token: str | None, temp_dir: str | None, num_cpus: float | None = None
) -> None:
    import ray

    # On a loaded machine Ray's GCS can take over a minute to answer; Ray's default is then
    # to abort the whole process (the kernel). Wait longer instead.
    for var, seconds in GCS_PATIENCE_ENV.items():
        os.environ.setdefault(var, seconds)
    kwargs: dict[str, Any] = {
        "log_to_driver": False,  # replicas' output is routed to the calling cell instead
        "logging_level": logging.ERROR,
        "include_dashboard": False,
        "ignore_reinit_error": True,
    }
    _quiet_raylet_messages()
    if address is None:
        # A new local cluster, never an existing one that happens to run on this machine.
        kwargs["address"] = "local"
        temp_dir = temp_dir or os.environ.get("NBSERVERLESS_TEMP_DIR") or None
        if temp_dir:
            kwargs["_temp_dir"] = temp_dir
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        startup.start_embedded(kwargs)
        # our own cluster: nothing of it may outlive this kernel
        from ..worker import watchdog

        watchdog.start_reaper(ray._private.worker._global_node.get_session_dir_path())
    else:
        kwargs["address"] = address
        kwargs.pop("include_dashboard")
        auth.connect(lambda: ray.init(**kwargs), address, token)
    # Ray's own loggers stay out of the notebook.
    for name in ("ray", "ray._private", "ray.runtime_env"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _quiet_raylet_messages() -> None:
    """Ray's driver prints the raylet's error messages (e.g. "A worker died...") into
    whatever cell runs at that moment. The pool reports such failures on the call they
    affect, so these go to our logger instead (``logging.getLogger("nbserverless")``)."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        return
    if getattr(ray_worker.print_to_stdstream, "_nbs_quiet", False):
        return

    def to_log(data: dict, ignore_prefix: bool = False) -> None:
        for line in data.get("lines", []):
            log.info("ray %s: %s", data.get("pid", "?"), line)

    to_log._nbs_quiet = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = to_log


def connect(
    address: str | None = None,
    *,
    token: str | None = None,
    temp_dir: str | None = None,
    num_cpus: float | None = None,
    background: bool = False,
) -> str:
    """Connect to a cluster and return its address (``"local"`` for the embedded one).

    With no address, ``NBSERVERLESS_ADDRESS`` or ``RAY_ADDRESS`` is used if set; otherwise a
    local cluster owned by this process starts. ``token`` is passed to Ray's token
    authentication; ``temp_dir`` and ``num_cpus`` shape an embedded cluster.
    Example: ``nbs.connect("ray://head:10001")``.
    """
    with _lock:
        if address is None:
            address = _configured_address()
        if _ray_initialized():
            current = _state["address"]
            wanted = "local" if address is None else address
            if current is None or wanted == current or address is None:
                _state["address"] = current or wanted
                return _state["address"]
            raise RuntimeError(
                f"already connected to {current!r}; call nbs.shutdown() before connecting "
                f"to {address!r}"
            )
        if background:
            if _state["thread"] is None:
                t = threading.Thread(
                    target=_background_connect,
                    args=(address, token, temp_dir),
                    name="nbserverless-connect",
                    daemon=True,
                )
                _state["thread"] = t
                _state["want"] = address
                _state["error"] = None
                _state["ready"] = threading.Event()
                _state["stop"] = threading.Event()
                t.start()
            return "local" if address is None else address
    wait_connected()
    if _ray_initialized():
        return _state["address"] or "local"
    with _lock:
        _init(address, token, temp_dir, num_cpus)
        _state["address"] = "local" if address is None else address
        _state["embedded"] = address is None
    _after_connect()
    return _state["address"]


def _after_connect() -> None:
    """On a cluster whose autoscaler adds nodes, warm stand-ins would keep a node up (or
    launch one) for nobody: ``prewarm`` drops to 0 unless the user set it. Its nodes are
    counted from here on, so ``node_history`` starts with the nodes found at connect."""
    if _state["embedded"] or not _ray_initialized():
        return
    from .. import settings

    if not autoscaling():
        return
    summary()
    if settings.get("prewarm") == settings.DEFAULTS["prewarm"]:
        settings.update(prewarm=0)
        _state["prewarm_auto"] = True
        log.info("an autoscaler manages this cluster's nodes: prewarm=0 (no warm stand-ins)")


def _background_connect(address: str | None, token: str | None, temp_dir: str | None) -> None:
    # Ray starts the embedded cluster's daemons with PR_SET_PDEATHSIG, which fires when the
    # *thread* that started them exits: this thread stays alive until disconnect().
    try:
        # Imported before waiting for the lock, so that a kernel thread needing Ray waits for
        # this import rather than doing it itself.
        import ray  # noqa: F401

        with _lock:
            if not _ray_initialized():
                _init(address, token, temp_dir)
                _state["address"] = "local" if address is None else address
                _state["embedded"] = address is None
        _after_connect()
    except BaseException as exc:  # reported at the first call that needs the cluster
        _state["error"] = exc
        _state["thread"] = None
        _state["ready"].set()
        return
    _state["ready"].set()
    _state["stop"].wait()


def wait_connected(timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Wait (bounded) for a background connect started by ``%load_ext`` to finish. In a
    notebook the cell says "starting the local cluster…" while it waits."""
    ready = _state["ready"]
    if _state["thread"] is not None and not ready.wait(NOTICE_AFTER_S):
        notice = startup.starting_notice(
            "the local cluster" if _state.get("want") is None else "the cluster"
        )
        try:
            done = ready.wait(timeout)
        finally:
            if notice is not None:
                notice.update(startup.Line(""))
        if not done:
            raise TimeoutError(
                f"the cluster did not come up within {timeout:.0f} s; check `ray status` "
                "or connect to an existing cluster with nbs.connect(address)"
            )
    err = _state["error"]
    if err is not None:
        _state["error"] = None
        if isinstance(err, (ClusterStartError, auth.AuthenticationError)):
            raise type(err)(str(err)) from None  # one paragraph, not Ray's internals
        raise RuntimeError(f"could not connect to the cluster: {err}") from err


def ensure_connected() -> None:
    """Connect on first use (the implicit ``nbs.connect()``)."""
    if _ray_initialized() and (_state["thread"] is None or _state["ready"].is_set()):
        return
    wait_connected()
    if not _ray_initialized():
        connect()


def address() -> str | None:
    """The address this kernel is connected to, ``"local"`` for the embedded cluster."""
    return _state["address"] if _ray_initialized() else None


def is_embedded() -> bool:
    return bool(_state["embedded"]) and _ray_initialized()


def disconnect() -> None:
    """Disconnect; the embedded cluster stops with it."""
    wait_connected()
    with _lock:
        if _ray_initialized():
            import ray

            ray.shutdown()
        _state.update(address=None, embedded=False, summary=None, summary_at=0.0, nodes=None)
        autoscaler.forget()
        if _state.pop("prewarm_auto", False):  # this connect turned prewarm off: undo it
            from .. import settings

            if settings.get("prewarm") == 0:
                settings.update(prewarm=settings.DEFAULTS["prewarm"])
        _state["stop"].set()
        _state["thread"] = None


def node_resources(max_age_s: float = 5.0) -> list[dict[str, float]]:
    """Total resources of each alive node (cached for ``max_age_s``)."""
    import ray

    now = time.monotonic()
    cached = _state.get("nodes")
    if cached is not None and now - _state.get("nodes_at", 0.0) < max_age_s:
        return cached
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    _state["nodes"], _state["nodes_at"] = nodes, now
    return nodes


def node_types() -> dict[str, dict[str, float]] | None:
    """Worker node types the cluster's autoscaler may launch, name -> resources; ``{}`` when
    it may launch none (or the cluster is the embedded one); ``None`` when they cannot be
    learnt. Cached for 5 min. Example: ``{"cpu_node": {"CPU": 1.0}}``."""
    if not _ray_initialized() or is_embedded():
        return {}
    return autoscaler.node_types(address())


def autoscaling() -> bool:
    """Whether an autoscaler can add worker nodes to this cluster (never the embedded one)."""
    if not _ray_initialized() or is_embedded():
        return False
    return autoscaler.present(address())


def summary() -> dict[str, Any]:
    """Nodes and CPUs/GPUs in use, cached for about a second. Safe from any thread.

    Besides CPUs and GPUs: ``nodes`` alive now (head included), ``worker_nodes``,
    ``nodes_pending`` (being launched by the autoscaler), ``nodes_peak``, ``node_history``
    (``[[unix time, nodes], ...]`` at each change), ``autoscaling``, ``node_cost`` (USD: each
    node's seconds at the price table) and ``node_cost_always_on`` (the peak kept up).
    Example: ``{"address": "local", "nodes": 1, "cpus": 2.0, "cpus_used": 1.0, ...}``
    """
    now = time.monotonic()
    cached = _state["summary"]
    if cached is not None and now - _state["summary_at"] < SUMMARY_TTL_S:
        return dict(cached)
    out: dict[str, Any] = {
        "address": address() or "not connected",
        "nodes": 0,
        "cpus": 0.0,
        "cpus_used": 0.0,
        "gpus": 0.0,
        "gpus_used": 0.0,
        "worker_nodes": 0,
        "nodes_pending": 0,
        "nodes_peak": 0,
        "node_history": [],
        "autoscaling": False,
        "node_cost": 0.0,
        "node_cost_always_on": 0.0,
    }
    if _ray_initialized():
        import ray

        try:
            total = ray.cluster_resources()
            avail = ray.available_resources()
            alive = [n for n in ray.nodes() if n.get("Alive")]
            out["nodes"] = len(alive)
            out["worker_nodes"] = sum(
                1 for n in alive if "node:__internal_head__" not in n.get("Resources", {})
            )
            out["cpus"] = float(total.get("CPU", 0.0))
            out["cpus_used"] = round(out["cpus"] - float(avail.get("CPU", 0.0)), 4)
            out["gpus"] = float(total.get("GPU", 0.0))
            out["gpus_used"] = round(out["gpus"] - float(avail.get("GPU", 0.0)), 4)
            autoscaler.NODES.observe(now, [n.get("Resources", {}) for n in alive])
            out["autoscaling"] = autoscaling()
            out["nodes_pending"] = autoscaler.pending_nodes() if out["autoscaling"] else 0
        except Exception as exc:  # a summary must never break a view
            log.debug("cluster summary failed: %s", exc)
        out["nodes_peak"] = autoscaler.NODES.peak
        out["node_history"] = [[t, n] for t, n in autoscaler.NODES.history]
        out["node_cost"] = autoscaler.NODES.cost
        out["node_cost_always_on"] = autoscaler.NODES.always_on(now)
    _state["summary"], _state["summary_at"] = out, now
    return dict(out)
