"""What remote code prints shows up in the caller's output, live for long calls."""

from __future__ import annotations

import os
import sys
import time

import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

import nbserverless as nbs


def closed_by_peer(sock) -> bool:
    """Whether the other end closed the connection (a FIN, or a reset if data was unread)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


class Recorder:
    def __init__(self):
        self.writes: list[tuple[float, str]] = []

    def write(self, text):
        self.writes.append((time.monotonic(), text))
        return len(text)

    def flush(self):
        pass

    def text(self):
        return "".join(t for _, t in self.writes)


def test_prints_reach_the_callers_streams(ray_cluster, capsys):
    @nbs.remote(cpus=0.1)
    def talk(x):
        print(f"hello {x}")
        print("warning!", file=sys.stderr)
        return x

    assert talk(5) == 5
    out, err = capsys.readouterr()
    assert "hello 5" in out and "warning!" in err


def test_long_calls_stream_output_while_running(ray_cluster, monkeypatch):
    @nbs.remote(cpus=0.1)
    def slow_talk():
        print("starting", flush=True)
        time.sleep(2.0)
        print("done")
        return 1

    rec = Recorder()
    monkeypatch.setattr(sys, "stdout", rec)
    slow_talk()  # warm, so the timing below is the call itself
    rec.writes.clear()
    assert slow_talk() == 1
    returned = time.monotonic()
    text = rec.text()
    assert text.index("starting") < text.index("done")
    first = next(t for t, s in rec.writes if "starting" in s)
    assert returned - first > 1.0  # "starting" arrived while the call still ran


def test_map_output_comes_back_with_results(ray_cluster, capsys):
    @nbs.remote(cpus=0.1)
    def shout(x):
        print(f"item-{x}")
        return x

    assert list(shout.map(range(5), progress=False)) == list(range(5))
    out = capsys.readouterr().out
    assert all(f"item-{i}" in out for i in range(5))


# ---- calls still running when their cell ended ----------------------------------------


WAITER = """\
def wait_then_print(path, line):
    import os, time

    deadline = time.monotonic() + 60  # bounded: the marker file is made by the test
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    if line is not None:
        print(line)
    return "done"
"""


def _waiter():
    """``wait_then_print`` made as a notebook makes it (in ``__main__``: shipped by value)."""
    namespace = {"__name__": "__main__"}
    exec(WAITER, namespace)
    return namespace["wait_then_print"]


def test_a_cells_running_calls_can_be_retargeted_and_finished_ones_are_not(
    ray_cluster, tmp_path, capsys
):
    from nbserverless.core import output

    cell = object()
    output.set_tagger(lambda: cell)
    try:
        quick = nbs.remote(cpus=0.25)(lambda: print("quick line") or 1)
        slow = nbs.remote(cpus=0.25)(_waiter())
        assert quick() == 1  # settled (and released) before it returned
        marker = tmp_path / "go"
        fut = slow.submit(str(marker), "late line 4c1e")
    finally:
        output.set_tagger(None)
    running = output.still_running(cell)
    assert len(running) == 1 and running[0].pending == 1
    assert output.still_running(cell) == []  # the cell is forgotten once asked
    got: list[tuple[str, str]] = []
    running[0].retarget(lambda stream, text: got.append((stream, text)))
    marker.touch()
    assert fut.result(timeout=60) == "done"
    assert running[0].pending == 0
    assert "".join(t for s, t in got if s == "stdout") == "late line 4c1e\n"
    out = capsys.readouterr().out
    assert "quick line" in out and "late line 4c1e" not in out


def test_untagged_sinks_are_not_tracked(ray_cluster):
    from nbserverless.core import output

    @nbs.remote(cpus=0.25)
    def one():
        return 1

    fut = one.submit()
    assert fut.result(timeout=60) == 1
    assert output._open == {}


LATE_LINE = "late line 9b2d from the replica"


@pytest.fixture(scope="module")
def late_nb(cluster_address, tmp_path_factory):
    """Cells 1 and 2 submit calls that end after them (the first prints, the second does not);
    cell 3 lets them go and waits."""
    marker = str(tmp_path_factory.mktemp("late") / "go")
    cells = [
        "%load_ext nbserverless\nimport nbserverless as nbs",
        WAITER
        + "talker = nbs.remote(cpus=0.25)(wait_then_print)\n"
        + f"fut = talker.submit({marker!r}, {LATE_LINE!r})\nprint('cell one ends')",
        f"quiet = talker.submit({marker!r}, None)",
        f"open({marker!r}, 'w').close()\n"
        "print(fut.result(timeout=60), quiet.result(timeout=60))\nprint('cell three ends')",
        "print('cell four')",
    ]
    nb = new_notebook(cells=[new_code_cell(src) for src in cells])
    env = dict(os.environ, NBSERVERLESS_ADDRESS=cluster_address)
    NotebookClient(nb, timeout=180, kernel_name="python3", allow_errors=True).execute(env=env)
    return nb


def _output_texts(cell) -> list[str]:
    texts = []
    for o in cell.outputs:
        if o.output_type == "stream":
            texts.append(o.text)
        elif o.output_type in ("display_data", "execute_result"):
            texts.append(o.data.get("text/plain", ""))
        elif o.output_type == "error":
            texts.append("\n".join(o.traceback))
    return texts


def _late_views(cell, state: dict) -> list:
    """The cell's displays of a late-output box (by its CSS class in the saved widget state)."""
    views = []
    for o in cell.outputs:
        view = o.get("data", {}).get("application/vnd.jupyter.widget-view+json")
        if view and "nbserverless-late" in state[view["model_id"]]["state"].get("_dom_classes", []):
            views.append(o)
    return views


