"""What crosses between the kernel and a replica: one pickler (notebook classes keep their
identity both ways), fresh code, only a function's own source lines; in-process and in a real
Jupyter kernel (nbclient), where notebook classes live in ``__main__``."""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import os
import typing

import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

import nbserverless as nbs
from nbserverless.shipping import Watch

# ---- no cluster ------------------------------------------------------------------------------


def test_watch_sees_a_rebound_global_and_a_redefined_helper_not_a_mutation():
    ns: dict = {}
    exec(
        "RATE = 10\nDATA = [1]\ndef helper(x):\n    return x + 1\n"
        "def f(x):\n    return helper(x) * RATE + len(DATA)\n",
        ns,
    )
    watch = Watch(ns["f"])
    assert not watch.changed()
    ns["DATA"].append(2)  # in place: not tracked (documented)
    assert not watch.changed()
    exec("RATE = 30", ns)
    assert watch.changed()
    watch = Watch(ns["f"])
    exec("def helper(x):\n    return x + 2\n", ns)
    assert watch.changed()
    watch = Watch(ns["f"])
    exec("def unrelated():\n    pass\n", ns)
    assert not watch.changed()


def test_watch_follows_helpers_of_helpers_and_closures():
    ns: dict = {}
    exec(
        "K = 1\ndef inner():\n    return K\ndef outer():\n    return inner()\n"
        "def make():\n    box = [outer]\n    def f():\n        return box[0]()\n    return f\n",
        ns,
    )
    watch = Watch(ns["make"]())
    exec("K = 2", ns)  # read two functions away, through a closure cell
    assert watch.changed()


# ---- in process, on the cluster -------------------------------------------------------------


def test_notebook_classes_keep_their_identity_both_ways(ray_cluster):
    @dataclasses.dataclass
    class Point:
        x: int
        y: int

    class Color(enum.Enum):
        RED = 1
        GREEN = 2

    class Pair(typing.NamedTuple):
        a: int
        b: str

    T = typing.TypeVar("T")

    class Box(typing.Generic[T]):
        def __init__(self, item: T):
            self.item = item

        def __eq__(self, other):
            return isinstance(other, Box) and other.item == self.item

    class Failure(Exception):
        def __init__(self, code, why):
            super().__init__(code, why)
            self.code, self.why = code, why

    @nbs.remote(cpus=0.25)
    def roundtrip(p, c, pair, box):
        assert isinstance(p, Point) and c is Color.GREEN and isinstance(pair, Pair)
        assert isinstance(box, Box)
        return p, c, pair, box, Point(3, 4), Color.RED

    p, c, pair, box, made, red = roundtrip(Point(1, 2), Color.GREEN, Pair(1, "b"), Box(5))
    assert p == Point(1, 2) and type(p) is Point and isinstance(made, Point)
    assert made == Point(3, 4)
    assert c is Color.GREEN and red is Color.RED
    assert pair == Pair(1, "b") and type(pair) is Pair
    assert box == Box(5) and isinstance(box, Box)

    @nbs.remote(cpus=0.25)
    def fails(code):
        raise Failure(code, "no luck")

    with pytest.raises(Failure) as info:
        fails(7)
    assert info.value.code == 7 and info.value.why == "no luck"

    @nbs.remote(cpus=0.25)
    class Holder:
        def __init__(self, point):
            self.point = point

        def get(self):
            return self.point, isinstance(self.point, Point)

    got, inside = Holder(Point(5, 6)).get()
    assert inside and got == Point(5, 6)
    assert list(roundtrip.starmap([(Point(0, 0), Color.GREEN, Pair(0, ""), Box(0))]))[0][
        0
    ] == Point(0, 0)


def test_partial_callable_object_wraps_and_async(ray_cluster):
    def power(base, exp):
        return base**exp

    square = nbs.remote(cpus=0.25)(functools.partial(power, exp=2))
    assert square.name.endswith("power") and square(7) == 49

    class Scale:
        def __init__(self, k):
            self.k = k

        def __call__(self, x):
            return self.k * x

    triple = nbs.remote(cpus=0.25)(Scale(3))
    assert triple.name.endswith("Scale") and triple(5) == 15

    def logged(fn):
        @functools.wraps(fn)
        def wrapper(*args):
            return ("logged", fn(*args))

        return wrapper

    @nbs.remote(cpus=0.25)
    @logged
    def add(a, b):
        return a + b

    assert add.name.endswith("add") and add(1, 2) == ("logged", 3)

    @nbs.remote(cpus=0.25)
    async def slow_double(x):
        import asyncio

        await asyncio.sleep(0)
        return 2 * x

    assert slow_double(21) == 42
    assert list(slow_double.map(range(3))) == [0, 2, 4]


def test_generator_functions_are_refused_naming_map():
    def gen(n):
        yield from range(n)

    with pytest.raises(TypeError, match=r"generator.*gen\.map"):
        nbs.remote(gen)


