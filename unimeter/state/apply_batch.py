"""Applying a BatchEntry to the partition state, and what retention and schema changes do to
the aggregate tables (see ``aggregates.py`` for the row layout).

The hot path is ``apply``: gather the stored events as columns, append them to the event
store, find every event's period table and rows, fold them in with grouped array operations,
and replay event by event only the rows that may cross a threshold and the COUNT_UNIQUE rows
that must (REMOVEs, thresholds). Python runs per batch, per instance, per distinct row where it
must, and never per event on the common path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from pyroaring import BitMap64

from unimeter.model import AggType
from unimeter.state.aggregates import (
    REMOVE,
    NumState,
    UniqRow,
    may_cross,
)
from unimeter.state.alerts import crossings
from unimeter.state.entries import BatchEntry
from unimeter.state.gather import Gathered, gather
from unimeter.state.instances import INT64_MAX, Instance, Latest, NumBase, UniqBase, later
from unimeter.state.keyindex import MISSING
from unimeter.state.rows import COLUMNS
from unimeter.wire.messages import IngestReply, StoredAlert

if TYPE_CHECKING:
    from unimeter.state.partition_state import ApplyResult, PartitionState

Array = npt.NDArray[Any]
I64 = np.dtype("<i8")
U64 = np.dtype("<u8")
US_PER_DAY = 86_400_000_000
# Entries of at most this many events take the scalar fold when they can (``_fold_scalar``).
SCALAR_MAX = 8

# An alert found while applying: (event position in the entry, account, code, threshold, total)
Found = tuple[int, int, str, str, int]


def apply(state: PartitionState, index: int, entry: BatchEntry) -> ApplyResult:
    if len(entry.parts) == 1:
        lone = _lone_event(state, index, entry)
        if lone is not None:
            return lone
    day = entry.stamp_us // US_PER_DAY
    if state.newest_day is None or day > state.newest_day:
        state.advance(day)
    assert state.newest_day is not None
    _check_not_applied(state, entry)
    first = state.events.next_offset
    g = gather(entry, state.live, state.props, state.cells)
    alerts: list[StoredAlert] = []
    if g.n:
        if g.hashes is not None:
            stored = state.ids.add_new(g.hashes, state.newest_day)
            assert stored, "an event id is already stored"
        state.events.append(g.cols, g.id_data)
        found = _fold(state, g, first)
        found.sort(key=lambda f: f[0])
        alerts = [
            state.alerts.append(account, code, threshold, total, entry.stamp_us)
            for _, account, code, threshold, total in found
        ]
    return _result(state, index, entry, first, g.n, tuple(alerts))


def _check_not_applied(state: PartitionState, entry: BatchEntry) -> None:
    for part in entry.parts:
        if part.producer_id:
            assert state.producers.outcome(part.producer_id, part.seq) is None, (
                f"producer {part.producer_id} seq {part.seq} is already applied"
            )


def _result(
    state: PartitionState,
    index: int,
    entry: BatchEntry,
    first: int,
    n: int,
    alerts: tuple[StoredAlert, ...],
) -> ApplyResult:
    """Each part's reply (recorded for its producer) and the entry's result: its ``n`` stored
    events took offsets from ``first`` on, part after part."""
    from unimeter.state.partition_state import ApplyResult

    day = state.newest_day
    assert day is not None
    replies: list[IngestReply] = []
    offset = first
    for part in entry.parts:
        stored = part.n_stored
        reply = IngestReply(
            n_stored=stored,
            n_duplicates=part.n_duplicates,
            n_rejected=part.n_rejected,
            rejected=part.rejected,
            last_offset=offset + stored - 1 if stored else None,
            log_index=index,
        )
        offset += stored
        replies.append(reply)
        if part.producer_id:
            state.producers.record(part.producer_id, part.seq, reply, day)
    return ApplyResult(
        first_offset=first if n else None,
        last_offset=first + n - 1 if n else None,
        alerts=alerts,
        replies=tuple(replies),
    )


def _lone_event(state: PartitionState, index: int, entry: BatchEntry) -> ApplyResult | None:
    """``apply`` of a lone request's entry -- one part, one plain leader-stamped event, into
    a row that exists -- without gathering columns or folding arrays: the general path costs
    a lone event several times what its few scalar updates do. None for any other entry (or
    when the event needs a new day, period table or row), and ``apply`` takes its general
    path. Both leave the same state, byte for byte (``tests/test_apply_scalar.py``)."""
    part = entry.parts[0]
    b = part.batch
    ops = b.operation_types
    if (
        len(b.metric_index) != 1
        or len(b.metric_codes) != 1
        or part.n_stored != 1
        or part.id_hashes is not None
        or b.timestamps is not None
        or b.event_id_data is not None
        or b.property_columns
        or (ops is not None and ops[0])
    ):
        return None
    stamp = entry.stamp_us
    if state.newest_day is None or stamp // US_PER_DAY > state.newest_day:
        return None  # ``advance`` first: the general path
    inst = state.live.get(b.metric_codes[0])
    if inst is None or inst.unique or inst.thresholds or len(state.tables.cells):
        return None
    account = int(b.account_ids[0])
    row = _existing_row(state, inst, account, stamp)
    if row == MISSING:
        return None
    _check_not_applied(state, entry)
    value = int(b.values[0])
    first = state.events.next_offset
    state.events.append_one(inst.mid, account, stamp, value)
    state.tables.rows.add_one(row, value, stamp, first)
    return _result(state, index, entry, first, 1, ())


# --------------------------------------------------------------------------- tables


def _table(state: PartitionState, inst: Instance, start: int, end: int) -> int:
    found = inst.periods.get(start)
    if found is not None:
        return found[1]
    table = state.next_table
    state.next_table += 1
    inst.periods[start] = (end, table)
    return table


def _tables_of(state: PartitionState, inst: Instance, stamps: Array) -> Array:
    """The table of each timestamp's period (-1: the period already expired)."""
    lo, hi = int(stamps.min()), int(stamps.max())
    if inst.table >= 0 and inst.ps <= lo and hi < inst.pe:
        return np.full(len(stamps), inst.table, I64)
    starts = inst.starts_of(stamps)
    out = np.full(len(stamps), -1, I64)
    for start in np.unique(starts).tolist():
        _, end = inst.period_of(start)
        if end <= state.cutoff:
            continue  # stored, expired at once: never aggregated
        table = _table(state, inst, start, end)
        out[starts == start] = table
        if start >= inst.ps or inst.table < 0:
            inst.ps, inst.pe, inst.table = start, end, table
    return out


