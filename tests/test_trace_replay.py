"""The trace replay (benchmarks/trace_replay.py) at a small scale: real Azure arrivals
(../shared/data) against the session cluster. Nothing may be lost and the report must be
complete; no timing assertions (speed lives in benchmarks/)."""

from __future__ import annotations

import math
import threading
from concurrent.futures import Future

import pytest

from benchmarks import trace_replay as tr
from benchmarks._common import Skip


def arrivals(trace: str, n: int | None, speedup: float):
    try:
        return tr.load(trace, n, speedup)
    except Skip as e:
        pytest.skip(str(e))


def check_report(rep: dict, n: int) -> None:
    assert set(rep) == set(tr.FIELDS)
    assert rep["lost"] == 0, rep["errors"]
    assert rep["completed"] == rep["arrivals"] == n and not rep["errors"]
    assert 0 < rep["p50_ms"] <= rep["p95_ms"] <= rep["p99_ms"] < math.inf
    # calls may all run on borrowed stand-ins while replicas start: then no replica at all
    w = rep["windows"]
    seen = max((r for r in w["replicas"] if not math.isnan(r)), default=0)
    assert seen <= rep["peak_replicas"] <= tr.MAX_REPLICAS
    assert rep["replica_starts"] >= (1 if seen else 0) and rep["mean_replicas"] >= 0
    assert rep["cost"] > 0 and rep["always_on_peak_cost"] > 0 and rep["always_on_mean_cost"] > 0
    assert rep["idle_cost"] >= 0 and not math.isnan(rep["saving_vs_peak"])
    k = len(w["t"])
    assert k >= 1 and all(len(w[c]) == k for c in ("arrivals_per_s", "replicas", "p99_ms"))
    assert round(sum(w["arrivals_per_s"]) * (w["t"][1] - w["t"][0] if k > 1 else 1.0)) == n


def test_loader_reads_both_traces_in_order_and_compresses_time():
    conv = arrivals("conv", None, 1.0)
    code = arrivals("code", None, 1.0)
    assert len(conv) > 19000 and len(code) > 8000
    for a in (conv, code):
        assert a[0].t == 0.0 and all(x.t <= y.t for x, y in zip(a, a[1:], strict=False))
        assert all(x.tokens > 0 for x in a)
        assert 3000 < a[-1].t < 4000  # about one hour
    fast = arrivals("code", 300, 10.0)
    assert len(fast) == 300
    assert [x.t for x in fast] == pytest.approx([x.t / 10 for x in code[:300]])
    with pytest.raises(ValueError):
        tr.load("chat", 1)


def test_replay_is_open_loop_it_never_waits_for_a_result():
    """Futures that complete only once every arrival was submitted: the scheduler must submit
    all of them anyway, on its own, and then every result comes back."""
    arr = [tr.Arrival(i * 0.002, 10) for i in range(50)]
    futures: list[tuple[int, Future]] = []
    all_in = threading.Event()

    def submit(i: int, tokens: int) -> Future:
        fut: Future = Future()
        futures.append((i, fut))
        if len(futures) == len(arr):
            all_in.set()
        return fut

    def finisher() -> None:
        all_in.wait(60)
        for i, fut in futures:
            fut.set_result(i if i != 7 else "wrong")

    th = threading.Thread(target=finisher, daemon=True)
    th.start()
    run = tr.replay(submit, arr, timeout=60)
    th.join(10)
    assert run.finished and len(futures) == len(arr)
    assert max(run.sent) <= min(run.done)
    assert sum(run.ok) == len(arr) - 1 and not run.ok[7] and "wrong result" in run.errors[7]


def test_replay_against_the_cluster_loses_nothing_and_reports_every_field(ray_cluster):
    arr = arrivals("code", 200, 50.0)  # bursts and one long gap, about 4 s
    rep = tr.run_nbs(
        "code", arr, "nbs fixed", speedup=50.0, ms_per_token=0.05, keep_alive=1.0, width=0.5
    )
    check_report(rep, len(arr))
    assert rep["cold_starts"] >= 1  # zero replicas at the start
    assert rep["keep_alive"].startswith("keep-alive")


def test_learned_keep_alive_replay_loses_nothing(ray_cluster):
    arr = arrivals("conv", 200, 50.0)  # near-Poisson, about 1.2 s
    rep = tr.run_nbs("conv", arr, "nbs learned", speedup=50.0, ms_per_token=0.05, keep_alive="auto")
    check_report(rep, len(arr))


def test_keep_alive_model_serves_every_request_and_accounts_the_work():
    from benchmarks._keepalive_sim import simulate

    arr = arrivals("code", None, 10.0)  # the whole hour, in a second
    work = sum(a.tokens for a in arr) * 0.2 / 1000
    runs = {k: simulate(arr, keep_alive=k) for k in (2.0, 60.0, "auto")}
    for r in runs.values():
        assert r["busy_replica_s"] == pytest.approx(work)
        assert 1 <= r["cold_starts"] <= r["replica_starts"] <= len(arr)
        assert r["idle_replica_s"] > 0 and r["p99_s"] > 0
    # a longer fixed keep-alive: fewer cold starts, more idle time
    assert runs[60.0]["cold_starts"] < runs[2.0]["cold_starts"]
    assert runs[60.0]["idle_replica_s"] > runs[2.0]["idle_replica_s"]
    assert "(learned)" in runs["auto"]["label"]


def test_model_mode_texts_follow_generated_tokens_and_replies_are_checked():
    arr = [tr.Arrival(0.0, 3), tr.Arrival(0.01, 40), tr.Arrival(0.02, 5000)]
    txt = tr.texts(arr)
    assert [len(t.split()) for t in txt] == [3, 40, tr.MAX_WORDS]
    replies = tr.Replies()

    def submit(i: int, text: str) -> Future:
        fut: Future = Future()
        dim = 12 if i == 2 else tr.DIM  # request 2: a wrong embedding
        fut.set_result((i, 1000 + i % 2, 1, dim, 1.0, 0.01))
        return fut

    run = tr.replay(replies.wrap(submit, txt), arr, timeout=10)
    assert run.ok == [True, True, False] and "wrong result" in run.errors[2]
    assert replies.loads == {1000: 1, 1001: 1} and replies.exec_s == pytest.approx(0.02)


def test_model_mode_replay_loads_the_model_once_per_replica(ray_cluster):
    """Model mode, small: each request embeds a text on an @nbs.remote class replica that
    loaded all-MiniLM-L6-v2 once (its reply names its process and its model loads)."""
    pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed")
    try:
        tr.model_dir()
    except Skip as e:
        pytest.skip(str(e))
    arr = arrivals("conv", 24, 20.0)  # about 0.4 s of arrivals
    replies = tr.Replies()
    rep = tr.run_nbs(
        "conv", arr, "nbs fixed, model", speedup=20.0, mode="model", replies=replies,
        max_replicas=2, keep_alive=5.0, timeout=180.0,
    )  # fmt: skip
    check_report(rep, len(arr))
    assert rep["cold_starts"] >= 1
    assert 1 <= len(replies.loads) <= rep["peak_replicas"] <= 2
    assert set(replies.loads.values()) == {1}, replies.summary()  # once per replica process
    assert replies.exec_s > 0
