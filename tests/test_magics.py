"""``%%serverless`` and ``%serverless`` in a real IPython shell and in a real Jupyter kernel
(nbclient), against the session's embedded cluster."""

from __future__ import annotations

import os
import re

import nbformat
import pytest
from IPython.core.error import UsageError
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

import nbserverless as nbs
from nbserverless.errors import SerializationError
from nbserverless.metering import pricing
from nbserverless.metering.meter import METER
from nbserverless.notebook import capture, magics

# ---- the analysis (no cluster) -------------------------------------------------------------


def test_analysis_finds_reads_before_assignment_and_assigned_names():
    src = (
        "import numpy as np\n"
        "def f(z):\n"
        "    return np.sum(z) + w\n"
        "r = f(data)\n"
        "q = [i * k for i in range(n)]\n"
        "t += 1\n"
        "y = 1\n"
        "print(y)\n"
        "if cond:\n"
        "    u = 1\n"
        "u\n"
    )
    names = capture.analyze(src)
    assert names.reads == ["w", "data", "range", "n", "k", "t", "print", "cond", "u"]
    assert names.assigns == ["np", "f", "r", "q", "t", "y", "u"]
    assert names.last_expr
    assert "np" not in names.reads and "y" not in names.reads and "i" not in names.reads


def test_analysis_sees_globals_of_classes_lambdas_and_global_statements():
    src = "class K(Base):\n    a = zz\ng = lambda v=dflt: v + glob\ndef h():\n    global out\n    out = 1\n"
    names = capture.analyze(src)
    assert {"Base", "zz", "dflt", "glob"} <= set(names.reads)
    assert {"K", "g", "h", "out"} <= set(names.assigns)
    assert not names.last_expr


def test_trailing_semicolon_hides_the_value():
    assert capture.is_quiet("x = 1\nx;")
    assert not capture.is_quiet("x = 1\nx  # a; comment")


# ---- a real IPython shell ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ip(cluster_address, shell):
    shell.run_line_magic("load_ext", "nbserverless")
    nbs.config(keep_alive=2.0)  # replicas of finished tests go away quickly
    yield shell
    shell.run_line_magic("unload_ext", "nbserverless")
    nbs.config.reset()


def run(ip, cell: str):
    """Run a cell as a notebook would (history on, so execution counts advance)."""
    return ip.run_cell(cell, store_history=True)


def row(name: str) -> dict:
    rows = [f for f in METER.snapshot()["functions"] if f["name"] == name]
    assert len(rows) == 1, f"expected one meter row named {name!r}, got {rows}"
    return rows[0]


def test_cell_ships_what_it_reads_and_brings_back_what_it_assigns(ip):
    import threading

    ip.user_ns.update(data=[1, 2, 3], unrelated_lock=threading.Lock())  # not read: never sent
    res = run(ip, "%%serverless --cpus 0.25\nimport os\ntotal = sum(data)\npid = os.getpid()")
    assert res.success, res.error_in_exec
    assert ip.user_ns["total"] == 6
    assert ip.user_ns["pid"] != os.getpid()  # it ran on a replica


def test_out_brings_back_exactly_the_listed_names(ip, capsys):
    ip.user_ns.pop("kept", None)
    ip.user_ns.pop("dropped", None)
    res = run(ip, "%%serverless --cpus 0.25 --out kept,missing\nkept = 1\ndropped = 2")
    assert res.success, res.error_in_exec
    assert ip.user_ns["kept"] == 1 and "dropped" not in ip.user_ns
    err = capsys.readouterr().err
    assert "not brought back: missing (the cell did not define it)" in err


def test_names_that_cannot_come_back_are_reported_in_one_line(ip, capsys):
    res = run(ip, "%%serverless --cpus 0.25\nimport threading\nlock = threading.Lock()\nx = 5")
    assert res.success, res.error_in_exec
    assert ip.user_ns["x"] == 5
    assert "threading" in ip.user_ns  # a module comes back by reference
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "not brought back" in ln]
    assert len(lines) == 1 and "lock (TypeError" in lines[0] and "pickle" in lines[0]


