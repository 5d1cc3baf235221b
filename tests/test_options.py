"""Options are validated with messages that say what to change."""

from __future__ import annotations

import numpy as np
import pytest

import nbserverless as nbs
from nbserverless.options import Options, parse_memory


def test_memory_sizes():
    assert parse_memory("2GiB") == 2 * 1024**3
    assert parse_memory("512MB") == 512 * 1000**2
    assert parse_memory(1024) == 1024
    assert parse_memory(None) is None
    with pytest.raises(ValueError, match="'2XB'.*GiB"):
        parse_memory("2XB")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cpus": "abc"}, "cpus='abc': must be a number"),
        # what Ray rejects at replica start must be rejected here, naming the option
        ({"cpus": 0.00001}, r"cpus=1e-05: Ray reserves CPUs in steps of 0.0001"),
        ({"gpus": 1e-9}, r"gpus=1e-09: Ray reserves GPUs in steps of 0.0001"),
        ({"cpus": -1}, "cpus=-1: must be at least 0"),
        ({"cpus": float("nan")}, "cpus=nan: must be a finite number"),
        ({"cpus": float("inf")}, "cpus=inf: must be a finite number"),
        ({"cpus": 1e300}, r"cpus=1e\+300: must be at most 1e\+14"),
        ({"memory": 0.5}, "memory=0.5: must be at least 1"),
        ({"memory": "9" * 400 + "GB"}, "memory='99.*: must be a finite number"),
        ({"max_replicas": 10**400}, "max_replicas=1000.*: must be at most 10000"),
        ({"concurrency": 10**9}, "concurrency=1000000000: must be at most 1000"),
        ({"timeout": 1e300}, r"timeout=1e\+300: must be at most"),
        ({"keep_alive": True}, "keep_alive=True: must be a number"),
        ({"pip": 5}, r"pip=5: must be a list of requirement strings"),
        ({"pip": ["numpy\n--index-url x"]}, "not a requirement"),
        ({"env": {"A=B": "x"}}, "not an environment variable name"),
        ({"env": 5}, "env=5: must be a dict of str to str"),
        ({"name": "a\nb"}, "must be printable"),
        ({"max_replicas": 0}, "max_replicas=0: must be at least 1"),
        ({"min_replicas": 3, "max_replicas": 2}, "above max_replicas"),
        ({"concurrency": 1.5}, "whole number"),
        ({"env": {"A": 1}}, "dict of str to str"),
        ({"cpu": 1}, "unknown option"),
    ],
)
def test_bad_options_say_what_to_change(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message) as info:
        Options.resolve(**kwargs)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_resources_are_rounded_to_rays_step():
    assert Options.resolve(cpus=1 / 3).cpus == 0.3333
    assert Options.resolve(cpus=0.0001, gpus=0).cpus == 0.0001
    assert Options.resolve(max_replicas=np.int64(3)).max_replicas == 3


def test_accepted_options_are_accepted_by_ray():
    """The replica actor's ``.options(...)`` is validated by Ray without starting anything."""
    import ray

    actor = ray.remote(type("Probe", (), {}))
    for kw in [{"cpus": 0.0001}, {"cpus": 1e14, "memory": "1GiB"}, {"concurrency": 1000},
               {"env": {"K": "v"}, "pip": ["six"]}]:  # fmt: skip
        actor.options(**Options.resolve(**kw).ray_actor_options())


def test_ray_itself_rejects_what_we_reject():
    """The rule we copy is Ray's: a finer fraction than 0.0001 fails in Ray's own validation."""
    import ray

    with pytest.raises(ValueError, match="0.0001"):
        ray.remote(type("Probe", (), {})).options(num_cpus=0.00001)


def test_config_defaults_are_validated_when_set():
    """A bad default fails where it is set, naming it, and leaves the defaults as they were."""
    before = nbs.config()
    try:
        with pytest.raises(ValueError, match="cpus=1e-05"):
            nbs.config(cpus=0.00001)
        assert nbs.config() == before
        assert nbs.remote(lambda: 1).options.cpus == before["cpus"]
    finally:
        nbs.config.reset()


def test_defaults_come_from_config():
    nbs.config(keep_alive=12)
    try:
        assert Options.resolve().keep_alive == 12
        assert Options.resolve(keep_alive=3).keep_alive == 3
    finally:
        nbs.config.reset()


def test_runtime_env():
    o = Options.resolve(env={"A": "1"}, pip=["six"])
    assert o.runtime_env() == {"env_vars": {"A": "1"}, "pip": ["six"]}


@pytest.mark.parametrize(
    "magic, line, message",
    [
        ("cell", '--cpus "1', "No closing quotation"),
        ("cell", "--cpus 1e-9", "cpus=1e-09: Ray reserves CPUs in steps of 0.0001"),
        ("cell", "--cpus -1", "cpus=-1.0: must be at least 0"),
        ("cell", "--memory 1ZB", "memory='1ZB': not a size"),
        ("cell", "--bogus 1", "unrecognized arguments: --bogus 1"),
        ("line", "config pip=5", "pip=5: must be a list of requirement strings"),
        ("line", "config cpus=0.00001", "cpus=1e-05: Ray reserves CPUs"),
        ("line", "config 'keep_alive=1", "No closing quotation"),
    ],
)
def test_magic_option_strings_fail_with_one_usage_line(magic, line, message, shell):
    """At parse time, before any pool or cluster: a UsageError (IPython shows its one line)."""
    from IPython.core.error import UsageError

    from nbserverless.notebook.magics import ServerlessMagics

    magics = ServerlessMagics(shell=shell)
    with pytest.raises(UsageError, match=message) as info:
        if magic == "cell":
            magics.serverless_cell(line, "x = 1\n")
        else:
            magics.serverless_line(line)
    assert "\n" not in str(info.value)
    assert nbs.config.get("cpus") == 1.0 and nbs.config.get("pip") is None  # nothing kept
