"""Trace replay: the Azure LLM inference traces (shared/data) replayed open-loop against the
elastic pool, real timestamps compressed ``--speedup`` times, each request a ``submit`` of a
function that works 0.2 ms per generated token (``cpus=0.25, max_replicas=8``).

Compared on the same arrivals in the same run: nbserverless with a fixed keep-alive, with the
learned one (``keep_alive="auto"``), Ray Serve autoscaling from zero, and an always-on
nbserverless pool of the peak size. Per side: p50/p95/p99 latency (planned arrival -> result,
as the caller sees it; and the queue / cold / execution split of ``f.stats()``), cold starts,
replicas over time, cost, the always-on cost of the peak and of the mean, the saving. Writes
``results/trace_replay_<trace>.json`` and ``.png`` (arrivals/s, replicas, p99 in windows).

``python -m benchmarks trace_replay [--trace code|conv|both] [--arrivals N] [--speedup F]
[--keep-alive S] [--window S] [--quick]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from ._common import CLUSTER, Skip, notebook_def, wait_until
from ._keepalive_sim import simulate
from ._trace import FIELDS, MS_PER_TOKEN, Arrival, load, replay, report

__all__ = ["FIELDS", "load", "replay", "report", "run", "run_nbs", "run_serve"]

SC = "trace_replay"
RESULTS = Path(__file__).resolve().parent / "results"
CPUS, MAX_REPLICAS = 0.25, 8
_tag = itertools.count()


# ---------------------------------------------------------------------------- the sides
WORK_SRC = """
import time

def work(i, tokens):
    time.sleep(tokens * MS / 1000)
    return i
"""

SERVE_SRC = """
import time

class TraceWork:
    def __call__(self, i, tokens):
        time.sleep(tokens * MS / 1000)
        return i