def _table_at(state: PartitionState, inst: Instance, stamp: int) -> int:
    """``_tables_of`` for one timestamp, without arrays when it is in the current period."""
    if inst.table >= 0 and inst.ps <= stamp < inst.pe:
        return inst.table
    return int(_tables_of(state, inst, np.array([stamp], I64))[0])


# --------------------------------------------------------------------------- the fold


def _fold(state: PartitionState, g: Gathered, first: int) -> list[Found]:
    n = g.n
    mids = g.col("mid")
    present = sorted(g.mids)  # every instance the parts' code tables name (a superset)
    insts = [state.instances[mid] for mid in present]
    tabs = state.tables
    stamp = g.stamp
    simple = (
        stamp is not None
        and not any(i.unique or i.thresholds for i in insts)
        and g.cols["cell"] is None
        and not len(tabs.cells)
    )
    if simple and stamp is not None and n <= SCALAR_MAX and _fold_scalar(state, g, stamp, first):
        return []
    table_of = np.full(present[-1] + 1, -1, I64)  # by mid, when each has one table
    level_of = np.full(present[-1] + 1, INT64_MAX, I64)  # a new row's first level, by mid
    for inst in insts:
        level_of[inst.mid] = inst.first_level(None)
    # Events ordered by instance (stable, so each instance's are in log order) make every
    # per-instance step work on a slice; a plain leader-stamped batch needs no order at all.
    order = None
    if not simple and len(present) > 1:
        # A counting sort: one pass per instance (there are few), no comparison sort.
        order = np.concatenate([np.flatnonzero(mids == mid) for mid in present])
    ev = _Events(g, order, first)
    bounds = {} if simple else _slices(ev.mid, present)
    current: dict[int, int] | None = None
    if stamp is not None:
        for inst in insts:
            table_of[inst.mid] = _table_at(state, inst, stamp)
        ev.tables = table_of[ev.mid]
        current = {mid: int(table_of[mid]) for mid in present if table_of[mid] >= 0}
    else:
        ev.tables = np.empty(n, I64)
        for inst in insts:
            sel = bounds[inst.mid]
            if sel.stop > sel.start:
                ev.tables[sel] = _tables_of(state, inst, ev.ts[sel])
    if not (ev.tables >= 0).all():  # some events expired on arrival: stored, not counted
        ev.keep(np.flatnonzero(ev.tables >= 0))
        if not len(ev.pos):
            return []
        bounds = {} if simple else _slices(ev.mid, present)
        current = None
    ev.slots = tabs.slots(ev.account)
    ev.rows = tabs.total_rows(ev.slots, ev.tables, ev.mid, level_of, current)
    found: list[Found] = []
    if simple:
        tabs.rows.accumulate(ev.rows, ev.value, ev.ts, ev.offset, stamp=g.stamp)
        return found
    # Rows whose total may reach a threshold: noted before anything changes.
    candidates: dict[int, NumState | None] = {}
    for inst in insts:
        if inst.thresholds:
            _note_candidates(state, inst, ev, bounds[inst.mid], candidates)
    for inst in insts:
        sel = bounds[inst.mid]
        if sel.stop == sel.start:
            continue
        _seed_cells(state, ev, sel)
        if inst.unique:
            _fold_unique(state, ev, sel, candidates, found)
            continue
        tabs.rows.accumulate(ev.rows[sel], ev.value[sel], ev.ts[sel], ev.offset[sel],
                             stamp=g.stamp)  # fmt: skip
        if ev.cell_rows is not None:
            cell_rows = ev.cell_rows[sel]
            with_cell = cell_rows >= 0
            if with_cell.all():
                tabs.rows.accumulate(cell_rows, ev.value[sel], ev.ts[sel], ev.offset[sel],
                                     stamp=g.stamp)  # fmt: skip
            elif with_cell.any():
                at = np.flatnonzero(with_cell) + sel.start
                tabs.rows.accumulate(ev.cell_rows[at], ev.value[at], ev.ts[at], ev.offset[at],
                                     stamp=g.stamp)  # fmt: skip
    if candidates:
        _replay_numeric(state, ev, candidates, found)
    return found


