"""Fuzzing the options (hypothesis): ``@remote(...)``, ``%%serverless`` and ``%serverless config``.

Every option set is either rejected at once with one short line naming what to change (no
traceback), or accepted, and then Ray accepts it too (Ray validates a replica actor's
``.options(...)`` without starting it). Pools made before the fuzz keep working after it.
"""

from __future__ import annotations

import math
import shlex

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

import nbserverless as nbs
from nbserverless import settings as nbs_settings
from nbserverless.notebook import magics
from nbserverless.options import Options

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
OPTION_NAMES = [
    "cpus", "gpus", "memory", "min_replicas", "max_replicas", "concurrency", "keep_alive",
    "timeout", "retries", "batch_size", "batch_wait_ms", "env", "pip", "name",
]  # fmt: skip
MAX_LINE = 300

numbers_ = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e-3, max_value=1e-3),  # tiny, around Ray's 0.0001 step
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),  # beyond float range
    st.sampled_from([0, 1, -1, 0.0001, 0.00009, 1e-9, 1e14, 1e15, 2**31, 2**63]),
)
text_ = st.text(max_size=30)  # unicode, control characters, NULs
values = st.one_of(
    numbers_,
    text_,
    st.booleans(),
    st.none(),
    st.lists(st.one_of(text_, st.integers()), max_size=3),
    st.dictionaries(text_, st.one_of(text_, st.integers()), max_size=3),
    st.sampled_from(["2GiB", "512MB", "1ZB", "-1GiB", "0", "nan", "1e3", ["six"], ("a", "b")]),
)
names = st.one_of(st.sampled_from(OPTION_NAMES), st.text(min_size=1, max_size=12))


def one_line(exc: BaseException, echo: str = "") -> str:
    """The error's text: one line, short (besides what it quotes of the user's input)."""
    msg = str(exc)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    assert len(msg) <= MAX_LINE + 2 * len(echo), msg
    return msg


def ray_accepts(options: Options) -> None:
    """Ray's own validation of the replica actor's options (nothing is started)."""
    import ray

    ray.remote(_Probe).options(**options.ray_actor_options())
    assert options.cpus == 0 or options.cpus >= 0.0001
    assert options.gpus == 0 or options.gpus >= 0.0001
    assert options.memory is None or (isinstance(options.memory, int) and options.memory >= 1)
    for seconds in (options.keep_alive, options.timeout or 1.0, options.batch_wait_ms):
        assert math.isfinite(seconds)


class _Probe:
    pass


@pytest.fixture(scope="module")
def warm_pool(cluster_address):
    """A pool that is working before the fuzz; the test after the fuzz calls it again."""
    nbs.config.reset()

    @nbs.remote(cpus=0.1, keep_alive=600)
    def before(x):
        return x + 1

    assert before(1) == 2
    return before


@FUZZ
@given(st.dictionaries(names, values, max_size=4))
def test_remote_options_fail_in_one_line_or_ray_accepts_them(warm_pool, kwargs):
    try:
        handle = nbs.remote(**kwargs)(lambda x: x)
    except (ValueError, TypeError) as exc:
        msg = one_line(exc)
        assert msg.startswith("unknown option") or any(msg.startswith(f"{n}=") for n in kwargs)
        return
    ray_accepts(handle.options)


@pytest.fixture(scope="module")
def ip(cluster_address, shell):
    shell.run_line_magic("load_ext", "nbserverless")
    yield shell
    shell.run_line_magic("unload_ext", "nbserverless")
    nbs.config.reset()


FLAGS = ["--cpus", "--gpus", "--memory", "--timeout", "--retries", "--name", "--out", "--pip",
         "--env", "--bogus", "-h", "--", "-"]  # fmt: skip
# Characters str.splitlines() breaks at end the magic's line in IPython: they are the body's.
LINE_BREAKS = "".join(c for c in map(chr, range(0x3000)) if len(f"a{c}b".splitlines()) > 1)


def without_breaks(text: str) -> str:
    return "".join(c for c in text if c not in LINE_BREAKS)


token = st.one_of(
    st.sampled_from(FLAGS),
    numbers_.map(str),
    st.text(st.characters(blacklist_characters=LINE_BREAKS), max_size=30),
    st.sampled_from(['"', "'", '"a b', "K=V", "A=", "=v", "x,y", "1e-9", "nan", "-inf", "2GiB"]),
)
option_lines = st.lists(token, max_size=6).map(" ".join)


def run_quiet(ip, cell: str):
    with capture_output() as cap:
        result = ip.run_cell(cell, store_history=False)
    return result, cap


@pytest.fixture(scope="module")
def resolved():
    """A spy on the magic's option resolution: the Options each accepted line produced."""
    seen: list[Options] = []
    real = magics._resolve

    def spy(args):
        seen.append(real(args))
        return seen[-1]

    magics._resolve = spy
    yield seen
    magics._resolve = real


@FUZZ
@given(option_lines)
def test_cell_option_strings_fail_in_one_line_or_ray_accepts_them(warm_pool, ip, resolved, line):
    # The body is a syntax error: an accepted option line stops there, before any pool exists.
    resolved.clear()
    result, cap = run_quiet(ip, f"%%serverless {line}\n)")
    exc = result.error_in_exec or result.error_before_exec
    if isinstance(exc, UsageError):
        one_line(exc, line)
        assert "Traceback" not in cap.stdout + cap.stderr
        return
    assert isinstance(exc, SyntaxError), (line, repr(exc))
    assert len(resolved) == 1
    ray_accepts(resolved[0])


config_items = st.lists(
    st.tuples(st.one_of(st.sampled_from(list(nbs_settings.DEFAULTS)), text_), values).map(
        lambda kv: without_breaks(
            f"{kv[0]}={kv[1]!r}" if not isinstance(kv[1], str) else f"{kv[0]}={kv[1]}"
        )
    ),
    min_size=1,
    max_size=3,
)


@FUZZ
@given(config_items, st.booleans())
def test_config_strings_fail_in_one_line_or_leave_valid_defaults(ip, items, quoted):
    line = "config " + " ".join(shlex.quote(i) if quoted else i for i in items)
    try:
        result, cap = run_quiet(ip, f"%serverless {line}")
        exc = result.error_in_exec or result.error_before_exec
        if exc is not None:
            assert isinstance(exc, UsageError), (line, repr(exc))
            one_line(exc, line)
            assert "Traceback" not in cap.stdout + cap.stderr
        ray_accepts(Options.resolve())  # accepted or not, the defaults stay valid
    finally:
        nbs.config.reset()


def test_other_pools_keep_working_after_the_fuzz(ray_cluster, warm_pool):
    """Runs after the fuzz tests (file order): the earlier pool and a new one both answer."""
    assert warm_pool(41) == 42

    @nbs.remote(cpus=0.1)
    def after(x):
        return x * 2

    assert after(21) == 42
