"""The ``%%serverless`` cell capture: which names a cell reads and assigns, and the small
executor that runs a cell body on a replica.

Analysis happens in the kernel with ``ast`` and ``symtable`` (never regexes): a name is an
*input* when the cell may read it before assigning it (at the top level, or inside functions,
lambdas, classes and comprehensions it defines), and an *output* when the cell binds it at
module level. The executor (``run_cell``) is an importable function, so it ships by reference;
it rebuilds the inputs, ``exec``s the body compiled with the cell's display name (tracebacks
read ``File "<cell N>", line L``), and pickles the outputs one by one so that a value that
cannot come back does not stop the others.

Example::

    >>> names = analyze("y = x + 1\\nprint(y)")
    >>> names.reads, names.assigns
    (['x', 'print'], ['y'])
"""

from __future__ import annotations

import ast
import hashlib
import io
import pickle
import re
import symtable
import tokenize
from dataclasses import dataclass, field
from typing import Any

from ..shipping import cell_display_name, dumps_value, notebook_sources
from ..worker.cell import LAST_VALUE, compile_body, run_cell  # noqa: F401

_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line \d+')
_EXECUTOR_FILES = ("nbserverless/worker/cell.py", "nbserverless\\worker\\cell.py")
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_UNCONDITIONAL = (
    ast.Assign,
    ast.AnnAssign,
    ast.AugAssign,
    ast.Import,
    ast.ImportFrom,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Expr,
)


@dataclass
class CellNames:
    """What a cell body reads before assigning (``reads``) and binds at top level
    (``assigns``), both in source order; ``last_expr`` when it ends with an expression."""

    reads: list[str] = field(default_factory=list)
    assigns: list[str] = field(default_factory=list)
    last_expr: bool = False


class _ShallowLoads(ast.NodeVisitor):
    """Names one top-level statement loads in its own scope; nested function, lambda and class
    bodies are left to ``symtable`` (only what runs at definition time is visited here)."""

    def __init__(self) -> None:
        self.loads: list[str] = []
        self.stores: list[str] = []
        self._hidden: list[set[str]] = []  # comprehension targets in scope

    def _load(self, name: str) -> None:
        if not any(name in h for h in self._hidden):
            self.loads.append(name)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load | ast.Del):
            self._load(node.id)
        elif not self._hidden:
            self.stores.append(node.id)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self._load(node.target.id)
        self.generic_visit(node)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.stores.append(node.target.id)  # binds in the enclosing (here: cell) scope

    def _definition_time(self, node: Any) -> None:
        for d in getattr(node, "decorator_list", []):
            self.visit(d)
        args = getattr(node, "args", None)
        if isinstance(args, ast.arguments):
            for d in [*args.defaults, *args.kw_defaults]:
                if d is not None:
                    self.visit(d)
            if not isinstance(node, ast.Lambda):
                for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg,
                          args.kwarg]:  # fmt: skip
                    if a is not None and a.annotation is not None:
                        self.visit(a.annotation)
        if getattr(node, "returns", None) is not None:
            self.visit(node.returns)
        for b in [*getattr(node, "bases", []), *getattr(node, "keywords", [])]:
            self.visit(b)

    def visit_FunctionDef(self, node: Any) -> None:
        self._definition_time(node)
        self.stores.append(node.name)

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_ClassDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._definition_time(node)

    def _comprehension(self, node: Any, parts: list[ast.AST]) -> None:
        gens = node.generators
        self.visit(gens[0].iter)  # evaluated in the enclosing scope
        targets = {n.id for g in gens for n in ast.walk(g.target) if isinstance(n, ast.Name)}
        self._hidden.append(targets)
        for i, g in enumerate(gens):
            if i:
                self.visit(g.iter)
            for cond in g.ifs:
                self.visit(cond)
        for p in parts:
            self.visit(p)
        self._hidden.pop()

    def visit_ListComp(self, node: Any) -> None:
        self._comprehension(node, [node.elt])

    visit_SetComp = visit_GeneratorExp = visit_ListComp

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._comprehension(node, [node.key, node.value])

    def visit_Import(self, node: Any) -> None:
        for alias in node.names:
            if alias.name != "*":
                self.stores.append(alias.asname or alias.name.split(".")[0])

    visit_ImportFrom = visit_Import

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.stores.append(node.name)
        self.generic_visit(node)