def _fold_scalar(state: PartitionState, g: Gathered, stamp: int, first: int) -> bool:
    """The simple fold (one stamp for all; no thresholds, COUNT_UNIQUE or cells) of a few
    events, one event at a time: numpy's cost per call, paid some ten times per column by the
    grouped fold, is far more than a few scalar updates (a lone request's entry holds one
    event). A lone event makes its account slot, period table and row as the grouped fold
    would; of several events, one that needs any of them sends the whole entry to the grouped
    fold (False, nothing changed), which numbers what it makes in key order. Either way both
    folds leave the same state byte for byte (``tests/test_apply_scalar.py``)."""
    mids = g.col("mid").tolist()
    if g.mids.difference(mids):
        return False  # a code without a stored event: the grouped fold still finds its table
    tabs = state.tables
    instances = state.instances
    targets: list[int] = []
    for mid, account in zip(mids, g.col("account").tolist(), strict=True):
        inst = instances[mid]
        row = _existing_row(state, inst, account, stamp)
        if row == MISSING:
            if g.n > 1:
                return False
            row = _make_row(state, inst, account, stamp)
            if row == MISSING:  # the period expired on arrival: stored, not counted
                return True
        targets.append(row)
    add_one = tabs.rows.add_one
    for offset, (row, value) in enumerate(zip(targets, g.col("value").tolist(), strict=True)):
        add_one(row, value, stamp, first + offset)
    return True


def _existing_row(state: PartitionState, inst: Instance, account: int, stamp: int) -> int:
    """The total row of ``account`` in the current period of ``inst`` holding ``stamp``, if
    both exist (the row cache first, then the totals index); MISSING otherwise."""
    if inst.table < 0 or not inst.ps <= stamp < inst.pe:
        return MISSING
    tabs = state.tables
    slot = tabs.slot_of(account)
    if slot == MISSING:
        return MISSING
    row = tabs.cache.get1(inst.mid, inst.table, slot)
    return row if row != MISSING else tabs.total_row(slot, inst.table)


