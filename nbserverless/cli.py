"""``nbserverless run NOTEBOOK``: execute a notebook headless and report what its remote code
did: per function calls, errors, latency quantiles, replicas, estimated cost, the always-on
equivalent and the saving.

The notebook runs in a fresh Jupyter kernel (nbclient) with the extension loaded before the
first cell, attached to the given cluster or to an embedded one this command starts. After the last cell (or the failing one) a hidden snippet prints the kernel's meter
snapshot on its stdout; the report is built from it, printed, and stored in the output
notebook's metadata under ``nbserverless``. Then the session is shut down in the kernel (every
replica removed; an embedded cluster stops with it) and the kernel is stopped.

Example::

    $ nbserverless run examples/quickstart.ipynb -o /tmp/out.ipynb
    $ nbserverless run analysis.ipynb --address ray://head:10001
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

MARK = "<<nbserverless-report>>"
LOAD_SNIPPET = "%load_ext nbserverless"
REPORT_SNIPPET = "__import__('nbserverless.cli', fromlist=['cli']).kernel_report()"
SHUTDOWN_SNIPPET = "__import__('nbserverless').shutdown()"
HIDDEN_TIMEOUT_S = 120.0
DEFAULT_CELL_TIMEOUT_S = 3600.0
REPORT_FIELDS = (
    "name", "kind", "invocations", "errors", "retries", "cold_starts", "p50_ms", "p95_ms",
    "p99_ms", "replicas", "peak_replicas", "replica_seconds_busy", "replica_seconds_idle",
    "cost", "cost_busy", "cost_idle", "always_on_cost", "saving", "cpus", "gpus", "memory",
)  # fmt: skip
HEADERS = ("function", "kind", "calls", "errors", "p50", "p95", "p99", "replicas (peak)",
           "cost (est.)", "always-on (est.)", "saving")  # fmt: skip
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_LOAD_LINE = re.compile(r"^\s*%(re)?load_ext\s+nbserverless\s*$")

HELP = """\
Execute NOTEBOOK headless in a Jupyter kernel with the nbserverless extension loaded, then
print a per-function report (calls, errors, p50/p95/p99, replicas, estimated cost, always-on
equivalent and saving).

With -o, the executed notebook is written there with the same report in its metadata under
"nbserverless"; without -o nothing is written. Exit status: 0 when every cell ran, 1 when a cell
failed (the report says which), 2 for bad arguments or an unreadable notebook.

