"""Remote stdout/stderr into the output of the cell that made the call.

Each call captures the caller's streams and context (ipykernel keys a stream's buffer by the
parent message held in a context variable), so output written later from the router thread
still lands in the cell that made the call. Short calls bring their output back with the
result; long ones stream it here live over a socket.

Calls still running when their cell ended: a view may install a *tagger* (``set_tagger``) that
names the cell running now; each sink is tagged when made, and counts the jobs it has in a
pool (``hold``/``release``, released before the job's ``done`` runs, so a call that finished
in its cell is never reported as running). When a cell ends, ``still_running(tag)`` returns
its sinks with work left, and ``retarget(writer)`` sends their later chunks to ``writer``
instead of the caller's streams (``notebook/late.py`` is the view that does this). Without a
tagger nothing is tagged or counted, and every chunk goes to the caller's streams.
"""

from __future__ import annotations

import contextvars
import io
import logging
import pickle
import secrets
import selectors
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("nbserverless")

DRAIN_TIMEOUT_S = 2.0
AUTH_TIMEOUT_S = 5.0  # an unauthenticated connection is dropped after this
MAX_PENDING = 64  # unauthenticated connections kept at once (the oldest goes first)
MAX_FRAME = 256 * 2**20
RECV_BYTES = 2**16
SELECT_TICK_S = 0.5
LOOPBACK = "127.0.0.1"


#: writer(stream, text) of a retargeted sink; stream is "stdout" or "stderr"
Writer = Callable[[str, str], None]

_tagger: Callable[[], Any] | None = None
_open: dict[Any, set[Sink]] = {}  # tag -> its sinks with jobs in a pool
_open_lock = threading.Lock()


def set_tagger(tagger: Callable[[], Any] | None) -> None:
    """Install (or remove, with None) what names the cell running now; sinks made while it
    returns None are not tracked. Example: ``set_tagger(lambda: current_cell)``."""
    global _tagger
    _tagger = tagger


def still_running(tag: Any) -> list[Sink]:
    """The sinks made under ``tag`` that still have jobs in a pool; the tag is forgotten (a
    sink that holds a job again later is tracked again until it releases it)."""
    if tag is None:
        return []
    with _open_lock:
        return list(_open.pop(tag, ()))


class Sink:
    """Where one call's output goes: the caller's sys.stdout/sys.stderr in its context, or a
    writer it was retargeted to after its cell ended."""

    __slots__ = ("ctx", "stdout", "stderr", "received", "cond", "tag", "pending", "late")

    def __init__(self) -> None:
        self.ctx = contextvars.copy_context()
        self.stdout = sys.stdout
        self.stderr = sys.stderr
        self.received = 0
        self.cond: threading.Condition | None = None
        tagger = _tagger
        self.tag: Any = tagger() if tagger is not None else None
        self.pending = 0  # jobs of this sink in a pool (tracked only when tagged)
        self.late: Writer | None = None

    def hold(self) -> None:
        """A job writing here entered a pool."""
        if self.tag is None:
            return
        with _open_lock:
            self.pending += 1
            if self.pending == 1:
                _open.setdefault(self.tag, set()).add(self)

    def release(self) -> None:
        """That job settled (its output is written)."""
        if self.tag is None:
            return
        with _open_lock:
            self.pending = max(0, self.pending - 1)
            if self.pending == 0:
                group = _open.get(self.tag)
                if group is not None:
                    group.discard(self)
                    if not group:
                        del _open[self.tag]

    def retarget(self, writer: Writer) -> None:
        """Send later chunks to ``writer(stream, text)`` instead of the caller's streams."""
        self.late = writer

    def write(self, chunks: list[tuple[str, str]] | None) -> None:
        if not chunks:
            return
        late = self.late
        if late is None:
            self.ctx.run(self._write, chunks)
            return
        merged: list[list[str]] = []  # adjacent chunks of one stream: one write
        for stream, text in chunks:
            if merged and merged[-1][0] == stream:
                merged[-1][1] += text
            else:
                merged.append([stream, text])
        for stream, text in merged:
            try:
                late(stream, text)
            except Exception:  # a broken view must not fail the call
                log.debug("late output not shown", exc_info=True)

    def _write(self, chunks: list[tuple[str, str]]) -> None:
        for stream, text in chunks:
            target = self.stderr if stream == "stderr" else self.stdout
            try:
                target.write(text)
            except Exception:  # a closed stream must not fail the call
                pass
        for target in (self.stdout, self.stderr):
            try:
                target.flush()
            except Exception:
                pass

    def finish(self, rest: list | None, seq: int) -> None:
        """Write what came with the result, after every streamed frame (bounded wait)."""
        if seq and self.received < seq:
            cond = ROUTER.cond
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            with cond:
                while self.received < seq and time.monotonic() < deadline:
                    cond.wait(0.05)
        self.write(rest)


