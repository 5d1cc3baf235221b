"""A warm replica: a generic replica process waiting on the cluster until a pool claims it.

It is a :class:`Replica` like any other (created with ``num_cpus=0, max_concurrency=1``), which
may import module *names* while it waits. At the claim it receives its replica id, the output
address, the pool's ``env=`` (applied to ``os.environ``) and the code, and from then on it is
one of that pool's replicas. Nothing else of the kernel reaches it.

Example: ``ray.remote(WarmReplica).options(num_cpus=0, max_concurrency=1).remote("warm-1")``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from .replica import Replica
from .streams import _OutputLink
from .threads import idle_priority


class WarmReplica(Replica):
    """Generic until :meth:`claim`; a replica of one pool after it."""

    def __init__(self, hid: str) -> None:
        super().__init__(hid, None)
        self.claimed = False

    def warm(self, modules: list[str]) -> list[str]:
        """Import these module names (the kernel imported them) on otherwise idle CPU;
        returns those imported. No environment variable is set for them."""
        done = []
        with idle_priority():
            for name in modules:
                if self.claimed:
                    break
                if name in sys.modules:
                    continue
                try:
                    __import__(name)
                    done.append(name)
                except BaseException:  # not installed here, or fails outside the kernel
                    pass
        return done

    def claim(
        self,
        rid: str,
        out_address: tuple[str, int, str] | None,
        env: dict[str, str] | None,
        spec: dict[str, Any],
        cpus: float,
    ) -> dict[str, Any]:
        """Become replica ``rid`` of one pool: its ``env=``, its thread count, its code (a
        class's ``__init__`` runs here, once)."""
        self.claimed = True
        self.rid = rid
        self._link = _OutputLink(out_address)
        if env:
            os.environ.update(env)
        return self.load(spec)
