"""Nothing leaves the kernel unasked (SECURITY.md): environment variables reach replicas only
through ``env=``, a function read from a notebook ships its own lines and not its cell's, the
output socket listens on the loopback of the embedded cluster and reads nothing before the token.

On main before the handles and core reworks land, the first two fail: the cell's whole source
reaches the replica's linecache (H2's fix), and the kernel's variable reached a function through
a warm process (H1's fix; seen in one run of two, it races with the warm imports).
"""

from __future__ import annotations

import os
import socket
import struct

import pytest

import nbserverless as nbs

SECRET = "sk-nbs-test-0123456789abcdef"


def closed_by_peer(sock) -> bool:
    """Whether the other end closed the connection (a FIN, or a reset if data was unread)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.fixture
def secret_env():
    os.environ["NBS_TEST_SECRET"] = SECRET  # set after connecting, as a notebook would
    yield
    os.environ.pop("NBS_TEST_SECRET", None)


def test_a_kernel_secret_reaches_no_replica_unless_passed_with_env(ray_cluster, secret_env):
    """With the default config (warm processes importing what the kernel imported), a variable
    set in the kernel's ``os.environ`` is not seen by any function; ``env=`` passes it."""

    @nbs.remote(cpus=0.1)
    def peek(_=None):
        import os

        return os.environ.get("NBS_TEST_SECRET")

    @nbs.remote(cpus=0.1, env={"NBS_TEST_SECRET": "given"})
    def given():
        import os

        return os.environ.get("NBS_TEST_SECRET")

    assert [peek() for _ in range(3)] == [None, None, None]
    assert list(peek.map(range(20), progress=False)) == [None] * 20
    assert given() == "given"
    assert peek() is None  # a warm process that served env= does not keep it for others


def test_a_notebook_function_ships_its_own_lines_not_its_cells(ray_cluster, shell):
    """A literal elsewhere in the defining cell (never read by the function) does not reach the
    replica, not even its ``linecache`` (used for remote tracebacks)."""
    cell = (
        f'API_KEY = "{SECRET}"\n'
        "def lines_seen():\n"
        "    import linecache\n"
        "    return ''.join(''.join(linecache.getlines(f)) for f in list(linecache.cache))\n"
    )
    result = shell.run_cell(cell, store_history=True)
    assert result.success, result.error_in_exec
    seen = nbs.remote(cpus=0.1)(shell.user_ns["lines_seen"])()
    assert "def lines_seen" in seen or seen == ""  # its own lines may be there for tracebacks
    assert SECRET not in seen


def test_output_socket_is_loopback_and_token_first(ray_cluster):
    """The kernel's output socket (embedded cluster) listens on 127.0.0.1 only, and a peer
    that does not send the token first is disconnected without an answer."""
    from nbserverless.core.output import ROUTER

    @nbs.remote(cpus=0.1)
    def one():
        return 1

    assert one() == 1
    host, port, _ = ROUTER.address
    assert host == "127.0.0.1"
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(struct.pack("!I", 4) + b"GET / HTTP/1.0\r\n\r\n")
        assert closed_by_peer(s)