def _nested_globals(table: symtable.SymbolTable, out: list[tuple[int, str]], assigned: set) -> None:
    """(line, name) of every module-level name read inside nested scopes of ``table``, and the
    names they assign through ``global``."""
    for child in table.get_children():
        for sym in child.get_symbols():
            if sym.is_global() and (sym.is_referenced() or sym.is_declared_global()):
                if sym.is_referenced():
                    out.append((child.get_lineno(), sym.get_name()))
                if sym.is_declared_global() and sym.is_assigned():
                    assigned.add(sym.get_name())
        _nested_globals(child, out, assigned)


def analyze(source: str, filename: str = "<cell>") -> CellNames:
    """Inputs and outputs of a cell body. Raises ``SyntaxError`` for invalid code.

    Example: ``analyze("import math\\nr = math.sqrt(v)").reads`` -> ``['v']``.
    """
    tree = ast.parse(source, filename, "exec")
    table = symtable.symtable(source, filename, "exec")
    nested: list[tuple[int, str]] = []
    global_assigns: set[str] = set()
    _nested_globals(table, nested, global_assigns)

    names = CellNames(last_expr=bool(tree.body) and isinstance(tree.body[-1], ast.Expr))
    definite: set[str] = set()
    reads: dict[str, None] = {}
    assigns: dict[str, None] = {}
    for stmt in tree.body:
        v = _ShallowLoads()
        v.visit(stmt)
        end = getattr(stmt, "end_lineno", stmt.lineno)
        inner = [n for line, n in nested if stmt.lineno <= line <= end]
        for n in [*v.loads, *inner]:
            if n not in definite:
                reads.setdefault(n)
        for n in v.stores:
            assigns.setdefault(n)
        if isinstance(stmt, _UNCONDITIONAL):
            definite.update(v.stores)
    for n in sorted(global_assigns):
        assigns.setdefault(n)
    names.reads = list(reads)
    names.assigns = [n for n in assigns if not (n.startswith("__") and n.endswith("__"))]
    return names


# ---- kernel side ----------------------------------------------------------------------------

NOT_LISTED = "changed in place on the replica; --out does not list it"


def transform_body(shell: Any, body: str) -> str:
    """The body as Python, transformed as IPython transforms a cell; ``body`` itself (the
    same object) when it has no IPython syntax. Leading blank lines are kept so that line
    numbers match the cell."""
    transform = getattr(shell, "transform_cell", None)
    if transform is None:
        return body
    code = transform(body)
    if code.strip() == body.strip():
        return body
    lead = body[: len(body) - len(body.lstrip())].count("\n")
    return "\n" * lead + code.lstrip("\n")


def update_in_place(old: Any, new: Any) -> bool:
    """Make ``old`` equal to ``new`` keeping its identity (lists, dicts, sets, bytearrays,
    numpy-like arrays of the same shape, instances of notebook classes); False if it cannot.

    Example: ``a = [1]; update_in_place(a, [1, 2])`` -> ``True`` and ``a == [1, 2]``."""
    if type(old) is not type(new):
        return False
    try:
        if isinstance(old, list | bytearray):
            old[:] = new
        elif isinstance(old, dict | set):
            old.clear()
            old.update(new)
        elif hasattr(old, "shape") and hasattr(old, "dtype") and hasattr(old, "__setitem__"):
            if old.shape != new.shape or old.dtype != new.dtype:
                return False
            old[...] = new
        elif type(old).__module__ == "__main__" and hasattr(old, "__dict__"):
            vars(old).clear()
            vars(old).update(vars(new))
        else:
            return False
    except Exception:
        return False
    return True


