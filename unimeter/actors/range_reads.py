"""Exact reads of one metric instance over any ``[start, end)`` (docs/semantics.md §4, §5).

A range is cut into *pieces*, one per period it overlaps: the first period F and the last
period L may be partial (edges), every period between them is whole. Whole periods are served
from their records; only stored middle periods are visited (empty periods contribute nothing,
or for recurring metrics the set already carried in), so a read never iterates over empty time.
Edges scan the events of their own record only.

A read sees records through a ``CellView``: in *total* mode (no filter, no group-by) a record is
one cell; otherwise its dimension cells, each mapped to the group it belongs to or to None when
the filter rejects it. The functions here never change the state.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable

from pyroaring import BitMap64

from unimeter.actors.aggregates import (
    CELL_MASK,
    CELL_SHIFT,
    EV_OFFSET,
    EV_PACKED,
    EV_STRIDE,
    EV_TS,
    EV_VALUE,
    OP_MASK,
    REMOVE,
    Instance,
    Latest,
    NumBase,
    NumRec,
    Record,
    UniqBase,
    UniqRec,
    later,
    row_latest,
)
from unimeter.actors.alerts import flags_of
from unimeter.actors.event_store import Cell
from unimeter.model import AggType, AggValue
from unimeter.periods import from_us

Group = tuple[tuple[str, str], ...]
Piece = tuple[int, int, int, int]  # period start, period end, piece start, piece end


class CellView:
    """How one read sees cells: which group each belongs to (None: filtered out)."""

    __slots__ = ("_cells", "_filters", "_group_keys", "_groups", "total")

    def __init__(
        self, cells: list[Cell], filters: tuple[tuple[str, str], ...], group_by: tuple[str, ...]
    ) -> None:
        self.total = not filters and not group_by
        self._cells = cells
        self._filters = frozenset(filters)
        self._group_keys = frozenset(group_by)
        self._groups: dict[int, Group | None] = {}

    def group(self, cell_id: int) -> Group | None:
        if self.total:
            return ()
        if cell_id in self._groups:
            return self._groups[cell_id]
        cell = self._cells[cell_id]
        found: Group | None = None
        if self._filters.issubset(cell):
            found = tuple(pair for pair in cell if pair[0] in self._group_keys)
        self._groups[cell_id] = found
        return found

    def row_cell(self, packed: int) -> int:
        return 0 if self.total else (packed >> CELL_SHIFT) & CELL_MASK


def plan(inst: Instance, series: dict[int, Record] | None, start: int, end: int) -> list[Piece]:
    f_start, f_end = inst.period_of(start)
    l_start, l_end = inst.period_of(end - 1)
    if f_start == l_start:
        return [(f_start, f_end, start, end)]
    middle = sorted(s for s in series if f_end <= s < l_start) if series else []
    pieces = [(f_start, f_end, start, f_end)]
    pieces.extend((s, inst.end_of(s), s, inst.end_of(s)) for s in middle)
    pieces.append((l_start, l_end, l_start, end))
    return pieces


def whole_period(inst: Instance, account: int, start: int, end: int) -> AggValue | None:
    """The unfiltered total of exactly one stored period, read straight from its record: the
    common billing read (``current_month()``, ``query_realtime``). None when the range is
    anything else, or the metric carries state across periods; ``plan`` and the readers below
    then answer, with the same result where both apply."""
    bounds = inst.period_index.get(start)
    if bounds is None or bounds[1] != end:
        return None
    if inst.recurring and (inst.unique or inst.agg == AggType.LATEST):
        return None
    recs = inst.periods.get(start)
    rec = recs.get(account) if recs is not None else None
    if rec is None:
        return AggValue()
    if isinstance(rec, UniqRec):
        return AggValue(count=len(rec.present), alert_flags=flags_of(rec.fired, inst.thresholds))
    assert isinstance(rec, NumRec)
    flags = flags_of(rec.fired, inst.thresholds)
    ev = rec.ev
    at = rec.last * EV_STRIDE
    return AggValue(
        sum=rec.sum,
        count=len(ev) // EV_STRIDE,
        max=rec.max,
        last_value=ev[at + EV_VALUE],
        last_timestamp=from_us(ev[at + EV_TS]),
        alert_flags=flags,
    )


# --------------------------------------------------------------------------- COUNT..LATEST


class _NumAcc:
    __slots__ = ("count", "last", "max", "sum")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0
        self.max: int | None = None
        self.last: Latest | None = None

    def add(self, count: int, total: int, maximum: int, latest: Latest) -> None:
        self.count += count
        self.sum += total
        if self.max is None or maximum > self.max:
            self.max = maximum
        self.last = later(self.last, latest)

    def value(self, flags: int) -> AggValue:
        last = self.last
        return AggValue(
            sum=self.sum,
            count=self.count,
            max=self.max,
            last_value=last[2] if last is not None else None,
            last_timestamp=from_us(last[0]) if last is not None else None,
            alert_flags=flags,
        )


def _num_cells(rec: NumRec, view: CellView) -> Iterable[tuple[int, int, int, int, int]]:
    """(cell, count, sum, max, latest row) of a record as the view sees it."""
    if view.total or rec.cells is None:
        return ((0, len(rec.ev) // EV_STRIDE, rec.sum, rec.max, rec.last),)
    return ((c, x.count, x.sum, x.max, x.last) for c, x in rec.cells.items())


def _acc(groups: dict[Group, _NumAcc], group: Group) -> _NumAcc:
    found = groups.get(group)
    if found is None:
        found = groups[group] = _NumAcc()
    return found


def _scan_num(groups: dict[Group, _NumAcc], rec: NumRec, view: CellView, lo: int, hi: int) -> None:
    ev = rec.ev
    for at in range(0, len(ev), EV_STRIDE):
        ts = ev[at + EV_TS]
        if lo <= ts < hi:
            group = view.group(view.row_cell(ev[at + EV_PACKED]))
            if group is not None:
                value = ev[at + EV_VALUE]
                _acc(groups, group).add(1, value, value, (ts, ev[at + EV_OFFSET], value))


def _lookback(
    inst: Instance,
    account: int,
    series: dict[int, Record] | None,
    first: Piece,
    view: CellView,
    groups: dict[Group, _NumAcc],
) -> None:
    """Recurring LATEST: merge in each group's latest event from before the range."""
    latest: dict[Group, Latest | None] = {}

    def offer(cell: int, candidate: Latest | None) -> None:
        group = view.group(cell)
        if group is not None and candidate is not None:
            latest[group] = later(latest.get(group), candidate)

    f_start, _, a, _ = first
    if series:
        for s, rec in series.items():
            assert isinstance(rec, NumRec)
            if s < f_start:
                for cell, _, _, _, row in _num_cells(rec, view):
                    offer(cell, row_latest(rec.ev, row))
            elif s == f_start and a > f_start:
                ev = rec.ev
                for at in range(0, len(ev), EV_STRIDE):
                    if ev[at + EV_TS] < a:
                        offer(view.row_cell(ev[at + EV_PACKED]), row_latest(ev, at // EV_STRIDE))
    base = inst.base.get(account)
    if isinstance(base, NumBase):
        if view.total or base.cells is None:
            offer(0, base.last)
        else:
            for cell, cell_latest in base.cells.items():
                offer(cell, cell_latest)
    for group, found in latest.items():
        acc = _acc(groups, group)
        acc.last = later(acc.last, found)


def read_num(
    inst: Instance, account: int, pieces: list[Piece], view: CellView
) -> tuple[dict[Group, AggValue], int]:
    series = inst.series(account)
    groups: dict[Group, _NumAcc] = {}
    flags = 0
    for start, end, a, b in pieces:
        rec = series.get(start)
        if rec is None:
            continue
        assert isinstance(rec, NumRec)
        flags |= flags_of(rec.fired, inst.thresholds)
        if a == start and b == end:
            for cell, count, total, maximum, row in _num_cells(rec, view):
                group = view.group(cell)
                if group is not None:
                    _acc(groups, group).add(count, total, maximum, row_latest(rec.ev, row))
        else:
            _scan_num(groups, rec, view, a, b)
    if inst.agg == AggType.LATEST and inst.recurring and pieces:
        _lookback(inst, account, series, pieces[0], view, groups)
    return {group: acc.value(flags) for group, acc in groups.items()}, flags


# --------------------------------------------------------------------------- COUNT_UNIQUE


Running = dict[int, BitMap64]  # cell -> unique set, only cells the view keeps


def _uniq_cells(rec: UniqRec | UniqBase, view: CellView) -> Iterable[tuple[int, BitMap64]]:
    if view.total or rec.cells is None:
        return ((0, rec.present),)
    return rec.cells.items()


def _fold(running: Running, rec: UniqRec, view: CellView) -> None:
    if rec.removed is not None:
        for members in running.values():
            members.difference_update(rec.removed)
    for cell, members in _uniq_cells(rec, view):
        if view.group(cell) is None:
            continue
        if cell in running:
            running[cell] |= members
        else:
            running[cell] = members.copy()


def _replay(running: Running, ev: array[int], view: CellView, lo: int, hi: int) -> None:
    """Apply a record's events with ``lo <= ts < hi`` in log order."""
    for at in range(0, len(ev), EV_STRIDE):
        if not lo <= ev[at + EV_TS] < hi:
            continue
        packed = ev[at + EV_PACKED]
        value = ev[at + EV_VALUE]
        if packed & OP_MASK == REMOVE:
            for members in running.values():
                members.discard(value)
            continue
        cell = view.row_cell(packed)
        if view.group(cell) is None:
            continue
        if cell in running:
            running[cell].add(value)
        else:
            running[cell] = BitMap64([value])


def _union_into(groups: dict[Group, BitMap64], running: Running, view: CellView) -> None:
    for cell, members in running.items():
        group = view.group(cell)
        assert group is not None
        if group in groups:
            groups[group] |= members
        else:
            groups[group] = members.copy()


def read_unique(
    inst: Instance, account: int, pieces: list[Piece], view: CellView
) -> tuple[dict[Group, AggValue], int]:
    series = inst.series(account)
    groups: dict[Group, BitMap64] = {}
    flags = 0
    lowest = -(2**63)
    if inst.recurring:
        running: Running = {}
        base = inst.base.get(account)
        if isinstance(base, UniqBase):
            for cell, members in _uniq_cells(base, view):
                if view.group(cell) is not None:
                    running[cell] = members.copy()
        f_start = pieces[0][0]
        for s in sorted(series):
            if s >= f_start:
                break
            earlier = series[s]
            assert isinstance(earlier, UniqRec)
            _fold(running, earlier, view)
        for start, end, _, b in pieces:
            found = series.get(start)
            if found is not None:
                assert isinstance(found, UniqRec)
                flags |= flags_of(found.fired, inst.thresholds)
                if b == end:
                    _fold(running, found, view)
                else:
                    _replay(running, found.ev, view, lowest, b)
            _union_into(groups, running, view)
    else:
        for start, end, a, b in pieces:
            rec = series.get(start)
            if rec is None:
                continue
            assert isinstance(rec, UniqRec)
            flags |= flags_of(rec.fired, inst.thresholds)
            if a == start and b == end:
                for cell, members in _uniq_cells(rec, view):
                    group = view.group(cell)
                    if group is None:
                        continue
                    if group in groups:
                        groups[group] |= members
                    else:
                        groups[group] = members.copy()
            else:
                edge: Running = {}
                _replay(edge, rec.ev, view, a, b)
                _union_into(groups, edge, view)
    values = {
        group: AggValue(count=len(members), alert_flags=flags) for group, members in groups.items()
    }
    return values, flags
