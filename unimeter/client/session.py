"""What one client instance remembers between calls: its producer identity and sequence numbers,
the log index it was acknowledged per partition, and the newest catalog version it has seen.

Theory of operation (docs/protocol.md §8):
- Exactly once. The client draws a random nonzero 64-bit producer id once. Every ``Ingest`` to a
  partition takes the next sequence number of that partition's ``SeqWindow`` (1, 2, 3, ...) and
  keeps it for every retry of that message, so a retry that reaches the partition after the
  original was applied is recognised and answered with the original result.
- The server can only recognise a retry while it still remembers the original's result, and it
  remembers a bounded number of them per producer and partition. ``SeqWindow`` therefore never
  hands out a sequence number ``window_size`` or more above the lowest one still outstanding:
  whatever is retried is always within the last ``window_size`` numbers the partition has seen.
  Sequence numbers may arrive out of order (parallel sends, re-routing) and with gaps (a message
  whose deadline passed is never sent again).
- Read your writes. Each acknowledged ``Ingest`` reports the partition log index that holds it;
  every later read of that partition carries the highest such index as ``min_index``.
- Catalog. Every catalog reply carries the catalog version; ``Ingest`` carries the highest seen
  so the partition leader first learns of a metric this client just created.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque

from unimeter import limits

_SEQ_MAX = 2**64 - 1


def new_producer_id() -> int:
    while True:
        producer_id = secrets.randbits(64)
        if producer_id != 0:
            return producer_id


class SeqWindow:
    """Sequence numbers of one (producer, partition): assigned once, never reused."""

    __slots__ = ("_low", "_next", "_outstanding", "_size", "_waiters")

    def __init__(self, size: int = limits.producer_results_cached_max) -> None:
        assert size >= 1
        self._size = size
        self._next = 1
        self._outstanding: set[int] = set()
        self._low = 1  # min(_outstanding), or _next when none is: kept, not recomputed
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def low(self) -> int:
        """The lowest sequence number still outstanding (the next one when none is)."""
        return self._low

    @property
    def outstanding(self) -> frozenset[int]:
        return frozenset(self._outstanding)

    def try_acquire(self) -> int | None:
        """The next sequence number, or None while the window is full."""
        if self._next >= self._low + self._size:
            return None
        assert self._next <= _SEQ_MAX, "sequence numbers exhausted"
        seq = self._next
        self._next += 1
        if not self._outstanding:
            self._low = seq
        self._outstanding.add(seq)
        return seq

    async def acquire(self) -> int:
        """The next sequence number, waiting while the window is full."""
        while (seq := self.try_acquire()) is None:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done():
                    self._waiters.remove(waiter)
        return seq

    def release(self, seq: int) -> None:
        """``seq`` is settled: acknowledged, refused, or given up and never to be sent again."""
        assert seq in self._outstanding, f"sequence {seq} released twice or never acquired"
        self._outstanding.remove(seq)
        if seq == self._low:
            self._low = min(self._outstanding) if self._outstanding else self._next
            # Only the lowest moving up opens the window; every waiter re-checks.
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)


class Session:
    """Producer identity, sequence windows, acknowledged log indices and catalog version."""

    __slots__ = ("_acked_index", "_window_size", "_windows", "catalog_version", "producer_id")

    def __init__(
        self,
        producer_id: int | None = None,
        *,
        window_size: int = limits.producer_results_cached_max,
    ) -> None:
        self.producer_id = new_producer_id() if producer_id is None else producer_id
        assert 0 < self.producer_id < 2**64
        self._window_size = window_size
        self._windows: dict[int, SeqWindow] = {}
        self._acked_index: dict[int, int] = {}
        self.catalog_version = 0

    def window(self, partition: int) -> SeqWindow:
        window = self._windows.get(partition)
        if window is None:
            window = self._windows[partition] = SeqWindow(self._window_size)
        return window

    def note_ack(self, partition: int, log_index: int) -> None:
        if log_index > self._acked_index.get(partition, 0):
            self._acked_index[partition] = log_index

    def min_index(self, partition: int) -> int:
        return self._acked_index.get(partition, 0)

    def note_catalog(self, catalog_version: int) -> None:
        if catalog_version > self.catalog_version:
            self.catalog_version = catalog_version