def test_kernel_output_after_the_cell_ended_lands_in_that_cells_widget(late_nb):
    from nbserverless.notebook.late import HEADER

    one, quiet, three = late_nb.cells[1], late_nb.cells[2], late_nb.cells[3]
    assert "cell one ends\n" in _output_texts(one), one.outputs
    assert "".join(_output_texts(three)) == "done done\ncell three ends\n"
    state = late_nb.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    views = _late_views(one, state)
    assert len(views) == 1, one.outputs
    assert views[0].data["text/plain"] == f"{HEADER}\n{LATE_LINE}\n"
    everywhere = "".join(t for c in late_nb.cells for t in _output_texts(c))
    assert everywhere.count(LATE_LINE) == 1
    outputs = [m["state"]["outputs"] for m in state.values() if m["model_name"] == "OutputModel"]
    assert sorted(outputs, key=len) == [
        [],
        [{"output_type": "stream", "name": "stdout", "text": LATE_LINE + "\n"}],
    ]

    def shown(view) -> bool:  # the view's box, by its layout's display
        box = state[view.data["application/vnd.jupyter.widget-view+json"]["model_id"]]["state"]
        layout = state[box["layout"].removeprefix("IPY_MODEL_")]["state"]
        return layout.get("display") != "none"

    assert shown(views[0])
    silent = _late_views(quiet, state)  # a call that printed nothing after its cell: shows nothing
    assert len(silent) == 1 and silent[0].data["text/plain"] == "" and not shown(silent[0])


# ---- the output socket: loopback, token first, one thread --------------------------------


def _router_address():
    from nbserverless.core.output import ROUTER

    return ROUTER, ROUTER.address


def _connect(address):
    import socket

    return socket.create_connection(address[:2], timeout=5)


def test_socket_binds_the_loopback_on_the_embedded_cluster(ray_cluster):
    @nbs.remote(cpus=0.1)
    def one():
        return 1

    assert one() == 1
    _, address = _router_address()
    assert address is not None and address[0] == "127.0.0.1"


def test_socket_binds_the_loopback_when_connected_by_address_to_local_nodes(subprocess_env):
    """``nbserverless run`` starts its cluster and the kernel connects by address: every node
    is on this machine, so the socket still listens on the loopback only."""
    import subprocess

    code = (
        "import nbserverless as nbs\n"
        "from nbserverless.core import cluster\n"
        "from nbserverless.core.output import ROUTER\n"
        "f = nbs.remote(cpus=0.1)(lambda: 7)\n"
        "assert f() == 7\n"
        "print('EMBEDDED', cluster.is_embedded(), 'BOUND', ROUTER.address[0])\n"
        "nbs.shutdown()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env, capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "EMBEDDED False BOUND 127.0.0.1" in out.stdout


def test_idle_unauthenticated_connections_hold_no_threads(ray_cluster, monkeypatch):
    """300 idle connections that never send the token: no thread each, at most MAX_PENDING
    kept, all dropped after the auth timeout; live output keeps working meanwhile."""
    import threading

    from conftest import wait_until

    from nbserverless.core import output

    @nbs.remote(cpus=0.1)
    def chatty():
        print("still here", flush=True)
        time.sleep(1.5)
        return 2

    assert chatty() == 2  # the router is up
    router, address = _router_address()
    threads_before = threading.active_count()
    socks = [_connect(address) for _ in range(300)]
    try:
        wait_until(lambda: sum(router.connections()) > 0, what="connections accepted")
        assert threading.active_count() <= threads_before + 1  # not one per connection
        assert router.connections()[0] <= output.MAX_PENDING
        rec = Recorder()
        monkeypatch.setattr(sys, "stdout", rec)
        assert chatty() == 2
        assert "still here" in rec.text()
        wait_until(
            lambda: router.connections()[0] == 0,
            timeout=output.AUTH_TIMEOUT_S + 10,
            what="unauthenticated connections dropped",
        )
    finally:
        for s in socks:
            s.close()


def test_wrong_token_is_dropped_and_frames_unpickle_plain_data_only(ray_cluster, tmp_path):
    """Nothing is unpickled before the token matches; after it, no class or call is loaded."""
    import os
    import pathlib
    import pickle
    import struct

    @nbs.remote(cpus=0.1)
    def one():
        return 1

    assert one() == 1
    router, address = _router_address()
    marker = tmp_path / "unpickled"

    class Evil:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    payload = pickle.dumps((1, Evil()))
    frame = struct.pack("!I", len(payload)) + payload
    for token in (b"x" * 32, address[2].encode()):  # wrong token, then the right one
        s = _connect(address)
        s.sendall(struct.pack("!I", len(token)) + token + frame)
        s.settimeout(10)
        assert closed_by_peer(s)  # closed by the kernel
        s.close()
    assert not os.path.exists(marker)
