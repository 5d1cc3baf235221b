"""The price table behind every cost estimate (``nbs.prices``, ``%serverless prices``).

Prices are USD per cpu-second, per GiB-second of memory, per gpu-second (by GPU type) and per
request. The defaults are Modal's public per-second list (``PRICES.source``, ``PRICES.as_of``):
Modal bills a container from start to removal, including its idle keep-alive, which is exactly
the model nbserverless meters. One Ray CPU is priced as one Modal CPU core (Modal's ``cpu=``
argument), one GiB as one GiB.

Rules (also in ``PriceTable.replica_rate``):

- ``memory=None`` on a handle reserves no memory in Ray, but a replica still holds some. It is
  billed as Modal's default reservation, 128 MiB (0.125 GiB) per replica (``default_memory_gib``).
- A GPU type the table does not know (or ``gpu_type=None``) is billed at ``gpu_default``
  (the H100 price of the list). Type names are matched loosely: ``"NVIDIA-A100-80GB"``,
  ``"a100-80g"`` and ``"A100_80GB"`` are the same key.
- A price change applies to the whole history: costs are recomputed from metered replica-seconds
  and invocations with the current table at every snapshot.

Example::

    >>> from nbserverless import pricing
    >>> pricing.set_prices(cpu=1.0, memory=0.0, gpu={"A100": 0.001}, request=0)  # doctest: +ELLIPSIS
    PriceTable(...)
    >>> pricing.current().replica_rate(cpus=2, gpus=0, memory=None)
    2.0
    >>> _ = pricing.reset()
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Mapping
from typing import Any

__all__ = [
    "PriceTable",
    "PRICES",
    "current",
    "set_prices",
    "reset",
    "memory_gib",
    "normalize_gpu_type",
]

GIB = 1024**3

SOURCE = (
    "Modal pricing, https://modal.com/pricing (per-second compute rates; "
    "transcribed in github.com/api-evangelist/modal-labs plans/modal-labs-plans-pricing.yml)"
)
AS_OF = "2026-07-01"

# USD per second, from the list above.
_DEFAULT_CPU = 0.0000131  # per CPU core
_DEFAULT_MEMORY = 0.00000222  # per GiB
_DEFAULT_GPU = {
    "B200": 0.001736,
    "H200": 0.001261,
    "H100": 0.001097,
    "RTX-PRO-6000": 0.000842,
    "A100-80GB": 0.000694,
    "A100-40GB": 0.000583,
    "L40S": 0.000542,
    "A10": 0.000306,
    "L4": 0.000222,
    "T4": 0.000164,
}
_DEFAULT_REQUEST = 0.0  # Modal bills container resources, not calls
_DEFAULT_MEMORY_GIB = 0.125  # Modal's default memory reservation (128 MiB)

# Other spellings of the same GPU (Ray accelerator types, Modal's older names).
_ALIASES = {"A10G": "A10", "A100": "A100-40GB", "A100-40G": "A100-40GB", "A100-80G": "A100-80GB"}

_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "KB": 1000,
    "M": 1000**2,
    "MB": 1000**2,
    "G": 1000**3,
    "GB": 1000**3,
    "T": 1000**4,
    "TB": 1000**4,
    "KI": 1024,
    "KIB": 1024,
    "MI": 1024**2,
    "MIB": 1024**2,
    "GI": GIB,
    "GIB": GIB,
    "TI": 1024**4,
    "TIB": 1024**4,
}


def normalize_gpu_type(name: str) -> str:
    """Canonical key of a GPU type name. Example: ``normalize_gpu_type("nvidia a100_80g")``
    -> ``"A100-80GB"``."""
    key = re.sub(r"[\s_]+", "-", str(name).strip().upper())
    key = re.sub(r"^(NVIDIA-|TESLA-)+", "", key)
    key = re.sub(r"-+", "-", key).strip("-")
    key = re.sub(r"-(\d+)G$", r"-\1GB", key)
    return _ALIASES.get(key, key)


def memory_gib(memory: int | float | str | None) -> float | None:
    """GiB from a memory request: bytes (int/float) or a string like ``"2GiB"``, ``"512MiB"``,
    ``"1.5GB"``. ``None`` stays ``None``. Example: ``memory_gib("512MiB")`` -> ``0.5``."""
    if memory is None:
        return None
    if isinstance(memory, bool):
        raise TypeError("memory must be bytes (a number) or a size like '2GiB', not a bool")
    if isinstance(memory, (int, float)):
        if memory < 0 or not math.isfinite(memory):
            raise ValueError(f"memory must be a non-negative number of bytes, got {memory!r}")
        return float(memory) / GIB
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*", str(memory))
    unit = m.group(2).upper() if m else None
    if m is None or unit not in _UNITS:
        raise ValueError(
            f"cannot read memory size {memory!r}; write bytes (2147483648) or a size like "
            "'2GiB', '512MiB' or '2GB'"
        )
    return float(m.group(1)) * _UNITS[unit] / GIB


def _price(key: str, value: Any) -> float:
    """A validated price: a finite number >= 0 (numeric strings accepted, for the magic)."""
    unit = {"cpu": "cpu-second", "memory": "GiB-second", "request": "request"}.get(
        key, "gpu-second"
    )
    example = {"cpu": "cpu=0.0000131", "memory": "memory=0.00000222", "request": "request=4e-7"}
    hint = example.get(key, 'gpu=0.001097 or gpu={"H100": 0.001097}')
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise TypeError(
                f"price {key}={value!r} is not a number; give USD per {unit}, e.g. {hint}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"price {key} must be a number (USD per {unit}), got {type(value).__name__} "
            f"{value!r}; e.g. {hint}"
        )
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"price {key}={value!r} must be a finite number >= 0 (USD per {unit}); e.g. {hint}"
        )
    return float(value)


class PriceTable:
    """USD per cpu-second, GiB-second, gpu-second by type, and per request; plus its source.

    Example::

        >>> t = PriceTable(cpu=1.0, memory=0.5, gpu={"L4": 2.0}, gpu_default=3.0, request=0.0)
        >>> t.replica_rate(cpus=1, gpus=1, memory="2GiB", gpu_type="nvidia-l4")
        4.0
    """

    def __init__(
        self,
        cpu: float,
        memory: float,
        gpu: Mapping[str, float],
        gpu_default: float,
        request: float,
        default_memory_gib: float = _DEFAULT_MEMORY_GIB,
        source: str = "custom",
        as_of: str = "",
        custom: frozenset[str] = frozenset(),
    ) -> None:
        self.cpu = _price("cpu", cpu)
        self.memory = _price("memory", memory)
        self.gpu = {normalize_gpu_type(k): _price(f"gpu[{k}]", v) for k, v in gpu.items()}
        self.gpu_default = _price("gpu", gpu_default)
        self.request = _price("request", request)
        self.default_memory_gib = float(default_memory_gib)
        self.source = source
        self.as_of = as_of
        self.custom = frozenset(custom)  # the prices the user set

    def gpu_price(self, gpu_type: str | None) -> float:
        """USD per gpu-second of this type; ``gpu_default`` for unknown types or ``None``."""
        if gpu_type is None:
            return self.gpu_default
        return self.gpu.get(normalize_gpu_type(gpu_type), self.gpu_default)

    def replica_rate(
        self,
        cpus: float = 1.0,
        gpus: float = 0.0,
        memory: int | float | str | None = None,
        gpu_type: str | None = None,
    ) -> float:
        """USD per second one replica with these resources costs while it exists.
        ``memory=None`` bills ``default_memory_gib``."""
        gib = memory_gib(memory)
        if gib is None:
            gib = self.default_memory_gib
        rate = (cpus or 0.0) * self.cpu + gib * self.memory
        if gpus:
            rate += gpus * self.gpu_price(gpu_type)
        return rate

    def copy(self, **changes: Any) -> PriceTable:
        """A new table with some fields replaced."""
        fields = dict(self.as_dict(), **changes)
        fields.pop("unit", None)
        return PriceTable(**fields)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the comm and the CLI report)."""
        return {
            "cpu": self.cpu,
            "memory": self.memory,
            "gpu": dict(self.gpu),
            "gpu_default": self.gpu_default,
            "request": self.request,
            "default_memory_gib": self.default_memory_gib,
            "source": self.source,
            "as_of": self.as_of,
            "custom": sorted(self.custom),
            "unit": "USD per second (cpu, GiB, gpu) and per request; estimates",
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PriceTable) and self.as_dict() == other.as_dict()

    def _mark(self, key: str) -> str:
        return "  (set by you)" if key in self.custom else ""

    def __repr__(self) -> str:
        lines = [
            "PriceTable(  # USD, used for cost estimates",
            f"  source: {self.source}",
            f"  as of:  {self.as_of or '-'}",
            f"  cpu     {self.cpu:.8g} per cpu-second{self._mark('cpu')}",
            f"  memory  {self.memory:.8g} per GiB-second{self._mark('memory')}"
            f"  (memory=None bills {self.default_memory_gib:g} GiB per replica)",
            f"  request {self.request:.8g} per request{self._mark('request')}",
            f"  gpu     per gpu-second{self._mark('gpu')}:",
        ]
        lines += [f"    {k:<14}{v:.8g}" for k, v in self.gpu.items()]
        lines.append(f"    {'(other types)':<14}{self.gpu_default:.8g}")
        lines.append(")")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from html import escape

        rows = [
            ("cpu-second", self.cpu, "cpu"),
            ("GiB-second", self.memory, "memory"),
            ("request", self.request, "request"),
        ]
        rows += [(f"{k} gpu-second", v, "gpu") for k, v in self.gpu.items()]
        rows.append(("other gpu-second", self.gpu_default, "gpu"))
        body = "".join(
            f"<tr><td>{escape(name)}</td><td style='text-align:right'>{v:.8g}</td>"
            f"<td>{'set by you' if key in self.custom else ''}</td></tr>"
            for name, v, key in rows
        )
        return (
            "<div class='nbserverless-prices'><b>Price table</b> (USD, for cost estimates)<br>"
            f"<small>source: {escape(self.source)}; as of {escape(self.as_of or '-')}; "
            f"memory=None bills {self.default_memory_gib:g} GiB per replica</small>"
            f"<table>{body}</table></div>"
        )


