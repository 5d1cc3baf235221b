"""The warm stock: ``nbs.config(prewarm=N)`` generic replica processes waiting on the cluster.

Each is a :class:`~nbserverless.worker.warm.WarmReplica` actor (``num_cpus=0``,
``max_concurrency=1``, no restarts). Until a pool claims one it belongs to no function: its time
is billed only to ``METER.platform``, it holds no CPU, and it may import the module *names* the
kernel has imported (``nbs.config(warm_imports=False)`` turns that off); no environment variable
of the kernel is sent. A pool whose options it fits (:func:`eligible`) claims one for a new
replica slot instead of starting an actor; from then on it is that pool's replica
(core/replicas.py). The loop's hook refills the stock in the background.

Example::

    host = STOCK.claim()          # None when none is warm
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from typing import Any

import ray

from .. import settings
from ..metering.meter import METER
from ..options import Options
from ..worker.warm import WarmReplica
from .completions import on_ready as _on_ready
from .loop import SUPERVISOR, registry

REFILL_AFTER_S = 1.0  # after connecting, leave the first calls the whole machine
#: packages of the kernel itself, of Ray and of tests: never worth importing in a warm replica
# fmt: off
KERNEL_ONLY = frozenset({
    "IPython", "ipykernel", "ipywidgets", "ipyparallel", "jupyter_client", "jupyter_core",
    "jupyter_server", "jupyterlab", "notebook", "nbclient", "nbformat", "zmq", "tornado",
    "traitlets", "comm", "debugpy", "prompt_toolkit", "jedi", "parso", "pygments", "pexpect",
    "ptyprocess", "matplotlib_inline", "nest_asyncio", "ray", "nbserverless", "pytest",
    "_pytest", "pluggy", "pip", "setuptools", "pkg_resources", "playwright", "hypothesis",
})
# fmt: on

WarmActor = ray.remote(WarmReplica)


def kernel_imports() -> list[str]:
    """Top-level third-party package names this process has imported (for warm imports)."""
    stdlib = getattr(sys, "stdlib_module_names", frozenset())
    names = []
    for name, module in sys.modules.copy().items():  # copy(): atomic while others import
        if "." in name or name.startswith("_") or name in stdlib or name in KERNEL_ONLY:
            continue
        path = getattr(module, "__file__", None) or ""
        if "site-packages" in path or "dist-packages" in path:
            names.append(name)
    return sorted(names)


def eligible(options: Options) -> bool:
    """Whether a pool may claim warm replicas: one call at a time (the warm process has
    ``max_concurrency=1``), no GPUs, no ``pip=`` (its runtime env is the default; ``env=`` is
    applied at the claim)."""
    return options.concurrency == 1 and not options.gpus and not options.pip


class WarmHost:
    """The kernel's view of one warm replica."""

    __slots__ = ("hid", "actor", "ready", "node", "pid", "warmed", "warming")

    def __init__(self, hid: str, actor: Any):
        self.hid = hid
        self.actor = actor
        self.ready = False  # its process runs (ping answered)
        self.node = ""
        self.pid = 0
        self.warmed: set[str] = set()  # module names sent to it
        self.warming = 0  # warm-ups sent and not yet done


class _Stock:
    """The unclaimed warm replicas of this kernel."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.warm: list[WarmHost] = []
        self.ids = itertools.count(1)
        self.connected_since: float | None = None
        self.n_modules = 0

    def refill(self, now: float) -> None:
        """Keep ``prewarm`` unclaimed warm replicas (the loop's hook, on the loop thread)."""
        if not ray.is_initialized():
            self.connected_since = None
            return
        if self.connected_since is None:
            self.connected_since = now
        if now - self.connected_since < REFILL_AFTER_S:
            return
        if len(sys.modules) != self.n_modules:
            self.n_modules = len(sys.modules)
            self.warm_all()
        want = settings.get("prewarm") or 0
        if len(self.warm) < want and any(getattr(p, "queue", None) for p in registry.all()):
            return  # work is waiting: it gets the machine before new warm processes do
        with self.lock:
            extra = self.warm[want:]
            del self.warm[want:]
            new = [WarmHost(f"warm-{next(self.ids)}", None) for _ in range(want - len(self.warm))]
            self.warm.extend(new)
        for host in new:  # actor creation: outside every lock
            host.actor = WarmActor.options(
                num_cpus=0, max_concurrency=1, max_restarts=0, max_task_retries=0
            ).remote(host.hid)
            _on_ready(host.actor.ping.remote(), _placed, host)
        for host in extra:
            retire(host)

    def warm_all(self, host: WarmHost | None = None) -> None:
        """Send the kernel's imported module names (names only) to warm replicas."""
        if not settings.get("warm_imports"):
            return
        modules = kernel_imports()
        with self.lock:
            hosts = [host] if host is not None else [h for h in self.warm if h.ready]
        for h in hosts:
            new = [m for m in modules if m not in h.warmed]
            if new:
                h.warmed.update(new)
                with self.lock:
                    h.warming += 1
                _on_ready(h.actor.warm.remote(new), _warmed, h)

    def available(self) -> int:
        """Warm replicas ready to be claimed."""
        with self.lock:
            return sum(1 for h in self.warm if h.ready)

    def claim(self) -> WarmHost | None:
        """Take one ready warm replica out of the stock (no Ray call): one done importing
        first. Its platform billing stops here; the pool bills it from its reservation."""
        with self.lock:
            ready = [h for h in self.warm if h.ready]
            if not ready:
                return None
            host = min(ready, key=lambda h: h.warming)
            self.warm.remove(host)
        METER.platform.replica_stopped(host.hid, time.time())
        return host

    def settled(self) -> bool:
        """``prewarm`` warm replicas ready and done importing (benchmarks wait for it)."""
        with self.lock:
            hosts = [h for h in self.warm if h.ready]
            return len(hosts) >= (settings.get("prewarm") or 0) and not any(
                h.warming for h in hosts
            )

    def clear(self) -> None:
        """Remove every unclaimed warm replica (shutdown)."""
        with self.lock:
            hosts, self.warm = self.warm, []
            self.connected_since = None
        for host in hosts:
            retire(host)


STOCK = _Stock()
SUPERVISOR.hooks.append(STOCK.refill)
METER.platform.set_resources(cpus=0)  # a warm replica reserves no CPUs


def _placed(host: WarmHost, fut: Any) -> None:
    try:
        info = fut.result()
    except Exception:
        with STOCK.lock:
            if host in STOCK.warm:
                STOCK.warm.remove(host)
        return
    with STOCK.lock:
        if host not in STOCK.warm:
            return
        host.ready = True
        host.node, host.pid = info.get("node", ""), info.get("pid", 0)
    METER.platform.replica_started(host.hid, info["t_start"])
    STOCK.warm_all(host)


def _warmed(host: WarmHost, fut: Any) -> None:
    with STOCK.lock:
        host.warming = max(0, host.warming - 1)


def retire(host: WarmHost) -> None:
    """Remove an unclaimed warm replica."""
    with STOCK.lock:
        was_ready, host.ready = host.ready, False
    if was_ready:
        METER.platform.replica_stopped(host.hid, time.time())
    try:
        ray.kill(host.actor, no_restart=True)
    except Exception:
        pass
