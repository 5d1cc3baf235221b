"""Starting the embedded cluster on a busy machine, and saying so in the cell.

Ray starts its daemons (GCS, raylet, the raylet's agents) with fixed waits that a loaded
laptop overruns: the driver waits 30 s for the new node to register, the raylet for its
agents' ports. ``patient_start`` raises them (Ray's own settings where there are some),
``start_embedded`` retries once, and a second failure is one paragraph (``ClusterStartError``)
naming the cause and what to do. ``starting_notice`` puts "starting the local cluster…" in
the running cell while the first remote call waits for the background start.

Example::

    start_embedded({"address": "local"})   # ray.init, patiently, at most twice
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("nbserverless")

#: Ray's own start-up waits, raised for a loaded laptop (load ~10 on 2 cores): the raylet's
#: wait for its agents' ports (metrics agent), their registration, the first workers'.
SLOW_START_ENV = {
    "RAY_raylet_start_wait_time_s": "180",
    "RAY_agent_register_timeout_ms": "180000",
    "RAY_worker_register_timeout_seconds": "180",
}
#: Ray runs its workers at nice 15 (so its daemons keep up), but a worker process only lowers
#: its priority once ``import ray`` is done: while a burst starts new replica processes, their
#: imports (1-2 s of CPU each) run at nice 0 and starve the replicas already running calls, so
#: no new replica answers before every start is done. On the embedded cluster (one machine,
#: the kernel's own) workers keep the priority they start with.
EMBEDDED_SYSTEM_CONFIG = {"worker_niceness": 0}
START_PATIENCE_S = 180.0  # Ray's driver waits a fixed 30 s for the new node to register
START_ATTEMPTS = 2


class ClusterStartError(RuntimeError):
    """The embedded local cluster could not start (twice); the message says why and what to do."""


def patient_start() -> None:
    """Make Ray's driver wait up to ``START_PATIENCE_S`` (not a fixed 30 s) for a node it
    starts to register, and raise Ray's start-up waits (``SLOW_START_ENV``) for the daemons
    it starts: a loaded machine starts Ray's daemons slowly, not wrongly."""
    for var, value in SLOW_START_ENV.items():
        os.environ.setdefault(var, value)
    try:
        from ray._private import services
    except ImportError:
        return
    original = services.get_node
    if getattr(original, "_nbs_patient", False):
        return

    def get_node(gcs_address: str, node_id: str) -> Any:
        deadline = time.monotonic() + START_PATIENCE_S
        while True:
            try:
                return original(gcs_address, node_id)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    get_node._nbs_patient = True  # type: ignore[attr-defined]
    services.get_node = get_node


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def light_agents() -> Iterator[None]:
    """While Ray starts a local node from this process. Ray 2.60's raylet waits a fixed
    15 s for each port its dashboard agent reports in a file, and dies when a loaded machine
    makes the agent slower ("Timed out waiting for file .../metrics_agent_port_..."). The
    embedded cluster has no dashboard, so its agent runs minimal (Ray's own mode for installs
    without the dashboard's packages: no metrics export, no HTTP server), and the ports that
    mode reports (-1, "not in use") are written before the raylet starts; the runtime-env
    agent's port is chosen up front, as ``ray start --runtime-env-agent-port`` does."""
    try:
        import inspect

        from ray import _raylet
        from ray._private import services, utils
        from ray._private.parameter import RayParams
    except ImportError:
        yield
        return
    original_init, original_dep = RayParams.__init__, utils.get_dashboard_dependency_error
    original_raylet = services.start_raylet
    signature = inspect.signature(original_raylet)

    def start_raylet(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind_partial(*args, **kwargs).arguments
        for name in (
            _raylet.METRICS_AGENT_PORT_NAME,
            _raylet.METRICS_EXPORT_PORT_NAME,
            _raylet.DASHBOARD_AGENT_LISTEN_PORT_NAME,
        ):
            _raylet.persist_port(bound["session_dir"], bound["node_id"], name, -1)
        return original_raylet(*args, **kwargs)

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        if not getattr(self, "runtime_env_agent_port", 1):
            self.runtime_env_agent_port = _free_port()

    RayParams.__init__ = init  # type: ignore[method-assign]
    utils.get_dashboard_dependency_error = lambda: "the embedded cluster runs no dashboard"
    services.start_raylet = start_raylet
    try:
        yield
    finally:
        RayParams.__init__ = original_init  # type: ignore[method-assign]
        utils.get_dashboard_dependency_error = original_dep
        services.start_raylet = original_raylet


def start_embedded(kwargs: dict[str, Any]) -> None:
    """``ray.init(**kwargs)`` for a new local cluster: patiently, at most twice; a second
    failure raises ``ClusterStartError`` (one paragraph: the cause and what to do)."""
    import ray

    patient_start()
    kwargs = {
        **kwargs,
        "_system_config": {**EMBEDDED_SYSTEM_CONFIG, **kwargs.get("_system_config", {})},
    }
    for attempt in range(START_ATTEMPTS):
        try:
            with light_agents():
                ray.init(**kwargs)
            return
        except Exception as exc:  # Ray raises plain Exception for a start-up timeout
            try:
                ray.shutdown()  # whatever half started goes before the retry
            except Exception:
                pass
            log.warning("the local cluster did not start (attempt %d): %s", attempt + 1, exc)
            if attempt == START_ATTEMPTS - 1:
                raise ClusterStartError(_start_failure(exc)) from None


def _start_failure(exc: BaseException) -> str:
    cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    try:
        load = f"the load average is {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
    except OSError:
        load = ""
    return (
        f"The local Ray cluster did not start, twice (Ray: {cause[:200]}). Ray's daemons "
        f"(GCS, raylet, agents) did not come up in time: {load}a busy machine starts them "
        "slowly. Close other heavy programs or notebooks and run the cell again, or connect "
        "to a running cluster with nbs.connect(address) (e.g. after `ray start --head`). "
        "Ray's own logs are in its temp dir (NBSERVERLESS_TEMP_DIR, default /tmp/ray)."
    )


class Line:
    """A one-line transient output (plain text in a terminal, a muted line in a notebook)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        return f'<span style="color:#888">{self.text}</span>' if self.text else ""


def starting_notice(what: str = "the local cluster") -> Any:
    """Show "starting the local cluster…" in the running cell (IPython only); returns the
    display handle to clear, or None outside IPython."""
    if "IPython" not in sys.modules:
        return None
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is None:
            return None
        return display(Line(f"starting {what}…"), display_id=True)
    except Exception:
        return None