DEFAULT = PriceTable(
    cpu=_DEFAULT_CPU,
    memory=_DEFAULT_MEMORY,
    gpu=_DEFAULT_GPU,
    gpu_default=_DEFAULT_GPU["H100"],
    request=_DEFAULT_REQUEST,
    default_memory_gib=_DEFAULT_MEMORY_GIB,
    source=SOURCE,
    as_of=AS_OF,
)

_lock = threading.Lock()
#: The current table. ``set_prices``/``reset`` replace it; read it through ``current()``.
PRICES: PriceTable = DEFAULT


def current() -> PriceTable:
    """The price table in use. Example: ``current().cpu`` -> ``1.31e-05``."""
    return PRICES


def set_prices(
    cpu: float | None = None,
    memory: float | None = None,
    gpu: float | Mapping[str, float] | None = None,
    request: float | None = None,
) -> PriceTable:
    """Change prices (USD per cpu-second, GiB-second, gpu-second, request); returns the table.

    ``gpu`` is one number for every GPU type (and unknown types), or a dict by type (key
    ``"default"`` sets the price of unknown types). Arguments left ``None`` keep their value.
    Costs are recomputed from the whole history with the new table.

    Example: ``set_prices(cpu=0.00002, gpu={"A100": 0.0007})``.
    """
    global PRICES
    with _lock:
        table = PRICES
        changes: dict[str, Any] = {}
        custom = set(table.custom)
        if cpu is not None:
            changes["cpu"] = _price("cpu", cpu)
        if memory is not None:
            changes["memory"] = _price("memory", memory)
        if request is not None:
            changes["request"] = _price("request", request)
        if gpu is not None:
            if isinstance(gpu, Mapping):
                by_type = dict(table.gpu)
                default = table.gpu_default
                for k, v in gpu.items():
                    if not isinstance(k, str):
                        raise TypeError(f"gpu price keys are GPU type names, got {k!r}")
                    if k.strip().lower() == "default":
                        default = _price("gpu[default]", v)
                    else:
                        by_type[normalize_gpu_type(k)] = _price(f"gpu[{k}]", v)
                changes["gpu"], changes["gpu_default"] = by_type, default
            else:
                value = _price("gpu", gpu)
                changes["gpu"] = {k: value for k in table.gpu}
                changes["gpu_default"] = value
        for key in ("cpu", "memory", "request", "gpu"):
            if key in changes:
                custom.add(key)
        PRICES = table.copy(**changes, custom=frozenset(custom))
        return PRICES


def reset() -> PriceTable:
    """Back to the default table (the named public price list)."""
    global PRICES
    with _lock:
        PRICES = DEFAULT
        return PRICES