def test_local_stays_local_all_the_way_down(ray_cluster):
    @nbs.remote(cpus=0.25)
    def fact(n):
        return 1 if n <= 1 else n * fact(n - 1)

    assert fact.local(6) == 720
    assert fact.stats().invocations == 0 and fact._pool_obj is None  # no cluster call at all
    assert fact(5) == 120  # remotely, the inner calls are the plain function's


def test_unpicklable_result_is_one_serialization_error_not_retried(ray_cluster):
    @nbs.remote(cpus=0.25, retries=2)
    def make_lock():
        import threading

        return threading.Lock()

    with pytest.raises(nbs.SerializationError) as info:
        make_lock()
    message = str(info.value)
    assert "_thread.lock" in message and "\n" not in message
    assert "\x1b[" not in message and "Ray" not in message
    assert make_lock.stats().retries == 0 and make_lock.stats().errors == 1

    @nbs.remote(cpus=0.25)
    def maybe_lock(i):
        import threading

        return threading.Lock() if i == 1 else i

    out = list(maybe_lock.map(range(3), return_exceptions=True))
    assert out[0] == 0 and out[2] == 2 and isinstance(out[1], nbs.SerializationError)


def test_unpicklable_argument_of_a_cold_function_starts_nothing(ray_cluster):
    import threading

    @nbs.remote(cpus=0.25)
    def ident(x):
        return x

    with pytest.raises(nbs.SerializationError, match="argument 0"):
        ident(threading.Lock())
    assert ident._pool_obj is None  # not even prepared: no replica could have started


def test_remote_system_exit_and_keyboard_interrupt_do_not_stop_the_kernel(ray_cluster):
    @nbs.remote(cpus=0.25)
    def leave(how):
        if how == "exit":
            raise SystemExit(3)
        raise KeyboardInterrupt

    with pytest.raises(nbs.RemoteExitError, match=r"SystemExit\(3\)") as info:
        leave("exit")
    assert isinstance(info.value.original, SystemExit) and info.value.original.code == 3
    with pytest.raises(nbs.RemoteExitError, match="KeyboardInterrupt"):
        leave("interrupt")
    assert leave.stats().errors == 2


def test_remote_traceback_starts_at_the_users_frame(ray_cluster):
    @nbs.remote(cpus=0.25)
    def inverse(x):
        return 1 / x

    with pytest.raises(ZeroDivisionError) as info:
        inverse(0)
    tb = info.value.__cause__.tb
    assert tb.startswith("Traceback") and "in inverse" in tb and "return 1 / x" in tb
    for noise in ("replica.py", "invoker.py", "threading.py", "codec.py"):
        assert noise not in tb
    rendered = "\n".join(info.value._render_traceback_())
    assert "return 1 / x" in rendered and "replica.py" not in rendered
    assert "invoker.py" not in rendered and "RemoteTraceback" not in rendered


def test_fresh_code_in_process(ray_cluster):
    ns: dict = {"nbs": nbs}
    exec(
        "RATE = 10\ndef helper(x):\n    return x + 1\n"
        "@nbs.remote(cpus=0.25)\ndef f(x):\n    return helper(x) * RATE\n",
        ns,
    )
    f = ns["f"]
    assert f(3) == f.local(3) == 40
    exec("def helper(x):\n    return x + 2\nRATE = 30\n", ns)
    assert f(3) == f.local(3) == 150
    assert list(f.map([3])) == [150]


# ---- a real Jupyter kernel ------------------------------------------------------------------

