"""``map(..., bucket_by=key)``: a window of upcoming items cut into batches of similar key,
and the window's results put back in input order as its batches finish, in any order.

Example::

    buckets([5, 1, 4, 2], 2)          # [[0, 2], [3, 1]]: positions, largest keys first
    w = Window(start=100, n=4)
    w.put([3, 1], ["d", "b"], None)   # None: position 0 is not back yet
    w.put([0, 2], ["a", "c"], None)   # (100, ["a", "b", "c", "d"], None)
"""

from __future__ import annotations

from typing import Any


def buckets(keys: list[Any], size: int) -> list[list[int]]:
    """Positions sorted by key, largest first (the slowest batches start first; equal keys
    keep input order), cut into batches of ``size``."""
    order = sorted(range(len(keys)), key=keys.__getitem__, reverse=True)
    return [order[i : i + size] for i in range(0, len(order), size)]


class Window:
    """One ``bucket_by`` window: its batches finish in any order; the results go back to
    input order here and leave as soon as a prefix of the window is complete."""

    __slots__ = ("start", "values", "filled", "errors", "emitted")

    def __init__(self, start: int, n: int):
        self.start = start
        self.values: list[Any] = [None] * n
        self.filled = [False] * n
        self.errors: dict[int, Any] = {}
        self.emitted = 0

    def put(self, positions: list[int], values: list[Any], errors: dict | None) -> tuple | None:
        """Store one batch's outcomes; the newly complete prefix as (start, values, errors)."""
        for k, p in enumerate(positions):
            self.values[p] = values[k]
            self.filled[p] = True
        if errors:
            for k, err in errors.items():
                self.errors[positions[k]] = err
        old = end = self.emitted
        n = len(self.filled)
        while end < n and self.filled[end]:
            end += 1
        if end == old:
            return None
        self.emitted = end
        seg = self.values[old:end]
        self.values[old:end] = [None] * (end - old)  # the consumer holds them now
        errs = {p - old: self.errors.pop(p) for p in sorted(self.errors) if p < end} or None
        return self.start + old, seg, errs
