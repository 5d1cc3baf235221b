"""Options are validated with messages that say what to change."""

from __future__ import annotations

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
        ({"max_replicas": 0}, "max_replicas=0: must be at least 1"),
        ({"min_replicas": 3, "max_replicas": 2}, "above max_replicas"),
        ({"concurrency": 1.5}, "whole number"),
        ({"env": {"A": 1}}, "dict of str to str"),
        ({"cpu": 1}, "unknown option"),
    ],
)
def test_bad_options_say_what_to_change(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Options.resolve(**kwargs)


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
