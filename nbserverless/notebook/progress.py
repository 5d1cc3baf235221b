"""Progress bars for ``map``: done/total, rate, time left, errors, cancelled items (never
counted as errors), estimated cost per 1,000 items.

``update()`` only stores two numbers; a daemon ticker renders at most ``1/INTERVAL`` times a
second: an ipywidgets bar in a Jupyter kernel, a text line on stderr elsewhere (redrawn in
place on a terminal, a new line every ``LOG_EVERY`` seconds when stderr is a file or pipe).

Example::

    bar = progress_bar(total=1000, name="square", meter=fm, enabled=True)
    bar.update(250, errors=1)       # cheap: called as chunks finish
    bar.close(ok=True)              # renders the final numbers
"""

from __future__ import annotations

import sys
import threading
import time
from html import escape
from typing import Any, TextIO

from ..metering import format as fmt
from . import render
from .widgets import rich_display

__all__ = ["progress_bar", "ProgressBar", "NullProgress"]

INTERVAL = 0.25  # s between renders (≤ 4/s)
LOG_EVERY = 10.0  # s between lines when stderr is not a terminal


class NullProgress:
    """``progress=False``: does nothing."""

    def update(self, done: int, errors: int = 0, cancelled: int | None = None) -> None:
        pass

    def close(self, ok: bool = True) -> None:
        pass


