"""Inline widget and dashboard: real ipywidgets models, a real IPython shell running cells."""

from __future__ import annotations

import html
import json
import re
import time

import pytest
from IPython.core.interactiveshell import InteractiveShell

from nbserverless import settings
from nbserverless.metering import pricing
from nbserverless.metering.meter import METER
from nbserverless.notebook import dashboard as dash
from nbserverless.notebook import render, widgets


@pytest.fixture
def ip(shell):
    METER.reset()
    pricing.set_prices(cpu=1.0, memory=0.0, gpu=0.0, request=0.0)
    widgets.register(shell, rich=True)
    shell.user_ns["METER"] = METER
    yield shell
    widgets.unregister(shell)
    settings.reset()
    pricing.reset()


def state_rows(value: str) -> list[dict]:
    """The numbers stored in the widget's value (saved with the notebook's widget state)."""
    m = re.search(r"data-nbserverless='([^']*)'", value)
    assert m, value
    return json.loads(html.unescape(m.group(1)))


def run(ip, code: str):
    result = ip.run_cell(code)
    result.raise_error()
    return result


CALLS = """
fm = METER.function("{key}", name="{name}")
fm.replica_started("r1")
for i in range({n}):
    fm.submitted(); fm.dispatched(); fm.finished(1, errors=int(i % 10 == 0), total_s=0.02)
"""


def test_inline_widget_appears_and_freezes_at_the_scope_values(ip):
    before = widgets.INLINE.last
    run(ip, CALLS.format(key="t1", name="square", n=30))
    view = widgets.INLINE.last
    assert view is not before and view.widget is not None
    assert not view.live and view.scope.closed
    final, scope_final = view.final, view.scope.snapshot()
    (row,), (scope_row,) = final["functions"], scope_final["functions"]
    assert row == {**scope_row, "waiting_for_node": 0, "waiting_for_node_s": 0.0,
                   "keep_alive": None}  # fmt: skip
    assert (row["name"], row["invocations"], row["errors"], row["replicas"]) == ("square", 30, 3, 1)
    value = view.widget.value
    assert "data-state='final'" in value and "cost (est.)" in value and "estimate" in value
    (saved,) = state_rows(value)
    assert saved == {k: row[k] for k in saved}
    assert saved["invocations"] == 30 and saved["p50_ms"] == pytest.approx(20, rel=0.02)
    assert METER._scopes == []  # the cell's scope is closed


def test_a_cell_lists_only_the_functions_it_called_and_their_cost_during_it(ip):
    # "idle" has a replica kept alive from an earlier cell: it accrues cost, but not this
    # cell's; "busy" is called by the cell
    run(ip, CALLS.format(key="t_idle", name="idle", n=2))
    run(ip, "import time\nt_open = time.time()\n" + CALLS.format(key="t_busy", name="busy", n=3))
    final = widgets.INLINE.last.final
    assert [r["name"] for r in final["functions"]] == ["busy"]
    assert final["totals"]["cost"] == final["functions"][0]["cost"]
    # its cost is what it accrued during the cell: at most its replica's lifetime in the cell
    assert 0 < final["functions"][0]["cost"] <= final["time"] - ip.user_ns["t_open"] + 1e-6
    idle = METER.get("t_idle").snapshot()
    assert idle["replicas"] == 1 and idle["cost"] > 0  # still accrues, just not in this cell
    value = widgets.INLINE.last.widget.value
    assert "data-function='idle'" not in value
    assert html.escape(render.CELL_CAPTION, quote=False) in value  # says what it measures
    assert "p50 run" in value and "p50 total" in value


def test_names_are_escaped_everywhere(ip):
    run(ip, CALLS.format(key="t_lambda", name="<lambda>", n=2))
    value = widgets.INLINE.last.widget.value
    assert "&lt;lambda&gt;" in value and "<lambda>" not in value
    d = dash.dashboard(rich=False)
    assert "&lt;lambda&gt;" in d.html() and "<lambda>" not in d.html()
    assert render.SESSION_CAPTION in d.text() and html.escape(render.SESSION_CAPTION) in d.html()