The kernel uses an existing cluster when --address (or NBSERVERLESS_ADDRESS / RAY_ADDRESS) is
set; otherwise this command starts an embedded local cluster for the kernel to attach to, and
stops it when the run ends (nothing keeps running, even if the kernel dies).
"""


def kernel_report() -> None:
    """Print the meter snapshot of this kernel on stdout after ``MARK`` (runs in the kernel)."""
    from .core import cluster
    from .metering.meter import METER

    data = {"meter": METER.snapshot(), "cluster": cluster.summary()}
    print(MARK + json.dumps(data, default=str))


# ---- the report -------------------------------------------------------------------------------


def _finite(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (notebook metadata is strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def build_report(data: dict[str, Any], failed: dict[str, Any] | None, wall_s: float) -> dict:
    """The report stored in ``metadata["nbserverless"]`` from a kernel's ``kernel_report``.

    Example: ``build_report({"meter": METER.snapshot(), "cluster": {}}, None, 1.0)["status"]``
    -> ``"ok"``.
    """
    meter = data.get("meter", {})
    functions = [{k: f.get(k) for k in REPORT_FIELDS} for f in meter.get("functions", [])]
    report = {
        "version": 1,
        "status": "failed" if failed else "ok",
        "failed_cell": failed,
        "wall_s": round(wall_s, 3),
        "functions": functions,
        "totals": meter.get("totals", {}),
        "platform": {k: meter.get("platform", {}).get(k) for k in ("cost", "replicas")},
        "prices": meter.get("prices", {}),
        "cluster": data.get("cluster", {}),
        "estimate": True,
    }
    report = _finite(report)
    report["text"] = format_report(report)
    return report


def format_report(report: dict[str, Any]) -> str:
    """The printed form of a report: one row per function, totals, the price source."""
    from .notebook.render import ESTIMATE_NOTE, latency, money, percent, table_text

    def pct(x: Any) -> str:
        return percent(x) if isinstance(x, int | float) and x else "–"

    rows = [
        (f["name"], f["kind"], f"{f['invocations'] or 0:,}", f"{f['errors'] or 0:,}",
         latency(f, "p50_ms"), latency(f, "p95_ms"), latency(f, "p99_ms"),
         f"{f['peak_replicas'] or 0}",
         money(f["cost"]), money(f["always_on_cost"]), pct(f["saving"]))
        for f in report["functions"]
    ]  # fmt: skip
    t = report["totals"]
    rows.append(
        ("total", "", f"{t.get('invocations') or 0:,}", f"{t.get('errors') or 0:,}", "", "", "",
         f"{t.get('peak_replicas') or 0}", money(t.get("cost")), money(t.get("always_on_cost")),
         pct(t.get("saving")))
    )  # fmt: skip
    prices = report.get("prices", {})
    lines = [
        table_text(HEADERS, rows) if report["functions"] else "no remote functions were called",
        f"platform overhead (prewarmed replicas) ≈{money(report['platform'].get('cost'))}",
        f"({ESTIMATE_NOTE}; prices: {prices.get('source', '?')}, as of "
        f"{prices.get('as_of') or '-'})",
    ]
    failed = report.get("failed_cell")
    status = (
        f"FAILED at cell {failed['index']} (In [{failed.get('execution_count') or ' '}]): "
        f"{failed['ename']}: {failed['evalue']}"
        if failed
        else "all cells ran"
    )
    lines.append(f"{status} · wall time {report['wall_s']:.1f} s")
    return "\n".join(lines)


# ---- running a notebook ---------------------------------------------------------------------


async def _hidden(client: Any, code: str, timeout: float = HIDDEN_TIMEOUT_S) -> str:
    """Run ``code`` in the kernel outside the notebook; return its stdout."""
    kc = client.kc
    msg_id = kc.execute(code, silent=False, store_history=False, allow_stdin=False)
    if inspect.isawaitable(msg_id):
        msg_id = await msg_id
    out: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the kernel did not finish {code!r} within {timeout:.0f} s")
        try:
            msg = await kc.get_iopub_msg(timeout=min(left, 5.0))
        except Exception:  # queue.Empty: nothing yet
            continue
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream" and content.get("name") == "stdout":
            out.append(content["text"])
        elif kind == "error":
            raise RuntimeError(f"{content.get('ename')}: {content.get('evalue')}")
        elif kind == "status" and content.get("execution_state") == "idle":
            return "".join(out)


def _loads_extension(nb: Any) -> bool:
    """Whether the notebook loads the extension itself (then it is not loaded twice)."""
    return any(
        _LOAD_LINE.match(line)
        for cell in nb.cells
        if cell.cell_type == "code"
        for line in cell.source.splitlines()
    )


def _failure(exc: Exception, index: int, cell: Any) -> dict[str, Any]:
    return {
        "index": index,
        "execution_count": cell.get("execution_count"),
        "ename": getattr(exc, "ename", type(exc).__name__),
        "evalue": getattr(exc, "evalue", str(exc)),
        "source": cell.get("source", "")[:2000],
    }


async def run_notebook(
    nb: Any, cwd: str, address: str | None, timeout: float | None, kernel_name: str
) -> tuple[dict[str, Any], str]:
    """Execute ``nb`` in place; return the report and the failing cell's traceback text."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    env = dict(os.environ)
    if address:
        env["NBSERVERLESS_ADDRESS"] = address
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=kernel_name,
        resources={"metadata": {"path": cwd}},
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
    )
    failed: dict[str, Any] | None = None
    failure_text = ""
    t0 = time.perf_counter()
    client.reset_execution_trackers()
    async with client.async_setup_kernel(env=env):
        info = await client.async_wait_for_reply(client.kc.kernel_info())
        if info is not None and "language_info" in info["content"]:
            nb.metadata["language_info"] = info["content"]["language_info"]
        if not _loads_extension(nb):
            await _hidden(client, LOAD_SNIPPET)
        for index, cell in enumerate(nb.cells):
            try:
                await client.async_execute_cell(
                    cell, index, execution_count=client.code_cells_executed + 1
                )
            except CellExecutionError as exc:
                failed = _failure(exc, index, cell)
                failure_text = _ANSI.sub("", str(exc))
                break
            except Exception as exc:  # timeout, dead kernel: report it as this cell's failure
                failed = _failure(exc, index, cell)
                failure_text = f"{type(exc).__name__}: {exc}"
                break
        client.set_widgets_metadata()
        try:
            text = await _hidden(client, REPORT_SNIPPET)
            data = json.loads(text[text.index(MARK) + len(MARK) :].strip().splitlines()[0])
        except Exception as exc:
            data = {"meter": {}, "cluster": {}, "error": f"no report from the kernel: {exc}"}
        try:
            await _hidden(client, SHUTDOWN_SNIPPET)
        except Exception as exc:
            print(f"nbserverless run: shutdown in the kernel failed: {exc}", file=sys.stderr)
    report = build_report(data, failed, time.perf_counter() - t0)
    return report, failure_text


