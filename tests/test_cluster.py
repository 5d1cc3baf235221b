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
    # nodes in view: the embedded cluster is one node, no autoscaler
    assert s["worker_nodes"] == 0 and s["nodes_pending"] == 0 and s["nodes_peak"] == 1
    assert s["node_history"][-1][1] == 1 and s["autoscaling"] is False
    assert cluster.autoscaling() is False and cluster.node_types() == {}
    assert s["node_cost_always_on"] >= s["node_cost"] >= 0


def test_replicas_of_the_embedded_cluster_run_at_the_kernels_priority(ray_cluster):
    # Ray renices its workers to 15 once their `import ray` is done, so replicas already
    # running calls would yield to the imports of replicas still starting (at the raylet's
    # priority): a burst's first replicas would answer only after its last one started.
    def niceness():
        import os

        return os.nice(0), os.getpid()

    claimed = nbs.remote(cpus=0.1, name="nice_warm")(niceness)  # may claim a warm replica
    started = nbs.remote(cpus=0.1, concurrency=2, name="nice_own")(niceness)  # its own actor
    for f in (claimed, started):
        nice, pid = f()
        assert pid != os.getpid()
        assert nice == os.nice(0), f"{f.name}: replica at nice {nice}, kernel at {os.nice(0)}"


def test_node_cost_is_node_seconds_at_the_price_table():
    from nbserverless.core import autoscaler
    from nbserverless.metering import pricing

    prices = pricing.current()
    node = {"CPU": 4.0, "GPU": 1.0, "memory": 16 * 2**30}
    rate = 4 * prices.cpu + 16 * prices.memory + prices.gpu_price(None)
    assert abs(autoscaler.node_rate(node) - rate) < 1e-12
    ledger = autoscaler.NodeLedger()
    ledger.observe(0.0, [node])
    ledger.observe(10.0, [node, node])  # 10 s of one node
    ledger.observe(20.0, [node])  # 10 s of two
    assert abs(ledger.cost - 30 * rate) < 1e-9
    assert abs(ledger.always_on(20.0) - 2 * rate * 20) < 1e-9  # the peak kept up
    assert ledger.peak == 2 and [n for _, n in ledger.history] == [1, 2, 1]


def test_infeasible_on_a_cluster_without_an_autoscaler_fails_at_once(ray_cluster):
    import pytest

    from nbserverless.errors import InfeasibleError

    @nbs.remote(cpus=64)
    def huge():
        return 1

    with pytest.raises(InfeasibleError, match="cpus=64.*no autoscaler can add one"):
        huge()
    assert huge.stats()["waiting_for_node"] == 0


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


TOKEN_DRIVER = textwrap.dedent(
    """
    import os, subprocess, sys
    import nbserverless as nbs
    from nbserverless.core import auth

    token = os.environ.pop("TEST_TOKEN", None) or None
    try:
        nbs.connect(os.environ.pop("TEST_ADDRESS"), token=token)
    except auth.AuthenticationError as exc:
        print("refused", str(exc).replace(chr(10), " "))
        raise SystemExit(0)

    @nbs.remote(cpus=0.5)
    def double(x):
        return 2 * x

    print("result", double(21))
    print("mode", os.environ.get("RAY_AUTH_MODE"))
    print("token_in_environ", "RAY_AUTH_TOKEN" in os.environ)
    child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('RAY_AUTH_TOKEN'))"],
                           capture_output=True, text=True).stdout.strip()
    print("child_sees", child)
    nbs.shutdown()
    """
)


