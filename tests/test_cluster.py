"""Attaching to an existing cluster, quiet start-up, shutdown."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import nbserverless as nbs
from nbserverless.core import cluster

SCRIPT = textwrap.dedent(
    """
    import ray
    import nbserverless as nbs

    @nbs.remote(cpus=0.1)
    def where(x):
        return x * 2

    print("result", where(21))
    print("address", ray.get_runtime_context().gcs_address)
    actor = where._get_pool().reps
    ids = [r.actor._actor_id.hex() for r in actor.values()]
    print("actors", ",".join(ids))
    nbs.shutdown()
    print("after", ray.is_initialized(), where.stats()["replicas"])
    """
)


def _run(script: str, env: dict) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """Run ``script`` in a fresh interpreter; its ``key value`` output lines as a dict."""
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180
    )
    return proc, dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)


def test_attach_to_existing_cluster_quietly_and_shut_down(ray_cluster, subprocess_env):
    proc, lines = _run(SCRIPT, subprocess_env)
    assert proc.returncode == 0, proc.stderr
    assert lines["result"] == "42"
    assert lines["address"] == ray_cluster  # the same cluster, not a new one
    assert lines["after"] == "False 0"  # disconnected, scaled to zero
    # Ray's own log noise stays out of the user's output
    assert "INFO" not in proc.stderr and "Connecting to existing Ray cluster" not in proc.stderr
    from ray._private.state import state as gcs  # the cluster's own record of the actors

    for actor_id in lines["actors"].split(","):
        assert gcs.actor_table(actor_id)["State"] == "DEAD"


def test_summary_describes_the_cluster(ray_cluster):
    s = cluster.summary()
    assert s["nodes"] == 1 and s["cpus"] == 4.0
    assert set(s) >= {"address", "nodes", "cpus", "cpus_used", "gpus", "gpus_used"}
    assert nbs.connect() == s["address"] == "local"  # already connected: no-op


def test_config_validates_keys(ray_cluster):
    import pytest

    with pytest.raises(ValueError, match="unknown setting"):
        nbs.config(kep_alive=3)
    assert nbs.config(keep_alive=5)["keep_alive"] == 5
    assert nbs.config.get("keep_alive") == 5


EMBEDDED = textwrap.dedent(
    """
    import os, tempfile
    from nbserverless.core import cluster
    cluster.connect(background=True, temp_dir=tempfile.mkdtemp(prefix="nbs-bg-", dir="/tmp"))
    import nbserverless as nbs

    @nbs.remote(cpus=0.25)
    def inc(x):
        return x + 1

    print("result", inc(1), cluster.address())
    nbs.shutdown()
    """
)


def test_background_start_of_the_embedded_cluster_survives(ray_cluster):
    # what %load_ext does: start a local cluster in a background thread, use it later
    env = {k: v for k, v in os.environ.items() if k not in cluster.ADDRESS_ENV_VARS}
    proc = subprocess.run(
        [sys.executable, "-c", EMBEDDED], env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "result 2 local" in proc.stdout


LOAD_EXT = textwrap.dedent(
    """
    import sys, threading
    from IPython.core.interactiveshell import InteractiveShell

    importers = []

    class Spy:  # notes which thread imports Ray
        def find_spec(self, name, path=None, target=None):
            if name == "ray":
                importers.append(threading.current_thread().name)

    sys.meta_path.insert(0, Spy())
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "nbserverless")
    print("load_ext imported ray in the kernel's thread:", "MainThread" in importers)
    print("completion", "remote" in dir(sys.modules["nbserverless"]))
    cell = "import nbserverless as nbs\\n@nbs.remote(cpus=0.1)\\ndef inc(x):\\n    return x + 1\\n"
    shell.run_cell(cell + "y = inc(1)").raise_error()
    print("result", shell.user_ns["y"], ",".join(importers))
    shell.run_line_magic("unload_ext", "nbserverless")
    shell.user_ns["nbs"].shutdown()
    """
)


def test_load_ext_leaves_importing_ray_to_the_background_connect(subprocess_env):
    # Importing Ray takes about a second of CPU: %load_ext returns without it, the connect
    # thread imports it, and the kernel's first call waits for that import.
    proc, lines = _run(LOAD_EXT, subprocess_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert lines["load_ext"] == "imported ray in the kernel's thread: False"
    assert lines["completion"] == "True"  # nbs.remote is offered before its first use
    assert lines["result"] == "2 nbserverless-connect"
