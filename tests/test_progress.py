"""Progress bars: numbers, throttled rendering, text and ipywidgets forms, final render."""

from __future__ import annotations

import io
import time

import pytest

from nbserverless.metering import pricing
from nbserverless.metering.meter import Meter
from nbserverless.notebook.progress import NullProgress, ProgressBar, progress_bar


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def unit_prices():
    pricing.set_prices(cpu=1.0, memory=0.0, gpu=0.0, request=0.0)
    yield
    pricing.reset()


def test_disabled_is_a_no_op():
    bar = progress_bar(10, "f", None, enabled=False)
    assert isinstance(bar, NullProgress)
    bar.update(5)
    bar.close(True)


def test_text_bar_final_line_has_done_rate_errors_and_cost_per_1k():
    fm = Meter().function("k", name="square", cpus=1)
    out = io.StringIO()
    bar = ProgressBar(1000, "square", fm, rich=False, stream=out)
    fm.replica_started("r", t=0.0)
    fm.replica_stopped("r", t=2.0)  # 2 replica-seconds at 1 USD: 2.0
    for _ in range(1000):
        fm.finished(1, total_s=0.001)
    bar.update(1000, errors=3)
    bar.close(True)
    lines = out.getvalue().splitlines()
    final = lines[-1]
    assert final.startswith("square: 1,000/1,000 (100%)")
    assert "items/s" in final and "3 errors" in final
    assert "≈$2.00 per 1k items (est.)" in final
    assert len(lines) <= 2  # not a line per update on a non-terminal


def test_eta_and_numbers():
    bar = ProgressBar(100, "f", None, rich=False, stream=io.StringIO())
    bar.update(50)
    n = bar.numbers()
    assert (n["done"], n["total"], n["cost_per_1k"]) == (50, 100, None)
    assert n["rate"] > 0 and n["eta_s"] == pytest.approx(n["elapsed_s"], rel=0.05)
    assert "left" in bar.text()
    bar.close()


def test_unknown_total():
    out = io.StringIO()
    bar = ProgressBar(None, "gen", None, rich=False, stream=out)
    bar.update(7)
    bar.close()
    assert out.getvalue().splitlines()[-1].startswith("gen: 7 ·")


def test_updates_are_cheap_and_renders_throttled():
    out = TTY()
    bar = ProgressBar(None, "hot", None, rich=False, stream=out)
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < 1.2 or bar.renders < 2:
        n += 1
        bar.update(n)
        assert time.monotonic() - t0 < 20
    elapsed = time.monotonic() - t0
    bar.close()
    assert n > 10_000
    assert 2 <= bar.renders <= 4 * elapsed + 2 + 1  # + the final render
    assert out.getvalue().count("\r\x1b[2K") == bar.renders
    assert out.getvalue().endswith("\n")


def test_widget_bar_values_and_final_style():
    fm = Meter().function("k", name="embed")
    bar = ProgressBar(200, "embed", fm, rich=True)
    assert bar.bar.max == 200 and bar.bar.value == 0
    bar.update(120, errors=1)
    deadline = time.monotonic() + 10
    while bar.bar.value != 120 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert bar.bar.value == 120  # the ticker rendered it
    bar.update(200, errors=1)
    bar.close(ok=True)
    assert bar.bar.value == 200
    assert bar.bar.bar_style == "danger"  # finished, but some items failed
    assert "200/200" in bar.label.value and "1 error" in bar.label.value
    assert not bar._thread.is_alive()


def test_close_is_idempotent_and_successful_style():
    bar = ProgressBar(3, "ok", None, rich=True)
    bar.update(3)
    bar.close(True)
    bar.close(True)
    assert bar.bar.bar_style == "success" and bar.renders >= 1
    bundle = bar._repr_mimebundle_()  # the widget, and the final line for static viewers
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == bar.widget.model_id
    assert bundle["text/plain"].startswith("ok: 3/3 (100%)") and "total" in bundle["text/plain"]


def test_cancelled_items_are_not_errors_and_interruption_says_cancelled():
    """The map reports cancelled items among its failures; the bar reads the meter's
    cancellations and shows them apart; items that never ran are cancelled too."""
    fm = Meter().function("k", name="<lambda>")
    bar = ProgressBar(200, "<lambda>", fm, rich=True)
    fm.submitted(100)
    fm.dispatched(88)
    fm.finished(88, total_s=0.01)
    fm.cancelled(12)  # Ctrl-C: the 12 queued items are cancelled
    bar.update(100, errors=12)  # the map counts them among its failed items
    bar.close(ok=False)
    text = bar.text(final=True)
    assert text.startswith("<lambda>: 88/200 (44%)"), text
    assert "error" not in text and "112 cancelled" in text
    assert bar.bar.bar_style == "warning"  # not "danger": nothing failed
    assert "&lt;lambda&gt;: 88/200" in bar.label.value  # escaped in the HTML label


def test_real_errors_still_show_beside_cancellations():
    fm = Meter().function("k", name="f")
    bar = ProgressBar(10, "f", fm, rich=False, stream=io.StringIO())
    fm.submitted(10)
    fm.dispatched(6)
    fm.finished(6, errors=2, total_s=0.01)
    fm.cancelled(4)
    bar.update(10, errors=6)
    bar.close(ok=False)
    text = bar.text(final=True)
    assert "6/10" in text and "2 errors" in text and "4 cancelled" in text


def test_integration_interrupted_map_bar_and_meter_agree(ray_cluster, capsys):
    import nbserverless as nbs

    @nbs.remote(cpus=0.25, max_replicas=1, name="slow_item")
    def slow_item(x):
        import time as t

        t.sleep(0.2)
        return x

    run = slow_item.map(range(40), progress=True)
    for i, _ in enumerate(run):
        if i == 1:
            break  # like Ctrl-C in the consuming loop: the map cancels the rest
    stats = slow_item.stats()
    err = capsys.readouterr().err
    final = [ln for ln in err.splitlines() if ln.startswith("slow_item:")][-1]
    assert stats["errors"] == 0
    assert "error" not in final and "cancelled" in final, final
    done = int(final.split(": ", 1)[1].split("/")[0])
    assert 2 <= done < 40