def test_an_input_that_cannot_be_pickled_fails_before_sending(ip):
    import threading

    ip.user_ns["held"] = {"guard": threading.Lock()}
    res = run(ip, "%%serverless --cpus 0.25 --name never-sent\nprint(held)")
    err = res.error_in_exec
    assert isinstance(err, SerializationError)
    assert "held['guard']" in str(err)
    assert err._render_traceback_() == [f"SerializationError: {err}"]
    assert not [f for f in METER.snapshot()["functions"] if f["name"] == "never-sent"]


def test_the_last_expression_is_the_cell_result_with_rich_reprs(ip):
    ip.user_ns["base"] = 40
    res = run(ip, "%%serverless --cpus 0.25\nbase + 2")
    assert res.success and res.result == 42
    assert ip.user_ns["Out"][res.execution_count] == 42  # a normal Out[] value
    res = run(ip, "%%serverless --cpus 0.25\nbase + 2;")
    assert res.success and res.result is None
    cell = (
        "%%serverless --cpus 0.25\n"
        "class Shown:\n"
        "    def _repr_html_(self):\n"
        "        return '<b>rich</b>'\n"
        "Shown()"
    )
    res = run(ip, cell)
    assert res.success, res.error_in_exec
    assert res.result._repr_html_() == "<b>rich</b>"  # the kernel test checks the display


def test_an_exception_keeps_its_type_and_the_cells_line_numbers(ip):
    res = run(ip, "%%serverless --cpus 0.25\ny = 1\nraise KeyError('nope')  # line 3\n")
    n = res.execution_count
    err = res.error_in_exec
    assert type(err) is KeyError and err.args == ("nope",)
    text = "\n".join(err._render_traceback_())
    assert f'File "<cell {n}>", line 3, in <module>' in text
    assert "raise KeyError('nope')  # line 3" in text
    assert "capture.py" not in text  # the executor's own frames are hidden


def test_debug_opens_a_remote_failure_in_the_users_frame(ip, monkeypatch):
    """``%debug`` after a remote failure debugs that local exception at the user's line,
    not in nbserverless, and not an earlier error IPython formatted itself."""
    import io
    import sys

    old = (
        "def local_fail():\n    stale_local = 'old error'\n    raise KeyError('old')\nlocal_fail()"
    )
    assert isinstance(run(ip, old).error_in_exec, KeyError)
    defined = run(ip, (
        "import nbserverless as nbs\n@nbs.remote(cpus=0.25)\ndef inverse(x):\n    return 1 / x\n"
        "def caller(y):\n    marker_local = 'in the caller'\n    return inverse(y)\n"
    ))  # fmt: skip
    assert defined.success, defined.error_in_exec
    res = run(ip, "caller(0)")
    assert isinstance(res.error_in_exec, ZeroDivisionError)
    commands = "p marker_local\np type(__import__('sys').last_value).__name__\nwhere\nq\n"
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdin", io.StringIO(commands))
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(ip.InteractiveTB, "pdb", None)  # the debugger made now reads these
    ip.run_line_magic("debug", "")
    text = out.getvalue()
    landing = next(line for line in text.splitlines() if line.startswith("> "))
    assert landing.endswith("caller()"), text
    assert "'in the caller'" in text and "'ZeroDivisionError'" in text
    assert "return inverse(y)" in text
    for noise in ("invoker.py", "function.py", "old error", "local_fail"):
        assert noise not in text, noise


def test_a_notebook_function_fails_with_its_own_cell_in_the_traceback(ip):
    defined = run(ip, "def explode(v):\n    return 1 / v\n")
    assert defined.success
    n = defined.execution_count
    res = run(ip, "%%serverless --cpus 0.25\nexplode(0)")
    assert res.execution_count == n + 1
    assert type(res.error_in_exec) is ZeroDivisionError
    text = "\n".join(res.error_in_exec._render_traceback_())
    assert f'File "<cell {n}>", line 2, in explode' in text
    assert "return 1 / v" in text
    assert f'File "<cell {n + 1}>", line 2' in text