"""


def _scope() -> Any:
    """A metering scope (the numbers of exactly the replay window), or None."""
    try:
        from nbserverless.metering.meter import METER

        return METER.open_scope()
    except Exception:
        return None


def run_nbs(
    trace: str,
    arrivals: list[Arrival],
    side: str,
    *,
    speedup: float,
    ms_per_token: float = MS_PER_TOKEN,
    timeout: float = 120.0,
    width: float = 1.0,
    **options: Any,
) -> dict[str, Any]:
    """Replay ``arrivals`` against a new nbserverless function made with ``options``.
    Raises :class:`Skip` if an option is rejected (e.g. ``keep_alive="auto"`` before it
    exists). A pool with ``min_replicas`` is warmed up to it first (always-on)."""
    nbs = CLUSTER.nbserverless()
    salt = f"tr{next(_tag)}"
    fn = notebook_def(WORK_SRC, MS=ms_per_token)["work"]
    opts = {"cpus": CPUS, "max_replicas": MAX_REPLICAS, **options}
    try:
        f = nbs.remote(name=f"trace_{salt}", **opts)(fn)
    except (TypeError, ValueError) as e:
        raise Skip(f"{side}: option rejected: {e}") from e
    want = int(opts.get("min_replicas") or 0)
    if want:
        f(0, 0)
        if wait_until(lambda: f.stats()["replicas"] >= want, 120, 0.1) is None:
            raise RuntimeError(f"{side}: {want} replicas not up within 120 s")
    scope = _scope()
    run = replay(f.submit, arrivals, replicas=lambda: f.stats()["replicas"], timeout=timeout)
    stats = f.stats()
    if scope is not None:
        rows = [r for r in scope.close()["functions"] if r["name"] == f.name]
        stats = {**stats, **rows[0]} if rows else stats
    ka = stats.get("keep_alive_label") or f"keep-alive {opts.get('keep_alive', 'default')}"
    return report(
        side, trace, run, arrivals, speedup=speedup, rate=float(stats["cost_per_s"]),
        stats=stats, keep_alive=str(ka), ms_per_token=ms_per_token, width=width,
    )  # fmt: skip


def run_serve(
    trace: str,
    arrivals: list[Arrival],
    side: str,
    *,
    speedup: float,
    keep_alive: float,
    ms_per_token: float = MS_PER_TOKEN,
    timeout: float = 120.0,
    width: float = 1.0,
) -> dict[str, Any]:
    """Replay against a Ray Serve deployment autoscaling from zero (``min_replicas=0``, up to
    ``MAX_REPLICAS``, one request per replica at a time like ``concurrency=1``, scale-up at
    once, scale-down after ``keep_alive``). Raises :class:`Skip` without ray[serve]."""
    import asyncio

    serve = CLUSTER.serve()
    from nbserverless.metering import pricing

    salt = f"serve{next(_tag)}"
    cls = notebook_def(SERVE_SRC, MS=ms_per_token)["TraceWork"]
    dep = serve.deployment(
        name="TraceWork",
        ray_actor_options={"num_cpus": CPUS},
        max_ongoing_requests=1,
        autoscaling_config={
            "min_replicas": 0,
            "initial_replicas": 0,
            "max_replicas": MAX_REPLICAS,
            "target_ongoing_requests": 1,
            "upscale_delay_s": 0,
            "downscale_delay_s": keep_alive,
            "downscale_to_zero_delay_s": keep_alive,
            "metrics_interval_s": 0.5,
            "look_back_period_s": 1,
        },
    )(cls)
    app = f"bench_trace_{salt}"
    h = serve.run(dep.bind(), name=app, route_prefix=None)
    loop = asyncio.new_event_loop()
    th = threading.Thread(target=loop.run_forever, name="replay-serve-loop", daemon=True)
    th.start()

    async def call(i: int, tokens: int) -> Any:
        return await h.remote(i, tokens)

    def replicas() -> int:
        st = serve.status().applications[app].deployments["TraceWork"]
        return int(st.replica_states.get("RUNNING", 0)) if st.replica_states else 0

    try:
        run = replay(
            lambda i, tok: asyncio.run_coroutine_threadsafe(call(i, tok), loop),
            arrivals, replicas=replicas, every=0.25, timeout=timeout,
        )  # fmt: skip
    finally:
        loop.call_soon_threadsafe(loop.stop)
        th.join(5)
        serve.delete(app)
    rate = pricing.current().replica_rate(CPUS, 0.0, None, None)
    return report(
        side, trace, run, arrivals, speedup=speedup, rate=rate, stats=None,
        keep_alive=f"downscale_delay_s={keep_alive:g}", ms_per_token=ms_per_token, width=width,
    )  # fmt: skip


# ---------------------------------------------------------------------------- the scenario
def options(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks trace_replay")
    ap.add_argument("--trace", choices=["code", "conv", "both"], default="both")
    ap.add_argument("--arrivals", type=int, default=None, help="the first N (1500; 300 quick)")
    ap.add_argument("--speedup", type=float, default=10.0, help="time compression (10)")
    ap.add_argument("--keep-alive", type=float, default=2.0, help="the fixed keep-alive (2 s)")
    ap.add_argument("--window", type=float, default=1.0, help="plot window, seconds (1)")
    ap.add_argument("--ms-per-token", type=float, default=MS_PER_TOKEN)
    args, _ = ap.parse_known_args(argv)
    return args


def _sides(args: argparse.Namespace, quick: bool) -> list[tuple[str, dict[str, Any]]]:
    ka = args.keep_alive
    out = [(f"nbs fixed keep_alive={ka:g}", {"keep_alive": ka})]
    if not quick and ka != 60:
        out.append(("nbs fixed keep_alive=60 (default)", {"keep_alive": 60.0}))
    out.append(("nbs learned keep_alive='auto'", {"keep_alive": "auto"}))
    out.append(("Ray Serve autoscaling min_replicas=0", {"serve": True}))
    out.append(("nbs always-on min_replicas=peak", {"always_on": True}))
    return out


def _line(r: dict[str, Any]) -> str:
    def ms(k: str) -> str:
        v = r.get(k)
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.0f}"

    cold = "—" if r["cold_starts"] is None else str(r["cold_starts"])
    return (
        f"{r['side']:<40} p50/p95/p99 {ms('p50_ms')}/{ms('p95_ms')}/{ms('p99_ms')} ms "
        f"(queue p99 {ms('queue_p99_ms')}, cold p99 {ms('cold_p99_ms')}, exec p99 "
        f"{ms('exec_p99_ms')}); cold starts {cold}, replica starts {r['replica_starts']}, "
        f"peak {r['peak_replicas']}, mean {r['mean_replicas']:.2f} replicas; cost "
        f"${r['cost']:.6f} (idle ${r['idle_cost']:.6f}); always-on peak ${r['always_on_peak_cost']:.6f}"
        f", mean ${r['always_on_mean_cost']:.6f}; saving vs peak {r['saving_vs_peak']:.0%}; "
        f"lost {r['lost']}/{r['arrivals']}"
    )


ROWS = [
    ("p50", "ms", "p50_ms"), ("p99", "ms", "p99_ms"), ("cold p99", "ms", "cold_p99_ms"),
    ("cold starts", "", "cold_starts"), ("peak replicas", "", "peak_replicas"),
    ("cost", "µUSD", "cost"), ("idle cost", "µUSD", "idle_cost"),
    ("saving vs peak", "", "saving_vs_peak"),
]  # fmt: skip


def _rows(ctx: Any, name: str, rep: dict[str, Any]) -> None:
    """The table's rows of one side. A metric the side does not report (Ray Serve has no cold
    start count nor split: ``None``) is a row without samples, "not measured", and says so."""
    ok, why = rep["lost"] == 0, "" if rep["lost"] == 0 else f"lost {rep['lost']}"
    for metric, unit, key in ROWS:
        v = rep[key]
        if v is None or (isinstance(v, float) and math.isnan(v)):
            ctx.row(SC, name, metric, unit, samples=[], n=rep["arrivals"], ok=ok,
                    note=", ".join(x for x in (why, "not reported by this side") if x))  # fmt: skip
            continue
        v = v * 1e6 if unit == "µUSD" else v
        ctx.row(SC, name, metric, unit, samples=[v], n=rep["arrivals"], ok=ok, note=why)


def _room(ctx: Any, cpus: float) -> None:
    """Before a side: no replica of an earlier side left, and its CPUs free; says so when
    they are not free after 60 s (the side then runs anyway, and may queue)."""
    import ray

    CLUSTER.nbs_scale_to_zero()
    waited = CLUSTER.free_cpus(cpus, 60)
    free = ray.available_resources().get("CPU", 0.0)
    if free < cpus - 1e-6:
        ctx.log(f"{SC}: only {free:g} of {cpus:g} CPUs free after {waited:.0f} s")


def run_trace(ctx: Any, trace: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every side on the same arrivals of one trace; rows, checks, notes, JSON and PNG. A side
    that cannot run or fails is logged with its reason and the next one runs; the JSON and the
    PNG are written whatever happened."""
    n = args.arrivals or (300 if ctx.quick else 1500)
    arrivals = load(trace, n, args.speedup)
    kw = {"speedup": args.speedup, "ms_per_token": args.ms_per_token, "width": args.window}
    reports: list[dict[str, Any]] = []
    sims: list[dict[str, Any]] = []
    peak = MAX_REPLICAS
    try:
        for side, opt in _sides(args, ctx.quick):
            if opt.get("always_on"):
                side = side.replace("peak", str(peak))
            _room(ctx, MAX_REPLICAS * CPUS)
            ctx.log(f"{SC}: {trace} ({len(arrivals)} arrivals, {args.speedup:g}x): {side}")
            try:
                if opt.get("serve"):
                    try:
                        rep = run_serve(trace, arrivals, side, keep_alive=args.keep_alive, **kw)
                    finally:
                        CLUSTER.serve_stop()  # its controller stays out of the next sides
                elif opt.get("always_on"):
                    rep = run_nbs(trace, arrivals, side, min_replicas=peak, max_replicas=peak,
                                  keep_alive=args.keep_alive, **kw)  # fmt: skip
                else:
                    rep = run_nbs(trace, arrivals, side, **opt, **kw)
                    if side.startswith("nbs fixed") and rep["peak_replicas"]:
                        peak = rep["peak_replicas"]
                reports.append(rep)
                ctx.log(_line(rep))
                _rows(ctx, f"{trace}: {side}", rep)
                ctx.note(SC, f"{trace} {args.speedup:g}x: " + _line(rep))
            except Skip as e:
                print(f"skipped: {SC} / {trace} / {side}: {e}", flush=True)
                ctx.note(SC, f"{trace}: {side} skipped: {e}")
            except Exception as e:
                ctx.row(SC, f"{trace}: {side}", "p99", "ms", error=f"{type(e).__name__}: {e}")
                ctx.log(f"{SC}: {trace}: {side} FAILED:\n{traceback.format_exc()}")
        _checks(ctx, trace, args, reports)
        sims = model(ctx, trace, args)
    finally:
        _write(ctx, trace, arrivals, args, reports, sims)
    return reports