def _make_row(state: PartitionState, inst: Instance, account: int, stamp: int) -> int:
    """The row of one event, making its table, slot and row as the grouped fold does."""
    table = _table_at(state, inst, stamp)
    if table < 0:
        return MISSING
    tabs = state.tables
    slots = tabs.slots(np.array([account], U64))
    mids = np.array([inst.mid], I64)
    levels = np.full(inst.mid + 1, inst.first_level(None), I64)
    rows = tabs.total_rows(slots, np.array([table], I64), mids, levels, {inst.mid: table})
    return int(rows[0])


def _slices(mids: Array, present: list[int]) -> dict[int, slice]:
    """Where each instance's events are in ``mids`` (sorted, or all one instance)."""
    if len(present) == 1:
        return {present[0]: slice(0, len(mids))}
    edges = np.searchsorted(mids, [*present, present[-1] + 1]).tolist()
    return {mid: slice(edges[i], edges[i + 1]) for i, mid in enumerate(present)}


def _note_candidates(state: PartitionState, inst: Instance, ev: _Events, sel: slice,
                     candidates: dict[int, NumState | None]) -> None:  # fmt: skip
    """Note the rows of ``inst`` whose total may reach its next threshold in this batch."""
    if sel.stop == sel.start:
        return
    tabs = state.tables
    if inst.unique and inst.recurring:
        # The total is the carried set's size, not the row's: replay every such row.
        candidates.update(dict.fromkeys(np.unique(ev.rows[sel]).tolist()))
        return
    adds = None
    if inst.unique and ev.op is not None:
        adds = (ev.op[sel] != REMOVE).astype(np.float64)
    for row in may_cross(inst, tabs.rows, ev.rows[sel], ev.value[sel], adds).tolist():
        candidates[row] = None if inst.unique else NumState(tabs.rows, row)


class _Events:
    """The counted events of a batch, as the fold sees them (parallel arrays), ordered by
    instance when the fold asked for it (``pos`` keeps each event's position in the entry)."""

    __slots__ = (
        "account",
        "cell",
        "cell_rows",
        "mid",
        "offset",
        "op",
        "pos",
        "rows",
        "slots",
        "tables",
        "ts",
        "value",
    )

    def __init__(self, g: Gathered, order: Array | None, first: int) -> None:
        def pick(name: str) -> Array | None:
            col = g.cols[name]
            if col is None:
                return None
            return col if order is None else col[order]

        self.pos = np.arange(g.n, dtype=I64) if order is None else order
        self.mid: Array = pick("mid")  # type: ignore[assignment]
        self.account: Array = pick("account")  # type: ignore[assignment]
        self.ts: Array = pick("ts")  # type: ignore[assignment]
        self.value: Array = pick("value")  # type: ignore[assignment]
        self.op = pick("op")
        self.cell = pick("cell")
        self.offset = self.pos + first
        self.tables: Array = self.pos
        self.rows: Array = self.pos
        self.slots: Array = self.pos
        self.cell_rows: Array | None = None

    def keep(self, at: Array) -> None:
        """Only the events at positions ``at`` (ascending) of these arrays."""
        for name in ("account", "mid", "offset", "pos", "tables", "ts", "value"):
            setattr(self, name, getattr(self, name)[at])
        if self.op is not None:
            self.op = self.op[at]
        if self.cell is not None:
            self.cell = self.cell[at]


def _seed_cells(state: PartitionState, ev: _Events, sel: slice) -> None:
    """Find the cell row of every event of ``sel`` whose total row has (or now gets) cells,
    creating the cell-0 row of a total row that gets its first cells from the total before
    this batch."""
    tabs = state.tables
    cell = ev.cell[sel] if ev.cell is not None else None
    if (cell is None or not cell.any()) and not len(tabs.cells):
        return
    has_cells = tabs.rows.has_cells
    rows = ev.rows[sel]
    need = has_cells[rows] != 0
    new_rows = rows[:0]
    if cell is not None:
        new_rows = np.unique(rows[(cell != 0) & ~need])
        if len(new_rows):
            # Every event of a row with cells updates a cell row (cell 0 for none),
            # including the batch's events before the one that gave it its first cells.
            has_cells[new_rows] = 1
            need = has_cells[rows] != 0
    if not need.any():
        return
    if cell is None:
        cell = np.zeros(len(rows), np.int32)
    if len(new_rows):
        seeds = tabs.cell_rows_for(new_rows, np.zeros(len(new_rows), I64))
        store = tabs.rows
        for name in COLUMNS:
            if name != "next_level":
                store.cols[name][seeds] = store.cols[name][new_rows]
        for total, seed in zip(new_rows.tolist(), seeds.tolist(), strict=True):
            if total in store.big_sums:
                store.big_sums[seed] = store.big_sums[total]
            uniq = tabs.uniq.get(total)
            if uniq is not None:
                tabs.uniq[seed] = UniqRow(uniq.present.copy())
    if ev.cell_rows is None:
        ev.cell_rows = np.full(len(ev.rows), -1, I64)
    mid = int(ev.mid[sel.start])
    tables, slots = ev.tables[sel], ev.slots[sel]
    if need.all():
        ev.cell_rows[sel] = tabs.cell_rows_of(mid, tables, slots, rows, cell)
    else:
        at = np.flatnonzero(need)
        ev.cell_rows[at + sel.start] = tabs.cell_rows_of(mid, tables[at], slots[at], rows[at],
                                                         cell[at])  # fmt: skip


