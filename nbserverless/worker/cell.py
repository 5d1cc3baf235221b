"""The executor of ``%%serverless`` cells on a replica: runs the body in a fresh namespace made
of the shipped names, returns the assigned names and the last expression's value.

Example: ``run_cell({"source": "y = x + 1", "filename": "<cell 3>", "lines": [...],
"inputs": {"x": pickle.dumps(1)}, "outputs": ["y"]})``.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import linecache
from typing import Any

from . import codec

LAST_VALUE = "<the cell's value>"


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
    Returns ``{"outputs": {name: pickle}, "value": pickle | None, "failed": {name: why}}``.
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
    _run(body, ns, is_async, "exec")
    value = _run(last, ns, is_async, "eval") if last is not None else None
    outputs: dict[str, bytes] = {}
    failed: dict[str, str] = {}
    for name in job["outputs"]:
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
    return {"outputs": outputs, "value": blob, "failed": failed}
