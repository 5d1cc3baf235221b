"""A replica's output capture: what a call writes to stdout/stderr goes to that call's output,
brought back with its reply, or streamed live to the kernel for long calls.

Example: ``install_streams()`` once per process; a call's writes then land in its ``CallOutput``.
"""

from __future__ import annotations

import pickle
import socket
import struct
import sys
import threading
import time
from typing import Any

STREAM_AFTER_S = 0.2  # output of calls running longer than this streams live
FLUSH_EVERY_S = 0.1


class _CallOutput:
    __slots__ = ("call_id", "t0", "chunks", "seq", "lock")

    def __init__(self, call_id: int):
        self.call_id = call_id
        self.t0 = time.monotonic()
        self.chunks: list[tuple[str, str]] = []
        self.seq = 0
        self.lock = threading.Lock()


_LOCAL = threading.local()  # per thread: call_id, out, begin (the running call's output)


class _Stream:
    """sys.stdout/sys.stderr of a replica: writes made by a call go to that call's output."""

    def __init__(self, name: str, original: Any):
        self.name = name
        self._original = original

    def write(self, text: str) -> int:
        local = _LOCAL
        out = getattr(local, "out", None)
        if out is None:
            call_id = getattr(local, "call_id", None)
            if call_id is None:  # not inside a call: the replica's own log
                return self._original.write(text)
            out = local.out = local.begin(call_id)
        with out.lock:
            out.chunks.append((self.name, text))
        return len(text)

    def flush(self) -> None:
        if getattr(_LOCAL, "out", None) is None:
            self._original.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, item: str) -> Any:
        return getattr(self._original, item)


class _OutputLink:
    """Streams output of long calls to the kernel over a socket (framed pickles)."""

    def __init__(self, address: tuple[str, int, str] | None):
        self.address = address
        self.sock: socket.socket | None = None
        self.failed = address is None
        self.lock = threading.Lock()

    def send(self, call_id: int, chunks: list[tuple[str, str]]) -> bool:
        if self.failed:
            return False
        with self.lock:
            try:
                if self.sock is None:
                    host, port, token = self.address
                    self.sock = socket.create_connection((host, port), timeout=5)
                    raw = token.encode()
                    self.sock.sendall(struct.pack("!I", len(raw)) + raw)
                self._frame((call_id, chunks))
                return True
            except OSError:
                self.failed = True
                return False

    def _frame(self, obj: Any) -> None:
        data = pickle.dumps(obj)
        self.sock.sendall(struct.pack("!I", len(data)) + data)


def _install_streams() -> None:
    """Route this process's sys.stdout/sys.stderr through call capture (once per process)."""
    if not isinstance(sys.stdout, _Stream):
        sys.stdout = _Stream("stdout", sys.stdout)
    if not isinstance(sys.stderr, _Stream):
        sys.stderr = _Stream("stderr", sys.stderr)