@pytest.mark.parametrize(
    "line, needle",
    [
        ("--cpus abc", "invalid float value: 'abc'"),
        ("--memory 2XB", "memory='2XB'"),
        ("--bogus", "unrecognized arguments: --bogus"),
        ("--out 1x", "--out takes names"),
        ("--env NOEQUALS", "expected KEY=VALUE"),
    ],
)
def test_bad_options_give_a_one_line_usage_error(ip, capsys, line, needle):
    res = run(ip, f"%%serverless {line}\nx = 1")
    assert isinstance(res.error_in_exec, UsageError)
    assert needle in str(res.error_in_exec) and "\n" not in str(res.error_in_exec)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == [f"UsageError: {res.error_in_exec}"]


def test_a_cell_is_metered_under_its_number_and_reruns_reuse_the_pool(ip):
    nbs.config(prewarm=0)  # every run on the cell's own replica
    cell = "%%serverless --cpus 0.25\nimport os\nreplica_pid = os.getpid()"
    res = run(ip, cell)
    assert res.success
    n = res.execution_count
    first = ip.user_ns["replica_pid"]
    assert row(f"cell[{n}]")["kind"] == "cell"
    assert run(ip, cell).success
    stats = row(f"cell[{n + 1}]")  # the same row, named after the latest run
    assert stats["invocations"] == 2 and stats["cold_starts"] == 1
    assert ip.user_ns["replica_pid"] == first  # the warm replica ran it again
    assert run(ip, "%%serverless --cpus 0.25 --name tally\nt = 1").success
    assert row("tally")["invocations"] == 1


def test_config_shows_sets_and_validates(ip, capsys):
    ip.run_line_magic("serverless", "config")
    assert "keep_alive" in capsys.readouterr().out
    ip.run_line_magic("serverless", "config keep_alive=7 inline=false max_replicas=3")
    assert nbs.config.get("keep_alive") == 7 and nbs.config.get("inline") is False
    assert nbs.config.get("max_replicas") == 3
    for bad in ("config keep_alive=-1", "config bogus=1", "config inline=maybe", "config x"):
        with pytest.raises(UsageError):
            ip.run_line_magic("serverless", bad)
    assert nbs.config.get("keep_alive") == 7  # a rejected value leaves the old one
    ip.run_line_magic("serverless", "config keep_alive=2.0 inline=true max_replicas=8")


def test_prices_show_and_set_per_gpu_type(ip):
    try:
        table = ip.run_line_magic("serverless", "prices cpu=0.5 gpu.A100=2 request=0")
        assert table.cpu == 0.5 and table.gpu_price("A100") == 2 and table.request == 0
        view = ip.run_line_magic("serverless", "prices")
        assert view.table is pricing.current()
        text, html = repr(view), view._repr_html_()
        assert "per second" in text and "per hour" in text and "$0.50" in text  # cpu 0.5/s
        assert "$1,800.00" in text  # 0.5 USD/s for an hour
        assert not re.search(r"\de-\d", text) and "set by you" in text
        assert "per hour" in html and "set by you" in html
        with pytest.raises(UsageError):
            ip.run_line_magic("serverless", "prices cpu=-1")
        with pytest.raises(UsageError):
            ip.run_line_magic("serverless", "prices disk=1")
    finally:
        pricing.reset()


def test_default_prices_cite_their_list_by_name_and_date():
    from nbserverless.notebook.render import PriceView

    text = repr(PriceView(pricing.current()))
    assert "Modal pricing" in text and f"as of {pricing.AS_OF}" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("cpu (1 core)"))
    assert "$0.0000131" in line and "$0.047" in line  # per second, per hour
    assert not re.search(r"\de-\d", text)


def test_reset_status_and_bad_commands(ip, capsys):
    assert run(ip, "%%serverless --cpus 0.25\nv = 1").success
    assert METER.snapshot()["totals"]["invocations"] > 0
    ip.run_line_magic("serverless", "reset")
    assert METER.snapshot()["totals"]["invocations"] == 0
    capsys.readouterr()
    ip.run_line_magic("serverless", "status")
    assert "nbserverless dashboard" in capsys.readouterr().out
    for bad in ("", "bogus", "reset now"):
        with pytest.raises(UsageError):
            ip.run_line_magic("serverless", bad)


