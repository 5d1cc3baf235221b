"""A real autoscaling Ray cluster on this machine, for tests and benchmarks.

Ray's fake multi-node provider starts real raylets as worker "nodes" on localhost. The head
(0 CPUs) runs ``ray start --head --block`` in its own process group, its own temp dir and on
free ports; the autoscaler's worker nodes are children of that group and go with it.
Never ``ray stop --force`` (it would kill every Ray on the machine) and never Ray's
``AutoscalingCluster`` (it does exactly that).

Example::

    with AutoscalingCluster(v2=True) as c:
        subprocess.run([sys.executable, "-c", script], env=c.client_env())
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

#: ``ray start``, with Ray's 30 s wait for the head's raylet made patient (a loaded machine)
STARTUP_PY = os.path.join(os.path.dirname(__file__), "..", "nbserverless", "core", "startup.py")
_LOAD_STARTUP = (
    "import importlib.util as u, sys; s = u.spec_from_file_location('nbs_startup', "
    f"{os.path.abspath(STARTUP_PY)!r}); m = u.module_from_spec(s); s.loader.exec_module(m); "
    "m.patient_start(); nbs_light_agents = m.light_agents(); nbs_light_agents.__enter__(); "
)
#: ``ray start``, and (through ``sitecustomize``) the autoscaler's monitor that starts the
#: worker nodes, with Ray's start-up waits made patient for a loaded machine, as the
#: embedded cluster's (nbserverless/core/startup.py)
LAUNCHER = _LOAD_STARTUP + (
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"
)
SITECUSTOMIZE = (
    "import os, sys\n"
    "if sys.argv and sys.argv[0].endswith('monitor.py'):\n"
    f"    {_LOAD_STARTUP}\n"
    # the wheel lacks the fake provider's defaults file (autoscaler v2 reads it): the
    # config itself has every field
    "    from ray.autoscaler._private import providers\n"
    "    providers._DEFAULT_CONFIGS['fake_multinode'] = lambda: os.environ['NBS_FAKE_CONFIG']\n"
)

_CLIENT_VARS = ("RAY_ADDRESS", "NBSERVERLESS_ADDRESS", "RAY_AUTH_")
FAKE_HEAD_NODE_ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"
#: Ray's own start-up patience, for a loaded machine (see nbserverless.core.startup)
SLOW_START_ENV = {
    "RAY_raylet_start_wait_time_s": "120",
    "RAY_agent_register_timeout_ms": "120000",
    "RAY_worker_register_timeout_seconds": "120",
    "RAY_gcs_rpc_server_connect_timeout_s": "60",
}
CPU_NODE = {"resources": {"CPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def autoscaling_config(
    gcs_address: str,
    worker_types: dict[str, dict] | None = None,
    *,
    idle_timeout_s: float = 6.0,
    v2: bool = False,
) -> dict[str, Any]:
    """The fake provider's cluster config: a 0-CPU head and ``worker_types`` (default one
    ``cpu_node`` type of 1 CPU, 0..2 nodes)."""
    types: dict[str, dict] = {
        "ray.head.default": {"resources": {}, "node_config": {}, "max_workers": 0}
    }
    types.update(worker_types or {"cpu_node": dict(CPU_NODE)})
    provider: dict[str, Any] = {
        "type": "fake_multinode",
        "use_node_id_as_ip": True,
        "gcs_address": gcs_address,
        "disable_node_updaters": True,
        "disable_launch_config_check": True,
    }
    if v2:
        provider.update(launch_multiple=True, head_node_id=FAKE_HEAD_NODE_ID)
    config: dict[str, Any] = {
        "cluster_name": "nbs-fake",
        "max_workers": sum(t.get("max_workers", 0) for t in types.values()),
        "provider": provider,
        "available_node_types": types,
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_s / 60.0,
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }
    return config


class AutoscalingCluster:
    """Head + Ray's autoscaler (v1, or v2 with ``v2=True``) + fake worker nodes, all in one
    process group this object started and stops. ``autoscaling=False``: a plain
    ``ray start --head`` (token authentication on, as Ray 2.60's default)."""

    def __init__(
        self,
        *,
        v2: bool = False,
        worker_types: dict[str, dict] | None = None,
        idle_timeout_s: float = 6.0,
        extra_env: dict[str, str] | None = None,
        autoscaling: bool = True,
        head_cpus: float = 0,
    ):
        self.autoscaling = autoscaling
        self.head_cpus = head_cpus
        self.v2 = v2
        self.worker_types = worker_types
        self.idle_timeout_s = idle_timeout_s
        self.extra_env = extra_env or {}
        self.temp_dir = tempfile.mkdtemp(prefix="nbs-as-", dir="/tmp")
        self.proc: subprocess.Popen | None = None
        self.address: str | None = None
        self.output: list[str] = []

    def start(self, timeout: float = 180.0, attempts: int = 2) -> str:
        """Start the head and its autoscaler; return the GCS address to connect to. On a
        loaded machine Ray's head may time out starting: it is tried ``attempts`` times."""
        for attempt in range(attempts):
            try:
                return self._start(timeout)
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
                self.temp_dir = tempfile.mkdtemp(prefix="nbs-as-", dir="/tmp")
                self.output = []
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> str:
        import ray._private.services as services

        port = free_port()
        ip = services.get_node_ip_address()
        config = autoscaling_config(
            f"{ip}:{port}", self.worker_types, idle_timeout_s=self.idle_timeout_s, v2=self.v2
        )
        config_path = os.path.join(self.temp_dir, "autoscaling.json")
        with open(config_path, "w") as f:
            json.dump(config, f)
        # as from a user's shell: no address, no auth settings (the pytest process may have
        # RAY_AUTH_MODE=token from its own ray.init)
        env = {k: v for k, v in os.environ.items() if not k.startswith(_CLIENT_VARS)}
        env.update(SLOW_START_ENV, NBS_FAKE_CONFIG=config_path)
        env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
        if self.v2 and self.autoscaling:
            env.update(
                RAY_enable_autoscaler_v2="1",
                RAY_CLOUD_INSTANCE_ID=FAKE_HEAD_NODE_ID,
                RAY_OVERRIDE_NODE_ID_FOR_TESTING=FAKE_HEAD_NODE_ID,
            )
        site = os.path.join(self.temp_dir, "site")
        os.makedirs(site, exist_ok=True)
        with open(os.path.join(site, "sitecustomize.py"), "w") as f:
            f.write(SITECUSTOMIZE)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (site, env.get("PYTHONPATH")) if p)
        env.update(self.extra_env)
        cmd = [
            sys.executable,
            "-c",
            LAUNCHER,
            "start",
            "--head",
            "--block",
            f"--num-cpus={self.head_cpus:g}",
            f"--port={port}",
            f"--temp-dir={os.path.join(self.temp_dir, 'ray')}",
            "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
        ]
        if self.autoscaling:
            cmd.append(f"--autoscaling-config={config_path}")
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        started, ok = threading.Event(), []

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line.rstrip())
                if "Ray runtime started" in line:
                    ok.append(True)
                    started.set()
            started.set()  # exited: start() reports it

        threading.Thread(target=read, name="autoscaling-cluster-log", daemon=True).start()
        if not started.wait(timeout) or not ok:
            tail = "\n".join(self.output[-30:])
            self.stop()
            raise RuntimeError(f"the autoscaling test cluster did not start:\n{tail}")
        found = re.findall(r"--address='([^']+)'", "\n".join(self.output))
        self.address = found[0] if found else f"{ip}:{port}"
        return self.address

    def client_env(self, **extra: str) -> dict[str, str]:
        """Environment for a driver process connecting to this cluster (by ``RAY_ADDRESS``)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_CLIENT_VARS)}
        env["RAY_ADDRESS"] = self.address or ""
        env.update(extra)
        return env

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the head, its autoscaler and every node it launched (its process group)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            pgid = os.getpgid(proc.pid)
            os.killpg(pgid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            deadline = time.monotonic() + timeout
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _group_alive(pgid):
                os.killpg(pgid, signal.SIGKILL)
        if not os.environ.get("NBS_KEEP_CLUSTER_LOGS"):  # set it to read Ray's logs after
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> AutoscalingCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