class Router:
    """Accepts replicas' output connections and routes frames to registered sinks.

    One thread serves every connection with a selector. A connection holds nothing but a small
    buffer until it sends the token: it is dropped after ``AUTH_TIMEOUT_S``, and past
    ``MAX_PENDING`` unauthenticated connections the oldest is dropped. Nothing is unpickled
    before the token matches, and frames unpickle only plain data (no classes, no calls).
    """

    def __init__(self) -> None:
        self.sinks: dict[int, Sink] = {}
        self.cond = threading.Condition()
        self.address: tuple[str, int, str] | None = None
        self._server: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._lock = threading.Lock()

    def start(self, host: str | None = None) -> tuple[str, int, str] | None:
        """Listen; returns ``(host, port, token)`` for replicas. The loopback whenever every
        node is on this machine (the embedded cluster, ``nbserverless run``), else ``host`` (or
        this node's address). Example: ``ROUTER.start()`` -> ``("127.0.0.1", 40123, "9f…")``.
        """
        with self._lock:
            if self.address is not None:
                return self.address
            host = bind_host(host)
            try:
                server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                server.bind((host, 0))
                server.listen(128)
                server.setblocking(False)
            except OSError as exc:
                log.warning("live output disabled (cannot listen on %s: %s)", host, exc)
                return None
            selector = selectors.DefaultSelector()
            selector.register(server, selectors.EVENT_READ, None)
            self._server, self._selector = server, selector
            self.address = (host, server.getsockname()[1], secrets.token_hex(16))
            threading.Thread(
                target=self._serve, args=(server, selector, self.address[2].encode()),
                name="nbs-output", daemon=True,
            ).start()  # fmt: skip
            return self.address

    def stop(self) -> None:
        with self._lock:
            if self._server is not None:
                try:
                    self._server.close()
                except OSError:
                    pass
            self._server, self._selector, self.address = None, None, None

    def connections(self) -> tuple[int, int]:
        """``(unauthenticated, authenticated)`` connections now open (for tests and stats)."""
        selector = self._selector
        if selector is None:
            return (0, 0)
        try:
            conns = [k.data for k in list(selector.get_map().values()) if k.data is not None]
        except (RuntimeError, KeyError):  # changed while we looked
            return self.connections()
        except AttributeError:  # closed
            return (0, 0)
        authed = sum(1 for c in conns if c.authed)
        return (len(conns) - authed, authed)

    def _serve(self, server: socket.socket, selector: selectors.BaseSelector, token: bytes) -> None:
        pending: dict[socket.socket, _Conn] = {}  # unauthenticated, oldest first
        try:
            while self._server is server:
                for key, _ in selector.select(timeout=SELECT_TICK_S):
                    if key.data is None:
                        self._accept(server, selector, pending)
                    elif not self._on_readable(key.data, token):
                        _drop(selector, key.data, pending)
                    elif key.data.authed:
                        pending.pop(key.data.sock, None)
                now = time.monotonic()
                for conn in [c for c in pending.values() if c.deadline < now]:
                    _drop(selector, conn, pending)
        finally:
            for key in list(selector.get_map().values()):
                if key.data is not None:
                    _drop(selector, key.data, pending)
            selector.close()

    def _accept(
        self, server: socket.socket, selector: selectors.BaseSelector, pending: dict
    ) -> None:
        for _ in range(64):  # a burst at most per wake-up
            try:
                sock, _ = server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic() + AUTH_TIMEOUT_S)
            if len(pending) >= MAX_PENDING:
                _drop(selector, next(iter(pending.values())), pending)
            pending[sock] = conn
            selector.register(sock, selectors.EVENT_READ, conn)

    def _on_readable(self, conn: _Conn, token: bytes) -> bool:
        """Read what is there; False: close the connection."""
        try:
            data = conn.sock.recv(RECV_BYTES if conn.authed else len(token) + 4 - len(conn.buf))
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not data:
            return False
        conn.buf += data
        if not conn.authed:
            if len(conn.buf) < 4 + len(token):
                return True
            (size,) = struct.unpack("!I", conn.buf[:4])
            if size != len(token) or not secrets.compare_digest(bytes(conn.buf[4:]), token):
                return False  # nothing is unpickled before the token matches
            conn.authed, conn.buf = True, bytearray()
            return True
        while len(conn.buf) >= 4:
            (size,) = struct.unpack("!I", conn.buf[:4])
            if size > MAX_FRAME:
                return False
            if len(conn.buf) < 4 + size:
                break
            frame, conn.buf = bytes(conn.buf[4 : 4 + size]), conn.buf[4 + size :]
            try:
                call_id, chunks = _loads(frame)
            except Exception:
                return False
            self._route(call_id, chunks)
        return True

    def _route(self, call_id: Any, chunks: Any) -> None:
        sink = self.sinks.get(call_id)
        if sink is None:
            return
        if isinstance(chunks, list) and all(
            isinstance(c, tuple) and len(c) == 2 and all(isinstance(x, str) for x in c)
            for c in chunks
        ):
            sink.write(chunks)
        with self.cond:
            sink.received += 1
            self.cond.notify_all()