def test_unload_removes_the_magics_and_load_brings_them_back(ip):
    ip.run_line_magic("unload_ext", "nbserverless")
    assert "serverless" not in ip.magics_manager.magics["cell"]
    assert "serverless" not in ip.magics_manager.magics["line"]
    ip.run_line_magic("load_ext", "nbserverless")
    assert ip.magics_manager.magics["cell"]["serverless"].__name__ == "serverless_cell"
    assert run(ip, "%%serverless --cpus 0.25\n1 + 1").result == 2


# ---- a real Jupyter kernel -------------------------------------------------------------------

KERNEL_CELLS = [
    "%load_ext nbserverless\nimport nbserverless as nbs\nnbs.config(cpus=0.25, keep_alive=5);",
    "base = 40",
    "%%serverless\nprint('remote print from cell three')\nanswer = base + 2",
    "print('local print from cell four')\nanswer",
    "%%serverless\nclass Shown:\n    def _repr_html_(self):\n        return '<b>rich</b>'\nShown()",
    "%%serverless\nx = 1\nraise ValueError('bad value')",
    "%%serverless --cpus abc\nx = 1",
    # 7-8: IPython syntax and display() in the body
    "%%serverless\n%time t = 20 + 1\n!echo from-the-shell\nlen?\n"
    "from IPython.display import display, HTML\ndisplay(HTML('<i>remote display</i>'))",
    "t",
    # 9-11: names changed in place come back, identity kept
    "data = [1, 2, 3]\ncfg = {'k': 0}\nalias = data",
    "%%serverless\ndata.append(4)\ncfg['k'] = 'v'",
    "(data, cfg, alias is data)",
    # 12: --out leaves a changed name behind: the cell says so
    "%%serverless --out t\ndata.append(5)\nt = 1",
]


@pytest.fixture(scope="module")
def kernel_nb(cluster_address):
    """One kernel runs every cell (nbclient), attached to the session cluster."""
    nb = new_notebook(cells=[new_code_cell(src) for src in KERNEL_CELLS])
    env = dict(os.environ, NBSERVERLESS_ADDRESS=cluster_address)
    client = NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True)
    client.execute(env=env)
    return nb


def _text(cell, name: str = "stdout") -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("name") == name)


def test_kernel_remote_output_lands_in_its_own_cell(kernel_nb):
    three, four = kernel_nb.cells[2], kernel_nb.cells[3]
    assert "remote print from cell three" in _text(three)
    assert "remote print from cell three" not in _text(four)
    assert _text(four) == "local print from cell four\n"
    result = [o for o in four.outputs if o.output_type == "execute_result"]
    assert result[0]["data"]["text/plain"] == "42"


def test_kernel_last_value_keeps_its_rich_repr(kernel_nb):
    results = [o for o in kernel_nb.cells[4].outputs if o.output_type == "execute_result"]
    assert results and results[0]["data"]["text/html"] == "<b>rich</b>"


def test_kernel_error_shows_the_type_and_the_cells_lines(kernel_nb):
    cell = kernel_nb.cells[5]
    errors = [o for o in cell.outputs if o.output_type == "error"]
    assert errors and errors[0]["ename"] == "ValueError" and errors[0]["evalue"] == "bad value"
    text = "\n".join(errors[0]["traceback"])
    assert f'File "<cell {cell.execution_count}>", line 3, in <module>' in text
    assert "raise ValueError('bad value')" in text


def test_kernel_usage_error_is_one_line(kernel_nb):
    cell = kernel_nb.cells[6]
    assert not [o for o in cell.outputs if o.output_type == "error"]
    err = [ln for ln in _text(cell, "stderr").splitlines() if ln.strip()]
    assert err == ["UsageError: argument --cpus: invalid float value: 'abc'"]


