"""Exact reads of the partition state over any ``[start, end)`` (docs/semantics.md §5, §6, §10).

A range is cut into *pieces*, one per period it overlaps: the first period F and the last
period L may be partial (edges), every period between them is whole. Whole periods are served
from their aggregate rows (total, or cell rows through a ``CellView``); only periods holding
rows are visited, so a read never iterates over empty time. Edges look at the period's stored
events of that account and instance only (``events.Chunk.rows_of``), with array reductions.

The functions here never change the state (sealed event chunks may get sorted: an index, not
state).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from pyroaring import BitMap64

from unimeter import errors, periods
from unimeter.model import AggType, AggValue
from unimeter.periods import from_us
from unimeter.state.aggregates import REMOVE, UniqRow
from unimeter.state.alerts import flags_of
from unimeter.state.apply_batch import fold_unique
from unimeter.state.instances import Instance, Latest, NumBase, UniqBase, later
from unimeter.state.keyindex import MISSING
from unimeter.state.props import Cell
from unimeter.state.rows import INT64_MIN, exact_sum
from unimeter.wire.messages import StoredEvent

if TYPE_CHECKING:
    from unimeter.state.partition_state import PartitionState

Array = npt.NDArray[Any]
Group = tuple[tuple[str, str], ...]
Piece = tuple[int, int, int, int]  # period start, period end, piece start, piece end
# Reads are clamped to timestamps whose periods stay inside what ``datetime`` can represent.
TS_MIN_US = periods.to_us(periods.EPOCH.replace(year=2))
TS_MAX_US = periods.to_us(periods.EPOCH.replace(year=9998))
NEVER = 2**63  # "visible from": after every timestamp


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


class _Events:
    """One (instance, account)'s stored events in a time window, in log order."""

    __slots__ = ("cell", "offset", "op", "ts", "value")

    def __init__(
        self, state: PartitionState, inst: Instance, account: int, lo: int, hi: int
    ) -> None:
        parts: dict[str, list[Array]] = {k: [] for k in self.__slots__}
        for chunk in state.events.readable():
            rows = chunk.rows_of(account, inst.mid)
            if not len(rows):
                continue
            ts = chunk.cols["ts"][rows]
            inside = (ts >= lo) & (ts < hi)
            if not inside.all():
                rows, ts = rows[inside], ts[inside]
            if not len(rows):
                continue
            parts["ts"].append(ts)
            parts["value"].append(chunk.cols["value"][rows])
            parts["offset"].append(chunk.offsets(rows))
            for name in ("op", "cell"):
                col = chunk.cols.get(name)
                parts[name].append(col[rows] if col is not None else np.zeros(len(rows), np.int64))
        joined = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in parts.items()}
        order = np.argsort(joined["offset"], kind="stable")
        self.ts: Array = joined["ts"][order]
        self.value: Array = joined["value"][order]
        self.offset: Array = joined["offset"][order]
        self.op: Array = joined["op"][order]
        self.cell: Array = joined["cell"][order]


# --------------------------------------------------------------------------- planning


def _instance(state: PartitionState, code: str) -> Instance:
    inst = state.live.get(code)
    if inst is None:
        raise errors.UnknownMetricError(f"unknown metric {code!r}")
    return inst


def _series(state: PartitionState, inst: Instance, account: int) -> dict[int, int]:
    """The account's total row of each period of ``inst`` that has one, by period start."""
    tabs = state.tables
    slot = tabs.slot_of(account)
    if slot == MISSING:
        return {}
    out: dict[int, int] = {}
    for start, (_, table) in inst.periods.items():
        row = tabs.total_row(slot, table)
        if row != MISSING:
            out[start] = row
    return out


def _plan(inst: Instance, series: dict[int, int], start: int, end: int) -> list[Piece]:
    f_start, f_end = inst.period_of(start)
    l_start, l_end = inst.period_of(end - 1)
    if f_start == l_start:
        return [(f_start, f_end, start, end)]
    middle = sorted(s for s in series if f_end <= s < l_start)
    pieces = [(f_start, f_end, start, f_end)]
    pieces.extend((s, inst.end_of(s), s, inst.end_of(s)) for s in middle)
    pieces.append((l_start, l_end, l_start, end))
    return pieces


def _cells_of(state: PartitionState, row: int, view: CellView) -> list[tuple[int, int]]:
    """(cell, row) pairs of a total row as the view sees it."""
    if view.total:
        return [(0, row)]
    found = state.tables.cell_rows(row)
    if found is None:
        return [(0, row)]
    return list(zip(found[0].tolist(), found[1].tolist(), strict=True))


