"""The shared number formatter: the table of examples that the lab panel's jest tests read too
(``tests/format_examples.json``), and the rules behind it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nbserverless.metering import format as fmt

EXAMPLES = json.loads((Path(__file__).parent / "format_examples.json").read_text())
CASES = [(kind, v, want) for kind, rows in EXAMPLES.items() if not kind.startswith("_")
         for v, want in rows]  # fmt: skip


@pytest.mark.parametrize(("kind", "value", "want"), CASES)
def test_table_of_examples(kind, value, want):
    assert getattr(fmt, kind)(value) == want


def test_every_formatter_has_examples():
    assert {k for k in EXAMPLES if not k.startswith("_")} == {
        "money", "ms", "seconds", "count", "percent"
    }  # fmt: skip


@pytest.mark.parametrize("exp", range(-12, 7))
def test_never_scientific_and_fixed_significant_digits(exp):
    for mantissa in (1.0, 2.5, 3.81, 9.99):
        v = mantissa * 10.0**exp
        for text in (fmt.money(v), fmt.ms(v), fmt.seconds(v), fmt.count(v)):
            assert not re.search(r"\de[-+]?\d", text), (v, text)
        m = fmt.money(v)
        if m.startswith("$0.") and v < 0.995:
            digits = m[3:].lstrip("0")
            assert len(digits) == fmt.MONEY_SIG, (v, m)
        if 0.001 <= v < 999:
            t = fmt.ms(v).split(" ")[0].replace(".", "").lstrip("0")
            assert len(t) == fmt.TIME_SIG, (v, fmt.ms(v))
            assert len(fmt.ms(v)) <= 8, fmt.ms(v)  # fits the panel's p50 column


def test_no_data_is_a_dash_not_zero():
    for f in (fmt.money, fmt.ms, fmt.seconds, fmt.count, fmt.percent):
        assert f(None) == "–"
        assert f(float("nan")) == "–"
    assert fmt.ms(None) != fmt.ms(0)
