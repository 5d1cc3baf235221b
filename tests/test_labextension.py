"""The JupyterLab extension: its jest/lint checks, its install, and a real ``jupyter lab``
driven by Debian's chromium through Playwright.

Browser flow (one lab, one page, steps in order): open a notebook whose kernel has not loaded
the extension (empty state), ``%load_ext nbserverless``, define ``@nbs.remote def sq`` and call
it 30 times; the panel row ``data-function="sq"`` shows 30 calls, the status bar shows replicas
and a ``$`` cost; "Scale to zero" brings replicas to 0; "Reset metrics" zeroes the counts; a
page reload repopulates the panel without duplicate rows; a kernel restart empties it and a
fresh ``%load_ext`` fills it again.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lab_helpers import CHROMIUM, LabServer, launch_chromium, run_cell, write_notebook

ROOT = Path(__file__).resolve().parent.parent
LABEXT = ROOT / "labextension"
JLPM = shutil.which("jlpm")
needs_jlpm = pytest.mark.skipif(
    JLPM is None,
    reason="jlpm not found (it comes with JupyterLab; Node.js >= 20.19 too): "
    "the extension's jest and lint checks need them",
)
STEP = 60_000  # ms: bound of every browser wait (they poll, and return as soon as true)


def _jlpm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    if not (LABEXT / "node_modules").is_dir():
        # A checkout where the JS build has not run yet: install the locked dependencies.
        subprocess.run([JLPM, "install"], cwd=LABEXT, check=True, timeout=600)
    return subprocess.run(
        [JLPM, *args], cwd=LABEXT, capture_output=True, text=True, timeout=timeout
    )


# --------------------------------------------------------------------------------------------
# Node side: jest unit tests of the model, lint, and the installed extension
# --------------------------------------------------------------------------------------------


@needs_jlpm
def test_jest_model_tests():
    r = _jlpm("test", "--ci")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    m = re.search(r"Tests:\s+(?:(\d+) failed, )?(\d+) passed, (\d+) total", out)
    assert m, out[-2000:]
    assert m.group(1) is None and int(m.group(2)) == int(m.group(3)) >= 20, m.group(0)


@needs_jlpm
def test_eslint_and_prettier_clean():
    r = _jlpm("lint:check")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]


def test_labextension_installed_and_enabled():
    r = subprocess.run(
        [sys.executable, "-m", "jupyterlab.labextensions", "list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = re.sub(r"\x1b\[[0-9;]*m", "", r.stdout + r.stderr)
    line = next((ln for ln in out.splitlines() if ln.strip().startswith("nbserverless ")), "")
    assert "enabled" in line and "OK" in line, out


# --------------------------------------------------------------------------------------------
# Browser
# --------------------------------------------------------------------------------------------

CELLS = [
    "%load_ext nbserverless",
    "import nbserverless as nbs\n\n@nbs.remote\ndef sq(x):\n    return x * x",
    "print(sum([sq(i) for i in range(30)]))",
]
SUM_30 = sum(i * i for i in range(30))  # 8555


@pytest.fixture(scope="module")
def lab(cluster_address):
    if not os.path.exists(CHROMIUM):
        pytest.skip(
            f"browser tests skipped: no chromium at {CHROMIUM} "
            "(apt-get install -y chromium; see README 'Set-up')"
        )
    server = LabServer({"NBSERVERLESS_ADDRESS": cluster_address})
    write_notebook(server.root / "panel.ipynb", CELLS)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pw():
    """One Playwright per module (its sync API cannot be started twice in one thread)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def page(lab, pw):
    browser = launch_chromium(pw)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    pg.console_messages = []  # type: ignore[attr-defined]
    pg.on("console", lambda m: pg.console_messages.append(m.text))  # type: ignore[attr-defined]
    pg.set_default_timeout(STEP)
    pg.goto(lab.url("/lab/tree/panel.ipynb", reset=""))
    pg.locator(".jp-Notebook").first.wait_for()
    try:
        yield pg
    finally:
        context.close()
        browser.close()