# --------------------------------------------------------------------------- COUNT..LATEST


class _NumAcc:
    __slots__ = ("count", "last", "max", "sum")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0
        self.max: int | None = None
        self.last: Latest | None = None

    def add(self, count: int, total: int, maximum: int | None, latest: Latest | None) -> None:
        self.count += count
        self.sum += total
        if maximum is not None and (self.max is None or maximum > self.max):
            self.max = maximum
        self.last = later(self.last, latest)

    def wire(self, flags: int) -> list[Any]:
        """``value(flags)`` as it travels on the wire (``bodies.AGG_VALUE``)."""
        last = self.last
        if last is None:
            return [self.sum, self.count, self.max, None, None, flags]
        return [self.sum, self.count, self.max, last[2], last[0], flags]

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


def _acc(groups: dict[Group, _NumAcc], group: Group) -> _NumAcc:
    found = groups.get(group)
    if found is None:
        found = groups[group] = _NumAcc()
    return found


def _add_row(state: PartitionState, acc: _NumAcc, row: int) -> None:
    rows = state.tables.rows
    count = int(rows.count[row])
    if not count:
        return
    acc.add(count, rows.total_sum(row), int(rows.max[row]), rows.latest(row))


def _scan_num(groups: dict[Group, _NumAcc], ev: _Events, view: CellView) -> None:
    if not len(ev.ts):
        return
    cells = [0] if view.total else np.unique(ev.cell).tolist()
    for cell in cells:
        group = view.group(cell)
        if group is None:
            continue
        if view.total:
            ts, values, offsets = ev.ts, ev.value, ev.offset
        else:
            mine = ev.cell == cell
            ts, values, offsets = ev.ts[mine], ev.value[mine], ev.offset[mine]
        best = int(np.lexsort((offsets, ts))[-1])
        _acc(groups, group).add(
            len(ts),
            exact_sum(values),
            int(values.max()),
            (int(ts[best]), int(offsets[best]), int(values[best])),
        )


def _lookback(
    state: PartitionState,
    inst: Instance,
    account: int,
    series: dict[int, int],
    first: Piece,
    view: CellView,
    groups: dict[Group, _NumAcc],
) -> None:
    """Recurring LATEST: merge in each group's latest event from before the range."""
    latest: dict[Group, Latest | None] = {}
    rows = state.tables.rows

    def offer(cell: int, candidate: Latest | None) -> None:
        group = view.group(cell)
        if group is not None and candidate is not None:
            latest[group] = later(latest.get(group), candidate)

    f_start, _, a, _ = first
    for s, row in series.items():
        if s < f_start:
            for cell, crow in _cells_of(state, row, view):
                offer(cell, rows.latest(crow))
        elif s == f_start and a > f_start:
            ev = _Events(state, inst, account, s, a)
            for i in range(len(ev.ts)):
                cell = 0 if view.total else int(ev.cell[i])
                offer(cell, (int(ev.ts[i]), int(ev.offset[i]), int(ev.value[i])))
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


def _read_num(
    state: PartitionState,
    inst: Instance,
    account: int,
    series: dict[int, int],
    pieces: list[Piece],
    view: CellView,
) -> tuple[dict[Group, AggValue], int]:
    groups: dict[Group, _NumAcc] = {}
    flags = 0
    fired = state.tables.rows.fired
    for start, end, a, b in pieces:
        row = series.get(start)
        if row is None:
            continue
        flags |= flags_of(fired.get(row), inst.thresholds)
        if a == start and b == end:
            for cell, crow in _cells_of(state, row, view):
                group = view.group(cell)
                if group is not None:
                    _add_row(state, _acc(groups, group), crow)
        elif view.total:
            # An edge of the total: per chunk, binary searches and block sums (runs.py).
            found = state.events.range_totals(account, inst.mid, a, b)
            if found is not None:
                _acc(groups, ()).add(*found)
        else:
            _scan_num(groups, _Events(state, inst, account, a, b), view)
    if inst.agg == AggType.LATEST and inst.recurring and pieces:
        _lookback(state, inst, account, series, pieces[0], view, groups)
    return {group: acc.value(flags) for group, acc in groups.items()}, flags


# --------------------------------------------------------------------------- COUNT_UNIQUE


Running = dict[int, BitMap64]  # cell -> unique set, only cells the view keeps