class _Conn:
    __slots__ = ("sock", "deadline", "authed", "buf")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline, self.authed, self.buf = sock, deadline, False, bytearray()


def _drop(selector: selectors.BaseSelector, conn: _Conn, pending: dict) -> None:
    pending.pop(conn.sock, None)
    try:
        selector.unregister(conn.sock)
    except (KeyError, ValueError):
        pass
    try:
        conn.sock.close()
    except OSError:
        pass


class _PlainData(pickle.Unpickler):
    """Unpickles tuples, lists, strings and numbers only: no class is ever looked up."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in an output frame")


def _loads(frame: bytes) -> Any:
    return _PlainData(io.BytesIO(frame)).load()


def is_local_address(ip: str) -> bool:
    """Whether ``ip`` is one of this machine's addresses (it can be bound here)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((ip, 0))
        return True
    except (OSError, OverflowError, TypeError, ValueError):
        return False


def bind_host(host: str | None = None) -> str:
    """Where the output socket listens: the loopback when every node of the cluster is on this
    machine and none can be added, else ``host`` (default: this node's address).

    Example: ``bind_host()`` -> ``"127.0.0.1"`` on the embedded cluster."""
    import ray

    from . import cluster

    if cluster.is_embedded():
        return LOOPBACK
    try:
        nodes = [n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")]
        if nodes and all(is_local_address(ip) for ip in nodes) and not cluster.autoscaling():
            return LOOPBACK
    except Exception as exc:  # unknown: listen where replicas on other nodes can reach
        log.debug("cannot list the cluster's nodes: %s", exc)
    return host or ray.util.get_node_ip_address()


ROUTER = Router()