def expect(locator):
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def panel(page):
    return page.locator("#nbserverless-panel")


def row(page, name="sq"):
    return page.locator(f'#nbserverless-panel tr[data-function="{name}"]')


def open_panel(page):
    """Open the side panel by clicking the status-bar item (SPEC.md)."""
    if not panel(page).is_visible():
        page.locator("#nbserverless-status").click()
    expect(panel(page)).to_be_visible()


def stdout_of(page, index: int):
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    return cell.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stdout"]')


def wait_idle(page):
    expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_have_count(
        1, timeout=STEP
    )


def test_browser_empty_state_before_load(page):
    # the kernel starts from the notebook's kernelspec; the extension is not loaded yet
    wait_idle(page)
    open_panel(page)
    expect(panel(page)).to_have_attribute("data-state", "not-loaded")
    expect(panel(page).locator(".nbs-empty")).to_contain_text("%load_ext nbserverless")
    expect(page.locator("#nbserverless-status")).to_have_text("⚡ –")


def test_browser_calls_show_in_panel_and_status(page):
    for i in range(3):
        run_cell(page, i)
    expect(stdout_of(page, 2)).to_contain_text(str(SUM_30), timeout=120_000)
    expect(panel(page)).to_have_attribute("data-state", "live")
    r = row(page)
    expect(r).to_have_count(1)
    expect(r.locator(".nbs-col-calls")).to_have_text("30")
    expect(r.locator(".nbs-errors")).to_have_count(0)  # no error badge
    expect(r.locator(".nbs-col-p50")).to_have_text(re.compile(r"^\d[\d.]* (µs|ms|s)$"))
    expect(r.locator(".nbs-col-cost")).to_have_text(re.compile(r"^\$\d"))
    # sq's replica (a claimed warm replica or one it started) stays warm for keep_alive
    expect(r.locator(".nbs-col-replicas")).to_have_text(re.compile(r"^[1-9]"), timeout=120_000)
    status = page.locator("#nbserverless-status")
    expect(status).to_have_text(re.compile(r"^⚡ [1-9]\d* replicas? · \$\d"))
    assert "estimate" in (status.get_attribute("title") or "")
    # the cluster summary and totals are there
    expect(panel(page).locator(".nbs-cluster")).to_contain_text("Nodes")
    expect(panel(page).locator("tfoot .nbs-col-calls")).to_have_text("30")


def test_browser_scale_to_zero(page):
    r = row(page)
    assert int(r.locator(".nbs-col-replicas").inner_text()) >= 1
    panel(page).get_by_role("button", name="Scale to zero").click()
    expect(r.locator(".nbs-col-replicas")).to_have_text("0")
    expect(page.locator("#nbserverless-status")).to_have_text(re.compile(r"^⚡ 0 replicas · \$"))
    expect(r.locator(".nbs-col-calls")).to_have_text("30")  # scaling keeps the counts


def test_browser_reload_repopulates_without_duplicates(page):
    page.reload()
    page.locator(".jp-Notebook").first.wait_for()
    open_panel(page)
    expect(row(page)).to_have_count(1)
    expect(row(page).locator(".nbs-col-calls")).to_have_text("30")
    expect(page.locator("#nbserverless-status")).to_have_text(re.compile(r"^⚡ \d+ replicas? · \$"))
    # a second round of calls updates the same row
    run_cell(page, 2)
    expect(row(page).locator(".nbs-col-calls")).to_have_text("60")
    expect(row(page)).to_have_count(1)


def test_browser_reset_metrics(page):
    panel(page).get_by_role("button", name="Reset metrics").click()
    expect(row(page).locator(".nbs-col-calls")).to_have_text("0")
    expect(panel(page).locator("tfoot .nbs-col-calls")).to_have_text("0")


