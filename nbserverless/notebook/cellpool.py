"""The pools that run ``%%serverless`` cells: one per option set and cell identity (or per
``--name``), each a core pool running ``capture.run_cell``, so re-running a cell reuses its
warm replicas. Made at a cell's first run, closed by ``%unload_ext``.

Example: ``cell_pool(Options.resolve(cpus=0.5), "src:ab12", "cell[3]").run(job, "cell[3]")``.
"""

from __future__ import annotations

import itertools
import threading
from typing import TYPE_CHECKING, Any

from ..metering.meter import METER
from ..options import Options
from ..shipping import dumps_code
from . import capture

if TYPE_CHECKING:
    from ..core.pool import Pool

_EXECUTOR = dumps_code(capture.run_cell, "run_cell")  # importable: ships by reference


class CellPool:
    """The pool of one cell (or one ``--name``) with one option set, running ``run_cell``.

    The call path (and with it Ray) is imported at the first cell, not by ``%load_ext``."""

    _ids = itertools.count(1)

    def __init__(self, options: Options, name: str) -> None:
        from ..handles.invoker import Invoker

        self.options = options
        self.name = name
        self.key = f"%%serverless#{next(self._ids)}"
        self._pool: Pool | None = None
        self._lock = threading.Lock()
        self._invoker = Invoker(self, None, False)

    def _get_pool(self) -> Pool:
        from ..core.pool import Pool

        with self._lock:
            if self._pool is None or self._pool.closed:
                pool = Pool(self.name, "cell", _EXECUTOR, {}, None, self.options, key=self.key)
                pool.prepare()
                self._pool = pool
            return self._pool

    def run(self, job: dict[str, Any], name: str) -> dict[str, Any]:
        """Run ``job`` on a replica, metered under ``name``; blocks (Ctrl-C cancels)."""
        METER.function(self.key, name=name, kind="cell")
        return self._invoker.call((job,), {})

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()


_POOLS: dict[tuple, CellPool] = {}
_POOLS_LOCK = threading.Lock()


def cell_pool(options: Options, identity: str | None, name: str) -> CellPool:
    """The pool for this option set and cell identity (``None`` with ``--name``), made once.

    Example: ``cell_pool(Options.resolve(cpus=0.5), "src:ab12", "cell[3]").run(job, "cell[3]")``.
    """
    key = (options.key(), identity)
    with _POOLS_LOCK:
        found = _POOLS.get(key)
        if found is None:
            found = _POOLS[key] = CellPool(options, name)
        return found


def close_cell_pools() -> None:
    """Remove the replicas of every ``%%serverless`` pool (``%unload_ext``).

    Example: ``close_cell_pools()``; the next ``%%serverless`` cell starts cold."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for p in pools:
        p.close()
