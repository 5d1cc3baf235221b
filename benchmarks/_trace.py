"""The machinery of the trace replay (trace_replay.py): the Azure LLM inference traces of
shared/data, an open-loop replay (a scheduler thread submits at the arrival times and never
waits for results), and one side's report with its windows for the plot.

Example::

    arrivals = load("conv", 300, speedup=10.0)
    run = replay(f.submit, arrivals, replicas=lambda: f.stats()["replicas"])
    rep = report("nbs", "conv", run, arrivals, speedup=10.0, rate=1e-5, stats=f.stats())
"""

from __future__ import annotations

import csv
import datetime as _dt
import itertools
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._common import Skip, quantile

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
DATASET = "azure-llm-inference-2023"
FILES = {"code": "AzureLLMInferenceTrace_code.csv", "conv": "AzureLLMInferenceTrace_conv.csv"}
MS_PER_TOKEN = 0.2  # work per generated token, seconds x 1000

#: every field of one side's report (tests check them all)
FIELDS = (
    "side", "trace", "arrivals", "speedup", "duration_s", "completed", "lost", "errors",
    "p50_ms", "p95_ms", "p99_ms", "queue_p50_ms", "queue_p99_ms", "cold_p50_ms",
    "cold_p99_ms", "exec_p50_ms", "exec_p99_ms", "cold_starts", "replica_starts",
    "peak_replicas", "mean_replicas", "cost", "idle_cost", "always_on_peak_cost", "always_on_mean_cost",
    "saving_vs_peak", "saving_vs_mean", "max_submit_lag_ms", "keep_alive", "windows",
)  # fmt: skip


# ---------------------------------------------------------------------------- the data
def data_dir() -> Path | None:
    """The trace folder: ``$NBSERVERLESS_TRACE_DIR``, else ``shared/data/<dataset>`` beside the
    repository root (``../shared``) or beside one of its ancestors (worktrees); None if absent."""
    env = os.environ.get("NBSERVERLESS_TRACE_DIR")
    if env:
        return Path(env) if (Path(env) / FILES["conv"]).is_file() else None
    for up in ROOT.parents:
        d = up / "shared" / "data" / DATASET
        if (d / FILES["conv"]).is_file():
            return d
    return None


@dataclass(frozen=True)
class Arrival:
    t: float  # seconds after the replay starts, compressed
    tokens: int  # GeneratedTokens


def _stamp(s: str) -> float:
    # "2023-11-16 18:17:03.9799600": seven fractional digits, more than fromisoformat takes
    whole, _, frac = s.strip().partition(".")
    return _dt.datetime.fromisoformat(whole).timestamp() + float("0." + (frac or "0"))


def load(trace: str, n: int | None = None, speedup: float = 10.0) -> list[Arrival]:
    """The first ``n`` requests of ``trace`` ("code" or "conv"), times compressed ``speedup``×
    and relative to the first. Raises :class:`Skip` if the data is not there.

    Example: ``load("conv", 300, 10.0)[-1].t`` -> ``8.4`` (s).
    """
    if trace not in FILES:
        raise ValueError(f"trace={trace!r}: one of {', '.join(FILES)}")
    d = data_dir()
    if d is None:
        raise Skip(f"trace data absent: no ../shared/data/{DATASET} beside the repository")
    out: list[Arrival] = []
    with open(d / FILES[trace], newline="") as fh:
        t0 = None
        for row in csv.DictReader(fh):
            t = _stamp(row["TIMESTAMP"])
            t0 = t if t0 is None else t0
            out.append(Arrival((t - t0) / speedup, int(row["GeneratedTokens"])))
            if n is not None and len(out) >= n:
                break
    return out


# ---------------------------------------------------------------------------- open-loop replay
@dataclass
class Run:
    """What one replay saw: per request planned/sent/done times (s after start) and results."""

    planned: list[float]
    sent: list[float]
    done: list[float]
    ok: list[bool]
    errors: dict[int, str]
    samples: list[tuple[float, int]] = field(default_factory=list)  # (t, replicas)
    finished: bool = True

    def latencies(self) -> list[float]:
        return [d - p for p, d, k in zip(self.planned, self.done, self.ok, strict=True) if k]


def replay(
    submit: Callable[[int, int], Future],
    arrivals: list[Arrival],
    *,
    replicas: Callable[[], int] | None = None,
    every: float = 0.1,
    timeout: float = 120.0,
) -> Run:
    """Submit ``submit(i, tokens)`` for each arrival at its time from a scheduler thread that
    never waits for results (open loop); a result is right when it equals ``i``. Samples
    ``replicas()`` every ``every`` s. Waits for every result, at most ``timeout`` s after the
    last arrival."""
    n = len(arrivals)
    run = Run([a.t for a in arrivals], [math.nan] * n, [math.nan] * n, [False] * n, {})
    left = [n]
    lock, all_done, stop = threading.Lock(), threading.Event(), threading.Event()
    t0 = time.perf_counter() + 0.05

    def settle(i: int, ok: bool, why: str | None = None) -> None:
        run.done[i], run.ok[i] = time.perf_counter() - t0, ok
        if why is not None:
            run.errors[i] = why
        with lock:
            left[0] -= 1
            if left[0] == 0:
                all_done.set()

    def on_done(i: int, fut: Future) -> None:
        try:
            y = fut.result()
        except BaseException as e:
            settle(i, False, f"{type(e).__name__}: {e}")
            return
        settle(i, y == i, None if y == i else f"wrong result {y!r}")

    def schedule() -> None:
        for i, a in enumerate(arrivals):
            delay = t0 + a.t - time.perf_counter()
            if delay > 0 and stop.wait(delay):
                return
            run.sent[i] = time.perf_counter() - t0
            try:
                fut = submit(i, a.tokens)
            except Exception as e:
                settle(i, False, f"submit: {type(e).__name__}: {e}")
                continue
            fut.add_done_callback(lambda f, i=i: on_done(i, f))

    def sample() -> None:
        while not stop.is_set():
            try:
                run.samples.append((time.perf_counter() - t0, int(replicas())))
            except Exception:
                pass
            stop.wait(every)

    threads = [threading.Thread(target=schedule, name="replay-scheduler", daemon=True)]
    if replicas is not None:
        threads.append(threading.Thread(target=sample, name="replay-sampler", daemon=True))
    for th in threads:
        th.start()
    last = arrivals[-1].t if arrivals else 0.0
    run.finished = n == 0 or all_done.wait(max(0.0, t0 + last - time.perf_counter()) + timeout)
    stop.set()
    for th in threads:
        th.join(5)
    return run


