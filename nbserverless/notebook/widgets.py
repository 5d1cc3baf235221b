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

The live dashboard is ``notebook/dashboard.py``.

Example::

    %load_ext nbserverless          # inline widgets on
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
from typing import Any

from ..metering import budget as _budget_mod
from ..metering.meter import METER, FunctionMeter, Scope
from . import render

__all__ = ["register", "unregister", "InlineView", "rich_display", "with_live"]

log = logging.getLogger(__name__)

INLINE_INTERVAL = 0.3  # s between inline refreshes (≤ ~3.3 updates/s whatever the call rate)


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
