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


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
