"""Text and HTML renderings of meter snapshots (inline widget, dashboard, fallbacks, reports).

Pure functions of snapshot dicts: no widgets, no threads. Every cost is labelled an estimate.

Example::

    >>> from nbserverless.render import money, inline_text
    >>> money(0.000123)
    '$0.000123'
    >>> print(inline_text({"functions": [], "totals": {}}))
    nbserverless: no remote calls in this cell
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from typing import Any

__all__ = [
    "money",
    "ms",
    "duration",
    "inline_html",
    "inline_text",
    "table_text",
    "sparkline_svg",
    "data_attr",
]

ESTIMATE_NOTE = "cost = estimate from the price table (nbs.prices())"
_INLINE_FIELDS = (
    "name", "invocations", "errors", "p50_ms", "p95_ms", "replicas", "peak_replicas",
    "cost", "in_flight", "queued",
)  # fmt: skip


def money(usd: float | None) -> str:
    """USD with enough digits to be useful for tiny amounts. ``money(1.5)`` -> ``'$1.50'``."""
    usd = float(usd or 0.0)
    if usd == 0:
        return "$0"
    if abs(usd) >= 1:
        return f"${usd:,.2f}"
    return f"${usd:.3g}" if abs(usd) >= 0.001 else f"${usd:.3g}".replace("e-0", "e-")


def ms(value: float | None) -> str:
    """Milliseconds, short. ``ms(1234.5)`` -> ``'1.23 s'``."""
    value = float(value or 0.0)
    if value >= 1000:
        return f"{value / 1000:.3g} s"
    return f"{value:.3g} ms" if value else "-"


def duration(seconds: float | None) -> str:
    """``duration(3725)`` -> ``'1h02m'``; ``None`` -> ``'?'``."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def data_attr(rows: Sequence[dict[str, Any]], keys: Sequence[str] = _INLINE_FIELDS) -> str:
    """The numbers of ``rows`` as an escaped JSON attribute value, so they are saved in the
    widget state along with the notebook and can be read back."""
    slim = [{k: r.get(k) for k in keys} for r in rows]
    return escape(json.dumps(slim, separators=(",", ":")), quote=True)


def _cell(v: str, right: bool = True) -> str:
    align = "right" if right else "left"
    return f"<td style='text-align:{align};padding:1px 8px'>{v}</td>"


def inline_html(snap: dict[str, Any], live: bool) -> str:
    """The compact per-cell table: calls, errors, p50/p95, replicas, estimated cost."""
    rows = snap.get("functions", [])
    state = "live" if live else "final"
    head = "".join(
        f"<th style='text-align:{'left' if h == 'function' else 'right'};padding:1px 8px'>{h}</th>"
        for h in ("function", "calls", "errors", "p50", "p95", "replicas", "cost (est.)")
    )
    body = []
    for r in rows:
        calls = f"{r['invocations']:,}"
        if r.get("in_flight") or r.get("queued"):
            calls += f" <span style='opacity:.6'>(+{r['in_flight'] + r['queued']:,} pending)</span>"
        reps = f"{r['replicas']}" + (
            f" <span style='opacity:.6'>(peak {r['peak_replicas']})</span>"
            if r.get("peak_replicas", 0) > r["replicas"]
            else ""
        )
        err = f"<span style='color:#c62828'>{r['errors']:,}</span>" if r["errors"] else "0"
        body.append(
            f"<tr data-function='{escape(r['name'], quote=True)}'>"
            + _cell(escape(r["name"]), right=False)
            + _cell(calls)
            + _cell(err)
            + _cell(ms(r["p50_ms"]))
            + _cell(ms(r["p95_ms"]))
            + _cell(reps)
            + _cell("≈" + money(r["cost"]))
            + "</tr>"
        )
    total = snap.get("totals", {}).get("cost", 0.0)
    return (
        f"<div class='nbserverless-inline' data-state='{state}' "
        f"data-nbserverless='{data_attr(rows)}' style='font-size:12px;line-height:1.3'>"
        f"<table style='border-collapse:collapse'><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
        f"<div style='opacity:.65'>nbserverless · {state} · cell total ≈{money(total)} "
        f"(estimate)</div></div>"
    )


def table_text(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned table (first column left, others right)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        parts = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def inline_text(snap: dict[str, Any]) -> str:
    """Readable text form of a cell's numbers (terminal IPython, plain Python, logs)."""
    rows = snap.get("functions", [])
    if not rows:
        return "nbserverless: no remote calls in this cell"
    body = [
        (r["name"], f"{r['invocations']:,}", f"{r['errors']:,}", ms(r["p50_ms"]),
         ms(r["p95_ms"]), r["replicas"], money(r["cost"]))
        for r in rows
    ]  # fmt: skip
    table = table_text(
        ("function", "calls", "errors", "p50", "p95", "replicas", "cost (est.)"), body
    )
    return f"{table}\n({ESTIMATE_NOTE})"


def sparkline_svg(
    values: Sequence[float], width: int = 180, height: int = 32, label: str = ""
) -> str:
    """A tiny inline SVG line plot (no plotting library); the last value is labelled."""
    vals = [float(v) for v in values if v == v]
    if len(vals) < 2:
        vals = (vals or [0.0]) * 2
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    step = (width - 2) / (len(vals) - 1)
    pts = " ".join(
        f"{1 + i * step:.1f},{height - 2 - (v - lo) / span * (height - 4):.1f}"
        for i, v in enumerate(vals)
    )
    return (
        f"<svg width='{width}' height='{height}' viewBox='0 0 {width} {height}' "
        f"role='img' aria-label='{escape(label, quote=True)}'>"
        f"<polyline points='{pts}' fill='none' stroke='#1976d2' stroke-width='1.5'/></svg>"
    )
