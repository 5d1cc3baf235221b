"""The price table: defaults from a named public list, set_prices semantics, validation."""

from __future__ import annotations

import pytest

from nbserverless.metering import pricing


@pytest.fixture(autouse=True)
def restore():
    yield
    pricing.reset()


def test_defaults_name_their_source_and_date():
    t = pricing.current()
    assert "modal.com/pricing" in t.source
    assert t.as_of == "2026-07-01"
    assert t.cpu == 0.0000131 and t.memory == 0.00000222 and t.request == 0.0
    assert t.gpu["H100"] == 0.001097 and t.gpu["T4"] == 0.000164
    text = repr(t)
    assert "modal.com/pricing" in text and "2026-07-01" in text
    assert "2026-07-01" in t._repr_html_()


def test_gpu_names_are_matched_loosely():
    t = pricing.current()
    assert t.gpu_price("nvidia-a100-80gb") == t.gpu["A100-80GB"]
    assert t.gpu_price("A100_80G") == t.gpu["A100-80GB"]
    assert t.gpu_price("A10G") == t.gpu["A10"]
    assert t.gpu_price("unknown") == t.gpu_default == t.gpu["H100"]
    assert t.gpu_price(None) == t.gpu_default


def test_set_scalar_prices_keeps_others_and_marks_custom():
    before = pricing.current()
    t = pricing.set_prices(cpu=0.5, request="0.25")
    assert pricing.current() is t
    assert (t.cpu, t.request, t.memory) == (0.5, 0.25, before.memory)
    assert t.custom == {"cpu", "request"}
    assert "set by you" in repr(t)


def test_gpu_number_sets_every_type_and_dict_sets_some():
    t = pricing.set_prices(gpu=2.0)
    assert set(t.gpu.values()) == {2.0} and t.gpu_default == 2.0
    t = pricing.set_prices(gpu={"A100": 5.0, "default": 9.0, "MI300X": 4.0})
    assert t.gpu_price("A100") == 5.0 and t.gpu_price("mi300x") == 4.0
    assert t.gpu_price("nope") == 9.0 and t.gpu["H100"] == 2.0


def test_replica_rate_by_hand():
    pricing.set_prices(cpu=1.0, memory=0.5, gpu={"L4": 10.0})
    t = pricing.current()
    assert t.replica_rate(cpus=2, gpus=1, memory="2GiB", gpu_type="L4") == pytest.approx(13.0)
    assert t.replica_rate(cpus=1, memory=None) == pytest.approx(1.0 + 0.5 * 0.125)
    assert t.replica_rate(cpus=0, memory=1024**3) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("kw", "exc", "words"),
    [
        ({"cpu": -1}, ValueError, ">= 0"),
        ({"memory": float("nan")}, ValueError, "finite"),
        ({"cpu": "cheap"}, TypeError, "not a number"),
        ({"request": [1]}, TypeError, "must be a number"),
        ({"gpu": {"A100": -2}}, ValueError, "gpu[A100]"),
        ({"gpu": True}, TypeError, "must be a number"),
    ],
)
def test_validation_says_what_to_change(kw, exc, words):
    before = pricing.current()
    with pytest.raises(exc, match=None) as info:
        pricing.set_prices(**kw)
    assert words in str(info.value) and "e.g." in str(info.value)
    assert pricing.current() is before  # nothing half-applied


def test_memory_sizes():
    assert pricing.memory_gib("512MiB") == 0.5
    assert pricing.memory_gib("2GiB") == 2.0
    assert pricing.memory_gib(2 * 1024**3) == 2.0
    assert pricing.memory_gib("1GB") == pytest.approx(1e9 / 1024**3)
    assert pricing.memory_gib(None) is None
    with pytest.raises(ValueError, match="2GiB"):
        pricing.memory_gib("lots")


def test_reset_restores_the_public_list():
    pricing.set_prices(cpu=1.0)
    assert pricing.reset() == pricing.DEFAULT and pricing.current().custom == frozenset()
