"""The domain model shared by the client and the server.

Events, metric schemas, enums, periods and the result types. Validation lives here too, so the
client rejects a malformed event before it is sent and the server applies exactly the same rules
to what arrives on the wire (``validate_*`` raise ``ValueError`` naming the problem; the client
wraps that in ``InvalidRequestError``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TypeGuard
from urllib.parse import urlsplit

from unimeter import limits, periods

_CODE_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


class AggType(enum.IntEnum):
    COUNT = 0
    SUM = 1
    MAX = 2
    LATEST = 3
    COUNT_UNIQUE = 4


class PeriodType(enum.IntEnum):
    FIXED = periods.FIXED
    CALENDAR = periods.CALENDAR
    DAY = periods.DAY
    WEEK = periods.WEEK


class DeliveryMode(enum.IntEnum):
    ASYNC = 0
    SYNC = 1


class OperationType(enum.IntEnum):
    NONE = 0
    ADD = 1
    REMOVE = 2


def scale(x: float | int) -> int:
    """A decimal quantity to the scaled integer the server stores (6 decimal places)."""
    return round(x * 1_000_000)


def unscale(n: int) -> float:
    return n / 1_000_000


# --------------------------------------------------------------------------- validation


def _utf8_len(s: str) -> int:
    return len(s.encode("utf-8"))


def validate_code(code: object, what: str = "metric code") -> str:
    if not isinstance(code, str) or not _CODE_RE.match(code):
        raise ValueError(f"{what} must be 1-64 characters of [A-Za-z0-9_.:-], got {code!r}")
    return code


# Metric codes already found valid: most checks are one set lookup instead of a regular
# expression (a producer or a reader names a few codes over and over). Bounded; cleared when full.
valid_codes: set[str] = set()
_VALID_CODES_MAX = 4096


def is_valid_code(code: object) -> TypeGuard[str]:
    """``validate_code`` as a yes or no, for an exact ``str`` (remembered when valid)."""
    if type(code) is not str:
        return False
    if code in valid_codes:
        return True
    if not _CODE_RE.match(code):
        return False
    if len(valid_codes) >= _VALID_CODES_MAX:
        valid_codes.clear()
    valid_codes.add(code)
    return True


def validate_webhook_url(url: object, threshold: str = "?") -> str:
    """An absolute http(s) URL with a host, at most ``webhook_url_bytes_max`` bytes, no
    spaces or control characters, and no user:password part (use the signature instead)."""
    problem = None
    if not isinstance(url, str):
        problem = f"must be a string, got {type(url).__name__}"
    elif len(url.encode()) > limits.webhook_url_bytes_max:
        problem = f"exceeds {limits.webhook_url_bytes_max} bytes"
    elif any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        problem = "contains a space or a control character"
    else:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problem = f"must be an http:// or https:// URL with a host, got {url!r}"
        elif parts.username is not None or parts.password is not None:
            problem = "must not carry a user or password (deliveries are signed instead)"
    if problem is not None:
        raise ValueError(f"threshold {threshold!r} webhook {problem}")
    return url  # type: ignore[return-value]


def validate_account_id(account_id: object) -> int:
    if isinstance(account_id, bool) or not isinstance(account_id, int):
        raise ValueError(f"account_id must be an integer, got {type(account_id).__name__}")
    if not 0 <= account_id <= limits.account_id_max:
        raise ValueError(f"account_id must be in [0, 2**64), got {account_id}")
    return account_id


def validate_value(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"value must be an integer (use scale() for decimals), got {type(value).__name__}"
        )
    if not limits.value_min <= value <= limits.value_max:
        raise ValueError(f"value {value} does not fit a signed 64-bit integer")
    return value


def validate_properties(properties: object) -> dict[str, str]:
    if not isinstance(properties, Mapping):
        raise ValueError(f"properties must be a str->str mapping, got {type(properties).__name__}")
    if len(properties) > limits.properties_per_event_max:
        raise ValueError(
            f"an event has at most {limits.properties_per_event_max} properties, "
            f"got {len(properties)}"
        )
    out: dict[str, str] = {}
    for key, value in properties.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"property {key!r} must map a str to a str")
        if not 1 <= _utf8_len(key) <= limits.property_key_bytes_max:
            raise ValueError(
                f"property key {key!r} must be 1-{limits.property_key_bytes_max} bytes"
            )
        if _utf8_len(value) > limits.property_value_bytes_max:
            raise ValueError(
                f"property {key!r} value exceeds {limits.property_value_bytes_max} bytes"
            )
        out[key] = value
    return out


def validate_event_id(event_id: object) -> str | None:
    if event_id is None:
        return None
    if not isinstance(event_id, str) or not 1 <= _utf8_len(event_id) <= limits.event_id_bytes_max:
        raise ValueError(f"event_id must be a string of 1-{limits.event_id_bytes_max} bytes")
    return event_id


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Event:
    account_id: int
    metric_code: str
    value: int = 1
    timestamp: datetime | None = None
    operation_type: OperationType = OperationType.NONE
    properties: Mapping[str, str] = field(default_factory=dict)
    event_id: str | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first problem with this event."""
        validate_account_id(self.account_id)
        validate_code(self.metric_code)
        validate_value(self.value)
        if self.timestamp is not None and (
            not isinstance(self.timestamp, datetime) or self.timestamp.tzinfo is None
        ):
            raise ValueError("timestamp must be a timezone-aware datetime or None")
        OperationType(self.operation_type)
        validate_properties(self.properties)
        validate_event_id(self.event_id)


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A stored event as ``list_events`` returns it."""

    account_id: int
    metric_code: str
    value: int
    timestamp: datetime
    operation_type: OperationType
    properties: dict[str, str]
    event_id: str | None
    offset: int


# --------------------------------------------------------------------------- schemas


@dataclass(frozen=True, slots=True)
class DimensionFilter:
    """A declared dimension: a property key and the values it may take."""

    key: str
    values: Sequence[str]


@dataclass(frozen=True, slots=True)
class AlertThreshold:
    """Fires when the period total first reaches ``value`` (in the aggregate's own units).
    With ``webhook`` (an http or https URL) every alert it fires is also POSTed there, at least
    once (docs/semantics.md, alerts)."""

    code: str
    value: int
    recurring: bool = False
    webhook: str | None = None


@dataclass(frozen=True, slots=True)
class MetricSchema:
    code: str
    agg_type: AggType
    period_type: PeriodType = PeriodType.FIXED
    billing_cycle_day: int = 1
    period_seconds: int = limits.period_seconds_default
    recurring: bool = False
    filters: Sequence[DimensionFilter] = ()
    thresholds: Sequence[AlertThreshold] = ()

    def validate(self) -> None:
        validate_code(self.code)
        AggType(self.agg_type)
        PeriodType(self.period_type)
        if isinstance(self.billing_cycle_day, bool) or not isinstance(self.billing_cycle_day, int):
            raise ValueError("billing_cycle_day must be an integer")
        if not 1 <= self.billing_cycle_day <= limits.billing_cycle_day_max:
            raise ValueError(f"billing_cycle_day must be 1-28, got {self.billing_cycle_day}")
        if isinstance(self.period_seconds, bool) or not isinstance(self.period_seconds, int):
            raise ValueError("period_seconds must be an integer")
        if self.period_seconds < limits.period_seconds_min:
            raise ValueError(f"period_seconds must be positive, got {self.period_seconds}")
        if len(self.filters) > limits.dimensions_per_metric_max:
            raise ValueError(f"a metric has at most {limits.dimensions_per_metric_max} dimensions")
        keys: set[str] = set()
        for dim in self.filters:
            if not isinstance(dim, DimensionFilter):
                raise ValueError("filters must be DimensionFilter objects")
            for value in dim.values or ("",):
                validate_properties({dim.key: value})
            if dim.key in keys:
                raise ValueError(f"dimension {dim.key!r} is declared twice")
            keys.add(dim.key)
            if not 1 <= len(dim.values) <= limits.dimension_values_max:
                raise ValueError(
                    f"dimension {dim.key!r} needs 1-{limits.dimension_values_max} values"
                )
            if len(set(dim.values)) != len(dim.values):
                raise ValueError(f"dimension {dim.key!r} lists a value twice")
        if len(self.thresholds) > limits.thresholds_per_metric_max:
            raise ValueError(f"a metric has at most {limits.thresholds_per_metric_max} thresholds")
        codes: set[str] = set()
        for th in self.thresholds:
            if not isinstance(th, AlertThreshold):
                raise ValueError("thresholds must be AlertThreshold objects")
            validate_code(th.code, "threshold code")
            if th.code in codes:
                raise ValueError(f"threshold {th.code!r} is declared twice")
            codes.add(th.code)
            validate_value(th.value)
            if th.recurring and th.value <= 0:
                raise ValueError(f"recurring threshold {th.code!r} needs a positive value")
            if th.webhook is not None:
                validate_webhook_url(th.webhook, th.code)

    def to_wire(self) -> dict[str, object]:
        return {
            "code": self.code,
            "agg": int(self.agg_type),
            "period": int(self.period_type),
            "cycle_day": self.billing_cycle_day,
            "period_s": self.period_seconds,
            "recurring": self.recurring,
            "dims": [[d.key, list(d.values)] for d in self.filters],
            "thresholds": [
                [t.code, t.value, t.recurring] + ([t.webhook] if t.webhook is not None else [])
                for t in self.thresholds
            ],
        }

    @classmethod
    def from_wire(cls, body: Mapping[str, object]) -> MetricSchema:
        """Build (and validate) a schema from its wire map; raises ``ValueError``."""

        def need(cond: bool, what: str) -> None:
            if not cond:
                raise ValueError(f"malformed metric schema: {what}")

        def integer(x: object, what: str) -> int:
            need(type(x) is int, f"{what} must be an integer")
            return x  # type: ignore[return-value]

        dims = body.get("dims", [])
        ths = body.get("thresholds", [])
        if not isinstance(dims, list) or not isinstance(ths, list):
            raise ValueError("malformed metric schema: dims and thresholds must be lists")
        filters = []
        for d in dims:
            need(isinstance(d, list) and len(d) == 2, "a dimension is [key, values]")
            need(isinstance(d[1], list), "dimension values must be a list")
            filters.append(DimensionFilter(key=d[0], values=tuple(d[1])))
        thresholds = []
        for t in ths:
            need(
                isinstance(t, list) and len(t) in (3, 4),
                "a threshold is [code, value, recurring, webhook?]",
            )
            need(type(t[2]) is bool, "threshold recurring must be a boolean")
            webhook = t[3] if len(t) == 4 else None
            need(webhook is None or type(webhook) is str, "threshold webhook must be a string")
            thresholds.append(
                AlertThreshold(
                    code=t[0],
                    value=integer(t[1], "threshold value"),
                    recurring=t[2],
                    webhook=webhook,
                )
            )
        recurring = body.get("recurring", False)
        need(type(recurring) is bool, "recurring must be a boolean")
        try:
            schema = cls(
                code=body.get("code"),  # type: ignore[arg-type]
                agg_type=AggType(integer(body.get("agg"), "agg")),
                period_type=PeriodType(integer(body.get("period", 0), "period")),
                billing_cycle_day=integer(body.get("cycle_day", 1), "cycle_day"),
                period_seconds=integer(
                    body.get("period_s", limits.period_seconds_default), "period_s"
                ),
                recurring=recurring,  # type: ignore[arg-type]
                filters=tuple(filters),
                thresholds=tuple(thresholds),
            )
            schema.validate()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed metric schema: {exc}") from None
        return schema

    def normalized(self) -> MetricSchema:
        """The same schema with tuples and plain ints, comparable with ``==``."""
        return MetricSchema.from_wire(self.to_wire())


# --------------------------------------------------------------------------- periods


@dataclass(frozen=True, slots=True)
class Period:
    """A half-open time range ``[start, end)``; both ends timezone-aware."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("period bounds must be timezone-aware datetimes")
        if self.end <= self.start:
            raise ValueError(f"period end {self.end} must be after its start {self.start}")


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


def _billing_period(day: int, now: datetime | None, back: int) -> Period:
    if not 1 <= day <= limits.billing_cycle_day_max:
        raise ValueError(f"billing cycle day must be 1-28, got {day}")
    start_us, end_us = periods.calendar_bounds(periods.to_us(_now(now)), day)
    for _ in range(back):
        start_us, end_us = periods.calendar_bounds(start_us - 1, day)
    return Period(periods.from_us(start_us), periods.from_us(end_us))


def current_billing_period(day: int, now: datetime | None = None) -> Period:
    """The billing month starting on ``day`` (1-28) that contains now."""
    return _billing_period(day, now, 0)


def last_billing_period(day: int, now: datetime | None = None) -> Period:
    return _billing_period(day, now, 1)


def current_month(now: datetime | None = None) -> Period:
    return current_billing_period(1, now)


def last_month(now: datetime | None = None) -> Period:
    return last_billing_period(1, now)


def _day_start(now: datetime | None) -> datetime:
    n = _now(now).astimezone(UTC)
    return datetime.combine(date(n.year, n.month, n.day), datetime.min.time(), UTC)


def today_utc(now: datetime | None = None) -> Period:
    start = _day_start(now)
    return Period(start, start + timedelta(days=1))


def yesterday_utc(now: datetime | None = None) -> Period:
    start = _day_start(now) - timedelta(days=1)
    return Period(start, start + timedelta(days=1))


def this_week_utc(now: datetime | None = None) -> Period:
    day = _day_start(now)
    start = day - timedelta(days=day.weekday())
    return Period(start, start + timedelta(days=7))


def last_week_utc(now: datetime | None = None) -> Period:
    this = this_week_utc(now)
    return Period(this.start - timedelta(days=7), this.start)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class IngestResult:
    n_stored: int
    n_duplicates: int
    n_rejected: int
    rejected: list[tuple[int, str]]
    last_offset: int | None


@dataclass(frozen=True, slots=True)
class AggValue:
    """An aggregate. ``count`` is the event count (the set size for COUNT_UNIQUE)."""

    sum: int = 0
    count: int = 0
    max: int | None = None
    last_value: int | None = None
    last_timestamp: datetime | None = None
    alert_flags: int = 0


@dataclass(frozen=True, slots=True)
class UsageResult:
    value: AggValue
    period_start: datetime
    period_end: datetime


@dataclass(frozen=True, slots=True)
class AlertRecord:
    account_id: int
    metric_code: str
    threshold_code: str
    value_at_cross: int
    triggered_at: datetime
    cursor: int