class ProgressBar:
    """One map's progress. ``update(done, errors)`` takes absolute counts."""

    def __init__(
        self,
        total: int | None,
        name: str,
        meter: Any = None,
        rich: bool = False,
        stream: TextIO | None = None,
        interval: float = INTERVAL,
    ) -> None:
        self.total, self.name, self.meter = total, name, meter
        self.rich = rich
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.done = self.errors = 0
        self.cancelled: int | None = None  # given by the caller, else read from the meter
        self.ok = True
        self.closed = False
        self.renders = 0
        self._t0 = time.monotonic()
        self._start_calls, self._start_cost, self._start_cancels = self._meter_numbers()
        self._rendered: tuple | None = None
        self._last_line = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar: Any = None
        self.label: Any = None
        self.widget: Any = None
        self._handle: Any = None
        if rich:
            import ipywidgets
            from IPython.display import display

            self.bar = ipywidgets.IntProgress(
                value=0, min=0, max=max(total or 1, 1), bar_style="info", description=name[:20]
            )
            self.label = ipywidgets.HTML(value=escape(self.text()))
            self.widget = ipywidgets.HBox([self.bar, self.label])
            self._handle = display(self, display_id=True)
        self._thread = threading.Thread(
            target=self._loop, daemon=True, name="nbserverless-progress"
        )
        self._thread.start()

    # ---- cheap --------------------------------------------------------------------------
    def update(self, done: int, errors: int = 0, cancelled: int | None = None) -> None:
        """Record progress (absolute counts: items reported, of which ``errors`` failed and
        ``cancelled`` were cancelled); rendering happens on the ticker. Without ``cancelled``
        the bar reads this function's cancellations from the meter: a cancelled item is
        not an error (the meter counts it apart, and so does the bar)."""
        self.done, self.errors = done, errors
        if cancelled is not None:
            self.cancelled = cancelled

    # ---- numbers ------------------------------------------------------------------------
    def _meter_numbers(self) -> tuple[int, float, int]:
        if self.meter is None:
            return 0, 0.0, 0
        try:
            s = self.meter.snapshot()
            return s["invocations"], s["cost"], s["cancellations"]
        except Exception:
            return 0, 0.0, 0

    def numbers(self, final: bool = False) -> dict[str, Any]:
        """done (finished, failed included), total, errors, cancelled, rate (items/s), eta_s
        (None if unknown), cost_per_1k (est.). ``final`` after an interruption: the items
        that never ran count as cancelled."""
        total = self.total
        calls, cost, cancels = self._meter_numbers()
        if self.cancelled is not None:  # counted apart by the caller (a map that stopped)
            cancelled, errors, done = self.cancelled, self.errors, self.done
        else:  # the caller counted cancelled items among its failures: the meter tells them
            cancelled = min(max(0, cancels - self._start_cancels), self.done)
            errors = max(0, self.errors - cancelled)
            done = self.done - cancelled
        if final and not self.ok and total is not None:
            cancelled = max(cancelled, total - done)  # never ran: cancelled, not failed
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        rate = done / elapsed if done else 0.0
        eta = (total - done) / rate if total is not None and rate > 0 else None
        cost_per_1k = None
        if calls > self._start_calls:  # this map's share: items and cost since it started
            cost_per_1k = (cost - self._start_cost) / (calls - self._start_calls) * 1000
        return {"done": done, "total": total, "errors": errors, "cancelled": cancelled,
                "rate": rate, "eta_s": eta, "elapsed_s": elapsed,
                "cost_per_1k": cost_per_1k}  # fmt: skip

    def text(self, final: bool = False) -> str:
        """One line: ``square: 250/1,000 (25%) · 120 items/s · 6s left · 1 error · ≈$0.0004 per
        1k items (est.)``."""
        n = self.numbers(final=final)
        total, c = n["total"], render.count
        pct = f" ({n['done'] / total:.0%})" if total else ""
        parts = [f"{c(n['done'])}/{c(total)}{pct}" if total else c(n["done"])]
        if n["rate"]:
            parts.append(f"{fmt.sig(n['rate'], 3)} items/s")
        elif not final:
            parts.append("starting")
        if final:
            parts.append(f"{render.duration(n['elapsed_s'])} total")
        elif total:
            parts.append(f"{render.duration(n['eta_s'])} left")
        if n["errors"]:
            parts.append(f"{c(n['errors'])} error{'s' if n['errors'] != 1 else ''}")
        if n["cancelled"]:
            parts.append(f"{c(n['cancelled'])} cancelled")
        if n["cost_per_1k"] is not None:
            parts.append(f"≈{render.money(n['cost_per_1k'])} per 1k items (est.)")
        return f"{self.name}: " + " · ".join(parts)

    # ---- rendering ----------------------------------------------------------------------
    def render(self, final: bool = False, ok: bool = True) -> None:
        """Draw now (the ticker calls this; so does ``close``)."""
        with self._lock:
            state = (self.done, self.errors, self.cancelled, final)
            if state == self._rendered and not final:
                return
            self._rendered = state
            line = self.text(final=final)
            self.renders += 1
            if self.widget is not None:
                self.bar.max = max(self.total or self.done or 1, 1)
                self.bar.value = min(self.done, self.bar.max)
                if final:
                    n = self.numbers(final=True)
                    style = "danger" if n["errors"] else "warning" if n["cancelled"] else "success"
                    self.bar.bar_style = style
                self.label.value = escape(line)  # an HTML widget: "<lambda>" must show
                return
            now = time.monotonic()
            if self._tty:
                end = "\n" if final else ""
                self.stream.write("\r\x1b[2K" + line + end)
            elif final or now - self._last_line >= LOG_EVERY:
                self.stream.write(line + "\n")
            else:
                return
            self._last_line = now
            self.stream.flush()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        data = {"text/plain": self.text(final=self.closed)}
        if self.widget is not None:
            data["application/vnd.jupyter.widget-view+json"] = self.widget._repr_mimebundle_()[
                "application/vnd.jupyter.widget-view+json"
            ]
        return data

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.render()
            except Exception:  # a progress bar must never break a map
                pass

    def close(self, ok: bool = True) -> None:
        """Stop the ticker and render the final numbers (once)."""
        if self.closed:
            return
        self.closed = True
        self.ok = ok
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        self.render(final=True, ok=ok)
        if self._handle is not None:  # static viewers get the final line too
            try:
                self._handle.update(self)
            except Exception:
                pass


def progress_bar(
    total: int | None, name: str, meter: Any = None, enabled: bool = True
) -> ProgressBar | NullProgress:
    """A progress bar for one map (``NullProgress`` when ``enabled`` is False): ipywidgets in a
    kernel whose frontend renders widgets, text on stderr elsewhere."""
    if not enabled:
        return NullProgress()
    return ProgressBar(total, name, meter, rich=rich_display())
