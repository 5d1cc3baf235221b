"""Cold starts without the wait: while a function's replicas start, its calls run elsewhere.

Stand-ins: ``nbs.config(prewarm=N)`` keeps N generic processes ("stem cells", reserving no
CPUs) waiting on the cluster, shown as platform overhead. While waiting they import the
third-party packages the kernel has imported, as it did (with the environment variables it has
set since connecting), so code that needs torch does not wait for torch ("warm imports",
``nbs.config(warm_imports=False)`` turns them off). A
function's (or class handle's) first call claims one: from then on it serves only that pool,
with the pool's ``env=`` — a function's calls in threads, as many at once as replica slots are
starting; a class's calls on one instance (its ``__init__`` runs there once), ``concurrency``
at once — and it is retired (and replaced by a fresh one) when those replicas are ready.
Scale-up from zero thereby follows the queue at once, not the pace at which the cluster
starts processes and imports packages.

Without a warm stand-in at hand, at most N calls of a function without ``env=`` run as Ray
tasks on the worker processes Ray keeps prestarted, while the function has no ready replica.

Neither reserves CPUs: the replicas being started have already reserved the pool's resources,
and work that waited for them would wait for those very replicas. Their time is billed to the
pool as busy time (meter.borrowed). ``prewarm=0`` is strict scale-from-zero. Pools that ask for
GPUs or ``pip=`` packages never use stand-ins (they need what only their replicas have).

Example::

    host = claim()                       # None when no stand-in is warm
    ref = submit(host, pool_key, spec_ref, job)
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from typing import Any

import ray

from .. import settings
from ..metering.meter import METER
from ..options import Options
from ..worker.warm import StemCell, _run_task
from .completions import on_ready as _on_ready
from .loop import SUPERVISOR
from .output import ROUTER

HOST_THREADS = 64  # stand-in calls at once in one stand-in process
REFILL_AFTER_S = 1.0  # after connecting, leave the first calls the whole machine
#: packages of the kernel itself, of Ray and of tests: never worth importing in a stand-in
# fmt: off
KERNEL_ONLY = frozenset({
    "IPython", "ipykernel", "ipywidgets", "ipyparallel", "jupyter_client", "jupyter_core",
    "jupyter_server", "jupyterlab", "notebook", "nbclient", "nbformat", "zmq", "tornado",
    "traitlets", "comm", "debugpy", "prompt_toolkit", "jedi", "parso", "pygments", "pexpect",
    "ptyprocess", "matplotlib_inline", "nest_asyncio", "ray", "nbserverless", "pytest",
    "_pytest", "pluggy", "pip", "setuptools", "pkg_resources", "playwright",
})
# fmt: on


def kernel_imports() -> list[str]:
    """Top-level third-party packages this process has imported (for warm imports)."""
    stdlib = getattr(sys, "stdlib_module_names", frozenset())
    names = []
    for name, module in list(sys.modules.items()):
        if "." in name or name.startswith("_") or name in stdlib or name in KERNEL_ONLY:
            continue
        path = getattr(module, "__file__", None) or ""
        if "site-packages" in path or "dist-packages" in path:
            names.append(name)
    return sorted(names)


_StemCellActor = ray.remote(StemCell)


class Host:
    """The kernel's view of one stand-in process."""

    __slots__ = ("hid", "actor", "ready", "owner", "warmed", "warming", "reservation")

    def __init__(self, hid: str, actor: Any):
        self.hid = hid
        self.actor = actor
        self.ready = False
        self.owner: str | None = None
        self.warmed: set[str] = set()  # packages and env names sent to it
        self.warming: Any = None  # ObjectRef of the last warm-up sent
        self.reservation: Any = None  # placement group holding a class replica's resources