def test_kernel_ipython_syntax_and_remote_display_work_in_the_body(kernel_nb):
    cell = kernel_nb.cells[7]
    assert not [o for o in cell.outputs if o.output_type == "error"], cell.outputs
    out = _text(cell)
    assert "Wall time" in out and "from-the-shell" in out and "Docstring" in out
    shown = [o["data"]["text/html"] for o in cell.outputs if o.output_type == "display_data"
             and "nbserverless-inline" not in o["data"].get("text/html", "")]  # fmt: skip
    assert shown == ["<i>remote display</i>"]  # (the cell's own widget aside)
    result = [o for o in kernel_nb.cells[8].outputs if o.output_type == "execute_result"]
    assert result[0]["data"]["text/plain"] == "21"  # %time's assignment came back


def test_kernel_names_changed_in_place_come_back_keeping_identity(kernel_nb):
    assert not [o for o in kernel_nb.cells[10].outputs if o.output_type == "error"]
    result = [o for o in kernel_nb.cells[11].outputs if o.output_type == "execute_result"]
    assert result[0]["data"]["text/plain"] == "([1, 2, 3, 4], {'k': 'v'}, True)"
    err = _text(kernel_nb.cells[12], "stderr")
    assert "not brought back: data (changed in place on the replica; --out" in err


def test_update_in_place_keeps_identity_or_refuses():
    a, d, s = [1], {"x": 1}, {1}
    assert capture.update_in_place(a, [1, 2]) and a == [1, 2]
    assert capture.update_in_place(d, {"y": 2}) and d == {"y": 2}
    assert capture.update_in_place(s, {3}) and s == {3}
    assert not capture.update_in_place((1,), (1, 2))  # immutable: rebound instead
    assert not capture.update_in_place([1], (1,))  # another type


def test_quickstart_notebook_is_committed_without_outputs():
    from pathlib import Path

    path = Path(__file__).parent.parent / "examples" / "quickstart.ipynb"
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].source.startswith("%load_ext nbserverless")
    assert any(c.source.startswith("%%serverless") for c in code)
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert magics.COMMANDS[0] == "status" and "%serverless status" in code[-1].source


def test_ctrl_c_cancels_the_remote_run(ip):
    import _thread
    import threading
    import time

    from conftest import wait_until

    def interrupt_when_running():
        wait_until(
            lambda: any(
                f["name"] == "sleepy" and f["in_flight"] for f in METER.snapshot()["functions"]
            ),
            timeout=60,
            what="the cell to run on a replica",
        )
        _thread.interrupt_main()

    t = threading.Thread(target=interrupt_when_running, daemon=True)
    t.start()
    t0 = time.monotonic()
    res = run(ip, "%%serverless --cpus 0.25 --name sleepy\nimport time\ntime.sleep(120)")
    t.join(5)
    assert isinstance(res.error_in_exec, KeyboardInterrupt)
    assert time.monotonic() - t0 < 60
    wait_until(lambda: row("sleepy")["in_flight"] == 0, timeout=30, what="the call to end")


def test_kernel_sigterm_leaves_no_native_stack_dump(cluster_address, tmp_path):
    """Jupyter stops a kernel with SIGTERM when it does not exit on request: Ray's C++
    failure-signal handler must not print a stack dump into the server's log."""
    import signal

    from conftest import wait_until
    from jupyter_client import KernelManager

    km = KernelManager(kernel_name="python3")
    err = tmp_path / "kernel.log"
    with open(err, "wb") as log:
        km.start_kernel(env={**os.environ, "NBSERVERLESS_ADDRESS": cluster_address},
                        stdout=log, stderr=log)  # fmt: skip
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        code = "%load_ext nbserverless\nimport nbserverless as nbs\nnbs.connect()"
        assert kc.execute_interactive(code, timeout=180)["content"]["status"] == "ok"
        assert kc.execute_interactive("import ray; ray.is_initialized()", timeout=60)
        km.signal_kernel(signal.SIGTERM)
        wait_until(lambda: not km.is_alive(), timeout=60, what="the kernel to exit on SIGTERM")
    finally:
        kc.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=True)
    text = err.read_text(errors="replace")
    assert "SIGTERM" not in text and "*** " not in text, text[-3000:]
