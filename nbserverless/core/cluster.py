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

log = logging.getLogger("nbserverless")

ADDRESS_ENV_VARS = ("NBSERVERLESS_ADDRESS", "RAY_ADDRESS")
CONNECT_TIMEOUT_S = 180.0
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

    if token:
        os.environ["RAY_AUTH_TOKEN"] = token  # read by Ray; never printed
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
    if address is None:
        # A new local cluster, never an existing one that happens to run on this machine.
        kwargs["address"] = "local"
        temp_dir = temp_dir or os.environ.get("NBSERVERLESS_TEMP_DIR") or None
        if temp_dir:
            kwargs["_temp_dir"] = temp_dir
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
    else:
        kwargs["address"] = address
        kwargs.pop("include_dashboard")
    _quiet_raylet_messages()
    ray.init(**kwargs)
    if address is None:  # our own cluster: nothing of it may outlive this kernel
        from ..worker import watchdog

        watchdog.start_reaper(ray._private.worker._global_node.get_session_dir_path())
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
        return _state["address"]


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
    except BaseException as exc:  # reported at the first call that needs the cluster
        _state["error"] = exc
        _state["thread"] = None
        _state["ready"].set()
        return
    _state["ready"].set()
    _state["stop"].wait()


def wait_connected(timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Wait (bounded) for a background connect started by ``%load_ext`` to finish."""
    if _state["thread"] is not None and not _state["ready"].wait(timeout):
        raise TimeoutError(
            f"the cluster did not come up within {timeout:.0f} s; check `ray status` "
            "or connect to an existing cluster with nbs.connect(address)"
        )
    err = _state["error"]
    if err is not None:
        _state["error"] = None
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


def can_autoscale() -> bool:
    """Whether an autoscaler could add nodes (never for the embedded cluster)."""
    if is_embedded():
        return False
    try:
        from ray._private.state import state as gcs_state  # GCS's autoscaler config, if any

        config = gcs_state.get_cluster_config()
        if config is None:
            return False
        return any(getattr(t, "max_count", 0) > 0 for t in config.node_group_configs)
    except Exception:
        # Unknown: an external cluster may have an autoscaler; wait rather than fail.
        return True


def summary() -> dict[str, Any]:
    """Nodes and CPUs/GPUs in use, cached for about a second. Safe from any thread.

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
    }
    if _ray_initialized():
        import ray

        try:
            total = ray.cluster_resources()
            avail = ray.available_resources()
            out["nodes"] = sum(1 for n in ray.nodes() if n.get("Alive"))
            out["cpus"] = float(total.get("CPU", 0.0))
            out["cpus_used"] = round(out["cpus"] - float(avail.get("CPU", 0.0)), 4)
            out["gpus"] = float(total.get("GPU", 0.0))
            out["gpus_used"] = round(out["gpus"] - float(avail.get("GPU", 0.0)), 4)
        except Exception as exc:  # a summary must never break a view
            log.debug("cluster summary failed: %s", exc)
    _state["summary"], _state["summary_at"] = out, now
    return dict(out)
