"""The kernel end of the ``nbserverless`` comm, seen by a real kernel client.

A real ipykernel runs ``%load_ext nbserverless``; the client reads iopub like JupyterLab does
and sends comm messages on the shell channel like the lab extension does.
"""

from __future__ import annotations

import os
import queue
import time
import uuid

import pytest
from jupyter_client.manager import start_new_kernel

from nbserverless.notebook import snapshot

TARGET = "nbserverless"


class Kernel:
    """A running kernel plus a client that keeps every iopub message it has read."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.km, self.kc = start_new_kernel(kernel_name="python3", startup_timeout=60, env=env)
        self.seen: list[dict] = []

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)

    def execute(self, code: str, timeout: float = 60) -> dict:
        """Run code, return the execute_reply; fail on an error reply."""
        msg_id = self.kc.execute(code)
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        assert reply["content"]["status"] == "ok", reply["content"]
        return reply

    def eval(self, expr: str, timeout: float = 60):
        """Value of a Python expression in the kernel (via user_expressions)."""
        msg_id = self.kc.execute("", user_expressions={"v": expr})
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        v = reply["content"]["user_expressions"]["v"]
        assert v["status"] == "ok", v
        import ast

        return ast.literal_eval(v["data"]["text/plain"])

    def wait_iopub(self, pred, timeout: float = 30.0, since: int | None = None) -> dict:
        """Read iopub until a message satisfies ``pred``; every message read is kept.
        With ``since``, messages already read from that index on count too."""
        if since is not None:
            for msg in self.seen[since:]:
                if pred(msg):
                    return msg
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching iopub message within {timeout:.0f} s")
            try:
                msg = self.kc.get_iopub_msg(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            self.seen.append(msg)
            if pred(msg):
                return msg

    def drain(self, seconds: float) -> list[dict]:
        """All iopub messages that arrive within a measuring window of ``seconds``."""
        out = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = self.kc.get_iopub_msg(timeout=left)
            except queue.Empty:
                break
            self.seen.append(msg)
            out.append(msg)
        return out

    def send_comm(self, comm_id: str, data) -> None:
        msg = self.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
        self.kc.shell_channel.send(msg)

    def open_comm(self, comm_id: str) -> None:
        msg = self.kc.session.msg(
            "comm_open", {"comm_id": comm_id, "target_name": TARGET, "data": {}}
        )
        self.kc.shell_channel.send(msg)


def is_open(msg) -> bool:
    return msg["msg_type"] == "comm_open" and msg["content"].get("target_name") == TARGET


def snapshot_of(msg, comm_id: str | None = None):
    if msg["msg_type"] != "comm_msg":
        return None
    if comm_id is not None and msg["content"]["comm_id"] != comm_id:
        return None
    data = msg["content"]["data"]
    return data if isinstance(data, dict) and data.get("type") == "snapshot" else None


def snapshot_where(comm_id, cond):
    def pred(msg):
        snap = snapshot_of(msg, comm_id)
        return snap is not None and cond(snap)

    return pred


def fn(snap, name):
    for f in snap["functions"]:
        if f["name"] == name:
            return f
    return None


# Records calls into the kernel's real meter the way the pool does (no Ray needed).
FEED = """
from nbserverless.metering.meter import METER
_fm = METER.function({key!r}, name={key!r}, kind="function")
_fm.submitted({n}); _fm.dispatched({n})
_fm.finished({n}, errors=0, total_s=0.002, exec_s=0.002)
"""


def closed(comm_id):
    return lambda m: m["msg_type"] == "comm_close" and m["content"]["comm_id"] == comm_id


@pytest.fixture(scope="module")
def kernel(cluster_address):
    # %load_ext connects the kernel to the test session's cluster (no second Ray start)
    k = Kernel(env={**os.environ, "NBSERVERLESS_ADDRESS": cluster_address})
    try:
        # Before the extension is loaded, a comm the lab opens is closed at once (the panel
        # shows "not loaded").
        early = uuid.uuid4().hex
        k.open_comm(early)
        k.wait_iopub(closed(early), timeout=20)
        k.execute("%load_ext nbserverless")
        yield k
    finally:
        k.close()


@pytest.fixture(scope="module")
def kernel_comm_id(kernel):
    msg = kernel.wait_iopub(is_open)
    return msg["content"]["comm_id"]


def test_comm_open_and_first_snapshot(kernel, kernel_comm_id):
    snap_msg = kernel.wait_iopub(snapshot_where(kernel_comm_id, lambda s: True))
    snap = snapshot_of(snap_msg)
    assert snap["version"] == 2
    assert isinstance(snap["time"], float) and snap["time"] > 1.7e9
    assert set(snap["cluster"]) == {*snapshot.CLUSTER_FIELDS, "node_history"}
    assert isinstance(snap["functions"], list)
    assert set(snap["totals"]) >= {"invocations", "cost"}


def test_snapshot_follows_meter(kernel, kernel_comm_id):
    kernel.execute(FEED.format(key="square", n=7))
    msg = kernel.wait_iopub(
        snapshot_where(kernel_comm_id, lambda s: (fn(s, "square") or {}).get("invocations") == 7)
    )
    f = fn(snapshot_of(msg), "square")
    for key in snapshot.FUNCTION_FIELDS:
        assert key in f, key
    assert f["errors"] == 0
    assert f["p50_ms"] is not None and f["p50_ms"] > 0
    kernel.execute(FEED.format(key="square", n=5))
    kernel.wait_iopub(
        snapshot_where(kernel_comm_id, lambda s: (fn(s, "square") or {}).get("invocations") == 12)
    )


WAIT = """
from nbserverless.metering.meter import METER
_fm = METER.function("waiter", name="waiter", kind="function")
_fm.keep_alive_label = "keep-alive 31 s (learned)"
_fm.waiting_for_node, _fm.waiting_for_node_s = {n}, {s}
"""


def test_a_wait_for_a_node_alone_sends_a_snapshot_with_it(kernel, kernel_comm_id):
    kernel.execute(FEED.format(key="waiter", n=1))
    kernel.wait_iopub(snapshot_where(kernel_comm_id, lambda s: fn(s, "waiter") is not None))
    # no meter record: only the capacity tick's fields change
    kernel.execute(WAIT.format(n=2, s=12.5))
    msg = kernel.wait_iopub(
        snapshot_where(kernel_comm_id, lambda s: (fn(s, "waiter") or {}).get("waiting_for_node"))
    )
    f = fn(snapshot_of(msg), "waiter")
    assert (f["waiting_for_node"], f["waiting_for_node_s"]) == (2, 12.5)
    assert f["keep_alive"] == "keep-alive 31 s (learned)"
    kernel.execute(WAIT.format(n=0, s=0.0))
    kernel.wait_iopub(
        snapshot_where(
            kernel_comm_id, lambda s: (fn(s, "waiter") or {}).get("waiting_for_node") == 0
        )
    )


def test_quiet_meter_sends_nothing(kernel, kernel_comm_id):
    kernel.execute(FEED.format(key="quiet", n=1))
    kernel.wait_iopub(snapshot_where(kernel_comm_id, lambda s: fn(s, "quiet") is not None))
    # Once nothing changes (the cluster's prewarmed replica may still be starting), a 1.5 s
    # window passes without any snapshot; a comm that kept sending would never get there.
    deadline = time.monotonic() + 30
    while [m for m in kernel.drain(1.5) if snapshot_of(m)]:
        assert time.monotonic() < deadline, "snapshots keep coming with nothing changing"


def test_rate_limited(kernel, kernel_comm_id):
    # The kernel records calls continuously for 2 s (≈ thousands of versions).
    kernel.execute(
        "import time as _t\n"
        "from nbserverless.metering.meter import METER\n"
        "_fm = METER.function('busy', name='busy', kind='function')\n"
        "_end = _t.monotonic() + 2.0\n"
        "_n = 0\n"
        "while _t.monotonic() < _end:\n"
        "    _fm.submitted(1); _fm.dispatched(1); _fm.finished(1, total_s=0.001, exec_s=0.001)\n"
        "    _n += 1\n"
    )
    n = kernel.eval("_n")
    assert n > 100
    kernel.wait_iopub(
        snapshot_where(kernel_comm_id, lambda s: (fn(s, "busy") or {}).get("invocations") == n)
    )
    snaps = [
        m
        for m in kernel.seen[-400:]
        if snapshot_of(m, kernel_comm_id) and fn(snapshot_of(m), "busy") is not None
    ]
    times = [snapshot_of(m)["time"] for m in snaps]
    span = max(times) - min(times)
    # at most ~4 a second (+1 for the window edges)
    assert len(snaps) <= 4 * span + 2, (len(snaps), span)


def test_refresh_command_sends_now(kernel, kernel_comm_id):
    kernel.drain(0.3)
    before = time.time()
    kernel.send_comm(kernel_comm_id, {"type": "command", "command": "refresh"})
    msg = kernel.wait_iopub(snapshot_where(kernel_comm_id, lambda s: True), timeout=10)
    assert snapshot_of(msg)["time"] >= before - 1


def test_unknown_and_malformed_messages_ignored(kernel, kernel_comm_id):
    for bad in (
        {"type": "command", "command": "format_disk"},
        {"type": "nonsense"},
        "just a string",
        [1, 2, 3],
        {"command": "reset"},  # no type: not a command, must not reset
    ):
        kernel.send_comm(kernel_comm_id, bad)
    # The kernel is alive, the comm still answers, and nothing was reset.
    kernel.send_comm(kernel_comm_id, {"type": "command", "command": "refresh"})
    msg = kernel.wait_iopub(snapshot_where(kernel_comm_id, lambda s: True), timeout=10)
    assert (fn(snapshot_of(msg), "square") or {}).get("invocations") == 12
    assert not [m for m in kernel.seen if m["msg_type"] == "error"]
    assert kernel.eval("1 + 1") == 2


def test_reset_command_zeroes_counts(kernel, kernel_comm_id):
    assert kernel.eval("METER.snapshot()['totals']['invocations']") > 0
    kernel.send_comm(kernel_comm_id, {"type": "command", "command": "reset"})
    msg = kernel.wait_iopub(
        snapshot_where(
            kernel_comm_id,
            lambda s: (
                s["totals"]["invocations"] == 0
                and all((f.get("invocations") or 0) == 0 for f in s["functions"])
            ),
        ),
        timeout=10,
    )
    assert snapshot_of(msg)["totals"]["invocations"] == 0
    assert kernel.eval("METER.snapshot()['totals']['invocations']") == 0


def test_lab_opened_comm_gets_snapshots(kernel, kernel_comm_id):
    """After a page reload the lab opens its own comm to the registered target."""
    own = uuid.uuid4().hex
    kernel.open_comm(own)
    kernel.wait_iopub(snapshot_where(own, lambda s: True), timeout=10)
    kernel.execute(FEED.format(key="after_reload", n=3))
    kernel.wait_iopub(
        snapshot_where(own, lambda s: (fn(s, "after_reload") or {}).get("invocations") == 3)
    )
    # commands on the lab's own comm work too
    kernel.send_comm(own, {"type": "command", "command": "reset"})
    kernel.wait_iopub(snapshot_where(own, lambda s: s["totals"]["invocations"] == 0), timeout=10)


def test_reload_of_same_tab_closes_its_old_comm(kernel, kernel_comm_id):
    """A tab that reloads sends the same client key: the kernel drops its old comm."""
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    mark = len(kernel.seen)
    for cid in (first, second):
        msg = kernel.kc.session.msg(
            "comm_open",
            {"comm_id": cid, "target_name": TARGET, "data": {"client": "tab-1:nb.ipynb"}},
        )
        kernel.kc.shell_channel.send(msg)
        kernel.wait_iopub(snapshot_where(cid, lambda s: True), timeout=10)
    kernel.wait_iopub(closed(first), timeout=10, since=mark)
    mark = len(kernel.seen)
    kernel.execute(FEED.format(key="two_tabs", n=1))
    kernel.wait_iopub(snapshot_where(second, lambda s: fn(s, "two_tabs") is not None))
    # the kernel's own comm still gets snapshots too
    kernel.wait_iopub(
        snapshot_where(kernel_comm_id, lambda s: fn(s, "two_tabs") is not None), since=mark
    )


def test_unload_closes_comms_and_stops_sending(kernel, kernel_comm_id):
    """Runs last: %unload_ext closes every comm; %load_ext again opens a fresh one."""
    assert (
        kernel.eval("__import__('nbserverless.notebook.comm', fromlist=['comm']).running()") is True
    )
    kernel.execute("%unload_ext nbserverless")
    kernel.wait_iopub(closed(kernel_comm_id), timeout=10)
    assert (
        kernel.eval("__import__('nbserverless.notebook.comm', fromlist=['comm']).running()")
        is False
    )
    kernel.execute(FEED.format(key="after_stop", n=1))
    assert [m for m in kernel.drain(1.0) if snapshot_of(m)] == []
    # the target is gone too: a lab comm is closed at once again
    late = uuid.uuid4().hex
    kernel.open_comm(late)
    kernel.wait_iopub(closed(late), timeout=10)
    kernel.execute("%load_ext nbserverless")
    cid2 = kernel.wait_iopub(is_open)["content"]["comm_id"]
    assert cid2 != kernel_comm_id
    kernel.wait_iopub(snapshot_where(cid2, lambda s: fn(s, "after_stop") is not None))