def test_browser_kernel_restart(page):
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^Kernel$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Restart Kernel…$")).click()
    page.locator(".jp-Dialog button", has_text=re.compile("^Restart$")).click()
    expect(panel(page)).to_have_attribute("data-state", "not-loaded")
    expect(row(page)).to_have_count(0)
    wait_idle(page)
    for i in range(3):
        run_cell(page, i)
    expect(row(page).locator(".nbs-col-calls")).to_have_text("30", timeout=120_000)
    expect(row(page)).to_have_count(1)


def test_browser_no_malformed_message_errors(page):
    # nothing the kernel sent was rejected by the model
    assert not [m for m in page.console_messages if "ignored comm message" in m]


# --------------------------------------------------------------------------------------------
# Layout at the side bar's default width: a second lab, no cluster needed (the kernel starts
# the comm and records calls in its meter directly; the panel cannot tell the difference)
# --------------------------------------------------------------------------------------------

PANEL_COLUMNS = ("Function", "Calls", "p50", "Replicas", "Cost")
LAYOUT_CELLS = [
    "from nbserverless.notebook import comm\n"
    "from nbserverless.metering import pricing\n"
    "from nbserverless.metering.meter import METER\n"
    "comm.start()",
    # the widest values a row can hold: 1,234,567 calls, a 12-replica peak, "$1,234.50"
    "pricing.set_prices(cpu=1.0, memory=0.0)\n"
    "wide = METER.function('w', name='a_rather_long_function_name', cpus=1)\n"
    "for r in range(12):\n"
    "    wide.replica_started(r, t=0.0)\n"
    "wide.submitted(1_234_567); wide.dispatched(1_234_567)\n"
    "wide.finished(1_234_567, errors=3, total_s=0.8, exec_s=0.0008)\n"
    "sq = METER.function('s', name='sq', cpus=1)\n"
    "sq.submitted(30); sq.dispatched(30); sq.finished(30, total_s=0.05, exec_s=0.012)\n"
    "sq.replica_started('r', t=0.0)\n"
    "import time; [wide.replica_stopped(r, t=1234.5 / 12) for r in range(12)]\n"
    "sq.replica_stopped('r', t=0.000038)\n"
    # schema v2: the widest function waits for a node, and has a keep-alive in force
    "wide.keep_alive_label = 'keep-alive 60 s (fixed, learning 3/10)'\n"
    "wide.waiting_for_node, wide.waiting_for_node_s = 2, 3725.0",
    # run by the budget test: a budget 84 % spent
    "from nbserverless import settings\n"
    "settings.update(budget=METER.snapshot()['totals']['cost'] / 0.84)",
]


@pytest.fixture(scope="module")
def layout_page(pw):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"browser tests skipped: no chromium at {CHROMIUM}")
    server = LabServer()
    write_notebook(server.root / "layout.ipynb", LAYOUT_CELLS)
    server.start()
    try:
        browser = launch_chromium(pw)
        # a common laptop screen; the side bar keeps its default width (never resized)
        pg = browser.new_page(viewport={"width": 1280, "height": 800})
        pg.set_default_timeout(STEP)
        pg.goto(server.url("/lab/tree/layout.ipynb", reset=""))
        pg.locator(".jp-Notebook").first.wait_for()
        wait_idle(pg)
        # the kernel is connected (run before that and the run is lost)
        expect(pg.locator(".jp-StatusBar-Widget").first).to_contain_text("| Idle", timeout=180_000)
        for i in range(2):
            _run_and_wait(pg, i)
        open_panel(pg)
        expect(row(pg, "sq").locator(".nbs-col-calls")).to_have_text("30")
        yield pg
        browser.close()
    finally:
        server.stop()


def _run_and_wait(pg, index: int) -> None:
    cell = run_cell(pg, index)
    expect(cell.locator(".jp-InputArea-prompt")).to_have_text(re.compile(r"\[\d+\]"))
    assert not cell.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']"
                            ).count(), cell.inner_text()  # fmt: skip


