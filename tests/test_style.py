"""The tree stays ruff-clean (lint and format), as the README promises."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]])
def test_ruff_is_clean(command):
    ruff = shutil.which("ruff")
    assert ruff, "ruff is part of the test extra: pip install -e '.[test]'"
    proc = subprocess.run([ruff, *command], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]


def _imports(path: Path) -> list[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    import ast

    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            mod = ".".join(base) if node.level else ""
            out.append(".".join(p for p in (mod, node.module or "") if p))
    return out


def test_the_worker_imports_nothing_from_the_kernel_side():
    # DESIGN.md: what runs on the cluster (nbserverless/worker) never imports the kernel side
    # (core, handles, metering, notebook, errors ...), so a replica loads only what it needs
    for path in sorted((ROOT / "nbserverless" / "worker").glob("*.py")):
        ours = [m for m in _imports(path) if m.split(".")[0] == "nbserverless"]
        bad = [m for m in ours if not m.startswith("nbserverless.worker")]
        assert not bad, f"{path.name} imports {bad}"


def test_a_replica_process_loads_nothing_of_the_kernel_side():
    # a replica imports nbserverless.worker.replica, which runs nbserverless/__init__.py
    # first: that must stay light (no core, handles, metering or notebook modules)
    import json
    import sys

    code = (
        "import json, sys, nbserverless.worker.replica, nbserverless.worker.warm\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('nbserverless'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = json.loads(proc.stdout)
    kernel = [m for m in loaded if m.split(".")[1:2] in (["core"], ["handles"], ["metering"],
                                                         ["notebook"])]  # fmt: skip
    assert not kernel, kernel
