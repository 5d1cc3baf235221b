"""Cold starts without the wait: while a function's first replica starts, its first calls
run as Ray tasks on the worker processes Ray keeps prestarted (the "stem cells" of this
design: generic, reserving nothing while idle). Each worker process loads a function's code
once and keeps it, so later bridged calls are warm.

A bridged call borrows an idle worker without reserving CPUs: the replicas being started
have already reserved the function's resources, and a task that waited for them would wait
for those very replicas. Its time is billed to the function as busy time (meter.borrowed).

``nbs.config(prewarm=N)``: at most N calls of a function run this way at once while it has no
ready replica; ``prewarm=0`` is strict scale-from-zero (the first call waits for its replica).
Classes never bridge (their ``__init__``, a model load, belongs to a replica), nor do
functions that ask for GPUs or a runtime env (they need what only their replica has).

Example::

    ref = submit_task(pool_key, spec_ref, options, "call", payload, call_id)
"""

from __future__ import annotations

from typing import Any

import ray

from .options import Options
from .output import ROUTER
from .replica import Replica

_executors: dict[str, Replica] = {}  # in a worker process: pool key -> loaded code


def _run(key: str, spec_box: list, out_address: Any, kind: str, method: Any, payload: Any,
         star: bool, call_id: int) -> list:  # fmt: skip
    executor = _executors.get(key)
    if executor is None:
        executor = Replica(f"bridge:{key}", out_address)
        loaded = executor.load(ray.get(spec_box[0]))
        if not loaded.get("ok"):
            return [False, loaded["error"], 0.0, None, 0]
        _executors[key] = executor
    if kind == "call":
        args, kwargs = payload
        return executor.call([method, list(args), kwargs or None, call_id])
    if kind == "batch":
        return executor.batch(method, payload, call_id)
    return executor.chunk(method, payload, star, call_id)


_run_task = ray.remote(max_retries=0)(_run)


def eligible(options: Options, kind: str) -> bool:
    """Functions and cells without GPUs and without a runtime env."""
    return kind in ("function", "cell") and not options.gpus and options.runtime_env() is None


def submit_task(key: str, spec_ref: Any, options: Options, job: Any) -> Any:
    """Run one job as a task on a borrowed idle worker; returns its ObjectRef."""
    return _run_task.options(num_cpus=0).remote(
        key,
        [spec_ref],  # in a list: resolved by the worker only when it has not loaded the code
        ROUTER.address,
        job.kind,
        job.method,
        job.payload,
        job.star,
        job.call_id,
    )
