"""Text and HTML renderings of meter snapshots (inline widget, dashboard, fallbacks, reports).

Pure functions of snapshot dicts: no widgets, no threads. Every cost is labelled an estimate.

Example::

    >>> from nbserverless.notebook.render import money, inline_text
    >>> money(0.000123)
    '$0.00012'
    >>> print(inline_text({"functions": [], "totals": {}}))
    nbserverless: no remote calls in this cell
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from typing import Any

from ..metering import format as fmt
from ..metering.format import count, money, ms, percent

__all__ = [
    "count",
    "percent",
    "latency",
    "CELL_CAPTION",
    "SESSION_CAPTION",
    "money",
    "ms",
    "duration",
    "inline_html",
    "inline_text",
    "table_text",
    "sparkline_svg",
    "data_attr",
    "waiting_text",
    "keep_alive_text",
]

ESTIMATE_NOTE = "cost = estimate from the price table (nbs.prices())"
#: What a cell's figures measure (the caption under its widget).
CELL_CAPTION = (
    "this cell: the functions it called, their calls and the cost they accrued while it ran "
    "(idle keep-alive of other functions not included); all functions since the kernel "
    "started: %serverless status"
)
#: What the dashboard / ``%serverless status`` figures measure.
SESSION_CAPTION = (
    "this kernel since it started (or the last reset): every function, idle keep-alive "
    "included; one cell's share is under that cell"
)
_INLINE_FIELDS = (
    "name", "invocations", "errors", "cancellations", "p50_ms", "p95_ms", "exec_p50_ms",
    "replicas", "peak_replicas", "cost", "in_flight", "queued", "waiting_for_node",
    "waiting_for_node_s", "keep_alive",
)  # fmt: skip


def duration(seconds: float | None) -> str:
    """A duration (ETA, elapsed time): ``duration(3725)`` -> ``'1h02m'``; ``None`` -> ``'–'``."""
    return fmt.seconds(seconds)


def waiting_text(row: dict[str, Any]) -> str:
    """``'waiting for a node (12.0 s)'`` while calls of ``row`` wait for a node to come up,
    else ``''``. Example: ``waiting_text({"waiting_for_node": 2, "waiting_for_node_s": 12})``."""
    if not row.get("waiting_for_node"):
        return ""
    return f"waiting for a node ({fmt.seconds(row.get('waiting_for_node_s') or 0.0)})"


def keep_alive_text(row: dict[str, Any]) -> str:
    """The keep-alive in force for ``row`` (``'keep-alive 40 s (learned)'``), or ``''``."""
    v = row.get("keep_alive")
    return v if isinstance(v, str) else ""


def latency(snap: dict[str, Any], key: str) -> str:
    """A latency field of a snapshot row, ``–`` while the row has no finished calls.

    Example: ``latency({"invocations": 0, "p50_ms": 0.0}, "p50_ms")`` -> ``'–'``."""
    return ms(snap.get(key) if snap.get("invocations") else None)


def data_attr(rows: Sequence[dict[str, Any]], keys: Sequence[str] = _INLINE_FIELDS) -> str:
    """The numbers of ``rows`` as an escaped JSON attribute value, so they are saved in the
    widget state along with the notebook and can be read back."""
    slim = [{k: r.get(k) for k in keys} for r in rows]
    return escape(json.dumps(slim, separators=(",", ":")), quote=True)


def _cell(v: str, right: bool = True) -> str:
    align = "right" if right else "left"
    return f"<td style='text-align:{align};padding:1px 8px'>{v}</td>"


_INLINE_HEAD = ("function", "calls", "errors", "p50 run", "p50 total", "replicas", "cost (est.)")
_INLINE_TITLES = {
    "p50 run": "median time the function ran on its replica",
    "p50 total": "median time from the call to its result (queueing and start-up included)",
    "cost (est.)": "what this function accrued while the cell ran: busy and idle replica time",
}


def _calls(r: dict[str, Any]) -> str:
    text = count(r["invocations"])
    pending = (r.get("in_flight") or 0) + (r.get("queued") or 0)
    extra = []
    if pending:
        extra.append(f"+{count(pending)} pending")
    if r.get("cancellations"):
        extra.append(f"{count(r['cancellations'])} cancelled")
    return text + (f" ({', '.join(extra)})" if extra else "")


def inline_rows(snap: dict[str, Any]) -> list[tuple[str, ...]]:
    """The cells of the inline table, as text (shared by the HTML and text forms)."""
    return [
        (str(r["name"]), _calls(r), count(r["errors"]), latency(r, "exec_p50_ms"),
         latency(r, "p50_ms"),
         count(r["replicas"]) + (f" (peak {count(r['peak_replicas'])})"
                                 if r.get("peak_replicas", 0) > r["replicas"] else ""),
         "≈" + money(r["cost"]))
        for r in snap.get("functions", [])
    ]  # fmt: skip


def inline_html(snap: dict[str, Any], live: bool, caption: str = CELL_CAPTION) -> str:
    """The compact per-cell table: calls, errors, p50 run/total, replicas, estimated cost;
    every name escaped."""
    rows = snap.get("functions", [])
    state = "live" if live else "final"
    head = "".join(
        f"<th style='text-align:{'left' if h == 'function' else 'right'};padding:1px 8px'"
        f" title='{escape(_INLINE_TITLES.get(h, ''), quote=True)}'>{escape(h)}</th>"
        for h in _INLINE_HEAD
    )
    body = []
    for r, cells in zip(rows, inline_rows(snap), strict=True):
        name = escape(cells[0])
        wait = waiting_text(r)
        if wait:
            name += (
                f" <span class='nbserverless-waiting' style='color:#ef6c00'>· {escape(wait)}</span>"
            )
        ka = keep_alive_text(r)
        tds = [_cell(name, right=False)]
        for i, c in enumerate(cells[1:], 1):
            c = escape(c)
            if i == 2 and r["errors"]:
                c = f"<span style='color:#c62828'>{c}</span>"
            tds.append(_cell(c))
        title = f" title='{escape(ka, quote=True)}'" if ka else ""
        body.append(
            f"<tr data-function='{escape(str(r['name']), quote=True)}'{title}>{''.join(tds)}</tr>"
        )
    total = snap.get("totals", {}).get("cost", 0.0)
    return (
        f"<div class='nbserverless-inline' data-state='{state}' "
        f"data-nbserverless='{data_attr(rows)}' style='font-size:12px;line-height:1.3'>"
        f"<table style='border-collapse:collapse'><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
        f"<div style='opacity:.65'>nbserverless · {state} · cell total ≈{money(total)} "
        f"(estimate)</div>"
        f"<div class='nbserverless-caption' style='opacity:.65'>{escape(caption)}</div></div>"
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


def inline_text(snap: dict[str, Any], caption: str = CELL_CAPTION) -> str:
    """Readable text form of a cell's numbers (terminal IPython, plain Python, logs)."""
    if not snap.get("functions"):
        return "nbserverless: no remote calls in this cell"
    table = table_text(_INLINE_HEAD, inline_rows(snap))
    notes = "".join(
        f"\n{r['name']}: " + " · ".join(x for x in (waiting_text(r), keep_alive_text(r)) if x)
        for r in snap.get("functions", [])
        if waiting_text(r) or keep_alive_text(r)
    )
    total = snap.get("totals", {}).get("cost", 0.0)
    return f"{table}{notes}\ncell total ≈{money(total)} ({ESTIMATE_NOTE})\n{caption}"


