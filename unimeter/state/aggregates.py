"""Folding a batch of stored events into the aggregate rows, a column at a time.

Theory of operation
-------------------
Rows (``rows.RowStore``) are found through two ``KeyIndex`` maps:

    total row  key = account slot << 32 | table id      (one per instance, period, account)
    cell row   key = total row << 16 | cell id          (per dimension cell of a total row)

where an account's *slot* is its number in the partition's account index and a *table* is one
(instance, period). A total row *has cells* once any of its events had a non-empty cell; from
then on every event of that row also updates the row of its cell (cell 0 included, seeded from
the total when the first cell row is made), so the cell rows always partition the row's events.

A batch is applied in this order: resolve every event's table (period), slot and rows, creating
what is missing; find the total rows whose total may reach a threshold (``next_level``) and note
their state; fold every event into its rows with grouped array operations; then replay only the
noted rows event by event to find the exact crossings. COUNT_UNIQUE rows keep Python roaring
sets, updated with one call per distinct row (event by event only for rows that REMOVE or may
cross a threshold).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pyroaring import BitMap64

from unimeter.model import AggType, OperationType
from unimeter.state.instances import Instance
from unimeter.state.keyindex import MISSING, KeyIndex
from unimeter.state.rows import INT64_MAX, INT64_MIN, RowStore

Array = npt.NDArray[Any]
U64 = np.dtype("<u8")
I64 = np.dtype("<i8")
# Slots and rows in the lookup tables below (sized by account ids or slots, so they cost more
# per account than anything else) are 32 bits: a partition numbers fewer than 2**31 accounts,
# and the row cache stops caching rows beyond that.
I32 = np.dtype("<i4")
I32_MAX = 2**31 - 1
REMOVE = int(OperationType.REMOVE)
_S16 = np.uint64(16)
_S32 = np.uint64(32)


_DENSE_MIN = 1 << 16  # ids below this always use the dense table
_DENSE_SPREAD = 64  # beyond it, only while the largest id < this many times the accounts


class UniqRow:
    """The sets of one COUNT_UNIQUE row: ``present`` = values whose last operation in the
    period was ADD/NONE; ``removed`` = values REMOVEd at any moment of the period (a later ADD
    does not take them out; docs/semantics.md §6 says why). Cell rows use ``present`` only."""

    __slots__ = ("present", "removed")

    def __init__(self, present: BitMap64 | None = None) -> None:
        self.present = BitMap64() if present is None else present
        self.removed: BitMap64 | None = None


class RowCache:
    """Total rows by (metric instance, account slot) for one table per instance -- the one
    ingest is filling -- so a batch finds its rows with one gather instead of a binary search.
    Only a cache over the ``totals`` index: an entry may be missing (-1), and ``clear`` drops
    everything (rows renumbered). Bounded: beyond ``_CACHE_BYTES_MAX`` it stops caching."""

    __slots__ = ("_col_of_mid", "_rows", "_table_of_col")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._col_of_mid = np.full(0, -1, I64)
        self._table_of_col = np.full(0, -1, I64)
        self._rows = np.full((0, 0), -1, I32)

    def get(
        self, mids: Array, tables: Array, slots: Array, current: dict[int, int] | None
    ) -> Array:
        """The cached row of each event (-1 where none). ``current`` maps every instance of
        the batch to its one table when the caller knows it (then a gather does it all)."""
        rows = self._rows
        width = rows.shape[1]
        if not rows.size or int(mids.max()) >= len(self._col_of_mid):
            return np.full(len(mids), -1, I64)
        if (
            current is not None
            and int(slots.max()) < width
            and all(
                mid < len(self._table_of_col) and int(self._table_of_col[mid]) == table
                for mid, table in current.items()
            )
        ):
            found: Array = rows.reshape(-1)[mids * width + slots].astype(I64)
            return found
        cols = self._col_of_mid[mids]
        hit = (cols >= 0) & (self._table_of_col[cols] == tables) & (slots < width)
        flat = np.where(hit, cols * width + slots, 0)
        return np.where(hit, rows.reshape(-1)[flat], -1).astype(I64, copy=False)

    def get1(self, mid: int, table: int, slot: int) -> int:
        """One row, as ``get`` (-1 when not cached)."""
        rows = self._rows
        if (
            mid < len(self._table_of_col)
            and slot < rows.shape[1]
            and int(self._table_of_col[mid]) == table
        ):
            return int(rows[mid, slot])
        return -1

    def put(
        self, mids: Array, tables: Array, slots: Array, rows: Array, current: dict[int, int] | None
    ) -> None:
        """Remember these rows (the last table seen for an instance replaces its column);
        ``current`` as in ``get``."""
        needed_cols = max(len(self._table_of_col), int(mids.max()) + 1)
        needed_slots = int(slots.max()) + 1
        if needed_cols * max(needed_slots, self._rows.shape[1]) * 4 > _CACHE_BYTES_MAX:
            return
        if int(rows.max()) > I32_MAX:  # never in practice; the index still finds them
            return
        self._grow(needed_cols, needed_slots)
        distinct = np.unique(mids).tolist()
        if current is not None:  # one table per instance: one scatter does it
            for mid in distinct:
                table = current[mid]
                if self._table_of_col[mid] != table:
                    self._table_of_col[mid] = table
                    self._rows[mid, :] = -1
            self._rows[mids, slots] = rows
            return
        for mid in distinct:
            mine = mids == mid
            table = int(tables[mine][-1])
            if self._table_of_col[mid] != table:
                self._table_of_col[mid] = table
                self._rows[mid, :] = -1
            same = mine & (tables == table)
            self._rows[mid, slots[same]] = rows[same]

    def _grow(self, cols: int, slots: int) -> None:
        have_cols, have_slots = self._rows.shape
        if cols <= have_cols and slots <= have_slots:
            return
        new_cols = max(cols, have_cols)
        new_slots = max(slots, 2 * have_slots, 1024)
        grown = np.full((new_cols, new_slots), -1, I32)
        grown[:have_cols, :have_slots] = self._rows
        self._rows = grown
        tables = np.full(new_cols, -1, I64)
        tables[:have_cols] = self._table_of_col
        self._table_of_col = tables
        self._col_of_mid = np.arange(new_cols, dtype=I64)  # one column per instance id


_CACHE_BYTES_MAX = 256 << 20


class CellCache:
    """Cell rows by (metric instance, cell) and account slot, for the table ingest is filling
    -- the ``RowCache`` of cell rows: one gather instead of a binary search per event. Each
    (instance, cell) pair gets a column; bounded like ``RowCache``."""

    __slots__ = ("_col_of_cell", "_rows", "_table_of_col")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._col_of_cell: dict[int, Array] = {}  # mid -> (cell id -> column, -1 none)
        self._table_of_col = np.full(0, -1, I64)
        self._rows = np.full((0, 0), -1, I64)

    def get(self, mid: int, tables: Array, slots: Array, cells: Array) -> Array:
        columns = self._col_of_cell.get(mid)
        rows = self._rows
        width = rows.shape[1]
        if columns is None or int(cells.max()) >= len(columns) or not rows.size:
            return np.full(len(cells), -1, I64)
        cols = columns[cells]
        hit = (cols >= 0) & (slots < width)
        hit &= self._table_of_col[np.where(hit, cols, 0)] == tables
        flat = np.where(hit, cols * width + slots, 0)
        return np.where(hit, rows.reshape(-1)[flat], -1)

    def put(self, mid: int, tables: Array, slots: Array, cells: Array, rows: Array) -> None:
        columns = self._col_of_cell.get(mid)
        top = int(cells.max()) + 1
        if columns is None or len(columns) < top:
            grown = np.full(max(top, 16), -1, I64)
            if columns is not None:
                grown[: len(columns)] = columns
            columns = self._col_of_cell[mid] = grown
        fresh = [c for c in np.unique(cells).tolist() if columns[c] < 0]
        n_cols = len(self._table_of_col) + len(fresh)
        width = max(self._rows.shape[1], int(slots.max()) + 1)
        if n_cols * width * 8 > _CACHE_BYTES_MAX:
            return
        for cell in fresh:
            columns[cell] = len(self._table_of_col)
            self._table_of_col = np.append(self._table_of_col, -1)
        self._grow(n_cols, width)
        cols = columns[cells]
        for col in np.unique(cols).tolist():
            mine = cols == col
            table = int(tables[mine][-1])
            if self._table_of_col[col] != table:
                self._table_of_col[col] = table
                self._rows[col, :] = -1
            same = mine & (tables == table)
            self._rows[col, slots[same]] = rows[same]

    def _grow(self, cols: int, slots: int) -> None:
        have_cols, have_slots = self._rows.shape
        if cols <= have_cols and slots <= have_slots:
            return
        new_slots = max(slots, 2 * have_slots, 1024) if slots > have_slots else have_slots
        grown = np.full((max(cols, have_cols), new_slots), -1, I64)
        grown[:have_cols, :have_slots] = self._rows
        self._rows = grown


class Tables:
    """The rows of a partition and the indexes that find them."""

    __slots__ = (
        "_slot_buf",
        "_slots_used",
        "accounts",
        "cache",
        "cell_cache",
        "cells",
        "dense_slots",
        "rows",
        "totals",
        "uniq",
    )

    def __init__(self) -> None:
        self.accounts = KeyIndex()  # account id -> slot
        # account id -> slot (-1: none) for ids below its length: one gather instead of a
        # binary search when ids are small numbers, as they usually are; grown while the ids
        # seen stay dense enough (``_DENSE_SPREAD``).
        self.dense_slots = np.zeros(0, I32)
        # slot -> account id: the first ``_slots_used`` entries of a buffer grown by doubling
        # (new accounts come a few at a time; a copy of all of them each time adds up).
        self._slot_buf = np.zeros(0, U64)
        self._slots_used = 0
        self.totals = KeyIndex()  # slot << 32 | table -> total row
        self.cache = RowCache()  # the rows of the tables ingest is filling, by slot
        self.cell_cache = CellCache()  # their cell rows, by (instance, cell) and slot
        self.cells = KeyIndex()  # total row << 16 | cell -> cell row
        self.rows = RowStore()
        self.uniq: dict[int, UniqRow] = {}  # COUNT_UNIQUE rows (totals and cells)

    # ------------------------------------------------------------------ lookups

    @property
    def slot_accounts(self) -> Array:
        """Each slot's account id, by slot."""
        return self._slot_buf[: self._slots_used]

    @slot_accounts.setter
    def slot_accounts(self, accounts: Array) -> None:
        self._slot_buf = accounts.astype(U64, copy=False)
        self._slots_used = len(accounts)

    def _append_accounts(self, fresh: Array) -> None:
        used = self._slots_used
        need = used + len(fresh)
        if need > len(self._slot_buf):
            grown = np.zeros(max(need, 2 * len(self._slot_buf), 1024), U64)
            grown[:used] = self._slot_buf[:used]
            self._slot_buf = grown
        self._slot_buf[used:need] = fresh
        self._slots_used = need

    def slots(self, accounts: Array) -> Array:
        """Each account's slot, numbering new accounts as they come."""
        dense = self._dense_for(int(accounts.max())) if len(accounts) else None
        # Every id is below the dense table's length then, so its int64 view is the id (and
        # indexes without a conversion of the column).
        found = (
            dense[accounts.view(I64)].astype(I64)
            if dense is not None
            else self.accounts.get(accounts)
        )
        missing = found == MISSING
        if missing.any():
            fresh, inverse = np.unique(accounts[missing], return_inverse=True)
            first = self._slots_used
            numbers = np.arange(first, first + len(fresh), dtype=I64)
            self.accounts.add(fresh, numbers)
            self._append_accounts(fresh)
            small = fresh < len(self.dense_slots)
            self.dense_slots[fresh[small]] = numbers[small]
            found[missing] = numbers[inverse]
        return found

    def _dense_for(self, top: int) -> Array | None:
        """The dense slot table if it covers ``top`` (growing it when that stays dense)."""
        dense = self.dense_slots
        if top < len(dense):
            return dense
        if top >= max(_DENSE_MIN, _DENSE_SPREAD * self._slots_used):
            return None
        grown = np.full(max(top + 1, 2 * len(dense)), MISSING, I32)
        keys, vals = self.accounts.items()
        small = keys < len(grown)
        grown[keys[small]] = vals[small]
        self.dense_slots = grown
        return grown

    def slot_of(self, account: int) -> int:
        if account < self.dense_slots.size:
            return int(self.dense_slots[account])
        return self.accounts.get1(account)

    def total_row(self, slot: int, table: int) -> int:
        if slot == MISSING:
            return MISSING
        return self.totals.get1(slot << 32 | table)

    def cell_rows(self, row: int) -> tuple[Array, Array] | None:
        """(cell ids, cell rows) of a total row, or None when it has no cells."""
        keys, rows = self.cells.range(row << 16, (row + 1) << 16)
        if not len(keys):
            return None
        return (keys & np.uint64(0xFFFF)).astype(I64), rows

    def _rows_for(self, index: KeyIndex, keys: Array, levels: Array | int) -> Array:
        """The row of each key, making rows for missing keys, numbered in key order.
        ``levels`` is the first threshold level of a new row, per key (every occurrence of a
        key has the same one) or for all of them.

        The keys are sorted once, up front: the index is searched with the distinct keys in
        order (a sorted probe walks the index's memory once instead of jumping about it),
        the new keys go in already sorted, and every key's row is a gather from the distinct
        keys' rows."""
        distinct, inverse = np.unique(keys, return_inverse=True)
        found = index.get(distinct)
        missing = found == MISSING
        if missing.any():
            fresh = distinct[missing]
            if isinstance(levels, int):
                first_levels: Array | int = levels
            else:
                by_key = np.empty(len(distinct), I64)
                by_key[inverse] = levels
                first_levels = by_key[missing]
            ids = self.rows.allocate(len(fresh), first_levels)
            index.add(fresh, ids)
            found[missing] = ids
        return found[inverse]

    def total_rows(
        self,
        slots: Array,
        tables: Array,
        mids: Array,
        level_of_mid: Array,
        current: dict[int, int] | None = None,
    ) -> Array:
        """The total row of each event, made where missing; ``current`` as ``RowCache.get``."""
        found = self.cache.get(mids, tables, slots, current)
        missing = found < 0
        if missing.any():
            at = np.flatnonzero(missing)
            keys = slots[at].astype(U64) << _S32 | tables[at].astype(U64)
            rows = self._rows_for(self.totals, keys, level_of_mid[mids[at]])
            found[at] = rows
            self.cache.put(mids[at], tables[at], slots[at], rows, current)
        return found

    def cell_rows_for(self, totals: Array, cells: Array) -> Array:
        keys = totals.astype(U64) << _S16 | cells.astype(U64)
        return self._rows_for(self.cells, keys, INT64_MAX)

    def cell_rows_of(self, mid: int, tables: Array, slots: Array, totals: Array,
                     cells: Array) -> Array:  # fmt: skip
        """The cell row of each event of one instance (made where missing), through the cell
        cache when it knows them."""
        found = self.cell_cache.get(mid, tables, slots, cells)
        missing = found < 0
        if missing.any():
            at = np.flatnonzero(missing)
            rows = self.cell_rows_for(totals[at], cells[at])
            found[at] = rows
            self.cell_cache.put(mid, tables[at], slots[at], cells[at], rows)
        return found