KERNEL_CELLS = [
    "import json, dataclasses, enum, typing\nimport nbserverless as nbs\nnbs.config(keep_alive=5)",
    # 1: notebook classes, in __main__
    "@dataclasses.dataclass\nclass Point:\n    x: int\n    y: int\n\n"
    "class Color(enum.Enum):\n    RED = 1\n    GREEN = 2\n\n"
    "class Pair(typing.NamedTuple):\n    a: int\n    b: str\n\n"
    "T = typing.TypeVar('T')\nclass Box(typing.Generic[T]):\n"
    "    def __init__(self, item): self.item = item\n\n"
    "class Failure(Exception):\n    def __init__(self, code, why):\n"
    "        super().__init__(code, why)\n        self.code, self.why = code, why\n",
    # 2: round trips
    "@nbs.remote(cpus=0.25)\ndef roundtrip(p, c, pair, box):\n"
    "    inside = [isinstance(p, Point), c is Color.GREEN, isinstance(pair, Pair),\n"
    "              isinstance(box, Box)]\n"
    "    return p, c, pair, box, Point(3, 4), inside\n"
    "p, c, pair, box, made, inside = roundtrip(Point(1, 2), Color.GREEN, Pair(1, 'b'), Box(5))\n"
    "@nbs.remote(cpus=0.25)\ndef fails():\n    raise Failure(7, 'no luck')\n"
    "try:\n    fails()\nexcept Failure as e:\n    failure = [type(e) is Failure, e.code, e.why]\n"
    "print('IDENTITY ' + json.dumps({'eq': p == Point(1, 2), 'made': made == Point(3, 4),\n"
    "    'isinstance': isinstance(made, Point), 'enum': c is Color.GREEN,\n"
    "    'pair': pair == Pair(1, 'b') and type(pair) is Pair,\n"
    "    'box': isinstance(box, Box) and box.item == 5, 'inside': inside,\n"
    "    'failure': failure}))",
    # 3: fresh code, first definitions
    "RATE = 10\ndef helper(x):\n    return x + 1\n"
    "@nbs.remote(cpus=0.25)\ndef f(x):\n    return helper(x) * RATE\n"
    "print('FRESH1', f(3), f.local(3))",
    # 4: redefined helper, rebound global
    "def helper(x):\n    return x + 2\nRATE = 30\nprint('FRESH2', f(3), f.local(3))",
    # 5: a secret elsewhere in the cell never reaches the replica
    'API_KEY = "sk-not-for-the-replica"\n'
    "@nbs.remote(cpus=0.25)\ndef peek():\n    import linecache, sys\n"
    "    return ''.join(linecache.getlines(sys._getframe().f_code.co_filename))\n"
    "seen = peek()\nprint('SOURCE', json.dumps({'own': 'def peek' in seen,\n"
    "    'secret': 'sk-not' in seen}))",
    # 6: a remote failure: its traceback
    "@nbs.remote(cpus=0.25)\ndef inverse(x):\n    return 1 / x\ninverse(0)",
    # 7: %tb still works on the local exception
    "%tb",
    # 8-10: %%serverless cells ship and bring back notebook classes by the same pickler
    "%load_ext nbserverless",
    "%%serverless\nq = Point(7, 8)\nsame = isinstance(p, Point) and c is Color.GREEN",
    "print('CELL', json.dumps({'q': q == Point(7, 8) and type(q) is Point, 'same': same}))",
]


@pytest.fixture(scope="module")
def kernel_nb(cluster_address):
    nb = new_notebook(cells=[new_code_cell(src) for src in KERNEL_CELLS])
    env = dict(os.environ, NBSERVERLESS_ADDRESS=cluster_address)
    client = NotebookClient(nb, timeout=180, kernel_name="python3", allow_errors=True)
    client.execute(env=env)
    return nb


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout")


def _line(cell, tag: str) -> str:
    for line in _stdout(cell).splitlines():
        if line.startswith(tag + " "):
            return line[len(tag) + 1 :]
    raise AssertionError(f"no {tag} line in {cell.outputs}")


def test_kernel_notebook_classes_keep_their_identity(kernel_nb):
    got = json.loads(_line(kernel_nb.cells[2], "IDENTITY"))
    assert got == {
        "eq": True,
        "made": True,
        "isinstance": True,
        "enum": True,
        "pair": True,
        "box": True,
        "inside": [True, True, True, True],
        "failure": [True, 7, "no luck"],
    }


def test_kernel_fresh_code_follows_redefinitions(kernel_nb):
    assert _line(kernel_nb.cells[3], "FRESH1") == "40 40"
    assert _line(kernel_nb.cells[4], "FRESH2") == "150 150"


def test_kernel_function_ships_only_its_own_lines(kernel_nb):
    assert json.loads(_line(kernel_nb.cells[5], "SOURCE")) == {"own": True, "secret": False}


def test_kernel_serverless_cells_keep_notebook_classes(kernel_nb):
    assert json.loads(_line(kernel_nb.cells[10], "CELL")) == {"q": True, "same": True}


def test_kernel_traceback_shows_user_code_only(kernel_nb):
    errors = [o for o in kernel_nb.cells[6].outputs if o.output_type == "error"]
    assert errors and errors[0]["ename"] == "ZeroDivisionError"
    text = "\n".join(errors[0]["traceback"])
    assert "return 1 / x" in text and "inverse(0)" in text
    for noise in ("RemoteTraceback", "replica.py", "invoker.py", "function.py", "threading.py"):
        assert noise not in text, noise
    tb_again = [o for o in kernel_nb.cells[7].outputs if o.output_type in ("error", "stream")]
    assert tb_again and "ZeroDivisionError" in json.dumps(tb_again[0])


def test_warm_calls_do_not_pickle_the_code_again(ray_cluster, monkeypatch):
    from nbserverless.handles import function as function_module

    pickled = []
    real = function_module.dumps_code
    monkeypatch.setattr(
        function_module, "dumps_code", lambda obj, name: pickled.append(name) or real(obj, name)
    )
    ns: dict = {"nbs": nbs}
    exec("K = 2\n@nbs.remote(cpus=0.25)\ndef g(x):\n    return x * K\n", ns)
    g = ns["g"]
    assert [g(i) for i in range(5)] == [0, 2, 4, 6, 8]
    assert len(pickled) == 1  # once, for the pool
    ns["K"] = 3
    assert g(1) == 3 and len(pickled) == 2  # once more, because K was rebound
