"""Inline per-cell widget and the live dashboard: ipywidgets views over meter snapshots.

``register(ip)`` (called by ``%load_ext nbserverless``) hooks IPython's ``pre_run_cell`` /
``post_run_cell``: every cell gets a meter scope; at its first remote call a compact widget
(calls, errors, p50/p95, replicas, estimated cost per function) is displayed under the cell,
refreshed by one daemon ticker at most ``1/INLINE_INTERVAL`` times a second, and frozen at the
scope's final values when the cell ends. The final numbers live in the widget's ``value``
(saved with the notebook's widget state) and in the output's text/HTML (for static viewers).

Where ipywidgets cannot render (terminal IPython, plain Python, Colab) the same views fall
back to text/HTML, following Ray's ``repr_with_fallback``: rich output only in a
``ZMQInteractiveShell`` with ipywidgets importable.

Example::

    %load_ext nbserverless          # inline widgets on
    nbs.dashboard()                 # the live dashboard
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
import time
import weakref
from collections import deque
from typing import Any

from ..metering import budget as _budget_mod
from ..metering import format as fmt
from ..metering.meter import METER, FunctionMeter, Scope
from . import render

__all__ = ["register", "unregister", "dashboard", "Dashboard", "InlineView", "rich_display"]

log = logging.getLogger(__name__)

INLINE_INTERVAL = 0.3  # s between inline refreshes (≤ ~3.3 updates/s whatever the call rate)
DASHBOARD_INTERVAL = 0.5  # s between dashboard refreshes (≤ 2/s)
HISTORY_POINTS = 240  # dashboard plot length (one point per second: 4 minutes)


def rich_display(shell: Any = None) -> bool:
    """True when widgets can render: a Jupyter kernel (``ZMQInteractiveShell``), ipywidgets
    installed, not Colab. Same rule as Ray's ``repr_with_fallback``."""
    if shell is None:
        ip_mod = sys.modules.get("IPython")
        shell = ip_mod.get_ipython() if ip_mod else None
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return False
    if "google.colab" in sys.modules:
        return False
    return importlib.util.find_spec("ipywidgets") is not None


def _inline_enabled() -> bool:
    """``nbs.config(inline=...)``; the session settings module is ``settings`` (was ``config``)."""
    try:
        from .. import settings
    except ImportError:  # pragma: no cover - older layout
        from .. import config as settings  # type: ignore[no-redef]
    return bool(settings.get("inline"))


def _budget_line() -> str:
    """The 80 % budget warning shared by the widget and the dashboard ('' below 80 %)."""
    return _budget_mod.warning()


_LIVE_FIELDS = ("waiting_for_node", "waiting_for_node_s", "keep_alive")


def _live_state() -> tuple:
    """What the views show besides ``METER.version``: the waits for a node (whole seconds)
    and the keep-alive in force, which change without a meter record."""
    return tuple(
        (fm.waiting_for_node, int(fm.waiting_for_node_s or 0), fm.keep_alive_label)
        for fm in METER.functions()
    )


def with_live(snap: dict[str, Any]) -> dict[str, Any]:
    """``snap`` (a scope's snapshot) with each row's current wait for a node and keep-alive
    from its function's meter. Example: ``with_live(scope.snapshot())["functions"][0]``."""
    fms = {(fm.name, fm.kind): fm for fm in METER.functions()}
    rows = []
    for r in snap.get("functions", []):
        fm = fms.get((r.get("name"), r.get("kind")))
        if fm is not None and any(k not in r for k in _LIVE_FIELDS):
            r = {**r, "waiting_for_node": fm.waiting_for_node,
                 "waiting_for_node_s": fm.waiting_for_node_s, "keep_alive": fm.keep_alive_label}  # fmt: skip
        rows.append(r)
    return {**snap, "functions": rows}


def _display(obj: Any, **kw: Any) -> Any:
    from IPython.display import display

    return display(obj, **kw)