# --------------------------------------------------------------------------- thresholds


def _num_total(agg: int, count: int, total: int, maximum: int, latest: tuple[int, int, int]) -> int:
    if agg == AggType.SUM:
        return total
    if agg == AggType.MAX:
        return maximum
    if agg == AggType.LATEST:
        return latest[2]
    return count


def may_cross(
    inst: Instance, rows: RowStore, total_rows: Array, values: Array, adds: Array | None
) -> Array:
    """The distinct total rows (of ``inst``'s events in this batch) whose total may reach
    their next threshold level during the batch: an upper bound, checked exactly later."""
    distinct, inverse = np.unique(total_rows, return_inverse=True)
    level = rows.levels(distinct)
    if inst.unique:
        added = (
            np.bincount(inverse, weights=adds, minlength=len(distinct))
            if adds is not None
            else np.bincount(inverse, minlength=len(distinct))
        )
        bound = rows.count[distinct] + added.astype(I64)
    elif inst.agg == AggType.COUNT:
        bound = rows.count[distinct] + np.bincount(inverse, minlength=len(distinct))
    elif inst.agg == AggType.SUM:
        # The running total never exceeds the old sum plus the batch's positive values.
        positive = np.bincount(inverse, weights=np.maximum(values, 0), minlength=len(distinct))
        old = rows.sum_hi[distinct].astype(np.float64) * 2.0**32 + rows.sum_lo[distinct]
        big = (
            np.array([rows.big_sums.get(r, 0) for r in distinct.tolist()], np.float64)
            if rows.big_sums
            else 0.0
        )
        upper = old + big + positive
        # Floats are inexact: widen by a relative margin, never narrower than exact.
        return distinct[upper + np.abs(upper) * 1e-9 + 1.0 >= level]  # type: ignore[no-any-return]
    else:  # MAX and LATEST: never above the larger of the old value and the batch's largest
        batch_max = np.full(len(distinct), INT64_MIN, I64)
        np.maximum.at(batch_max, inverse, values)
        old = (
            rows.max[distinct]
            if inst.agg == AggType.MAX
            else np.where(rows.count[distinct] > 0, rows.last_val[distinct], INT64_MIN)
        )
        bound = np.maximum(old, batch_max)
    return distinct[bound >= level]  # type: ignore[no-any-return]


class NumState:
    """A numeric total row's aggregate, as Python ints, for the exact event-by-event replay."""

    __slots__ = ("count", "latest", "maximum", "total")

    def __init__(self, rows: RowStore, row: int) -> None:
        self.count = int(rows.count[row])
        self.total = rows.total_sum(row)
        self.maximum = int(rows.max[row])
        latest = rows.latest(row)
        self.latest = latest if latest is not None else (INT64_MIN, INT64_MIN, 0)

    def step(self, agg: int, value: int, ts: int, offset: int) -> int:
        """Fold one event in; the period total after it."""
        self.count += 1
        self.total += value
        if value > self.maximum:
            self.maximum = value
        if (ts, offset) >= self.latest[:2]:
            self.latest = (ts, offset, value)
        return _num_total(agg, self.count, self.total, self.maximum, self.latest)
