"""Sorted runs of stored events: what makes a cut range cost the same at 10k and 1M events.

Theory of operation
-------------------
A sealed chunk (``events.Chunk``) is turned into a *run* the first time a read needs it: its
rows sorted by (account, instance, timestamp, offset), so one account's events of one instance
are a contiguous slice sorted by time, found with a few binary searches. Adjacent runs of
similar size are merged (a binary counter: a run never has a neighbour of the same size class
for long), up to ``RUNS_PER_CHUNK`` chunks' worth, so a partition's history is a logarithmic
number of runs. Each run keeps, over its sorted ``value`` column, the running sums and maxima
of blocks of ``BLOCK`` rows: the count of a time range is a difference of positions, the
latest event is the last row of the range, the sum and the maximum are whole blocks plus at
most two partial blocks at the edges. A range read is therefore O(runs * log n + BLOCK),
not O(its events).

All of this is an index over the stored events, rebuilt on demand and never written to a
snapshot (a snapshot writes chunks in log order).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]
BLOCK = 64
RUNS_PER_CHUNK = 32  # a run holds at most this many chunks' events (2M at the default)
_LOW32 = np.int64(0xFFFFFFFF)
_S32 = np.int64(32)


class Blocks:
    """Running sums (two exact limbs) and maxima of a run's ``value`` column per block."""

    __slots__ = ("high", "low", "maxima")

    def __init__(self, values: Array) -> None:
        n = len(values)
        whole = n - n % BLOCK
        shaped = values[:whole].reshape(-1, BLOCK)
        self.maxima = shaped.max(axis=1) if whole else np.zeros(0, np.int64)
        # Cumulative sums *before* each block boundary (length blocks + 1), in limbs that
        # cannot overflow: a limb grows by < 2**32 per row and a run is < 2**31 rows.
        low = (shaped & _LOW32).sum(axis=1) if whole else np.zeros(0, np.int64)
        high = (shaped >> _S32).sum(axis=1) if whole else np.zeros(0, np.int64)
        self.low = np.concatenate(([0], np.cumsum(low)))
        self.high = np.concatenate(([0], np.cumsum(high)))

    def sum(self, values: Array, i: int, j: int) -> int:
        """The exact sum of ``values[i:j]``."""
        first_block = -(-i // BLOCK)
        last_block = j // BLOCK
        if first_block >= last_block:
            return _exact(values[i:j])
        whole = ((int(self.high[last_block]) - int(self.high[first_block])) << 32) + (
            int(self.low[last_block]) - int(self.low[first_block])
        )
        return (
            whole + _exact(values[i : first_block * BLOCK]) + _exact(values[last_block * BLOCK : j])
        )

    def max(self, values: Array, i: int, j: int) -> int:
        """The largest of ``values[i:j]`` (``i < j``)."""
        first_block = -(-i // BLOCK)
        last_block = j // BLOCK
        if first_block >= last_block:
            return int(values[i:j].max())
        best = int(self.maxima[first_block:last_block].max())
        if i < first_block * BLOCK:
            best = max(best, int(values[i : first_block * BLOCK].max()))
        if last_block * BLOCK < j:
            best = max(best, int(values[last_block * BLOCK : j].max()))
        return best


def _exact(values: Array) -> int:
    if not len(values):
        return 0
    return (int((values >> _S32).sum()) << 32) + int((values & _LOW32).sum())
