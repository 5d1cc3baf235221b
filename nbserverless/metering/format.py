"""The one number formatter of every view: money, latencies, durations, counts, percentages.

The lab panel's TypeScript (``labextension/src/format.ts``) is a line-by-line port; both are
tested against the same table of examples (``tests/format_examples.json``). Rules: never
scientific notation; a fixed number of significant digits; ``–`` (an en dash) for no data.

Example::

    >>> money(0.0000381), money(4e-8), money(12.345), money(None)
    ('$0.000038', '<$0.000001', '$12.35', '–')
    >>> ms(0.8), ms(1060.0), ms(None), count(1234567)
    ('800 µs', '1.06 s', '–', '1,234,567')
"""

from __future__ import annotations

import math

__all__ = ["NO_DATA", "money", "ms", "seconds", "count", "percent", "sig"]

NO_DATA = "–"  # U+2013: a value that does not exist yet (not 0)
MONEY_SIG = 2  # significant digits of amounts below $1
MONEY_MIN = 0.000001  # below this (and above 0) money reads "<$0.000001"
TIME_SIG = 3  # significant digits of latencies and durations


def _missing(v: float | int | None) -> bool:
    return v is None or isinstance(v, bool) or not math.isfinite(float(v))


def sig(value: float, digits: int) -> str:
    """``value`` with ``digits`` significant digits in fixed notation (trailing zeros kept).

    Example: ``sig(0.0000381, 2)`` -> ``'0.000038'``; ``sig(123.4, 3)`` -> ``'123'``."""
    a = abs(float(value))
    if a == 0:
        return "0"
    exp = int(f"{a:.{digits - 1}e}".split("e")[1])  # exponent after rounding
    decimals = max(0, digits - 1 - exp)
    return f"{float(value):.{decimals}f}"


def money(usd: float | None) -> str:
    """USD: ``$0``, ``<$0.000001``, ``$0.000038``, ``$0.12``, ``$12.35``, ``$1,234.50``.

    Example: ``money(0.0031)`` -> ``'$0.0031'``."""
    if _missing(usd):
        return NO_DATA
    v = float(usd)  # type: ignore[arg-type]
    sign = "-" if v < 0 else ""
    a = abs(v)
    if a == 0:
        return "$0"
    if a < MONEY_MIN:
        return f"{sign}<$0.000001"
    if a < 0.995:  # from here, two significant digits would read "$1.0"
        return f"{sign}${sig(a, MONEY_SIG)}"
    return f"{sign}${a:,.2f}"


def seconds(s: float | None) -> str:
    """A duration in seconds: ``0.250 s``, ``12.3 s``, ``1m05s``, ``1h02m``.

    Example: ``seconds(3725)`` -> ``'1h02m'``."""
    if _missing(s):
        return NO_DATA
    v = max(0.0, float(s))  # type: ignore[arg-type]
    if v < 59.95:
        return f"{sig(v, TIME_SIG)} s"
    r = int(round(v))
    if r < 3600:
        return f"{r // 60}m{r % 60:02d}s"
    return f"{r // 3600}h{(r % 3600) // 60:02d}m"


def ms(value: float | None) -> str:
    """A latency given in milliseconds: ``800 µs``, ``12.3 ms``, ``1.06 s``, ``1m05s``.

    Example: ``ms(1234.5)`` -> ``'1.23 s'``; ``ms(None)`` -> ``'–'``."""
    if _missing(value):
        return NO_DATA
    v = max(0.0, float(value))  # type: ignore[arg-type]
    if 0 < v < 0.9995:  # below a millisecond: microseconds, never "0.00100 ms"
        return f"{sig(v * 1000, TIME_SIG)} µs"
    if v < 999.5:
        return f"{sig(v, TIME_SIG)} ms"
    return seconds(v / 1000)


def count(n: float | int | None) -> str:
    """A count with thousands separators. Example: ``count(1234)`` -> ``'1,234'``."""
    if _missing(n):
        return NO_DATA
    return f"{int(round(float(n))):,}"  # type: ignore[arg-type]


def percent(fraction: float | None) -> str:
    """``0.734`` -> ``'73%'``; under 10 %, one decimal: ``0.053`` -> ``'5.3%'``.

    Example: ``percent(None)`` -> ``'–'``."""
    if _missing(fraction):
        return NO_DATA
    p = float(fraction) * 100  # type: ignore[arg-type]
    text = f"{p:.0f}" if abs(p) >= 9.95 else f"{p:.1f}"
    return f"{text}%"