def test_replica_counts_agree_between_widget_dashboard_stats_and_panel(ip):
    from nbserverless.notebook import snapshot

    run(ip, CALLS.format(key="t_reps", name="reps", n=2) + "fm.replica_started('r2')\n")
    t = time.time()
    stats = METER.get("t_reps").snapshot(t)
    d = dash.dashboard(rich=False)
    d._sample(force=True)
    (board,) = [f for f in d.snapshot["functions"] if f["name"] == "reps"]
    (panel,) = [f for f in snapshot.build_snapshot(now=t, cluster={})["functions"]
                if f["name"] == "reps"]  # fmt: skip
    (cell,) = widgets.INLINE.last.final["functions"]
    assert stats["replicas"] == board["replicas"] == panel["replicas"] == cell["replicas"] == 2


def test_budget_warning_in_the_widget_and_the_dashboard(ip):
    from nbserverless.metering import budget

    run(ip, CALLS.format(key="t_budget", name="spender", n=2))
    for fm in METER.functions():  # no replica accrues any more: the spent sum stays put
        for rid in list(fm._live):
            fm.replica_stopped(rid)
    spent = METER.snapshot()["totals"]["cost"]
    settings.update(budget=spent / 0.9)  # 90 % spent
    budget._BUDGET.update()
    assert budget.warning().startswith("90% of the budget spent")
    run(ip, "fm.submitted(); fm.dispatched(); fm.finished(1, total_s=0.01)")
    assert "nbserverless-budget" in widgets.INLINE.last.widget.value
    assert "of the budget spent" in dash.dashboard(rich=False).text()
    settings.update(budget=None)
    budget._BUDGET.update()
    assert budget.warning() == ""


def test_second_cell_counts_only_its_own_calls(ip):
    run(ip, CALLS.format(key="t2", name="f", n=5))
    run(ip, CALLS.format(key="t2", name="f", n=7))
    assert widgets.INLINE.last.final["functions"][0]["invocations"] == 7
    assert METER.get("t2").snapshot()["invocations"] == 12


def test_no_widget_without_remote_calls_or_with_inline_off(ip):
    run(ip, CALLS.format(key="t3", name="f", n=1))
    last = widgets.INLINE.last
    run(ip, "x = 1 + 1")
    assert widgets.INLINE.last is last
    settings.update(inline=False)
    run(ip, CALLS.format(key="t3", name="f", n=1))
    assert widgets.INLINE.last is last
    assert METER._scopes == []


def test_widget_mimebundle_has_widget_view_and_fallbacks(ip):
    run(ip, CALLS.format(key="t4", name="embed", n=3))
    bundle = widgets.INLINE.last._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"]
    assert "embed" in bundle["text/plain"] and "cost (est.)" in bundle["text/plain"]
    assert "data-state='final'" in bundle["text/html"]


def test_text_mode_prints_a_readable_table(ip, capsys):
    widgets.register(ip, rich=False)
    run(ip, CALLS.format(key="t5", name="textfn", n=4))
    out = capsys.readouterr().out
    assert widgets.INLINE.last.widget is None
    lines = [line for line in out.splitlines() if line.startswith("textfn")]
    assert len(lines) == 1 and lines[0].split()[1] == "4"
    assert "cost (est.)" in out and "estimate" in out


def test_updates_are_throttled_under_10000_rapid_calls(ip):
    changes = []
    ip.user_ns["changes"] = changes
    code = """
import time
fm = METER.function("t6", name="hot")
fm.submitted()
view = widgets.INLINE.view
view.widget.observe(lambda ch: changes.append(time.monotonic()), "value")
t0 = time.monotonic(); n = 0
while n < 10_000 or (len(changes) < 2 and time.monotonic() - t0 < 20):
    fm.dispatched(); fm.finished(1, total_s=0.001); fm.submitted(); n += 1
elapsed = time.monotonic() - t0
"""
    ip.user_ns["widgets"] = widgets
    run(ip, code)
    elapsed, n = ip.user_ns["elapsed"], ip.user_ns["n"]
    assert n >= 10_000
    assert len(changes) >= 2  # it does update live, and freezes at the end
    window = max(changes) - ip.user_ns["t0"]
    assert len(changes) <= 4 * max(elapsed, window) + 2
    assert widgets.INLINE.last.final["functions"][0]["invocations"] == n


