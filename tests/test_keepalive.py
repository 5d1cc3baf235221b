"""The learned keep-alive (core/keepalive.py) on synthetic gap sequences: pure, no cluster."""

from __future__ import annotations

import doctest
import math
import random

import pytest

from nbserverless.core import keepalive
from nbserverless.core.keepalive import GapHistogram, LearnedKeepAlive


def feed(ka: LearnedKeepAlive, times: list[float]) -> None:
    for t in times:
        ka.observe_call(t)


def simulate(policy, calls: list[float], fixed_s: float | None = None, tick: float = 0.5):
    """One replica, instant calls: (cold starts, idle replica-seconds) after ``calls``, with the
    learned ``policy`` or a fixed keep-alive. The replica goes once idle for the keep-alive;
    a pre-warm order starts one (idle) at ``prewarm_at``. Ticks every ``tick`` seconds."""
    up, idle_since, cold, idle = False, 0.0, 0, 0.0
    t, i = calls[0], 0
    end = calls[-1]
    while i < len(calls):
        if calls[i] <= t:  # a call now
            if not up:
                cold += 1
                up = True
            idle += t - idle_since if idle_since <= t else 0.0
            if policy is not None:
                policy.observe_call(t)
            idle_since = t
            i += 1
            continue
        if up:
            keep = fixed_s if policy is None else policy.decide(t).keep_alive_s
            if t - idle_since >= keep:
                idle += t - idle_since
                up = False
        elif policy is not None:
            d = policy.decide(t)
            if d.prewarm_at is not None and d.prewarm_at <= t:
                up, idle_since = True, t
        t = min(t + tick, calls[i]) if t < end else t + tick
    return cold, idle


def test_module_doctests_hold():
    failed, tried = doctest.testmod(keepalive)
    assert tried >= 5 and failed == 0


def test_too_few_samples_uses_the_fixed_value():
    ka = LearnedKeepAlive(fallback_s=45, min_samples=10)
    d = ka.decide(0.0)
    assert (d.keep_alive_s, d.prewarm_at, d.learned) == (45.0, None, False)
    feed(ka, [0.0, 20.0, 25.0])  # two gaps
    d = ka.decide(26.0)
    assert not d.learned and d.keep_alive_s == 45.0
    assert d.label == "keep-alive 45 s (fixed, learning 2/10)"


def test_one_off_burst_has_no_idle_gaps_and_keeps_the_fixed_value():
    # a map of 200 items: one busy period, not 199 tiny gaps
    ka = LearnedKeepAlive(fallback_s=60)
    feed(ka, [i * 0.01 for i in range(200)])
    d = ka.decide(3.0)
    assert ka.busy_gaps == 199 and ka.hist.count == 0
    assert not d.learned and d.keep_alive_s == 60.0


def test_bursty_keeps_past_every_recent_gap_and_no_prewarm():
    rng = random.Random(7)
    ka = LearnedKeepAlive(fallback_s=2)
    t, gaps = 0.0, []
    for _ in range(30):
        for _ in range(20):  # a burst: 20 calls 50 ms apart
            ka.observe_call(t)
            t += 0.05
        g = rng.uniform(3, 40)
        gaps.append(g)
        t += g
    d = ka.decide(t)
    assert d.learned and d.prewarm_at is None
    biggest = max(gaps[:-1])  # the last gap has not ended with a call yet
    assert biggest <= d.keep_alive_s <= biggest * 1.1 * 1.1 + 1e-9
    assert d.label == f"keep-alive {keepalive.fmt_seconds(d.keep_alive_s)} (learned)"


def test_periodic_long_gaps_release_at_once_and_prewarm_before_the_next_call():
    rng = random.Random(3)
    ka = LearnedKeepAlive(fallback_s=60, start_s=1.0)
    t = 0.0
    for _ in range(20):
        ka.observe_call(t)
        t += 120 + rng.uniform(-2, 2)
    last = ka._last_call
    d = ka.decide(last + 1)
    assert d.learned and d.keep_alive_s == 0.0
    assert d.prewarm_at is not None
    assert last + 90 < d.prewarm_at < last + 118 - 1  # before the earliest expected call
    assert "pre-warm in" in d.label
    # inside the window: the pre-warmed replica stays past the latest expected call
    w = ka.decide(d.prewarm_at + 0.5)
    assert w.keep_alive_s > 0 and w.prewarm_at == d.prewarm_at
    assert w.prewarm_at + w.keep_alive_s > last + 122
    assert "pre-warmed for" in w.label
    # the call never came: nothing kept, nothing to warm
    gone = ka.decide(last + 400)
    assert gone.keep_alive_s == 0.0 and gone.prewarm_at is None and gone.learned