def sparkline_svg(
    values: Sequence[float],
    width: int = 180,
    height: int = 32,
    label: str = "",
    marks: Sequence[int] = (),
    mark_label: str = "",
) -> str:
    """A tiny inline SVG line plot (no plotting library); ``marks`` are indices of points to
    dot (e.g. replica starts), each dot titled ``mark_label``."""
    vals = [float(v) for v in values if v == v]
    if len(vals) < 2:
        vals = (vals or [0.0]) * 2
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    step = (width - 2) / (len(vals) - 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        return 1 + i * step, height - 2 - (v - lo) / span * (height - 4)

    pts = " ".join("{:.1f},{:.1f}".format(*xy(i, v)) for i, v in enumerate(vals))
    title = escape(mark_label, quote=True)
    dots = "".join(
        "<circle class='nbserverless-mark' cx='{:.1f}' cy='{:.1f}' r='2' fill='#ef6c00'>".format(
            *xy(i, vals[i])
        )
        + f"<title>{title}</title></circle>"
        for i in sorted(set(marks))
        if 0 <= i < len(vals)
    )
    return (
        f"<svg width='{width}' height='{height}' viewBox='0 0 {width} {height}' "
        f"role='img' aria-label='{escape(label, quote=True)}'>"
        f"<polyline points='{pts}' fill='none' stroke='#1976d2' stroke-width='1.5'/>{dots}</svg>"
    )


class PriceView:
    """``%serverless prices``: the price table per second and per hour, citing its source
    and date. Attributes read through to the table (``view.cpu``, ``view.gpu_price("L4")``).

    Example: ``PriceView(pricing.current())`` shows ``cpu (1 core)  $0.0000131  $0.047``."""

    HEAD = ("resource", "per second", "per hour")

    def __init__(self, table: Any) -> None:
        self.table = table

    def __getattr__(self, name: str) -> Any:
        return getattr(self.table, name)

    def rows(self) -> list[tuple[str, str, str, str]]:
        """``(resource, per second, per hour, set-by-you mark)`` rows."""
        t = self.table

        def mark(key: str) -> str:
            return "set by you" if key in t.custom else ""

        def price(v: float) -> str:
            return "$" + fmt.sig(v, 3)

        rows = [
            ("cpu (1 core)", price(t.cpu), money(t.cpu * 3600), mark("cpu")),
            ("memory (1 GiB)", price(t.memory), money(t.memory * 3600), mark("memory")),
        ]
        rows += [(f"gpu {k}", price(v), money(v * 3600), mark("gpu")) for k, v in t.gpu.items()]
        rows.append(("gpu (other types)", price(t.gpu_default), money(t.gpu_default * 3600),
                     mark("gpu")))  # fmt: skip
        rows.append(("request (per call)", price(t.request), "", mark("request")))
        return rows

    def source_line(self) -> str:
        t = self.table
        return (
            f"prices: {t.source}, as of {t.as_of or '–'}; USD, for cost estimates "
            f"(memory=None bills {t.default_memory_gib:g} GiB per replica)"
        )

    def __repr__(self) -> str:
        body = table_text((*self.HEAD, ""), self.rows())
        return f"{self.source_line()}\n{body}"

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:right;padding:1px 8px'>{h}</th>" for h in self.HEAD)
        body = "".join(
            "<tr>" + _cell(escape(r[0]), right=False)
            + "".join(_cell(escape(c)) for c in r[1:3])
            + _cell(f"<small>{escape(r[3])}</small>", right=False) + "</tr>"
            for r in self.rows()
        )  # fmt: skip
        return (
            "<div class='nbserverless-prices' style='font-size:12px'>"
            f"<div>{escape(self.source_line())}</div>"
            f"<table style='border-collapse:collapse'><thead><tr>{head}<th></th></tr></thead>"
            f"<tbody>{body}</tbody></table></div>"
        )