def test_rich_display_rule_follows_ray():
    assert widgets.rich_display(InteractiveShell.instance()) is False  # terminal-like shell
    ZMQInteractiveShell = type("ZMQInteractiveShell", (), {})
    assert widgets.rich_display(ZMQInteractiveShell()) is True


def test_dashboard_shows_functions_cluster_totals_and_plots(ip):
    fm = METER.function("d1", name="dashfn", cpus=1)
    fm.replica_started("r", t=time.time() - 2)
    METER.platform.replica_started("warm", t=time.time() - 2)
    for _ in range(5):
        fm.submitted()
        fm.dispatched()
        fm.finished(1, total_s=0.05)
    d = dash.Dashboard(rich=True, interval=0.05)
    try:
        value = d.widget.value
        assert "data-function='dashfn'" in value
        assert "node(s)" in value and "prewarmed" in value and "estimate" in value
        assert value.count("<svg") == 4 and "polyline" in value  # replicas, latency, rate, nodes
        text = repr(d)
        assert "dashfn" in text and "cost (est.)" in text and "cluster" in text
        # live: new calls show up without anyone calling refresh()
        for _ in range(7):
            fm.submitted()
            fm.dispatched()
            fm.finished(1, total_s=0.05)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and ">12<" not in d.widget.value:
            time.sleep(0.02)
        assert ">12<" in d.widget.value
    finally:
        d.close()
    d._thread.join(timeout=5)
    assert not d._thread.is_alive()


WAITING = """
fm = METER.function("{key}", name="{name}")
fm.keep_alive_label = "keep-alive 40 s (learned)"
fm.submitted()
fm.waiting_for_node, fm.waiting_for_node_s = 1, 12.0
view = widgets.INLINE.view
view.refresh()
live_value, live_text = view.widget.value, repr(view)
fm.waiting_for_node, fm.waiting_for_node_s = 0, 0.0
"""


def test_inline_widget_says_waiting_for_a_node_and_the_keep_alive(ip):
    ip.user_ns["widgets"] = widgets
    run(ip, WAITING.format(key="w1", name="slowstart"))
    live, text = ip.user_ns["live_value"], ip.user_ns["live_text"]
    (row,) = [r for r in re.findall(r"<tr data-function[^>]*>.*?</tr>", live)]
    assert "title='keep-alive 40 s (learned)'" in row
    assert "waiting for a node (12.0 s)" in row
    assert "slowstart: waiting for a node (12.0 s) · keep-alive 40 s (learned)" in text
    (saved,) = state_rows(live)
    assert saved["waiting_for_node"] == 1 and saved["keep_alive"] == "keep-alive 40 s (learned)"
    # frozen: the wait is over, the keep-alive stays
    final = widgets.INLINE.last.widget.value
    assert "waiting for a node" not in final and "keep-alive 40 s (learned)" in final


def test_inline_widget_refreshes_when_only_the_wait_changes(ip):
    run(ip, "fm = METER.function('w2', name='w2'); fm.submitted()")
    fm = METER.function("w2", name="w2")
    view = widgets.InlineView(METER.open_scope(), rich=True)
    fm.submitted()
    view.refresh()
    version = METER.version
    fm.waiting_for_node, fm.waiting_for_node_s = 3, 5.0
    assert METER.version == version and view.refresh()
    assert "waiting for a node (5.00 s)" in view.widget.value
    fm.waiting_for_node = 0
    assert view.refresh() and "waiting for a node" not in view.widget.value
    view.freeze()