# --------------------------------------------------------------------------- COUNT_UNIQUE


def _fold_unique(
    state: PartitionState,
    ev: _Events,
    sel: slice,
    candidates: dict[int, NumState | None],
    found: list[Found],
) -> None:
    """Apply one COUNT_UNIQUE instance's events (``sel`` of ``ev``): one set update per
    distinct row, or event by event, in log order, where the order matters (REMOVEs, rows that
    may cross a threshold, and recurring instances with thresholds, whose periods' totals
    depend on each other)."""
    inst = state.instances[int(ev.mid[sel.start])]
    if inst.recurring and inst.thresholds:
        _one_by_one(state, ev, list(range(sel.start, sel.stop)), found)
        return
    rows = ev.rows[sel]
    slow: list[int] = []  # rows replayed event by event
    if candidates:
        slow = [r for r in np.unique(rows).tolist() if r in candidates]
    if ev.op is not None:
        ops = ev.op[sel]
        if (ops == REMOVE).any():
            slow = sorted(set(slow) | set(rows[ops == REMOVE].tolist()))
    if slow:
        replay = np.isin(rows, slow)
        _one_by_one(state, ev, (np.flatnonzero(replay) + sel.start).tolist(), found)
        keep = np.flatnonzero(~replay)
        if not len(keep):
            return
        _add_members(state, inst, rows[keep], ev.value[sel][keep],
                     None if ev.cell_rows is None else ev.cell_rows[sel][keep],
                     ev.account[sel][keep])  # fmt: skip
        return
    _add_members(state, inst, rows, ev.value[sel],
                 None if ev.cell_rows is None else ev.cell_rows[sel], ev.account[sel])  # fmt: skip


def _add_members(state: PartitionState, inst: Instance, rows: Array, values: Array,
                 cell_rows: Array | None, accounts: Array) -> None:  # fmt: skip
    """ADD/NONE events (no REMOVE, no threshold to watch) into their rows' sets: grouped by
    row with one sort, then one roaring call per distinct row."""
    tabs = state.tables
    uniq = tabs.uniq
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    distinct = ordered[starts].tolist()
    members = values[order].tolist()  # pyroaring takes lists fastest
    bounds = [*starts.tolist(), len(ordered)]
    sizes: list[int] = []
    for i, row in enumerate(distinct):
        urow = uniq.get(row)
        if urow is None:
            urow = uniq[row] = UniqRow()
        a, b = bounds[i], bounds[i + 1]
        if b - a == 1:
            urow.present.add(members[a])
        else:
            urow.present.update(members[a:b])
        sizes.append(len(urow.present))
    tabs.rows.count[distinct] = sizes
    if inst.recurring:  # the cached recurring sets of these accounts are stale now
        for account in set(accounts.tolist()):
            inst.ucache.pop(account, None)
    if cell_rows is not None and (cell_rows >= 0).any():
        with_cell = np.flatnonzero(cell_rows >= 0)
        _add_members(state, inst, cell_rows[with_cell], values[with_cell], None,
                     accounts[with_cell])  # fmt: skip


