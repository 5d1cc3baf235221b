"""The live dashboard (``nbs.dashboard()``, ``%serverless status``): every function of this
kernel, the cluster and its nodes, totals, platform overhead, and plots over time.

Live in a notebook (an ``ipywidgets.HTML`` refreshed ≤ 2 times a second by a daemon thread),
a text table elsewhere. Example::

    d = nbs.dashboard(); d.refresh(); print(d.text()); d.close()
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from typing import Any

from ..metering import format as fmt
from ..metering.meter import METER
from . import render
from .widgets import _budget_line, rich_display

__all__ = ["dashboard", "Dashboard"]

log = logging.getLogger(__name__)

DASHBOARD_INTERVAL = 0.5  # s between dashboard refreshes (≤ 2/s)
HISTORY_POINTS = 240  # dashboard plot length (one point per second: 4 minutes)


def _cluster() -> dict[str, Any]:
    zeros = {"address": "not connected", "nodes": 0, "cpus": 0, "cpus_used": 0,
             "gpus": 0, "gpus_used": 0, "worker_nodes": 0, "nodes_pending": 0, "nodes_peak": 0,
             "node_history": [], "autoscaling": False, "node_cost": 0.0,
             "node_cost_always_on": 0.0}  # fmt: skip
    try:
        from ..core import cluster

        return {**zeros, **cluster.summary()}
    except Exception:
        return zeros


class Dashboard:
    """All functions of this kernel, the cluster, totals, platform overhead, and plots of
    replicas and latency over time. Live in a notebook (≤ 2 refreshes/s), a text table
    elsewhere. Example: ``d = nbs.dashboard(); d.refresh(); d.close()``."""

    def __init__(self, rich: bool | None = None, interval: float = DASHBOARD_INTERVAL) -> None:
        self.rich = rich_display() if rich is None else rich
        self.interval = interval
        # (t, replicas, latency_ms, calls/s, cold starts so far)
        self.history: deque = deque(maxlen=HISTORY_POINTS)
        self._prev: tuple[float, int, float] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.snapshot: dict[str, Any] = {}
        self.cluster: dict[str, Any] = {}
        self.widget: Any = None
        self.updates = 0
        self._sample(force=True)
        if self.rich:
            import ipywidgets

            self.widget = ipywidgets.HTML(value=self.html())
            self.widget.add_class("nbserverless-dashboard")
            self._thread = threading.Thread(
                target=_dashboard_loop, args=(weakref.ref(self),), daemon=True,
                name="nbserverless-dashboard",
            )  # fmt: skip
            self._thread.start()

    def _sample(self, force: bool = False) -> None:
        now = time.time()
        snap = METER.snapshot(now)
        tot = snap["totals"]
        calls = tot["invocations"]
        lat_sum = sum(f.get("latency_sum_s", 0.0) for f in snap["functions"])
        with self._lock:
            self.snapshot, self.cluster = snap, _cluster()
            if self._prev is None or force or now - self._prev[0] >= 1.0:
                t0, n0, s0 = self._prev or (now, calls, lat_sum)
                dn, dt = calls - n0, max(now - t0, 1e-9)
                lat = (lat_sum - s0) / dn * 1e3 if dn > 0 else 0.0
                rate = dn / dt if self._prev is not None else 0.0
                cold = sum(f.get("cold_starts", 0) for f in snap["functions"])
                self.history.append(
                    (now, tot["replicas"] + tot["platform_replicas"], lat, rate, cold)
                )
                self._prev = (now, calls, lat_sum)

    def refresh(self) -> bool:
        """Sample the meter and the cluster, re-render; True if the widget value changed."""
        self._sample()
        if self.widget is None:
            return False
        html = self.html()
        if html == self.widget.value:
            return False
        self.widget.value = html
        self.updates += 1
        return True

    def close(self) -> None:
        """Stop refreshing (the last rendering stays)."""
        self._stop.set()

    def _rows(self) -> list[tuple]:
        c, lat = render.count, render.latency

        def pending(f: dict[str, Any]) -> str:
            wait = render.waiting_text(f)
            return c(f["in_flight"] + f["queued"]) + (f" · {wait}" if wait else "")

        return [
            (f["name"], f["kind"], c(f["invocations"]), c(f["errors"]), c(f["cancellations"]),
             pending(f), f"{c(f['replicas'])} / {c(f['peak_replicas'])}",
             render.keep_alive_text(f) or fmt.NO_DATA,
             lat(f, "exec_p50_ms"), lat(f, "p50_ms"), lat(f, "p95_ms"), lat(f, "p99_ms"),
             render.money(f["cost"]), render.money(f["always_on_cost"]),
             render.percent(f["saving"] if f["always_on_cost"] else None))
            for f in self.snapshot.get("functions", [])
        ]  # fmt: skip

    _HEAD = ("function", "kind", "calls", "errors", "cancelled", "pending", "replicas now/peak",
             "keep-alive", "p50 run", "p50 total", "p95 total", "p99 total", "cost (est.)",
             "always-on (est.)", "saving")  # fmt: skip

    def _summary(self) -> str:
        c, t = self.cluster, self.snapshot.get("totals", {})
        return (
            f"cluster {c['address']}: {c['nodes']} node(s), CPUs {c['cpus_used']:g}/{c['cpus']:g}, "
            f"GPUs {c['gpus_used']:g}/{c['gpus']:g} in use; replicas {t.get('replicas', 0)} "
            f"(+{t.get('platform_replicas', 0)} prewarmed) · calls "
            f"{render.count(t.get('invocations', 0))} · cost ≈{render.money(t.get('cost'))} + "
            f"platform ≈{render.money(t.get('platform_cost'))} (estimates)"
        )

    def _nodes(self) -> str:
        """Nodes now / pending / peak and the estimated node cost with its always-on twin."""
        c = self.cluster
        auto = " (autoscaling)" if c.get("autoscaling") else ""
        return (
            f"nodes{auto}: {render.count(c.get('nodes'))} now "
            f"({render.count(c.get('worker_nodes'))} worker) · "
            f"{render.count(c.get('nodes_pending'))} pending · peak "
            f"{render.count(c.get('nodes_peak'))} · node cost ≈{render.money(c.get('node_cost'))} "
            f"(always-on ≈{render.money(c.get('node_cost_always_on'))}, estimates)"
        )

    def _node_series(self, now: float, points: int = 60) -> list[float]:
        """Nodes over time from the cluster's ``node_history``, sampled at ``points`` even
        steps from its first change to now (the plot's x axis is time)."""
        hist = [(float(t), float(n)) for t, n in self.cluster.get("node_history") or []]
        if not hist:
            return [float(self.cluster.get("nodes") or 0)] * 2
        t0 = hist[0][0]
        span = max(now - t0, 1e-9)
        out, j = [], 0
        for i in range(points):
            t = t0 + span * i / (points - 1)
            while j + 1 < len(hist) and hist[j + 1][0] <= t:
                j += 1
            out.append(hist[j][1])
        return out

    def _budget(self) -> str:
        return _budget_line()

    def text(self) -> str:
        """The plain-text dashboard."""
        with self._lock:
            rows, summary, nodes = self._rows(), self._summary(), self._nodes()
        table = render.table_text(self._HEAD, rows) if rows else "(no functions yet)"
        budget = self._budget()
        return (
            f"nbserverless dashboard\n{summary}\n{nodes}\n"
            + (f"⚠ {budget}\n" if budget else "")
            + f"{table}\n({render.ESTIMATE_NOTE})\n{render.SESSION_CAPTION}"
        )

    def html(self) -> str:
        """The HTML dashboard (also the widget's value)."""
        from html import escape

        with self._lock:
            rows, summary, hist = self._rows(), self._summary(), list(self.history)
            nodes, node_vals = self._nodes(), self._node_series(time.time())
            names = [f["name"] for f in self.snapshot.get("functions", [])]
        # a replica start: the replica count rose, or a call met a cold start, since the last point
        starts = [
            i
            for i in range(1, len(hist))
            if hist[i][1] > hist[i - 1][1] or hist[i][4] > hist[i - 1][4]
        ]
        th = "".join(f"<th style='padding:1px 6px'>{escape(h)}</th>" for h in self._HEAD)
        body = "".join(
            f"<tr data-function='{escape(n, quote=True)}'>"
            + "".join(
                f"<td style='padding:1px 6px;text-align:right'>{escape(str(c))}</td>" for c in r
            )  # fmt: skip
            + "</tr>"
            for n, r in zip(names, rows, strict=False)
        )
        plots = "".join(
            f"<div class='nbserverless-plot' data-plot='{key}' style='display:inline-block;"
            f"margin-right:16px'><small>{label}: {show(vals[-1] if vals else 0)}</small><br>"
            f"{render.sparkline_svg(vals, label=label, marks=marks, mark_label='replica start')}"
            "</div>"
            for key, label, vals, show, marks in (
                ("replicas", "replicas (• replica start)", [h[1] for h in hist],
                 lambda v: f"{v:g}", starts),
                ("latency", "mean latency", [h[2] for h in hist], render.ms, ()),
                ("rate", "calls/s", [h[3] for h in hist], lambda v: fmt.sig(v, 3), ()),
                ("nodes", "nodes", node_vals, lambda v: f"{v:g}", ()),
            )
        )  # fmt: skip
        budget = self._budget()
        warn = (
            f"<div class='nbserverless-budget' role='alert' style='background:#fff3e0;"
            f"border-left:3px solid #ef6c00;padding:2px 6px'>⚠ {escape(budget)}</div>"
            if budget
            else ""
        )
        return (
            "<div class='nbserverless-dashboard' style='font-size:12px'>"
            f"<b>nbserverless</b> · {escape(summary)}"
            f"<div class='nbserverless-nodes'>{escape(nodes)}</div>{warn}<div>{plots}</div>"
            f"<table style='border-collapse:collapse'><thead><tr>{th}</tr></thead>"
            f"<tbody>{body}</tbody></table>"
            f"<div style='opacity:.65'>{escape(render.ESTIMATE_NOTE)}</div>"
            f"<div class='nbserverless-caption' style='opacity:.65'>"
            f"{escape(render.SESSION_CAPTION)}</div></div>"
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        data = {"text/plain": self.text(), "text/html": self.html()}
        if self.widget is not None:
            data.update(self.widget._repr_mimebundle_() or {})
            data["text/plain"] = self.text()
        return data

    def __repr__(self) -> str:
        return self.text()


_DASHBOARDS: list[weakref.ref] = []
MAX_LIVE_DASHBOARDS = 2


def _dashboard_loop(ref: weakref.ref) -> None:
    while True:
        d = ref()
        if d is None or d._stop.is_set():
            return
        stop, interval = d._stop, d.interval
        try:
            d.refresh()
        except Exception:
            log.debug("dashboard refresh failed", exc_info=True)
        del d
        if stop.wait(interval):
            return


def dashboard(rich: bool | None = None) -> Dashboard:
    """The live dashboard widget (``nbs.dashboard()``, ``%serverless status``). Only the two
    newest dashboards keep refreshing; older ones keep their last rendering."""
    d = Dashboard(rich=rich)
    live = [r for r in _DASHBOARDS if r() is not None and not r()._stop.is_set()]
    for r in live[: max(0, len(live) - MAX_LIVE_DASHBOARDS + 1)]:
        r().close()
    _DASHBOARDS[:] = [*live[-(MAX_LIVE_DASHBOARDS - 1) :], weakref.ref(d)]
    return d