def bring_back_mutated(
    shell: Any, mutated: dict[str, bytes], exact: bool, back: dict, failed: dict
) -> list[str]:
    """Shipped names the cell changed in place: updated in place in the notebook (identity
    kept), else rebound (returned, for the note), or reported when ``--out`` leaves them."""
    replaced = []
    for name, blob in mutated.items():
        if exact:
            failed[name] = NOT_LISTED
            continue
        try:
            new = pickle.loads(blob)
        except Exception as exc:
            failed[name] = f"changed, {type(exc).__name__}: {exc} (in this kernel)"
            continue
        if not update_in_place(shell.user_ns.get(name), new):
            back[name] = new
            replaced.append(name)
    return replaced


def replay_displays(items: list[tuple]) -> None:
    """``display(...)`` calls the cell made on the replica, shown here in their order."""
    if not items:
        return
    from IPython.display import clear_output, publish_display_data

    for item in items:
        if item[0] == "clear":
            clear_output(wait=item[1])
        else:
            _, data, metadata, transient, update = item
            kw = {"transient": transient} if transient else {}
            publish_display_data(data, metadata, update=update, **kw)


def cell_identity(shell: Any, body: str) -> str:
    """The frontend's cell id when it sends one (JupyterLab), else the body text: re-runs of
    one cell map to one pool and one meter row.

    Example: ``cell_identity(None, "x = 1")`` -> ``'src:34bce5f7...'``."""
    try:
        cell_id = shell.kernel.get_parent()["metadata"].get("cellId")
    except Exception:
        cell_id = None
    if cell_id:
        return f"id:{cell_id}"
    return "src:" + hashlib.sha1(body.encode()).hexdigest()


def is_quiet(body: str) -> bool:
    """A trailing ``;`` hides the value, as in a normal cell.

    Example: ``is_quiet("x;")`` -> ``True``; ``is_quiet("x  # ;")`` -> ``False``."""
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(body).readline)
                  if t.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.COMMENT,
                                    tokenize.ENDMARKER, tokenize.DEDENT, tokenize.INDENT)]  # fmt: skip
    except (tokenize.TokenError, SyntaxError):
        return False
    return bool(tokens) and tokens[-1].string == ";"


def pickle_inputs(shell: Any, reads: list[str]) -> tuple[dict[str, bytes], dict[str, list[str]]]:
    """Pickle the names the cell reads that exist in the notebook (IPython's own hidden names
    excepted), with the cell sources of notebook functions among them; raises
    ``SerializationError`` naming the value before anything is sent.

    Example: ``pickle_inputs(ip, ["data", "print"])`` -> ``({"data": b"..."}, {})``."""
    from ..handles.cls import RemoteClass
    from ..handles.function import RemoteFunction

    ns, hidden = shell.user_ns, shell.user_ns_hidden
    inputs: dict[str, bytes] = {}
    sources: dict[str, list[str]] = {}
    for name in reads:
        if name not in ns or (name in hidden and hidden[name] is ns[name]):
            continue
        value = ns[name]
        inputs[name] = dumps_value(value, name)
        code = value
        if isinstance(value, RemoteFunction):
            code = value._fn
        elif isinstance(value, RemoteClass):
            code = value._cls
        if callable(code) and getattr(code, "__module__", None) == "__main__":
            for fn, (_, lines, _) in notebook_sources(code).items():
                sources[fn] = lines
    return inputs, sources


def clean_traceback(text: str) -> str:
    """A replica's traceback as the notebook should show it: the executor's own frames
    dropped, notebook files shown as ``<cell N>``.

    Example: ``clean_traceback(cause.tb)`` for the ``RemoteTraceback`` of a failed cell."""
    out: list[str] = []
    skip = False
    for line in text.splitlines(keepends=True):
        m = _FRAME.match(line)
        if m:
            path = m["file"]
            skip = path.endswith(_EXECUTOR_FILES)
            display = cell_display_name(path)
            if display:
                line = line.replace(f'"{path}"', f'"{display}"', 1)
        elif not line.startswith("    "):
            skip = False
        if not skip:
            out.append(line)
    return "".join(out)
