"""JSON events straight into the client's columns, checked in bulk (the HTTP ingest fast path).

Building an ``Event`` per JSON object costs microseconds (a frozen dataclass), several times
what the rest of the request costs per event. ``json_columns`` instead reads each field of
every object into a list (``map`` of an ``itemgetter`` for the fields every event has) and
checks each whole list with C-level operations (the set of types, a typed ``array`` for the
ranges, distinct metric codes, byte lengths), the way ``client/columns.py`` checks a list of
``Event``s. The checks only ever *accept* lists of
which ``Event.validate`` would accept every entry; when unsure (a malformed event, or a valid
one in an unusual spelling such as an account id given as a string) they answer None and the
caller takes the ``Event`` path, which names the first bad event. Either way the result is the
same batches.
"""

from __future__ import annotations

from array import array
from datetime import datetime
from operator import itemgetter
from typing import Any

from unimeter import limits, periods
from unimeter.client.columns import Columns
from unimeter.model import OperationType, validate_code
from unimeter.wire.messages import NO_TIMESTAMP

_FIELDS = frozenset(
    {"account_id", "metric_code", "value", "timestamp", "operation_type", "properties",
     "event_id", "offset"}
)  # fmt: skip
_PLAIN = frozenset({"account_id", "metric_code", "value"})
_DICT, _STR = frozenset({dict}), frozenset({str})
_ACCOUNT_ID, _METRIC_CODE, _VALUE = map(itemgetter, ("account_id", "metric_code", "value"))
_OPERATIONS: dict[object, int] = {
    **{name.lower(): int(op) for name, op in OperationType.__members__.items()},
    **{name: int(op) for name, op in OperationType.__members__.items()},
    **{int(op): int(op) for op in OperationType},
}
_OPERATION_TYPES = frozenset({str, int})


def json_columns(items: list[Any]) -> Columns | None:
    """The columns of ``items`` (parsed JSON) if every one is surely a valid event, else None."""
    if not items or set(map(type, items)) != _DICT:
        return None
    keys = set().union(*items)
    if not keys <= _FIELDS:
        return None
    try:  # KeyError: an object lacks a required field
        account_ids = list(map(_ACCOUNT_ID, items))
        metric_codes = list(map(_METRIC_CODE, items))
    except KeyError:
        return None
    values = _values(items, keys)
    # An ``array`` takes ints (and bools) in its range and refuses anything else, in C; JSON
    # holds no other int-like type, so a bool is the one thing left to look for.
    try:
        array("Q", account_ids)
        array("q", values)
    except (TypeError, OverflowError):
        return None
    if bool in set(map(type, account_ids)) or bool in set(map(type, values)):
        return None
    distinct = set(metric_codes)
    if set(map(type, distinct)) != _STR:
        return None
    try:
        for code in distinct:
            validate_code(code)
    except ValueError:
        return None
    code_table = sorted(distinct)
    code_ids = (
        None
        if len(code_table) == 1
        else list(map({c: i for i, c in enumerate(code_table)}.__getitem__, metric_codes))
    )
    if keys <= _PLAIN:  # the common case: no optional field anywhere
        return Columns(account_ids, code_ids, code_table, values, None, None, None, None)
    try:
        timestamps = _timestamps(items) if "timestamp" in keys else None
    except ValueError:
        return None
    operations: list[int] | None = None
    if "operation_type" in keys:
        raw = [o.get("operation_type", 0) for o in items]
        if not set(map(type, raw)) <= _OPERATION_TYPES:  # bool is no operation type
            return None
        mapped = [_OPERATIONS.get(op) for op in raw]
        if None in mapped:
            return None
        operations = mapped if any(mapped) else None  # type: ignore[assignment]
    properties: list[dict[str, str] | None] | None = None
    if "properties" in keys:
        valid, properties = _properties([o.get("properties") for o in items])
        if not valid:
            return None
    ids = [o.get("event_id") for o in items] if "event_id" in keys else []
    present = [i for i in ids if i is not None]
    if present and not _texts_within(present, 1, limits.event_id_bytes_max):
        return None
    return Columns(
        account_ids=account_ids,
        code_ids=code_ids,
        code_table=code_table,
        values=values,
        timestamps_us=timestamps,
        operation_types=operations,
        properties=properties,
        event_ids=ids if present else None,
    )


def _values(items: list[dict[str, Any]], keys: set[str]) -> list[Any]:
    """Each object's value (1 where it has none), not checked yet."""
    if "value" not in keys:
        return [1] * len(items)
    try:
        return list(map(_VALUE, items))  # every object has one: the common case
    except KeyError:
        return [o.get("value", 1) for o in items]


def _timestamps(items: list[dict[str, Any]]) -> list[int] | None:
    """Microseconds per event (``NO_TIMESTAMP`` where absent); ValueError when unsure."""
    texts = [o.get("timestamp") for o in items]
    if texts.count(None) == len(texts):
        return None
    out = []
    for text in texts:
        if text is None:
            out.append(NO_TIMESTAMP)
            continue
        if type(text) is not str:
            raise ValueError("not a string")
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            raise ValueError("no time zone")
        out.append(periods.to_us(moment))
    return out


def _properties(mappings: list[Any]) -> tuple[bool, list[dict[str, str] | None] | None]:
    """(sure every entry is valid, each event's properties or None when no event has any)."""
    present = [p for p in mappings if p is not None]
    if set(map(type, present)) - _DICT:
        return False, None
    filled = [p for p in present if p]
    if not filled:
        return True, None
    if max(map(len, filled)) > limits.properties_per_event_max:
        return False, None
    keys = [k for p in filled for k in p]
    texts = [v for p in filled for v in p.values()]
    if not (
        _texts_within(keys, 1, limits.property_key_bytes_max)
        and _texts_within(texts, 0, limits.property_value_bytes_max)
    ):
        return False, None
    return True, [p if p else None for p in mappings]


def _texts_within(strings: list[Any], low: int, high: int) -> bool:
    """Every entry is a str of ``low``..``high`` UTF-8 bytes."""
    if set(map(type, strings)) != _STR or min(map(len, strings)) < low:
        return False
    if all(map(str.isascii, strings)):
        return max(map(len, strings)) <= high
    try:
        return max(map(len, map(str.encode, strings))) <= high
    except UnicodeEncodeError:
        return False