def _write(
    ctx: Any,
    trace: str,
    arrivals: list[Arrival],
    args: argparse.Namespace,
    reports: list[dict[str, Any]],
    sims: list[dict[str, Any]],
) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"trace": trace, "arrivals": len(arrivals), "speedup": args.speedup,
            "ms_per_token": args.ms_per_token, "cpus": CPUS, "max_replicas": MAX_REPLICAS}  # fmt: skip
    out = RESULTS / f"trace_replay_{trace}.json"
    out.write_text(
        json.dumps({**meta, "sides": reports, "model": sims}, indent=1, default=str) + "\n"
    )
    png, why = None, "no side ran"
    if reports:
        try:
            png = plot(trace, reports, RESULTS / f"trace_replay_{trace}.png", args.speedup)
            why = "matplotlib not installed"
        except Exception as e:
            why = f"{type(e).__name__}: {e}"
            ctx.log(f"{SC}: plot FAILED:\n{traceback.format_exc()}")
    ctx.note(
        SC, f"{trace}: details {out.name}" + (f", plot {png.name}" if png else f", no plot ({why})")
    )
    ctx.log(f"{SC}: wrote {out}" + (f" and {png}" if png else f"; no plot: {why}"))


def _checks(ctx: Any, trace: str, args: argparse.Namespace, reports: list[dict]) -> None:
    fixed = next((r for r in reports if r["side"].startswith("nbs fixed")), None)
    learned = next((r for r in reports if "learned" in r["side"]), None)
    if trace == "conv" and fixed is not None:
        at = "" if args.speedup == 10 else f" (info: at {args.speedup:g}x, the target is at 10x)"
        ctx.check(SC, f"conv: nbs fixed keep-alive p99, 10x{at}", fixed["p99_ms"] / 1000,
                  "<=", 2.0, 2.0, unit=" s", valid=fixed["lost"] == 0)  # fmt: skip
    base = next((r for r in reports if "(default)" in r["side"]), fixed)
    if base is not None and learned is not None:
        for what, key in (("cold starts", "cold_starts"), ("idle cost", "idle_cost")):
            a, b = learned[key], base[key]
            v = a / b if b else (1.0 if a == b else math.inf)
            ctx.check(SC, f"{trace}: learned / {base['side'][4:]}, {what}", v, "<=", 1.0,
                      valid=learned["lost"] == 0 and base["lost"] == 0)  # fmt: skip


