"""The session's cost budget: the flag the call path reads, the refusal message, the 80 %
warning, the setting's validation, and a real function on the session cluster refused once
its budget is spent, with its replicas scaled to zero."""

from __future__ import annotations

import pytest

import nbserverless as nbs
from nbserverless import settings
from nbserverless.metering import budget, pricing
from nbserverless.metering.meter import METER


@pytest.fixture
def unit_prices():
    for fm in METER.functions():  # replicas left by other tests would keep accruing
        for rid in list(fm._live):
            fm.replica_stopped(rid)
    METER.reset()
    pricing.set_prices(cpu=1.0, memory=0.0, gpu=0.0, request=0.0)
    yield
    settings.update(budget=None)
    budget._BUDGET.update()
    pricing.reset()


def _spend(key: str, seconds: float) -> None:
    """``seconds`` replica-seconds at 1 USD each (a finished replica: the sum stays put)."""
    fm = METER.function(key, name=key, cpus=1)
    fm.replica_started("r", t=0.0)
    fm.replica_stopped("r", t=seconds)


def test_no_budget_by_default_and_check_passes(unit_prices):
    assert settings.get("budget") is None
    _spend("b_default", 100.0)
    budget.check()
    assert budget.state() is None and budget.warning() == ""


def test_refused_at_the_budget_with_what_was_spent_and_how_to_raise_it(unit_prices):
    _spend("b_refuse", 0.3)
    nbs.config(budget=0.5)
    budget.check()  # $0.30 of $0.50: fine, and no warning below 80 %
    assert budget.warning() == ""
    _spend("b_refuse2", 0.12)  # $0.42: 84 %
    budget._BUDGET.update()
    assert budget.warning().startswith("84% of the budget spent ($0.42 of $0.50")
    assert budget.state() == {"limit": 0.5, "spent": pytest.approx(0.42), "warn": True,
                              "exceeded": False}  # fmt: skip
    _spend("b_refuse3", 0.1)
    budget._BUDGET.update()
    with pytest.raises(nbs.BudgetExceededError) as info:
        budget.check()
    msg = str(info.value)
    assert isinstance(info.value, nbs.RemoteError)
    assert "$0.50" in msg and "≈$0.52" in msg and "nbs.config(budget=" in msg
    assert "%serverless config budget=" in msg
    nbs.config(budget=1.0)  # raised: calls go through again at once
    budget.check()
    nbs.config(budget=None)
    budget.check()


def test_the_warm_path_only_reads_a_flag(unit_prices, monkeypatch):
    nbs.config(budget=100.0)
    budget.check()  # starts the ticker
    assert budget._BUDGET._thread is not None
    reads = []
    real = METER.snapshot
    monkeypatch.setattr(METER, "snapshot", lambda *a, **k: reads.append(1) or real(*a, **k))
    n_before = len(reads)
    for _ in range(1000):
        budget.check()
    # the ticker may read the meter meanwhile (4 times a second); 1000 checks do not
    assert len(reads) - n_before < 50


@pytest.mark.parametrize("bad", ["lots", -1, float("nan"), True])
def test_bad_budgets_are_refused(bad):
    with pytest.raises(ValueError, match="budget"):
        nbs.config(budget=bad)
    assert settings.get("budget") is None


def test_integration_calls_refused_replicas_scale_to_zero(ray_cluster, unit_prices):
    from conftest import wait_until

    nbs.config(prewarm=0, keep_alive=600)  # only the budget can remove the replica

    @nbs.remote(cpus=0.25, name="spender")
    def spender(x):
        return x + 1

    assert spender(1) == 2
    assert spender.stats()["replicas"] == 1
    spent = METER.snapshot()["totals"]["cost"]
    nbs.config(budget=spent + 0.25)  # 0.25 USD/s of the idle replica: gone in ~1 s
    wait_until(lambda: budget.state()["exceeded"], timeout=60, what="the budget to be spent")
    with pytest.raises(nbs.BudgetExceededError, match="budget"):
        spender(2)
    with pytest.raises(nbs.BudgetExceededError):
        spender.submit(2)
    with pytest.raises(nbs.BudgetExceededError):
        list(spender.map([1, 2]))
    wait_until(lambda: spender.stats()["replicas"] == 0, timeout=60,
               what="the replica to scale to zero")  # fmt: skip
    assert spender.stats()["invocations"] == 1  # the refused calls never ran
    nbs.config(budget=None)
    assert spender(3) == 4
