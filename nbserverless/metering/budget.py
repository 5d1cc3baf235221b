"""The session's cost budget: ``nbs.config(budget=0.50)`` / ``%serverless config budget=0.50``.

USD for this kernel's session, against the same estimate every view shows (the functions'
``cost``, idle keep-alive included). A daemon ticker reads the meter a few times a second
while a budget is set and keeps two flags; the call path only reads them (``check()`` is O(1)).
At ``WARN_AT`` of the budget the widget, dashboard, status bar and panel warn (``warning()``,
``state()``); when it is reached new calls raise ``BudgetExceededError``, calls already running
finish, and every replica is scaled to zero (the ``on_exceeded`` hooks, installed by the
package: the meter knows nothing of pools). ``budget=None`` (the default) turns it off.

Example::

    nbs.config(budget=0.50)
    f(1)                        # fine while the estimate is below $0.50
    nbs.config(budget=1.00)     # raise it after BudgetExceededError
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any

from .. import settings
from ..errors import BudgetExceededError
from . import format as fmt
from .meter import METER

__all__ = ["check", "state", "warning", "validate", "on_exceeded", "BudgetExceededError"]

log = logging.getLogger(__name__)

WARN_AT = 0.8  # fraction of the budget at which every view warns
INTERVAL = 0.25  # s between two reads of the meter while a budget is set

#: Called (with no arguments) by the ticker while the budget is exceeded: scale to zero.
on_exceeded: list[Callable[[], None]] = []


class _Budget:
    def __init__(self) -> None:
        self.exceeded = False  # read on every call: one attribute load
        self.warn = False
        self.spent = 0.0
        self.limit: float | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def ensure_ticker(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="nbserverless-budget", daemon=True
                )
                self._thread.start()

    def update(self) -> None:
        """Read the meter once and set the flags (the ticker; a refused call re-checks)."""
        limit = settings.get("budget")
        if limit is None:
            self.limit, self.warn, self.exceeded = None, False, False
            return
        spent = float(METER.snapshot()["totals"]["cost"])
        self.limit, self.spent = float(limit), spent
        self.warn = spent >= WARN_AT * self.limit
        self.exceeded = spent >= self.limit

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.update()
                if self.exceeded:
                    for hook in list(on_exceeded):
                        hook()
            except Exception:  # the ticker must outlive a failing hook
                log.exception("nbserverless: budget check failed")
            if settings.get("budget") is None:
                break  # off: the next check() with a budget starts it again
            self._stop.wait(INTERVAL)
        with self._lock:
            self._thread = None

    def stop(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=2)


_BUDGET = _Budget()


def check() -> None:
    """Raise ``BudgetExceededError`` if the session's budget is spent (every call asks).

    Example: ``budget.check()`` at the top of the call path."""
    b = _BUDGET
    if b.exceeded:
        b.update()  # the user may have raised or removed the budget since
        if b.exceeded:
            raise BudgetExceededError(exceeded_message(b.spent, b.limit))
    elif b._thread is None and settings.get("budget") is not None:
        b.ensure_ticker()
        b.update()
        if b.exceeded:
            raise BudgetExceededError(exceeded_message(b.spent, b.limit))


def exceeded_message(spent: float, limit: float | None) -> str:
    """What a refused call says: what was spent, and how to raise the budget."""
    new = max(2 * (limit or 0), spent * 1.5, 0.01)
    return (
        f"the session's cost budget of {fmt.money(limit)} is spent (≈{fmt.money(spent)} "
        "estimated so far); new calls are refused, running ones finish and every replica "
        f"scales to zero. To go on, raise it: nbs.config(budget={new:.2f}) or "
        f"%serverless config budget={new:.2f} (budget=None removes it)."
    )


def state() -> dict[str, Any] | None:
    """``{"limit", "spent", "warn", "exceeded"}`` when a budget is set, else ``None``
    (the comm snapshot's ``budget`` field).

    Example: ``state()`` -> ``{"limit": 0.5, "spent": 0.41, "warn": True, "exceeded": False}``."""
    if settings.get("budget") is None:
        return None
    b = _BUDGET
    if b._thread is None:
        b.ensure_ticker()
        b.update()
    if b.limit is None:
        return None
    return {"limit": b.limit, "spent": b.spent, "warn": b.warn, "exceeded": b.exceeded}


def warning() -> str:
    """The warning line of the views from 80 % of the budget on, else ``''``.

    Example: ``'82% of the budget spent ($0.41 of $0.50, estimate)'``."""
    s = state()
    if s is None or not s["warn"]:
        return ""
    if s["exceeded"]:
        return (
            f"budget spent: new calls are refused ({fmt.money(s['spent'])} of "
            f"{fmt.money(s['limit'])}, estimate); raise it with nbs.config(budget=...)"
        )
    return (
        f"{fmt.percent(s['spent'] / s['limit'])} of the budget spent ({fmt.money(s['spent'])} "
        f"of {fmt.money(s['limit'])}, estimate)"
    )


def validate(value: Any) -> float | None:
    """A budget setting: ``None`` or a finite number of USD >= 0; raises ``ValueError``.

    Example: ``validate(0.5)`` -> ``0.5``; ``validate("a lot")`` raises."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            raise ValueError("budget is too large: give USD, e.g. budget=0.50") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(
            f"budget must be a number of USD (e.g. budget=0.50) or None, got {value!r}"
        )
    if value < 0:
        raise ValueError(f"budget must be >= 0 USD, got {value!r}")
    return float(value)