def _uniq_cells(state: PartitionState, row: int, view: CellView) -> list[tuple[int, BitMap64]]:
    uniq = state.tables.uniq
    return [(cell, (uniq.get(r) or UniqRow()).present) for cell, r in _cells_of(state, row, view)]


def _base_cells(base: UniqBase, view: CellView) -> list[tuple[int, BitMap64]]:
    if view.total or base.cells is None:
        return [(0, base.present)]
    return list(base.cells.items())


def _fold(state: PartitionState, running: Running, row: int, view: CellView) -> None:
    urow = state.tables.uniq.get(row)
    if urow is not None and urow.removed is not None:
        for members in running.values():
            members.difference_update(urow.removed)
    for cell, members in _uniq_cells(state, row, view):
        if view.group(cell) is None:
            continue
        if cell in running:
            running[cell] |= members
        else:
            running[cell] = members.copy()


def _replay(running: Running, ev: _Events, view: CellView) -> None:
    """Apply events in log order."""
    values = ev.value.tolist()
    ops = ev.op.tolist()
    cells = ev.cell.tolist()
    for value, op, cell in zip(values, ops, cells, strict=True):
        if op == REMOVE:
            for members in running.values():
                members.discard(value)
            continue
        c = 0 if view.total else cell
        if view.group(c) is None:
            continue
        if c in running:
            running[c].add(value)
        else:
            running[c] = BitMap64([value])


def _union_into(groups: dict[Group, BitMap64], running: Running, view: CellView) -> None:
    for cell, members in running.items():
        group = view.group(cell)
        assert group is not None
        if group in groups:
            groups[group] |= members
        else:
            groups[group] = members.copy()


def _read_unique(
    state: PartitionState,
    inst: Instance,
    account: int,
    series: dict[int, int],
    pieces: list[Piece],
    view: CellView,
) -> tuple[dict[Group, AggValue], int]:
    groups: dict[Group, BitMap64] = {}
    flags = 0
    fired = state.tables.rows.fired
    lowest = -(2**63)
    if inst.recurring:
        running: Running = {}
        base = inst.base.get(account)
        if isinstance(base, UniqBase):
            for cell, members in _base_cells(base, view):
                if view.group(cell) is not None:
                    running[cell] = members.copy()
        f_start = pieces[0][0]
        for s in sorted(series):
            if s >= f_start:
                break
            _fold(state, running, series[s], view)
        for start, end, _, b in pieces:
            row = series.get(start)
            if row is not None:
                flags |= flags_of(fired.get(row), inst.thresholds)
                if b == end:
                    _fold(state, running, row, view)
                else:
                    _replay(running, _Events(state, inst, account, max(lowest, start), b), view)
            _union_into(groups, running, view)
    else:
        for start, end, a, b in pieces:
            row = series.get(start)
            if row is None:
                continue
            flags |= flags_of(fired.get(row), inst.thresholds)
            if a == start and b == end:
                for cell, members in _uniq_cells(state, row, view):
                    group = view.group(cell)
                    if group is None:
                        continue
                    if group in groups:
                        groups[group] |= members
                    else:
                        groups[group] = members.copy()
            else:
                edge: Running = {}
                _replay(edge, _Events(state, inst, account, a, b), view)
                _union_into(groups, edge, view)
    values = {
        group: AggValue(count=len(members), alert_flags=flags) for group, members in groups.items()
    }
    return values, flags


# --------------------------------------------------------------------------- entry points


def whole_period(
    state: PartitionState, inst: Instance, account: int, start: int, end: int
) -> AggValue | None:
    """The unfiltered total of exactly one stored period, read straight from its row: the
    common billing read. None when the range is anything else, or the metric carries state
    across periods; the general path then answers, with the same result where both apply."""
    found = inst.periods.get(start)
    if found is None or found[0] != end or inst.carries:
        return None
    tabs = state.tables
    row = tabs.total_row(tabs.slot_of(account), found[1])
    if row == MISSING:
        return AggValue()
    rows = tabs.rows
    flags = flags_of(rows.fired.get(row), inst.thresholds)
    count = int(rows.count[row])
    if inst.unique:
        return AggValue(count=count, alert_flags=flags)
    if not count:
        return AggValue(alert_flags=flags)
    return AggValue(
        sum=rows.total_sum(row),
        count=count,
        max=int(rows.max[row]),
        last_value=int(rows.last_val[row]),
        last_timestamp=from_us(int(rows.last_ts[row])),
        alert_flags=flags,
    )


