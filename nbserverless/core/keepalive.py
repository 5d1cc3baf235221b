"""The learned keep-alive: how long an idle replica of one function stays, learned from the
histogram of the function's idle gaps — the "hybrid histogram" policy of Shahrad et al.,
*Serverless in the Wild* (USENIX ATC 2020), on seconds-scale bins suited to notebooks.

PURE: no Ray, no threads, no clock reads; every time is an argument (``now``, any monotonic
clock in seconds, the same one for every call of one instance).

The decision, per function:

- fewer than ``min_samples`` idle gaps seen: the fixed ``fallback_s`` (not learned);
- gaps long and regular (head percentile well above the start-up time, low coefficient of
  variation): release the replica at once and pre-warm one just before the expected next call
  (``prewarm_at`` = last call + head × (1 - margin) - ``start_s``), kept until the tail of the
  expected window (tail × (1 + margin));
- otherwise: keep-alive = the 99th percentile of recent gaps × (1 + margin), between
  ``min_s`` and ``cap_s``;
- gaps beyond the histogram's range (out of bounds) in the majority: predict the next gap as
  their median (the paper uses ARIMA there) and pre-warm for it if they are regular, else
  release soon (``min_s``): keeping a replica for hours costs more than one cold start.

An idle gap is the time from the end of the function's last activity to its next call; calls
closer than ``min_s`` to the previous one continue the same busy period and are not idle gaps
(a burst of a map is one busy period, not hundreds of tiny gaps that would hide the long ones).

Example::

    >>> ka = LearnedKeepAlive(fallback_s=60)
    >>> for t in range(0, 600, 30):   # one call every 30 s
    ...     ka.observe_call(float(t))
    >>> d = ka.decide(571.0)
    >>> d.keep_alive_s, round(d.prewarm_at, 1), d.learned
    (0.0, 594.3, True)
    >>> d.label
    'keep-alive 0 s, pre-warm in 23 s (learned)'
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

__all__ = ["Decision", "GapHistogram", "LearnedKeepAlive", "fmt_seconds"]


@dataclass(frozen=True)
class Decision:
    """What the pool does with an idle replica of one function at ``now``.

    ``keep_alive_s``: an idle replica goes once it has been idle this long.
    ``prewarm_at``: if not None, one replica should be up (started in advance, idle) from this
    time (same clock as ``now``) until ``prewarm_at + keep_alive_s``; a standing order that the
    pool may act on at any tick at or after it.
    ``learned``: False while the fixed fallback is in force.
    ``label``: for widgets, e.g. ``"keep-alive 40 s (learned)"``.
    """

    keep_alive_s: float
    prewarm_at: float | None
    learned: bool
    label: str
    reason: str = ""


def fmt_seconds(s: float) -> str:
    """``fmt_seconds(40.2)`` -> ``'40 s'``; ``fmt_seconds(0.4)`` -> ``'0.4 s'``; minutes above 120 s."""
    if s >= 120:
        return f"{s / 60:.0f} min"
    if s >= 10 or s == 0:
        return f"{s:.0f} s"
    return f"{s:.1f} s".replace(".0 s", " s")


class GapHistogram:
    """A sliding-window histogram of the last ``window`` idle gaps: log-spaced bins from
    ``lo_s`` to ``hi_s`` (each ``ratio`` wide), an out-of-bounds count for gaps ``>= hi_s``,
    and running sums for the mean and CV. Memory is bounded by ``window`` + the bins.

    Example::

        >>> h = GapHistogram(lo_s=1, hi_s=3600)
        >>> for g in (10, 10, 12, 11):
        ...     h.add(g)
        >>> round(h.percentile(0.5)), h.count
        (11, 4)
    """

    def __init__(
        self, lo_s: float = 1.0, hi_s: float = 3600.0, ratio: float = 1.1, window: int = 100
    ):
        if not (0 < lo_s < hi_s) or ratio <= 1 or window < 1:
            raise ValueError("need 0 < lo_s < hi_s, ratio > 1, window >= 1")
        self.lo_s, self.hi_s, self.ratio = float(lo_s), float(hi_s), float(ratio)
        self.n_bins = math.ceil(math.log(hi_s / lo_s) / math.log(ratio))
        self.bins = [0] * self.n_bins
        self.oob = 0
        self.recent: deque[float] = deque(maxlen=window)
        self._sum = 0.0
        self._sumsq = 0.0

    @property
    def count(self) -> int:
        """Gaps in the window (in range and out of bounds)."""
        return len(self.recent)

    def _bin(self, gap: float) -> int | None:
        if gap >= self.hi_s:
            return None
        if gap <= self.lo_s:
            return 0
        return min(self.n_bins - 1, int(math.log(gap / self.lo_s) / math.log(self.ratio)))

    def _edge(self, i: int) -> float:
        return self.lo_s * self.ratio**i

    def add(self, gap: float) -> None:
        """Record one gap (seconds); the oldest leaves the window when it is full."""
        gap = max(0.0, float(gap))
        if len(self.recent) == self.recent.maxlen:
            self._move(self.recent[0], -1)
        self.recent.append(gap)
        self._move(gap, +1)

    def _move(self, gap: float, d: int) -> None:
        i = self._bin(gap)
        if i is None:
            self.oob += d
        else:
            self.bins[i] += d
            self._sum += d * gap
            self._sumsq += d * gap * gap

    def percentile(self, q: float, upper: bool = True) -> float:
        """The ``q`` quantile (0..1) of the window, to bin precision: the bin's upper edge
        (``upper``, conservative for a tail) or lower edge (for a head); ``inf`` if it falls
        among the out-of-bounds gaps, ``nan`` if empty."""
        n = self.count
        if n == 0:
            return math.nan
        rank = max(1, math.ceil(q * n))
        seen = 0
        for i, c in enumerate(self.bins):
            seen += c
            if seen >= rank:
                return self._edge(i + 1 if upper else i)
        return math.inf

    def in_range_cv(self) -> float:
        """Coefficient of variation (std / mean) of the in-range gaps; ``inf`` if fewer than 2."""
        m = self.count - self.oob
        if m < 2:
            return math.inf
        mean = self._sum / m
        var = max(0.0, self._sumsq / m - mean * mean)
        return math.sqrt(var) / mean if mean > 0 else math.inf

    def oob_gaps(self) -> list[float]:
        return [g for g in self.recent if g >= self.hi_s]


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    k = len(s) // 2
    return s[k] if len(s) % 2 else (s[k - 1] + s[k]) / 2


def _cv(xs: list[float]) -> float:
    if len(xs) < 2:
        return math.inf
    mean = sum(xs) / len(xs)
    var = sum((x - mean) ** 2 for x in xs) / len(xs)
    return math.sqrt(var) / mean if mean > 0 else math.inf


class LearnedKeepAlive:
    """The hybrid-histogram keep-alive of one function (see the module docstring).

    Feed it ``observe_call(now)`` at each call and ``observe_idle(now)`` when the function has
    nothing in flight any more (optional: without it gaps run call to call); or feed measured
    gaps with ``observe_idle_gap(gap_s)``. Ask ``decide(now)``.

    Example::

        >>> ka = LearnedKeepAlive(fallback_s=60, min_samples=3)
        >>> ka.decide(0.0).label
        'keep-alive 60 s (fixed, learning 0/3)'
        >>> for t in (0, 5, 13, 40, 42):
        ...     ka.observe_call(float(t))
        >>> ka.decide(42.0).label
        'keep-alive 31 s (learned)'
    """

    def __init__(
        self,
        fallback_s: float = 60.0,
        *,
        min_samples: int = 10,
        window: int = 100,
        tail: float = 0.99,
        head: float = 0.05,
        margin: float = 0.1,
        min_s: float = 1.0,
        cap_s: float = 600.0,
        hi_s: float = 3600.0,
        cv_regular: float = 0.3,
        release_min_s: float = 10.0,
        start_s: float = 1.0,
    ):
        if min_samples < 1 or not (0 < head < tail <= 1) or margin < 0:
            raise ValueError("need min_samples >= 1, 0 < head < tail <= 1, margin >= 0")
        self.fallback_s = float(fallback_s)
        self.min_samples = min_samples
        self.tail, self.head, self.margin = tail, head, margin
        self.min_s, self.cap_s = float(min_s), float(max(cap_s, min_s))
        self.cv_regular = cv_regular
        self.release_min_s = release_min_s
        self.start_s = start_s
        self.hist = GapHistogram(lo_s=min_s, hi_s=hi_s, window=window)
        self.calls = 0
        self.busy_gaps = 0  # calls within min_s of the previous activity (same busy period)
        self._last_call: float | None = None
        self._last_idle: float | None = None

    # ------------------------------------------------------------------ observations
    def observe_call(self, now: float) -> None:
        """A call arrived at ``now``."""
        ref = self._last_activity()
        self.calls += 1
        self._last_call = now
        if ref is not None:
            self._gap(now - ref)

    def observe_idle(self, now: float) -> None:
        """The function has nothing in flight any more (its last call finished) at ``now``."""
        self._last_idle = now

    def observe_idle_gap(self, gap_s: float) -> None:
        """Record a measured idle gap directly (e.g. the pool's own idle period)."""
        self._gap(gap_s)

    def _last_activity(self) -> float | None:
        if self._last_idle is not None and self._last_call is not None:
            return max(self._last_idle, self._last_call)
        return self._last_call if self._last_call is not None else self._last_idle

    def _gap(self, gap: float) -> None:
        if gap < self.min_s:
            self.busy_gaps += 1
        else:
            self.hist.add(gap)

    # ------------------------------------------------------------------ the decision
    def decide(self, now: float) -> Decision:
        """The keep-alive in force at ``now`` (and a pre-warm time, if any)."""
        h = self.hist
        if h.count < self.min_samples:
            return self._fixed(f"learning {h.count}/{self.min_samples}")
        last = self._last_activity()
        last = now if last is None else last  # gaps fed by observe_idle_gap alone
        if h.oob * 2 > h.count:  # mostly beyond the histogram's range
            oob = h.oob_gaps()
            pred = _median(oob)
            if _cv(oob) <= self.cv_regular:
                return self._prewarm(now, last, pred, pred, "long regular gaps (out of range)")
            return self._learned(self.min_s, None, now, "long irregular gaps: release soon")
        lo = h.percentile(self.head, upper=False)
        hi = h.percentile(self.tail, upper=True)
        early = lo * (1 - self.margin) - self.start_s
        if h.in_range_cv() <= self.cv_regular and early >= self.release_min_s:
            return self._prewarm(now, last, lo, hi, "long regular gaps")
        keep = min(self.cap_s, max(self.min_s, hi * (1 + self.margin)))
        return self._learned(keep, None, now, f"p{self.tail * 100:.0f} of recent gaps")

    def keep_alive_s(self, now: float) -> float:
        """Shortcut: ``decide(now).keep_alive_s``."""
        return self.decide(now).keep_alive_s

    def _prewarm(self, now: float, last: float, lo: float, hi: float, why: str) -> Decision:
        start = last + lo * (1 - self.margin) - self.start_s
        end = last + min(hi * (1 + self.margin), self.cap_s + lo)
        if now >= end:  # the expected call did not come: nothing to keep, nothing to warm
            return self._learned(0.0, None, now, why + "; expected call missed")
        return self._learned(0.0 if now < start else end - start, start, now, why, end=end)

    def _fixed(self, why: str) -> Decision:
        return Decision(
            self.fallback_s,
            None,
            False,
            f"keep-alive {fmt_seconds(self.fallback_s)} (fixed, {why})",
            why,
        )

    def _learned(
        self, keep: float, prewarm_at: float | None, now: float, why: str, end: float = 0.0
    ) -> Decision:
        label = f"keep-alive {fmt_seconds(keep)}"
        if prewarm_at is not None:
            if now < prewarm_at:
                label = f"keep-alive 0 s, pre-warm in {fmt_seconds(prewarm_at - now)}"
            else:
                label = f"pre-warmed for {fmt_seconds(max(0.0, end - now))}"
        return Decision(keep, prewarm_at, True, label + " (learned)", why)
