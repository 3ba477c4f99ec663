"""Between the public types (datetimes, dicts, ``Period``) and the wire messages (integer
microseconds, sorted tuples). Pure functions; every argument check raises
``InvalidRequestError`` before a request is built, so a bad call fails locally.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TypeVar

from unimeter import limits, model, periods
from unimeter.errors import InvalidRequestError, ProtocolError
from unimeter.model import AggValue, AlertRecord, EventRecord, OperationType, Period, UsageResult
from unimeter.wire.messages import AggReply, BreakdownReply, Reply, StoredAlert, StoredEvent

_R = TypeVar("_R", bound=Reply)


def expect(reply: Reply, cls: type[_R]) -> _R:
    """The reply as the class its request kind promises (the codec already matched kinds)."""
    if not isinstance(reply, cls):
        raise ProtocolError(f"expected {cls.__name__}, got {type(reply).__name__}")
    return reply


_ACCOUNT_ID_MAX = limits.account_id_max


def account_id(value: object) -> int:
    if type(value) is int and 0 <= value <= _ACCOUNT_ID_MAX:
        return value
    try:
        return model.validate_account_id(value)
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from None


def metric_code(value: object) -> str:
    if model.is_valid_code(value):  # a set lookup for a code seen before
        return value
    try:
        return model.validate_code(value)  # a str subclass, or the problem
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from None


def period_us(period: object) -> tuple[int, int]:
    if not isinstance(period, Period):
        raise InvalidRequestError(
            f"period must be a Period (e.g. current_month()), got {type(period).__name__}"
        )
    return periods.to_us(period.start), periods.to_us(period.end)


def time_range_us(since: object, until: object) -> tuple[int, int]:
    for name, value in (("since", since), ("until", until)):
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise InvalidRequestError(f"{name} must be a timezone-aware datetime")
    assert isinstance(since, datetime) and isinstance(until, datetime)
    since_us, until_us = periods.to_us(since), periods.to_us(until)
    if until_us <= since_us:
        raise InvalidRequestError(f"until ({until}) must be after since ({since})")
    return since_us, until_us


def filters(value: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """A filter dict as the wire's sorted pairs (sorted so equal filters encode equally)."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise InvalidRequestError(f"filters must be a str->str dict, got {type(value).__name__}")
    if len(value) > limits.dimensions_per_metric_max:
        raise InvalidRequestError(
            f"a query filters on at most {limits.dimensions_per_metric_max} dimensions"
        )
    try:
        checked = model.validate_properties(value)
    except ValueError as exc:
        raise InvalidRequestError(f"filters: {exc}") from None
    return tuple(sorted(checked.items()))


def group_by(keys: Iterable[str]) -> tuple[str, ...]:
    if isinstance(keys, str) or not isinstance(keys, Iterable):
        raise InvalidRequestError("group_by must be a list of dimension keys")
    out = tuple(keys)
    if not 1 <= len(out) <= limits.group_by_keys_max:
        raise InvalidRequestError(f"group_by needs 1-{limits.group_by_keys_max} keys")
    if len(set(out)) != len(out):
        raise InvalidRequestError("group_by names a key twice")
    for key in out:
        if not isinstance(key, str) or not 1 <= len(key.encode()) <= limits.property_key_bytes_max:
            raise InvalidRequestError(f"group_by key {key!r} is not a dimension key")
    return out


def cursor(value: object, name: str) -> int:
    if value is None:
        return -1
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequestError(f"{name} must be a cursor from an earlier record, got {value!r}")
    return value


def usage_result(reply: AggReply) -> UsageResult:
    return UsageResult(
        value=reply.value,
        period_start=periods.from_us(reply.period_start_us),
        period_end=periods.from_us(reply.period_end_us),
    )


def breakdown(reply: BreakdownReply) -> dict[frozenset[tuple[str, str]], AggValue]:
    out: dict[frozenset[tuple[str, str]], AggValue] = {}
    for cell, value in reply.cells:
        key = frozenset(cell)
        if key in out:
            raise ProtocolError(f"breakdown lists cell {sorted(key)} twice")
        out[key] = value
    return out


def event_record(stored: StoredEvent) -> EventRecord:
    try:
        operation_type = OperationType(stored.operation_type)
    except ValueError:
        raise ProtocolError(f"stored event has operation type {stored.operation_type}") from None
    return EventRecord(
        account_id=stored.account_id,
        metric_code=stored.metric_code,
        value=stored.value,
        timestamp=periods.from_us(stored.timestamp_us),
        operation_type=operation_type,
        properties=dict(stored.properties),
        event_id=stored.event_id,
        offset=stored.offset,
    )


def alert_record(stored: StoredAlert) -> AlertRecord:
    return AlertRecord(
        account_id=stored.account_id,
        metric_code=stored.metric_code,
        threshold_code=stored.threshold_code,
        value_at_cross=stored.value_at_cross,
        triggered_at=periods.from_us(stored.triggered_at_us),
        cursor=stored.cursor,
    )
