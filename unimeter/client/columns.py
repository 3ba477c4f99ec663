"""The caller's events, checked in bulk and taken apart into one list per field.

Theory of operation: ``Event.validate`` is the authority on what is valid, and calling it costs
microseconds per event. ``columns_of`` instead reads each field of every event into a list (one
comprehension per field) and checks each whole list with C-level operations: the set of types
it holds, its minimum and maximum, its distinct metric codes, how many entries are the default.
These checks only ever *accept* lists of which ``validate`` accepts every entry (exact types,
byte lengths measured or bounded from character counts). Whenever they are unsure -- a bad
event, or a valid one of an unusual type (an ``int`` subclass, a ``Mapping`` that is not a
dict) -- the events are checked one by one with ``validate``, which raises
``InvalidRequestError`` naming the first bad event's index and problem; if every event passes,
the columns are read again event by event and normalised. Either way the result is the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from unimeter import limits, periods
from unimeter.errors import InvalidRequestError
from unimeter.model import Event, OperationType, validate_code
from unimeter.wire.messages import NO_TIMESTAMP

_EVENT_TYPES = frozenset({Event})
_INT_TYPES = frozenset({int})
_STR_TYPES = frozenset({str})
_DICT_TYPES = frozenset({dict})
_DATETIME_TYPES = frozenset({datetime})
_OPERATION_TYPES = frozenset({OperationType})
_NONE = OperationType.NONE
_ONE_US = timedelta(microseconds=1)
_EPOCH = periods.EPOCH

_ACCOUNT_ID_MAX = limits.account_id_max
_VALUE_MIN, _VALUE_MAX = limits.value_min, limits.value_max
_PROPERTIES_MAX = limits.properties_per_event_max
_KEY_BYTES_MAX = limits.property_key_bytes_max
_VALUE_BYTES_MAX = limits.property_value_bytes_max
_EVENT_ID_BYTES_MAX = limits.event_id_bytes_max


@dataclass(frozen=True, slots=True)
class Columns:
    """Entry ``i`` of every list describes event ``i``; an optional field whose every entry is
    the default is None. Unless made with ``ranges=False``, every entry is valid."""

    account_ids: list[int]
    code_ids: list[int] | None  # event i's code is code_table[code_ids[i]]; None: only one code
    code_table: list[str]  # each distinct code once, sorted (deterministic, and cheap)
    values: list[int]
    timestamps_us: list[int] | None  # NO_TIMESTAMP where an event has none
    operation_types: list[int] | None
    properties: list[dict[str, str] | None] | None  # a copy of each; None for an empty one
    event_ids: list[str | None] | None

    def __len__(self) -> int:
        return len(self.account_ids)


def columns_of(events: Sequence[object], *, ranges: bool = True) -> Columns:
    """Every event's fields as columns; ``InvalidRequestError`` names the first bad event.

    With ``ranges=False`` the account ids and values are only known to be exact ints: the
    caller checks their ranges itself (building the typed arrays it needs anyway does that:
    they raise OverflowError), and on failure calls ``validate_each`` to name the culprit.
    """
    try:
        columns = _bulk(events, ranges)
    except (TypeError, ValueError, AttributeError, OverflowError):
        # Something none of the bulk checks expected (an unhashable code, a string that cannot
        # be encoded, a timezone that cannot be subtracted): let ``validate`` judge each event.
        columns = None
    if columns is None:
        validate_each(events)
        columns = _each(events)  # type: ignore[arg-type]  # validate_each checked them
    return columns


def validate_each(events: Sequence[object]) -> None:
    """``Event.validate`` for every event in turn: ``InvalidRequestError`` for the first bad
    one, naming its index and its problem."""
    for index, event in enumerate(events):
        if not isinstance(event, Event):
            raise InvalidRequestError(
                f"event {index}: expected an Event, got {type(event).__name__}"
            )
        try:
            event.validate()
        except ValueError as exc:
            raise InvalidRequestError(f"event {index}: {exc}") from None


def _bulk(events: Sequence[object], ranges: bool) -> Columns | None:
    """The columns if the bulk checks are sure every event is valid, else None."""
    if set(map(type, events)) != _EVENT_TYPES:
        return None if events else _EMPTY
    batch: Sequence[Event] = events  # type: ignore[assignment]  # every one's type is Event
    account_ids = [e.account_id for e in batch]
    values = [e.value for e in batch]
    # Exact types: bool is an int subclass that validate refuses, and min/max of mixed types
    # would compare floats.
    if set(map(type, account_ids)) != _INT_TYPES or set(map(type, values)) != _INT_TYPES:
        return None
    if ranges and not (
        min(account_ids) >= 0
        and max(account_ids) <= _ACCOUNT_ID_MAX
        and min(values) >= _VALUE_MIN
        and max(values) <= _VALUE_MAX
    ):
        return None
    metric_codes = [e.metric_code for e in batch]
    distinct = set(metric_codes)
    for code in distinct:
        if type(code) is not str:
            return None
        validate_code(code)  # ValueError: the caller falls back to validating each event
    code_table = sorted(distinct)
    code_ids = _numbered(metric_codes, code_table)
    special = [
        e
        for e in batch
        if e.timestamp is not None
        or e.operation_type is not _NONE
        or e.properties.__class__ is not dict
        or e.properties
        or e.event_id is not None
    ]
    if not special:  # the common case: no optional field is set
        return Columns(account_ids, code_ids, code_table, values, None, None, None, None)
    # Defaults are found by identity, like ``special`` does: an object may claim to equal None.
    timestamps = [e.timestamp for e in batch]
    timestamps_us: list[int] | None = None
    if stamped := [t for t in timestamps if t is not None]:
        if set(map(type, stamped)) != _DATETIME_TYPES or [t.tzinfo for t in stamped].count(None):
            return None
        timestamps_us = [NO_TIMESTAMP if t is None else (t - _EPOCH) // _ONE_US for t in timestamps]
    operations: list[int] = [e.operation_type for e in batch]
    operation_types: list[int] | None = None
    if set(map(type, [o for o in operations if o is not _NONE])) not in (set(), _OPERATION_TYPES):
        return None
    if any(operations):
        operation_types = operations
    mappings: list[Any] = [e.properties for e in batch]
    if set(map(type, mappings)) != _DICT_TYPES:
        return None
    properties: list[dict[str, str] | None] | None = None
    if any(mappings):
        if not _properties_valid([p for p in mappings if p]):
            return None
        properties = [dict(p) if p else None for p in mappings]
    ids = [e.event_id for e in batch]
    event_ids: list[str | None] | None = None
    if present := [i for i in ids if i is not None]:
        if not _texts_within(present, 1, _EVENT_ID_BYTES_MAX):
            return None
        event_ids = ids
    return Columns(
        account_ids=account_ids,
        code_ids=code_ids,
        code_table=code_table,
        values=values,
        timestamps_us=timestamps_us,
        operation_types=operation_types,
        properties=properties,
        event_ids=event_ids,
    )


_EMPTY = Columns([], [], [], [], None, None, None, None)


def _numbered(metric_codes: list[str], code_table: list[str]) -> list[int] | None:
    if len(code_table) == 1:
        return None
    return list(map({code: i for i, code in enumerate(code_table)}.__getitem__, metric_codes))


def _texts_within(strings: list[Any], low: int, high: int) -> bool:
    """Every entry of the non-empty ``strings`` is a str of ``low``..``high`` UTF-8 bytes."""
    if set(map(type, strings)) != _STR_TYPES:
        return False
    if min(map(len, strings)) < low:  # a character is at least one byte
        return False
    if all(map(str.isascii, strings)):  # one byte per character
        return max(map(len, strings)) <= high
    # Count the bytes. A string that cannot be encoded (a lone surrogate) raises
    # UnicodeEncodeError, a ValueError: the caller then validates each event.
    return max(map(len, map(str.encode, strings))) <= high


def _properties_valid(mappings: list[dict[Any, Any]]) -> bool:
    """Every non-empty properties dict holds at most the allowed number of str -> str pairs
    within the byte limits."""
    if max(map(len, mappings)) > _PROPERTIES_MAX:
        return False
    keys = [k for p in mappings for k in p]
    texts = [v for p in mappings for v in p.values()]
    return _texts_within(keys, 1, _KEY_BYTES_MAX) and _texts_within(texts, 0, _VALUE_BYTES_MAX)


def _each(events: Sequence[Event]) -> Columns:
    """The columns of events ``validate`` accepted, read one event at a time and normalised
    (an ``OperationType`` from an int, a dict from another ``Mapping``)."""
    n = len(events)
    timestamps = [e.timestamp for e in events]
    operations = [int(OperationType(e.operation_type)) for e in events]
    mappings: list[Mapping[str, str]] = [e.properties for e in events]
    ids = [e.event_id for e in events]
    metric_codes = [e.metric_code for e in events]
    code_table = sorted(set(metric_codes))
    return Columns(
        account_ids=[e.account_id for e in events],
        code_ids=_numbered(metric_codes, code_table),
        code_table=code_table,
        values=[e.value for e in events],
        timestamps_us=(
            None
            if timestamps.count(None) == n
            else [NO_TIMESTAMP if t is None else periods.to_us(t) for t in timestamps]
        ),
        operation_types=operations if any(operations) else None,
        properties=[dict(p) if p else None for p in mappings] if any(mappings) else None,
        event_ids=None if ids.count(None) == n else ids,
    )