def test_dashboard_shows_nodes_node_cost_waiting_keep_alive_and_replica_starts(ip):
    fm = METER.function("d3", name="nodefn", cpus=1)
    fm.keep_alive_label = "keep-alive 60 s (fixed, learning 3/10)"
    fm.submitted()
    fm.waiting_for_node, fm.waiting_for_node_s = 2, 75.0
    d = dash.Dashboard(rich=False)
    fm.replica_started("r1")
    fm.dispatched()
    fm.finished(1, total_s=0.1, cold=True)
    d._sample(force=True)
    now = time.time()
    d.cluster.update(  # the shape of core.cluster.summary() on an autoscaling cluster
        address="ray://head:10001", nodes=3, worker_nodes=2, nodes_pending=1, nodes_peak=4,
        node_history=[[now - 100, 1], [now - 60, 4], [now - 20, 3]], autoscaling=True,
        node_cost=0.0123, node_cost_always_on=0.0456,
    )  # fmt: skip
    value, text = d.html(), d.text()
    nodes_line = "nodes (autoscaling): 3 now (2 worker) · 1 pending · peak 4"
    assert nodes_line in text and nodes_line in value
    assert "node cost ≈$0.012 (always-on ≈$0.046, estimates)" in text
    row = re.search(r"<tr data-function='nodefn'>.*?</tr>", value).group(0)
    assert "waiting for a node (1m15s)" in row
    assert "keep-alive 60 s (fixed, learning 3/10)" in row and "keep-alive" in text
    plots = dict(re.findall(r"data-plot='(\w+)'.*?(<svg.*?</svg>)", value))
    assert set(plots) == {"replicas", "latency", "rate", "nodes"}
    # the replica that started between the two samples is dotted, only on the replicas plot
    assert plots["replicas"].count("nbserverless-mark") == 1
    assert "replica start" in plots["replicas"] and "nbserverless-mark" not in plots["nodes"]
    # nodes over time: 1, then 4 (the peak, highest point), then 3 now
    ys = [float(p.split(",")[1]) for p in
          re.search(r"points='([^']*)'", plots["nodes"]).group(1).split()]  # fmt: skip
    assert ys[0] == max(ys) and min(ys) == ys[len(ys) // 2] and ys[-1] not in (max(ys), min(ys))


def test_dashboard_is_throttled():
    d = dash.Dashboard(rich=True)  # default interval
    changes = []
    d.widget.observe(lambda ch: changes.append(1), "value")
    fm = METER.function("d2", name="busy")
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 1.5:
            fm.submitted()
            fm.dispatched()
            fm.finished(1, total_s=0.001)
    finally:
        d.close()
    assert 1 <= len(changes) <= 2 * (time.monotonic() - t0) + 2


def test_dashboard_text_fallback_without_widgets():
    d = dash.dashboard(rich=False)
    assert d.widget is None
    bundle = d._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" not in bundle
    assert bundle["text/plain"].startswith("nbserverless dashboard")


def test_render_helpers():
    assert render.money(0) == "$0" and render.money(2) == "$2.00"
    assert render.money(0.0000381) == "$0.000038" and render.money(4e-8) == "<$0.000001"
    assert render.ms(None) == "–" and render.ms(1500) == "1.50 s"
    assert render.latency({"invocations": 0, "p50_ms": 0.0}, "p50_ms") == "–"
    assert render.duration(None) == "–" and render.duration(61) == "1m01s"
    svg = render.sparkline_svg([0, 1, 2, 1])
    assert svg.startswith("<svg") and svg.count(",") == 4
    marked = render.sparkline_svg([0, 1, 2, 1], marks=[1, 2, 9], mark_label="replica start")
    assert marked.count("<circle") == 2 and marked.count("<title>replica start</title>") == 2
    assert render.waiting_text({"waiting_for_node": 0, "waiting_for_node_s": 9}) == ""
    assert render.waiting_text({"waiting_for_node": 1, "waiting_for_node_s": 12}) == (
        "waiting for a node (12.0 s)"
    )
    assert render.keep_alive_text({"keep_alive": None}) == ""


def test_real_kernel_displays_the_widget_in_the_cell_and_sends_final_values():
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        setup = "from nbserverless.notebook import widgets\nfrom nbserverless.metering.meter import METER\n"
        setup += "widgets.register(get_ipython())"
        assert kc.execute_interactive(setup, timeout=60)["content"]["status"] == "ok"
        msgs: list = []
        cell = CALLS.format(key="kernel", name="square", n=50)
        reply = kc.execute_interactive(cell, timeout=60, output_hook=msgs.append)
        assert reply["content"]["status"] == "ok"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    by_type: dict = {}
    for m in msgs:
        by_type.setdefault(m["header"]["msg_type"], []).append(m["content"])
    (shown,) = by_type["display_data"]  # once, under this cell
    assert "application/vnd.jupyter.widget-view+json" in shown["data"]
    (final,) = by_type["update_display_data"]  # static viewers get the final numbers
    assert final["transient"] == shown["transient"]
    assert re.search(r"square\s+50\s+5\s", final["data"]["text/plain"])
    values = [c["data"]["state"]["value"] for c in by_type["comm_msg"]
              if "value" in c["data"].get("state", {})]  # fmt: skip
    assert "data-state='final'" in values[-1]  # the model state holds the final values
    assert state_rows(values[-1])[0]["invocations"] == 50


def test_integration_remote_function_stats_and_frozen_inline_values(ray_cluster, ip):
    """A real ``@nbs.remote`` function on the session cluster, called from a cell."""
    import nbserverless as nbs

    nbs.config(prewarm=0)  # strict zero: the first calls wait for (and count) a cold start
    ip.user_ns["nbs"] = nbs
    run(
        ip,
        """
@nbs.remote(cpus=0.25, max_replicas=2, name="inline_square")
def inline_square(x):
    return x * x

out = list(inline_square.map(range(20), progress=False)) + [inline_square(3)]
""",
    )
    assert ip.user_ns["out"] == [x * x for x in range(20)] + [9]
    stats = ip.user_ns["inline_square"].stats()
    view = widgets.INLINE.last
    (row,) = view.final["functions"]
    assert row["name"] == stats["name"] == "inline_square"
    assert stats["invocations"] == row["invocations"] == 21
    assert stats["errors"] == row["errors"] == 0
    assert stats["in_flight"] == stats["queued"] == 0
    assert 1 <= stats["cold_starts"] <= 21 and 1 <= stats["peak_replicas"] <= 2
    assert stats["replicas"] >= 1  # kept alive for its keep-alive
    assert 0 < stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"]
    assert stats["exec_p50_ms"] > 0 and stats["cold_p50_ms"] > 0
    assert stats["replica_seconds_idle"] > 0  # start-up and keep-alive
    # 1 USD per cpu-second (fixture): cost = 0.25 × replica-seconds, busy and idle apart
    assert stats["cost_busy"] == pytest.approx(0.25 * stats["replica_seconds_busy"])
    assert stats["cost"] == pytest.approx(stats["cost_busy"] + stats["cost_idle"])
    assert stats["always_on_cost"] > 0 and stats["first_call"] <= view.final["time"]
    assert row["cost"] == pytest.approx(stats["cost"], rel=0.2)  # replicas still accrue
    (saved,) = state_rows(view.widget.value)
    assert saved["invocations"] == 21 and saved["p50_ms"] == row["p50_ms"]
    # the keep-alive in force, from the real pool, in the frozen widget and the dashboard
    assert stats["keep_alive"] and stats["keep_alive"].startswith("keep-alive")
    assert row["keep_alive"] == stats["keep_alive"]
    assert html.escape(stats["keep_alive"], quote=True) in view.widget.value
    d = dash.Dashboard(rich=False)
    text = d.text()
    assert stats["keep_alive"] in text
    # the real cluster summary: at least this node, peak at least as many, a node cost
    m = re.search(r"nodes(?: \(autoscaling\))?: (\d+) now .* peak (\d+) · node cost ≈\$", text)
    assert m and 1 <= int(m.group(1)) <= int(m.group(2)), text
