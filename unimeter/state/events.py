"""Stored events as chunks of columns: what edge reads and ``list_events`` look at.

Theory of operation
-------------------
Applied batches are appended, column by column, to the *open* chunk (up to ``CHUNK_EVENTS``
events, in log order); a full chunk is *sealed* and never changes again except to be indexed:
the first read that needs a sealed chunk sorts its rows by (account, instance, timestamp,
position) once, so later reads find an account's events, then one instance's, then a time
range, by binary search. An event's offset is the chunk's first offset plus its position in
log order (kept as ``pos`` once sorted).

The open chunk keeps its rows in log order (appends stay cheap), and a range read
(``range_totals``) indexes it as it goes: the rows appended since the previous read become a
sorted run of their own (a copy of the four columns a range needs, sorted as a sealed chunk
is), merged with the earlier ones like sealed chunks are (a binary counter), so a read costs a
few binary searches per run plus a scan of at most ``OPEN_SCAN_MAX`` rows (a 64th of a chunk
when chunks are small, as in tests), whatever the open chunk holds. The index is a cache:
never written, dropped when the chunk is sealed.

Columns: ``mid`` (metric instance), ``account``, ``ts``, ``value``; and, allocated only when some
event needs them, ``op`` (operation type), ``cell`` (dimension cell id), ``props`` (interned
property map id) and the event id (``id_start``/``id_len`` into the chunk's ``id_data``).

Retention drops a chunk whole once every instance's newest event in it is invisible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from unimeter.state.runs import RUNS_PER_CHUNK, Blocks, _exact

Array = npt.NDArray[Any]
Totals = tuple[int, int, int, tuple[int, int, int]]
CHUNK_EVENTS = 65536
# The open chunk's newest rows a range read compares one by one rather than sorting into a run
# first: about what a read of one sorted run costs.
OPEN_SCAN_MAX = 1024
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
    __slots__ = (
        "_max_ts",
        "_open_runs",
        "blocks",
        "cols",
        "extent_newest",
        "extents",
        "first_offset",
        "id_data",
        "pos",
        "size",
    )

    def __init__(self, first_offset: int, capacity: int = CHUNK_EVENTS) -> None:
        # Allocated whole: ``np.zeros`` maps zero pages lazily, so an open chunk costs memory
        # only for the rows it holds, and appends never copy what came before.
        self.first_offset = first_offset
        self.size = 0
        self.cols: dict[str, Array] = {name: np.zeros(capacity, t) for name, t in REQUIRED.items()}
        self.id_data = bytearray()
        self._max_ts: dict[int, int] | None = None  # once sealed: mid -> newest timestamp
        self.pos: Array | None = None  # set once sorted: each row's position in log order
        self.blocks: Blocks | None = None  # set once sorted: block sums and maxima of values
        # A merged run: the chunks it was made of, as (first offset, size, start of their id
        # bytes in ``id_data``), so a snapshot writes the same chunks whatever was merged.
        self.extents: list[tuple[int, int, int]] | None = None
        self.extent_newest: list[dict[int, int]] | None = None  # max_ts() of each extent
        # While open: sorted runs over its rows [0, k) for range reads (see the module doc).
        self._open_runs: list[Chunk] = []

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
            self._grow(end)
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

    def append_one(self, mid: int, account: int, ts: int, value: int) -> None:
        """``append`` of one event without optional columns (a lone request's entry)."""
        assert self.pos is None
        at = self.size
        if at == self.capacity:
            self._grow(at + 1)
        cols = self.cols
        cols["mid"][at] = mid
        cols["account"][at] = account
        cols["ts"][at] = ts
        cols["value"][at] = value
        self.size = at + 1

    def _grow(self, end: int) -> None:
        at = self.size
        capacity = max(end, 2 * self.capacity)
        for name, col in self.cols.items():
            grown = np.zeros(capacity, col.dtype)
            grown[:at] = col[:at]
            self.cols[name] = grown

    def seal(self) -> None:
        """No more appends (the unused tail was never touched, so it holds no memory)."""
        self._max_ts = self._newest()
        self._open_runs = []  # a read sorts the sealed chunk whole

    def parts(self) -> list[tuple[int, int, int]]:
        """The chunks this one was made of (itself when it is not a merged run)."""
        return self.extents if self.extents is not None else [(self.first_offset, self.size, 0)]

    def end_offset(self) -> int:
        """One past the last offset held (a merged run may skip offsets between chunks)."""
        first, size, _ = self.parts()[-1]
        return first + size

    def parts_newest(self) -> list[dict[int, int]]:
        """``max_ts()`` of each chunk this one was made of, in ``parts()`` order."""
        return self.extent_newest if self.extent_newest is not None else [self.max_ts()]

    def split(self) -> list[Chunk]:
        """The sealed chunks this merged run was made of, in log order and unsorted, exactly
        as they were appended (itself when it is not a merged run). Retention drops whole
        chunks and a snapshot writes them, so neither depends on what reads merged."""
        if self.extents is None or self.extent_newest is None or self.pos is None:
            return [self]
        cols = self.log_columns()
        pieces = []
        at = 0
        for k, ((first, size, blob), newest) in enumerate(
            zip(self.extents, self.extent_newest, strict=True)
        ):
            end = self.extents[k + 1][2] if k + 1 < len(self.extents) else len(self.id_data)
            piece = Chunk(first, capacity=1)
            piece.cols = {name: col[at : at + size] for name, col in cols.items()}
            if "id_start" in piece.cols:
                piece.cols["id_start"] = piece.cols["id_start"] - np.uint32(blob)
            piece.id_data = bytearray(self.id_data[blob:end])
            piece.size = size
            piece._max_ts = newest
            pieces.append(piece)
            at += size
        return pieces

    def log_columns(self) -> dict[str, Array]:
        """Every column's rows in log order (a sorted chunk's order is only an index)."""
        n = self.size
        cols = {name: col[:n] for name, col in self.cols.items()}
        if self.pos is None:
            return cols
        order = np.argsort(self.pos, kind="stable")
        return {name: col[order] for name, col in cols.items()}

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
        self.blocks = Blocks(c["value"])

    def range_totals(self, account: int, mid: int, lo: int, hi: int) -> Totals | None:
        """(count, exact sum, max, latest (ts, offset, value)) of the account's events of
        ``mid`` with ``lo <= ts < hi``, or None when there are none, in this sorted chunk:
        binary searches and block sums."""
        assert self.pos is not None and self.blocks is not None
        c = self.cols
        a, b = self._span(account, mid)
        stamps = c["ts"][a:b]
        i = a + int(stamps.searchsorted(np.int64(lo), "left"))
        j = a + int(stamps.searchsorted(np.int64(hi), "left"))
        if i >= j:
            return None
        values = c["value"]
        last = j - 1  # sorted by (ts, offset): the range's latest event is its last row
        latest = (int(c["ts"][last]), int(self.pos[last]) + self.first_offset, int(values[last]))
        return j - i, self.blocks.sum(values, i, j), self.blocks.max(values, i, j), latest

    def open_range_totals(
        self, account: int, mid: int, lo: int, hi: int, scan_max: int
    ) -> Totals | None:
        """``range_totals`` of this open chunk: on the runs of its read index, and by array
        compares on the rows appended since (at most ``scan_max``)."""
        first = self._index_open(scan_max)
        found = [run.range_totals(account, mid, lo, hi) for run in self._open_runs]
        if first < self.size:
            found.append(self._scan_totals(account, mid, lo, hi, first))
        return combined(found)

    def _index_open(self, scan_max: int) -> int:
        """Bring the open chunk's read index up to date; the first row it leaves to a scan.
        Rows appended since the last read become a sorted run when there are more than
        ``scan_max``; runs then merge while the last two are of one size class."""
        assert self.pos is None
        runs = self._open_runs
        covered = runs[-1].end_offset() - self.first_offset if runs else 0
        if self.size - covered <= scan_max:
            return covered
        run = Chunk(self.first_offset + covered, capacity=1)
        run.cols = {name: self.cols[name][covered : self.size] for name in REQUIRED}
        run.size = self.size - covered
        run._max_ts = {}  # an index, never asked what it holds for retention
        run.sort()  # sorted copies: later appends to the chunk never reach the run
        runs.append(run)
        while len(runs) > 1 and runs[-2].size <= 2 * runs[-1].size:
            right = runs.pop()
            runs[-1] = merge(runs[-1], right)
        return self.size

    def _scan_totals(self, account: int, mid: int, lo: int, hi: int, first: int) -> Totals | None:
        """``range_totals`` over the open chunk's rows from ``first`` on, by array compares."""
        c = self.cols
        n = self.size
        hit = c["account"][first:n] == np.uint64(account)
        hit &= c["mid"][first:n] == mid
        rows = first + np.flatnonzero(hit)
        if not len(rows):
            return None
        ts = c["ts"][rows]
        rows = rows[(ts >= lo) & (ts < hi)]
        if not len(rows):
            return None
        values = c["value"][rows]
        ts = c["ts"][rows]
        # Rows are in log order here, so the latest is the last row holding the newest
        # timestamp: argmax of the reversed stamps finds it without a sort.
        best = len(ts) - 1 - int(np.argmax(ts[::-1]))
        row = int(rows[best])
        latest = (int(ts[best]), row + self.first_offset, int(values[best]))
        return len(rows), _exact(values), int(values.max()), latest

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
        a, b = self._span(account, mid)
        return np.arange(a, b)

    def _span(self, account: int, mid: int | None) -> tuple[int, int]:
        """The rows [a, b) of ``account`` (and ``mid``) in a sorted chunk. Keys are cast to
        the column's type first: a Python int against an int32 or uint64 column would make
        numpy convert the whole column for every search."""
        c = self.cols
        accounts = c["account"]
        key = np.uint64(account)
        a = int(accounts.searchsorted(key, "left"))
        b = int(accounts.searchsorted(key, "right"))
        if mid is not None and b > a:
            mids = c["mid"][a:b]
            key_mid = mids.dtype.type(mid)
            a, b = (
                a + int(mids.searchsorted(key_mid, "left")),
                a + int(mids.searchsorted(key_mid, "right")),
            )
        return a, b

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

    __slots__ = ("base", "chunk_events", "chunks", "next_offset")

    def __init__(self, base: int, chunk_events: int = CHUNK_EVENTS) -> None:
        assert chunk_events >= 1
        self.base = base
        self.chunk_events = chunk_events  # events per sealed chunk (tests use small ones)
        self.next_offset = base
        self.chunks: list[Chunk] = []

    def append(self, columns: dict[str, Array | None], id_data: bytes | None) -> None:
        """Append one entry's events (``Chunk.append``); an entry never spans two chunks."""
        mids = columns["mid"]
        assert mids is not None
        n = len(mids)
        self._open_chunk(n).append(columns, id_data)
        self.next_offset += n

    def append_one(self, mid: int, account: int, ts: int, value: int) -> None:
        """``append`` of one event without optional columns (``Chunk.append_one``)."""
        self._open_chunk(1).append_one(mid, account, ts, value)
        self.next_offset += 1

    def _open_chunk(self, n: int) -> Chunk:
        """The chunk the next ``n`` events go to: a new one when the open one has no room."""
        chunk = self.chunks[-1] if self.chunks else None
        if chunk is None or (chunk.size and chunk.size + n > self.chunk_events):
            if chunk is not None:
                chunk.seal()
            chunk = Chunk(self.next_offset, max(self.chunk_events, n))
            self.chunks.append(chunk)
        return chunk

    def range_totals(self, account: int, mid: int, lo: int, hi: int) -> Totals | None:
        """``Chunk.range_totals`` over every chunk: the account's events of ``mid`` with
        ``lo <= ts < hi`` (None: there are none)."""
        scan_max = min(OPEN_SCAN_MAX, self.chunk_events // 64)
        found = []
        for chunk in self.readable():
            if chunk.sorted:
                found.append(chunk.range_totals(account, mid, lo, hi))
            else:
                found.append(chunk.open_range_totals(account, mid, lo, hi, scan_max))
        return combined(found)

    def readable(self) -> Iterator[Chunk]:
        """Every chunk: sealed ones as sorted runs (made on first use, adjacent runs of
        similar size merged), then the open one."""
        sealed = self.chunks[:-1]
        if any(chunk.pos is None for chunk in sealed):
            runs: list[Chunk] = []
            for chunk in sealed:
                chunk.sort()
                runs.append(chunk)
                # A binary counter: merge while the last two runs are of one size class.
                while (
                    len(runs) > 1
                    and runs[-2].size <= 2 * runs[-1].size
                    and runs[-2].size + runs[-1].size <= RUNS_PER_CHUNK * self.chunk_events
                ):
                    right = runs.pop()
                    runs[-1] = merge(runs[-1], right)
            self.chunks = [*runs, self.chunks[-1]]
        yield from self.chunks

    def drop_while(self, droppable: Callable[[dict[int, int]], bool]) -> None:
        """Drop the sealed chunks for which ``droppable(chunk.max_ts())`` holds (never the
        open one). A merged run is judged chunk by chunk, as if it had never been merged: a
        run partly droppable is split back into its chunks (they are sorted and merged again
        when a read needs them), so what stays never depends on what was read."""
        if len(self.chunks) <= 1:
            return
        kept: list[Chunk] = []
        for chunk in self.chunks[:-1]:
            verdicts = [droppable(newest) for newest in chunk.parts_newest()]
            if not any(verdicts):
                kept.append(chunk)
            elif not all(verdicts):
                pieces = chunk.split()
                kept.extend(p for p, drop in zip(pieces, verdicts, strict=True) if not drop)
        self.chunks = [*kept, self.chunks[-1]]


def combined(found: list[Totals | None]) -> Totals | None:
    """The totals of disjoint sets of events, each given by its totals (None: no event)."""
    parts = [t for t in found if t is not None]
    if len(parts) <= 1:
        return parts[0] if parts else None
    return (
        sum(t[0] for t in parts),
        sum(t[1] for t in parts),
        max(t[2] for t in parts),
        max(t[3] for t in parts),  # (ts, offset, value): offsets differ, so no tie
    )


def merge(left: Chunk, right: Chunk) -> Chunk:
    """One sorted run of two adjacent sorted runs (``right`` follows ``left`` in the log)."""
    assert left.pos is not None and right.pos is not None
    assert left.first_offset + left.size <= right.first_offset
    run = Chunk(left.first_offset, capacity=1)
    names = sorted(set(left.cols) | set(right.cols))
    for name in names:
        parts = []
        for chunk in (left, right):
            col = chunk.cols.get(name)
            if col is None:
                dtype = REQUIRED.get(name, OPTIONAL.get(name))
                col = np.zeros(chunk.size, dtype)
            else:
                col = col[: chunk.size]
            if name == "id_start" and chunk is right:
                col = col + len(left.id_data)
            parts.append(col)
        run.cols[name] = np.concatenate(parts)
    run.id_data = left.id_data + right.id_data
    pos = np.concatenate([left.pos, right.pos + (right.first_offset - left.first_offset)])
    c = run.cols
    order = np.lexsort((pos, c["ts"], c["mid"], c["account"]))
    for name in names:
        c[name] = c[name][order]
    run.pos = pos[order]
    run.size = len(pos)
    run.blocks = Blocks(c["value"])
    run.extents = [
        *left.parts(),
        *((first, size, blob + len(left.id_data)) for first, size, blob in right.parts()),
    ]
    run.extent_newest = [*left.parts_newest(), *right.parts_newest()]
    newest = dict(left.max_ts())
    for mid, ts in right.max_ts().items():
        newest[mid] = max(ts, newest.get(mid, ts))
    run._max_ts = newest
    return run
