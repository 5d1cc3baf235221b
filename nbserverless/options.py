"""The options of ``@remote`` and ``%%serverless``: parsed once, validated with clear errors."""

from __future__ import annotations

import math
import numbers
import re
import reprlib
from dataclasses import dataclass, field, fields
from typing import Any

from . import settings

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


# What Ray accepts (ray 2.x, site-packages/ray):
# - resources (num_cpus, num_gpus, memory): ``ray/_common/ray_option_utils.py``
#   ``_validate_resource_quantity``: a negative quantity is rejected, and a nonzero float with
#   ``int(q * ray._raylet.RESOURCE_UNIT_SCALING) == 0`` (scaling 10000, i.e.
#   ``ray_constants.MIN_RESOURCE_GRANULARITY = 0.0001``): "cannot go beyond 0.0001". Ray keeps
#   quantities as fixed point in units of 0.0001, so we round to that step (what Ray reserves is
#   what we bill). ``ray_constants.MAX_RESOURCE_QUANTITY = 100e12`` bounds a quantity.
# - memory is a resource in bytes: we take whole bytes (>= 1), at most MAX_RESOURCE_QUANTITY.
# - ``max_concurrency`` (our ``concurrency``): ``_counting_option``, an int >= 0; the replica
#   runs one thread per slot, so we also bound it (a protobuf int32 underneath).
# - ``runtime_env``: ``env_vars`` a dict of str to str (set in the worker's environment, where a
#   NUL or a key with "=" fails at start-up), ``pip`` a list of requirement strings.
RESOURCE_STEP = 0.0001
MAX_RESOURCE = 100e12
MAX_CONCURRENCY = 1000
MAX_REPLICAS = 10_000
MAX_RETRIES = 1000
MAX_BATCH = 100_000
MAX_SECONDS = 1e7  # ~116 days; far below threading.TIMEOUT_MAX, so every wait accepts it
MAX_NAME = 200
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 40


def _show(value: Any) -> str:
    """A short one-line repr of a user's value for an error message."""
    return _REPR.repr(value)


def _fail(name: str, value: Any, what: str) -> ValueError:
    return ValueError(f"{name}={_show(value)}: {what}")


