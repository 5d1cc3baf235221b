"""The executor of ``%%serverless`` cells on a replica: runs the body in a fresh namespace made
of the shipped names, returns the assigned names, the shipped names the cell changed in place,
the display calls it made, and the last expression's value.

The body arrives transformed by the kernel's IPython (``%time`` is a ``get_ipython()`` call);
when it needs IPython (magics, ``display``), the replica runs a quiet IPython shell of its own
whose namespace is the cell's and whose display publisher records every display for the
kernel to replay in the cell.

Example: ``run_cell({"source": "y = x + 1", "filename": "<cell 3>", "lines": [...],
"inputs": {"x": pickle.dumps(1)}, "outputs": ["y"]})``.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import hashlib
import linecache
import sys
import types
from typing import Any

from . import codec

LAST_VALUE = "<the cell's value>"
_SHELL: Any = None  # this replica's IPython shell, made at the first cell that needs one


def _needs_ipython(source: str) -> bool:
    return "get_ipython" in source or "display" in source or "IPython" in sys.modules


def _ipython(ns: dict[str, Any]) -> Any:
    """This replica's IPython shell, pointed at ``ns``, its display calls recorded."""
    global _SHELL
    if _SHELL is None:
        from IPython.core.displaypub import DisplayPublisher
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config

        class Recorder(DisplayPublisher):
            """Keeps ``display(...)`` calls: ``("display", data, metadata, transient,
            update)`` and ``("clear", wait)``, in order."""

            items: list = []

            def publish(self, data, metadata=None, source=None, *, transient=None,
                        update=False, **kw):  # fmt: skip
                self.items.append(("display", data, metadata or {}, transient, update))

            def clear_output(self, wait: bool = False) -> None:
                self.items.append(("clear", wait))

        config = Config()
        config.HistoryManager.enabled = False
        shell = InteractiveShell.instance(config=config)
        shell.display_pub = Recorder(shell=shell)
        shell.system = shell.system_piped  # `!cmd` output goes to sys.stdout: the cell
        _SHELL = shell
    from IPython.core.interactiveshell import DummyMod

    module = DummyMod()
    module.__dict__ = ns
    _SHELL.user_module, _SHELL.user_ns = module, ns
    _SHELL.display_pub.items = []
    ns["get_ipython"] = lambda: _SHELL
    return _SHELL


def _plain_data(value: Any) -> bool:
    """Values whose in-place changes the cell reports (not modules, functions, classes)."""
    return not (isinstance(value, types.ModuleType) or callable(value))


def _digest(blob: bytes) -> bytes:
    return hashlib.blake2b(blob, digest_size=16).digest()


def compile_body(source: str, filename: str) -> tuple[Any, Any | None, bool]:
    """``(body, last, is_async)``: the statements, the final expression (or ``None``) compiled
    separately so its value can be returned, and whether top-level ``await`` is used.

    Example: ``compile_body("x = 1\nx + 1", "<cell 3>")[1]`` is the code of ``x + 1``."""
    flags = 0
    tree = ast.parse(source, filename, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    try:
        body_code = compile(tree, filename, "exec", dont_inherit=True)
        last_code = compile(last, filename, "eval", dont_inherit=True) if last else None
    except SyntaxError:
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        body_code = compile(tree, filename, "exec", flags=flags, dont_inherit=True)
        last_code = (
            compile(last, filename, "eval", flags=flags, dont_inherit=True) if last else None
        )
    return body_code, last_code, bool(flags)


def _run(code: Any, ns: dict, is_async: bool, mode: str) -> Any:
    if mode == "exec" and not is_async:
        exec(code, ns)  # the user's own cell
        return None
    value = eval(code, ns)  # an expression, or a body with top-level await (a coroutine)
    if is_async and asyncio.iscoroutine(value):
        return asyncio.run(value)
    return value


def run_cell(job: dict[str, Any]) -> dict[str, Any]:
    """Run one cell body on a replica (the executor every cell pool runs).

    ``job``: ``source`` (padded so line numbers match the cell), ``filename`` (``<cell N>``),
    ``lines`` (the whole cell, for tracebacks), ``sources`` (``{filename: lines}`` of shipped
    notebook code), ``inputs`` (``{name: pickle}``), ``outputs`` (names to bring back),
    ``exact`` (``--out`` given: report listed names that are missing), ``want_value``.
    Returns ``{"outputs": {name: pickle}, "mutated": {name: pickle}, "displays": [...],
    "value": pickle | None, "failed": {name: why}}``: ``mutated`` are shipped names the cell
    changed in place (``data.append(4)``) and did not assign; ``displays`` the recorded
    ``display(...)`` calls.
    """
    filename = job["filename"]
    for fn, lines in {**job.get("sources", {}), filename: job["lines"]}.items():
        linecache.cache[fn] = (sum(map(len, lines)), None, list(lines), fn)
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    for name, blob in job["inputs"].items():
        try:
            ns[name] = codec.loads(blob)
        except Exception as exc:
            raise type(exc)(
                f"the notebook value {name!r} could not be rebuilt on the replica: {exc}"
            ) from None
    body, last, is_async = compile_body(job["source"], filename)
    shell = _ipython(ns) if _needs_ipython(job["source"]) else None
    assigned = set(job["outputs"])
    watched: dict[str, bytes] = {}
    for name in job["inputs"]:
        if name not in assigned and _plain_data(ns[name]):
            try:
                watched[name] = _digest(codec.dumps(ns[name]))
            except Exception:
                pass
    known = set(ns)
    _run(body, ns, is_async, "exec")
    value = _run(last, ns, is_async, "eval") if last is not None else None
    names = list(job["outputs"])
    if job.get("magics") and not job.get("exact"):  # `%time t = f()`: bound by a magic
        names += [n for n in ns if n not in known and n not in assigned and not n.startswith("_")]
    outputs: dict[str, bytes] = {}
    failed: dict[str, str] = {}
    mutated: dict[str, bytes] = {}
    for name, before in watched.items():
        if name not in ns:
            continue
        try:
            blob = codec.dumps(ns[name])
        except Exception as exc:
            failed[name] = f"changed on the replica, {type(exc).__name__}: {exc}"
            continue
        if _digest(blob) != before:
            mutated[name] = blob
    for name in names:
        if name not in ns:
            if job.get("exact"):
                failed[name] = "the cell did not define it"
            continue
        try:
            outputs[name] = codec.dumps(ns[name])
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
    blob = None
    if value is not None and job.get("want_value", True):
        try:
            blob = codec.dumps(value)
        except Exception as exc:
            failed[LAST_VALUE] = f"{type(exc).__name__}: {exc}"
    displays = list(shell.display_pub.items) if shell is not None else []
    if shell is not None:
        shell.display_pub.items = []
    return {"outputs": outputs, "mutated": mutated, "displays": displays, "value": blob,
            "failed": failed}  # fmt: skip
