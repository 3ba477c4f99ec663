"""Metric instances and their periods: which table an event's aggregate rows belong to.

A *metric instance* is one life of a metric code. The SchemaEntry that first shows a code with a
given (generation, shape) creates it; a later SchemaEntry that drops the code or shows it with
another generation or shape kills it. Events remember the instance (``mid``), not the code, so a
new generation never sees an older generation's events.

Each period of an instance that holds rows gets a *table id*, unique in the partition; a total
row is keyed by (account slot, table id) and a cell row by (total row, cell id), see
``aggregates.py``. Retention drops a period's table whole.

When retention drops the periods of an (instance, account), what later reads still need from
them is folded into a *base*: the carried unique set (recurring COUNT_UNIQUE) and the latest
event (recurring LATEST), in total and per cell.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pyroaring import BitMap64

from unimeter import periods
from unimeter.model import AggType, MetricSchema
from unimeter.state.entries import LiveMetric

Array = npt.NDArray[Any]
Latest = tuple[int, int, int]  # (timestamp, offset, value): ordered as "later wins"
Threshold = tuple[str, int, bool]  # (code, value, recurring)
INT64_MAX = 2**63 - 1

_US_PER_S = np.int64(periods.US_PER_S)
_US_PER_DAY = np.int64(periods.US_PER_DAY)
_US_PER_WEEK = np.int64(periods.US_PER_WEEK)
_WEEK_ORIGIN = np.int64(-3 * periods.US_PER_DAY)


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


def period_starts(period_type: int, stamps: Array, period_seconds: int, cycle_day: int) -> Array:
    """The start of the period holding each timestamp (``periods.period_bounds``, vectorised)."""
    if period_type == periods.FIXED:
        width = np.int64(period_seconds) * _US_PER_S
        return stamps - stamps % width
    if period_type == periods.DAY:
        return stamps - stamps % _US_PER_DAY
    if period_type == periods.WEEK:
        return stamps - (stamps - _WEEK_ORIGIN) % _US_PER_WEEK  # type: ignore[no-any-return]
    assert period_type == periods.CALENDAR, period_type
    moments = stamps.astype("datetime64[us]")
    months = moments.astype("datetime64[M]")
    day_of_month = (moments - months.astype("datetime64[us]")).astype(np.int64) // _US_PER_DAY
    months = np.where(day_of_month < cycle_day - 1, months - np.timedelta64(1, "M"), months)
    starts = months.astype("datetime64[us]") + np.timedelta64(cycle_day - 1, "D")
    return starts.astype(np.int64)


class Instance:
    """One life of a metric code on this partition, with the bookkeeping of its tables."""

    __slots__ = (
        "agg",
        "base",
        "code",
        "cycle_day",
        "dims",
        "live",
        "metric",
        "mid",
        "pe",
        "period_seconds",
        "period_type",
        "periods",
        "ps",
        "recurring",
        "shape",
        "table",
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
        # start -> (end, table id) of every period holding rows, in start order of creation.
        self.periods: dict[int, tuple[int, int]] = {}
        self.base: dict[int, Base] = {}  # account -> what dropped periods carry forward
        # account -> (period start, the recurring unique set of that period): only ever for the
        # account's newest stored period, so recurring thresholds stay cheap per event.
        self.ucache: dict[int, tuple[int, BitMap64]] = {}
        # The period ingest is filling: [ps, pe) and its table id (-1: none yet).
        self.ps = self.pe = 0
        self.table = -1
        self.metric = metric
        self.recurring = False
        self.dims: tuple[tuple[str, frozenset[str]], ...] = ()
        self.thresholds: tuple[Threshold, ...] = ()
        self.configure(metric)

    def configure(self, metric: LiveMetric) -> bool:
        """Take the mutable parts of a schema (dimensions, thresholds, recurrence); True when
        the thresholds changed (rows then need their next levels recomputed)."""
        schema = metric.schema
        assert shape_of(schema) == self.shape
        self.metric = metric
        self.dims = tuple(sorted((d.key, frozenset(d.values)) for d in schema.filters))
        thresholds = tuple((t.code, int(t.value), bool(t.recurring)) for t in schema.thresholds)
        recurring = bool(schema.recurring)
        changed = thresholds != self.thresholds or recurring != self.recurring
        if changed:
            self.ucache.clear()
        self.thresholds = thresholds
        self.recurring = recurring
        return changed

    def dim_values(self, key: str) -> frozenset[str] | None:
        for k, values in self.dims:
            if k == key:
                return values
        return None

    @property
    def carries(self) -> bool:
        """Whether a period's state flows into the next (recurring COUNT_UNIQUE and LATEST)."""
        return self.recurring and (self.unique or self.agg == AggType.LATEST)

    def period_of(self, ts: int) -> tuple[int, int]:
        """``[start, end)`` of the period holding ``ts``."""
        return periods.period_bounds(self.period_type, ts, self.period_seconds, self.cycle_day)

    def starts_of(self, stamps: Array) -> Array:
        return period_starts(self.period_type, stamps, self.period_seconds, self.cycle_day)

    def end_of(self, start: int) -> int:
        return self.periods[start][0]

    def table_of(self, start: int) -> int | None:
        found = self.periods.get(start)
        return None if found is None else found[1]

    def first_level(self, fired: dict[str, int] | None) -> int:
        """The smallest total at which a threshold fires next, given what has fired."""
        level = INT64_MAX
        for code, value, recurring in self.thresholds:
            done = fired.get(code, 0) if fired else 0
            if recurring:
                level = min(level, (done + 1) * value)
            elif not done:
                level = min(level, value)
        return level
