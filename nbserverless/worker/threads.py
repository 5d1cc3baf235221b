"""A replica's math libraries use exactly its CPU share: one thread per reserved CPU.

Ray sets ``OMP_NUM_THREADS`` when it starts a worker for an actor, but a process that was
started for another request (a warm process claimed by a function) or that imported torch
before (warm imports) keeps what it had: set every knob again when the replica loads, before
the user's code (and its model) does.

Example::

    apply_cpu_share(2)        # torch, OpenMP, MKL, OpenBLAS, tokenizers: 2 threads each
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Collection, Iterator
from contextlib import contextmanager

#: read by OpenMP, MKL, OpenBLAS, BLIS, Accelerate, numexpr and Rust (HF tokenizers) at start
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "RAYON_NUM_THREADS",
)


def cpu_share(cpus: float | None = None) -> int:
    """Threads for a share of ``cpus`` CPUs (default: what Ray assigned to this worker):
    its whole CPUs, at least one.

    Example: ``cpu_share(0.25) == 1``, ``cpu_share(2) == 2``.
    """
    if cpus is None:
        try:
            import ray

            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        except Exception:
            cpus = None
    if not cpus:
        return 1
    return max(1, math.floor(cpus + 1e-9))


def _user_env() -> Collection[str]:
    """Variables the user gave with ``env=`` (this worker's runtime env)."""
    try:
        import ray

        return set(ray.get_runtime_context().runtime_env.env_vars())
    except Exception:
        return set()


def apply_cpu_share(cpus: float | None = None, keep: Collection[str] | None = None) -> int:
    """Set the thread counts of this process's math libraries to its CPU share; variables
    in ``keep`` (default: those the user gave with ``env=``) are left as they are. Returns
    the count.

    Example: ``apply_cpu_share(1, keep={"OMP_NUM_THREADS"})``.
    """
    n = cpu_share(cpus)
    if keep is None:
        keep = _user_env()
    for name in THREAD_VARS:
        if name not in keep:
            os.environ[name] = str(n)
    if "OMP_NUM_THREADS" in keep:
        return n  # the user chose the count: torch follows OpenMP's variable on its own
    torch = sys.modules.get("torch")
    if torch is not None:  # imported already (warm imports): the variables came too late
        try:
            torch.set_num_threads(n)
        except Exception:
            pass
    if "numpy" in sys.modules:  # a BLAS already loaded reads no variable again
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(n)
        except Exception:
            pass
    return n


@contextmanager
def idle_priority() -> Iterator[None]:
    """Run the block on CPU nobody else wants (Linux SCHED_IDLE, this thread only), e.g. a
    warm replica's imports of the kernel's module names; a no-op where not available, or where
    this thread could not switch back afterwards (unprivileged, RLIMIT_NICE too low)."""
    try:
        if not _can_leave_idle():
            raise OSError("could not switch back")
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        yield
        return
    try:
        yield
    finally:
        try:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        except OSError:
            pass


def _can_leave_idle() -> bool:
    """Linux lets a thread leave SCHED_IDLE if privileged or if its niceness is within the
    range RLIMIT_NICE permits (niceness ≥ 20 − limit)."""
    if os.geteuid() == 0:
        return True
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NICE)[0]
        return soft == resource.RLIM_INFINITY or os.getpriority(os.PRIO_PROCESS, 0) >= 20 - soft
    except (AttributeError, ImportError, OSError, ValueError):
        return False