def whole_period_wire(
    state: PartitionState,
    code: str,
    account: int,
    start: int,
    end: int,
    filters: tuple[tuple[str, str], ...] = (),
) -> list[Any] | None:
    """The answer to a query of exactly one stored period, as the AggValue travels on the wire
    (``[sum, count, max, last_value, last_timestamp_us, alert_flags]``, ``bodies.AGG_VALUE``):
    the reply template of the read fast path, built without an ``AggValue``. Unfiltered, it is
    ``whole_period``; with ``filters``, what ``_read`` answers from the period's cell rows
    (``_filtered_wire``). None whenever the general path must answer: ``whole_period`` would be
    None, the metric is unknown, or the filters are not plainly answerable from the rows
    (``_reads_whole``)."""
    inst = state.live.get(code)
    if inst is None:
        return None
    found = inst.periods.get(start)
    if found is None or found[0] != end or (inst.recurring and inst.carries):
        return None
    if filters and not _reads_whole(state, inst, start, end, filters):
        return None
    tabs = state.tables
    # tabs.total_row(tabs.slot_of(account), table), inlined (this is the read fast path)
    dense = tabs.dense_slots
    slot = dense.item(account) if account < dense.size else tabs.accounts.get1(account)
    if slot == MISSING:
        return [0, 0, None, None, None, 0]
    row = tabs.totals.get1(slot << 32 | found[1])
    if row == MISSING:
        return [0, 0, None, None, None, 0]
    rows = tabs.rows
    flags = flags_of(rows.fired.get(row), inst.thresholds) if inst.thresholds else 0
    if filters:
        return _filtered_wire(state, inst, row, flags, filters)
    cols = rows.cols
    # ``.item``: the element as a Python int at once (``int(col[row])`` makes a numpy scalar
    # first, twice the cost on the read fast path).
    count = cols["count"].item(row)
    if inst.unique:
        return [0, count, None, None, None, flags]
    if not count:
        return [0, 0, None, None, None, flags]
    total = (cols["sum_hi"].item(row) << 32) + cols["sum_lo"].item(row)
    if rows.big_sums:
        total += rows.big_sums.get(row, 0)
    return [
        total,
        count,
        cols["max"].item(row),
        cols["last_val"].item(row),
        cols["last_ts"].item(row),
        flags,
    ]


def _reads_whole(
    state: PartitionState,
    inst: Instance,
    start: int,
    end: int,
    filters: tuple[tuple[str, str], ...],
) -> bool:
    """Whether ``_read`` reads the stored period ``[start, end)`` whole under ``filters``:
    every filter names a declared value of a declared dimension (else it answers an error),
    and neither the timestamp bounds nor retention's cutoff move the range's start or end."""
    if start < TS_MIN_US or end > TS_MAX_US or state.cutoff > start:
        return False
    for key, value in filters:
        allowed = inst.dim_values(key)
        if allowed is None or value not in allowed:
            return False
    return True


def _filtered_wire(
    state: PartitionState,
    inst: Instance,
    row: int,
    flags: int,
    filters: tuple[tuple[str, str], ...],
) -> list[Any]:
    """The wire AggValue of a total row's cell rows that ``filters`` keep, folded as
    ``_read_num`` folds them for a whole period (its accumulator) or as ``_read_unique`` does
    (not recurring: the union of the sets), with the total row's alert flags. A row without
    cells is all in the empty cell, which no filter keeps."""
    tabs = state.tables
    rows = tabs.rows
    if not rows.has_cells[row]:
        return [0, 0, None, None, None, flags]
    wanted = frozenset(filters)
    cells = state.cells.cells
    kept = [
        crow
        for key, crow in tabs.cells.pairs_in(row << 16, (row + 1) << 16)
        if wanted.issubset(cells[key & 0xFFFF])
    ]
    if inst.unique:
        uniq = tabs.uniq
        members = None
        for crow in kept:
            found = uniq.get(crow)
            if found is not None:
                members = found.present if members is None else members | found.present
        return [0, 0 if members is None else len(members), None, None, None, flags]
    acc = _NumAcc()
    for crow in kept:
        _add_row(state, acc, crow)
    return acc.wire(flags)


