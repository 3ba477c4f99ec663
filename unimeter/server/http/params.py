"""Reading the query string of a request: accounts, metrics, periods, filters, cursors.

Each reader raises ``InvalidRequestError`` naming the parameter, so a bad URL is answered with
a problem that says what to fix. The checks of the value itself (ranges, lengths, allowed
characters) are the Python client's (``client/convert.py``), so both protocols accept and
refuse the same things.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

from multidict import MultiMapping

from unimeter import model, periods
from unimeter.client import convert
from unimeter.errors import InvalidRequestError
from unimeter.json_model import parse_time, time_text
from unimeter.model import Period

# The named periods of GET /v1/usage, as the client's period helpers compute them.
NAMED_PERIODS: dict[str, Callable[[], Period]] = {
    "current_month": model.current_month,
    "last_month": model.last_month,
    "today": model.today_utc,
    "yesterday": model.yesterday_utc,
    "this_week": model.this_week_utc,
    "last_week": model.last_week_utc,
}
BILLING_PERIODS: dict[str, Callable[[int], Period]] = {
    "current_billing_period": model.current_billing_period,
    "last_billing_period": model.last_billing_period,
}

Query = MultiMapping[str]

_named_cache: dict[tuple[str, int, int], Bounds] = {}
_NAMED_CACHE_MAX = 64


def one(query: Query, name: str) -> str | None:
    """The parameter's value, None when absent; given twice is an error."""
    values = query.getall(name, [])
    if len(values) > 1:
        raise InvalidRequestError(f"query parameter {name!r} is given {len(values)} times")
    return values[0] if values else None


def required(query: Query, name: str) -> str:
    value = one(query, name)
    if value is None or value == "":
        raise InvalidRequestError(f"query parameter {name!r} is required")
    return value


def integer(query: Query, name: str, default: int | None = None) -> int:
    text = one(query, name)
    if text is None:
        if default is None:
            raise InvalidRequestError(f"query parameter {name!r} is required")
        return default
    if not (text.isdigit() or (text.startswith("-") and text[1:].isdigit())):
        raise InvalidRequestError(f"query parameter {name!r} must be an integer, got {text!r}")
    return int(text)


def account_id(query: Query, name: str = "account_id") -> int:
    return convert.account_id(integer(query, name))


def metric_code(query: Query) -> str:
    code = one(query, "metric")
    if code is None:
        code = required(query, "metric_code")
    return convert.metric_code(code)


class Bounds(NamedTuple):
    """A period in microseconds, and as the RFC 3339 text the answers show."""

    start_us: int
    end_us: int
    start_text: str
    end_text: str


def _bounds(found: Period) -> Bounds:
    return bounds_of(*convert.period_us(found))


@functools.lru_cache(maxsize=256)
def bounds_of(start_us: int, end_us: int) -> Bounds:
    """A period's bounds with their text (kept: a few periods are read over and over)."""
    return Bounds(start_us, end_us, time_text(start_us), time_text(end_us))


def period(query: Query) -> Bounds:
    """``period=<name>`` (default ``current_month``) or ``from=...&to=...`` (RFC 3339)."""
    named = one(query, "period")
    start, end = one(query, "from"), one(query, "to")
    if start is not None or end is not None:
        if named is not None:
            raise InvalidRequestError("give either period or from/to, not both")
        if start is None or end is None:
            raise InvalidRequestError("from and to go together")
        since, until = parse_time(start, "from"), parse_time(end, "to")
        if until <= since:
            raise InvalidRequestError(f"to ({end}) must be after from ({start})")
        return _bounds(Period(since, until))
    name = named or "current_month"
    day = integer(query, "billing_cycle_day", 1) if name in BILLING_PERIODS else 0
    key = (name, day, time.time_ns() // 1000 // periods.US_PER_DAY)
    cached = _named_cache.get(key)
    if cached is not None:
        return cached
    if name in NAMED_PERIODS:
        found = NAMED_PERIODS[name]()
    elif name in BILLING_PERIODS:
        try:
            found = BILLING_PERIODS[name](day)
        except ValueError as exc:
            raise InvalidRequestError(f"billing_cycle_day: {exc}") from None
    else:
        names = ", ".join([*NAMED_PERIODS, *BILLING_PERIODS])
        raise InvalidRequestError(f"period must be one of {names}; got {name!r}")
    if len(_named_cache) >= _NAMED_CACHE_MAX:
        _named_cache.clear()
    # Every named period starts and ends at midnight UTC, so it is the same all day: computing
    # it (calendar arithmetic and text, microseconds per request) once per name and day is
    # enough.
    bounds = _named_cache[key] = _bounds(found)
    return bounds


def filters(query: Query) -> tuple[tuple[str, str], ...]:
    """Every ``filter=key=value`` (repeatable), as the wire's sorted pairs."""
    pairs: dict[str, str] = {}
    for text in query.getall("filter", []):
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise InvalidRequestError(f"filter must be key=value, got {text!r}")
        if key in pairs:
            raise InvalidRequestError(f"filter names {key!r} twice")
        pairs[key] = value
    return convert.filters(pairs)


def group_by(query: Query) -> tuple[str, ...]:
    """``group_by=a,b`` or ``group_by=a&group_by=b``; empty when absent."""
    keys = [k for text in query.getall("group_by", []) for k in text.split(",") if k]
    return convert.group_by(keys) if keys else ()


def time_range(query: Query) -> tuple[int, int]:
    """``since``/``until`` (RFC 3339) in microseconds; every stored event when absent."""
    since_text, until_text = one(query, "since"), one(query, "until")
    since = 0 if since_text is None else periods.to_us(parse_time(since_text, "since"))
    if until_text is None:
        # Nothing is stored further ahead than the future skew allows; a day covers it.
        until = periods.to_us(datetime.now(UTC)) + periods.US_PER_DAY
    else:
        until = periods.to_us(parse_time(until_text, "until"))
    if until <= since:
        raise InvalidRequestError("until must be after since")
    return since, until


def cursor(query: Query, name: str) -> int:
    """A paging cursor from an earlier answer; -1 (from the start) when absent."""
    value = integer(query, name, -1)
    if value < -1:
        raise InvalidRequestError(f"{name} must be a cursor from an earlier answer")
    return value


def stream_cursors(text: str) -> dict[int, int]:
    """An alert stream's resume point, ``"partition:cursor,..."`` (an SSE event id)."""
    out: dict[int, int] = {}
    for part in filter(None, text.split(",")):
        p, sep, c = part.partition(":")
        if not sep or not p.isdigit() or not c.isdigit():
            raise InvalidRequestError(
                f"an alert stream cursor is partition:cursor,... (an event id); got {text!r}"
            )
        out[int(p)] = int(c)
    return out


def stream_id(cursors: dict[int, int]) -> str:
    return ",".join(f"{p}:{c}" for p, c in sorted(cursors.items()) if c >= 0)