class _Stock:
    """The warm, unclaimed stand-ins of this kernel."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.warm: list[Host] = []
        self.ids = itertools.count(1)
        self.connected_since: float | None = None
        self.env0: dict[str, str] = {}  # the kernel's environment when it connected
        self.claimed = 0  # stand-ins claimed by a pool and not yet retired
        self.n_modules = 0

    def refill(self, now: float) -> None:
        """Start stand-ins until ``prewarm`` exist, warm or claimed (supervisor tick): a
        claimed one is replaced when it retires, so a pool running on its stand-in does not
        share the machine with the start of the next one."""
        if not ray.is_initialized():
            self.connected_since = None
            return
        if self.connected_since is None:
            self.connected_since = now
            self.env0 = dict(os.environ)
        if now - self.connected_since < REFILL_AFTER_S:
            return
        if len(sys.modules) != self.n_modules:
            self.n_modules = len(sys.modules)
            self.warm_all()
        want = settings.get("prewarm") or 0
        with self.lock:
            keep = max(0, want - self.claimed)
            extra = self.warm[keep:]
            del self.warm[keep:]
            for _ in range(keep - len(self.warm)):
                host = Host(f"stem-{next(self.ids)}", None)
                host.actor = _StemCellActor.options(
                    num_cpus=0, max_concurrency=HOST_THREADS, max_restarts=0
                ).remote()
                self.warm.append(host)
                ref = host.actor.ping.remote()
                _on_ready(ref, _placed, host)
        for host in extra:
            retire(host)

    def warm_all(self, host: Host | None = None) -> None:
        """Send the kernel's imports and new environment variables to warm stand-ins."""
        modules = kernel_imports() if settings.get("warm_imports") else []
        env = {k: v for k, v in os.environ.items() if self.env0.get(k) != v}
        with self.lock:
            hosts = [host] if host is not None else [h for h in self.warm if h.ready]
        for h in hosts:
            new = [m for m in modules if m not in h.warmed]
            fresh = {k: v for k, v in env.items() if f"env:{k}" not in h.warmed}
            if new or fresh:
                h.warmed.update(new, (f"env:{k}" for k in fresh))
                h.warming = h.actor.warm.remote(new, fresh)

    def settled(self) -> bool:
        """``prewarm`` stand-ins warm and done importing (benchmarks wait for it)."""
        with self.lock:
            hosts = [h for h in self.warm if h.ready]
        if len(hosts) < (settings.get("prewarm") or 0):
            return False
        refs = [h.warming for h in hosts if h.warming is not None]
        return not refs or len(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) == len(refs)

    def claim(self, key: str) -> Host | None:
        with self.lock:
            for host in self.warm:
                if host.ready:
                    self.warm.remove(host)
                    host.owner = key
                    self.claimed += 1
                    break
            else:
                return None
        METER.platform.replica_stopped(host.hid, time.time())
        return host

    def clear(self) -> None:
        with self.lock:
            hosts, self.warm = self.warm, []
            self.connected_since = None
            self.claimed = 0
        for host in hosts:
            retire(host)


STOCK = _Stock()
SUPERVISOR.hooks.append(STOCK.refill)
METER.platform.set_resources(cpus=0)  # a stand-in reserves no CPUs


def _placed(host: Host, fut: Any) -> None:
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
    METER.platform.replica_started(host.hid, info["t_start"])
    STOCK.warm_all(host)


def eligible(options: Options) -> bool:
    """Pools without GPUs and without ``pip=`` packages."""
    return not options.gpus and not options.pip


def task_eligible(options: Options, kind: str) -> bool:
    """What may also run on Ray's shared prestarted workers: functions and cells without
    ``env=`` (a class's instance belongs to a process of its own)."""
    return kind in ("function", "cell") and eligible(options) and not options.env


def claim(key: str, slot: Options | None = None) -> Host | None:
    """A warm stand-in for the pool ``key``, now serving only it; None if none is warm. With
    ``slot`` (a class's options) it holds one replica's resources while it serves: a placement
    group reserves them in Ray's scheduler, as the replica it replaces would have."""
    host = STOCK.claim(key)
    if host is not None and slot is not None:
        bundle = {"CPU": slot.cpus, "memory": slot.memory or 0}
        try:
            host.reservation = ray.util.placement_group([{k: v for k, v in bundle.items() if v}])
        except Exception:
            host.reservation = None  # e.g. cpus=0: nothing to hold
    return host


def retire(host: Host) -> None:
    """Remove a stand-in (its function's replicas are ready, or it is stuck or dead)."""
    with STOCK.lock:
        if host.ready and host.owner is not None:
            STOCK.claimed = max(0, STOCK.claimed - 1)
        elif host.ready:
            METER.platform.replica_stopped(host.hid, time.time())
        host.ready = False
    try:
        ray.kill(host.actor, no_restart=True)
    except Exception:
        pass
    if host.reservation is not None:
        try:
            ray.util.remove_placement_group(host.reservation)
        except Exception:
            pass
        host.reservation = None


def submit(
    host: Host | None, key: str, spec_ref: Any, job: Any, env: dict | None, shape: tuple | None
) -> Any:
    """Run one job on one of the pool's stand-ins (``shape``: a class's ``(concurrency,
    cpus)``), or as a task on a borrowed idle worker; returns its ObjectRef."""
    args = (
        key,
        [spec_ref],  # in a list: resolved only where the code is not loaded yet
        ROUTER.address,
        job.kind,
        job.method,
        job.payload,
        job.star,
        job.call_id,
    )
    if host is not None:
        return host.actor.run.remote(env, shape, *args)
    return _run_task.options(num_cpus=0).remote(*args)
