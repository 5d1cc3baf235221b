"""Shared machinery: rounds, statistics, results, the Ray cluster of the run, the table."""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

#: scenario names as tables print them
TITLES = {
    "first_call": "first call, new kernel",
    "warm_call": "warm call",
    "cold_start": "cold start",
    "map_tiny": "map, tiny items",
    "map_work": "map, real work",
    "batch_inference": "batch inference",
    "metering": "metering cost",
    "scale_down": "scale down",
    "trace_replay": "trace replay",
}


# ---------------------------------------------------------------------------- statistics
def quantile(xs: list[float], q: float) -> float:
    """Linear-interpolated quantile of ``xs`` (q in [0, 1])."""
    if not xs:
        return math.nan
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def median(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.median(xs) if xs else math.nan


def fmt(v: float | None, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if unit in ("items/s", "sent/s"):
        if v >= 1e6:
            return f"{v / 1e6:.2f} M"
        if v >= 1e4:
            return f"{v / 1e3:.1f} k"
        return f"{v:.1f}"
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


# ---------------------------------------------------------------------------- results
@dataclasses.dataclass
class Row:
    """One measured quantity of one side (the project or an anchor)."""

    scenario: str
    name: str  # e.g. "nbs f(x)" or "raw actor call"
    metric: str  # e.g. "p50"
    unit: str  # "ms", "s", "items/s", ...
    samples: list[float] = dataclasses.field(default_factory=list)  # one per round
    n: int | None = None  # items/calls per round
    ok: bool = True  # correctness checked and passed on every round
    error: str | None = None
    skipped: str | None = None
    note: str = ""

    @property
    def value(self) -> float:
        return median(self.samples)


@dataclasses.dataclass
class Check:
    """A target: ``value op limit`` (``value`` usually a ratio of medians of the same run)."""

    scenario: str
    what: str  # "nbs p50 / raw actor p50"
    value: float
    op: str  # "<=" or ">="
    limit: float  # BENCHMARKS.md target
    issue_limit: float | None = None  # the (looser) bar of the issue, if different
    unit: str = "×"
    valid: bool = True  # False when a side failed/was skipped or was wrong

    def passes(self, limit: float | None) -> bool | None:
        if limit is None:
            return None
        if not self.valid or self.value is None or math.isnan(self.value):
            return False
        return self.value <= limit if self.op == "<=" else self.value >= limit

    def miss(self) -> str:
        """How far from the BENCHMARKS.md target, in words (for the report)."""
        if not self.valid or math.isnan(self.value):
            return "not measured"
        if self.passes(self.limit):
            return "ok"
        if self.op == "<=":
            return f"{self.value / self.limit:.2f}× over"
        return f"{self.limit / self.value:.2f}× short" if self.value > 0 else "short"


@dataclasses.dataclass
class Ctx:
    rounds: int
    quick: bool
    verbose: bool = True
    rows: list[Row] = dataclasses.field(default_factory=list)
    checks: list[Check] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    errors: dict[str, str] = dataclasses.field(default_factory=dict)
    started: dict[str, float] = dataclasses.field(default_factory=dict)
    durations: dict[str, float] = dataclasses.field(default_factory=dict)

    def log(self, *a: Any) -> None:
        if self.verbose:
            print("  ·", *a, file=sys.stderr, flush=True)

    def row(self, scenario: str, name: str, metric: str, unit: str, **kw: Any) -> Row:
        r = Row(scenario, name, metric, unit, **kw)
        self.rows.append(r)
        return r

    def check(
        self,
        scenario: str,
        what: str,
        value: float,
        op: str,
        limit: float,
        issue_limit: float | None = None,
        unit: str = "×",
        valid: bool = True,
    ) -> Check:
        c = Check(scenario, what, value, op, limit, issue_limit, unit, valid)
        self.checks.append(c)
        return c

    def note(self, scenario: str, text: str) -> None:
        self.notes.append(f"[{scenario}] {text}")


class Skip(Exception):
    """Raised by a scenario or a side that cannot run here; the message says why."""


def need(module: str, why: str | None = None) -> Any:
    """Import ``module`` or raise :class:`Skip` naming it."""
    try:
        return importlib.import_module(module)
    except Exception as e:  # ImportError, or a broken install
        raise Skip(why or f"{module} not importable ({type(e).__name__}: {e})") from e


# ---------------------------------------------------------------------------- rounds
class Side:
    """One contender in a scenario: ``fn()`` runs one timed measurement and returns a dict
    of metric -> value (plus ``"ok": bool`` for the correctness check of that round)."""

    def __init__(
        self,
        name: str,
        fn: Callable[[], dict[str, Any]],
        *,
        warmup: int = 1,
        rounds: int | None = None,
        setup: Callable[[], Any] | None = None,
    ):
        self.name = name
        self.fn = fn
        self.warmup = warmup
        self.rounds = rounds  # None: every round of the context
        self.setup = setup
        self.results: list[dict[str, Any]] = []
        self.error: str | None = None
        self.skipped: str | None = None
        self.ok = True

    def metric(self, key: str) -> list[float]:
        return [r[key] for r in self.results if r.get(key) is not None]


def interleave(ctx: Ctx, scenario: str, sides: list[Side]) -> list[Side]:
    """Warm every side up, then run the sides in rounds A B C, A B C, … A side that raises
    :class:`Skip` is skipped; one that raises anything else is marked failed and not run again."""
    live: list[Side] = []
    for s in sides:
        try:
            if s.setup is not None:
                s.setup()
            for _ in range(s.warmup):
                ctx.log(f"{scenario}: warm-up {s.name}")
                res = s.fn()
                if res is not None and res.get("ok") is False:
                    s.ok = False
                    ctx.log(f"{scenario}: {s.name} WRONG RESULT in warm-up: {res.get('why', '')}")
            live.append(s)
        except Skip as e:
            s.skipped = str(e)
            print(f"skipped: {scenario} / {s.name}: {e}", flush=True)
        except Exception as e:
            s.error = f"{type(e).__name__}: {e}"
            ctx.log(f"{scenario}: {s.name} FAILED in warm-up:\n{traceback.format_exc()}")
    for r in range(ctx.rounds):
        for s in live:
            if s.error is not None or (s.rounds is not None and len(s.results) >= s.rounds):
                continue
            try:
                res = s.fn() or {}
            except Skip as e:
                s.skipped = str(e)
                continue
            except Exception as e:
                s.error = f"{type(e).__name__}: {e}"
                ctx.log(f"{scenario}: {s.name} FAILED in round {r + 1}:\n{traceback.format_exc()}")
                continue
            if res.get("ok") is False:
                s.ok = False
                ctx.log(f"{scenario}: {s.name} WRONG RESULT in round {r + 1}: {res.get('why', '')}")
            s.results.append(res)
            shown = {
                k: (round(v, 4) if isinstance(v, float) else v)
                for k, v in res.items()
                if k not in ("ok", "why")
            }
            ctx.log(f"{scenario}: round {r + 1} {s.name}: {shown}")
    return sides


def add_rows(
    ctx: Ctx,
    scenario: str,
    side: Side,
    metrics: list[tuple[str, str]],
    n: int | None = None,
    note: str = "",
) -> dict[str, Row]:
    """Rows for ``side``: one per (metric, unit), the samples being the side's rounds."""
    out = {}
    for metric, unit in metrics:
        out[metric] = ctx.row(
            scenario,
            side.name,
            metric,
            unit,
            samples=side.metric(metric),
            n=n,
            ok=side.ok,
            error=side.error,
            skipped=side.skipped,
            note=note,
        )
    return out


def ratio(a: Row | None, b: Row | None) -> tuple[float, bool]:
    """``median(a) / median(b)`` and whether both sides ran, were right, and have samples."""
    if a is None or b is None:
        return math.nan, False
    valid = (
        a.ok
        and b.ok
        and not a.error
        and not b.error
        and not a.skipped
        and not b.skipped
        and bool(a.samples)
        and bool(b.samples)
    )
    if not valid or b.value == 0:
        return math.nan, False
    return a.value / b.value, True


# ---------------------------------------------------------------------------- the cluster
class Cluster:
    """The one Ray cluster of a run, started here (``address="local"``) or by nbserverless,
    and stopped by this run only."""

    def __init__(self) -> None:
        self.started_by: str | None = None
        self.nbs: Any = None
        self.nbs_error: str | None = None
        self.serve_started = False

    def nbserverless(self) -> Any:
        """The ``nbserverless`` module, or raise Skip if the core is not there (yet)."""
        if self.nbs is not None:
            return self.nbs
        if self.nbs_error is not None:
            raise Skip(self.nbs_error)
        try:
            nbs = importlib.import_module("nbserverless")
            missing = [
                a for a in ("remote", "connect", "config", "shutdown") if not hasattr(nbs, a)
            ]
            if missing:
                raise ImportError(f"nbserverless has no {', '.join(missing)} yet")
        except Exception as e:
            self.nbs_error = f"nbserverless core not available ({type(e).__name__}: {e})"
            raise Skip(self.nbs_error) from e
        self.nbs = nbs
        return nbs

    def ensure(self, with_nbs: bool = True) -> Any:
        """Connect once: through ``nbs.connect()`` (the embedded cluster) when nbserverless
        is importable, so that it and the raw-Ray anchors share one cluster; otherwise a
        ``ray.init(address="local")`` of our own. Returns the ``ray`` module."""
        ray = need("ray")
        # never attach to someone else's cluster
        for var in ("RAY_ADDRESS", "NBSERVERLESS_ADDRESS"):
            os.environ.pop(var, None)
        if ray.is_initialized():
            return ray
        if with_nbs:
            try:
                nbs = self.nbserverless()
                t0 = time.perf_counter()
                nbs.connect()
                if ray.is_initialized():
                    self.started_by = f"nbs.connect() in {time.perf_counter() - t0:.1f} s"
                    return ray
            except Skip:
                pass
        t0 = time.perf_counter()
        ray.init(
            address="local", include_dashboard=False, log_to_driver=False, configure_logging=False
        )
        self.started_by = f"ray.init(address='local') in {time.perf_counter() - t0:.1f} s"
        return ray

    def free_cpus(self, need_cpus: float, timeout: float = 60.0) -> float:
        """Wait until ``need_cpus`` CPUs are available to raw Ray (idle nbserverless
        replicas may still hold some); returns the seconds waited."""
        import ray

        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if ray.available_resources().get("CPU", 0.0) >= need_cpus - 1e-6:
                break
            time.sleep(0.2)
        return time.perf_counter() - t0

    def make_room(self, need_cpus: float, timeout: float = 30.0) -> float:
        """Before a raw-Ray anchor (never inside an nbs timing): idle nbserverless replicas
        give way to waiting nbs work, not to raw Ray tasks/actors, so scale them to zero (an
        internal helper, see ``nbs_scale_to_zero``) and wait for the CPUs."""
        import ray

        if ray.available_resources().get("CPU", 0.0) < need_cpus - 1e-6:
            self.nbs_scale_to_zero()
        return self.free_cpus(need_cpus, timeout)

    def serve(self) -> Any:
        serve = need("ray.serve", "ray[serve] not installed")
        if not self.serve_started:
            try:
                serve.start(proxy_location="Disabled")
            except TypeError:
                serve.start(http_options={"location": "NoServer"})
            self.serve_started = True
        return serve

    def serve_stop(self) -> None:
        """Shut Ray Serve down (its controller goes) if this run started it; ``serve()``
        starts it again when a later side needs it."""
        if not self.serve_started:
            return
        self.serve_started = False
        from ray import serve

        serve.shutdown()

    def nbs_scale_to_zero(self) -> None:
        """Best effort, between scenarios: let no replica of an earlier scenario hold CPUs.
        SPEC.md has no per-function scale-down, so this uses the pool's internal helper when it
        exists (docs/internals.md) and otherwise relies on keep_alive."""
        if self.nbs is None:
            return
        try:
            from nbserverless.core import pool

            pool.scale_all_to_zero()
        except Exception:
            pass

    def stop(self) -> None:
        try:
            import ray
        except ImportError:
            return
        if self.serve_started:
            try:
                from ray import serve

                serve.shutdown()
            except Exception:
                pass
        if self.nbs is not None:
            try:
                self.nbs.shutdown()
            except Exception:
                pass
        if ray.is_initialized():
            ray.shutdown()


CLUSTER = Cluster()


def wait_warm(timeout: float = 30.0) -> float | None:
    """Between nbs rounds: wait (bounded) until ``prewarm`` stand-ins are warm again and done
    importing the kernel's packages, as they are in a notebook between cells (a claimed one
    is replaced in the background)."""
    from nbserverless.core import warm as bridge

    return wait_until(bridge.STOCK.settled, timeout)


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> float | None:
    """Seconds until ``pred()`` held, or None at the timeout."""
    t0 = time.perf_counter()
    while True:
        try:
            if pred():
                return time.perf_counter() - t0
        except Exception:
            pass
        if time.perf_counter() - t0 > timeout:
            return None
        time.sleep(interval)


def replicas(f: Any) -> int:
    return int(f.stats().get("replicas", 0))


def scale_down(f: Any, timeout: float = 30.0) -> None:
    """Wait until a handle has no replica left (its keep_alive ran out)."""
    wait_until(lambda: replicas(f) == 0, timeout, 0.1)


def notebook_def(src: str, **env: Any) -> dict[str, Any]:
    """Execute ``src`` as if typed into a notebook cell: a fresh ``__main__``-like namespace
    (so cloudpickle ships its functions and classes by value, as for a notebook user), with
    ``env`` as globals. Every call makes NEW function/class objects: never-called code."""
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__, **env}
    exec(compile(src, "<bench cell>", "exec"), ns)
    return ns
