"""Watchdogs: nothing of a kernel's cluster outlives the kernel.

In a replica, ``start()``: the process ends as soon as the node that started it is gone.
For the kernel's embedded cluster, ``start_reaper(session_dir)``: a small process that ends
every Ray process of that session once the kernel is gone (a SIGKILLed kernel cleans nothing).

Ray starts every worker process from its node's raylet. When the kernel that owns an embedded
cluster is killed (SIGKILL leaves it no time to clean up), the raylet goes with it (Ray starts
its daemons with ``PR_SET_PDEATHSIG``), but a worker only notices after its GCS reconnection
timeout (``RAY_gcs_rpc_server_reconnect_timeout_s``, set to 300 s for the kernel's cluster):
until then it lives on, reparented to PID 1 (or the nearest subreaper), holding its memory
and whatever it imported. A worker whose parent changed has lost its raylet for good, so the
watchdog ends it at once.

Ray's agents and workers still starting (not yet running our code) are not replicas; they
wait as long for a GCS that is gone. The reaper, started by the kernel after it started its
cluster, watches the kernel and, when it is gone, SIGKILLs every process of the session: the
kernel's descendants whose command line names the session directory (Ray's daemons), and
theirs (agents, workers), tracked while the kernel lived since they are reparented later.

Example::

    from nbserverless.worker import watchdog
    watchdog.start()                         # in the replica process, once
    watchdog.start_reaper(session_dir)       # in the kernel, after starting its cluster
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

INTERVAL_S = 0.5
_started = threading.Lock()
_thread: threading.Thread | None = None


def orphaned(parent: int) -> bool:
    """Whether this process lost ``parent`` (it was reparented)."""
    return os.getppid() != parent


def start(interval: float = INTERVAL_S) -> bool:
    """Watch this process's parent (the raylet) from a daemon thread; exit when it is gone.

    Returns whether a watchdog is running now. Example: ``watchdog.start()`` -> ``True``.
    """
    global _thread
    with _started:
        if _thread is not None and _thread.is_alive():
            return True
        parent = os.getppid()
        if parent <= 1:  # already an orphan, or not started by a raylet: nothing to watch
            return False
        _thread = threading.Thread(
            target=_watch, args=(parent, interval), name="nbs-watchdog", daemon=True
        )
        _thread.start()
        return True


def _watch(parent: int, interval: float) -> None:
    stop = threading.Event()
    while not stop.wait(interval):
        if orphaned(parent):
            os._exit(1)  # no cleanup can reach a kernel or raylet that are gone


# ---- the reaper (a process of its own, outliving the kernel) --------------------------------

REAP_POLL_S = 0.5
REAP_FOR_S = 10.0
_reaper: subprocess.Popen | None = None
_reaper_session: str | None = None


def start_reaper(session_dir: str, owner: int | None = None) -> subprocess.Popen | None:
    """Start (once per kernel) the process that ends the session's Ray processes when
    ``owner`` (default: this process) is gone. Example: ``start_reaper(node.get_session_dir_path())``.
    """
    global _reaper, _reaper_session
    if _reaper is not None and _reaper.poll() is None and _reaper_session == session_dir:
        return _reaper
    _reaper_session = session_dir
    cmd = [sys.executable, "-m", "nbserverless.worker.watchdog", str(owner or os.getpid()),
           session_dir]  # fmt: skip
    try:
        _reaper = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True,
        )  # fmt: skip
    except OSError:
        _reaper = None
    return _reaper


def _stat(pid: int) -> tuple[int, int] | None:
    """``(ppid, start time)`` of a live process (not a zombie), else None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else (int(fields[1]), int(fields[19]))


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _session_processes(owner: int, session_dir: str, known: dict[int, int]) -> None:
    """Add to ``known`` (pid -> start time) the session's processes now alive: children of
    ``owner`` naming ``session_dir``, and every descendant of a known process."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _stat(int(name))):
            children.setdefault(st[0], []).append(int(name))
    me = os.getpid()  # the reaper names the session too
    roots = [p for p in children.get(owner, []) if p != me and session_dir in _cmdline(p)]
    todo = roots + [p for p in known if _alive(p, known[p])]
    while todo:
        pid = todo.pop()
        st = _stat(pid)
        if st and pid not in known:
            known[pid] = st[1]
        todo.extend(c for c in children.get(pid, []) if c not in known)


def _alive(pid: int, started: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] == started


def reap(owner: int, session_dir: str) -> None:
    """Track the session's processes while ``owner`` lives; then SIGKILL them (bounded)."""
    owner_st = _stat(owner)
    if owner_st is None:
        return
    known: dict[int, int] = {}
    while _alive(owner, owner_st[1]):
        _session_processes(owner, session_dir, known)
        known = {p: s for p, s in known.items() if _alive(p, s)}
        time.sleep(REAP_POLL_S)  # a poll of /proc; this process has nothing else to do
    deadline = time.monotonic() + REAP_FOR_S
    while known and time.monotonic() < deadline:
        _session_processes(-1, session_dir, known)  # children they started meanwhile
        for pid, started in list(known.items()):
            if _alive(pid, started):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            else:
                del known[pid]
        time.sleep(0.1)


if __name__ == "__main__":
    reap(int(sys.argv[1]), sys.argv[2])
