"""``nbserverless run``: a real notebook in a real kernel (nbclient) attached to the session
cluster; the printed report, the report in the output notebook's metadata, the exit status."""

from __future__ import annotations

import json
import subprocess
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from nbserverless import cli

OK_CELLS = [
    "import nbserverless as nbs\n\n"
    "@nbs.remote(cpus=0.25, keep_alive=5)\n"
    "def double(x):\n"
    "    return 2 * x\n\n"
    "assert list(double.map(range(5))) == [0, 2, 4, 6, 8]",
    "%%serverless --cpus 0.25 --name tally\ntotal = sum(range(4))",
    "assert total == 6",
]
FAILING_CELLS = [
    "x = 1",
    "%%serverless --cpus 0.25\nraise RuntimeError('boom')",
    "print('never runs')",
]


def _write(tmp_path, name, cells):
    path = tmp_path / name
    nb = new_notebook(cells=[new_code_cell(src) for src in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(nb, path)
    return path


def test_run_prints_the_report_and_stores_it_in_the_metadata(tmp_path, cluster_address, capsys):
    path = _write(tmp_path, "ok.ipynb", OK_CELLS)
    out = tmp_path / "ok.out.ipynb"
    code = cli.main(["run", str(path), "-o", str(out), "--address", cluster_address])
    printed = capsys.readouterr().out
    assert code == 0, printed
    for needle in ("double", "tally", "calls", "p99", "always-on (est.)", "saving", "all cells"):
        assert needle in printed
    report = nbformat.read(out, as_version=4).metadata["nbserverless"]
    assert report["status"] == "ok" and report["failed_cell"] is None
    rows = {f["name"]: f for f in report["functions"]}
    assert rows["double"]["invocations"] == 5 and rows["double"]["errors"] == 0
    assert rows["tally"]["kind"] == "cell" and rows["tally"]["invocations"] == 1
    for key in ("p50_ms", "p95_ms", "p99_ms", "peak_replicas", "cost", "always_on_cost"):
        assert key in rows["double"]
    # the map may finish on a stand-in before its replicas are up (bridge.py): either way
    # its time is billed, and no more replicas start than there are items
    assert rows["double"]["peak_replicas"] <= 5 and rows["double"]["cost"] > 0
    assert report["text"] in printed  # the same report, printed and stored
    assert report["estimate"] is True and report["prices"]["source"]
    json.dumps(report, allow_nan=False)  # strict JSON


def test_run_exits_non_zero_naming_the_failing_cell(tmp_path, cluster_address, capsys):
    path = _write(tmp_path, "bad.ipynb", FAILING_CELLS)
    out = tmp_path / "bad.out.ipynb"
    code = cli.main(["run", str(path), "-o", str(out), "--address", cluster_address])
    captured = capsys.readouterr()
    assert code == 1
    assert "FAILED at cell 1 (In [2]): RuntimeError: boom" in captured.out
    assert "boom" in captured.err
    nb = nbformat.read(out, as_version=4)
    report = nb.metadata["nbserverless"]
    assert report["status"] == "failed" and report["failed_cell"]["index"] == 1
    assert report["failed_cell"]["ename"] == "RuntimeError"
    assert [f["errors"] for f in report["functions"]] == [1]
    assert nb.cells[2].outputs == []  # execution stopped at the failing cell


def test_run_without_output_writes_nothing_and_bad_paths_exit_2(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "missing.ipynb")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_console_entry_point_help():
    res = subprocess.run(
        [sys.executable, "-m", "nbserverless.cli", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0
    assert "-o OUT.ipynb" in res.stdout and "--address" in res.stdout
    assert "without -o nothing is written" in res.stdout
