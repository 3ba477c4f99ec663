"""Interned property maps and dimension cells, and turning a batch's property columns into them.

A property map or a cell is stored once per partition and referenced by a small integer from
each stored event. Id 0 is always the empty map / the empty cell. A batch brings its properties
dictionary-encoded per key (``wire.batch.PropertyColumn``), so finding each event's map or cell
is array work plus one Python step per *distinct* combination in the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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

    __slots__ = ("_index", "live_at_gc", "maps")

    def __init__(self) -> None:
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
        self.maps = maps
        self._index = {tuple(sorted(m.items())): i for i, m in enumerate(maps)}
        self.live_at_gc = len(maps)


class CellTable:
    """Dimension cells (sorted ``(key, value)`` tuples) by id."""

    __slots__ = ("_index", "cells")

    def __init__(self) -> None:
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


def props_ids(columns: tuple[PropertyColumn, ...], n: int, table: PropsTable) -> Array | None:
    """Each event's interned property map id (int32), or None when no event has properties."""
    if not columns or not n:
        return None
    if len(columns) == 1:
        col = columns[0]
        ids = np.zeros(len(col.values) + 1, I32)
        for j, value in enumerate(col.values, 1):
            ids[j] = table.intern({col.key: value})
        return ids[col.index]
    rows, inverse = _combos([c.index for c in columns], n)
    ids = np.zeros(len(rows), I32)
    for r, row in enumerate(rows.tolist()):
        pairs = {c.key: c.values[j - 1] for c, j in zip(columns, row, strict=True) if j}
        ids[r] = table.intern(pairs) if pairs else 0
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
        kept = [None] + [v if v in allowed else None for v in col.values]
        if not any(v is not None for v in kept):
            continue
        codes.append(col.index.astype(np.int64))
        tables.append((key, tuple(kept)))
    if not codes:
        return None
    rows, inverse = _combos(codes, n)
    ids = np.zeros(len(rows), I32)
    for r, row in enumerate(rows.tolist()):
        cell = tuple(
            (key, values[j]) for (key, values), j in zip(tables, row, strict=True) if values[j]
        )
        ids[r] = table.intern(cell)
    out = ids[inverse]
    return out if out.any() else None
