"""Nothing of a killed kernel stays: SIGKILL a real Jupyter kernel that used nbserverless with
the default config (its own embedded cluster, ``prewarm=2``) and every process it started is
gone within 10 s."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time

import pytest
from conftest import wait_until

LEFTOVER_S = 10.0
pytestmark = pytest.mark.timeout(600)


def _stat(pid: int) -> tuple[int, int] | None:
    """``(ppid, start time)`` of a live process, or None (gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """Live descendants of ``root``: pid -> start time (to tell a reused pid apart)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st:
                children.setdefault(st[0], []).append(int(name))
    out, todo = {}, [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            st = _stat(pid)
            if st:
                out[pid] = st[1]
                todo.append(pid)
    return out


def alive(procs: dict[int, int]) -> dict[int, str]:
    """The processes of ``procs`` still running: pid -> command line."""
    out = {}
    for pid, started in procs.items():
        st = _stat(pid)
        if st and st[1] == started:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    out[pid] = f.read().replace(b"\0", b" ").decode(errors="replace")[:120]
            except OSError:
                pass
    return out


def test_sigkill_of_a_kernel_leaves_no_process():
    from jupyter_client.manager import start_new_kernel

    env = dict(os.environ)
    for var in ("NBSERVERLESS_ADDRESS", "RAY_ADDRESS"):
        env.pop(var, None)  # the default: the kernel starts its own embedded cluster
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    temp_dir = tempfile.mkdtemp(prefix="nbs-left-", dir="/tmp")  # Ray's socket paths are short
    env["NBSERVERLESS_TEMP_DIR"] = temp_dir
    km, kc = start_new_kernel(kernel_name="python3", startup_timeout=120, env=env)
    try:
        code = (
            "import nbserverless as nbs\n"
            "f = nbs.remote(cpus=0.5)(lambda x: x + 1)\n"
            "assert f(1) == 2\n"
            "assert list(f.map(range(20), progress=False)) == list(range(1, 21))\n"
        )
        reply = kc.execute_interactive(code, timeout=300)
        assert reply["content"]["status"] == "ok", reply["content"]
        kernel_pid = km.provisioner.process.pid
        # The warm processes (prewarm=2) start after the first call: let them appear (at
        # least the replica and two warm ones), so that they are among the processes checked.
        try:
            wait_until(
                lambda: (
                    sum(c.startswith("ray::") for c in alive(descendants(kernel_pid)).values()) >= 3
                ),
                timeout=60,
                what="the kernel's warm processes",
            )
        except AssertionError:
            pass  # fewer workers: check those there are
        procs = descendants(kernel_pid)
        assert procs
        os.kill(kernel_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        try:
            wait_until(lambda: not alive(procs), timeout=LEFTOVER_S, what="no process left")
        except AssertionError:
            left = alive(procs)
            for pid in left:  # ours: started by the kernel this test started
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            raise AssertionError(
                f"{len(left)} process(es) of the killed kernel still ran "
                f"{time.monotonic() - killed_at:.0f} s after: {sorted(left.values())}"
            ) from None
    finally:
        kc.stop_channels()
        km.cleanup_resources() if not km.is_alive() else km.shutdown_kernel(now=True)
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_redefined_functions_leave_nothing_behind(ray_cluster):
    """A function redefined again and again (a cell re-run) and called once each time: one
    meter row, no pool left in the loop and no replica once the keep-alive has passed."""
    import nbserverless as nbs
    from nbserverless.core.loop import registry
    from nbserverless.metering.meter import METER

    before = len(registry.all())
    for i in range(12):

        def again(x, i=i):
            return x + i

        again.__module__, again.__qualname__ = "__main__", "again_redefined"
        f = nbs.remote(cpus=0.1, keep_alive=1)(again)
        assert f(1) == 1 + i  # the newest definition runs
    rows = [r for r in METER.snapshot()["functions"] if r["name"] == "again_redefined"]
    assert len(rows) == 1 and rows[0]["invocations"] == 12
    wait_until(
        lambda: f.stats()["replicas"] == 0 and len(registry.all()) <= before,
        timeout=60,
        what="the redefined function's pools and replicas gone",
    )
