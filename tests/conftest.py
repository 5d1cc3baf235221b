"""Shared fixtures: one real embedded Ray cluster for the whole test session."""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import pytest

import nbserverless as nbs
from nbserverless.core import cluster, pool

TEST_CPUS = 4


@pytest.fixture(scope="session")
def cluster_address():
    """Start the session's embedded cluster in its own temp dir; yield its GCS address so
    kernels and subprocesses can attach to it (``NBSERVERLESS_ADDRESS``)."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="nbs-test-", dir="/tmp")
    cluster.connect(temp_dir=temp_dir, num_cpus=TEST_CPUS)
    address = ray.get_runtime_context().gcs_address
    yield address
    nbs.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def ray_cluster(cluster_address):
    """The session cluster; every pool a test made is closed after it (replicas freed)."""
    nbs.config.reset()
    yield cluster_address
    pool.close_all()
    nbs.config.reset()


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until true or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def shell():
    """The session's one IPython shell (IPython allows one per process, whichever test file
    makes it first): magics, widgets and cells run in it."""
    from IPython.testing.globalipapp import get_ipython

    return get_ipython()


@pytest.fixture
def subprocess_env(cluster_address):
    """Environment for child processes that attach to the session cluster."""
    env = dict(os.environ)
    env["NBSERVERLESS_ADDRESS"] = cluster_address
    return env
