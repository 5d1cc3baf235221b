"""Ray futures -> our handlers, on one thread of ours.

Example: ``on_ready(ref, handler, subject)`` calls ``handler(subject, future)`` on that thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("nbserverless")


class _Completions:
    """Runs completion handlers on one thread of ours. Ray's callback threads only enqueue:
    a handler may take a pool lock, and a Ray thread blocked on it could stall Ray itself."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, handler: Callable, subject: Any, fut: Any) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="nbs-completions", daemon=True
                    )
                    self._thread.start()
        self._queue.put((handler, subject, fut))

    def _run(self) -> None:
        while True:
            handler, subject, fut = self._queue.get()
            try:
                handler(subject, fut)
            except Exception:
                log.exception("nbserverless completion handler failed")


COMPLETIONS = _Completions()


def on_ready(ref: Any, handler: Callable, subject: Any) -> None:
    """Call ``handler(subject, future)`` on our completion thread once ``ref`` resolves."""
    ref.future().add_done_callback(lambda fut: COMPLETIONS.put(handler, subject, fut))
