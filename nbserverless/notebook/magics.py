"""``%%serverless`` (run a cell on a replica) and ``%serverless`` (session commands).

Modelled on ipyparallel's ``client/magics.py``: option sets are declared once as
``magic_arguments`` decorators, each magic is a thin parser over one execute function, and
fixed messages are constants. A cell runs on the pool of its option set (one pool per cell
and option set, or per ``--name``; ``cellpool.py``), so re-running a cell reuses its warm
replicas.

Example::

    %load_ext nbserverless

    %%serverless --cpus 0.5 --out total
    total = sum(x * x for x in data)     # `data` ships from the notebook, `total` comes back

    %serverless config keep_alive=30
    %serverless prices cpu=0.00002 gpu.A100=0.0011
"""

from __future__ import annotations

import ast
import pickle
import sys
from typing import Any

from IPython.core import magic_arguments
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

from ..errors import RemoteError, RemoteTraceback, SerializationError
from ..metering.meter import METER
from ..options import Options
from . import capture
from .cellpool import cell_pool, close_cell_pools

COMMANDS = ("status", "config", "connect", "prices", "reset", "shutdown")
NOT_BACK = "nbserverless: not brought back: {items}"
NOT_BACK_LOCAL = "{why} (in this kernel)"
REMOTE_HEADER = "{ename} raised on a replica (remote traceback, lines of the cell):"
KEY_VALUE = "expected KEY=VALUE, got {item!r}"
BAD_OUT = "--out takes names separated by commas, got {value!r}"
CONFIG_SET = "nbserverless config: {items}"
RESET_DONE = "nbserverless: metrics reset"
SHUTDOWN_DONE = "nbserverless: every replica removed and the cluster disconnected"
CONNECTED = "nbserverless: connected to {address}"
REPLACED = (
    "nbserverless: changed in place on the replica and brought back as new objects (other "
    "references to the old objects keep the old value): {names}"
)
REASON_MAX = 160
_SWITCHES = {"inline": bool, "progress": bool, "prewarm": int, "warm_imports": bool}


def cell_options(f: Any) -> Any:
    """The options of ``%%serverless`` (declared once, like ipyparallel's ``exec_args``)."""
    args = [
        magic_arguments.argument("--cpus", type=float, help="CPUs per replica (default 1)"),
        magic_arguments.argument("--gpus", type=float, help="GPUs per replica (default 0)"),
        magic_arguments.argument("--memory", help="memory per replica, e.g. 2GiB or 512MB"),
        magic_arguments.argument("--timeout", type=float, help="seconds the body may run"),
        magic_arguments.argument("--retries", type=int, help="re-runs after a replica dies"),
        magic_arguments.argument("--name", help="name in widgets and reports (default cell[N])"),
        magic_arguments.argument(
            "--out", action="append", help="bring back exactly these names: NAME[,NAME...]"
        ),
        magic_arguments.argument(
            "--pip", nargs="+", action="extend", metavar="REQ", help="requirements to install"
        ),
        magic_arguments.argument(
            "--env", nargs="+", action="extend", metavar="KEY=VALUE", help="environment variables"
        ),
    ]
    for a in reversed(args):
        f = a(f)
    return f


def command_args(f: Any) -> Any:
    """The arguments of ``%serverless``: a command and its ``KEY=VALUE`` settings."""
    f = magic_arguments.argument(
        "args", nargs="*", help="KEY=VALUE settings (config, prices) or the ADDRESS (connect)"
    )(f)
    return magic_arguments.argument("command", choices=COMMANDS, help="what to do")(f)


# ---- %%serverless ---------------------------------------------------------------------------


def _resolve(args: Any) -> Options:
    env = dict(_key_values(args.env or [])) if args.env else None
    given = dict(cpus=args.cpus, gpus=args.gpus, memory=args.memory, timeout=args.timeout,
                 retries=args.retries, name=args.name, env=env, pip=args.pip)  # fmt: skip
    try:
        return Options.resolve(**{k: v for k, v in given.items() if v is not None})
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None