def model(ctx: Any, trace: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The keep-alive policies on the WHOLE trace in the pool model of _keepalive_sim.py (no
    cluster, seconds): fixed, fixed default (60 s), learned. Notes and info checks."""
    full = load(trace, None, args.speedup)
    kw = {"ms_per_token": args.ms_per_token, "max_replicas": MAX_REPLICAS}
    sims = [simulate(full, keep_alive=k, **kw) for k in (args.keep_alive, 60.0, "auto")]
    for r in sims:
        ctx.note(SC, f"model, whole {trace} trace ({len(full)} arrivals, {args.speedup:g}x), "
                 f"{r['policy']}: cold starts {r['cold_starts']}, idle replica-s "
                 f"{r['idle_replica_s']:.0f}, billed replica-s {r['replica_s']:.0f}, p99 "
                 f"{r['p99_s']:.2f} s; {r['label']}")  # fmt: skip
    learned, default = sims[2], sims[1]
    for what, key in (("cold starts", "cold_starts"), ("idle replica-s", "idle_replica_s")):
        a, b = learned[key], default[key]
        ctx.check(SC, f"model {trace}: learned / fixed 60 s, {what} (info)",
                  a / b if b else (1.0 if a == b else math.inf), "<=", 1.0)  # fmt: skip
    return sims


def plot(trace: str, reports: list[dict], path: Path, speedup: float) -> Path | None:
    """Arrivals/s, replicas and p99 per window for every side; None without matplotlib."""
    if not reports:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(3, 1, sharex=True, figsize=(10, 8))
    w0 = reports[0]["windows"]
    ax[0].step(w0["t"], w0["arrivals_per_s"], where="post", color="black")
    ax[0].set_ylabel("arrivals / s")
    for r in reports:
        w = r["windows"]
        ax[1].step(w["t"], w["replicas"], where="post", label=r["side"])
        ax[2].plot(w["t"], [v / 1000 for v in w["p99_ms"]], marker=".", label=r["side"])
    ax[1].set_ylabel("replicas")
    ax[2].set_ylabel("p99 latency (s)")
    ax[2].set_yscale("log")
    ax[2].set_xlabel(f"seconds (trace time / {speedup:g})")
    ax[1].legend(fontsize=7, loc="upper right")
    ax[0].set_title(f"Azure LLM inference trace ({trace}), {reports[0]['arrivals']} arrivals")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def run(ctx: Any) -> None:
    args = options(list(getattr(ctx, "argv", None) or []))
    CLUSTER.ensure()
    load("conv", 1)  # Skip now if the data is absent
    for trace in ["conv", "code"] if args.trace == "both" else [args.trace]:
        run_trace(ctx, trace, args)


if (
    __name__ == "__main__"
):  # python -m benchmarks.trace_replay ... == python -m benchmarks trace_replay ...
    from .__main__ import main

    sys.exit(main(["trace_replay", *sys.argv[1:]]))
