"""The JSON form of the model, shared by the HTTP API and the ``unimeter`` command.

One spelling everywhere: the field names of the Python client (``account_id``, ``metric_code``,
``value``, ``timestamp``, ``operation_type``, ``properties``, ``event_id``; a schema's
``code``, ``agg_type``, ``period_type``, ``filters``, ``thresholds``...), enum members as
lower-case names (``"count_unique"``, ``"add"``), times as RFC 3339 text in UTC with
microseconds (``"2025-03-01T12:00:00.000000Z"``). Values stay the scaled integers the server
stores (``scale(1.5) == 1_500_000``). What a person or a script writes is read leniently where
that cannot be ambiguous (enum names in any case, ``Z`` or an offset, a date for midnight UTC)
and strictly everywhere else: an unknown field is an error naming it, so a typo never turns
into a silently ignored property.

Every reader raises ``InvalidRequestError`` naming the field (and the event's index) at fault.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any, TypeVar

import orjson

from unimeter import periods
from unimeter.errors import InvalidRequestError
from unimeter.model import (
    AggType,
    AggValue,
    AlertRecord,
    AlertThreshold,
    DimensionFilter,
    Event,
    EventRecord,
    MetricSchema,
    OperationType,
    PeriodType,
)
from unimeter.wire.messages import StoredAlert, StoredEvent

_E = TypeVar("_E", bound=enum.IntEnum)

EVENT_FIELDS = frozenset(
    {"account_id", "metric_code", "value", "timestamp", "operation_type", "properties", "event_id"}
)
# Read back from an export and ignored, so an export can be imported again as it is.
_EVENT_FIELDS_IGNORED = frozenset({"offset"})
_EVENT_FIELDS_READ = EVENT_FIELDS | _EVENT_FIELDS_IGNORED
SCHEMA_FIELDS = frozenset(
    {
        "code", "agg_type", "period_type", "billing_cycle_day", "period_seconds", "recurring",
        "filters", "thresholds",
    }
)  # fmt: skip


# --------------------------------------------------------------------------- times


def parse_time(text: object, what: str) -> datetime:
    """RFC 3339 text (``Z`` or an offset; fractions allowed) or a bare date (midnight UTC)."""
    if not isinstance(text, str):
        raise InvalidRequestError(f"{what} must be RFC 3339 text, got {type(text).__name__}")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequestError(
            f"{what}: {text!r} is not an RFC 3339 time (e.g. 2025-03-01T12:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        if len(text) == 10:  # a date alone: the day starts at midnight UTC
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        raise InvalidRequestError(f"{what}: {text!r} needs a time zone (add Z for UTC)")
    return parsed


def time_text(value: datetime | int) -> str:
    """A datetime, or microseconds since the epoch, as RFC 3339 UTC text."""
    dt = periods.from_us(value) if isinstance(value, int) else value.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------- enums


def enum_member(cls: type[_E], value: object, what: str) -> _E:
    """An enum member from its name in any case (``"count"``) or its number."""
    if isinstance(value, str):
        member = cls.__members__.get(value.upper())
        if member is not None:
            return member
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            return cls(value)
        except ValueError:
            pass
    names = ", ".join(name.lower() for name in cls.__members__)
    raise InvalidRequestError(f"{what} must be one of {names}; got {value!r}")


def enum_text(member: enum.IntEnum) -> str:
    return member.name.lower()


# --------------------------------------------------------------------------- events


def event_from_json(obj: object, index: int) -> Event:
    """One event of a request. The checks of ``Event.validate`` (ranges, lengths) run later,
    over the whole batch at once, and name the same index."""
    if type(obj) is not dict:
        raise InvalidRequestError(f"event {index}: expected a JSON object, got {_kind(obj)}")
    if not obj.keys() <= _EVENT_FIELDS_READ:
        unknown = sorted(obj.keys() - _EVENT_FIELDS_READ)
        fields = ", ".join(sorted(EVENT_FIELDS))
        raise InvalidRequestError(f"event {index}: unknown field {unknown[0]!r} (fields: {fields})")
    account = obj.get("account_id")
    if type(account) is str and account.isdigit():
        account = int(account)  # JavaScript cannot hold every u64 as a number
    timestamp = obj.get("timestamp")
    operation = obj.get("operation_type")
    properties = obj.get("properties")
    try:
        return Event(
            account_id=account,  # type: ignore[arg-type]  # validated with the batch
            metric_code=obj.get("metric_code"),  # type: ignore[arg-type]
            value=obj.get("value", 1),
            timestamp=None if timestamp is None else parse_time(timestamp, "timestamp"),
            operation_type=(
                OperationType.NONE
                if operation is None
                else enum_member(OperationType, operation, "operation_type")
            ),
            properties={} if properties is None else properties,
            event_id=obj.get("event_id"),
        )
    except InvalidRequestError as exc:
        raise InvalidRequestError(f"event {index}: {exc.message}") from None


def stored_event_json(event: StoredEvent) -> dict[str, Any]:
    return {
        "account_id": event.account_id,
        "metric_code": event.metric_code,
        "value": event.value,
        "timestamp": time_text(event.timestamp_us),
        "operation_type": enum_text(OperationType(event.operation_type)),
        "properties": event.properties,
        "event_id": event.event_id,
        "offset": event.offset,
    }


def event_record_json(record: EventRecord) -> dict[str, Any]:
    """The same form as ``stored_event_json``, from the client's ``EventRecord``."""
    return {
        "account_id": record.account_id,
        "metric_code": record.metric_code,
        "value": record.value,
        "timestamp": time_text(record.timestamp),
        "operation_type": enum_text(record.operation_type),
        "properties": record.properties,
        "event_id": record.event_id,
        "offset": record.offset,
    }