def _one_by_one(
    state: PartitionState, ev: _Events, positions: list[int], found: list[Found]
) -> None:
    """COUNT_UNIQUE events exactly as the semantics state them, in the given (log) order."""
    tabs = state.tables
    touched: dict[int, Instance] = {}
    for i in positions:
        row = int(ev.rows[i])
        inst = state.instances[int(ev.mid[i])]
        urow = _uniq(tabs.uniq, row)
        account = int(ev.account[i])
        start = _start_of_table(inst, int(ev.tables[i]))
        value = int(ev.value[i])
        op = int(ev.op[i]) if ev.op is not None else 0
        crow = int(ev.cell_rows[i]) if ev.cell_rows is not None else -1
        _unique_event(state, inst, row, urow, account, start, value, op, crow)
        tabs.rows.count[row] = len(urow.present)
        touched[row] = inst
        if inst.thresholds:
            total = unique_total(state, inst, account, start, urow)
            fired, crossed = crossings(tabs.rows.fired.get(row), inst.thresholds, total)
            if fired:
                tabs.rows.fired[row] = fired
            for code in crossed or ():
                found.append((int(ev.pos[i]), account, inst.code, code, total))
    for row, inst in touched.items():
        if inst.thresholds:
            count_level(tabs, inst, row)


def _uniq(uniq: dict[int, UniqRow], row: int) -> UniqRow:
    found = uniq.get(row)
    if found is None:
        found = uniq[row] = UniqRow()
    return found


def _start_of_table(inst: Instance, table: int) -> int:
    for start, (_, t) in inst.periods.items():
        if t == table:
            return start
    raise AssertionError(f"table {table} is not a period of {inst.code}")


def _unique_event(
    state: PartitionState,
    inst: Instance,
    row: int,
    urow: UniqRow,
    account: int,
    start: int,
    value: int,
    op: int,
    crow: int,
) -> None:
    """One COUNT_UNIQUE event, exactly (docs/semantics.md §6), with the recurring cache."""
    tabs = state.tables
    if op == REMOVE:
        urow.present.discard(value)
        if urow.removed is None:
            urow.removed = BitMap64()
        urow.removed.add(value)
        found = tabs.cell_rows(row)
        if found is not None:
            for c in found[1].tolist():
                member = tabs.uniq.get(c)
                if member is not None and value in member.present:
                    member.present.discard(value)
                    tabs.rows.count[c] = len(member.present)
    else:
        urow.present.add(value)
        if crow >= 0:
            cell = _uniq(tabs.uniq, crow)
            cell.present.add(value)
            tabs.rows.count[crow] = len(cell.present)
    cached = inst.ucache.get(account) if inst.ucache else None
    if cached is not None:
        cached_start, current = cached
        if start == cached_start:
            if op == REMOVE:
                current.discard(value)
            else:
                current.add(value)
        elif start > cached_start:
            # ``start`` is a brand-new newest period: its set is the carried one plus this op.
            current = current.copy()
            if op == REMOVE:
                current.discard(value)
            else:
                current.add(value)
            inst.ucache[account] = (start, current)
        else:
            del inst.ucache[account]  # a late event changes what flows into the cached period


def fold_unique(carried: BitMap64, urow: UniqRow) -> BitMap64:
    """set(P) from set(P_prev): values carried in, minus those removed in P, plus P's."""
    out = carried.copy()
    if urow.removed is not None:
        out.difference_update(urow.removed)
    out |= urow.present
    return out


def recurring_set(state: PartitionState, inst: Instance, account: int, start: int) -> BitMap64:
    """The recurring unique set of period ``start`` (stored) for ``account``, caching it when
    ``start`` is the account's newest stored period."""
    cached = inst.ucache.get(account)
    if cached is not None and cached[0] == start:
        return cached[1]
    tabs = state.tables
    base = inst.base.get(account)
    current = base.present.copy() if isinstance(base, UniqBase) else BitMap64()
    slot = tabs.slot_of(account)
    newest = True
    for s in sorted(inst.periods):
        row = tabs.total_row(slot, inst.periods[s][1])
        if row == MISSING:
            continue
        if s > start:
            newest = False
            break
        urow = tabs.uniq.get(row)
        if urow is not None:  # a row made for this batch's events may have none yet
            current = fold_unique(current, urow)
    if newest:
        inst.ucache[account] = (start, current)
    return current


def unique_total(
    state: PartitionState, inst: Instance, account: int, start: int, urow: UniqRow
) -> int:
    if inst.recurring:
        return len(recurring_set(state, inst, account, start))
    return len(urow.present)


# --------------------------------------------------------------------------- thresholds


