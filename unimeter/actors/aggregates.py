"""The aggregates of one metric instance: per (account, period) records and carried bases.

Theory of operation
-------------------
A *metric instance* is one life of a metric code. The SchemaEntry that first shows a code with a
given (generation, shape) creates it; a later SchemaEntry that drops the code or shows it with
another generation or shape kills it. Events remember the instance (not the code) they were
applied to, so a new generation never sees an older generation's events.

Each instance keeps ``periods[period_start][account] -> record``, period-major: the hot loop
finds an event's record with one dictionary lookup (its instance caches the period's map), and
retention drops a whole period's map at once. A record is both the running aggregate of that
(account, period) *and* the bucket of that period's stored events, so an edge query scans only
its own bucket and retention drops the aggregate and its events together. Events are packed
four words per event into one ``array('q')``: ``offset, timestamp, value, packed`` with
``packed = props_id << 22 | cell_id << 2 | op``.

Dimensions: an event's cell is decided when it is applied (the metric's dimensions at that
moment) and kept in ``packed``. A record's ``cells`` is None while every event it holds is in the
empty cell (id 0); the first event with another cell creates ``cells`` with cell 0 seeded from
the totals so far, so ``cells`` always partitions the record's events.

When retention drops the periods of an (instance, account), what later reads still need from
them is folded into a *base*: the carried unique set (recurring COUNT_UNIQUE) and the latest
event (recurring LATEST).
"""

from __future__ import annotations

from array import array
from typing import Any

from pyroaring import BitMap64

from unimeter import periods
from unimeter.actors.entries import LiveMetric
from unimeter.model import AggType, MetricSchema, OperationType

# Layout of one event in a record's ``ev`` array.
EV_STRIDE = 4
EV_OFFSET, EV_TS, EV_VALUE, EV_PACKED = 0, 1, 2, 3
OP_MASK = 0b11
CELL_SHIFT = 2
CELL_BITS = 20
CELL_MASK = (1 << CELL_BITS) - 1
PROPS_SHIFT = CELL_SHIFT + CELL_BITS

REMOVE = int(OperationType.REMOVE)

Latest = tuple[int, int, int]  # (timestamp, offset, value): ordered as "later wins"
Threshold = tuple[str, int, bool]  # (code, value, recurring)


def new_events() -> array[int]:
    return array("q")


class NumCell:
    """One dimension cell of a COUNT/SUM/MAX/LATEST record; ``last`` is a row of the record."""

    __slots__ = ("count", "last", "max", "sum")

    def __init__(self, count: int, total: int, maximum: int, last: int) -> None:
        self.count = count
        self.sum = total
        self.max = maximum
        self.last = last


class NumRec:
    """(account, period) aggregate of a COUNT/SUM/MAX/LATEST metric plus its events.

    The count is ``len(ev) // EV_STRIDE``; ``last`` is the row of the latest event (greatest
    timestamp, ties to the later row), so its value and timestamp live in ``ev`` only.
    """

    __slots__ = ("cells", "eids", "ev", "fired", "last", "max", "sum")

    def __init__(self, total: int, maximum: int, ev: array[int]) -> None:
        self.sum = total
        self.max = maximum
        self.last = 0
        self.fired: dict[str, int] | None = None
        self.ev = ev
        self.eids: list[str | None] | None = None
        self.cells: dict[int, NumCell] | None = None


class UniqRec:
    """(account, period) state of a COUNT_UNIQUE metric plus its events.

    ``present``: values whose last operation in the period was ADD/NONE. ``removed``: values
    REMOVEd at any moment of the period (a later ADD does not take them out; see
    docs/semantics.md for why this equals the spec for totals and is right for cells).
    """

    __slots__ = ("cells", "eids", "ev", "fired", "present", "removed")

    def __init__(self, present: BitMap64, ev: array[int]) -> None:
        self.present = present
        self.removed: BitMap64 | None = None
        self.fired: dict[str, int] | None = None
        self.ev = ev
        self.eids: list[str | None] | None = None
        self.cells: dict[int, BitMap64] | None = None


class DeadBucket:
    """The stored events of a record whose metric instance is gone (listable until expiry)."""

    __slots__ = ("eids", "ev")

    def __init__(self, ev: array[int], eids: list[str | None] | None) -> None:
        self.ev = ev
        self.eids = eids


Record = NumRec | UniqRec | DeadBucket


class NumBase:
    """The latest event of the dropped periods, in total and per cell."""

    __slots__ = ("cells", "last")

    def __init__(self) -> None:
        self.last: Latest | None = None
        self.cells: dict[int, Latest] | None = None


class UniqBase:
    """The carried unique set as of the end of the last dropped period, in total and per cell."""

    __slots__ = ("cells", "present")

    def __init__(self) -> None:
        self.present = BitMap64()
        self.cells: dict[int, BitMap64] | None = None