# ---------------------------------------------------------------------------- the report
def _replica_seconds(samples: list[tuple[float, int]], end: float) -> float:
    total = 0.0
    for (t, r), (t2, _) in zip(samples, samples[1:] + [(end, 0)], strict=True):
        total += r * max(0.0, min(t2, end) - t)
    return total


def windows(run: Run, width: float) -> dict[str, list[float]]:
    """Per window of ``width`` s (by planned arrival): arrivals/s, mean replicas sampled, p99
    latency (ms) of the requests that arrived in it."""
    end = max([d for d in run.done if not math.isnan(d)] + run.planned + [0.0])
    k = max(1, math.ceil(end / width))
    arr = [0] * k
    lat: list[list[float]] = [[] for _ in range(k)]
    reps: list[list[int]] = [[] for _ in range(k)]
    for p, d, ok in zip(run.planned, run.done, run.ok, strict=True):
        w = min(k - 1, int(p / width))
        arr[w] += 1
        if ok:
            lat[w].append((d - p) * 1000)
    for t, r in run.samples:
        reps[min(k - 1, max(0, int(t / width)))].append(r)
    return {
        "t": [round(i * width, 3) for i in range(k)],
        "arrivals_per_s": [a / width for a in arr],
        "replicas": [sum(r) / len(r) if r else math.nan for r in reps],
        "p99_ms": [quantile(x, 0.99) if x else math.nan for x in lat],
    }


def report(
    side: str,
    trace: str,
    run: Run,
    arrivals: list[Arrival],
    *,
    speedup: float,
    rate: float,
    stats: dict[str, Any] | None = None,
    keep_alive: str = "",
    ms_per_token: float = MS_PER_TOKEN,
    width: float = 1.0,
    work_s: float | None = None,
) -> dict[str, Any]:
    """One side's report: every key of :data:`FIELDS`. ``rate`` is USD per replica-second;
    ``stats`` the function's ``f.stats()`` (None for anchors without one); ``work_s`` the busy
    seconds of all requests (default: generated tokens x ``ms_per_token``; the model mode
    passes the encode times its replicas measured)."""
    lat = run.latencies()
    end = max([d for d in run.done if not math.isnan(d)] + [run.planned[-1] if run.planned else 0])
    reps = [r for _, r in run.samples]
    starts = sum(max(0, b - a) for a, b in zip([0] + reps, reps, strict=False))
    rep_s = _replica_seconds(run.samples, end)
    peak = max(reps, default=0)
    if stats:
        peak = max(peak, int(stats.get("peak_replicas", 0)))
    if work_s is None:
        work_s = sum(a.tokens for a in arrivals) * ms_per_token / 1000
    mean_size = max(1, math.ceil(work_s / end)) if end > 0 else 1
    cost = float(stats["cost"]) if stats else rep_s * rate
    on_peak, on_mean = max(1, peak) * end * rate, mean_size * end * rate  # pools of >= 1
    lags = [s - p for s, p in zip(run.sent, run.planned, strict=True) if not math.isnan(s)]
    st = stats or {}
    out = {
        "side": side,
        "trace": trace,
        "arrivals": len(arrivals),
        "speedup": speedup,
        "duration_s": end,
        "completed": sum(run.ok),
        "lost": len(arrivals) - sum(run.ok),
        "errors": dict(itertools.islice(run.errors.items(), 5)),
        "p50_ms": quantile(lat, 0.5) * 1000,
        "p95_ms": quantile(lat, 0.95) * 1000,
        "p99_ms": quantile(lat, 0.99) * 1000,
        **{k: st.get(k) for k in FIELDS if k.startswith(("queue_", "cold_p", "exec_"))},
        "cold_starts": st.get("cold_starts"),
        "replica_starts": starts,
        "peak_replicas": peak,
        "mean_replicas": rep_s / end if end > 0 else 0.0,
        "cost": cost,
        "idle_cost": float(st["cost_idle"]) if stats else max(0.0, rep_s - work_s) * rate,
        "always_on_peak_cost": on_peak,
        "always_on_mean_cost": on_mean,
        "saving_vs_peak": 1 - cost / on_peak if on_peak > 0 else math.nan,
        "saving_vs_mean": 1 - cost / on_mean if on_mean > 0 else math.nan,
        "max_submit_lag_ms": max(lags, default=0.0) * 1000,
        "keep_alive": keep_alive,
        "windows": windows(run, width),
    }
    assert set(out) == set(FIELDS)
    return out
