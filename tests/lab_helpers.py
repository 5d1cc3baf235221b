"""Helpers for the browser tests of the lab extension: a real ``jupyter lab`` in temp dirs,
and Debian's chromium driven by Playwright (never a downloaded browser)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(path: Path, cells: list[str]) -> None:
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": f"c{i}",
                "metadata": {},
                "outputs": [],
                "source": src,
            }
            for i, src in enumerate(cells)
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb, indent=1))


class LabServer:
    """``jupyter lab`` on a free port with a known token and its own temp folders for
    workspaces, settings, runtime, config, data and IPython; stopped by its PID."""

    def __init__(self, extra_env: dict[str, str] | None = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="nbs-lab-"))
        self.root = self.tmp / "root"
        self.root.mkdir()
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        env = dict(os.environ)
        for name in ("workspaces", "settings", "runtime", "config", "data", "ipython", "xdg"):
            (self.tmp / name).mkdir()
        env.update(
            JUPYTERLAB_WORKSPACES_DIR=str(self.tmp / "workspaces"),
            JUPYTERLAB_SETTINGS_DIR=str(self.tmp / "settings"),
            JUPYTER_RUNTIME_DIR=str(self.tmp / "runtime"),
            JUPYTER_CONFIG_DIR=str(self.tmp / "config"),
            JUPYTER_DATA_DIR=str(self.tmp / "data"),
            IPYTHONDIR=str(self.tmp / "ipython"),
            XDG_CONFIG_HOME=str(self.tmp / "xdg"),
            XDG_CACHE_HOME=str(self.tmp / "xdg"),
            XDG_DATA_HOME=str(self.tmp / "xdg"),
            JUPYTER_PLATFORM_DIRS="1",
        )
        env.pop("JUPYTER_PATH", None)
        env.update(extra_env or {})
        # The lab loads THIS checkout's build when there is one (the user data dir comes
        # first in the lab's extension path), not whatever copy is installed in the env.
        build = Path(__file__).resolve().parent.parent / "nbserverless" / "labextension"
        if (build / "package.json").is_file():
            (self.tmp / "data" / "labextensions").mkdir(parents=True)
            (self.tmp / "data" / "labextensions" / "nbserverless").symlink_to(build)
        self.env = env
        # No news pop-up over the status bar.
        labconfig = self.tmp / "config" / "labconfig"
        labconfig.mkdir(parents=True)
        (labconfig / "page_config.json").write_text(
            json.dumps(
                {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}
            )
        )
        self.log = open(self.tmp / "lab.log", "wb")  # noqa: SIM115

    def start(self, timeout: float = 90.0) -> LabServer:
        cmd = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            "--ServerApp.password=",
            f"--ServerApp.root_dir={self.root}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--ServerApp.allow_root=True",
        ]
        self.proc = subprocess.Popen(
            cmd, env=self.env, cwd=self.root, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited early:\n{self.log_text()}")
            try:
                self.api("GET", "/api/status")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"jupyter lab did not answer in {timeout:.0f} s")
            time.sleep(0.2)  # poll interval while the server boots

    def url(self, path: str, **query: str) -> str:
        q = "&".join([*(f"{k}={v}" if v else k for k, v in query.items()), f"token={self.token}"])
        return f"{self.base}{path}?{q}"

    def api(self, method: str, path: str, body: dict | None = None):
        req = urllib.request.Request(
            f"{self.base}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            data = resp.read()
        return json.loads(data) if data else None

    def log_text(self) -> str:
        self.log.flush()
        return (self.tmp / "lab.log").read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # shut the kernels down cleanly first (their Ray drivers disconnect)
            try:
                for k in self.api("GET", "/api/kernels"):
                    self.api("DELETE", f"/api/kernels/{k['id']}")
            except Exception:
                pass
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def run_cell(page, index: int):
    """Select cell ``index`` of the open notebook and run it with the toolbar's run button."""
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    cell.locator(".jp-InputArea-prompt").click()
    page.locator(".jp-Notebook .jp-Cell.jp-mod-active").nth(0).wait_for()
    assert "jp-mod-active" in (cell.get_attribute("class") or "")
    page.locator(
        '.jp-NotebookPanel-toolbar [data-command="notebook:run-cell-and-select-next"]'
    ).click()
    return cell


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


SCREENSHOT_CELLS = [
    "%load_ext nbserverless",
    "import time\nimport nbserverless as nbs\n\n"
    "@nbs.remote(cpus=0.5, max_replicas=4)\ndef embed(doc_id):\n"
    "    time.sleep(0.05)  # stand-in for real work\n    return doc_id % 7\n\n"
    "@nbs.remote\ndef sq(x):\n    return x * x",
    "print(sum(sq(i) for i in range(30)))",
    "vectors = list(embed.map(range(600)))",
]


def screenshot(out: Path, timeout_ms: int = 120_000) -> None:
    """Save a picture of the Serverless panel while ``embed.map`` runs (docs/panel.png).

    ``python tests/lab_helpers.py docs/panel.png``
    """
    import re

    import ray
    from playwright.sync_api import expect, sync_playwright

    import nbserverless as nbs
    from nbserverless.core import cluster

    temp_dir = tempfile.mkdtemp(prefix="nbs-shot-", dir="/tmp")
    cluster.connect(temp_dir=temp_dir, num_cpus=4)
    server = LabServer({"NBSERVERLESS_ADDRESS": ray.get_runtime_context().gcs_address})
    write_notebook(server.root / "quickstart.ipynb", SCREENSHOT_CELLS)
    server.start()
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(timeout_ms)
            page.goto(server.url("/lab/tree/quickstart.ipynb", reset=""))
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for()
            page.locator("#nbserverless-status").click()
            page.locator("#nbserverless-panel").wait_for()
            # the side bar keeps its default width: the picture shows what a user sees
            page.locator(".jp-StatusBar-Widget").first.get_by_text("| Idle").wait_for()
            cells = page.locator(".jp-Notebook .jp-Cell")
            for i in range(len(SCREENSHOT_CELLS)):
                run_cell(page, i)
                if i == 2:  # the warm-up calls are done before the map starts
                    expect(
                        cells.nth(2).locator('[data-mime-type="application/vnd.jupyter.stdout"]')
                    ).to_contain_text("8555", timeout=timeout_ms)
            # during the map: embed has replicas and calls, and is not finished yet
            row = page.locator('#nbserverless-panel tr[data-function="embed"]')
            expect(row.locator(".nbs-col-replicas")).to_have_text(
                re.compile("^[2-9]"), timeout=timeout_ms
            )
            expect(row.locator(".nbs-col-calls")).to_have_text(
                re.compile(r"^[1-9]\d\d?$"), timeout=timeout_ms
            )
            page.screenshot(path=str(out))
            browser.close()
    finally:
        server.stop()
        nbs.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/panel.png"))