Base = NumBase | UniqBase


def shape_of(schema: MetricSchema) -> tuple[int, int, int, int]:
    """What a metric instance cannot change without invalidating its aggregates."""
    return (
        int(schema.agg_type),
        int(schema.period_type),
        int(schema.period_seconds),
        int(schema.billing_cycle_day),
    )


def later(a: Latest | None, b: Latest | None) -> Latest | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if a[:2] >= b[:2] else b


def row_latest(ev: array[int], row: int) -> Latest:
    at = row * EV_STRIDE
    return (ev[at + EV_TS], ev[at + EV_OFFSET], ev[at + EV_VALUE])


class Instance:
    """One life of a metric code on this partition, with every aggregate it owns."""

    __slots__ = (
        "agg",
        "base",
        "cell_cache",
        "code",
        "cycle_day",
        "dims",
        "live",
        "metric",
        "mid",
        "pe",
        "pe2",
        "period_index",
        "period_seconds",
        "period_type",
        "periods",
        "ps",
        "ps2",
        "recs",
        "recs2",
        "recurring",
        "shape",
        "thresholds",
        "ucache",
        "unique",
    )

    def __init__(self, mid: int, metric: LiveMetric) -> None:
        schema = metric.schema
        self.mid = mid
        self.code = schema.code
        self.shape = shape_of(schema)
        self.agg = int(schema.agg_type)
        self.unique = self.agg == AggType.COUNT_UNIQUE
        self.period_type = int(schema.period_type)
        self.period_seconds = int(schema.period_seconds)
        self.cycle_day = int(schema.billing_cycle_day)
        self.live = True
        self.periods: dict[int, dict[int, Record]] = {}
        # start -> (start, end) of every period with records, interned so all maps share keys.
        self.period_index: dict[int, tuple[int, int]] = {}
        self.base: dict[int, Base] = {}
        # account -> (period start, the recurring unique set of that period): only ever for the
        # account's newest stored period, kept so recurring thresholds stay O(1) per event.
        self.ucache: dict[int, tuple[int, BitMap64]] = {}
        # Two-slot cache of the periods the hot loop is filling: [ps, pe) and its record map.
        # Values are typed Any because the loop knows the instance's record class.
        self.ps = self.pe = self.ps2 = self.pe2 = 0
        self.recs: dict[int, Any] = {}
        self.recs2: dict[int, Any] = {}
        self.metric = metric
        self.recurring = False
        self.dims: tuple[tuple[str, frozenset[str]], ...] = ()
        self.thresholds: tuple[Threshold, ...] = ()
        self.cell_cache: dict[int, int] = {}
        self.configure(metric)

    def configure(self, metric: LiveMetric) -> None:
        """Take the mutable parts of a schema (dimensions, thresholds, recurrence)."""
        schema = metric.schema
        assert shape_of(schema) == self.shape
        self.metric = metric
        dims = tuple(sorted((d.key, frozenset(d.values)) for d in schema.filters))
        if dims != self.dims:
            self.dims = dims
            self.cell_cache = {}
        thresholds = tuple((t.code, int(t.value), bool(t.recurring)) for t in schema.thresholds)
        recurring = bool(schema.recurring)
        if thresholds != self.thresholds or recurring != self.recurring:
            self.ucache.clear()
        self.thresholds = thresholds
        self.recurring = recurring

    def dim_values(self, key: str) -> frozenset[str] | None:
        for k, values in self.dims:
            if k == key:
                return values
        return None

    def period_of(self, ts: int) -> tuple[int, int]:
        """``[start, end)`` of the period holding ``ts`` (pure: reads use this)."""
        return periods.period_bounds(self.period_type, ts, self.period_seconds, self.cycle_day)

    def end_of(self, start: int) -> int:
        return self.period_index[start][1]

    def recs_for(self, ts: int, cutoff: int) -> dict[int, Any] | None:
        """The record map of the period holding ``ts``, made current in the hot-loop cache;
        None when that period ended at or before ``cutoff`` (already expired)."""
        if self.ps2 <= ts < self.pe2:
            self.ps, self.pe, self.recs, self.ps2, self.pe2, self.recs2 = (
                self.ps2,
                self.pe2,
                self.recs2,
                self.ps,
                self.pe,
                self.recs,
            )
            return self.recs
        start, end = self.period_of(ts)
        if end <= cutoff:
            return None
        interned = self.period_index.get(start)
        if interned is None:
            interned = self.period_index[start] = (start, end)
        start = interned[0]
        recs = self.periods.get(start)
        if recs is None:
            recs = self.periods[start] = {}
        self.ps2, self.pe2, self.recs2 = self.ps, self.pe, self.recs
        self.ps, self.pe, self.recs = start, end, recs
        return recs

    def forget_cached_periods(self) -> None:
        self.ps = self.pe = self.ps2 = self.pe2 = 0
        self.recs = {}
        self.recs2 = {}

    def series(self, account: int) -> dict[int, Record]:
        """The account's records by period start (a fresh dict; for reads and rare paths)."""
        return {s: recs[account] for s, recs in self.periods.items() if account in recs}