def _inside(item, box) -> None:
    b = item.bounding_box()
    assert b is not None, item
    text = item.inner_text()
    assert box["x"] - 0.5 <= b["x"] and b["x"] + b["width"] <= box["x"] + box["width"] + 0.5, (
        text, b, box)  # fmt: skip
    assert not item.evaluate("e => e.scrollWidth > e.clientWidth"), f"{text!r} is cut"


def test_browser_default_width_shows_every_column_and_button(layout_page):
    """At the side bar's default width the five columns, every number of the widest row and
    both buttons are inside the panel and not cut."""
    pg = layout_page
    box = panel(pg).bounding_box()
    assert box and box["width"] > 0
    heads = panel(pg).locator("thead th")
    assert heads.all_inner_texts() == list(PANEL_COLUMNS)
    wide = row(pg, "a_rather_long_function_name")
    cells = wide.locator("td").all_inner_texts()[1:]
    assert cells[0] == "1,234,567" and cells[2:] == ["0", "$1,234.50"], cells
    assert re.fullmatch(r"\d\d\d µs", cells[1]), cells  # exec p50 (about 0.8 ms)
    assert row(pg, "sq").locator(".nbs-col-cost").inner_text() == "$0.000038"
    items = [*heads.all(), *wide.locator("td:not(.nbs-col-name)").all()]
    items += row(pg, "sq").locator("td:not(.nbs-col-name)").all()
    items += panel(pg).locator("tfoot td:not(.nbs-col-name)").all()
    items += [panel(pg).get_by_role("button", name=n) for n in ("Scale to zero", "Reset metrics")]
    for item in items:
        _inside(item, box)
    # the name column is cut with an ellipsis, never the numbers; the tooltip has it all
    assert "a_rather_long_function_name" in (wide.get_attribute("title") or "")
    assert wide.locator(".nbs-errors").inner_text() == "3✗"


def test_browser_row_details_show_what_the_columns_leave_out(layout_page):
    pg = layout_page
    r = row(pg, "sq")
    r.click()
    details = panel(pg).locator('tr.nbs-details[data-details-for="sq"]')
    expect(details).to_contain_text("p50 run / end-to-end")
    expect(details).to_contain_text(re.compile(r"1\d\.\d ms / [45]\d\.\d ms"))
    _inside(details, panel(pg).bounding_box())
    r.click()
    expect(details).to_have_count(0)
    title = r.get_attribute("title") or ""
    assert "Errors: 0" in title and "Saving" in title


def test_browser_waiting_keep_alive_and_nodes_fit_at_default_width(layout_page):
    pg = layout_page
    box = panel(pg).bounding_box()
    wide = row(pg, "a_rather_long_function_name")
    waiting = wide.locator(".nbs-waiting")
    expect(waiting).to_have_text("waiting for a node (1h02m)")
    _inside(waiting, box)
    title = wide.get_attribute("title") or ""
    assert "Keep-alive: keep-alive 60 s (fixed, learning 3/10)" in title, title
    wide.click()
    details = panel(pg).locator('tr.nbs-details[data-details-for="a_rather_long_function_name"]')
    expect(details).to_contain_text("keep-alive 60 s (fixed, learning 3/10)")
    _inside(details, box)
    wide.click()
    expect(details).to_have_count(0)
    # the cluster summary of schema v2: nodes now / pending / peak and the node cost
    cluster = panel(pg).locator(".nbs-cluster")
    expect(cluster).to_contain_text(re.compile(r"\d+ now · \d+ pending · peak \d+"))
    expect(cluster).to_contain_text("Node cost (est.)")
    for item in cluster.locator(".nbs-cluster-item dd").all():
        b = item.bounding_box()
        assert (
            b and box["x"] - 0.5 <= b["x"] and b["x"] + b["width"] <= box["x"] + box["width"] + 0.5
        )


def test_browser_budget_warning_in_panel_and_status_bar(layout_page):
    pg = layout_page
    _run_and_wait(pg, 2)
    warn = panel(pg).locator(".nbs-budget")
    expect(warn).to_contain_text("84% of the budget spent")
    expect(pg.locator("#nbserverless-status")).to_have_text(re.compile("⚠$"))
