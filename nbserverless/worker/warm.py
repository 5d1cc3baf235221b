"""The warm generic process (a stand-in) on the cluster: generic until a pool claims it.

Example: ``ray.remote(StemCell).options(num_cpus=0).remote()``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import ray

from . import codec
from .replica import Replica, idle_priority

_executors: dict[str, Replica] = {}  # in a worker or stand-in process: pool key -> code
_load_lock = threading.Lock()


def _run(key: str, spec_box: list, out_address: Any, kind: str, method: Any, payload: Any,
         star: bool, call_id: int) -> list:  # fmt: skip
    executor = _executors.get(key)
    if executor is None:
        with _load_lock:
            executor = _executors.get(key)
            if executor is None:
                executor = Replica(f"bridge:{key}", out_address)
                loaded = executor.load(ray.get(spec_box[0]))
                if not loaded.get("ok"):
                    return [False, loaded["error"], 0.0, None, 0]
                _executors[key] = executor
    if kind == "call":
        code = codec.call_code(payload)
        return executor.call([method, codec.call_payload(payload), call_id, code])
    if kind == "batch":
        return executor.batch(method, payload, call_id)
    return executor.chunk(method, payload, star, call_id)


_run_task = ray.remote(max_retries=0)(_run)


class StemCell:
    """The stand-in process (a Ray actor with threads): generic until claimed."""

    def __init__(self) -> None:
        self.t_start = time.time()
        self.env: dict[str, str] | None = None
        self.slots: threading.Semaphore | None = None
        # Ray caps math libraries at one thread for an actor of num_cpus=0; a stand-in works
        # for replicas that reserved more, so libraries it imports may use the node's cores.
        if os.environ.get("OMP_NUM_THREADS") == "1":
            del os.environ["OMP_NUM_THREADS"]
        _raise_priority()

    def ping(self) -> dict[str, Any]:
        return {"t_start": self.t_start, "pid": os.getpid()}

    def warm(self, modules: list[str], env: dict[str, str]) -> list[str]:
        """Import the kernel's packages as the kernel did: with the environment variables it
        has set (some packages read them at import), restored afterwards; on idle CPU."""
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        done = []
        try:
            with idle_priority():
                for name in modules:
                    if name in sys.modules:
                        continue
                    try:
                        __import__(name)
                        done.append(name)
                    except BaseException:  # not installed here, or fails outside the kernel
                        pass
        finally:
            for name, value in saved.items():
                if self.env and name in self.env:
                    continue  # claimed meanwhile: the pool's env= stays
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        return done

    def run(self, env: dict[str, str] | None, shape: tuple | None, *args: Any) -> list:
        """One job of the pool that claimed this stand-in. ``shape`` is a class's
        ``(concurrency, cpus)``: at most ``concurrency`` jobs run at once on its instance (the
        next one waits here), with math libraries at its replicas' thread count."""
        if env and self.env is None:  # claimed: the pool's env= applies from now on
            os.environ.update(env)
            self.env = env
        if not shape:
            return _run(*args)
        if self.slots is None:
            with _load_lock:
                if self.slots is None:
                    _limit_threads(max(1, int(shape[1])))
                    self.slots = threading.Semaphore(shape[0])
        with self.slots:
            return _run(*args)


def _limit_threads(n: int) -> None:
    """What Ray's OMP_NUM_THREADS does at a replica's start, for a class's stand-in whose math
    libraries were imported before it knew the class (warm imports): ``n`` threads."""
    os.environ["OMP_NUM_THREADS"] = str(n)  # libraries imported from now on
    torch = sys.modules.get("torch")  # imported already: it reads the variable only once
    if torch is not None:
        try:
            torch.set_num_threads(n)
        except Exception:
            pass


def _raise_priority() -> None:
    """Ray runs workers at low priority (niceness 15): so do the processes starting for the
    replicas a stand-in stands in for. Where allowed, the stand-in takes the kernel's priority
    (every thread: Linux keeps niceness per thread) so its calls do not queue behind them."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, 0)
        except OSError:
            return