def _read(
    state: PartitionState,
    code: str,
    account: int,
    start_us: int,
    end_us: int,
    filters: tuple[tuple[str, str], ...],
    group_by: tuple[str, ...],
) -> tuple[dict[Group, AggValue], int]:
    inst = _instance(state, code)
    for key, value in filters:
        allowed = inst.dim_values(key)
        if allowed is None:
            raise errors.InvalidRequestError(
                f"metric {code!r} has no dimension {key!r} to filter on"
            )
        if value not in allowed:
            raise errors.InvalidRequestError(
                f"dimension {key!r} of metric {code!r} has no value {value!r}"
            )
    for key in group_by:
        if inst.dim_values(key) is None:
            raise errors.InvalidRequestError(
                f"metric {code!r} has no dimension {key!r} to group by"
            )
    if start_us >= end_us:
        raise errors.InvalidRequestError(f"empty range [{start_us}, {end_us})")
    start = max(start_us, TS_MIN_US)
    end = min(end_us, TS_MAX_US)
    if state.cutoff > start:
        # Periods that ended at or before the cutoff are gone; the one holding it is not.
        start = max(start, inst.period_of(state.cutoff)[0])
    if start >= end:
        return {}, 0
    series = _series(state, inst, account)
    pieces = _plan(inst, series, start, end)
    view = CellView(state.cells.cells, filters, tuple(group_by))
    if inst.unique:
        return _read_unique(state, inst, account, series, pieces, view)
    return _read_num(state, inst, account, series, pieces, view)


def query(
    state: PartitionState,
    code: str,
    account: int,
    start_us: int,
    end_us: int,
    filters: tuple[tuple[str, str], ...] = (),
) -> AggValue:
    if not filters:
        inst = state.live.get(code)
        if inst is not None:
            found = whole_period(state, inst, account, start_us, end_us)
            if found is not None:
                return found
    groups, flags = _read(state, code, account, start_us, end_us, filters, ())
    return groups.get((), AggValue(alert_flags=flags))


def query_realtime(
    state: PartitionState, code: str, account: int, now_us: int
) -> tuple[AggValue, int, int]:
    inst = _instance(state, code)
    now_us = min(max(now_us, TS_MIN_US), TS_MAX_US)
    if inst.table >= 0 and inst.ps <= now_us < inst.pe:  # the period ingest is filling
        start, end = inst.ps, inst.pe
    else:
        start, end = inst.period_of(now_us)
    return query(state, code, account, start, end), start, end


def breakdown(
    state: PartitionState,
    code: str,
    account: int,
    start_us: int,
    end_us: int,
    group_by: tuple[str, ...],
    filters: tuple[tuple[str, str], ...] = (),
) -> tuple[tuple[Group, AggValue], ...]:
    groups, _ = _read(state, code, account, start_us, end_us, filters, group_by)
    return tuple(
        (group, value)
        for group, value in sorted(groups.items())
        if value.count > 0 or value.last_value is not None
    )


def list_events(
    state: PartitionState, account: int, since_us: int, until_us: int, after_offset: int, limit: int
) -> tuple[tuple[StoredEvent, ...], int | None]:
    """The account's visible events in offset order, one page (docs/semantics.md §10)."""
    visible_from = state.visible_from()
    out: list[StoredEvent] = []
    for chunk in state.events.readable():
        if chunk.end_offset() - 1 <= after_offset:
            continue
        rows = chunk.rows_of(account)
        if not len(rows):
            continue
        offsets = chunk.offsets(rows)
        ts = chunk.cols["ts"][rows]
        mids = chunk.cols["mid"][rows]
        lows = np.array([visible_from.get(m, NEVER) for m in mids.tolist()], dtype=np.float64)
        keep = (offsets > after_offset) & (ts >= since_us) & (ts < until_us) & (ts >= lows)
        rows, offsets = rows[keep], offsets[keep]
        order = np.argsort(offsets, kind="stable")
        for row in rows[order].tolist():
            if len(out) == limit:
                return tuple(out), out[-1].offset
            out.append(_event(state, chunk, row, account))
    return tuple(out), None


def _event(state: PartitionState, chunk: Any, row: int, account: int) -> StoredEvent:
    cols = chunk.cols
    op = cols.get("op")
    props = cols.get("props")
    mid = int(cols["mid"][row])
    return StoredEvent(
        account_id=account,
        metric_code=state.instances[mid].code,
        value=int(cols["value"][row]),
        timestamp_us=int(cols["ts"][row]),
        operation_type=int(op[row]) if op is not None else 0,
        properties=dict(state.props.maps[int(props[row])]) if props is not None else {},
        event_id=chunk.event_id(row),
        offset=int(chunk.offsets(np.array([row]))[0]),
    )


__all__ = [
    "INT64_MIN",
    "CellView",
    "breakdown",
    "fold_unique",
    "list_events",
    "query",
    "query_realtime",
]
