"""Interned property maps and dimension cells, and turning a batch's property columns into them.

A property map or a cell is stored once per partition and referenced by a small integer from
each stored event. Id 0 is always the empty map / the empty cell. A batch brings its properties
dictionary-encoded per key (``wire.batch.PropertyColumn``), so finding each event's map or cell
is array work plus one Python step per *distinct* combination in the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from unimeter.wire.batch import PropertyColumn

Array = npt.NDArray[Any]
Cell = tuple[tuple[str, str], ...]
I32 = np.dtype("<i4")

_DENSE_COMBOS_MAX = 1 << 16  # up to this many possible combinations, count instead of sort

# The properties table is rebuilt when it holds this many more entries than were live at the
# last rebuild (and at least this many), so unique-per-event properties cannot leak forever.
_PROPS_GC_SLACK = 4096


class PropsTable:
    """Property maps by id; equal maps (as sorted pairs) share one id."""

    __slots__ = ("_index", "live_at_gc", "maps", "memo")

    def __init__(self) -> None:
        self.memo = _Memo()  # ids by value-table combination (a cache)
        self.maps: list[dict[str, str]] = [{}]
        self._index: dict[tuple[tuple[str, str], ...], int] = {(): 0}
        self.live_at_gc = 1

    def intern(self, props: Mapping[str, str]) -> int:
        key = tuple(sorted(props.items()))
        found = self._index.get(key)
        if found is None:
            found = self._index[key] = len(self.maps)
            self.maps.append(dict(key))
        return found

    def needs_gc(self) -> bool:
        return len(self.maps) > 2 * self.live_at_gc + _PROPS_GC_SLACK

    def compact(self, live_ids: Array) -> Array:
        """Keep only the maps in ``live_ids`` (sorted, 0 included), renumbered in that order;
        returns old id -> new id for the columns that reference them."""
        mapping = np.zeros(len(self.maps), I32)
        mapping[live_ids] = np.arange(len(live_ids), dtype=I32)
        self.restore([self.maps[i] for i in live_ids.tolist()])
        return mapping

    def restore(self, maps: list[dict[str, str]]) -> None:
        assert maps and not maps[0]
        self.memo.clear()  # ids may have been renumbered
        self.maps = maps
        self._index = {tuple(sorted(m.items())): i for i, m in enumerate(maps)}
        self.live_at_gc = len(maps)


class CellTable:
    """Dimension cells (sorted ``(key, value)`` tuples) by id."""

    __slots__ = ("_index", "cells", "memo")

    def __init__(self) -> None:
        self.memo = _Memo()  # ids by value-table combination (a cache)
        self.cells: list[Cell] = [()]
        self._index: dict[Cell, int] = {(): 0}

    def intern(self, cell: Cell) -> int:
        found = self._index.get(cell)
        if found is None:
            found = self._index[cell] = len(self.cells)
            assert found < 1 << 16, "more distinct dimension cells than a cell key holds"
            self.cells.append(cell)
        return found

    def restore(self, cells: list[Cell]) -> None:
        assert cells and cells[0] == ()
        self.memo.clear()
        self.cells = cells
        self._index = {c: i for i, c in enumerate(cells)}


def _combos(codes: Sequence[Array], n: int) -> tuple[Array, Array]:
    """Distinct rows of the per-event code matrix (one column per code array) and, per event,
    the number of its row: (distinct rows as a (k, len(codes)) array, inverse)."""
    radices = [int(col.max()) + 1 for col in codes]
    if float(np.prod(radices, dtype=np.float64)) < 2.0**62:
        # Mixed-radix: one int64 per event, and one sort finds the distinct combinations.
        key = codes[0].astype(np.int64)
        scale = radices[0]
        for col, radix in zip(codes[1:], radices[1:], strict=True):
            key += col.astype(np.int64) * scale
            scale *= radix
        if scale <= _DENSE_COMBOS_MAX:
            # Few possible combinations: count them, no sort.
            seen = np.bincount(key, minlength=scale)
            distinct = np.flatnonzero(seen)
            number = np.zeros(scale, np.int64)
            number[distinct] = np.arange(len(distinct))
            inverse = number[key]
        else:
            distinct, inverse = np.unique(key, return_inverse=True)
        rows = np.zeros((len(distinct), len(codes)), np.int64)
        rest = distinct.copy()
        for j, radix in enumerate(radices):
            rows[:, j] = rest % radix
            rest //= radix
        return rows, inverse.reshape(-1)
    matrix = np.zeros((n, len(codes)), np.int64)
    for j, col in enumerate(codes):
        matrix[:, j] = col
    rows, inverse = np.unique(matrix, axis=0, return_inverse=True)
    return rows, inverse.reshape(-1)


class _Memo:
    """Interned ids by combination of dictionary codes, for one set of value tables.

    Batches from the same producers carry the same small value tables over and over, so the
    id of each combination is remembered in a lookup array indexed by the combination's
    mixed-radix code: a batch's ids are then one gather, and Python runs only for a
    combination never seen with these tables. A cache: cleared when ids are renumbered."""

    __slots__ = ("_tables",)

    def __init__(self) -> None:
        self._tables: dict[object, Array] = {}

    def clear(self) -> None:
        self._tables.clear()

    def ids(self, signature: object, codes: list[Array], radices: list[int],
            make: Callable[[list[int]], int]) -> Array | None:  # fmt: skip
        """The id of each event's combination, or None when the code space is too large."""
        size = 1
        for radix in radices:
            size *= radix
        if size > _DENSE_COMBOS_MAX:
            return None
        table = self._tables.get(signature)
        if table is None:
            if len(self._tables) >= _MEMO_TABLES_MAX:
                self._tables.clear()
            table = self._tables[signature] = np.full(size, -1, I32)
        key = codes[0].astype(np.int64)
        scale = radices[0]
        for col, radix in zip(codes[1:], radices[1:], strict=True):
            key += col.astype(np.int64) * scale
            scale *= radix
        found = table[key]
        if (found < 0).any():
            for code in np.unique(key[found < 0]).tolist():
                row, rest = [], code
                for radix in radices:
                    row.append(rest % radix)
                    rest //= radix
                table[code] = make(row)
            found = table[key]
        return found


