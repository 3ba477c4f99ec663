"""Aggregate rows: one row per (metric instance, period, account) total or dimension cell.

Theory of operation
-------------------
Every aggregate the partition keeps is a row of a few numpy columns, so a batch updates all of
them with grouped array operations (``np.add.at``, ``np.maximum.at``), one call per column per
batch whatever the number of rows it touches. A row holds:

    count                  events (for COUNT_UNIQUE: the size of the set, kept by ``uniques``)
    sum_lo, sum_hi         the exact sum as sum_hi * 2**32 + sum_lo, where each event adds its
                           low 32 bits (unsigned) to sum_lo and the rest (signed) to sum_hi:
                           neither can overflow before 2**31 events, and ``settle`` moves a row
                           whose limbs grow large into ``big_sums`` (a Python int), so a SUM is
                           exact whatever the values
    max                    the largest value
    last_ts, last_off, last_val   the latest event: greatest timestamp, ties to the later offset
    next_level             the smallest period total at which one of the metric's thresholds
                           fires next (``INT64_MAX``: none can); only rows whose total reaches
                           it are ever looked at one by one

A row with no events yet has count 0 and the sentinels below. Rows are never moved while the
state lives; retention frees them and ``compact`` renumbers the survivors. Only rows below
``size`` are ever read; ``allocate`` writes a new row's starting values (the capacity beyond
``size`` is zero in the columns that start at zero, and undefined in the others).

Memory: a row costs the bytes of the columns it touches. Columns grow by doubling into fresh
zeroed pages (the node maps large buffers separately, see ``node_cli.tune_malloc``), so the
unused capacity costs nothing; a zero column that no row has written yet (``sum_hi`` while
every value fits in 32 bits) is not copied when it grows, so it holds no memory at all; and
``next_level`` exists only once some row can reach a threshold (``levels`` reads
``INT64_MAX`` for every row until then).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]
I64 = np.dtype("<i8")
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_LOW32 = np.int64(0xFFFFFFFF)
_SHIFT32 = np.int64(32)
_LIMB_MAX = 2**61
# Events folded between two checks of every row's sum limbs: a limb moves by less than 2**32
# per event, so after this many it is still below 2**61 + 2**60 < 2**63.
_SETTLE_EVENTS = 2**28

COLUMNS = ("count", "sum_lo", "sum_hi", "max", "last_ts", "last_off", "last_val", "next_level")
_FILL = {
    "count": 0,
    "sum_lo": 0,
    "sum_hi": 0,
    "max": INT64_MIN,
    "last_ts": INT64_MIN,
    "last_off": INT64_MIN,
    "last_val": 0,
    "next_level": INT64_MAX,
}

_ZERO = frozenset(name for name in COLUMNS if _FILL[name] == 0)
_NONZERO = tuple(name for name in COLUMNS if _FILL[name] != 0 and name != "next_level")


def exact_sum(values: Array) -> int:
    """The exact sum of an int64 array (no overflow, whatever its length below 2**31)."""
    if not len(values):
        return 0
    low = int((values & _LOW32).sum())
    high = int((values >> _SHIFT32).sum())
    return (high << 32) + low


class RowStore:
    __slots__ = (
        "_best",
        "big_sums",
        "cols",
        "fired",
        "has_cells",
        "newest_ts",
        "since_settle",
        "size",
    )

    def __init__(self, capacity: int = 1024) -> None:
        self.size = 0
        self.since_settle = 0
        # No row's latest event is newer than this (a bound, not written: recomputed on load).
        self.newest_ts = INT64_MIN
        self._best = np.zeros(0, I64)
        # Every column but ``next_level``, which joins once a row's level is below INT64_MAX.
        self.cols: dict[str, Array] = {
            name: np.full(capacity, _FILL[name], I64) for name in COLUMNS if name != "next_level"
        }
        # 1 for a total row that has cell rows (derived from the cell index, not written).
        self.has_cells = np.zeros(capacity, np.uint8)
        self.big_sums: dict[int, int] = {}  # row -> exact sum, once the limbs grew large
        self.fired: dict[int, dict[str, int]] = {}  # row -> threshold code -> multiple fired

    def __getattr__(self, name: str) -> Array:  # count, sum_lo, ... as attributes
        try:
            return self.cols[name]
        except KeyError:
            raise AttributeError(name) from None

    def allocate(self, k: int, next_level: Array | int = INT64_MAX) -> Array:
        """``k`` new empty rows; their ids."""
        first = self.size
        need = first + k
        capacity = len(self.cols["count"])
        if need > capacity:
            # Columns that start at zero grow as fresh zero pages, which the kernel maps only
            # when a row is written; the others are filled below, row range by row range, so
            # no page of the unused capacity is touched (a page fault each costs more than
            # the copy).
            new_capacity = max(need, capacity * 2)
            for name, col in self.cols.items():
                if name in _ZERO:
                    grown = np.zeros(new_capacity, I64)
                    if col[:first].any():  # else the copy would only touch zero pages
                        grown[:first] = col[:first]
                else:
                    grown = np.empty(new_capacity, I64)
                    grown[:first] = col[:first]
                self.cols[name] = grown
            flags = np.zeros(new_capacity, np.uint8)
            flags[:first] = self.has_cells[:first]
            self.has_cells = flags
        self.size = need
        ids = np.arange(first, need, dtype=I64)
        cols = self.cols
        for name in _NONZERO:
            cols[name][first:need] = _FILL[name]
        if "next_level" in cols or np.any(np.asarray(next_level) != INT64_MAX):
            self._level_column()[first:need] = next_level
        return ids

    # ------------------------------------------------------------------ threshold levels

    def _level_column(self) -> Array:
        """The ``next_level`` column, made (every row INT64_MAX) on first need."""
        col = self.cols.get("next_level")
        if col is None:
            col = self.cols["next_level"] = np.full(len(self.cols["count"]), INT64_MAX, I64)
        return col

    def levels(self, rows: Array) -> Array:
        """The next threshold level of each of ``rows``."""
        col = self.cols.get("next_level")
        if col is None:
            return np.full(len(rows), INT64_MAX, I64)
        return col[rows]

    def set_level(self, row: int, level: int) -> None:
        if level != INT64_MAX or "next_level" in self.cols:
            self._level_column()[row] = level

    def column(self, name: str) -> Array:
        """Column ``name`` of the rows below ``size`` (``next_level`` made up if absent)."""
        if name == "next_level" and name not in self.cols:
            return np.full(self.size, INT64_MAX, I64)
        return self.cols[name][: self.size]

    def load_column(self, name: str, values: Array) -> None:
        """Set column ``name`` of the first ``len(values)`` rows (a snapshot's)."""
        if name == "next_level":
            if "next_level" in self.cols or (values != INT64_MAX).any():
                self._level_column()[: len(values)] = values
            return
        self.cols[name][: len(values)] = values

    # ------------------------------------------------------------------ batch updates

    def accumulate(
        self,
        rows: Array,
        values: Array,
        stamps: Array,
        offsets: Array,
        *,
        counts: bool = True,
        stamp: int | None = None,
    ) -> None:
        """Fold events (parallel columns, in log order) into ``rows`` (one per event).

        ``stamp`` says every event has that timestamp (a leader-stamped batch); ``counts=False``
        leaves count to the caller (COUNT_UNIQUE rows count set members).
        """
        cols = self.cols
        if counts:
            np.add.at(cols["count"], rows, 1)
        if int(values.min()) >= 0 and int(values.max()) <= _LOW32:
            np.add.at(cols["sum_lo"], rows, values)  # every value is its own low limb
        else:
            np.add.at(cols["sum_lo"], rows, values & _LOW32)
            np.add.at(cols["sum_hi"], rows, values >> _SHIFT32)
        np.maximum.at(cols["max"], rows, values)
        if stamp is not None and (
            stamp >= self.newest_ts or not (cols["last_ts"][rows] > stamp).any()
        ):
            # One timestamp, never older than what the rows hold: the latest event of a row is
            # its last one in the log, i.e. the one with the largest offset. Every event of a
            # row then writes that same winner, so repeated rows in the scatter are harmless.
            last_off = cols["last_off"]
            np.maximum.at(last_off, rows, offsets)
            won = last_off[rows]
            first = int(offsets[0])
            if int(offsets[-1]) - first == len(offsets) - 1:  # consecutive: a subtraction
                at = won - first
            else:  # a subset of the entry's events (still in log order)
                at = np.searchsorted(offsets, won)
            cols["last_val"][rows] = values[at]
            cols["last_ts"][rows] = stamp
            if stamp > self.newest_ts:
                self.newest_ts = stamp
        else:
            self._latest(rows, values, stamps, offsets)
        self.since_settle += len(rows)
        if self.since_settle >= _SETTLE_EVENTS:
            self.settle(np.arange(self.size))
            self.since_settle = 0

    def add_one(self, row: int, value: int, stamp: int, offset: int) -> None:
        """``accumulate`` of one event (offset above every offset the row holds)."""
        cols = self.cols
        cols["count"][row] += 1
        if 0 <= value <= 0xFFFFFFFF:
            cols["sum_lo"][row] += value
        else:
            cols["sum_lo"][row] += value & 0xFFFFFFFF
            cols["sum_hi"][row] += value >> 32
        if value > cols["max"][row]:
            cols["max"][row] = value
        if stamp >= cols["last_ts"][row]:  # ties go to the later offset: this one
            cols["last_ts"][row] = stamp
            cols["last_off"][row] = offset
            cols["last_val"][row] = value
            if stamp > self.newest_ts:
                self.newest_ts = stamp
        self.since_settle += 1
        if self.since_settle >= _SETTLE_EVENTS:
            self.settle(np.arange(self.size))
            self.since_settle = 0

    def _latest(self, rows: Array, values: Array, stamps: Array, offsets: Array) -> None:
        """Per row, the batch's latest event replaces the stored one unless that is later."""
        n = len(rows)
        low = int(stamps.min())
        if int(stamps.max()) - low >= INT64_MAX // max(n, 1) - 1:
            self._latest_sorted(rows, values, stamps, offsets)
            return
        # One key per event, ordered as "later wins" (timestamp, then position): the largest
        # key of each row is its latest event. The scratch column holds each row's best key
        # for the length of this call and is left as it was found.
        key = (stamps - low) * n + np.arange(n)
        scratch = self._scratch()
        np.maximum.at(scratch, rows, key)
        won = scratch[rows] == key
        scratch[rows] = INT64_MIN
        cols = self.cols
        targets = rows[won]
        ts = stamps[won]
        take = ts >= cols["last_ts"][targets]
        if not take.all():
            won = np.flatnonzero(won)[take]
            targets, ts = rows[won], stamps[won]
        cols["last_ts"][targets] = ts
        cols["last_off"][targets] = offsets[won]
        cols["last_val"][targets] = values[won]
        if len(ts):
            self.newest_ts = max(self.newest_ts, int(ts.max()))

    def _scratch(self) -> Array:
        """A column of INT64_MIN as long as the rows (not state: never written)."""
        if len(self._best) < len(self.cols["count"]):
            self._best = np.full(len(self.cols["count"]), INT64_MIN, I64)
        return self._best

    def _latest_sorted(self, rows: Array, values: Array, stamps: Array, offsets: Array) -> None:
        """``_latest`` for timestamps too far apart to share one key with the position."""
        n = len(rows)
        order = np.lexsort((np.arange(n), stamps, rows))
        sorted_rows = rows[order]
        last = np.flatnonzero(np.append(sorted_rows[1:] != sorted_rows[:-1], True))
        winners = order[last]
        targets = sorted_rows[last]
        cols = self.cols
        ts = stamps[winners]
        take = ts >= cols["last_ts"][targets]
        if not take.all():
            winners, targets, ts = winners[take], targets[take], ts[take]
        cols["last_ts"][targets] = ts
        cols["last_off"][targets] = offsets[winners]
        cols["last_val"][targets] = values[winners]
        if len(ts):
            self.newest_ts = max(self.newest_ts, int(ts.max()))

    def settle(self, rows: Array) -> None:
        """Carry or move sums whose limbs grew large. A limb moves by less than 2**32 per
        event, so checking every ``_SETTLE_EVENTS`` events keeps each far from overflow."""
        lo = self.cols["sum_lo"][rows]
        hi = self.cols["sum_hi"][rows]
        risky = (lo >= _LIMB_MAX) | (lo <= -_LIMB_MAX) | (hi >= _LIMB_MAX) | (hi <= -_LIMB_MAX)
        if not risky.any():
            return
        for row in np.unique(rows[risky]).tolist():
            self.big_sums[row] = self.total_sum(row)
            self.cols["sum_lo"][row] = 0
            self.cols["sum_hi"][row] = 0

    # ------------------------------------------------------------------ reads

    def total_sum(self, row: int) -> int:
        cols = self.cols
        exact = (int(cols["sum_hi"][row]) << 32) + int(cols["sum_lo"][row])
        return exact + self.big_sums.get(row, 0)

    def latest(self, row: int) -> tuple[int, int, int] | None:
        """(timestamp, offset, value) of the row's latest event, None for an empty row."""
        cols = self.cols
        ts = int(cols["last_ts"][row])
        if ts == INT64_MIN and int(cols["last_off"][row]) == INT64_MIN:
            return None
        return ts, int(cols["last_off"][row]), int(cols["last_val"][row])

    # ------------------------------------------------------------------ retention

    def compact(self, live: Array) -> Array:
        """Keep only the rows in ``live`` (sorted ids), renumbered 0..; returns old -> new
        (-1 for dropped rows) so indexes can follow."""
        mapping = np.full(self.size + 1, -1, I64)
        mapping[live] = np.arange(len(live), dtype=I64)
        for name, col in self.cols.items():
            kept = col[live]
            grown = np.full(max(len(live), 1024), _FILL[name], I64)
            grown[: len(live)] = kept
            self.cols[name] = grown
        flags = np.zeros(max(len(live), 1024), np.uint8)
        flags[: len(live)] = self.has_cells[live]
        self.has_cells = flags
        self.size = len(live)
        old_to_new = mapping.tolist()
        self.big_sums = {old_to_new[r]: s for r, s in self.big_sums.items() if old_to_new[r] >= 0}
        self.fired = {old_to_new[r]: f for r, f in self.fired.items() if old_to_new[r] >= 0}
        return mapping
