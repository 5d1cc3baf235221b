"""Render a results JSON (default benchmarks/results/latest.json) as Markdown for BENCHMARKS.md:
``python -m benchmarks.report [FILE]``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ._common import TITLES, fmt


def render(d: dict) -> str:
    m = d["machine"]
    out = [
        f"Run of {d['date']} (git {d.get('git') or '?'}): "
        f"`{' '.join(['python -m benchmarks', *(d.get('argv') or [])])}`",
        "",
        f"- machine: {m['nproc']} cores ({m.get('cpu', '')}), {m['mem_gib']} GiB; load average at "
        f"start {', '.join(f'{x:.1f}' for x in (m.get('loadavg_at_start') or []))}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in d["versions"].items()),
        f"- cluster: {d.get('cluster')}; rounds: {d['rounds']}{' (quick)' if d['quick'] else ''}; "
        f"time per scenario (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in d.get("durations_s", {}).items()),
        "",
        "| scenario | row | metric | median | unit | rounds | status |",
        "|---|---|---|---:|---|---:|---|",
    ]
    for r in d["rows"]:
        status = "ok"
        if r["skipped"]:
            status = f"skipped: {r['skipped']}"
        elif r["error"]:
            status = f"FAILED: {r['error'][:160]}"
        elif not r["ok"]:
            status = "WRONG RESULT"
        elif not r["samples"]:
            status = "not measured"
        if r.get("note"):
            status += f" ({r['note']})"
        name = r["row"] + (f" (n={r['n']:,})" if r.get("n") else "")
        med = fmt(r["median"], r["unit"]) if r["median"] is not None else "—"
        out.append(
            f"| {TITLES.get(r['scenario'], r['scenario'])} | {name} | {r['metric']} | "
            f"{med} | {r['unit']} | {len(r['samples'])} | {status.replace('|', '/')} |"
        )
    for sc, why in d.get("skipped", {}).items():
        out.append(f"| {TITLES.get(sc, sc)} | — | — | — | — | 0 | skipped: {why} |")
    for sc, why in d.get("errors", {}).items():
        out.append(f"| {TITLES.get(sc, sc)} | — | — | — | — | 0 | FAILED: {why} |")
    out += [
        "",
        "| scenario | target | measured | BENCHMARKS.md target | issue bar | verdict |",
        "|---|---|---:|---:|---:|---|",
    ]
    for c in d["checks"]:
        unit = c.get("unit", "×")
        meas = "—" if c["value"] is None or not c["valid"] else f"{fmt(c['value'])}{unit}"
        tgt = f"{c['op']} {fmt(c['target'])}{unit}"
        bar = f"{c['op']} {fmt(c['issue_bar'])}{unit}" if c["issue_bar"] is not None else ""
        if not c["valid"]:
            verdict = "not measured"
        else:
            verdict = "PASS" if c["pass"] else "**FAIL**"
            if c["issue_bar"] is not None and c["issue_pass"] != c["pass"]:
                verdict += f" (issue bar {'PASS' if c['issue_pass'] else 'FAIL'})"
        out.append(
            f"| {TITLES.get(c['scenario'], c['scenario'])} | {c['what']} | {meas} | {tgt} "
            f"| {bar} | {verdict} |"
        )
    if d.get("notes"):
        out += ["", "Notes of the run:"] + [f"- {n}" for n in d["notes"]]
    return "\n".join(out)


def main() -> int:
    path = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).resolve().parent / "results" / "latest.json"
    )
    print(render(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