# --------------------------------------------------------------------------- results


def json_bytes(body: Any) -> bytes:
    """``body`` as compact JSON. orjson refuses integers past 64 bits, and an exact sum (or an
    alert's value at its crossing) can be one: those bodies are written by the standard
    library, which keeps every digit (JSON numbers have no size limit)."""
    try:
        return orjson.dumps(body)
    except TypeError:  # orjson.JSONEncodeError: an integer out of its range
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def agg_value_json(value: AggValue) -> dict[str, Any]:
    return {
        "sum": value.sum,
        "count": value.count,
        "max": value.max,
        "last_value": value.last_value,
        "last_timestamp": (
            None if value.last_timestamp is None else time_text(value.last_timestamp)
        ),
        "alert_flags": value.alert_flags,
    }


def stored_alert_json(alert: StoredAlert) -> dict[str, Any]:
    return {
        "account_id": alert.account_id,
        "metric_code": alert.metric_code,
        "threshold_code": alert.threshold_code,
        "value_at_cross": alert.value_at_cross,
        "triggered_at": time_text(alert.triggered_at_us),
        "cursor": alert.cursor,
    }


def alert_record_json(alert: AlertRecord) -> dict[str, Any]:
    return {
        "account_id": alert.account_id,
        "metric_code": alert.metric_code,
        "threshold_code": alert.threshold_code,
        "value_at_cross": alert.value_at_cross,
        "triggered_at": time_text(alert.triggered_at),
        "cursor": alert.cursor,
    }


# --------------------------------------------------------------------------- schemas


def schema_json(schema: MetricSchema) -> dict[str, Any]:
    return {
        "code": schema.code,
        "agg_type": enum_text(AggType(schema.agg_type)),
        "period_type": enum_text(PeriodType(schema.period_type)),
        "billing_cycle_day": schema.billing_cycle_day,
        "period_seconds": schema.period_seconds,
        "recurring": schema.recurring,
        "filters": [{"key": d.key, "values": list(d.values)} for d in schema.filters],
        "thresholds": [_threshold_json(t) for t in schema.thresholds],
    }


def schema_from_json(obj: object, *, code: str | None = None) -> MetricSchema:
    """A schema from its JSON form; ``code`` (from a URL) fills in or must match ``code``."""
    if not isinstance(obj, dict):
        raise InvalidRequestError(f"a metric schema is a JSON object, got {_kind(obj)}")
    unknown = sorted(obj.keys() - SCHEMA_FIELDS)
    if unknown:
        raise InvalidRequestError(
            f"unknown schema field {unknown[0]!r} (fields: {', '.join(sorted(SCHEMA_FIELDS))})"
        )
    body_code = obj.get("code", code)
    if not isinstance(body_code, str):
        raise InvalidRequestError(f"code must be a string, got {_kind(body_code)}")
    if code is not None and body_code != code:
        raise InvalidRequestError(f"the body's code {body_code!r} differs from the URL's {code!r}")
    if "agg_type" not in obj:
        raise InvalidRequestError("agg_type is required (count, sum, max, latest, count_unique)")
    defaults = MetricSchema(code="x", agg_type=AggType.COUNT)
    try:
        schema = MetricSchema(
            code=body_code,
            agg_type=enum_member(AggType, obj["agg_type"], "agg_type"),
            period_type=enum_member(PeriodType, obj.get("period_type", "fixed"), "period_type"),
            billing_cycle_day=obj.get("billing_cycle_day", defaults.billing_cycle_day),
            period_seconds=obj.get("period_seconds", defaults.period_seconds),
            recurring=_boolean(obj.get("recurring", False), "recurring"),
            filters=tuple(_dimension(d, i) for i, d in enumerate(_list(obj, "filters"))),
            thresholds=tuple(_threshold(t, i) for i, t in enumerate(_list(obj, "thresholds"))),
        )
        schema.validate()
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(str(exc)) from None
    return schema


def _list(obj: Mapping[str, object], name: str) -> list[object]:
    value = obj.get(name, [])
    if not isinstance(value, list):
        raise InvalidRequestError(f"{name} must be a list, got {_kind(value)}")
    return value


def _dimension(obj: object, index: int) -> DimensionFilter:
    if not isinstance(obj, dict) or obj.keys() != {"key", "values"}:
        raise InvalidRequestError(f'filters[{index}] must be {{"key": ..., "values": [...]}}')
    values = obj["values"]
    if not isinstance(values, list):
        raise InvalidRequestError(f"filters[{index}].values must be a list")
    return DimensionFilter(key=obj["key"], values=tuple(values))


def _threshold_json(t: AlertThreshold) -> dict[str, Any]:
    out: dict[str, Any] = {"code": t.code, "value": t.value, "recurring": t.recurring}
    if t.webhook is not None:
        out["webhook"] = t.webhook
    return out


def _threshold(obj: object, index: int) -> AlertThreshold:
    if not isinstance(obj, dict) or not {"code", "value"} <= obj.keys() <= {
        "code",
        "value",
        "recurring",
        "webhook",
    }:
        raise InvalidRequestError(
            f'thresholds[{index}] must be {{"code": ..., "value": ..., "recurring": false, '
            '"webhook": "https://..." (optional)}'
        )
    recurring = _boolean(obj.get("recurring", False), f"thresholds[{index}].recurring")
    webhook = obj.get("webhook")
    return AlertThreshold(
        code=obj["code"], value=obj["value"], recurring=recurring, webhook=webhook
    )


def _boolean(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequestError(f"{what} must be true or false, got {value!r}")
    return value


def _kind(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number" if isinstance(value, int | float) else "a value")
