"""Ray futures -> our handlers, on one thread of ours; slow finishing work on another.

Example: ``on_ready(ref, handler, subject)`` calls ``handler(subject, future)`` on that thread;
``defer(fn, *args)`` runs ``fn`` off it (e.g. waiting for a call's streamed output).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger("nbserverless")
_STOP = object()
SLOW_WORKERS = 4


class _Completions:
    """Runs completion handlers on one thread of ours. Ray's callback threads only enqueue:
    a handler may take a pool lock, and a Ray thread blocked on it could stall Ray itself."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._slow: ThreadPoolExecutor | None = None

    def put(self, handler: Callable, subject: Any, fut: Any) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(
                        target=self._run, name="nbs-completions", daemon=True
                    )
                    self._thread.start()
        self._queue.put((handler, subject, fut))

    def defer(self, fn: Callable, *args: Any) -> None:
        """Run ``fn(*args)`` on a helper thread (work that may block, so that one pool's
        slow output never stalls another pool's completions)."""
        with self._lock:
            if self._slow is None:
                self._slow = ThreadPoolExecutor(SLOW_WORKERS, thread_name_prefix="nbs-finish")
            slow = self._slow
        slow.submit(_guarded, fn, args)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread after the handlers already queued (shutdown)."""
        with self._lock:
            thread, self._thread = self._thread, None
            slow, self._slow = self._slow, None
        if thread is not None and thread.is_alive():
            self._queue.put((_STOP, None, None))
            if thread is not threading.current_thread():
                thread.join(timeout)
        if slow is not None:
            slow.shutdown(wait=False)

    def alive(self) -> bool:
        t = self._thread
        return t is not None and t.is_alive()

    def _run(self) -> None:
        while True:
            handler, subject, fut = self._queue.get()
            if handler is _STOP:
                return
            _guarded(handler, (subject, fut))


def _guarded(fn: Callable, args: tuple) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("nbserverless completion handler failed")


COMPLETIONS = _Completions()


def on_ready(ref: Any, handler: Callable, subject: Any) -> None:
    """Call ``handler(subject, future)`` on our completion thread once ``ref`` resolves."""
    ref.future().add_done_callback(lambda fut: COMPLETIONS.put(handler, subject, fut))


def defer(fn: Callable, *args: Any) -> None:
    """Run ``fn(*args)`` off the completion thread."""
    COMPLETIONS.defer(fn, *args)
