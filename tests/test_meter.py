"""The meter fed real events: counters, quantiles, replica lifetimes, cost, scopes."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest

from nbserverless.metering import pricing
from nbserverless.metering.meter import FOLD_AT, METER, Meter

QUANTILE_FIELDS = [
    f"{prefix}{q}_ms" for prefix in ("", "queue_", "cold_", "exec_") for q in ("p50", "p95", "p99")
]
STATS_FIELDS = [
    "name", "kind", "invocations", "errors", "retries", "cold_starts", "in_flight", "queued",
    "replicas", "peak_replicas", "replica_seconds_busy", "replica_seconds_idle", *QUANTILE_FIELDS,
    "cost", "cost_busy", "cost_idle", "cost_requests", "always_on_cost", "saving", "first_call",
    "cpus", "gpus", "memory", "items_per_s",
]  # fmt: skip


@pytest.fixture(autouse=True)
def unit_prices():
    """1 USD per cpu-second, nothing else: costs are replica-seconds × cpus."""
    pricing.set_prices(cpu=1.0, memory=0.0, gpu=0.0, request=0.0)
    yield
    pricing.reset()


def call(fm, n=1, total_s=0.01, **kw):
    fm.submitted(n)
    fm.dispatched(n)
    fm.finished(n, total_s=total_s, **kw)


def test_snapshot_has_every_stats_field_and_is_json():
    fm = Meter().function("k", name="square")
    snap = fm.snapshot(now=1.0)
    assert [f for f in STATS_FIELDS if f not in snap] == []
    for f in QUANTILE_FIELDS:
        assert snap[f] == 0.0  # empty sketch: 0.0, never None/NaN
    json.dumps(snap, allow_nan=False)


def test_counters_follow_the_call_lifecycle():
    fm = Meter().function("k", name="f")
    fm.submitted(5)
    assert (fm.snapshot()["queued"], fm.snapshot()["in_flight"]) == (5, 0)
    fm.dispatched(3)
    s = fm.snapshot()
    assert (s["queued"], s["in_flight"]) == (2, 3)
    fm.retried(1)  # a replica died under one item
    s = fm.snapshot()
    assert (s["queued"], s["in_flight"], s["retries"]) == (3, 2, 1)
    fm.finished(2, errors=1, total_s=0.1, cold=True)
    fm.cancelled(3, was_queued=True)
    s = fm.snapshot()
    assert s["invocations"] == 2
    assert s["errors"] == 1
    assert s["cold_starts"] == 2
    assert s["cancellations"] == 3
    assert (s["queued"], s["in_flight"]) == (0, 0)


def test_cost_busy_idle_by_hand():
    fm = Meter().function("k", name="f", cpus=1)
    fm.replica_started("r1", t=100.0)
    fm.replica_busy("r1", t=100.5)
    fm.replica_idle("r1", t=101.0)
    fm.replica_stopped("r1", t=102.0)
    s = fm.snapshot(now=200.0)  # stopped: nothing accrues any more
    assert s["replica_seconds_busy"] == pytest.approx(0.5)
    assert s["replica_seconds_idle"] == pytest.approx(1.5)
    assert s["cost_busy"] == pytest.approx(0.5)
    assert s["cost_idle"] == pytest.approx(1.5)
    assert s["cost"] == pytest.approx(2.0)
    assert s["replicas"] == 0 and s["peak_replicas"] == 1


def test_live_replicas_accrue_until_now_with_cpus_and_memory():
    pricing.set_prices(cpu=1.0, memory=0.5)
    fm = Meter().function("k", name="f", cpus=2, memory="4GiB")  # 2×1 + 4×0.5 = 4 USD/s
    fm.replica_started("a", t=10.0)
    fm.replica_started("b", t=11.0)
    fm.replica_busy("a", t=11.0)  # still busy at snapshot time
    s = fm.snapshot(now=12.0)
    assert s["replica_seconds_busy"] == pytest.approx(1.0)
    assert s["replica_seconds_idle"] == pytest.approx(2.0)  # a: 1 s start-up, b: 1 s
    assert s["cost_busy"] == pytest.approx(4.0)
    assert s["cost_idle"] == pytest.approx(8.0)
    assert s["replicas"] == 2 and s["peak_replicas"] == 2


def test_memory_none_bills_the_price_lists_default_memory():
    pricing.set_prices(cpu=0.0, memory=8.0)
    fm = Meter().function("k", name="f", cpus=1, memory=None)
    fm.replica_started("r", t=0.0)
    fm.replica_stopped("r", t=1.0)
    expected = 8.0 * pricing.current().default_memory_gib  # 0.125 GiB -> 1.0
    assert fm.snapshot(now=1.0)["cost"] == pytest.approx(expected) == pytest.approx(1.0)


def test_gpu_price_by_type():
    pricing.set_prices(cpu=0.0, gpu={"A100-80GB": 3.0, "default": 7.0})
    m = Meter()
    a = m.function("a", name="a", gpus=2, gpu_type="NVIDIA_A100_80G")
    b = m.function("b", name="b", gpus=1, gpu_type="some-future-gpu")
    for fm in (a, b):
        fm.replica_started("r", t=0.0)
        fm.replica_stopped("r", t=1.0)
    assert a.snapshot(now=1.0)["cost"] == pytest.approx(6.0)
    assert b.snapshot(now=1.0)["cost"] == pytest.approx(7.0)


def test_request_price_and_always_on_and_saving():
    pricing.set_prices(cpu=1.0, request=0.1)
    fm = Meter().function("k", name="f", cpus=1)
    fm.submitted(10, t=0.0)  # first call at t=0
    fm.dispatched(10)
    fm.replica_started("r1", t=0.0)
    fm.replica_started("r2", t=1.0)
    fm.replica_stopped("r2", t=3.0)
    fm.replica_stopped("r1", t=4.0)
    fm.finished(10, total_s=0.1)
    s = fm.snapshot(now=10.0)
    assert s["cost_requests"] == pytest.approx(1.0)
    assert s["cost"] == pytest.approx(4.0 + 2.0 + 1.0)
    assert s["always_on_cost"] == pytest.approx(2 * 10.0 * 1.0)  # peak 2, from t=0 to now
    assert s["saving"] == pytest.approx(1 - 7.0 / 20.0)
    assert s["first_call"] == 0.0


def test_saving_is_zero_without_always_on_cost():
    fm = Meter().function("k", name="f")
    fm.replica_started("r", t=0.0)
    s = fm.snapshot(now=1.0)  # no call yet: no always-on equivalent
    assert s["always_on_cost"] == 0.0 and s["saving"] == 0.0 and s["cost"] == pytest.approx(1.0)


def test_price_change_applies_to_whole_history():
    fm = Meter().function("k", name="f", cpus=1)
    fm.replica_started("r", t=0.0)
    fm.replica_stopped("r", t=2.0)
    assert fm.snapshot(now=2.0)["cost"] == pytest.approx(2.0)
    pricing.set_prices(cpu=3.0)
    assert fm.snapshot(now=2.0)["cost"] == pytest.approx(6.0)


def test_quantiles_from_the_sketch():
    fm = Meter().function("k", name="f")
    for ms in range(1, 101):
        call(fm, total_s=ms / 1000, queue_s=ms / 10000, exec_s=ms / 2000)
    s = fm.snapshot()
    assert s["p50_ms"] == pytest.approx(50, rel=0.03)
    assert s["p95_ms"] == pytest.approx(95, rel=0.03)
    assert s["p99_ms"] == pytest.approx(99, rel=0.03)
    assert s["queue_p50_ms"] == pytest.approx(5, rel=0.03)
    assert s["exec_p95_ms"] == pytest.approx(47.5, rel=0.03)
    assert s["cold_p50_ms"] == 0.0  # no cold call


def test_weighted_finished_counts_items_and_cold_quantiles_only_cold_calls():
    fm = Meter().function("k", name="f")
    call(fm, n=1000, total_s=0.2)  # one map chunk of 1000 items, 200 ms each
    call(fm, n=20, total_s=3.0, cold=True, cold_s=2.5)  # 2% of the items: above p99
    s = fm.snapshot()
    assert s["invocations"] == 1020 and s["cold_starts"] == 20
    assert s["p50_ms"] == pytest.approx(200, rel=0.02)
    assert s["p99_ms"] == pytest.approx(3000, rel=0.02)
    assert s["cold_p50_ms"] == pytest.approx(2500, rel=0.02)


def test_buffer_is_bounded_and_folds_lazily():
    fm = Meter().function("k", name="f")
    for _ in range(FOLD_AT * 2 + 10):
        fm.finished(1, total_s=0.001)
        assert len(fm._buf) < FOLD_AT
    assert 0 < len(fm._buf) < FOLD_AT  # not folded until read
    assert fm.snapshot()["invocations"] == FOLD_AT * 2 + 10
    assert fm._buf == []


def test_hooks_are_thread_safe():
    fm = Meter().function("k", name="f")
    threads = [
        threading.Thread(target=lambda: [call(fm, total_s=0.005) for _ in range(5000)])
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = fm.snapshot()
    assert s["invocations"] == 20000 and s["queued"] == 0 and s["in_flight"] == 0
    assert fm._sk.total.count == 20000
    assert s["p50_ms"] == pytest.approx(5, rel=0.02)


def test_finished_is_cheap():
    fm = Meter().function("k", name="f")
    n = 50_000
    t0 = time.perf_counter()
    for _ in range(n):
        fm.finished(1, total_s=0.001, queue_s=0.0001, exec_s=0.0008)
    per_call = (time.perf_counter() - t0) / n
    assert per_call < 50e-6  # a few µs in practice; generous for a shared machine


def test_version_changes_on_every_record():
    m = Meter()
    fm = m.function("k", name="f")
    seen = [m.version]
    for hook in (fm.submitted, fm.dispatched, lambda: fm.finished(1, total_s=0.1)):
        hook()
        assert m.version != seen[-1]
        seen.append(m.version)


def test_scope_counts_only_its_own_calls():
    m = Meter()
    fm = m.function("k", name="f")
    for _ in range(100):
        call(fm, total_s=1.0)  # before the cell: slow calls
    call(fm, total_s=1.0)  # still buffered (not folded) when the scope opens
    assert fm._buf
    scope = m.open_scope()
    for _ in range(10):
        call(fm, total_s=0.01)
    snap = scope.snapshot()
    (row,) = snap["functions"]
    assert row["invocations"] == 10
    assert row["p50_ms"] == pytest.approx(10, rel=0.02)
    assert fm.snapshot()["p50_ms"] == pytest.approx(1000, rel=0.02)
    final = scope.close()
    call(fm, total_s=0.01)  # after close: frozen
    assert scope.snapshot() == final and final["functions"][0]["invocations"] == 10
    assert final["totals"]["invocations"] == 10


def test_scope_cost_is_the_delta():
    m = Meter()
    fm = m.function("k", name="f", cpus=1)
    fm.replica_started("r", t=0.0)
    scope = m.open_scope(now=5.0)
    fm.submitted()
    fm.replica_busy("r", t=6.0)
    fm.replica_idle("r", t=7.0)
    (row,) = scope.close(now=8.0)["functions"]
    assert row["replica_seconds_busy"] == pytest.approx(1.0)
    assert row["replica_seconds_idle"] == pytest.approx(2.0)
    assert row["cost"] == pytest.approx(3.0)


def test_scope_lists_only_active_functions():
    m = Meter()
    quiet, busy = m.function("q", name="quiet"), m.function("b", name="busy")
    call(quiet)
    scope = m.open_scope()
    call(busy)
    new = m.function("n", name="new")  # created inside the cell
    call(new)
    assert [r["name"] for r in scope.close()["functions"]] == ["busy", "new"]


def test_on_activity_fires_once_per_function_per_scope_in_the_recording_thread():
    m = Meter()
    fm, other = m.function("a", name="a"), m.function("b", name="b")
    calls = []
    m.on_activity = lambda f: calls.append((f.name, threading.get_ident()))
    fm.submitted()  # no scope open: nothing
    assert calls == []
    m.open_scope()
    fm.submitted()
    fm.submitted()
    t = threading.Thread(target=other.submitted)
    t.start()
    t.join()
    assert calls == [("a", threading.get_ident()), ("b", t.ident)]
    m.open_scope()
    fm.submitted()
    assert [c[0] for c in calls] == ["a", "b", "a"]


def test_on_activity_errors_do_not_break_calls():
    m = Meter()
    m.on_activity = lambda f: 1 / 0
    m.open_scope()
    fm = m.function("a", name="a")
    fm.submitted()  # must not raise
    assert fm.snapshot()["queued"] == 1


def test_reset_zeroes_numbers_and_rebills_live_replicas():
    m = Meter()
    fm = m.function("k", name="f", cpus=1)
    fm.replica_started("r", t=0.0)
    fm.replica_busy("r", t=1.0)
    call(fm, n=5, total_s=0.5)
    m.reset(now=10.0)
    s = fm.snapshot(now=12.0)
    assert s["invocations"] == 0 and s["p50_ms"] == 0.0
    assert s["replicas"] == 1 and s["peak_replicas"] == 1
    assert s["replica_seconds_busy"] == pytest.approx(2.0)  # busy since the reset
    assert s["cost"] == pytest.approx(2.0)


def test_platform_overhead_is_apart_from_functions():
    m = Meter()
    fm = m.function("k", name="f", cpus=1)
    fm.replica_started("r", t=0.0)
    m.platform.replica_started("warm-1", t=0.0)
    snap = m.snapshot(now=3.0)
    assert [f["name"] for f in snap["functions"]] == ["f"]
    assert snap["platform"]["replicas"] == 1
    assert snap["totals"]["replicas"] == 1
    assert snap["totals"]["cost"] == pytest.approx(3.0)
    assert snap["totals"]["platform_cost"] == pytest.approx(3.0)
    assert snap["totals"]["cost_with_platform"] == pytest.approx(6.0)
    json.dumps(snap, allow_nan=False)


def test_function_is_get_or_create_and_updates_only_given_fields():
    m = Meter()
    a = m.function("k", name="f", cpus=2, memory="1GiB")
    b = m.function("k")
    assert a is b and b.cpus == 2.0 and b.memory == "1GiB" and b.name == "f"
    m.function("k", gpus=1)
    assert (a.cpus, a.gpus) == (2.0, 1.0)


def test_module_meter_exists():
    assert isinstance(METER, Meter)
    assert not math.isnan(METER.snapshot()["totals"]["saving"])


# -- exact cost on the real cluster (1 USD per cpu-second) --------------------------------------


@pytest.mark.parametrize("prewarm", [2, 0])
def test_two_short_calls_then_idle_cost_no_more_than_always_on(ray_cluster, prewarm):
    from conftest import wait_until

    import nbserverless as nbs
    from nbserverless.core import warm
    from nbserverless.core.loop import SUPERVISOR

    nbs.config(prewarm=prewarm)
    if prewarm:  # the default config: the call claims a warm replica
        SUPERVISOR.ensure_running()
        wait_until(lambda: warm.STOCK.available() >= 1, timeout=90, what="a warm replica")

    @nbs.remote(cpus=1, keep_alive=60)
    def work(x):
        time.sleep(0.5)
        return x

    assert work(1) == 1 and work(2) == 2
    pool = work._get_pool()
    assert pool.claims == (1 if prewarm else 0)
    for idle_s in (0.0, 1.0, 10.0):  # then idle (the meter reads any later moment)
        now = time.time() + idle_s
        s = pool.meter.snapshot(now=now)
        assert s["replicas"] == 1 and s["peak_replicas"] == 1
        assert s["cost"] <= s["always_on_cost"] + 1e-9
        assert s["saving"] >= -1e-9
        wall = now - min(s["first_call"], pool.meter.first_billed)
        assert s["replica_seconds_busy"] <= s["peak_replicas"] * wall + 1e-9
        assert s["replica_seconds_busy"] >= 1.0 - 0.05  # two calls of 0.5 s, billed busy
        assert s["cost"] == pytest.approx(s["replica_seconds_busy"] + s["replica_seconds_idle"])
    platform = METER.platform.snapshot()
    assert platform["cost"] == 0.0  # warm replicas hold no CPU: unclaimed time is no cost