def _embedded_cluster(address: str | None) -> tuple[str | None, bool]:
    """The address the kernel should use; starts the embedded cluster here (in this process's
    main thread, so it lives exactly as long as the run) when no address is configured."""
    from .core import cluster

    if address or any(os.environ.get(v, "").strip() for v in cluster.ADDRESS_ENV_VARS):
        return address, False
    import ray

    cluster.connect()
    return ray.get_runtime_context().gcs_address, True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nbserverless", description="nbserverless: serverless computing from a notebook."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="execute a notebook headless and report its remote functions",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("notebook", metavar="NOTEBOOK", help="the .ipynb file to execute")
    run.add_argument("-o", "--output", metavar="OUT.ipynb", help="write the executed notebook here")
    run.add_argument(
        "--address", help="cluster to use (e.g. ray://head:10001); default: embedded local"
    )
    run.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_CELL_TIMEOUT_S,
        help=f"seconds each cell may run (default {DEFAULT_CELL_TIMEOUT_S:g}; 0: no limit)",
    )
    run.add_argument("--kernel", help="kernel name (default: the notebook's, else python3)")
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point. Example: ``main(["run", "nb.ipynb", "-o", "out.ipynb"])`` -> 0."""
    import nbformat

    args = _parser().parse_args(argv)
    path = Path(args.notebook)
    try:
        nb = nbformat.read(path, as_version=4)
    except (OSError, ValueError) as exc:
        print(f"nbserverless run: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    kernel = args.kernel or nb.metadata.get("kernelspec", {}).get("name") or "python3"
    timeout = args.timeout if args.timeout and args.timeout > 0 else None
    cwd = str(path.resolve().parent)
    address, owned = _embedded_cluster(args.address)
    try:
        report, failure_text = asyncio.run(run_notebook(nb, cwd, address, timeout, kernel))
    finally:
        if owned:
            from .core import cluster

            cluster.disconnect()
    nb.metadata["nbserverless"] = report
    if args.output:
        nbformat.write(nb, args.output)
    if failure_text:
        print(failure_text.rstrip()[-6000:], file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"nbserverless run: {path}")
        print(report["text"])
        if args.output:
            print(f"executed notebook written to {args.output}")
    return 1 if report["failed_cell"] else 0


if __name__ == "__main__":
    sys.exit(main())