class InlineView:
    """The widget of one cell's scope. ``widget`` is an ``ipywidgets.HTML`` (rich mode) or
    ``None`` (text mode: the final table is printed when the cell ends)."""

    def __init__(self, scope: Scope, rich: bool) -> None:
        self.scope = scope
        self.rich = rich
        self.live = True
        self.final: dict[str, Any] | None = None
        self.updates = 0  # number of value changes after the first render
        self._lock = threading.Lock()
        self._version: Any = -1
        self._handle: Any = None
        self.widget: Any = None
        if rich:
            import ipywidgets

            self.widget = ipywidgets.HTML(value=self._html(with_live(scope.snapshot()), True))
            self.widget.add_class("nbserverless-inline")

    def show(self) -> None:
        """Display under the current cell (call in the cell's thread)."""
        if self.rich:
            self._handle = _display(self, display_id=True)

    def refresh(self) -> bool:
        """Re-render from the scope if the meter changed; True if the value changed."""
        with self._lock:
            version = (METER.version, _live_state())
            if not self.live or self.widget is None or version == self._version:
                return False
            self._version = version
            html = self._html(with_live(self.scope.snapshot()), live=True)
            if html == self.widget.value:
                return False
            self.widget.value = html
            self.updates += 1
            return True

    def freeze(self) -> dict[str, Any]:
        """Close the scope and show its final values; returns them."""
        with self._lock:
            if self.live:
                self.live = False
                final = self.scope.close()
                # the keep-alive stays in the frozen view; a wait for a node is over or
                # belongs to a later cell
                live = with_live(final)
                self.final = {**live, "functions": [
                    {**r, "waiting_for_node": 0, "waiting_for_node_s": 0.0}
                    for r in live["functions"]]}  # fmt: skip
                if self.widget is not None:
                    self.widget.value = self._html(self.final, live=False)
                    if self._handle is not None:
                        try:
                            self._handle.update(self)  # static viewers get the final numbers
                        except Exception:
                            log.debug("inline display update failed", exc_info=True)
                else:
                    print(self._text(self.final))
        return self.final  # type: ignore[return-value]

    @staticmethod
    def _html(snap: dict[str, Any], live: bool) -> str:
        html = render.inline_html(snap, live=live)
        warn = _budget_line()
        if warn:
            from html import escape

            html = html.replace(
                "<div class='nbserverless-caption'",
                "<div class='nbserverless-budget' role='alert' style='color:#e65100'>"
                f"⚠ {escape(warn)}</div><div class='nbserverless-caption'",
                1,
            )
        return html

    @staticmethod
    def _text(snap: dict[str, Any]) -> str:
        warn = _budget_line()
        return render.inline_text(snap) + (f"\n⚠ {warn}" if warn else "")

    def _snap(self) -> dict[str, Any]:
        return self.final if self.final is not None else with_live(self.scope.snapshot())

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        data = {
            "text/plain": self._text(self._snap()),
            "text/html": self._html(self._snap(), live=self.live),
        }
        if self.widget is not None:
            data.update(self.widget._repr_mimebundle_() or {})
            data["text/plain"] = self._text(self._snap())
        return data

    def __repr__(self) -> str:
        return self._text(self._snap())


class _Inline:
    """Per-kernel state of the inline widget: the open scope and view of the running cell."""

    def __init__(self) -> None:
        self.shell: Any = None
        self.rich: bool | None = None  # None: decide from the shell
        self.scope: Scope | None = None
        self.view: InlineView | None = None
        self.last: InlineView | None = None  # the latest view (tests, the CLI)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._ticker: threading.Thread | None = None
        self._stop = False

    def pre_run_cell(self, *args: Any) -> None:
        self.post_run_cell()  # a cell that never ran its post hook (error in another hook)
        if _inline_enabled():
            with self._lock:
                self.scope = METER.open_scope()

    def post_run_cell(self, *args: Any) -> None:
        with self._lock:
            scope, view = self.scope, self.view
            self.scope = self.view = None
        if view is not None:
            view.freeze()
        elif scope is not None:
            scope.close()

    def on_activity(self, fm: FunctionMeter) -> None:
        """First remote call of a function in this cell: show the widget (once per cell)."""
        with self._lock:
            if self.scope is None or self.view is not None:
                return
            rich = self.rich if self.rich is not None else rich_display(self.shell)
            self.view = self.last = view = InlineView(self.scope, rich)
        view.show()
        if rich:
            self._ensure_ticker()

    def _ensure_ticker(self) -> None:
        if self._ticker is None or not self._ticker.is_alive():
            self._stop = False
            self._ticker = threading.Thread(
                target=self._tick, name="nbserverless-inline", daemon=True
            )
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stop:
            self._wake.wait(INLINE_INTERVAL)
            view = self.view
            if view is not None:
                try:
                    view.refresh()
                except Exception:
                    log.debug("inline refresh failed", exc_info=True)

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2)
        self._ticker = None
        self._wake.clear()


INLINE = _Inline()


def register(ip: Any, rich: bool | None = None) -> None:
    """Hook ``ip``'s cell events (idempotent). ``rich`` forces widgets on/off; default: on in
    a Jupyter kernel. ``config.get("inline")`` False turns the inline widget off."""
    unregister(ip)
    INLINE.shell, INLINE.rich = ip, rich
    ip.events.register("pre_run_cell", INLINE.pre_run_cell)
    ip.events.register("post_run_cell", INLINE.post_run_cell)
    METER.on_activity = INLINE.on_activity


def unregister(ip: Any) -> None:
    """Undo ``register``: no more scopes or inline widgets."""
    for name, cb in (
        ("pre_run_cell", INLINE.pre_run_cell),
        ("post_run_cell", INLINE.post_run_cell),
    ):
        try:
            ip.events.unregister(name, cb)
        except ValueError:
            pass
    if METER.on_activity == INLINE.on_activity:
        METER.on_activity = None
    INLINE.post_run_cell()
    INLINE.stop()


# ---- dashboard ----------------------------------------------------------------------------


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