_MEMO_TABLES_MAX = 1024


def props_ids(columns: tuple[PropertyColumn, ...], n: int, table: PropsTable) -> Array | None:
    """Each event's interned property map id (int32), or None when no event has properties."""
    if not columns or not n:
        return None

    def make(row: list[int]) -> int:
        pairs = {c.key: c.values[j - 1] for c, j in zip(columns, row, strict=True) if j}
        return table.intern(pairs) if pairs else 0

    codes = [c.index for c in columns]
    radices = [len(c.values) + 1 for c in columns]
    signature = tuple((c.key, c.values) for c in columns)
    found = table.memo.ids(signature, codes, radices, make)
    if found is not None:
        return found
    rows, inverse = _combos(codes, n)
    ids = np.zeros(len(rows), I32)
    for r, row in enumerate(rows.tolist()):
        ids[r] = make(row)
    return ids[inverse]


def cell_ids(
    dims: tuple[tuple[str, frozenset[str]], ...],
    columns: tuple[PropertyColumn, ...],
    n: int,
    table: CellTable,
) -> Array | None:
    """Each event's dimension cell under ``dims`` (keys sorted): the declared (key, value)
    pairs its properties carry, interned; None when every event is in the empty cell."""
    by_key = {c.key: c for c in columns}
    codes: list[Array] = []
    tables: list[tuple[str, tuple[str | None, ...]]] = []
    for key, allowed in dims:
        col = by_key.get(key)
        if col is None:
            continue
        # Map the column's value table onto "allowed value j" (0: absent or not allowed).
        kept = (None, *(v if v in allowed else None for v in col.values))
        if not any(v is not None for v in kept):
            continue
        codes.append(col.index)
        tables.append((key, kept))
    if not codes:
        return None

    def make(row: list[int]) -> int:
        cell = tuple(
            (key, values[j]) for (key, values), j in zip(tables, row, strict=True) if values[j]
        )
        return table.intern(cell)  # type: ignore[arg-type]

    radices = [len(values) for _, values in tables]
    out = table.memo.ids(tuple(tables), codes, radices, make)
    if out is None:
        rows, inverse = _combos(codes, n)
        ids = np.zeros(len(rows), I32)
        for r, row in enumerate(rows.tolist()):
            ids[r] = make(row)
        out = ids[inverse]
    return out if out.any() else None
