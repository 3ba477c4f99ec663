"""Period arithmetic on integer microseconds since the Unix epoch, UTC.

Shared by the client (the public period helpers) and the server (which period an event falls
in). Everything here is pure integer arithmetic so that every replica, and every replay of a log,
computes the same bucket for the same timestamp.

A period type maps any timestamp to the half-open interval ``[start, end)`` containing it:
- FIXED: windows of ``period_seconds`` aligned to the epoch;
- CALENDAR: months starting on ``billing_cycle_day`` (1-28) at 00:00 UTC;
- DAY: UTC days; WEEK: ISO weeks starting Monday 00:00 UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

US_PER_S = 1_000_000
US_PER_DAY = 86_400 * US_PER_S
US_PER_WEEK = 7 * US_PER_DAY
# 1970-01-01 was a Thursday; the first Monday on or before it is 1969-12-29, 3 days earlier.
_WEEK_ORIGIN_US = -3 * US_PER_DAY

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Period type codes, mirrored by ``model.PeriodType`` (kept here to avoid an import cycle).
FIXED, CALENDAR, DAY, WEEK = 0, 1, 2, 3


def to_us(dt: datetime) -> int:
    """An aware datetime to integer microseconds since the epoch (exact, no float rounding)."""
    if dt.tzinfo is None:
        raise ValueError(f"datetime {dt!r} must be timezone-aware")
    delta = dt - EPOCH
    return (delta.days * 86_400 + delta.seconds) * US_PER_S + delta.microseconds


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def _month_start_us(year: int, month: int, day: int) -> int:
    return to_us(datetime(year, month, day, tzinfo=UTC))


def _shift_month(year: int, month: int, delta: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + delta
    return index // 12, index % 12 + 1


def calendar_bounds(ts_us: int, cycle_day: int) -> tuple[int, int]:
    """The billing month starting on ``cycle_day`` that contains ``ts_us``."""
    dt = from_us(ts_us)
    year, month = dt.year, dt.month
    if dt.day < cycle_day:
        year, month = _shift_month(year, month, -1)
    start = _month_start_us(year, month, cycle_day)
    ny, nm = _shift_month(year, month, 1)
    return start, _month_start_us(ny, nm, cycle_day)


def period_bounds(
    period_type: int, ts_us: int, period_seconds: int, cycle_day: int
) -> tuple[int, int]:
    """``[start, end)`` of the period of the given type containing ``ts_us``."""
    if period_type == FIXED:
        width = period_seconds * US_PER_S
        start = ts_us - ts_us % width
        return start, start + width
    if period_type == DAY:
        start = ts_us - ts_us % US_PER_DAY
        return start, start + US_PER_DAY
    if period_type == WEEK:
        offset = (ts_us - _WEEK_ORIGIN_US) % US_PER_WEEK
        start = ts_us - offset
        return start, start + US_PER_WEEK
    if period_type == CALENDAR:
        return calendar_bounds(ts_us, cycle_day)
    raise ValueError(f"unknown period type {period_type}")


def periods_covering(
    period_type: int, start_us: int, end_us: int, period_seconds: int, cycle_day: int
) -> list[tuple[int, int]]:
    """Every period overlapping ``[start_us, end_us)``, in time order."""
    out: list[tuple[int, int]] = []
    cursor = start_us
    while cursor < end_us:
        bounds = period_bounds(period_type, cursor, period_seconds, cycle_day)
        out.append(bounds)
        cursor = bounds[1]
    return out