# --------------------------------------------------------------------------- unique records


def apply_unique(
    inst: Instance,
    recs: dict[int, Any],
    account: int,
    start: int,
    offset: int,
    ts: int,
    value: int,
    op: int,
    packed: int,
    cell: int,
    event_id: str | None,
) -> UniqRec:
    rec: UniqRec | None = recs.get(account)
    if rec is None:
        rec = recs[account] = UniqRec(BitMap64(), array("q", (offset, ts, value, packed)))
        if event_id is not None:
            rec.eids = [event_id]
    else:
        ev = rec.ev
        rows = len(ev) // EV_STRIDE
        ev.append(offset)
        ev.append(ts)
        ev.append(value)
        ev.append(packed)
        if rec.eids is not None:
            rec.eids.append(event_id)
        elif event_id is not None:
            rec.eids = [None] * rows
            rec.eids.append(event_id)
    if op == REMOVE:
        rec.present.discard(value)
        if rec.removed is None:
            rec.removed = BitMap64()
        rec.removed.add(value)
        if rec.cells is not None:
            for members in rec.cells.values():
                members.discard(value)
    else:
        cells = rec.cells
        if cells is None and cell:
            cells = rec.cells = {0: rec.present.copy()} if rec.present else {}
        rec.present.add(value)
        if cells is not None:
            target = cells.get(cell)
            if target is None:
                cells[cell] = BitMap64([value])
            else:
                target.add(value)
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
    return rec


def fold_unique(carried: BitMap64, rec: UniqRec) -> BitMap64:
    """set(P) from set(P_prev): values carried in, minus those removed in P, plus P's."""
    out = carried.copy()
    if rec.removed is not None:
        out.difference_update(rec.removed)
    out |= rec.present
    return out


def recurring_set(inst: Instance, account: int, start: int) -> BitMap64:
    """The recurring unique set of period ``start`` (stored) for ``account``, caching it when
    ``start`` is the account's newest stored period."""
    cached = inst.ucache.get(account)
    if cached is not None and cached[0] == start:
        return cached[1]
    base = inst.base.get(account)
    current = base.present.copy() if isinstance(base, UniqBase) else BitMap64()
    newest = True
    for s in sorted(inst.periods):
        rec = inst.periods[s].get(account)
        if rec is None:
            continue
        if s > start:
            newest = False
            break
        assert isinstance(rec, UniqRec)
        current = fold_unique(current, rec)
    if newest:
        inst.ucache[account] = (start, current)
    return current


def unique_total(inst: Instance, account: int, start: int, rec: UniqRec) -> int:
    if inst.recurring:
        return len(recurring_set(inst, account, start))
    return len(rec.present)


def num_total(agg: int, rec: NumRec) -> int:
    if agg == AggType.SUM:
        return rec.sum
    if agg == AggType.MAX:
        return rec.max
    if agg == AggType.LATEST:
        return rec.ev[rec.last * EV_STRIDE + EV_VALUE]
    return len(rec.ev) // EV_STRIDE


# --------------------------------------------------------------------------- bases


def fold_into_base(inst: Instance, account: int, rec: Record) -> None:
    """Carry a dropped period's state into the account's base (records in time order)."""
    if isinstance(rec, UniqRec):
        base = inst.base.get(account)
        if not isinstance(base, UniqBase):
            base = inst.base[account] = UniqBase()
        if rec.cells is not None and base.cells is None:
            base.cells = {0: base.present.copy()} if base.present else {}
        if rec.removed is not None:
            base.present.difference_update(rec.removed)
            if base.cells is not None:
                for members in base.cells.values():
                    members.difference_update(rec.removed)
        base.present |= rec.present
        if base.cells is not None:
            for cell, members in (rec.cells or {0: rec.present}).items():
                if cell in base.cells:
                    base.cells[cell] |= members
                else:
                    base.cells[cell] = members.copy()
    elif isinstance(rec, NumRec) and inst.agg == AggType.LATEST:
        base = inst.base.get(account)
        if not isinstance(base, NumBase):
            base = inst.base[account] = NumBase()
        ev = rec.ev
        newest = row_latest(ev, rec.last)
        if rec.cells is not None and base.cells is None:
            base.cells = {0: base.last} if base.last is not None else {}
        base.last = later(base.last, newest)
        if base.cells is not None:
            pairs = (
                [(c, row_latest(ev, cell.last)) for c, cell in rec.cells.items()]
                if rec.cells is not None
                else [(0, newest)]
            )
            for cell_id, latest in pairs:
                base.cells[cell_id] = later(base.cells.get(cell_id), latest)  # type: ignore[assignment]