def test_periodic_learned_beats_fixed_on_cold_starts_and_idle_time():
    calls = [i * 120.0 for i in range(60)]
    cold_f, idle_f = simulate(None, calls, fixed_s=60)
    cold_l, idle_l = simulate(LearnedKeepAlive(fallback_s=60), calls)
    assert cold_f == 60  # every call outlives a 60 s keep-alive
    assert cold_l <= 12  # cold until it has learned (10 gaps), warm after
    assert idle_l < 0.4 * idle_f  # released at once, warm only around the expected call


def test_short_regular_gaps_are_kept_not_released():
    # 4 s apart: shorter than releasing pays for (release_min_s) -> plain keep-alive
    ka = LearnedKeepAlive(fallback_s=60)
    feed(ka, [i * 4.0 for i in range(30)])
    d = ka.decide(116.5)
    assert d.learned and d.prewarm_at is None
    assert 4.0 <= d.keep_alive_s <= 4.0 * 1.1 * 1.1


def test_drift_follows_the_recent_window_both_ways():
    ka = LearnedKeepAlive(fallback_s=60, window=50)
    t = 0.0
    for _ in range(60):  # 5 s apart
        ka.observe_call(t)
        t += 5.0
    assert ka.decide(t).keep_alive_s < 7
    for _ in range(60):  # now 60 s apart, regular: release and pre-warm
        ka.observe_call(t)
        t += 60.0
    d = ka.decide(ka._last_call + 1)
    assert d.keep_alive_s == 0.0 and d.prewarm_at is not None
    assert ka._last_call + 45 < d.prewarm_at < ka._last_call + 59
    for i in range(60):  # back to irregular 2-8 s: keep-alive around the new tail only
        ka.observe_call(t)
        t += 2.0 + (i * 5) % 7
    d = ka.decide(t)
    assert d.prewarm_at is None and 8 <= d.keep_alive_s <= 8 * 1.1 * 1.1 + 1e-9
    assert ka.hist.count == 50 and ka.hist.oob == 0


def test_out_of_bounds_gaps_regular_prewarm_irregular_release_soon():
    ka = LearnedKeepAlive(fallback_s=60, hi_s=3600)
    feed(ka, [i * 7200.0 for i in range(12)])
    last = ka._last_call
    d = ka.decide(last + 10)
    assert ka.hist.oob == 11
    assert d.keep_alive_s == 0.0 and d.prewarm_at == pytest.approx(last + 7200 * 0.9 - 1.0)
    rng = random.Random(1)
    ka = LearnedKeepAlive(fallback_s=60, hi_s=3600, min_s=1.0)
    t = 0.0
    for _ in range(12):
        ka.observe_call(t)
        t += rng.uniform(3700, 40000)
    d = ka.decide(t)
    assert d.learned and d.prewarm_at is None and d.keep_alive_s == 1.0


def test_keep_alive_is_capped():
    ka = LearnedKeepAlive(fallback_s=60, cap_s=300)
    rng = random.Random(5)
    feed(ka, [0.0] + [x for x in _cumsum(rng.uniform(5, 3000) for _ in range(20))])
    d = ka.decide(1e6)
    assert d.learned and d.prewarm_at is None and d.keep_alive_s == 300.0


def _cumsum(xs):
    t = 0.0
    for x in xs:
        t += x
        yield t


def test_gap_runs_from_the_end_of_activity_when_told():
    ka = LearnedKeepAlive(min_samples=1)
    ka.observe_call(0.0)
    ka.observe_idle(50.0)
    ka.observe_call(60.0)
    assert list(ka.hist.recent) == [10.0]
    ka.observe_idle_gap(33.0)
    assert list(ka.hist.recent) == [10.0, 33.0]
    fed = LearnedKeepAlive(min_samples=3)  # measured gaps only, no calls seen
    for g in (5.0, 6.0, 7.0):
        fed.observe_idle_gap(g)
    d = fed.decide(100.0)
    assert d.learned and 7.0 <= d.keep_alive_s <= 7.0 * 1.1 * 1.1


def test_histogram_is_bounded_and_evicts():
    h = GapHistogram(lo_s=1, hi_s=100, ratio=1.5, window=5)
    n_bins = len(h.bins)
    for g in [2, 3, 500, 50, 80, 90, 95, 700]:
        h.add(g)
    assert h.count == 5 and len(h.bins) == n_bins
    assert sum(h.bins) + h.oob == 5 and h.oob == 1  # 500 left, 700 in
    assert h.percentile(0.2, upper=False) <= 50 <= h.percentile(0.2)
    assert h.percentile(1.0) == math.inf
    assert math.isnan(GapHistogram().percentile(0.5))
    with pytest.raises(ValueError):
        GapHistogram(lo_s=10, hi_s=1)


def test_labels_read_well():
    assert keepalive.fmt_seconds(40.2) == "40 s"
    assert keepalive.fmt_seconds(0.4) == "0.4 s"
    assert keepalive.fmt_seconds(2.0) == "2 s"
    assert keepalive.fmt_seconds(600) == "10 min"
