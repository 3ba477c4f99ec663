"""Stored events as chunks of columns: what edge reads and ``list_events`` look at.

Theory of operation
-------------------
Applied batches are appended, column by column, to the *open* chunk (up to ``CHUNK_EVENTS``
events, in log order); a full chunk is *sealed* and never changes again except to be indexed:
the first read that needs a sealed chunk sorts its rows by (account, instance, timestamp,
position) once, so later reads find an account's events, then one instance's, then a time
range, by binary search. The open chunk is scanned with array compares. An event's offset is
the chunk's first offset plus its position in log order (kept as ``pos`` once sorted).

Columns: ``mid`` (metric instance), ``account``, ``ts``, ``value``; and, allocated only when some
event needs them, ``op`` (operation type), ``cell`` (dimension cell id), ``props`` (interned
property map id) and the event id (``id_start``/``id_len`` into the chunk's ``id_data``).

Retention drops a chunk whole once every instance's newest event in it is invisible.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]
CHUNK_EVENTS = 65536
_INT64_MIN = -(2**63)

# Column name -> dtype; the optional ones exist only once a batch brings a non-default value.
REQUIRED: dict[str, np.dtype[Any]] = {
    "mid": np.dtype("<i4"),
    "account": np.dtype("<u8"),
    "ts": np.dtype("<i8"),
    "value": np.dtype("<i8"),
}
OPTIONAL: dict[str, np.dtype[Any]] = {
    "op": np.dtype("u1"),
    "cell": np.dtype("<i4"),
    "props": np.dtype("<i4"),
    "id_start": np.dtype("<u4"),
    "id_len": np.dtype("u1"),
}


class Chunk:
    __slots__ = ("_max_ts", "cols", "first_offset", "id_data", "pos", "size")

    def __init__(self, first_offset: int, capacity: int = CHUNK_EVENTS) -> None:
        # Allocated whole: ``np.zeros`` maps zero pages lazily, so an open chunk costs memory
        # only for the rows it holds, and appends never copy what came before.
        self.first_offset = first_offset
        self.size = 0
        self.cols: dict[str, Array] = {name: np.zeros(capacity, t) for name, t in REQUIRED.items()}
        self.id_data = bytearray()
        self._max_ts: dict[int, int] | None = None  # once sealed: mid -> newest timestamp
        self.pos: Array | None = None  # set once sorted: each row's position in log order

    @property
    def capacity(self) -> int:
        return len(self.cols["mid"])

    @property
    def sorted(self) -> bool:
        return self.pos is not None

    def column(self, name: str) -> Array | None:
        col = self.cols.get(name)
        return None if col is None else col[: self.size]

    def append(self, columns: dict[str, Array | None], id_data: bytes | None) -> None:
        """Append parallel columns (optional ones may be None; ``id_start`` entries point into
        ``id_data``) to this open chunk, growing it as needed."""
        assert self.pos is None
        mids = columns["mid"]
        assert mids is not None
        at = self.size
        end = at + len(mids)
        if end > self.capacity:
            capacity = max(end, 2 * self.capacity)
            for name, col in self.cols.items():
                grown = np.zeros(capacity, col.dtype)
                grown[:at] = col[:at]
                self.cols[name] = grown
        for name, values in columns.items():
            if values is None:
                continue
            found = self.cols.get(name)
            if found is None:
                found = self.cols[name] = np.zeros(self.capacity, OPTIONAL[name])
            col = found
            if name == "id_start":
                col[at:end] = values + len(self.id_data)
            else:
                col[at:end] = values
        if id_data is not None:
            self.id_data += id_data
        self.size = end

    def seal(self) -> None:
        """No more appends (the unused tail was never touched, so it holds no memory)."""
        self._max_ts = self._newest()

    def max_ts(self) -> dict[int, int]:
        """Per metric instance, the newest timestamp of its events here (retention's view)."""
        return self._max_ts if self._max_ts is not None else self._newest()

    def _newest(self) -> dict[int, int]:
        n = self.size
        if not n:
            return {}
        mids = self.cols["mid"][:n]
        newest = np.full(int(mids.max()) + 1, _INT64_MIN, np.int64)
        np.maximum.at(newest, mids, self.cols["ts"][:n])
        present = np.flatnonzero(np.bincount(mids))
        return dict(zip(present.tolist(), newest[present].tolist(), strict=True))

    def sort(self) -> None:
        """Order the rows by (account, mid, ts, position) for binary searches (sealed only)."""
        if self.pos is not None:
            return
        n = self.size
        position = np.arange(n, dtype=np.int64)
        c = self.cols
        order = np.lexsort((position, c["ts"][:n], c["mid"][:n], c["account"][:n]))
        for name, col in c.items():
            c[name] = col[:n][order]
        self.pos = order.astype(np.int64)

    # ------------------------------------------------------------------ lookups

    def rows_of(self, account: int, mid: int | None = None) -> Array:
        """Row numbers (sorted chunk: by mid then time; open chunk: log order) of ``account``
        (and ``mid``)."""
        c = self.cols
        n = self.size
        if self.pos is None:
            hit = c["account"][:n] == np.uint64(account)
            if mid is not None:
                hit &= c["mid"][:n] == mid
            return np.flatnonzero(hit)
        accounts = c["account"]
        a = int(np.searchsorted(accounts, np.uint64(account), "left"))
        b = int(np.searchsorted(accounts, np.uint64(account), "right"))
        if mid is not None and b > a:
            mids = c["mid"][a:b]
            a, b = (
                a + int(np.searchsorted(mids, mid, "left")),
                a + int(np.searchsorted(mids, mid, "right")),
            )
        return np.arange(a, b)

    def offsets(self, rows: Array) -> Array:
        positions = rows if self.pos is None else self.pos[rows]
        return positions + self.first_offset

    def event_id(self, row: int) -> str | None:
        lengths = self.cols.get("id_len")
        if lengths is None or not lengths[row]:
            return None
        start = int(self.cols["id_start"][row])
        return bytes(self.id_data[start : start + int(lengths[row])]).decode()


class EventStore:
    """Every stored event of the partition, in chunks, with offsets counted from ``base``."""

    __slots__ = ("base", "chunks", "next_offset")

    def __init__(self, base: int) -> None:
        self.base = base
        self.next_offset = base
        self.chunks: list[Chunk] = []

    def append(self, columns: dict[str, Array | None], id_data: bytes | None) -> None:
        """Append one entry's events (``Chunk.append``); an entry never spans two chunks."""
        mids = columns["mid"]
        assert mids is not None
        n = len(mids)
        chunk = self.chunks[-1] if self.chunks else None
        if chunk is None or (chunk.size and chunk.size + n > CHUNK_EVENTS):
            if chunk is not None:
                chunk.seal()
            chunk = Chunk(self.next_offset, max(CHUNK_EVENTS, n))
            self.chunks.append(chunk)
        chunk.append(columns, id_data)
        self.next_offset += n

    def readable(self) -> Iterator[Chunk]:
        """Every chunk, sorting sealed ones on first use (all but the open one)."""
        last = len(self.chunks) - 1
        for i, chunk in enumerate(self.chunks):
            if i < last:
                chunk.sort()
            yield chunk

    def drop_while(self, droppable: Any) -> None:
        """Drop chunks for which ``droppable(chunk)`` holds (never the open one)."""
        if len(self.chunks) <= 1:
            return
        open_chunk = self.chunks[-1]
        self.chunks = [c for c in self.chunks[:-1] if not droppable(c)] + [open_chunk]
