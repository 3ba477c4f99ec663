"""Interned property maps and dimension cells, and paging through an account's stored events.

Events live packed in the records of ``aggregates`` (one bucket per metric instance, account
and period). A property map or a cell is stored once per partition and referenced by a small
integer from each event's packed word. Id 0 is always the empty map / the empty cell.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Iterable, Iterator, Mapping

from unimeter.actors.aggregates import (
    CELL_MASK,
    CELL_SHIFT,
    EV_OFFSET,
    EV_PACKED,
    EV_STRIDE,
    EV_TS,
    EV_VALUE,
    OP_MASK,
    PROPS_SHIFT,
    Record,
)
from unimeter.wire.messages import StoredEvent

Cell = tuple[tuple[str, str], ...]

# The properties table is rebuilt when it holds this many more entries than were live at the
# last rebuild (and at least this many), so unique-per-event properties cannot leak forever.
_PROPS_GC_SLACK = 4096


class PropsTable:
    """Property maps by id; equal maps given in the same key order share one id."""

    __slots__ = ("_index", "_live_at_gc", "maps")

    def __init__(self) -> None:
        self.maps: list[dict[str, str]] = [{}]
        self._index: dict[tuple[tuple[str, str], ...], int] = {(): 0}
        self._live_at_gc = 1

    def intern(self, props: Mapping[str, str]) -> int:
        key = tuple(props.items())
        found = self._index.get(key)
        if found is None:
            found = self._index[key] = len(self.maps)
            self.maps.append(dict(key))
        return found

    def needs_gc(self) -> bool:
        return len(self.maps) > 2 * self._live_at_gc + _PROPS_GC_SLACK

    def compact(self, buckets: Iterable[array[int]]) -> None:
        """Keep only the maps some stored event still references, renumbering them.

        Callers must drop every cache keyed by props id afterwards.
        """
        buckets = list(buckets)
        live: dict[int, int] = {0: 0}
        for ev in buckets:
            for at in range(EV_PACKED, len(ev), EV_STRIDE):
                pid = ev[at] >> PROPS_SHIFT
                if pid not in live:
                    live[pid] = len(live)
        maps = [self.maps[0]] * len(live)
        for old, new in live.items():
            maps[new] = self.maps[old]
        low_mask = (1 << PROPS_SHIFT) - 1
        for ev in buckets:
            for at in range(EV_PACKED, len(ev), EV_STRIDE):
                word = ev[at]
                ev[at] = live[word >> PROPS_SHIFT] << PROPS_SHIFT | (word & low_mask)
        self.maps = maps
        self._index = {tuple(m.items()): i for i, m in enumerate(maps)}
        self._live_at_gc = len(maps)

    def restore(self, maps: list[dict[str, str]]) -> None:
        assert maps and not maps[0]
        self.maps = maps
        self._index = {tuple(m.items()): i for i, m in enumerate(maps)}
        self._live_at_gc = len(maps)


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
            assert found <= CELL_MASK, "more distinct dimension cells than the packing allows"
            self.cells.append(cell)
        return found

    def restore(self, cells: list[Cell]) -> None:
        assert cells and cells[0] == ()
        self.cells = cells
        self._index = {c: i for i, c in enumerate(cells)}


def cell_of(dims: tuple[tuple[str, frozenset[str]], ...], props: Mapping[str, str]) -> Cell:
    """The declared (key, value) pairs an event's properties carry; dims are sorted by key."""
    return tuple((key, props[key]) for key, allowed in dims if props.get(key) in allowed)


def cell_id_of(packed: int) -> int:
    return (packed >> CELL_SHIFT) & CELL_MASK


# --------------------------------------------------------------------------- listing


def _first_row_after(ev: array[int], after_offset: int) -> int:
    lo, hi = 0, len(ev) // EV_STRIDE
    while lo < hi:
        mid = (lo + hi) // 2
        if ev[mid * EV_STRIDE + EV_OFFSET] <= after_offset:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _rows(
    ev: array[int], bucket: int, since_us: int, until_us: int, after_offset: int
) -> Iterator[tuple[int, int, int]]:
    for row in range(_first_row_after(ev, after_offset), len(ev) // EV_STRIDE):
        at = row * EV_STRIDE
        if since_us <= ev[at + EV_TS] < until_us:
            yield ev[at + EV_OFFSET], bucket, row


def page_events(
    account_id: int,
    buckets: list[tuple[str, Record]],
    props: PropsTable,
    since_us: int,
    until_us: int,
    after_offset: int,
    limit: int,
) -> tuple[tuple[StoredEvent, ...], int | None]:
    """Merge an account's buckets in offset order; next cursor when more events remain."""
    merged = heapq.merge(
        *(_rows(rec.ev, i, since_us, until_us, after_offset) for i, (_, rec) in enumerate(buckets))
    )
    out: list[StoredEvent] = []
    for offset, bucket, row in merged:
        if len(out) == limit:
            return tuple(out), out[-1].offset
        code, rec = buckets[bucket]
        at = row * EV_STRIDE
        packed = rec.ev[at + EV_PACKED]
        out.append(
            StoredEvent(
                account_id=account_id,
                metric_code=code,
                value=rec.ev[at + EV_VALUE],
                timestamp_us=rec.ev[at + EV_TS],
                operation_type=packed & OP_MASK,
                properties=dict(props.maps[packed >> PROPS_SHIFT]),
                event_id=rec.eids[row] if rec.eids is not None else None,
                offset=offset,
            )
        )
    return tuple(out), None