def count_level(tabs: Any, inst: Instance, row: int) -> None:
    level = inst.first_level(tabs.rows.fired.get(row))
    tabs.rows.set_level(row, min(level, INT64_MAX))


def _replay_numeric(
    state: PartitionState,
    ev: _Events,
    candidates: dict[int, NumState | None],
    found: list[Found],
) -> None:
    """Event by event, the crossings of the numeric rows that may cross (their state noted
    before the batch was folded in)."""
    tabs = state.tables
    numeric = {row: s for row, s in candidates.items() if s is not None}
    if not numeric:
        return
    mask = np.isin(ev.rows, np.fromiter(numeric, I64, len(numeric)))
    for i in np.flatnonzero(mask).tolist():
        row = int(ev.rows[i])
        inst = state.instances[int(ev.mid[i])]
        noted = numeric[row]
        assert noted is not None
        total = noted.step(inst.agg, int(ev.value[i]), int(ev.ts[i]), int(ev.offset[i]))
        fired, crossed = crossings(tabs.rows.fired.get(row), inst.thresholds, total)
        if fired:
            tabs.rows.fired[row] = fired
        for code in crossed or ():
            found.append((int(ev.pos[i]), int(ev.account[i]), inst.code, code, total))
    for row in numeric:
        count_level(tabs, state.instances[_mid_of_row(ev, row)], row)


def _mid_of_row(ev: _Events, row: int) -> int:
    return int(ev.mid[int(np.flatnonzero(ev.rows == row)[0])])


def refresh_levels(state: PartitionState, inst: Instance) -> None:
    """The instance's thresholds changed: recompute the next level of each of its rows."""
    tabs = state.tables
    for _, table in inst.periods.values():
        keys, rows = tabs.totals.items()
        mine = rows[(keys & np.uint64(0xFFFFFFFF)) == np.uint64(table)]
        for row in mine.tolist():
            count_level(tabs, inst, row)


# --------------------------------------------------------------------------- retention


def _rows_of_table(state: PartitionState, table: int) -> tuple[Array, Array]:
    """(slots, total rows) of one table."""
    keys, rows = state.tables.totals.items()
    mine = (keys & np.uint64(0xFFFFFFFF)) == np.uint64(table)
    return (keys[mine] >> np.uint64(32)).astype(I64), rows[mine]


def drop_tables(state: PartitionState, inst: Instance, starts: list[int]) -> None:
    """Forget the aggregate rows of these periods of ``inst`` (their events stay in the store
    until retention drops them)."""
    if not starts:
        return
    tabs = state.tables
    dropped = np.array([inst.periods.pop(s)[1] for s in starts], U64)
    keys, rows = tabs.totals.items()
    gone = np.isin(keys & np.uint64(0xFFFFFFFF), dropped)
    gone_rows = rows[gone]
    tabs.totals.keep(lambda k, v: ~gone)
    if len(tabs.cells) and len(gone_rows):
        ckeys, crows = tabs.cells.items()
        cgone = np.isin((ckeys >> np.uint64(16)).astype(I64), gone_rows)
        gone_rows = np.concatenate([gone_rows, crows[cgone]])
        tabs.cells.keep(lambda k, v: ~cgone)
    for row in gone_rows.tolist():
        tabs.uniq.pop(row, None)
        tabs.rows.fired.pop(row, None)
        tabs.rows.big_sums.pop(row, None)
    if inst.ps in starts:
        inst.ps = inst.pe = 0
        inst.table = -1
    _maybe_compact_rows(state)


def expire_periods(state: PartitionState, inst: Instance, starts: list[int]) -> None:
    """Drop expired periods (oldest first), carrying into the bases what recurring reads need."""
    tabs = state.tables
    # Kept whatever the schema says now: a later update may make the metric recurring.
    if inst.live and (inst.unique or inst.agg == AggType.LATEST):
        for start in starts:
            slots, rows = _rows_of_table(state, inst.periods[start][1])
            accounts = tabs.slot_accounts[slots].tolist()
            for account, row in zip(accounts, rows.tolist(), strict=True):
                _fold_into_base(state, inst, account, row)
    for start in starts:
        for account, (cached_start, _) in list(inst.ucache.items()):
            if cached_start <= start:
                del inst.ucache[account]
    drop_tables(state, inst, starts)