def _real(name: str, value: Any, example: str) -> float:
    """``value`` as a finite float, or a ValueError naming the option."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(name, value, f"must be a number, e.g. {name}={example}")
    try:
        number = float(value)
    except (OverflowError, ValueError):
        number = math.inf
    if not math.isfinite(number):
        raise _fail(name, value, f"must be a finite number, e.g. {name}={example}")
    return number


def _number(
    name: str,
    value: Any,
    *,
    minimum: float,
    maximum: float,
    integer: bool = False,
    example: str = "1",
) -> Any:
    if integer and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number: float = int(value)  # exact, even beyond float range
    else:
        number = _real(name, value, example)
        if integer and number != int(number):
            raise _fail(name, value, f"must be a whole number, e.g. {name}={example}")
    if number < minimum:
        raise _fail(name, value, f"must be at least {minimum:g}")
    if number > maximum:
        raise _fail(name, value, f"must be at most {maximum:g}")
    return int(number) if integer else float(number)


def _resource(name: str, value: Any, what: str) -> float:
    """A Ray resource quantity: 0, or from 0.0001 (Ray's step) up to 100e12, on the step."""
    q = _number(name, value, minimum=0, maximum=MAX_RESOURCE, example="0.5")
    if 0 < q < RESOURCE_STEP:
        raise _fail(
            name,
            value,
            f"Ray reserves {what} in steps of {RESOURCE_STEP:g}; use 0 or at least "
            f"{RESOURCE_STEP:g}",
        )
    return round(q, 4)  # Ray's step, RESOURCE_STEP


def parse_memory(value: Any) -> int | None:
    """Bytes from an int or a string such as ``"2GiB"``, ``"512MB"``; ``None`` stays ``None``.

    Example: ``parse_memory("2GiB")`` -> ``2147483648``.
    """
    if value is None:
        return None
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        unit = m.group(2).lower() if m else None
        if not m or unit not in _UNITS:
            raise _fail(
                "memory",
                value,
                "not a size; use bytes or a number with a unit such as '512MiB', '2GiB' or '4GB'",
            )
        number: float = float(m.group(1)) * _UNITS[unit]
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = value  # type: ignore[assignment]
    else:
        raise _fail("memory", value, "give bytes as a number or a size like '2GiB'")
    try:
        n = _number("memory", number, minimum=1, maximum=MAX_RESOURCE, example="'2GiB'")
    except ValueError as exc:  # name the value as the user wrote it
        raise _fail("memory", value, str(exc).split(": ", 1)[1]) from None
    return int(n)


def _env(value: Any) -> dict[str, str] | None:
    usage = "must be a dict of str to str, e.g. env={'HF_HOME': '/data'}"
    if not isinstance(value, dict):
        raise _fail("env", value, usage)
    for k, x in value.items():
        if not isinstance(k, str) or not isinstance(x, str):
            raise _fail("env", value, usage)
        if not k or "=" in k or "\0" in k or "\0" in x:
            raise _fail(
                "env",
                value,
                f"{_show(k)} is not an environment variable name (non-empty, "
                "no '=' or NUL) or its value holds a NUL",
            )
    return dict(value) or None


def _pip(value: Any) -> tuple[str, ...] | None:
    usage = "must be a list of requirement strings, e.g. pip=['numpy<3']"
    reqs = [value] if isinstance(value, str) else value
    if not isinstance(reqs, list | tuple) or not all(isinstance(r, str) for r in reqs):
        raise _fail("pip", value, usage)
    for r in reqs:
        if not r.strip() or any(c in r for c in "\n\r\0"):
            raise _fail("pip", value, f"{_show(r)} is not a requirement (empty, or a line break); "
                        "give one requirement per string")  # fmt: skip
    return tuple(r.strip() for r in reqs) or None


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
        raise _fail("name", value, f"must be a non-empty string of at most {MAX_NAME} characters")
    if not value.isprintable():
        raise _fail("name", value, "must be printable (no line breaks or control characters)")
    return value


@dataclass(frozen=True)
class Options:
    """Validated options of one remote function, class or cell."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory: int | None = None
    min_replicas: int = 0
    max_replicas: int = 8
    concurrency: int = 1
    keep_alive: float = 60.0
    timeout: float | None = None
    retries: int = 1
    batch_size: int | None = None
    batch_wait_ms: float = 10.0
    env: dict[str, str] | None = field(default=None, hash=False)
    pip: tuple[str, ...] | None = None
    name: str | None = None
    #: ``keep_alive="auto"``: learned per function (core/keepalive.py); ``keep_alive`` then
    #: holds the fixed fallback used while too few idle gaps are known
    keep_alive_auto: bool = False

    @classmethod
    def resolve(cls, **given: Any) -> Options:
        """Fill unset options from ``nbs.config`` defaults and validate all of them.

        Example: ``Options.resolve(cpus=0.5, memory="1GiB")``.
        """
        known = {f.name for f in fields(cls)} - {"keep_alive_auto"}
        unknown = sorted(set(given) - known)
        if unknown:
            raise TypeError(
                f"unknown option(s) {', '.join(map(_show, unknown))}; "
                f"options are {', '.join(sorted(known))}"
            )
        v = {k: settings.get(k) for k in known if k != "name"}
        v["name"] = None
        v.update({k: val for k, val in given.items() if val is not None or k in ("timeout",)})
        if "timeout" not in given:
            v["timeout"] = settings.get("timeout")
        v["cpus"] = _resource("cpus", v["cpus"], "CPUs")
        v["gpus"] = _resource("gpus", v["gpus"], "GPUs")
        v["memory"] = parse_memory(v["memory"])
        count = {"maximum": MAX_REPLICAS, "integer": True}
        v["min_replicas"] = _number("min_replicas", v["min_replicas"], minimum=0, **count)
        v["max_replicas"] = _number("max_replicas", v["max_replicas"], minimum=1, **count)
        if v["min_replicas"] > v["max_replicas"]:
            raise ValueError(
                f"min_replicas={v['min_replicas']} is above max_replicas={v['max_replicas']}; "
                "lower min_replicas or raise max_replicas"
            )
        v["concurrency"] = _number(
            "concurrency", v["concurrency"], minimum=1, maximum=MAX_CONCURRENCY, integer=True
        )
        if isinstance(v["keep_alive"], str) and v["keep_alive"].strip().lower() == "auto":
            v["keep_alive_auto"] = True
            fallback = settings.get("keep_alive")
            v["keep_alive"] = fallback if isinstance(fallback, (int, float)) else 60.0
        v["keep_alive"] = _number(
            "keep_alive", v["keep_alive"], minimum=0, maximum=MAX_SECONDS, example='60 (or "auto")'
        )
        if v["timeout"] is not None:
            v["timeout"] = _number(
                "timeout", v["timeout"], minimum=0, maximum=MAX_SECONDS, example="30"
            )
            if v["timeout"] == 0:
                raise ValueError("timeout=0: give seconds > 0, or None for no timeout")
        v["retries"] = _number(
            "retries", v["retries"], minimum=0, maximum=MAX_RETRIES, integer=True
        )
        if v["batch_size"] is not None:
            v["batch_size"] = _number(
                "batch_size", v["batch_size"], minimum=1, maximum=MAX_BATCH, integer=True
            )
        v["batch_wait_ms"] = _number(
            "batch_wait_ms", v["batch_wait_ms"], minimum=0, maximum=MAX_SECONDS * 1000,
            example="10",
        )  # fmt: skip
        v["env"] = None if v["env"] is None else _env(v["env"])
        v["pip"] = None if v["pip"] is None else _pip(v["pip"])
        v["name"] = None if v["name"] is None else _name(v["name"])
        return cls(**v)

    def runtime_env(self) -> dict[str, Any] | None:
        env: dict[str, Any] = {}
        if self.env:
            env["env_vars"] = dict(self.env)
        if self.pip:
            env["pip"] = list(self.pip)
        return env or None

    def ray_actor_options(self) -> dict[str, Any]:
        """The ``.options(...)`` of a replica actor for these options (what Ray validates).

        Example: ``ReplicaActor.options(**Options.resolve(cpus=0.5).ray_actor_options())``.
        """
        opts: dict[str, Any] = {
            "num_cpus": self.cpus,
            "num_gpus": self.gpus,
            "max_concurrency": self.concurrency,
            "max_restarts": 0,
            "max_task_retries": 0,
        }
        if self.memory:
            opts["memory"] = self.memory
        runtime_env = self.runtime_env()
        if runtime_env:
            opts["runtime_env"] = runtime_env
        return opts

    def key(self) -> tuple:
        """What makes two pools interchangeable (the ``%%serverless`` pool cache key)."""
        env = tuple(sorted(self.env.items())) if self.env else None
        return (
            self.cpus,
            self.gpus,
            self.memory,
            self.min_replicas,
            self.max_replicas,
            self.concurrency,
            self.keep_alive,
            self.timeout,
            self.retries,
            self.batch_size,
            self.batch_wait_ms,
            env,
            self.pip,
            self.name,
        )