def _token_driver(address: str, home: str, token: str | None = None) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    for var in cluster.ADDRESS_ENV_VARS:
        env.pop(var, None)
    env.update(HOME=home, TEST_ADDRESS=address, TEST_TOKEN=token or "")
    proc = subprocess.run(
        [sys.executable, "-c", TOKEN_DRIVER], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    return lines, proc.stdout + proc.stderr


def test_connect_to_a_token_auth_cluster_started_with_plain_ray_start(tmp_path):
    # `ray start --head` (Ray 2.60) turns token authentication on when ~/.ray/auth_token
    # exists (as after any earlier ray.init, or `ray get-auth-token --generate`). HOME is a
    # temp dir here, so the machine's own token is left alone.
    import pytest
    from autoscaling_cluster import AutoscalingCluster
    from ray._private.authentication.authentication_token_generator import (
        generate_new_authentication_token,
    )

    head_home, other_home = tmp_path / "head", tmp_path / "elsewhere"
    (head_home / ".ray").mkdir(parents=True)
    other_home.mkdir()
    token = generate_new_authentication_token()
    (head_home / ".ray" / "auth_token").write_text(token)
    with AutoscalingCluster(
        autoscaling=False, head_cpus=1, extra_env={"HOME": str(head_home)}
    ) as c:
        assert any("Token authentication is enabled" in line for line in c.output), c.output
        # the token file of the user who started the cluster: RAY_AUTH_MODE set for the user
        lines, output = _token_driver(c.address, str(head_home))
        assert lines["result"] == "42" and lines["mode"] == "token"
        assert lines["token_in_environ"] == "False" and lines["child_sees"] == "None"
        # no file: the token given to nbs.connect(token=...), gone from the environment after
        lines, output = _token_driver(c.address, str(other_home), token=token)
        assert lines["result"] == "42" and lines["mode"] == "token"
        assert lines["token_in_environ"] == "False" and lines["child_sees"] == "None"
        assert token not in output  # never printed
        # a wrong token: one clear line, and the wrong token is not echoed either
        wrong = "x" * len(token)
        lines, output = _token_driver(c.address, str(other_home), token=wrong)
        assert "refused" in lines and "token" in lines["refused"], output[-2000:]
        assert "nbs.connect(address, token=...)" in lines["refused"] and wrong not in output
    if "result" in lines:
        pytest.fail("a wrong token was accepted")


NOTICE = textwrap.dedent(
    """
    import tempfile
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    import os
    os.environ["NBSERVERLESS_TEMP_DIR"] = tempfile.mkdtemp(prefix="nbs-notice-", dir="/tmp")
    shell.run_line_magic("load_ext", "nbserverless")
    cell = "import nbserverless as nbs\\n@nbs.remote(cpus=0.25)\\ndef inc(x):\\n    return x + 1\\n"
    print("--- cell")
    shell.run_cell(cell + "y = inc(1)").raise_error()
    print("result", shell.user_ns["y"])
    shell.run_line_magic("unload_ext", "nbserverless")
    shell.user_ns["nbs"].shutdown()
    """
)


def test_first_cell_says_the_local_cluster_is_starting():
    # %load_ext starts the embedded cluster in the background; the first remote cell waits
    # for it and says so in its output, then the line is cleared (a transient display).
    env = {k: v for k, v in os.environ.items() if k not in cluster.ADDRESS_ENV_VARS}
    proc = subprocess.run(
        [sys.executable, "-c", NOTICE], env=env, capture_output=True, text=True, timeout=400
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cell_output = proc.stdout.split("--- cell", 1)[1]
    assert "starting the local cluster…" in cell_output
    assert "result 2" in cell_output
    assert "Traceback" not in proc.stderr


START_FAILS = textwrap.dedent(
    """
    from nbserverless.core import cluster
    try:
        cluster.connect(temp_dir="/proc/nbs-cannot-write-here")
    except cluster.ClusterStartError as exc:
        print("error", repr(str(exc)))
        print("chained", exc.__cause__ is not None or exc.__suppress_context__ is False)
    """
)


def test_a_cluster_that_cannot_start_is_one_paragraph():
    # a real start failure (Ray cannot create its temp dir), tried twice, reported once
    env = {k: v for k, v in os.environ.items() if k not in cluster.ADDRESS_ENV_VARS}
    proc = subprocess.run(
        [sys.executable, "-c", START_FAILS], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    message = eval(lines["error"])  # the repr printed above
    assert "\n" not in message and len(message) < 900  # one paragraph, not Ray's internals
    assert "did not start, twice" in message and "nbs.connect(address)" in message
    assert lines["chained"] == "False"  # no Ray traceback chained below it