def _fold_into_base(state: PartitionState, inst: Instance, account: int, row: int) -> None:
    """Carry a dropped period's state into the account's base (periods in time order)."""
    tabs = state.tables
    cells = tabs.cell_rows(row)
    if inst.unique:
        urow = tabs.uniq.get(row) or UniqRow()
        ubase = inst.base.get(account)
        if not isinstance(ubase, UniqBase):
            ubase = inst.base[account] = UniqBase()
        if cells is not None and ubase.cells is None:
            ubase.cells = {0: ubase.present.copy()} if ubase.present else {}
        if urow.removed is not None:
            ubase.present.difference_update(urow.removed)
            if ubase.cells is not None:
                for members in ubase.cells.values():
                    members.difference_update(urow.removed)
        ubase.present |= urow.present
        if ubase.cells is not None:
            pairs = (
                [
                    (c, (tabs.uniq.get(r) or UniqRow()).present)
                    for c, r in zip(cells[0].tolist(), cells[1].tolist(), strict=True)
                ]
                if cells is not None
                else [(0, urow.present)]
            )
            for cell, members in pairs:
                if cell in ubase.cells:
                    ubase.cells[cell] |= members
                else:
                    ubase.cells[cell] = members.copy()
        return
    assert inst.agg == AggType.LATEST
    newest = tabs.rows.latest(row)
    if newest is None:
        return
    nbase = inst.base.get(account)
    if not isinstance(nbase, NumBase):
        nbase = inst.base[account] = NumBase()
    if cells is not None and nbase.cells is None:
        nbase.cells = {0: nbase.last} if nbase.last is not None else {}
    nbase.last = later(nbase.last, newest)
    if nbase.cells is not None:
        latests: list[tuple[int, Latest | None]] = (
            [
                (c, tabs.rows.latest(r))
                for c, r in zip(cells[0].tolist(), cells[1].tolist(), strict=True)
            ]
            if cells is not None
            else [(0, newest)]
        )
        for cell, latest in latests:
            merged = later(nbase.cells.get(cell), latest)
            if merged is not None:
                nbase.cells[cell] = merged


def _maybe_compact_rows(state: PartitionState) -> None:
    """Renumber the rows once more than half of them are dropped ones."""
    tabs = state.tables
    live_count = len(tabs.totals) + len(tabs.cells)
    if tabs.rows.size < 4096 or live_count * 2 > tabs.rows.size:
        return
    _, total_rows = tabs.totals.items()
    _, cell_rows = tabs.cells.items()
    live = np.sort(np.concatenate([total_rows, cell_rows]))
    mapping = tabs.rows.compact(live)
    tabs.cache.clear()
    tabs.cell_cache.clear()
    tabs.totals.remap_values(mapping)
    if len(tabs.cells):
        ckeys, cvals = tabs.cells.items()
        # Cell keys embed their total row: renumber those too, then re-sort.
        totals = mapping[(ckeys >> np.uint64(16)).astype(I64)].astype(U64)
        new_keys = totals << np.uint64(16) | (ckeys & np.uint64(0xFFFF))
        order = np.argsort(new_keys, kind="stable")
        from unimeter.state.keyindex import KeyIndex

        tabs.cells = KeyIndex(new_keys[order], mapping[cvals][order])
    old_to_new = mapping.tolist()
    tabs.uniq = {old_to_new[r]: u for r, u in tabs.uniq.items() if old_to_new[r] >= 0}


def compact_props(state: PartitionState) -> None:
    """Keep only the property maps some visible stored event references, renumbering them.
    Events no read can see any more (expired, in a chunk kept for newer ones) lose theirs."""
    visible_from = state.visible_from()
    columns = []
    for chunk in state.events.chunks:
        col = chunk.cols.get("props")
        if col is None:
            continue
        mids = chunk.cols["mid"][: chunk.size]
        lows = np.full(int(mids.max()) + 1, INT64_MAX, I64)
        for mid, low in visible_from.items():
            if mid < len(lows):
                lows[mid] = low
        col[: chunk.size][chunk.cols["ts"][: chunk.size] < lows[mids]] = 0
        columns.append(col[: chunk.size])
    live = np.unique(np.concatenate([np.zeros(1, np.int32), *columns]))
    mapping = state.props.compact(live)
    for chunk in state.events.chunks:
        col = chunk.cols.get("props")
        if col is not None:
            chunk.cols["props"] = mapping[col]