def _out_names(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    if not names or not all(n.isidentifier() for n in names):
        raise UsageError(BAD_OUT.format(value=",".join(values)))
    return list(dict.fromkeys(names))


def _render_as(exc: BaseException, lines: list[str]) -> None:
    """Make IPython show ``lines`` for ``exc`` instead of local frames (as ipyparallel does)."""
    try:
        exc._render_traceback_ = lambda: lines  # type: ignore[attr-defined]
    except Exception:
        pass


def _decorate(exc: BaseException) -> None:
    cause = exc.__cause__
    if isinstance(cause, RemoteTraceback):
        header = REMOTE_HEADER.format(ename=type(exc).__name__)
        _render_as(exc, [header, capture.clean_traceback(cause.tb).rstrip("\n")])
    elif isinstance(exc, RemoteError | SerializationError):
        _render_as(exc, [f"{type(exc).__name__}: {exc}"])


def _short(why: str) -> str:
    why = " ".join(why.split())
    return why if len(why) <= REASON_MAX else why[: REASON_MAX - 1] + "…"


def _cell_number(shell: Any) -> int:
    """The number IPython shows for the running cell (``In [N]``): the one it mapped the
    cell's code file to, found on the calling frames. (``execution_count`` is off by one
    during a cell in IPython 9.)"""
    numbers = getattr(shell.compile, "_filename_map", {})
    frame = sys._getframe(1)
    while frame is not None:
        n = numbers.get(frame.f_code.co_filename)
        if n is not None:
            return n
        frame = frame.f_back
    return shell.execution_count


def execute_cell(shell: Any, args: Any, line: str, body: str) -> Any:
    """Run ``body`` on a replica with the parsed options; bring back what it assigns and
    return its last value (displayed as the cell's result).

    Example: ``execute_cell(ip, parse_argstring(magic, "--cpus 1"), "--cpus 1", "x = 1\nx")``
    -> ``1``."""
    options = _resolve(args)
    out = _out_names(args.out)
    n = _cell_number(shell)
    filename = f"<cell {n}>"
    # IPython syntax (%time, !ls, x?) becomes Python as in any cell: one line for one line
    code = capture.transform_body(shell, body)
    source = "\n" + code  # line 1 of the cell is the magic line
    try:
        names = capture.analyze(source, filename)
    except SyntaxError as exc:
        raise exc.with_traceback(None) from None  # shown by IPython with the cell's line
    try:
        inputs, sources = capture.pickle_inputs(shell, names.reads)
    except SerializationError as exc:
        _decorate(exc)
        raise
    job = {
        "source": source,
        "filename": filename,
        "lines": (f"%%serverless {line}\n" + body).splitlines(keepends=True),
        "sources": sources,
        "inputs": inputs,
        "outputs": out if out is not None else names.assigns,
        "exact": out is not None,
        "magics": code is not body,  # IPython syntax: names bound by magics come back too
        "want_value": names.last_expr and not capture.is_quiet(body),
    }
    identity = None if args.name else capture.cell_identity(shell, body)
    runner = cell_pool(options, identity, args.name or f"cell[{n}]")
    try:
        result = runner.run(job, args.name or f"cell[{n}]")
    except Exception as exc:
        _decorate(exc)
        raise
    failed = dict(result["failed"])
    back: dict[str, Any] = {}
    for name, blob in result["outputs"].items():
        try:
            back[name] = pickle.loads(blob)
        except Exception as exc:
            failed[name] = NOT_BACK_LOCAL.format(why=f"{type(exc).__name__}: {exc}")
    replaced = capture.bring_back_mutated(
        shell, result.get("mutated", {}), out is not None, back, failed
    )
    shell.push(back, interactive=True)
    if replaced:
        print(REPLACED.format(names=", ".join(replaced)), file=sys.stderr)
    capture.replay_displays(result.get("displays", []))
    if failed:
        items = "; ".join(f"{k} ({_short(v)})" for k, v in failed.items())
        print(NOT_BACK.format(items=items), file=sys.stderr)
    if result["value"] is not None:
        try:
            return pickle.loads(result["value"])
        except Exception as exc:
            why = NOT_BACK_LOCAL.format(why=f"{type(exc).__name__}: {exc}")
            print(NOT_BACK.format(items=f"{capture.LAST_VALUE} ({_short(why)})"), file=sys.stderr)
    return None


# ---- %serverless ----------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A setting's value: ``true``/``false``/``none``, numbers, Python literals, else the text.

    Example: ``parse_value("30")`` -> ``30``; ``parse_value("False")`` -> ``False``.
    """
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text.strip()


def _key_values(items: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(KEY_VALUE.format(item=item))
        pairs.append((key.strip(), value))
    return pairs


def _config(items: list[str]) -> Any:
    from .. import settings

    if not items:
        from .render import table_text

        rows = sorted(settings.current().items())
        print(table_text(("setting", "value"), [(k, repr(v)) for k, v in rows]))
        return None
    new = {k: parse_value(v) for k, v in _key_values(items)}
    if "budget" in new:
        from ..metering import budget

        try:
            new["budget"] = budget.validate(new["budget"])
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    for key, kind in _SWITCHES.items():
        if key in new and (type(new[key]) is not kind or (kind is int and new[key] < 0)):
            raise UsageError(f"{key}={new[key]!r}: must be a {kind.__name__}")
    old = settings.current()
    try:
        settings.update(**new)
        Options.resolve()  # every option default must stay valid
    except (ValueError, TypeError) as exc:
        settings.update(**{k: old[k] for k in new if k in old})
        raise UsageError(str(exc)) from None
    print(CONFIG_SET.format(items=", ".join(f"{k}={v!r}" for k, v in new.items())))
    return None


def _prices(items: list[str]) -> Any:
    from ..metering import pricing

    if items:
        kw: dict[str, Any] = {}
        for key, value in _key_values(items):
            v = parse_value(value)
            if key.lower().startswith("gpu."):
                gpu = kw.get("gpu") if isinstance(kw.get("gpu"), dict) else {}
                kw["gpu"] = {**gpu, key[4:]: v}
            elif key in ("cpu", "memory", "request", "gpu"):
                kw[key] = v
            else:
                raise UsageError(f"unknown price {key!r}; prices are cpu, memory, gpu, "
                                 "gpu.TYPE, request")  # fmt: skip
        try:
            pricing.set_prices(**kw)
        except (ValueError, TypeError) as exc:
            raise UsageError(str(exc)) from None
    from .render import PriceView

    return PriceView(pricing.current())


def execute_command(shell: Any, command: str, items: list[str]) -> Any:
    """Run one ``%serverless`` command; returns what the cell should display (or None).

    Example: ``execute_command(ip, "config", ["keep_alive=30"])``."""
    import nbserverless as nbs

    if items and command not in ("config", "prices", "connect"):
        raise UsageError(f"{command} takes no arguments")
    if command == "status":
        from IPython.display import display

        display(nbs.dashboard())
    elif command == "config":
        return _config(items)
    elif command == "prices":
        return _prices(items)
    elif command == "connect":
        if len(items) > 1:
            raise UsageError("connect takes at most one ADDRESS")
        try:
            address = nbs.connect(items[0] if items else None)
        except (RuntimeError, ValueError, ConnectionError, TimeoutError) as exc:
            raise UsageError(str(exc)) from None
        print(CONNECTED.format(address=address))
    elif command == "reset":
        METER.reset()
        print(RESET_DONE)
    elif command == "shutdown":
        nbs.shutdown()
        print(SHUTDOWN_DONE)
    return None


def _parse_line(magic: Any, line: str) -> Any:
    """The magic's arguments; a line shlex cannot split (an unbalanced quote) is a UsageError."""
    try:
        return magic_arguments.parse_argstring(magic, line)
    except ValueError as exc:
        raise UsageError(f"{exc} in {line!r}") from None


@magics_class
class ServerlessMagics(Magics):
    """``%%serverless`` and ``%serverless``."""

    @magic_arguments.magic_arguments(name="%%serverless")
    @cell_options
    @cell_magic("serverless")
    def serverless_cell(self, line: str = "", cell: str = "") -> Any:
        """Run the cell on a replica: names it reads ship from the notebook, names it assigns
        come back (all picklable ones, or exactly ``--out``), output streams here, the last
        expression is the cell's result, and errors show the remote traceback.

        Example::

            %%serverless --cpus 2 --memory 4GiB --out model
            model = train(data)
        """
        args = _parse_line(self.serverless_cell, line)
        return execute_cell(self.shell, args, line, cell)

    @magic_arguments.magic_arguments(name="%serverless")
    @command_args
    @line_magic("serverless")
    def serverless_line(self, line: str = "") -> Any:
        """Session commands: ``status``, ``config [KEY=VALUE ...]``, ``connect [ADDRESS]``,
        ``prices [KEY=VALUE ...]`` (``gpu.A100=...`` per GPU type), ``reset``, ``shutdown``.

        Example: ``%serverless config keep_alive=30 inline=false``.
        """
        args = _parse_line(self.serverless_line, line)
        return execute_command(self.shell, args.command, args.args)


def register(ip: Any) -> None:
    """Add the magics to ``ip`` (called by ``%load_ext nbserverless``).

    Example: ``register(get_ipython())``."""
    ip.register_magics(ServerlessMagics)


def unregister(ip: Any) -> None:
    """Remove the magics (``%unload_ext nbserverless``) and the replicas of cell pools."""
    manager = ip.magics_manager
    for kind in ("line", "cell"):
        manager.magics[kind].pop("serverless", None)
    manager.registry.pop(ServerlessMagics.__name__, None)
    close_cell_pools()
