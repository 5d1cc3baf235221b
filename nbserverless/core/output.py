"""Remote stdout/stderr into the output of the cell that made the call.

Each call captures the caller's streams and context (ipykernel keys a stream's buffer by the
parent message held in a context variable), so output written later from the router thread
still lands in the cell that made the call. Short calls bring their output back with the
result; long ones stream it here live over a socket.
"""

from __future__ import annotations

import contextvars
import logging
import pickle
import secrets
import socket
import struct
import sys
import threading
import time
from typing import Any

log = logging.getLogger("nbserverless")

DRAIN_TIMEOUT_S = 2.0


class Sink:
    """Where one call's output goes: the caller's sys.stdout/sys.stderr in its context."""

    __slots__ = ("ctx", "stdout", "stderr", "received", "cond")

    def __init__(self) -> None:
        self.ctx = contextvars.copy_context()
        self.stdout = sys.stdout
        self.stderr = sys.stderr
        self.received = 0
        self.cond: threading.Condition | None = None

    def write(self, chunks: list[tuple[str, str]] | None) -> None:
        if chunks:
            self.ctx.run(self._write, chunks)

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
    """Accepts replicas' output connections and routes frames to registered sinks."""

    def __init__(self) -> None:
        self.sinks: dict[int, Sink] = {}
        self.cond = threading.Condition()
        self.address: tuple[str, int, str] | None = None
        self._server: socket.socket | None = None
        self._lock = threading.Lock()

    def start(self, host: str) -> tuple[str, int, str] | None:
        with self._lock:
            if self.address is not None:
                return self.address
            try:
                server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                server.bind((host, 0))
                server.listen(64)
            except OSError as exc:
                log.warning("live output disabled (cannot listen on %s: %s)", host, exc)
                return None
            self._server = server
            self.address = (host, server.getsockname()[1], secrets.token_hex(16))
            threading.Thread(target=self._accept, name="nbs-output-accept", daemon=True).start()
            return self.address

    def stop(self) -> None:
        with self._lock:
            if self._server is not None:
                try:
                    self._server.close()
                except OSError:
                    pass
            self._server, self.address = None, None

    def _accept(self) -> None:
        server = self._server
        while server is not None:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        token = self.address[2] if self.address else None
        with conn:
            try:
                (size,) = struct.unpack("!I", _recv_exact(conn, 4))
                if token is None or size > 256:
                    return
                if not secrets.compare_digest(_recv_exact(conn, size), token.encode()):
                    return  # nothing is unpickled before the token matches
                while True:
                    call_id, chunks = _recv_frame(conn)
                    sink = self.sinks.get(call_id)
                    if sink is not None:
                        sink.write(chunks)
                        with self.cond:
                            sink.received += 1
                            self.cond.notify_all()
            except (OSError, EOFError, pickle.UnpicklingError, struct.error, TypeError):
                return


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = conn.recv(n - len(buf))
        if not part:
            raise EOFError
        buf += part
    return bytes(buf)


def _recv_frame(conn: socket.socket) -> Any:
    (size,) = struct.unpack("!I", _recv_exact(conn, 4))
    return pickle.loads(_recv_exact(conn, size))


ROUTER = Router()
