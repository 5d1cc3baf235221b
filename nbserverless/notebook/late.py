"""Output of calls still running when their cell ended, and ``%debug`` on a remote failure.

The rule: when a cell ends with calls of its own still running (``f.submit(...)`` not yet
done, a map not consumed), and the kernel's frontend can render widgets, the cell gets one
``ipywidgets.Output`` under the header ``HEADER`` (hidden until they print), and everything
those calls print from then on goes there — nowhere else. Each chunk is sent twice, from
outside any cell's context (so ipykernel gives it the parent of the request it handles now,
usually the cell running now):

- as a state update of the widget (its ``outputs``, as ``append_stdout`` does): JupyterLab
  applies it live whatever request is running; nbclient records it in the widget state it
  saves in the notebook's metadata;
- as an ``update_display_data`` of the widget's display in the calling cell, whose text/plain
  is the header and the text so far (the last ``PLAIN_LIMIT`` characters): nbclient rewrites
  that output of the calling cell in place, so a saved notebook shows the text in the cell
  that made the call, also to viewers without widgets. JupyterLab leaves the widget view.

nbclient only reads messages while a cell runs: output arriving when no cell runs (after the
last one) reaches a live frontend but is not in the saved notebook until a later update
(each update carries the whole text). Where widgets cannot render (terminal IPython, plain
Python) nothing is tracked and output goes to the caller's streams as before.

After a cell fails with an error IPython renders through ``_render_traceback_`` (a remote
failure), ``%debug`` must open that error in the user's frame: IPython keeps the traceback of
the last error it formatted itself and debugs that one first, so it is cleared; and the
trailing nbserverless frames (the handle raising the rebuilt error) are cut from
``sys.last_traceback``, so post-mortem starts at the user's line that made the call.

Example: ``register(ip)`` (``%load_ext nbserverless``); ``unregister(ip)``.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import threading
import types
from typing import Any

from ..core import output
from . import widgets

log = logging.getLogger("nbserverless")

HEADER = "output of calls still running when this cell ended:"
PLAIN_LIMIT = 100_000  # characters of late text kept in the text/plain fallback
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


class LateView:
    """One cell's widget for the output of its calls that outlived it. Made and displayed in
    the cell's ``post_run_cell`` (the cell is still the parent: the display lands in it);
    ``write`` is called from the output and completion threads."""

    def __init__(self) -> None:
        import ipywidgets
        from IPython.display import display

        self.out = ipywidgets.Output()
        self.box = ipywidgets.VBox([ipywidgets.HTML(f"<small>{HEADER}</small>"), self.out])
        self.box.add_class("nbserverless-late")
        self.box.layout.display = "none"  # shown at the first late chunk: silent calls show nothing
        self.text = ""
        self._lock = threading.Lock()
        self._handle = display(self._bundle(), raw=True, display_id=True)

    def _bundle(self) -> dict[str, Any]:
        bundle = dict(self.box._repr_mimebundle_())
        bundle["text/plain"] = f"{HEADER}\n{self.text}" if self.text else ""
        return bundle

    def write(self, stream: str, text: str) -> None:
        if not text:
            return
        with self._lock:  # an empty context: the parent is the request being handled now
            contextvars.Context().run(self._write, stream, text)

    def _write(self, stream: str, text: str) -> None:
        name = "stderr" if stream == "stderr" else "stdout"
        outs = tuple(self.out.outputs)  # as append_stdout does, text joined to a last same stream
        last = outs[-1] if outs else None
        if last and last.get("output_type") == "stream" and last.get("name") == name:
            outs = (*outs[:-1], {**last, "text": last["text"] + text})
        else:
            outs = (*outs, {"output_type": "stream", "name": name, "text": text})
        self.out.outputs = outs
        if not self.text:
            self.box.layout.display = None
        self.text = (self.text + text)[-PLAIN_LIMIT:]
        if self._handle is not None:
            self._handle.update(self._bundle(), raw=True)


class _Cells:
    """The cell running now (the tag of sinks made during it) and the cell-end hooks."""

    def __init__(self) -> None:
        self.current: object | None = None
        self.rich = False
        self.views: list[LateView] = []  # the last few, for tests and inspection

    def tag(self) -> object | None:
        return self.current

    def pre_run_cell(self, info: Any = None) -> None:
        self.current = object()

    def post_run_cell(self, result: Any = None) -> None:
        tag, self.current = self.current, None
        sinks = output.still_running(tag)
        if sinks and self.rich:
            try:
                view = LateView()
            except Exception:  # no display or widgets after all: the streams, as before
                log.debug("late output view not shown", exc_info=True)
            else:
                for sink in sinks:
                    sink.retarget(view.write)
                self.views = [*self.views[-7:], view]
        if result is not None and getattr(result, "error_in_exec", None) is not None:
            debug_at_user_frame(result.error_in_exec)


CELLS = _Cells()


def debug_at_user_frame(exc: BaseException, shell: Any = None) -> None:
    """Make ``%debug`` open ``exc`` (the last error) at the user's frame (see the module
    docstring). Only for errors IPython rendered through ``_render_traceback_``."""
    if not hasattr(exc, "_render_traceback_") or getattr(sys, "last_value", None) is not exc:
        return
    if shell is None:
        shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    tbh = getattr(shell, "InteractiveTB", None)
    if tbh is not None and getattr(tbh, "tb", None) is not None:
        tbh.tb = None  # a previous error's traceback: %debug would open that one
    trimmed = _without_trailing_package_frames(getattr(sys, "last_traceback", None))
    if trimmed is not None:
        sys.last_traceback = trimmed


def _without_trailing_package_frames(tb: types.TracebackType | None):
    """``tb`` rebuilt without its innermost nbserverless frames (None: nothing to cut, or
    no frame of the user's left)."""
    entries = []
    while tb is not None:
        entries.append(tb)
        tb = tb.tb_next
    keep = len(entries)
    while keep and entries[keep - 1].tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        keep -= 1
    if keep == len(entries) or keep < 2:  # the first entry is IPython's own run_code frame
        return None
    rebuilt = None
    for entry in reversed(entries[:keep]):
        rebuilt = types.TracebackType(rebuilt, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return rebuilt


def register(ip: Any, rich: bool | None = None) -> None:
    """Hook ``ip``'s cell events (idempotent); late output is tracked only where widgets
    render (``rich``; default: ``widgets.rich_display(ip)``)."""
    unregister(ip)
    CELLS.rich = widgets.rich_display(ip) if rich is None else rich
    if CELLS.rich:
        output.set_tagger(CELLS.tag)
        ip.events.register("pre_run_cell", CELLS.pre_run_cell)
    ip.events.register("post_run_cell", CELLS.post_run_cell)


def unregister(ip: Any) -> None:
    """Undo ``register``: sinks are no longer tagged; retargeted ones keep their view."""
    output.set_tagger(None)
    for name, cb in (("pre_run_cell", CELLS.pre_run_cell), ("post_run_cell", CELLS.post_run_cell)):
        try:
            ip.events.unregister(name, cb)
        except ValueError:
            pass
    CELLS.current = None
