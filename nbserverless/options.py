"""The options of ``@remote`` and ``%%serverless``: parsed once, validated with clear errors."""

from __future__ import annotations

import math
import re
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


def parse_memory(value: Any) -> int | None:
    """Bytes from an int or a string such as ``"2GiB"``, ``"512MB"``; ``None`` stays ``None``.

    Example: ``parse_memory("2GiB")`` -> ``2147483648``.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"memory={value!r}: give bytes as a number or a size like '2GiB'")
    if isinstance(value, int | float):
        if value <= 0 or not math.isfinite(value):
            raise ValueError(f"memory={value!r}: must be a positive number of bytes")
        return int(value)
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        unit = m.group(2).lower() if m else None
        if m and unit in _UNITS:
            n = int(float(m.group(1)) * _UNITS[unit])
            if n > 0:
                return n
        raise ValueError(
            f"memory={value!r}: not a size; use bytes or a number with a unit such as "
            "'512MiB', '2GiB' or '4GB'"
        )
    raise ValueError(f"memory={value!r}: give bytes as a number or a size like '2GiB'")


def _number(name: str, value: Any, *, minimum: float, integer: bool = False) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}={value!r}: must be a number")
    if integer and int(value) != value:
        raise ValueError(f"{name}={value!r}: must be a whole number")
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name}={value!r}: must be at least {minimum:g}")
    return int(value) if integer else float(value)


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

    @classmethod
    def resolve(cls, **given: Any) -> Options:
        """Fill unset options from ``nbs.config`` defaults and validate all of them.

        Example: ``Options.resolve(cpus=0.5, memory="1GiB")``.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise TypeError(
                f"unknown option(s) {', '.join(unknown)}; options are {', '.join(sorted(known))}"
            )
        v = {k: settings.get(k) for k in known if k != "name"}
        v["name"] = None
        v.update({k: val for k, val in given.items() if val is not None or k in ("timeout",)})
        if "timeout" not in given:
            v["timeout"] = settings.get("timeout")
        v["cpus"] = _number("cpus", v["cpus"], minimum=0)
        v["gpus"] = _number("gpus", v["gpus"], minimum=0)
        v["memory"] = parse_memory(v["memory"])
        v["min_replicas"] = _number("min_replicas", v["min_replicas"], minimum=0, integer=True)
        v["max_replicas"] = _number("max_replicas", v["max_replicas"], minimum=1, integer=True)
        if v["min_replicas"] > v["max_replicas"]:
            raise ValueError(
                f"min_replicas={v['min_replicas']} is above max_replicas={v['max_replicas']}"
            )
        v["concurrency"] = _number("concurrency", v["concurrency"], minimum=1, integer=True)
        v["keep_alive"] = _number("keep_alive", v["keep_alive"], minimum=0)
        if v["timeout"] is not None:
            v["timeout"] = _number("timeout", v["timeout"], minimum=0)
            if v["timeout"] == 0:
                raise ValueError("timeout=0: give seconds > 0, or None for no timeout")
        v["retries"] = _number("retries", v["retries"], minimum=0, integer=True)
        if v["batch_size"] is not None:
            v["batch_size"] = _number("batch_size", v["batch_size"], minimum=1, integer=True)
        v["batch_wait_ms"] = _number("batch_wait_ms", v["batch_wait_ms"], minimum=0)
        if v["env"] is not None:
            if not isinstance(v["env"], dict) or not all(
                isinstance(k, str) and isinstance(x, str) for k, x in v["env"].items()
            ):
                raise ValueError("env must be a dict of str to str, e.g. env={'HF_HOME': '/data'}")
            v["env"] = dict(v["env"])
        if v["pip"] is not None:
            pip = [v["pip"]] if isinstance(v["pip"], str) else v["pip"]
            if not all(isinstance(p, str) for p in pip):
                raise ValueError("pip must be a list of requirement strings, e.g. ['numpy<3']")
            v["pip"] = tuple(pip)
        if v["name"] is not None and not isinstance(v["name"], str):
            raise ValueError(f"name={v['name']!r}: must be a string")
        return cls(**v)

    def runtime_env(self) -> dict[str, Any] | None:
        env: dict[str, Any] = {}
        if self.env:
            env["env_vars"] = dict(self.env)
        if self.pip:
            env["pip"] = list(self.pip)
        return env or None

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
